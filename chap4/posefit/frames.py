"""Writing the fitting pictures without stalling the optimisation loop.

A matplotlib figure per frame (the book calls plt.figure() every iteration)
costs more than a fast iteration itself, so one worker process owns a single
reusable figure and encodes PNGs (and the GIF) while the loop goes on. The
tracker's overlays, ten a second, are captioned with PIL instead (a few
milliseconds a picture, against matplotlib's ~40, which took the second core
from the tracker's read-ahead). This module imports only numpy, matplotlib
and PIL, so the worker starts fast.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

FIGSIZE = (3.2, 3.4)  # inches; at 100 dpi a 320x340 picture, title included
DPI = 100
GIF_MAX_SIDE = 160  # GIF frames are downscaled to keep the repository lean


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _atomic_save(save, path: str) -> None:
    tmp = f"{path}.part{os.getpid()}"
    save(tmp)
    os.replace(tmp, path)


class _Figure:
    """One matplotlib figure reused for every frame: set_data, title, save."""

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.fig = plt.figure(figsize=FIGSIZE, dpi=DPI)
        self.ax = self.fig.add_axes((0.02, 0.02, 0.96, 0.86))
        self.ax.axis("off")
        self.artist = None
        self.shape = None

    def save(self, image: np.ndarray, title: str, path: str) -> None:
        cmap = "gray" if image.ndim == 2 else None
        key = (image.shape, cmap)
        if self.artist is None or self.shape != key:
            self.ax.clear()
            self.ax.axis("off")
            self.artist = self.ax.imshow(image, cmap=cmap, vmin=0, vmax=255)
            self.shape = key
        else:
            self.artist.set_data(image)
        self.ax.set_title(title, fontsize=9)
        _atomic_save(lambda p: self.fig.savefig(p, dpi=DPI, format="png"), path)


class _Caption:
    """The picture as it is, under a one-line caption drawn with PIL (same save() as _Figure)."""

    STRIP = 14  # pixels of caption above the picture

    def save(self, image: np.ndarray, title: str, path: str) -> None:
        from PIL import Image, ImageDraw

        picture = Image.fromarray(image)
        canvas = Image.new(picture.mode, (picture.width, picture.height + self.STRIP), "white")
        canvas.paste(picture, (0, self.STRIP))
        ImageDraw.Draw(canvas).text((3, 1), title, fill="black")
        # zlib's fastest level: 1.3 ms a tracker's overlay against 4.5 at the default, the file a sixth larger.
        _atomic_save(lambda p: canvas.save(p, format="PNG", compress_level=1), path)


def _gif_frame(image: np.ndarray):
    """A GIF frame: the picture scaled down to GIF_MAX_SIDE at most, its 256 colours chosen now (the writer
    process spreads that work over the frames) by PIL's fast octree: 0.4 ms a tracker's overlay against
    median cut's 7 (what PIL's GIF writer would use), on the core the tracker's read-ahead shares; the
    colours 1.9 levels of 255 off on average instead of 0.6."""
    from PIL import Image

    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / GIF_MAX_SIDE)))
    small = image[::step, ::step]
    if small.ndim == 2:
        small = np.repeat(small[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(small)).quantize(256, method=Image.Quantize.FASTOCTREE)


def _write_gif(frames, path: str, fps: float) -> None:
    """The frames (_gif_frame) as a looping GIF, each shown 1 / fps seconds."""
    first, rest = frames[0], frames[1:]
    _atomic_save(lambda p: first.save(p, format="GIF", save_all=True, append_images=rest,
                                      duration=round(1000 / fps), loop=0), path)


class _Movie:
    """An MP4 (H.264 by imageio's ffmpeg) written as the pictures come, under a temporary name renamed into
    place by finish(); none at all without a picture."""

    def __init__(self, path: str, fps: float):
        self.path, self.partial, self.fps, self.writer = path, f"{path}.part.mp4", fps, None

    def append(self, image: np.ndarray) -> None:
        if self.writer is None:
            import imageio.v2 as imageio

            # x264's "veryfast" preset: a third of the default's CPU time (measured on the benchmark's
            # 48 overlays at 160x120: 0.13 s against 0.31, the file 9% smaller), spent on the second core
            # that the frames' read-ahead shares, and mostly at close() with the default's look-ahead.
            self.writer = imageio.get_writer(self.partial, format="FFMPEG", fps=self.fps, codec="libx264",
                                             quality=8, macro_block_size=2, ffmpeg_params=["-preset", "veryfast"])
        self.writer.append_data(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.partial, self.path)


class _Pictures:
    """What the writer does with each picture, in its own process or in the caller's: the titled PNG, the
    GIF's frame, the movie's."""

    def __init__(self, captions: str):
        self.captions, self.figure, self.gif_frames, self.movie = captions, None, [], None

    def frame(self, image: np.ndarray, title: str, path: str | None, to_gif: bool, to_movie: bool) -> None:
        if path:
            if self.figure is None:
                self.figure = _Figure() if self.captions == "figure" else _Caption()
            self.figure.save(image, title, path)
        if to_gif:
            self.gif_frames.append(_gif_frame(image))
        if to_movie and self.movie is not None:
            self.movie.append(image)

    def gif(self, path: str, fps: float) -> None:
        if self.gif_frames:
            _write_gif(self.gif_frames, path, fps)

    def start_movie(self, path: str, fps: float) -> None:
        self.movie = _Movie(path, fps)

    def do(self, kind: str, *arguments) -> None:
        """One job of FrameWriter's: "frame", "gif" or "movie" (start one), with its arguments."""
        {"frame": self.frame, "gif": self.gif, "movie": self.start_movie}[kind](*arguments)

    def finish(self) -> None:
        movie, self.movie = self.movie, None
        if movie is not None:
            movie.finish()
        if isinstance(self.figure, _Figure):
            # pyplot keeps every figure until it is closed: a process running many fits
            # (tests, benchmarks) would pile them up.
            import matplotlib.pyplot as plt

            plt.close(self.figure.fig)
            self.figure = None


def _worker(jobs, results, captions: str) -> None:
    pictures = _Pictures(captions)
    while True:
        job = jobs.get()
        try:
            if job is None:
                pictures.finish()
                break
            pictures.do(*job)
        except Exception as exc:  # reported to the parent, which decides
            results.put(f"{type(exc).__name__}: {exc}")
            if job is None:
                break
    results.put(None)


def start_without_main(process) -> None:
    """Start a spawned process without re-running the calling script in it.

    spawn normally imports the parent's __main__ file in the child, which for
    our scripts means importing torch and PyTorch3D (seconds, and hundreds of
    MB) in a process that only draws PNGs. Without __main__.__file__ the child
    skips that step.
    """
    import sys

    main = sys.modules.get("__main__")
    saved_file = getattr(main, "__file__", None)
    saved_spec = getattr(main, "__spec__", None)
    try:
        if saved_file is not None:
            del main.__file__
        if saved_spec is not None:
            main.__spec__ = None
        process.start()
    finally:
        if saved_file is not None:
            main.__file__ = saved_file
        if saved_spec is not None:
            main.__spec__ = saved_spec


class FrameWriter:
    """Queue frames for a background process; close() waits for all of them.

    `background=False` does the same work in this process (used in tests and
    where processes cannot be started). captions: "figure" (a matplotlib
    figure with the title above, the fitting scripts' pictures) or "plain"
    (the picture at its own size under a line of text: the tracker's).
    """

    def __init__(self, background: bool = True, captions: str = "figure"):
        self.errors: list[str] = []
        self._process = None
        self._pictures = None
        if background:
            ctx = mp.get_context("spawn")
            self._jobs = ctx.Queue(maxsize=64)
            self._results = ctx.Queue()
            self._process = ctx.Process(target=_worker, args=(self._jobs, self._results, captions), daemon=True)
            start_without_main(self._process)
        else:
            self._pictures = _Pictures(captions)

    def _do(self, kind: str, *arguments) -> None:
        if self._process is not None:
            self._jobs.put((kind, *arguments))
        else:
            self._pictures.do(kind, *arguments)

    def frame(self, image, title: str, path: str | None, to_gif: bool = False, to_movie: bool = False) -> None:
        """Save `image` (HxW mask or HxWx3, float in [0, 1] or uint8) as a titled PNG (path None: no PNG), and
        add it to the GIF's frames and to the movie (movie()) if asked."""
        self._do("frame", _to_uint8(np.asarray(image)), title, None if path is None else str(path), to_gif,
                 to_movie)

    def gif(self, path, fps: float = 10.0) -> None:
        """Write the GIF of the frames so far (to_gif=True)."""
        self._do("gif", str(path), fps)

    def movie(self, path, fps: float) -> None:
        """Start an MP4 at path: the frames from now on with to_movie=True, encoded as they come; close()
        finishes it."""
        self._do("movie", str(path), fps)

    def close(self) -> list[str]:
        """Finish every queued frame and the movie; return the error messages, if any."""
        if self._process is not None:
            self._jobs.put(None)
            while True:
                message = self._results.get()
                if message is None:
                    break
                self.errors.append(message)
            self._process.join()
            self._process = None
        elif self._pictures is not None:
            pictures, self._pictures = self._pictures, None
            try:
                pictures.finish()
            except Exception as exc:  # as the writer process reports it
                self.errors.append(f"{type(exc).__name__}: {exc}")
        return self.errors
