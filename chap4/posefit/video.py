"""The frames of a sequence to track: a folder of PNG or JPEG files, or a video file, read one at a time.

Everything that can be checked before tracking is checked when the source
is opened (the folder's files and their sizes, the video's header and its
first two frames), so that bad input is refused before any output is
written. A frame that cannot be decoded later is reported, not fatal: the
tracker marks it skipped and carries on.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posefit import masks
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


class SyntheticFrames:
    """Frames rendered from a mesh (a Meshes of one) at poses R, T (N, 3, 3), (N, 3) like the book's targets
    (hard Phong on white), as 8-bit RawFrames: the tracker's default sequence; each also saved as
    save_dir/frame_<i>.png if save_dir is given."""

    def __init__(self, mesh, R, T, size, fov: float, save_dir=None):
        # A copy of its own: the frames are rendered in read_ahead's thread, and a Meshes fills its packed
        # tensors lazily, so the tracker's use of the same object in its own thread could meet one half-made
        # (PyTorch3D's update_padded then fails an assertion; seen once in CI, in a lost frame's search).
        mesh = mesh.clone()
        mesh.verts_packed()
        self.mesh, self.R, self.T, self.size, self.fov, self.save_dir = mesh, R, T, tuple(size), fov, save_dir

    def __len__(self) -> int:
        return len(self.R)

    def __iter__(self):
        import torch
        from PIL import Image

        from posefit import render

        mesh = self.mesh
        renderers = render.make_renderers(mesh.device, self.size, fov=self.fov)
        for i in range(len(self.R)):
            with torch.no_grad():
                image, _ = render.hard_render(renderers, mesh, self.R[i : i + 1].to(mesh.device),
                                              self.T[i : i + 1].to(mesh.device))
            pixels = (image[0, ..., :3].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            path = None
            if self.save_dir is not None:
                path = Path(self.save_dir) / f"frame_{i}.png"
                Image.fromarray(pixels).save(path)
            yield RawFrame(i, None if path is None else str(path), pixels)


@dataclass
class Prepared:
    """What a frame's mask needs that does not depend on the pose: its pixels at the working size, whether it
    is a photo, and (for a photo) the backdrop model (masks.backdrop: sure background, sure object, a grey floor). Made
    ahead, while the frame before is fitted (read_ahead)."""

    raw: RawFrame
    values: np.ndarray | None  # (h, w, 3 or 4) float32 in [0, 1]; None: the frame could not be decoded
    photo: bool = False
    backdrop: masks.Backdrop | None = None


def prepare(raw: RawFrame, size, background=None) -> Prepared:
    """The frame scaled to the working size (h, w) and, for a photo, its backdrop model (masks.backdrop)."""
    from PIL import Image

    if raw.pixels is None:
        return Prepared(raw, None)
    pixels = raw.pixels
    H, W = size
    if pixels.shape[:2] != (H, W):
        mode = "RGBa" if pixels.shape[-1] == 4 else "RGB"
        image = Image.fromarray(pixels, "RGBA" if mode == "RGBa" else "RGB").convert(mode)
        pixels = np.asarray(image.resize((W, H), Image.Resampling.BOX).convert(mode.upper()))
    values = pixels.astype(np.float32) / 255.0
    if values.shape[-1] == 4 or not masks.is_photo(values):
        return Prepared(raw, values)
    return Prepared(raw, values, True, masks.backdrop(values, background))


@dataclass
class Head:
    """The first `count` items of `items`: an islice that can be sent to another process (an islice cannot)."""

    items: object
    count: int

    def __iter__(self):
        return itertools.islice(iter(self.items), self.count)


def read_ahead(items, work, depth: int = 2, process: bool = False) -> ReadAhead:
    """work(item) for each item, computed in the background up to `depth` items ahead (see ReadAhead)."""
    return ReadAhead(items, work, depth, process)


class ReadAhead:
    """An iterator over work(item) for each item, computed in the background up to `depth` items ahead.

    Decoding the next frame and finding its backdrop then overlap the fit of
    this one on a second core. In a thread (the default), or with
    `process=True` in a process of its own, which iterates `items` itself
    (both must pickle: a FolderFrames or VideoFrames in a Head, and a
    module-level work such as a functools.partial of prepare).
    A thread shares the interpreter's lock with the fit: each of the fit's
    few hundred small tensor operations a step waits for the lock that the
    thread's numpy, PIL or torch calls hold between theirs (the tracker's mask
    stage took nearly twice as long as alone, its fit a tenth longer); a
    process does not share it. The work starts at once (a process's imports overlap the
    caller's own start-up). An exception in the background is raised here,
    at the item where it happened. close() stops the work early.
    """

    def __init__(self, items, work, depth: int = 2, process: bool = False):
        import queue
        import threading

        if process:
            import multiprocessing as mp

            from posefit.frames import start_without_main

            context = mp.get_context("spawn")  # not fork: this process holds torch's threads
            self._results = context.Queue(maxsize=depth)
            self._worker = context.Process(target=_produce, args=(items, work, self._results), name="read-ahead",
                                           daemon=True)
            start_without_main(self._worker)
        else:
            self._results = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._worker = threading.Thread(target=_produce, args=(items, work, self._results, self._stop),
                                            name="read-ahead", daemon=True)
            self._worker.start()
        self._process, self._finished = process, False

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        kind, value = self._get()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def _get(self):
        import queue

        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                if self._worker.is_alive():
                    continue
            try:  # what it sent just before it ended may still be on its way
                return self._results.get(timeout=1.0)
            except queue.Empty:
                code = getattr(self._worker, "exitcode", None)
                return "error", RuntimeError(f"the frames' read-ahead ended without a word (exit code {code})")

    def close(self) -> None:
        """Stop the background work (at once for a process; a thread at its next item) and wait for it."""
        import queue

        if self._finished:
            return
        self._finished = True
        if self._process:
            if self._worker.is_alive():
                self._worker.terminate()
            self._worker.join()
            self._results.close()
            self._results.cancel_join_thread()
            return
        self._stop.set()
        while self._worker.is_alive():  # empty the queue so that a blocked put returns and the thread sees stop
            try:
                self._results.get(timeout=0.05)
            except queue.Empty:
                pass
        self._worker.join()


def _produce(items, work, results, stop=None) -> None:
    """The read-ahead's worker: ("item", work(item)) for each item, then ("done", None), or ("error", exc)."""
    import pickle

    try:
        for item in items:
            if stop is not None and stop.is_set():
                return
            results.put(("item", work(item)))
        results.put(("done", None))
    except KeyboardInterrupt:  # Ctrl-C reaches a process too: the tracker handles it
        if stop is not None:
            results.put(("error", KeyboardInterrupt()))
    except BaseException as exc:
        if stop is None:  # to another process: an exception that cannot travel sends its type and message
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        results.put(("error", exc))
