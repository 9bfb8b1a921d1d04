"""Where to start a 6-DoF fit: the pose hypotheses that explain an observed mask best, from a coarse grid.

No lucky start is needed. The mesh is rendered once from every view
direction of a grid on the sphere, centred and at one distance, as hard
silhouettes at a low resolution (one batch). A silhouette seen from a
camera rolled about its optical axis, moved closer or farther, or pointed
elsewhere is the same silhouette rotated, scaled and shifted in the image,
so each view is compared with the mask under every in-plane rotation of a
second grid, after scaling and shifting the mask so that its area and
centroid match the view's. The score is the IoU. The best hypotheses, no
two closer than MIN_SEPARATION_DEG, become 3-D poses: the rotation of the
view and the roll, turned so that the object sits on the ray through the
mask's centroid, at the depth its area implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch3d.renderer import FoVPerspectiveCameras, RasterizationSettings, look_at_rotation
from pytorch3d.structures import Meshes
from pytorch3d.transforms import axis_angle_to_matrix

from posefit import grid_kernels, render

GRID_VIEWS = 240  # view directions, a Fibonacci lattice on the whole sphere (about 13 degrees apart)
GRID_ROLLS = 24  # in-plane rotations, 15 degrees apart
SCORE_SIDE = 64  # pixels a side of the views' renders
FILL = 0.75  # the bounding sphere's share of the views' field of view
MIN_SEPARATION_DEG = 25.0  # hypotheses kept are at least this far apart (geodesic angle)
MAX_ROLL_DEG = 60.0  # Upright: the camera's roll off the floor's horizontal (a hand-held photo's is within +-40)
STRAIGHT_DOWN_DEG = 10.0  # Upright: within this of looking straight down a camera may face any way
# A piece of the mask taken for something in front of the object (posefit.occluders) leaves the object's
# part behind it missing from the mask's area: score_grid then also scores the views at OCCLUDED_SCALES
# times the scale that area gives, each placed by the whole object's centroid (hidden_centroid).
OCCLUDED_SCALES = (1.0, 1.12, 1.25)
HIDDEN_REACH = 0.5  # hidden_centroid: the part behind lies within this times the seen part's size of it
COMPILED_GRID = True  # on the CPU, score_grid counts each pair's pixels in a compiled loop (posefit.grid_kernels)


@dataclass(frozen=True)
class Upright:
    """The object stands on a floor and the camera is above it, not rolled far: a photograph's prior.

    The floor is the plane y = floor_y of the mesh's coordinates (its lowest vertex, +Y up: both of the
    chapter's meshes stand so). A pose is allowed when its camera centre is above that plane, its x axis is
    at most max_roll_deg out of level, and it is not upside down (its y axis pointing into the floor; a
    camera looking nearly straight down may turn any way). Why it matters: for an object with a vertical
    plane of symmetry (the cow, the teapot) the view from d and the view from d mirrored in that plane and
    turned half a turn show the same silhouette, and that second view is from below the floor, or upside
    down; a silhouette alone cannot tell them apart, the floor can.
    """

    floor_y: float
    max_roll_deg: float = MAX_ROLL_DEG

    @classmethod
    def of(cls, mesh, max_roll_deg: float = MAX_ROLL_DEG) -> Upright:
        """The floor under this mesh (its lowest vertex)."""
        return cls(float(mesh.verts_packed()[:, 1].min()), max_roll_deg)

    def allows(self, R: torch.Tensor, camera_y: torch.Tensor) -> torch.Tensor:
        """Per pose (R (..., 3, 3), its camera centre's height (...)): above the floor, level enough, upright.

        The camera's x and y axes in mesh coordinates are R's first two columns: R[1, 0] is the sine of
        the x axis's tilt out of level (the roll), R[1, 1] < 0 a y axis pointing down.
        """
        if self.max_roll_deg >= 90.0:
            return camera_y > self.floor_y
        level = R[..., 1, 0].abs() <= math.sin(math.radians(self.max_roll_deg))
        not_upside_down = R[..., 1, 1] >= -math.sin(math.radians(STRAIGHT_DOWN_DEG))
        return (camera_y > self.floor_y) & level & not_upside_down


def mesh_centre_radius(mesh) -> tuple[torch.Tensor, float]:
    """The centre of the mesh's bounding box and the radius of the sphere about it that holds every vertex."""
    verts = mesh.verts_packed()
    centre = (verts.min(0).values + verts.max(0).values) / 2
    return centre, float((verts - centre).norm(dim=1).max())


def ndc_grid(H: int, W: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x (+left) and y (+up) of every pixel centre, as PyTorch3D places them (the shorter side spans [-1, 1])."""
    S = min(H, W)
    x = (W - 1 - 2 * torch.arange(W, dtype=torch.float32, device=device)) / S
    y = (H - 1 - 2 * torch.arange(H, dtype=torch.float32, device=device)) / S
    return x[None, :].expand(H, W), y[:, None].expand(H, W)


def moments(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (N, 2) in NDC and areas (N,) in NDC^2 of (N, H, W) masks (weights in [0, 1])."""
    N, H, W = masks.shape
    x, y = ndc_grid(H, W, masks.device)
    weight = masks.reshape(N, -1)
    count = weight.sum(1).clamp(min=1e-6)
    centroid = torch.stack([(weight * x.reshape(1, -1)).sum(1), (weight * y.reshape(1, -1)).sum(1)], 1) / count[:, None]
    return centroid, count * (2.0 / min(H, W)) ** 2


def fibonacci_directions(n: int, margin_deg: float = 0.0) -> np.ndarray:
    """n unit vectors spread evenly over the sphere (+Y up), none within margin_deg of +-Y.

    The Fibonacci lattice: equal steps in height, the golden angle between
    neighbours in azimuth; its heights are squeezed into the band that keeps
    the margin from both poles.
    """
    k = np.arange(n) + 0.5
    y = math.cos(math.radians(margin_deg)) * (1.0 - 2.0 * k / n)
    ring = np.sqrt(1.0 - y * y)
    azimuth = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([ring * np.sin(azimuth), y, ring * np.cos(azimuth)], axis=1)


def view_directions(n: int) -> torch.Tensor:
    """n unit vectors evenly over the whole sphere (the Fibonacci lattice, no margin)."""
    return torch.tensor(fibonacci_directions(n), dtype=torch.float32)


def roll_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotations about the camera's optical axis (row-vector convention: x_view @ Rz), (n, 3, 3)."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(angles), torch.ones_like(angles)
    return torch.stack([torch.stack([c, s, zero], -1), torch.stack([-s, c, zero], -1),
                        torch.stack([zero, zero, one], -1)], -2)


def ray_rotation(ray: torch.Tensor) -> torch.Tensor:
    """Q (row-vector convention) with (0, 0, 1) @ Q = ray, turning about the axis perpendicular to both."""
    ray = ray / ray.norm(dim=-1, keepdim=True)
    z = torch.zeros_like(ray)
    z[..., 2] = 1.0
    axis = torch.cross(z, ray, dim=-1)
    sine, cosine = axis.norm(dim=-1, keepdim=True), ray[..., 2:3]
    angle = torch.atan2(sine, cosine)
    axis = axis / sine.clamp(min=1e-12)
    # axis_angle_to_matrix turns column vectors; its transpose turns row vectors.
    return axis_angle_to_matrix(axis * angle).transpose(-1, -2)


def render_views(mesh, directions: torch.Tensor, fov: float, side: int, distance: float, centre: torch.Tensor):
    """Hard silhouettes (V, side, side) of the mesh seen from centre + distance * direction, looking at the centre."""
    device = mesh.device
    up = torch.tensor([[0.0, 1.0, 0.0]], device=device).expand(len(directions), 3).clone()
    polar = directions[:, 1].abs() > 0.99
    up[polar] = torch.tensor([0.0, 0.0, 1.0], device=device)
    eye = centre[None] + distance * directions.to(device)
    R = look_at_rotation(eye, at=centre[None], up=up, device=device)
    T = -torch.bmm(eye[:, None], R)[:, 0]
    return R, hard_silhouettes(mesh, R, T, fov, side).float()


def hard_silhouettes(mesh, R: torch.Tensor, T: torch.Tensor, fov: float, size) -> torch.Tensor:
    """(n, H, W) bool: the mesh's silhouettes at poses R (n, 3, 3), T (n, 3), one face per pixel, no blur.
    size: an int (square) or (H, W)."""
    cameras = FoVPerspectiveCameras(device=mesh.device, fov=fov, znear=render.CAMERA_ZNEAR)
    rasterizer = render.make_rasterizer("fast", cameras,
                                        RasterizationSettings(image_size=size, faces_per_pixel=1, blur_radius=0.0))
    plain = Meshes(verts=[mesh.verts_packed()] * len(R), faces=[mesh.faces_packed()] * len(R))
    with torch.no_grad():
        return rasterizer(plain, R=R, T=T).pix_to_face[..., 0] >= 0


def score_grid(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, chunk: int = 16,
               care: torch.Tensor | None = None, scales: tuple[float, ...] = (1.0,), pairs: torch.Tensor | None = None):
    """IoU of every (view, roll) with the mask, scaled and shifted to the view's area and centroid.

    care: (H, W) weights of the mask's pixels in the IoU (None: all 1): 0 on something in front of the
    object, whose pixels neither the view nor the mask's area and centroid should count; the object's part
    behind it is missing from what is left, so each view is also tried at the `scales` (factors on the
    scale from the areas) and the best kept. Pixels beyond the image count (as background).
    pairs: (V, n_rolls) bool, the (view, roll) pairs to score (None: all); the others score -1 (a lost
    track's search scores only the rolls near its last pose's: a third of them).

    Returns iou (V, n_rolls), the scale s (mask NDC per view NDC) per (view, roll), and where the view's
    centre (its object's centre) lands in the mask, in NDC (V, n_rolls, 2).
    """
    V, n, _ = view_silhouettes.shape
    H, W = mask.shape
    S = min(H, W)
    n_rolls = len(rolls)
    view_centroid, view_area = moments(view_silhouettes)
    (mask_centroid,), (mask_area,) = moments((mask if care is None else mask * care)[None])
    behind = None if care is None else hidden_centroid(mask, care, mask_area)
    base_scale = torch.sqrt(mask_area / view_area.clamp(min=1e-9))  # (V,)
    px, py = ndc_grid(n, n, mask.device)  # view NDC of each output pixel
    cos, sin = torch.cos(rolls), torch.sin(rolls)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # row-vector 2-D rotations
    chosen = (torch.ones((V, n_rolls), dtype=torch.bool, device=mask.device) if pairs is None
              else pairs.to(mask.device)).reshape(-1).nonzero()[:, 0]  # flat (view, roll) indices
    # where each view's centre lands, for every roll (cheap: no pixels)
    centre = torch.einsum("vi,rij->vrj", -view_centroid, rot)
    # Per scale factor: the scale s of every (view, roll) and the object's centroid in the mask (the seen
    # part's, moved towards the hidden part's by the hidden part's share of the area the factor gives the
    # whole, 1 - 1 / factor^2).
    scale = [(base_scale * factor)[:, None].expand(-1, n_rolls) for factor in scales]
    centroid = [mask_centroid if behind is None else mask_centroid + (1 - 1 / factor**2) * (behind - mask_centroid)
                for factor in scales]
    iou = [torch.full((V * n_rolls,), -1.0, device=mask.device) for _ in scales]
    if COMPILED_GRID and not mask.is_cuda:
        # One compiled pass over each pair's pixels (posefit.grid_kernels), instead of the tensors below.
        scores = np.empty((len(scales), len(chosen)), dtype=np.float32)
        grid_kernels.score_pairs(
            _float32(view_silhouettes), _float32(px[0]), _float32(py[:, 0]), _float32(view_centroid), _float32(rot),
            np.stack([_float32(s[:, 0]) for s in scale]), np.stack([_float32(c) for c in centroid]),
            _float32(mask), np.zeros((0, 0), np.float32) if care is None else _float32(care),
            (chosen // n_rolls).numpy(), (chosen % n_rolls).numpy(), scores)
        for k in range(len(scales)):
            iou[k][chosen] = torch.from_numpy(scores[k])
    else:  # (a GPU's, or with COMPILED_GRID off: tensors, a block of views at a time)
        p = torch.stack([px, py], -1).reshape(1, -1, 2)  # (1, n*n, 2)
        images = mask[None] if care is None else torch.stack([mask, care])
        # (the (x, y) pairs flattened and the per-axis constants repeated along them: the same operations on each
        # number as on (..., 2) tensors, without broadcasting along a last axis of 2)
        centroid_repeated = [c.repeat(n * n) for c in centroid]
        # (x -> -x * S / W, y -> -y * S / H; the sign on the divisor: the same numbers as on the dividend)
        flip = torch.tensor([-W, -H], dtype=torch.float32, device=mask.device).repeat(n * n)
        for start in range(0, len(chosen), chunk * n_rolls):
            index = chosen[start : start + chunk * n_rolls]
            v, r = index // n_rolls, index % n_rolls
            # q = mask centroid + s * (p - view centroid) @ rot(roll), per pair; for all pairs, a block of views
            # under every roll (that einsum's rounding: the whole grid's scores as they always were)
            if pairs is None:
                views_in = slice(start // n_rolls, start // n_rolls + chunk)
                turned = torch.einsum("vpi,rij->vrpj", p - view_centroid[views_in, None], rot)
            else:
                turned = torch.einsum("kpi,kij->kpj", p - view_centroid[v, None], rot[r])
            turned = turned.reshape(len(index), -1)  # (pairs, n*n*2): x, y of each pixel in turn
            views = view_silhouettes[v]
            for k in range(len(scales)):
                q = centroid_repeated[k] + scale[k].reshape(-1)[index, None] * turned
                # NDC -> grid_sample's coordinates (x: -1 left edge, +1 right edge; y: -1 top)
                grid = q * S / flip
                warped = F.grid_sample(images[None].expand(len(index), len(images), H, W), grid.reshape(-1, n, n, 2),
                                       mode="bilinear", padding_mode="zeros", align_corners=False)
                warped_mask = warped[:, 0]
                both = views * warped_mask
                union = views + warped_mask - both
                if care is not None:
                    outside = (grid.abs() > 1).reshape(-1, n, n, 2)
                    weight = torch.where(outside[..., 0] | outside[..., 1], 1.0, warped[:, 1])
                    both, union = both * weight, union * weight
                iou[k][index] = both.sum((1, 2)) / union.sum((1, 2)).clamp(min=1e-9)
    best_iou = best_scale = best_centre = None
    for k in range(len(scales)):
        score = iou[k].reshape(V, n_rolls)
        where = centroid[k] + scale[k][..., None] * centre
        if best_iou is None:
            best_iou, best_scale, best_centre = score, scale[k], where
        else:
            better = score > best_iou
            best_iou = torch.where(better, score, best_iou)
            best_scale = torch.where(better, scale[k], best_scale)
            best_centre = torch.where(better[..., None], where, best_centre)
    return best_iou, best_scale, best_centre


def _float32(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's numbers as a contiguous float32 array (what the compiled loops take)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def hidden_centroid(mask: torch.Tensor, care: torch.Tensor, seen_area: torch.Tensor) -> torch.Tensor:
    """The NDC centroid (2,) of where the object's part behind something in front of it (the mask's pixels
    that care leaves out, or all that care leaves out if none of them is the mask's) most likely lies: those
    within HIDDEN_REACH times the seen part's size (the square root of its area, seen_area in NDC^2) of the
    seen part; the seen part's own centroid if there are none.

    score_grid places a view's centroid on the mask's; with a piece left out, the seen part's centroid lies
    off the whole object's towards the side left in view (seed 22 case 20: a teapot with its handle behind a
    post, the grid's nearest view to the truth 31st at 23 degrees, the fit 47 degrees off). A piece that
    another reading found (posefit.occluders.borrowed_piece) may lie wholly outside this mask, which gave it
    to the backdrop: the part behind it lies in it all the same (41/7, a cow behind a white box: the fit 83.2
    degrees off with the views placed by the seen part alone, 0.3 with the box's pixels beside it)."""
    H, W = mask.shape
    seen = (mask * care) > 0.5
    hidden = (mask * (1 - care)) > 0.5
    if not hidden.any():
        hidden = care < 0.5
    reach = max(1, round(HIDDEN_REACH * float(seen_area.sqrt()) * min(H, W) / 2))
    # (a square's max, one side at a time: the same pixels as one max_pool2d, in a fraction of the time)
    rows = F.max_pool2d(seen[None, None].float(), (2 * reach + 1, 1), stride=1, padding=(reach, 0))
    near = F.max_pool2d(rows, (1, 2 * reach + 1), stride=1, padding=(0, reach))[0, 0] > 0
    weights = (hidden & near).float()
    if weights.sum() == 0:
        weights = seen.float()
    return moments(weights[None])[0][0]


@dataclass(frozen=True)
class ViewGrid:
    """The grid's views of the mesh, rendered once (view_grid), with what scoring a mask against them needs."""

    directions: torch.Tensor  # (V, 3) from the mesh's centre towards each view's camera
    angles: torch.Tensor  # (rolls,) the in-plane rotations, radians
    R_all: torch.Tensor  # (V, rolls, 3, 3) the rotation of every (view, roll)
    silhouettes: torch.Tensor  # (V, side, side) the views' hard silhouettes
    centre: torch.Tensor  # the mesh's centre
    distance: float  # the views' distance from it
    upright: Upright | None = None

    def allowed(self, scale: torch.Tensor) -> torch.Tensor | None:
        """Which (view, roll) poses `upright` allows at these scales (V, rolls) (None: no prior, or it allows
        none)."""
        if self.upright is None:
            return None
        # The camera sits at the view's depth along its direction from the centre, whatever the roll and
        # wherever the object is put on the image (the turn onto the centroid's ray keeps the camera).
        camera_y = self.centre[1] + self.distance / scale * self.directions[:, 1:2]  # (V, rolls)
        allows = self.upright.allows(self.R_all, camera_y)
        return allows if bool(allows.any()) else None

    def best_score(self, iou: torch.Tensor, scale: torch.Tensor) -> float:
        """The best of a score_grid's IoUs, of those `upright` allows."""
        allows = self.allowed(scale)
        return float(iou.max() if allows is None else iou[allows].max())


def view_grid(mesh, fov: float, *, views: int = GRID_VIEWS, rolls: int = GRID_ROLLS, side: int = SCORE_SIDE,
              near=None, upright: Upright | None = None) -> ViewGrid:
    """The mesh rendered from `views` directions spread over the sphere (only those within near's angle of
    its rotation, if given: (R, degrees)), each to be scored under `rolls` in-plane rotations."""
    device = mesh.device
    centre, _ = mesh_centre_radius(mesh)
    distance = view_distance(mesh, fov)
    directions = view_directions(views).to(device)
    angles = torch.arange(rolls, dtype=torch.float32, device=device) * (2 * math.pi / rolls)
    if near is not None:
        R_near, degrees = near
        # The direction from the object to the camera, in mesh coordinates, is -(0, 0, 1) @ R^T.
        seen_from = -R_near.to(device)[:, 2]
        directions = directions[directions @ seen_from >= math.cos(math.radians(degrees))]
        if len(directions) == 0:
            directions = seen_from[None]
    R_views, silhouettes = render_views(mesh, directions, fov, side, distance, centre)
    # The rotation of every (view, roll): the view's, then the roll about the optical axis.
    R_all = R_views[:, None] @ roll_matrices(angles)[None]  # (V, rolls, 3, 3)
    return ViewGrid(directions, angles, R_all, silhouettes, centre, distance, upright)


def view_distance(mesh, fov: float) -> float:
    """The distance of the grid's views: the bounding sphere fills FILL of the field of view."""
    _, radius = mesh_centre_radius(mesh)
    return radius / math.sin(math.atan(FILL * math.tan(math.radians(fov) / 2)))


def initial_poses(mesh, mask: torch.Tensor, fov: float, count: int, *, views: int = GRID_VIEWS,
                  rolls: int = GRID_ROLLS, side: int = SCORE_SIDE, min_separation_deg: float = MIN_SEPARATION_DEG,
                  near=None, upright: Upright | None = None, care: torch.Tensor | None = None,
                  grid: ViewGrid | None = None):
    """The `count` best-scoring poses for this (H, W) mask: R (count, 3, 3), T (count, 3), their IoUs, and the
    weights (H, W) of the mask's pixels that the scores counted (None: all of them).

    near: (R, degrees): only views and rolls within that angle of R's (a lost track's neighbourhood).
    upright: the poses it allows come first (the others only if too few are allowed).
    care: the weights of the mask's pixels, 0 on what was taken for something in front of the object
    (posefit.occluders.in_front_piece): the grid scores with them (None: all count).
    grid: view_grid(mesh, fov, views=views, rolls=rolls, side=side, near=near, upright=upright), if already made.
    """
    device = mesh.device
    grid = grid or view_grid(mesh, fov, views=views, rolls=rolls, side=side, near=near, upright=upright)
    R_all = grid.R_all
    pairs = None
    if near is not None:  # rolls (and views) too far from the neighbourhood's rotation are out (score -1)
        trace = (R_all @ near[0].to(device).T).diagonal(dim1=-2, dim2=-1).sum(-1)
        pairs = (trace - 1) / 2 >= math.cos(math.radians(near[1]))
    if care is not None:
        care = care.to(device)
    iou, scale, where, order = ranked(grid, mask, care, pairs)
    picked = spread_out(((divmod(index, rolls), R_all[divmod(index, rolls)]) for index in order.tolist()), count,
                        min_separation_deg)
    R, T = placed(grid, scale, where, fov, picked)
    return R, T, [float(iou[v, r]) for v, r in picked], care


def placed(grid: ViewGrid, scale: torch.Tensor, where: torch.Tensor, fov: float, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """The poses R (n, 3, 3), T (n, 3) of these (view, roll) pairs of a score_grid (its scale and where): the
    pair's rotation turned onto the ray through the mask's centroid, at the depth its scale gives."""
    t = math.tan(math.radians(fov) / 2)
    Rs, Ts = [], []
    for v, r in pairs:
        depth = grid.distance / float(scale[v, r])
        x, y = (float(c) for c in where[v, r])
        ray = torch.tensor([x * t, y * t, 1.0], device=grid.R_all.device)
        R = grid.R_all[v, r] @ ray_rotation(ray)
        Ts.append(depth * ray - grid.centre @ R)
        Rs.append(R)
    return torch.stack(Rs), torch.stack(Ts)


def ranked(grid: ViewGrid, mask: torch.Tensor, care: torch.Tensor | None = None, pairs: torch.Tensor | None = None):
    """score_grid's (iou, scale, where) for this mask (with care: its weights, at OCCLUDED_SCALES; pairs: only
    those scored), and every (view, roll) pair's flat index, best first; the pairs `upright` does not allow
    come after every allowed one (their IoUs lowered by 2, in their own order)."""
    if care is None:
        iou, scale, where = score_grid(grid.silhouettes, mask.float(), grid.angles, pairs=pairs)
    else:
        iou, scale, where = score_grid(grid.silhouettes, mask.float(), grid.angles, care=care, scales=OCCLUDED_SCALES,
                                       pairs=pairs)
    allows = grid.allowed(scale)
    if allows is not None:
        iou = torch.where(allows, iou, iou - 2.0)
    return iou, scale, where, torch.argsort(iou.reshape(-1), descending=True)


def spread_out(candidates, count: int, min_separation_deg: float = MIN_SEPARATION_DEG) -> list:
    """The keys of the first `count` of the (key, R) candidates, in their order, each R at least
    min_separation_deg (geodesic) from every R kept before it."""
    cos_limit = math.cos(math.radians(min_separation_deg))
    keys, kept = [], []
    for key, R in candidates:
        if len(keys) == count:
            break
        if all(((torch.trace(R.T @ other) - 1) / 2) < cos_limit for other in kept):
            keys.append(key)
            kept.append(R)
    return keys


def best_placed(grid: ViewGrid, mask: torch.Tensor, fov: float, count: int, care: torch.Tensor | None = None):
    """The `count` best-scoring (view, roll) pairs of the grid for this mask as poses R (count, 3, 3), T
    (count, 3), ranked as initial_poses ranks them but none left out for being near a better one: a pool for a
    second opinion to choose from (posefit.colour_starts)."""
    iou, scale, where, order = ranked(grid, mask, None if care is None else care.to(mask.device))
    return placed(grid, scale, where, fov, [divmod(index, iou.shape[1]) for index in order[:count].tolist()])
