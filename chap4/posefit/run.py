"""Run control of a fit: the iterations, a progress bar, the stop rule, NaN and Ctrl-C, and the record."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class FitOptions:
    """What the two fitting scripts' fit() take besides their own knobs; the book's values are the defaults.

    image_size: the render size; with target_image, the largest shorter side the image is fitted at.
    fov: degrees across the shorter side (None: 60, or a photo's EXIF). pose_mode: "lookat" (the book's
    camera position) or "6dof" (the object's full pose); upright, max_roll (6dof): the object stands on a
    floor, the camera above it rolled at most max_roll degrees (posefit.initial.Upright). restarts:
    starting poses fitted together, on posefit.search.Hypotheses's schedule, whose keywords `schedule`
    overrides. settings: the command line's,
    for summary.json. progress and background_frames: the progress bar, the picture writer's own process.
    """

    iterations: int = 200
    lr: float = 0.05
    image_size: int | tuple = 256
    init_position: tuple = (3.0, 6.9, 2.5)
    target_distance: float = 3.0
    target_elevation: float = 50.0
    target_azimuth: float = 0.0
    device: str = "cpu"
    save_every: int = 1
    rasterizer: str = "fast"
    seed: int = 0
    restarts: int = 1
    target_image: object = None
    background: object = None
    fov: float | None = None
    pose_mode: str = "lookat"
    upright: bool = True
    max_roll: float = 60.0
    schedule: dict | None = None
    settings: dict | None = None
    progress: bool = True
    background_frames: bool = True


class FitLoop:
    """The iterations of a fit, as a context manager around the book's loop.

        with FitLoop(iterations, loss_threshold, desc="teapot") as loop:
            for i in loop:
                ...  # one Adam step
                if not loop.add(best):  # the best (loss, camera position), None if every pose turned NaN
                    break
                if loop.saves(i):
                    ...  # this iteration's picture
                if loop.done:
                    break

    Ctrl-C ends the loop (stopped = "interrupted") and the program goes on
    to write what it has, as after any other stop.
    """

    def __init__(self, iterations: int, loss_threshold: float, *, desc: str, save_every: int = 1,
                 progress: bool = True):
        self.iterations, self.loss_threshold, self.save_every = iterations, loss_threshold, save_every
        self.loss_history: list[float] = []
        self.camera_history: list[list[float]] = []
        self.stopped = "max_iterations"
        self.done = False
        self.bar = tqdm(range(iterations), disable=not progress, desc=desc, unit="it")
        self.started = time.perf_counter()
        self.seconds = 0.0

    def __enter__(self) -> FitLoop:
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        self.bar.close()
        self.seconds = time.perf_counter() - self.started
        if kind is KeyboardInterrupt:
            self.stopped = "interrupted"
            return True  # handled: the results so far are written
        return False

    def __iter__(self):
        return iter(self.bar)

    def add(self, best) -> bool:
        """Record an iteration's best (loss, camera position); False (stopped = "nan") when there is none."""
        if best is None:
            self.stopped = "nan"
            return False
        loss, camera_position = best
        self.loss_history.append(float(loss))
        self.camera_history.append([float(v) for v in camera_position])
        self.bar.set_postfix(loss=f"{loss:.1f}")
        if loss < self.loss_threshold:
            self.done, self.stopped = True, "threshold"
        return True

    def saves(self, i: int) -> bool:
        """Iteration i gets a picture: every save_every-th, and the last (0: none)."""
        return bool(self.save_every) and (i % self.save_every == 0 or self.done or i == self.iterations - 1)

    def summary(self) -> dict:
        """summary.json's record of the run."""
        n = len(self.loss_history)
        return {
            "iterations": n,
            "final_loss": self.loss_history[-1] if n else None,
            "stopped": self.stopped,
            "loss_history": self.loss_history,
            "camera_history": self.camera_history,
            "seconds": round(self.seconds, 3),
            "seconds_per_iteration": round(self.seconds / n, 4) if n else None,
        }
