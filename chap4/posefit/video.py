"""The frames of a sequence to track: a folder of PNG or JPEG files, or a video file, read one at a time.

Everything that can be checked before tracking is checked when the source
is opened (the folder's files and their sizes, the video's header and its
first two frames), so that bad input is refused before any output is
written. A frame that cannot be decoded later is reported, not fatal: the
tracker marks it skipped and carries on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posefit.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class RawFrame:
    index: int
    file: str | None  # the file it came from (a folder's), or None (a video's)
    pixels: np.ndarray | None  # (H, W, 3 or 4) uint8 as decoded; None when it could not be decoded
    error: str = ""  # why it could not


def natural_key(path: Path):
    """frame2 before frame10: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", path.name)]


class FolderFrames:
    """The PNG and JPEG files of a folder, in natural name order, all of one size."""

    def __init__(self, folder):
        from PIL import Image, UnidentifiedImageError

        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--frames {folder}: not a folder")
        self.paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=natural_key)
        if not self.paths:
            raise UserError(f"--frames {folder}: no PNG or JPEG frames in this folder")
        self.size = None
        for path in self.paths:  # the headers only: cheap, and bad files are found before any work
            try:
                with Image.open(path) as image:
                    this = (image.height, image.width)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise UserError(f"cannot read frame {path}: {exc}") from None
            if self.size is None:
                self.size = this
            elif this != self.size:
                raise UserError(f"frames differ in size: {self.paths[0].name} is {self.size[1]}x{self.size[0]}, "
                                f"{path.name} is {this[1]}x{this[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        from PIL import Image, ImageOps, UnidentifiedImageError

        for i, path in enumerate(self.paths):
            try:
                with Image.open(path) as image:
                    image = ImageOps.exif_transpose(image)
                    has_alpha = "A" in image.getbands() or "transparency" in image.info
                    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
                yield RawFrame(i, str(path), pixels)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                yield RawFrame(i, str(path), None, f"{type(exc).__name__}: {exc}")


class VideoFrames:
    """The frames of a video file (any container ffmpeg reads), decoded by imageio's ffmpeg plugin."""

    def __init__(self, path):
        import imageio.v2 as imageio

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"--video {self.path}: no such file")
        try:
            reader = imageio.get_reader(self.path, format="FFMPEG")
            try:
                meta = reader.get_meta_data()
                first = [reader.get_data(0), reader.get_data(1)]
            finally:
                reader.close()
        except IndexError:
            raise UserError(f"--video {self.path}: it has only one frame: nothing to track") from None
        except Exception as exc:  # imageio and ffmpeg raise many kinds; all mean the same here
            raise UserError(f"cannot read --video {self.path}: {str(exc).splitlines()[0]}") from None
        self.size = first[0].shape[:2]
        self.fps = float(meta.get("fps") or 25.0)
        self.count = None  # known once read

    def __len__(self) -> int:
        if self.count is None:
            import imageio.v2 as imageio

            with imageio.get_reader(self.path, format="FFMPEG") as reader:
                self.count = reader.count_frames()
        return self.count

    def __iter__(self):
        import imageio.v2 as imageio

        reader = imageio.get_reader(self.path, format="FFMPEG")
        try:
            i = 0
            while True:
                try:
                    pixels = reader.get_next_data()
                except (IndexError, StopIteration):
                    break
                except Exception as exc:  # a frame ffmpeg could not decode
                    yield RawFrame(i, None, None, f"{type(exc).__name__}: {exc}")
                    i += 1
                    continue
                yield RawFrame(i, None, np.asarray(pixels)[..., :3])
                i += 1
        finally:
            reader.close()


def write_mp4(frames, path, fps: float) -> None:
    """Pictures (H, W, 3) uint8 as an MP4 (H.264 by imageio's ffmpeg), written beside and renamed into place."""
    import os

    import imageio.v2 as imageio

    tmp = f"{path}.part.mp4"
    with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=2) as writer:
        for frame in frames:
            writer.append_data(frame)
    os.replace(tmp, path)


def read_ahead(items, work, depth: int = 2):
    """work(item) for each item, computed in a background thread up to `depth` items ahead.

    Decoding the next frame and finding its backdrop then overlap the fit of
    this one on a second core (PIL, ffmpeg's pipe, numpy and scipy release the
    GIL for their work, as do torch and the compiled rasterizer). An exception
    in the thread is raised here, at the item where it happened. Close the
    generator (contextlib.closing) to stop the thread early.
    """
    import queue
    import threading

    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run():
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put((work(item), None))
            results.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            results.put((None, exc))

    thread = threading.Thread(target=run, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            value, exc = results.get()
            if exc is not None:
                raise exc
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # empty the queue so that a blocked put returns and the thread sees stop
            try:
                results.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
