"""A photo's 6-DoF starts chosen by the object's colours, not by its outline alone.

The grid (posefit.initial) ranks poses by how well their silhouettes match
the photo's mask. Where something stands in front of a textured object, or
its outline reads the same from the front and from behind (a cow seen from
above), poses far from the truth match the mask as well as the true one: on
the photo benchmark's failures the grid pair nearest the truth ranked 75th
to 330th, and no hypothesis the loop refined came near it. The colours tell
them apart: the cow's patches and its shaded side are where a pose puts them
or not. So the grid's best RANK_POOL poses are scored by the tracker's
photo loss (posefit.frame_fit.losses: silhouette + colours under the photo's
own light, composited over the floor behind the object) at RANK_SIDE
pixels, the KEEP best fitted by it for FIT_STEPS steps together, scored
again at CHECK_SIDE pixels, and the COUNT best (MIN_SEPARATION_DEG apart)
are handed to the polish (posefit.search.Hypotheses.polish), which refines
them like its finalists and answers whichever explains the photo best.

A plain mesh (the teapot) has them too, though its one colour gives its
shading alone and its best colour poses are often its half-turn twins (seed
30, cases 8 and 14, teapots behind a post or a box: 145-177 degrees off; so
at first only the cow had them). A twin costs only its polish: the polish
judges it against the loop's answer, and the answer's turns about the
floor's vertical (posefit.turns) against them all. And where the teapot's
mask has lost its spout and handle (a white teapot on light grey) or
something hides part of it, every hypothesis the loop refines may lie far
off while a colour start lies near (session 47, on the teapot failures of
seeds 30-34: 32/20 57.5 -> 2.4 degrees, 32/4 27.8 -> 4.5).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from posefit import frame_fit, initial, render

RANK_POOL = 400  # the grid's best poses (by silhouette) that the colours rank
RANK_SIDE = 64  # the photo's shorter side, in pixels, for that ranking and the fit
KEEP = 16  # the best of them by colour, fitted together ...
FIT_STEPS = 20  # ... for this many steps
FIT_LR, FIT_LR_END = 0.02, 0.2  # (the rate, falling geometrically to this share of it)
CHECK_SIDE = 128  # then ranked again at this shorter side
COUNT = 2  # the starts handed to the polish
TEXTURE_SPREAD = 0.05  # textured(): faces' colours differing by less than this (0-1) are one colour


def textured(mesh) -> bool:
    """Whether the mesh's faces differ in colour (render.face_colours, the colours the photo loss renders) by
    more than TEXTURE_SPREAD in some channel: a texture map or vertex colours, not one plain colour (a mesh
    without a texture is loaded plain grey, posefit.data.load_mesh)."""
    colours = render.face_colours(mesh)
    return len(colours) > 0 and float((colours.max(0).values - colours.min(0).values).max()) > TEXTURE_SPREAD


def colour_starts(mesh, pixels: np.ndarray, fov: float, mask: torch.Tensor, grid: initial.ViewGrid,
                  care: torch.Tensor | None = None, background=None, *, pool: int = RANK_POOL, keep: int = KEEP,
                  steps: int = FIT_STEPS, count: int = COUNT,
                  min_separation_deg: float = initial.MIN_SEPARATION_DEG, zoom: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` poses R (n, 3, 3), T (n, 3) of the object in the photo (H, W, 3 in [0, 1], as it came),
    chosen by their colours among the grid's `pool` best for the photo's mask (with care: the pixels' weights
    the grid scored with, 0 on something in front; see the module's docstring); zoom: its frames drawn that
    many times larger (frame_fit.zoom_for). On the CPU."""
    R, T = initial.best_placed(grid, mask, fov, pool, care)
    renderers, plain, frame = frame_fit.photo_frame(mesh, pixels, fov, mask, care, RANK_SIDE, background, zoom)
    loss = frame_fit.photo_losses(renderers, plain, frame, R, T)
    order = np.argsort(loss, kind="stable")[:keep]
    best = torch.from_numpy(order[np.isfinite(loss[order])])
    if len(best) == 0:
        return R[:0], T[:0]
    R, T, _, _ = frame_fit.fit(renderers, plain.extend(len(best)), R[best].cpu(), T[best].cpu(), frame,
                               iterations=steps, lr=FIT_LR, lr_end=FIT_LR_END, weight_colour=frame_fit.WEIGHT_COLOUR,
                               light_passes=frame_fit.ROBUST_LIGHT_PASSES)
    renderers, plain, frame = frame_fit.photo_frame(mesh, pixels, fov, mask, care, CHECK_SIDE, background, zoom)
    loss = frame_fit.photo_losses(renderers, plain, frame, R, T)
    order = [k for k in np.argsort(loss, kind="stable").tolist() if math.isfinite(loss[k])]
    index = torch.tensor(initial.spread_out(((k, R[k]) for k in order), count, min_separation_deg), dtype=torch.long)
    return R[index].to(mask.device), T[index].to(mask.device)
