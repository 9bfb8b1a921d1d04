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
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage import graph, segmentation

from posefit import grid_kernels, masks, render

GRID_VIEWS = 240  # view directions, a Fibonacci lattice on the whole sphere (about 13 degrees apart)
GRID_ROLLS = 24  # in-plane rotations, 15 degrees apart
SCORE_SIDE = 64  # pixels a side of the views' renders
FILL = 0.75  # the bounding sphere's share of the views' field of view
MIN_SEPARATION_DEG = 25.0  # hypotheses kept are at least this far apart (geodesic angle)
MAX_ROLL_DEG = 60.0  # Upright: the camera's roll off the floor's horizontal (a hand-held photo's is within +-40)
STRAIGHT_DOWN_DEG = 10.0  # Upright: within this of looking straight down a camera may face any way
# Something in front of the object (in_front_piece): a piece of the photo (a region of one colour, scikit-image's
# felzenszwalb) that holds between OCCLUDER_SHARE of the mask and reaches its outline is a candidate; the
# OCCLUDER_CANDIDATES largest are each left out of the grid's scores, and the one whose best score beats the
# whole mask's by OCCLUDER_GAIN (IoU) is taken. With it left out the object's hidden part is missing from the
# mask's area, so the views are also scored at OCCLUDED_SCALES times the scale its area gives, each placed by
# the whole object's centroid (hidden_centroid). A piece is a region with its neighbours of the same hue
# (faces_of_one_hue: a post's lit, shaded and top faces), which may hold up to OCCLUDER_SHARE[1] of the mask: a
# post or a box in front is often larger in the photo than the part of the object it leaves in view (the object
# at least three quarters seen, the thing in front reaching down to the floor): on seed 24 a yellow post held
# 0.73 of case 9's mask and a red box 0.77 of case 15's (their shaded faces and the shadows about them joined by
# hue), and the cows behind them ended 42 and 64 degrees off with the bound at half the mask (0.5; 0.45 before
# the faces were joined), 0.4 and 0.5 with it at 0.8.
OCCLUDER_SHARE = (0.04, 0.8)
# ... reaching the mask's outline or within OCCLUDER_RIM pixels of it: felzenszwalb often gives an object's
# blended edge a region of its own, a rim between the bar in front and the backdrop (seed 10 case 15, a bar
# 34% of the mask, was no candidate with the outline itself; on 105 photos of seeds 0-9 this rim added three
# bars in front, and no piece of an unoccluded object).
OCCLUDER_RIM = 3
BORROW_INSIDE = 0.2  # borrowed_piece: a piece of another reading at most this much inside the chosen mask ...
BORROW_TOLERANCE = 0.005  # ... whose leaving out lowers the grid's best score by at most this
OCCLUDER_CANDIDATES = 3
# ... each grown into the mask's pixels of its hue within OCCLUDER_GROWTH pixels of it: felzenszwalb parts a
# post's or a bar's lit face from its shaded one, whose hue is the same (OCCLUDER_HUE_COS: the cosine between
# two chromaticities' offsets from grey) and its saturation often lower (pixels need at least
# OCCLUDER_SATURATION[1] of the piece's); left in the mask, the shaded face pulled the fit (seed 11 cases 15
# and 23, cows behind a red post, 71 and 130 degrees off). A piece less saturated than OCCLUDER_SATURATION[0] is not grown: a grey one has no
# hue to follow, and a white object's side takes the tint of a coloured floor's light (0.02-0.1 on seeds 7-11,
# where at 0.04 the growth took in more of a white teapot's shaded side; the painted posts and bars there are
# 0.13-0.31). The growth stays near the piece for the same reason.
OCCLUDER_GROWTH = 4
OCCLUDER_HUE_COS = 0.9
OCCLUDER_SATURATION = (0.1, 0.35)
OCCLUDER_GAIN = 0.05
# ... or, with a trial (posefit.search.trial_iou, a short fit), a candidate that the grid scores above the
# whole mask at all is taken if the trial's IoU with it left out beats the whole mask's trial by
# OCCLUDER_TRIAL_GAIN (the best such, of the OCCLUDER_TRIALS the grid scores best). The grid's views are 13
# degrees apart and 64 px wide, and its score of a mask varies by a few hundredths with what its views happen
# to match: a red bar across a teapot gained 0.030 on the grid (seed 17 case 20), as much as a piece of an
# unoccluded teapot's own body. Fitted, the mesh explains the rest of a mask much better without most things
# in front of the object (15 of 20 such pieces on seeds 13-17: +0.033 to +0.30) and hardly better without a
# piece of the object itself (at most +0.0296 there, of 25: the pixels left out no longer count either way).
OCCLUDER_TRIAL_GAIN = 0.03
OCCLUDER_TRIALS = 2  # candidates tried so, at most (a trial costs about a second)
OCCLUDED_SCALES = (1.0, 1.12, 1.25)
HIDDEN_REACH = 0.5  # hidden_centroid: the part behind lies within this times the seen part's size of it
# A photo's masks read with each surface of its border taken for the floor (choose_reading): another than the
# usual reading is taken if its score beats the usual one's by READING_GAIN; a mask's score loses OUTLINE_PENALTY
# times the share of its outline that lies off the photo's strong edges.
READING_GAIN = 0.02
OUTLINE_PENALTY = 0.2
# ... and with a trial (a short fit of each, posefit.search.trial_iou), the readings whose scores are within
# TRIAL_MARGIN of the best are scored again by it (their handicaps kept), the others are out (with one within
# it, nothing is tried).
TRIAL_MARGIN = 0.05
SEGMENT_SCALE = 100.0  # felzenszwalb's scale (larger: larger regions) at the working size
MERGE_COLOUR = 0.06  # neighbouring regions whose mean colours (RGB in [0, 1]) are this close are merged
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
    rasterizer = render.make_rasterizer("fast", FoVPerspectiveCameras(device=mesh.device, fov=fov),
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
    that care leaves out) most likely lies: those within HIDDEN_REACH times the seen part's size (the square
    root of its area, seen_area in NDC^2) of the seen part; the seen part's own centroid if there are none.

    score_grid places a view's centroid on the mask's; with a piece left out, the seen part's centroid lies
    off the whole object's towards the side left in view (seed 22 case 20: a teapot with its handle behind a
    post, the grid's nearest view to the truth 31st at 23 degrees, the fit 47 degrees off)."""
    H, W = mask.shape
    seen = (mask * care) > 0.5
    hidden = (mask * (1 - care)) > 0.5
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


def choose_reading(mesh, readings: list[torch.Tensor], fov: float, *, upright: Upright | None = None,
                   photo: np.ndarray | None = None, regions: np.ndarray | None = None,
                   outline_on_edges: list[float] | None = None, grid: ViewGrid | None = None, trial=None
                   ) -> tuple[int, torch.Tensor | None]:
    """Which of a photo's masks (posefit.masks.floor_readings: the first is the usual one) is the object's,
    and the care weights of what in it was taken for something in front of the object (None: nothing; give
    them to initial_poses, which then need not search again).

    Each is scored as the grid scores a mask, by the best IoU of a view that `upright` allows (with the
    photo, also with a piece that in_front_piece takes for something in front of the object left out, as
    initial_poses will), less OUTLINE_PENALTY times the share of its outline off the photo's strong edges
    (outline_on_edges, from posefit.masks.outline_on_edges): a mask that takes in the wall or a lamp's patch
    is no silhouette of the mesh, or has an outline that no edge of the photo backs. Another than the first
    is chosen only if it scores READING_GAIN better. regions: photo_regions(photo), grid: view_grid(mesh,
    fov, upright=upright), if already made. trial(mask, care) -> IoU: if given, the readings scored within
    TRIAL_MARGIN of the best are scored again by it, the others are out (posefit.search.trial_iou: the IoU
    after a short fit; the grid's views are 13 degrees apart and 64 px wide, which favours a compact mask
    over one whose thin parts no view quite matches); and if nothing in the chosen reading was taken for
    something in front, the grid's near misses are tried by it (in_front_piece).
    """
    grid = grid or view_grid(mesh, fov, upright=upright)
    silhouettes, angles, best_score = grid.silhouettes, grid.angles, grid.best_score
    if photo is not None and regions is None:
        regions = photo_regions(photo)
    scores, cares, wholes, handicaps = [], [], [], []
    for k, mask in enumerate(readings):
        mask = mask.float().to(mesh.device)
        best = best_score(*score_grid(silhouettes, mask, angles)[:2])
        wholes.append(best)
        care = None if photo is None else in_front_piece(silhouettes, mask, angles, photo, best_score, regions)
        if care is not None:
            best = max(best, best_score(*score_grid(silhouettes, mask, angles, care=care, scales=OCCLUDED_SCALES)[:2]))
        off_edges = 0.0 if outline_on_edges is None else 1.0 - outline_on_edges[k]
        handicaps.append(OUTLINE_PENALTY * off_edges + (0.0 if k == 0 else READING_GAIN))
        scores.append(best - handicaps[-1])
        cares.append(care)
    cut = max(scores) - TRIAL_MARGIN
    if trial is not None and sum(score >= cut for score in scores) > 1:
        scores = [-math.inf if score < cut else trial(mask.float().to(mesh.device), care) - handicap
                  for score, handicap, mask, care in zip(scores, handicaps, readings, cares, strict=True)]
    k = int(np.argmax(scores))
    if cares[k] is None:
        cares[k] = borrowed_piece(silhouettes, readings[k].float().to(mesh.device), angles, cares, best_score,
                                  wholes[k])
    if cares[k] is None and photo is not None and trial is not None:
        # The chosen reading's near misses on the grid, tried (in_front_piece). Not while the readings are
        # scored: a piece left out, the rest is explained better by a few hundredths whatever it is, and a
        # reading that took in a shadow then beat the object's own (seed 16 case 14: the chosen mask's IoU with
        # the truth 0.97 -> 0.82, for no better fit).
        cares[k] = in_front_piece(silhouettes, readings[k].float().to(mesh.device), angles, photo, best_score,
                                  regions, trial)
    return k, cares[k]


def borrowed_piece(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, cares: list,
                   best_score, whole: float | None = None) -> torch.Tensor | None:
    """The care weights of something in front of the object that another reading of the photo held (cares:
    each reading's, None where none) and this mask (H, W) leaves out, else None.

    The mesh's outline reading (posefit.outlines) follows the object's own edges, and leaves a post in front
    of it out of the mask, as the backdrop: the silhouette term would then push the object's part behind
    the post out of it (seed 10 case 15, a cow behind a bar, 7.6 degrees off). A colour reading that took
    the post in found it for what it is; its piece, if at most BORROW_INSIDE of it lies in this mask, is left
    out of this one's fit too, unless the grid then explains the mask worse. whole: the grid's best score of
    the mask as it is, if already found.
    """
    if whole is None:
        whole = best_score(*score_grid(view_silhouettes, mask, rolls)[:2])
    best, best_value = None, whole - BORROW_TOLERANCE
    inside_mask = mask > 0.5
    for care in cares:
        if care is None:
            continue
        care = care.to(mask.device)
        piece = care < 0.5
        if (piece & inside_mask).sum() > BORROW_INSIDE * piece.sum():
            continue
        value = best_score(*score_grid(view_silhouettes, mask, rolls, care=care, scales=OCCLUDED_SCALES)[:2])
        if value >= best_value:
            best, best_value = care, value
    return best


def initial_poses(mesh, mask: torch.Tensor, fov: float, count: int, *, views: int = GRID_VIEWS,
                  rolls: int = GRID_ROLLS, side: int = SCORE_SIDE, min_separation_deg: float = MIN_SEPARATION_DEG,
                  near=None, upright: Upright | None = None, photo: np.ndarray | None = None,
                  regions: np.ndarray | None = None, care: torch.Tensor | None = None, grid: ViewGrid | None = None,
                  trial=None):
    """The `count` best-scoring poses for this (H, W) mask: R (count, 3, 3), T (count, 3), their IoUs, and the
    weights (H, W) of the mask's pixels that the scores counted (None: all of them).

    near: (R, degrees): only views and rolls within that angle of R's (a lost track's neighbourhood).
    upright: the poses it allows come first (the others only if too few are allowed).
    photo: (H, W, 3) the photograph the mask was found in: a piece of the mask that the grid explains much
    better left out is taken for something in front of the object (in_front_piece), its pixels weighed 0.
    regions: photo_regions(photo), if already found. care: the weights of what was taken for something in
    front, if already found (choose_reading): the grid scores with them, and does not search (photo unused).
    grid: view_grid(mesh, fov, views=views, rolls=rolls, side=side, near=near, upright=upright), if already made.
    trial: in_front_piece's, a short fit that tells a piece in front from the grid's near miss (None: none).
    """
    device = mesh.device
    grid = grid or view_grid(mesh, fov, views=views, rolls=rolls, side=side, near=near, upright=upright)
    silhouettes, angles, R_all = grid.silhouettes, grid.angles, grid.R_all
    pairs = None
    if near is not None:  # rolls (and views) too far from the neighbourhood's rotation are out (score -1)
        trace = (R_all @ near[0].to(device).T).diagonal(dim1=-2, dim2=-1).sum(-1)
        pairs = (trace - 1) / 2 >= math.cos(math.radians(near[1]))
    if care is None and photo is not None:
        care = in_front_piece(silhouettes, mask.float(), angles, photo, grid.best_score, regions, trial)
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


def photo_regions(photo: np.ndarray) -> np.ndarray:
    """The photo's regions of one colour (labels, H x W): felzenszwalb's, neighbours of nearly one colour
    merged (felzenszwalb cut a plain bar in front of the object into five: its middle and its ends)."""
    regions = segmentation.felzenszwalb(photo, scale=SEGMENT_SCALE, sigma=0.8, min_size=20)
    return graph.cut_threshold(regions, graph.rag_mean_color(photo, regions), MERGE_COLOUR)


def occluder_candidates(photo: np.ndarray, mask: np.ndarray, regions: np.ndarray | None = None) -> list[np.ndarray]:
    """Pieces of the mask that may be something in front of the object: its regions of one colour
    (felzenszwalb on the photo), each with its neighbours of the same hue (faces_of_one_hue), that hold
    OCCLUDER_SHARE of the mask and reach its outline, or within
    OCCLUDER_RIM pixels of it (a thing in front of the object reaches beyond it), the OCCLUDER_CANDIDATES
    largest first, each with the pixels of its hue beside it (same_hue_around). regions: photo_regions(photo),
    if already found."""
    regions = photo_regions(photo) if regions is None else regions
    rim = mask & ~ndimage.binary_erosion(mask, iterations=OCCLUDER_RIM)
    area = int(mask.sum())
    chroma = masks.chromaticity(masks.smoothed(photo))
    pieces = []
    for group in faces_of_one_hue(regions, mask, chroma):
        piece = np.isin(regions, list(group)) & mask
        share = piece.sum() / max(area, 1)
        if OCCLUDER_SHARE[0] <= share <= OCCLUDER_SHARE[1] and (piece & rim).any():
            pieces.append((share, piece))
    pieces.sort(key=lambda item: -item[0])
    return [same_hue_around(chroma, mask, piece) for _, piece in pieces[:OCCLUDER_CANDIDATES]]


def faces_of_one_hue(regions: np.ndarray, mask: np.ndarray, chroma: np.ndarray) -> list[frozenset]:
    """The mask's regions (labels) with the neighbouring regions of their hue joined to them, and theirs in
    turn (frozensets of labels, each group once, in the order of its lowest label): the lit, the shaded and the top face of a post
    are regions of their own with one hue (seed 22 case 20: a yellow post's two faces were two candidates, and
    neither left out alone explained the rest). Hues as same_hue_around compares a pixel's with a piece's,
    each region's the median of its pixels in the mask; a region less saturated than OCCLUDER_SATURATION[0]
    joins nothing and is joined to nothing (a white object's side takes the tint of a coloured floor's light)."""
    labels = np.unique(regions[mask])
    hues = {label: np.median(chroma[(regions == label) & mask], 0) - 1.0 / 3.0 for label in labels}
    saturation = {label: float(np.linalg.norm(hue)) for label, hue in hues.items()}
    # Neighbouring labels: the pairs of different labels of the mask's pixels side by side.
    inside = np.where(mask, regions, -1)
    pairs = set()
    for a, b in ((inside[:, :-1], inside[:, 1:]), (inside[:-1], inside[1:])):
        touching = (a != b) & (a >= 0) & (b >= 0)
        pairs.update(zip(a[touching].tolist(), b[touching].tolist(), strict=True))

    def alike(a, b) -> bool:
        low, high = sorted((saturation[a], saturation[b]))
        return (low >= OCCLUDER_SATURATION[0] and low >= OCCLUDER_SATURATION[1] * high
                and float(hues[a] @ hues[b]) >= OCCLUDER_HUE_COS * low * high)

    # The neighbours of the neighbours, and so on: the connected components of the graph of alike neighbours.
    index = {label: k for k, label in enumerate(labels.tolist())}
    edges = np.array([(index[a], index[b]) for a, b in pairs if alike(a, b)], dtype=np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(labels),) * 2)
    _, component = csgraph.connected_components(graph, directed=False)
    return [frozenset(labels[component == c].tolist()) for c in dict.fromkeys(component.tolist())]


def same_hue_around(chroma: np.ndarray, mask: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """The piece (H, W bool) with the mask's pixels of its hue joined to it within OCCLUDER_GROWTH pixels
    (chroma: the photo's chromaticity, posefit.masks.chromaticity)."""
    offset = chroma - 1.0 / 3.0  # from grey
    hue = np.median(chroma[piece], 0) - 1.0 / 3.0
    saturation = float(np.linalg.norm(hue))
    if saturation < OCCLUDER_SATURATION[0]:
        return piece
    length = np.linalg.norm(offset, axis=-1)
    alike = (offset @ hue >= OCCLUDER_HUE_COS * length * saturation) & (length >= OCCLUDER_SATURATION[1] * saturation)
    near = ndimage.binary_dilation(piece, iterations=OCCLUDER_GROWTH)
    joined, _ = ndimage.label((alike & near & mask) | piece)
    return np.isin(joined, np.unique(joined[piece])) & mask


def in_front_piece(view_silhouettes: torch.Tensor, mask: torch.Tensor, rolls: torch.Tensor, photo: np.ndarray,
                   best_score=lambda iou, scale: float(iou.max()), regions: np.ndarray | None = None,
                   trial=None) -> torch.Tensor | None:
    """The care weights (H, W; 0 on the piece) if a piece of the mask is something in front of the object,
    else None.

    A post or a box in front of the object joins the mask (it is not the backdrop), and a silhouette fitted
    to it turns towards it (on the photo benchmark's tuning seeds none of the occluded photos succeeded).
    The grid tells it: with the piece left out (and the views scaled up to make up for the part of the
    object behind it), some view explains the rest much better than any explains the whole mask. A piece
    of the object itself (a cow's black patch) left out helps no view: the right one covers it anyway.
    best_score(iou, scale): the best of a grid's scores (of those the prior allows). regions: photo_regions(photo),
    if already found (the photo's masks are scored in turn: posefit.initial.choose_reading). trial(mask, care)
    -> IoU: if given, and no candidate beats the whole mask by OCCLUDER_GAIN, the OCCLUDER_TRIALS best that
    beat it at all are tried by it (posefit.search.trial_iou: a short fit), and the best of those that beat the
    whole mask's trial by OCCLUDER_TRIAL_GAIN is taken.
    """
    # The candidates are scored with the views at half their size (a quarter of the cost), and so is the whole
    # mask's score they must beat.
    small = F.avg_pool2d(view_silhouettes[:, None], 2)[:, 0]
    whole, scale, _ = score_grid(small, mask, rolls)
    whole = best_score(whole, scale)
    scored = []  # (score, care) of the candidates the grid scores above the whole mask
    for piece in occluder_candidates(photo, mask.cpu().numpy() > 0.5, regions):
        care = 1.0 - torch.from_numpy(piece).float().to(mask.device)
        iou, scale, _ = score_grid(small, mask, rolls, care=care, scales=OCCLUDED_SCALES)
        score = best_score(iou, scale)
        if score > whole:
            scored.append((score, care))
    scored.sort(key=lambda item: -item[0])  # (stable: of two alike, the larger candidate first)
    if not scored:
        return None
    if scored[0][0] > whole + OCCLUDER_GAIN:
        return scored[0][1]
    if trial is None:
        return None
    best, best_iou = None, trial(mask, None) + OCCLUDER_TRIAL_GAIN
    for _, care in scored[:OCCLUDER_TRIALS]:
        iou = trial(mask, care)
        if iou >= best_iou:
            best, best_iou = care, iou
    return best
