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
        _atomic_save(lambda p: canvas.save(p, format="PNG"), path)


def _gif_frame(image: np.ndarray):
    """A GIF frame: the picture scaled down to GIF_MAX_SIDE at most, its 256 colours chosen now (median cut,
    what PIL's GIF writer would do at the end: the writer process spreads that work over the frames)."""
    from PIL import Image

    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / GIF_MAX_SIDE)))
    small = image[::step, ::step]
    if small.ndim == 2:
        small = np.repeat(small[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(small)).quantize(256, method=Image.Quantize.MEDIANCUT)


def _write_gif(frames, path: str, fps: float) -> None:
    """The frames (_gif_frame) as a looping GIF, each shown 1 / fps seconds."""
    first, rest = frames[0], frames[1:]
    _atomic_save(lambda p: first.save(p, format="GIF", save_all=True, append_images=rest,
                                      duration=round(1000 / fps), loop=0), path)


def _worker(jobs, results, captions: str) -> None:
    figure = None
    gif_frames = []
    while True:
        job = jobs.get()
        if job is None:
            break
        try:
            kind = job[0]
            if kind == "frame":
                _, image, title, path, to_gif = job
                if figure is None:
                    figure = _Figure() if captions == "figure" else _Caption()
                if path:
                    figure.save(image, title, path)
                if to_gif:
                    gif_frames.append(_gif_frame(image))
            elif kind == "gif":
                _, path, fps = job
                if gif_frames:
                    _write_gif(gif_frames, path, fps)
        except Exception as exc:  # reported to the parent, which decides
            results.put(f"{type(exc).__name__}: {exc}")
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
        self._captions = captions
        if background:
            ctx = mp.get_context("spawn")
            self._jobs = ctx.Queue(maxsize=64)
            self._results = ctx.Queue()
            self._process = ctx.Process(target=_worker, args=(self._jobs, self._results, captions), daemon=True)
            start_without_main(self._process)
        else:
            self._figure = None
            self._gif_frames = []

    def frame(self, image, title: str, path: str | None, to_gif: bool = False) -> None:
        """Save `image` (HxW mask or HxWx3, float in [0, 1] or uint8) as a titled PNG."""
        image = _to_uint8(np.asarray(image))
        job = ("frame", image, title, None if path is None else str(path), to_gif)
        if self._process is not None:
            self._jobs.put(job)
        else:
            if self._figure is None:
                self._figure = _Figure() if self._captions == "figure" else _Caption()
            if path is not None:
                self._figure.save(image, title, str(path))
            if to_gif:
                self._gif_frames.append(_gif_frame(image))

    def gif(self, path, fps: float = 10.0) -> None:
        if self._process is not None:
            self._jobs.put(("gif", str(path), fps))
        elif self._gif_frames:
            _write_gif(self._gif_frames, str(path), fps)

    def close(self) -> list[str]:
        """Finish every queued frame; return the error messages, if any."""
        if self._process is not None:
            self._jobs.put(None)
            while True:
                message = self._results.get()
                if message is None:
                    break
                self.errors.append(message)
            self._process.join()
            self._process = None
        elif isinstance(getattr(self, "_figure", None), _Figure):
            # pyplot keeps every figure until it is closed: a process running many fits
            # (tests, benchmarks) would pile them up.
            import matplotlib.pyplot as plt

            plt.close(self._figure.fig)
            self._figure = None
        return self.errors
