"""Where the object is in a photo, from its edges: the mesh's outlines matched to the photo's strong edges.

A photo's masks (posefit.masks) are read from colour and brightness
against the backdrop. Where neither tells the object from its floor, a
white teapot on a grey floor under a lamp, say (its shaded side as dark
as its shadow, its lit side no brighter than the lamp's patch), the masks
miss most of it, or all of it. Its outline, though, is a strong edge of
the photo nearly all the way round. So the mesh looks for itself:

1. `outline_poses`: every view of a coarse grid (posefit.initial's views,
   OUTLINE_VIEWS directions, OUTLINE_ROLLS in-plane turns), at each of
   OUTLINE_SCALES sizes, has its outline compared with the photo's strong
   edges at every position (oriented chamfer matching, one FFT correlation
   per view, turn and size): an outline pixel counts +1 on an edge of its
   own orientation (ORIENTATIONS bins), less the farther it is, down to -1
   at EDGE_REACH and beyond. The sum rewards an outline that the edges
   follow all the way round, and not a small one that fits inside the
   object's own edges. The best give where the object is and how big;
   which way it turns, only roughly (the grid is coarse and so is the
   image).
2. `outline_reading`: the OUTLINE_VOTES best poses' silhouettes vote. Where
   OUTLINE_CORE of them agree is surely the object, beyond all of them the
   backdrop, and the watershed on the photo's gradient places the outline
   between, as posefit.masks does.

The reading joins the photo's others, and the mesh chooses among them
(posefit.readings.choose_reading).

3. `outline_starts`: for a plain mesh (the teapot) the best outline pose is
   also a start of its own, polished and judged with the others
   (posefit.search.Hypotheses.polish): where every colour reading lost the
   spout and handle, their outlines may still lead near the pose.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from posefit import initial, masks

OUTLINE_SIDE = 48  # pixels on the shorter side at which outlines meet edges
OUTLINE_VIEWS = 120  # view directions (about 18 degrees apart)
OUTLINE_ROLLS = 16  # in-plane turns (22.5 degrees apart)
# sizes: the mesh's bounding sphere spans from 0.19 to 0.9 of the field of view (initial.FILL times these)
OUTLINE_SCALES = tuple(0.25 * 1.3**k for k in range(7))
ORIENTATIONS = 4  # edge orientation bins (45 degrees each; an outline's and an edge's, modulo half a turn)
EDGE_REACH = 0.05  # an outline pixel this far from an edge (share of the shorter side) counts -1
OUTLINE_VOTES = 20  # the best poses whose silhouettes vote
OUTLINE_CORE = 0.8  # the share of them that makes a pixel surely the object
# The reading is made only if the best outline's score (-1 to 1) is at least this: on the benchmark's photos the
# objects' score 0.5-0.85, a floor with nothing on it about -0.8. Below it the best outline lies off the object
# (on the 44 RGB photos of seeds 20 and 21, every one had IoU 0 with the truth; with no strong edge in a photo
# the best sat in the image's corner).
MIN_OUTLINE_SHARE = 0.3
# Edges joined to the image's border are left out as far as this share of the shorter side along them: a wall
# meeting the floor, a table's edge, a shadow cut by the frame. Only that far, not the whole joined piece: a
# shadow running out of the frame joins the object's whole outline to the border (40 of 261 RGB photos of
# seeds 25-37 kept under 6% of their strong edges and none of the object's outline).
BORDER_TRIM = 0.15
# A plain mesh's photo fit also polishes the best outline pose, a start of its own (outline_starts; posefit.search
# polishes it for OUTLINE_START_STEPS). A white teapot on a light grey floor loses its spout and handle from every
# colour reading (they match the floor), so every pose the loop and the colours find fits the body alone and may lie
# far off in turn and tilt; the spout's and handle's outlines are edges of the photo still, and the best outline
# pose lay 7-13 degrees from the truth on four of ten white teapots' failures of seeds 80-90 (90/6, 87/16, 83/22,
# 89/12), where the nearest other pose polished lay 19-46 degrees off (87/16, 83/22, 89/12). One start: the near
# one was the best outline pose in all four.
OUTLINE_STARTS = 1


def oriented_edges(photo: np.ndarray, side: int = OUTLINE_SIDE) -> torch.Tensor:
    """The photo's (H, W, 3) strong edges (posefit.masks.strong_edges) at `side` pixels on its shorter side,
    one map per orientation bin: (ORIENTATIONS, h, w), 1 on an edge. Edges that reach the image's border
    are left out as far as BORDER_TRIM along them: a wall meeting the floor, a table's edge, the object's
    shadow cut by the frame (the object itself is whole in the picture)."""
    H, W, _ = photo.shape
    strong = masks.strong_edges(masks.gradient(photo))
    steps = max(1, round(BORDER_TRIM * min(H, W)))
    joined = ndimage.binary_dilation(strong & masks.border_band(H, W), np.ones((3, 3), bool), steps, mask=strong)
    strong &= ~joined
    grey = ndimage.gaussian_filter(photo.mean(-1), 1.0)
    bins = orientation_bins(ndimage.sobel(grey, 1), ndimage.sobel(grey, 0))
    f = side / min(H, W)
    small = (max(1, round(H * f)), max(1, round(W * f)))
    edges = torch.from_numpy(np.stack([strong & (bins == b) for b in range(ORIENTATIONS)])).float()
    return F.adaptive_max_pool2d(edges[None], small)[0]


def orientation_bins(gx, gy):
    """The orientation bin (0 to ORIENTATIONS - 1) of gradients (gx, gy), modulo half a turn (arrays or tensors)."""
    if isinstance(gx, torch.Tensor):
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)
        return (angle * (ORIENTATIONS / math.pi)).long().clamp(max=ORIENTATIONS - 1)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    return np.minimum((angle * (ORIENTATIONS / np.pi)).astype(int), ORIENTATIONS - 1)


def outline_templates(silhouettes: torch.Tensor, angles: torch.Tensor, scale: float, side: int):
    """The outlines (n, ORIENTATIONS, L, L) of views (n, s, s) turned by `angles` (n,) and scaled so that a
    view's NDC unit spans `scale` * side / 2 pixels; the view's centre at the middle pixel."""
    L = 2 * math.ceil(scale * side / 2) + 1
    offsets = torch.arange(L, dtype=torch.float32) - L // 2
    q = torch.stack([(-offsets * 2 / side)[None, :].expand(L, L), (-offsets * 2 / side)[:, None].expand(L, L)], -1)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    # A view's pixel p lands at q = scale * p @ rot (as initial.score_grid places it): p = q @ rot^T / scale.
    p = torch.einsum("pj,nij->npi", q.reshape(-1, 2) / scale, rot)
    grid = (-p).reshape(-1, L, L, 2)  # NDC (+x left, +y up) -> grid_sample's (-1: left, top)
    sil = (F.grid_sample(silhouettes[:, None], grid, align_corners=False)[:, 0] > 0.5).float()
    outline = sil + F.max_pool2d(-sil[:, None], 3, 1, 1)[:, 0]  # the silhouette less its erosion
    smooth = F.avg_pool2d(sil[:, None], 3, 1, 1)[:, 0]
    gx, gy = torch.zeros_like(smooth), torch.zeros_like(smooth)
    gx[:, :, 1:-1] = smooth[:, :, 2:] - smooth[:, :, :-2]
    gy[:, 1:-1] = smooth[:, 2:] - smooth[:, :-2]
    bins = orientation_bins(gx, gy)
    return torch.stack([outline * (bins == b) for b in range(ORIENTATIONS)], 1)


def outline_poses(mesh, photo: np.ndarray, fov: float, count: int = OUTLINE_VOTES, *,
                  upright: initial.Upright | None = None, grid: initial.ViewGrid | None = None):
    """The `count` poses whose outlines the photo's edges follow best: R (count, 3, 3), T (count, 3), and
    each one's score as a share of its outline (1: on edges of its orientation all the way round, -1: none
    near). upright: poses it does not allow are left out (initial.Upright). grid: initial.view_grid(mesh,
    fov, views=OUTLINE_VIEWS, rolls=OUTLINE_ROLLS, upright=upright), if already made."""
    grid = grid or initial.view_grid(mesh, fov, views=OUTLINE_VIEWS, rolls=OUTLINE_ROLLS, upright=upright)
    edges = oriented_edges(photo)
    _, h, w = edges.shape
    side = min(h, w)
    reach = max(2.0, EDGE_REACH * side)
    # +1 on an edge, falling to -1 at `reach` from the nearest one of the same orientation; beyond the image, -1.
    near = np.stack([np.minimum(ndimage.distance_transform_edt(e < 0.5), reach) for e in edges.numpy()])
    pad = math.ceil(max(OUTLINE_SCALES) * side / 4) + 1  # an object may be partly out of the picture
    value = F.pad(torch.from_numpy(1.0 - 2.0 * near / reach).float(), (pad,) * 4, value=-1.0)
    Hp, Wp = value.shape[1:]
    value_f = torch.fft.rfft2(value)
    V, rolls = grid.R_all.shape[:2]
    # The upright prior at scale 1 for every size (a size moves the camera along its direction: above the
    # floor at one size, it stays above at nearly all the others).
    allows = grid.allowed(torch.ones(V, rolls))
    pairs = torch.nonzero(allows) if allows is not None else torch.cartesian_prod(torch.arange(V), torch.arange(rolls))
    pairs = pairs.to(grid.silhouettes.device)
    scores, places, lengths = [], [], []
    for scale in OUTLINE_SCALES:
        templates = outline_templates(grid.silhouettes[pairs[:, 0]].cpu(), grid.angles[pairs[:, 1]].cpu(), scale, side)
        half = templates.shape[-1] // 2
        # Correlation, every orientation at once: full(t) = sum over q of template(q) * value(t + q), the
        # template's corner at t, its centre at t + half (positions wrap round the padded image).
        spectrum = (value_f[None] * torch.fft.rfft2(templates, s=(Hp, Wp)).conj()).sum(1)
        full = torch.fft.irfft2(spectrum, s=(Hp, Wp))
        rows = (torch.arange(pad, pad + h) - half) % Hp
        cols = (torch.arange(pad, pad + w) - half) % Wp
        score = full[:, rows][:, :, cols]  # (pairs, h, w): the template's centre at each pixel of the image
        best, where = score.reshape(len(pairs), -1).max(1)
        scores.append(best)
        places.append(where)
        lengths.append(templates.sum((1, 2, 3)).clamp(min=1))  # the outline's pixels
    scores, places, lengths = (torch.stack(x, 1) for x in (scores, places, lengths))  # (pairs, scales) each
    order = torch.argsort(scores.reshape(-1), descending=True)[:count]
    t = math.tan(math.radians(fov) / 2)
    Rs, Ts, shares = [], [], []
    for index in order.tolist():
        j, k = divmod(index, len(OUTLINE_SCALES))
        v, r = (int(i) for i in pairs[j])
        y, x = divmod(int(places[j, k]), w)
        ray = torch.tensor([(w - 1 - 2 * x) / side * t, (h - 1 - 2 * y) / side * t, 1.0], device=mesh.device)
        R = grid.R_all[v, r] @ initial.ray_rotation(ray)
        Rs.append(R)
        Ts.append(grid.distance / OUTLINE_SCALES[k] * ray - grid.centre @ R)
        shares.append(float(scores[j, k] / lengths[j, k]))
    return torch.stack(Rs), torch.stack(Ts), shares


def outline_reading(mesh, photo: np.ndarray, fov: float, *, upright: initial.Upright | None = None,
                    grid: initial.ViewGrid | None = None, poses=None) -> tuple[np.ndarray, float]:
    """The photo's (H, W, 3) mask found from the mesh's outlines (see the module's text; empty if the best
    pose's score is below MIN_OUTLINE_SHARE), and that score (outline_poses: the share of its outline on the
    photo's edges, -1 to 1). poses: what outline_poses returned for this photo, if already found."""
    H, W, _ = photo.shape
    R, T, shares = poses or outline_poses(mesh, photo, fov, upright=upright, grid=grid)
    if shares[0] < MIN_OUTLINE_SHARE:
        return np.zeros((H, W), dtype=bool), shares[0]
    votes = initial.hard_silhouettes(mesh, R, T, fov, (H, W)).cpu().numpy().mean(0)
    core = votes >= OUTLINE_CORE
    if not core.any():
        return core, shares[0]
    inner = ndimage.binary_erosion(core, iterations=2)
    outside = ~ndimage.binary_dilation(votes > 0, iterations=max(1, round(0.1 * math.sqrt(core.sum()))))
    mask = masks.watershed(masks.gradient(photo), inner if inner.any() else core, outside | masks.border_band(H, W))
    return masks.clean(mask), shares[0]


def outline_starts(poses, count: int = OUTLINE_STARTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` best of outline_poses' poses (R, T, shares), each at least initial.MIN_SEPARATION_DEG from
    those before it: R (n, 3, 3), T (n, 3); none if the best's score is below MIN_OUTLINE_SHARE (the edges hardly
    follow it: it lies off the object)."""
    R, T, shares = poses
    if not shares or shares[0] < MIN_OUTLINE_SHARE:
        return R[:0], T[:0]
    keep = torch.tensor(initial.spread_out(((k, R[k]) for k in range(len(R))), count), dtype=torch.long)
    return R[keep.to(R.device)], T[keep.to(T.device)]
