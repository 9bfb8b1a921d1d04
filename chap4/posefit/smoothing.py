"""A track's reported poses: each frame's fit smoothed with its neighbours' (a fixed-lag smoother).

A frame's fit carries noise of its own: a few steps from a start that carries the last frames' errors, on a
mask that is a pixel off here and there (1-5 degrees from frame to frame where the true motion changes by
half a degree). The pose reported for frame t is the straight line through the fits of frames t - radius to
t + radius (least squares, each entry of R and T a linear function of the frame's index) evaluated at t, R
then projected onto the rotations (the nearest in the Frobenius norm): in the middle of a track the mean of
the 2 * radius + 1 fits, at its ends a line that does not lag behind the motion. A window never reaches
across a cut (a jump: a search's pose, taken by the tracker, JUMP_DEG or more from the frame's own fit)
nor takes in a frame without a fit (undecodable: its pose is a prediction). The tracker itself
goes on from its fits; only what it reports waits `radius` frames.

Measured (scripts outside the repository, on tracks already run: `benchmarks/RESULTS.md`, session 46): on
the 12 occluded tuning sequences from three starts, 17 -> 24 of 36 runs within the targets with a radius of
2 (a mean without the line: 22; radius 3: 25, but the default synthesised sequence's mean error 0.94 -> 0.95
degrees, with 2 0.80); the three benchmark sequences' mean error 1.38 -> 1.17 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

RADIUS = 2  # frames each side of the one reported (--smooth)
# A search's pose this far from the frame's own fit is a jump, which the smoothing does not cross. Most
# searches end near the fit (on the occluded tuning runs, a window cut at every search whose pose was taken:
# 22 of 36 runs within the targets, against 24 uncut); a true jump is tens of degrees.
JUMP_DEG = 10.0


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation nearest to a 3x3 matrix (Frobenius norm): U diag(1, 1, det(U V^T)) V^T of its SVD."""
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0]) @ Vt


def line_weights(offsets) -> np.ndarray:
    """The weights that evaluate, at offset 0, the least-squares line through values at these offsets (one
    value: 1)."""
    X = np.vander(np.asarray(offsets, dtype=np.float64), min(2, len(offsets)), increasing=True)
    return np.linalg.pinv(X)[0]


@dataclass
class _Frame:
    position: int  # the frame's place in the track
    segment: int  # frames of one segment (between cuts) smooth each other
    fit: tuple | None  # its fit, (R, T) as pushed (None: no fit, undecodable)
    payload: object = field(default=None, repr=False)


class FixedLag:
    """Frames pushed in order, returned smoothed once `radius` more have come (or at `flush`).

    push(R, T, payload, cut=...) takes a frame's fit (R (3, 3), T (3,); None for a frame without one) and
    returns the frames now ready, in order, each as (payload, R, T): R, T the smoothed pose, tensors like the
    fit's (a frame without a fit: None, None). radius 0: each frame back at once, its fit unchanged.
    """

    def __init__(self, radius: int = RADIUS):
        self.radius = radius
        self.frames: list[_Frame] = []  # the frames not yet returned, and the `radius` before them
        self.segment = 0
        self.pushed = 0  # frames pushed so far
        self.next = 0  # the position of the next frame to return

    def push(self, R, T, payload=None, *, cut: bool = False) -> list[tuple]:
        if cut:
            self.segment += 1
        position, self.pushed = self.pushed, self.pushed + 1
        fit = None if R is None else (R.detach().reshape(3, 3), T.detach().reshape(3))
        self.frames.append(_Frame(position, self.segment, fit, payload))
        return self._ready(final=False)

    def flush(self) -> list[tuple]:
        """The frames still waiting, their windows cut at the last one."""
        return self._ready(final=True)

    def _ready(self, final: bool) -> list[tuple]:
        done = []
        last = self.frames[-1] if self.frames else None
        while last is not None and self.next <= last.position:
            frame = self._at(self.next)
            if not final and last.segment == frame.segment and last.position < frame.position + self.radius:
                break  # its window is not complete yet
            done.append((frame.payload, *self._smoothed(frame)))
            frame.payload = None
            self.next += 1
        # keep only what later windows can reach
        self.frames = [f for f in self.frames if f.position >= self.next - self.radius]
        return done

    def _at(self, position: int) -> _Frame:
        return self.frames[position - self.frames[0].position]

    def _smoothed(self, frame: _Frame):
        if frame.fit is None:
            return None, None
        window = [f for f in self.frames if abs(f.position - frame.position) <= self.radius
                  and f.segment == frame.segment and f.fit is not None]
        if len(window) == 1:  # alone (radius 0, a cut on each side): its fit as it came
            return frame.fit
        weights = line_weights([f.position - frame.position for f in window])
        R, T = (np.tensordot(weights, np.stack([f.fit[i].cpu().double().numpy() for f in window]), 1) for i in (0, 1))
        R = nearest_rotation(R)
        like = frame.fit[0]
        return (torch.from_numpy(R).to(like.dtype).to(like.device),
                torch.from_numpy(T).to(like.dtype).to(like.device))
