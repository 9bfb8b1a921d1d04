"""A plain object's answer turned about the floor's vertical: the turns a photo's colours prefer, for the polish.

A teapot's body is a solid of revolution about its vertical axis, and its
spout and handle, thin, are what a photo's mask loses first (on a grey
floor, or where the mesh's outline reading leaves them out). Without them
every turn of the body about that axis fits the mask alike, and the loop's
answer is any of them: on the photo benchmark's seed 32 case 6 it ended
51.6 degrees off, on seed 31 case 14 20.0 degrees, each time the rotation
that takes it to the truth within 10 degrees of the mesh's vertical. The
loop's twin (search.Hypotheses.flip_twin) tries only the half turn. So the
answer is turned by every STEP_DEG about the floor's vertical through the
object's centre (where it is seen stays put), the turns are refined together
with it for REFINE_STEPS steps and judged on one frame
(posefit.frame_fit.refined_together: the colour term on the union of their
masks; judged as turned, a turn a few degrees off the truth can rank below
turns far off), and the POLISHED best are handed to the polish
(posefit.search.Hypotheses.polish), which refines them and judges them with
the answer on one frame again.

Only for a plain mesh (one colour; the teapot): a textured one's own colours
choose its starts among the grid's poses (posefit.colour_starts), and the
cow's outline changes with every turn.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from posefit import frame_fit

STEP_DEG = 30.0  # the turns tried: every this many degrees about the floor's vertical
REFINE_STEPS = 10  # the turns and the answer refined together on the one frame before they are judged there
POLISHED = 2  # the best of them (so judged, on one frame with the answer) handed to the polish


def turned(R: torch.Tensor, T: torch.Tensor, centre: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose R (3, 3), T (3,) with the mesh turned `degrees` about its +Y (the floor's vertical, as
    initial.Upright takes it) through `centre` (3,), which stays where it is seen (as search's flip_twin)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    turn = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=R.dtype, device=R.device)
    R_turned = turn @ R  # x @ R_turned = (x turned about the mesh's +Y) @ R
    centre = centre.to(R.device, R.dtype)
    return R_turned, centre @ R + T - centre @ R_turned


def best_turns(mesh, pixels: np.ndarray, fov: float, R: torch.Tensor, T: torch.Tensor, centre: torch.Tensor,
               background=None, *, step_deg: float = STEP_DEG, count: int = POLISHED, steps: int = REFINE_STEPS,
               zoom: float = 1.0, care: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` turns R (n, 3, 3), T (n, 3) of the answer R (3, 3), T (3,) about the floor's vertical
    through `centre` (every `step_deg`), those whose colours explain the photo (H, W, 3 in [0, 1], as it came)
    best when refined together with the answer for `steps` steps and judged with it on one frame
    (frame_fit.refined_together, its frame `zoom` times larger, care: 0 on something in front of the object),
    as refined, best first (on the CPU)."""
    poses = [turned(R, T, centre, k * step_deg) for k in range(1, int(round(360.0 / step_deg)))]
    R_all = torch.stack([R] + [p[0] for p in poses])
    T_all = torch.stack([T] + [p[1] for p in poses])
    R_all, T_all, scores = frame_fit.refined_together(mesh, pixels, fov, R_all, T_all, background, steps=steps,
                                                        zoom=zoom, care=care)
    scores = scores[1:]
    order = [k for k in np.argsort(scores, kind="stable").tolist() if math.isfinite(scores[k])][:count]
    index = torch.tensor(order, dtype=torch.long) + 1
    return R_all[index], T_all[index]
