"""Shared machinery of the chapter's scripts.

Both experiments (diff_render.py, diff_render_texture.py) import this module
for what is not part of the book's story: getting the meshes, building the
renderers, the command line, the output folder, the fitting record
(summary.json, loss curve, final picture) and clean failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pytorch3d.renderer import (
    BlendParams,
    FoVPerspectiveCameras,
    HardPhongShader,
    MeshRasterizer,
    MeshRenderer,
    PointLights,
    RasterizationSettings,
    SoftPhongShader,
    SoftSilhouetteShader,
    camera_position_from_spherical_angles,
    look_at_rotation,
    look_at_view_transform,
)

from fast_raster import FastMeshRasterizer, SparseSoftPhongShader

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
MIRROR_ENV = "CHAP4_DATA_MIRROR"

# The meshes, where they come from, and what their bytes must hash to.
DATA_FILES = {
    "teapot.obj": (
        "https://raw.githubusercontent.com/facebookresearch/pytorch3d/main/docs/tutorials/data/teapot.obj",
        "2f833c87e691d949dfa1325df94efe3c25e95b948c7f147e2d08e3ffb719fcda",
    ),
    "cow_mesh/cow.obj": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow.obj",
        "62337f06b4aa4f2eaa95f854553a02039d853365a78b0a581c26ece5691a6d99",
    ),
    "cow_mesh/cow.mtl": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow.mtl",
        "ce6398d52486f81f2c329b1683ad4fedce970471aa36e589e05c5177432db6cb",
    ),
    "cow_mesh/cow_texture.png": (
        "https://dl.fbaipublicfiles.com/pytorch3d/data/cow_mesh/cow_texture.png",
        "cddabbae52a666173e7953e238b88340d285044dc20b36f8ed3f1a41db534fa5",
    ),
}
TEAPOT_FILES = ["teapot.obj"]
COW_FILES = ["cow_mesh/cow.obj", "cow_mesh/cow.mtl", "cow_mesh/cow_texture.png"]

EXIT_USAGE = 2  # bad input: flags, files, folders
EXIT_NAN = 3  # the loss or the camera became non-finite
EXIT_INTERRUPTED = 130  # Ctrl-C

BOOK_IMAGE_SIZE = 256  # loss thresholds are stated for this size


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


# ---------------------------------------------------------------------------
# Data provisioning
# ---------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install_checked(source_bytes_to: callable, target: Path, expected: str) -> str | None:
    """Write via a temporary file beside `target`; keep it only if the hash matches.

    Returns None on success, else the reason.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            source_bytes_to(handle)
        actual = sha256_of(tmp)
        if actual != expected:
            return f"SHA-256 mismatch (got {actual[:12]}..., expected {expected[:12]}...)"
        os.replace(tmp, target)
        return None
    finally:
        if tmp.exists():
            tmp.unlink()


def provision(
    name: str,
    data_dir: Path | None = None,
    mirror: str | os.PathLike | None = None,
    timeout: float = 30.0,
    allow_download: bool = True,
) -> Path:
    """Make data_dir/name present with the right SHA-256 and return its path.

    Order: a file already there with the right hash; a copy from the mirror
    folder (argument, else $CHAP4_DATA_MIRROR), laid out like data/; a
    download from the canonical address. Every copy is checked before it is
    moved into place, so a file whose hash does not match is never used.
    """
    url, expected = DATA_FILES[name]
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    target = data_dir / name
    if target.is_file() and sha256_of(target) == expected:
        return target
    reasons = []
    if target.exists():
        reasons.append(f"{target} has the wrong SHA-256")
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if mirror:
        source = Path(mirror) / name
        if source.is_file():

            def copy(handle, source=source):
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, handle)

            why = _install_checked(copy, target, expected)
            if why is None:
                return target
            reasons.append(f"mirror copy {source}: {why}")
        else:
            reasons.append(f"not in mirror {mirror}")
    if allow_download:

        def download(handle):
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, handle)

        try:
            why = _install_checked(download, target, expected)
        except OSError as exc:  # URLError, timeouts, refused connections
            why = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if why is None:
            return target
        reasons.append(f"download failed ({why})")
    raise UserError(
        f"cannot provide data/{name}: {'; '.join(reasons)}. Set {MIRROR_ENV} to a folder "
        f"holding {name}, or download {url} into {data_dir}"
    )


def provision_all(names, **kwargs) -> list[Path]:
    return [provision(name, **kwargs) for name in names]


# ---------------------------------------------------------------------------
# Cameras and renderers (the book's settings are the defaults)
# ---------------------------------------------------------------------------


def book_blur_radius(sigma: float = 1e-4) -> float:
    """The book's blur: faces influence pixels up to where sigmoid(-d/sigma) = 1e-4."""
    return float(np.log(1.0 / 1e-4 - 1.0) * sigma)


# torch's thread count at start-up, for the stock path.
DEFAULT_CPU_THREADS = torch.get_num_threads()


def set_cpu_threads(rasterizer: str) -> None:
    """One torch thread for the fast CPU path, torch's default for stock.

    The fast path is thousands of small vectorised operations per iteration.
    A second thread made it no faster on two cores (measured by
    benchmarks/bench_cpu.py), and when another busy process shares the cores
    it made it 25x slower: every operation's OpenMP threads wait for the one
    the OS has descheduled. One thread also leaves a core to the picture
    writer. Stock PyTorch3D's CPU kernels are single-threaded; torch's other
    operations keep the default there. The tracker uses this too: on a quiet
    machine two threads ran it 13% faster (20.6 s against 23.6 s for the 60
    frames), but with one other busy process they made it stall for minutes,
    while one thread took 24.4 s.
    """
    torch.set_num_threads(1 if rasterizer == "fast" else DEFAULT_CPU_THREADS)


def make_rasterizer(kind: str, cameras, raster_settings):
    """'fast' = this project's CPU path (stock on CUDA), 'stock' = PyTorch3D's."""
    cls = FastMeshRasterizer if kind == "fast" else MeshRasterizer
    return cls(cameras=cameras, raster_settings=raster_settings)


@dataclass
class Renderers:
    """The chapter's renderers, all sharing one camera and one light."""

    cameras: FoVPerspectiveCameras
    lights: PointLights
    silhouette: MeshRenderer  # soft silhouette: the thing being fitted
    phong: MeshRenderer  # hard Phong: targets and the pictures
    textured: MeshRenderer | None = None  # soft Phong: the cow's colour term


def make_renderers(
    device,
    image_size,
    rasterizer: str = "fast",
    sigma: float = 1e-4,
    gamma: float = 1e-4,
    faces_per_pixel: int = 100,
    textured_faces_per_pixel: int | None = None,
    fov: float = 60.0,
) -> Renderers:
    """The chapter's renderers; image_size is an int (square) or (H, W).

    For a non-square image PyTorch3D spans [-1, 1] across the shorter side,
    so `fov` is the field of view across the shorter side.
    """
    if not isinstance(image_size, int):
        image_size = tuple(int(s) for s in image_size)
    cameras = FoVPerspectiveCameras(device=device, fov=fov)
    lights = PointLights(device=device, location=((2.0, 2.0, -2.0),))
    blend_params = BlendParams(sigma=sigma, gamma=gamma)
    soft = RasterizationSettings(
        image_size=image_size, blur_radius=book_blur_radius(sigma), faces_per_pixel=faces_per_pixel
    )
    silhouette = MeshRenderer(
        rasterizer=make_rasterizer(rasterizer, cameras, soft),
        shader=SoftSilhouetteShader(blend_params=blend_params),
    )
    hard = RasterizationSettings(image_size=image_size, blur_radius=0.0, faces_per_pixel=1)
    phong = MeshRenderer(
        rasterizer=make_rasterizer(rasterizer, cameras, hard),
        shader=HardPhongShader(device=device, cameras=cameras, lights=lights),
    )
    textured = None
    if textured_faces_per_pixel:
        soft_textured = RasterizationSettings(
            image_size=image_size,
            blur_radius=book_blur_radius(sigma),
            faces_per_pixel=textured_faces_per_pixel,
        )
        shader_cls = SparseSoftPhongShader if rasterizer == "fast" else SoftPhongShader
        textured = MeshRenderer(
            rasterizer=make_rasterizer(rasterizer, cameras, soft_textured),
            shader=shader_cls(device=device, cameras=cameras, lights=lights),
        )
    return Renderers(cameras, lights, silhouette, phong, textured)


def set_sigma(renderers: Renderers, sigma: float) -> None:
    """Give the soft renderers another sigma, and the blur radius that goes with it (book_blur_radius)."""
    for renderer in (renderers.silhouette, renderers.textured):
        if renderer is None:
            continue
        renderer.shader.blend_params = renderer.shader.blend_params._replace(sigma=sigma)
        renderer.rasterizer.raster_settings = dataclasses.replace(
            renderer.rasterizer.raster_settings, blur_radius=book_blur_radius(sigma)
        )


def resize_image(image: torch.Tensor, size) -> torch.Tensor:
    """An (H, W) or (H, W, C) image averaged down to size (int or (h, w)): each pixel the mean of what it covers."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels_last = image.dim() == 3
    batch = image.permute(2, 0, 1)[None] if channels_last else image[None, None]
    out = torch.nn.functional.interpolate(batch, size=size, mode="area")[0]
    return out.permute(1, 2, 0) if channels_last else out[0]


def camera_R_T(camera_position: torch.Tensor):
    """The book's camera: at `camera_position`, looking at the origin, +Y up."""
    position = camera_position.reshape(-1, 3)
    R = look_at_rotation(position, device=position.device)
    T = -torch.bmm(R.transpose(1, 2), position[:, :, None])[:, :, 0]
    return R, T


def target_camera(distance: float, elevation: float, azimuth: float, device):
    R, T = look_at_view_transform(distance, elevation, azimuth, device=device)
    position = camera_position_from_spherical_angles(distance, elevation, azimuth, device=device)
    return R, T, position[0]


def hard_render(renderers: Renderers, mesh, R, T):
    """Hard Phong image (N, H, W, 4) and hard silhouette (N, H, W) from one raster."""
    fragments = renderers.phong.rasterizer(mesh, R=R, T=T)
    image = renderers.phong.shader(fragments, mesh, R=R, T=T)
    return image, fragments.pix_to_face[..., 0] >= 0


def book_mask(image: torch.Tensor) -> torch.Tensor:
    """The book's target mask: every pixel that is not pure white."""
    return (image[..., :3].max(-1).values != 1).float()


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def silhouette_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    union = (a | b).sum().item()
    return float((a & b).sum().item() / union) if union else 1.0


def rotation_error_deg(R1: torch.Tensor, R2: torch.Tensor) -> float:
    """Geodesic angle between two rotations, in degrees."""
    R = R1.reshape(3, 3).double().T @ R2.reshape(3, 3).double()
    cos = ((torch.trace(R) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cos)))


# ---------------------------------------------------------------------------
# A target from a file (--target-image)
# ---------------------------------------------------------------------------

# A pixel of an RGB target belongs to the object when some channel differs
# from the background colour by more than this (0-255): enough to ignore
# JPEG noise and a slightly uneven backdrop, small enough to keep an object
# whose colour is near the background's.
BACKGROUND_TOLERANCE = 24
# The fit runs at the file's own size; K faces per pixel at a photo's full
# resolution would take gigabytes and hours, so larger files are refused.
MAX_TARGET_SIDE = 1024
MIN_TARGET_SIDE = 8


@dataclass
class TargetImage:
    """An observed image to fit: the mask and colours the loss compares with."""

    path: Path
    kind: str  # "mask" (1 channel), "alpha" (RGBA with transparency) or "background" (RGB)
    mask: torch.Tensor  # (H, W) float, 1 on the object
    rgb: torch.Tensor | None  # (H, W, 3) the object on white, as the soft Phong renders it; None for a mask
    shown: torch.Tensor  # (H, W, 3) the image as observed, for the pictures
    background: list | None = None  # the RGB background colour (0-255) that defined the mask

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    def describe(self) -> str:
        H, W = self.size
        how = {"mask": "a 1-channel mask", "alpha": "RGBA, alpha as the mask",
               "background": f"RGB, object = not background {self.background}"}[self.kind]
        return f"{self.path} ({W}x{H}, {how})"


def border_median(pixels: np.ndarray) -> list[int]:
    """Median colour of the image border: the background of a photo on a plain backdrop."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return [int(round(v)) for v in np.median(border, axis=0)]


def _mask_scale(mode: str) -> float:
    """Full scale of a 1-channel image mode (16-bit PNGs open as I;16 or I)."""
    if mode in ("1", "L"):
        return 255.0
    if mode == "F":
        return 1.0
    return 65535.0


def load_target_image(path, background=None, tolerance: float = BACKGROUND_TOLERANCE) -> TargetImage:
    """Read an observed image and decide which pixels are the object.

    A 1-channel image is a mask (foreground >= half its full scale); an image
    with any alpha below 255 uses alpha >= 128 as the mask; otherwise the
    background colour is `background` (0-255) or the median colour of the
    border, and the object is what differs from it by more than `tolerance`.
    Anything unusable is a UserError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    where = f"--target-image {path}"
    if not path.exists():
        raise UserError(f"{where}: no such file")
    if not path.is_file():
        raise UserError(f"{where}: not a file")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{where}: the file is empty")
        with Image.open(path) as image:
            W, H = image.size
            if min(W, H) < MIN_TARGET_SIDE or max(W, H) > MAX_TARGET_SIDE:
                raise UserError(
                    f"{where}: the image is {W}x{H}; the fit runs at the image's own size, which must be "
                    f"{MIN_TARGET_SIDE} to {MAX_TARGET_SIDE} pixels a side (resize it first)"
                )
            image.load()
            if len(image.getbands()) == 1 and image.mode != "P":
                kind = "mask"
                values = np.asarray(image, dtype=np.float32) / _mask_scale(image.mode)
            else:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
                kind = "alpha" if (rgba[..., 3] < 255).any() else "background"
    except UserError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read {where}: {exc}") from None

    if kind == "mask":
        mask = values >= 0.5
        shown = np.repeat(mask[..., None].astype(np.float32), 3, axis=2)
        rgb = None
    elif kind == "alpha":
        alpha = rgba[..., 3:] / 255.0
        # Composited on white: the soft Phong renderer's background.
        shown = rgba[..., :3] / 255.0 * alpha + (1.0 - alpha)
        mask = alpha[..., 0] >= 0.5
        rgb = shown
    else:
        pixels = rgba[..., :3]
        background = list(background) if background is not None else border_median(pixels)
        mask = np.abs(pixels - np.asarray(background, dtype=np.float32)).max(axis=-1) > tolerance
        shown = pixels / 255.0
        # The renderer draws the object on white, so the colour loss sees the same.
        rgb = np.where(mask[..., None], shown, 1.0)
    if not mask.any():
        raise UserError(f"{where}: no foreground: every pixel counts as background ({_mask_rule(kind, background)})")
    if mask.all():
        raise UserError(f"{where}: no background: every pixel counts as object ({_mask_rule(kind, background)})")
    return TargetImage(
        path=path,
        kind=kind,
        mask=torch.from_numpy(mask.astype(np.float32)),
        rgb=None if rgb is None else torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)),
        shown=torch.from_numpy(np.ascontiguousarray(shown, dtype=np.float32)),
        background=background if kind == "background" else None,
    )


def _mask_rule(kind: str, background) -> str:
    if kind == "mask":
        return "a 1-channel image is a mask: object where the value is at least half of white"
    if kind == "alpha":
        return "object where alpha >= 128"
    return (
        f"object where a channel differs from the background colour {background} by more than "
        f"{BACKGROUND_TOLERANCE}; set it with --background R G B"
    )


# ---------------------------------------------------------------------------
# Several starting cameras (--restarts)
# ---------------------------------------------------------------------------

UP_AXIS_MARGIN_DEG = 10.0  # no lattice start this close to the up axis, where look_at_rotation is undefined
# The schedule with several starts (--restarts > 1; one start is the book's
# run, untouched). Tuned with benchmarks/bench_multistart.py; README.
#
# Explore: all starts, the book's renderers and learning rate, at
# EXPLORE_SCALE of the image size (a quarter of the pixels: the basin is
# found as well, at a quarter of the cost; losses are scaled by the pixel
# ratio, so that they and their gradients stay comparable with full size).
EXPLORE_SCALE = 0.5
# ... and at EXPLORE_LR_FACTOR x lr. The book's rate suits a start near the
# target; these starts have the whole way in from the init's distance to go,
# and at twice the rate more of them reach their basin within the
# exploration (on the benchmark's cow views 19 of 20 instead of 18).
EXPLORE_LR_FACTOR = 2.0
# (share, k): once that share of the iterations is done, keep the k
# lowest-loss hypotheses. Earlier the ranking says little: the starts close
# in from the init's distance for about 100 of 200 iterations, and a start
# that ends in the right basin can rank 5th of 8 at iteration 80 (measured on
# the benchmark's views). Two survivors leave the symmetry check an answer
# to compare with.
PRUNE_SCHEDULE = ((0.6, 2),)
# Refine: the last REFINE_SHARE of the iterations, at full size,
# - the soft renderers' sigma (and with it the blur radius) falls
#   geometrically from the book's to REFINE_SIGMA. With the book's sigma the
#   soft silhouette is fatter than the object (every face within the blur
#   radius adds to a pixel's coverage), so the loss is lowest a few percent
#   of the distance too far away: at 128 px an IoU of about 0.9 where the
#   pose is found exactly. A sharp sigma from the start would narrow the
#   basin; falling gradually, the minimum moves and the camera follows it.
# - the learning rate falls geometrically from the exploration's to
#   lr * LR_FINAL_FACTOR, so that Adam settles instead of rattling around
#   the minimum.
REFINE_SHARE = 0.3
REFINE_SIGMA = 3e-6
LR_FINAL_FACTOR = 0.1
AMBIGUOUS_DEG = 20.0  # a hypothesis this far from the best ...
AMBIGUOUS_IOU = 0.01  # ... with an IoU this close to the best's makes the answer ambiguous,
AMBIGUOUS_MIN_IOU = 0.5  # if it fits at all: two poses that both miss the target are no ambiguity


def fibonacci_directions(n: int, margin_deg: float = UP_AXIS_MARGIN_DEG) -> np.ndarray:
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


def starting_positions(init_position, n: int) -> list[list[float]]:
    """Hypothesis 0 is init_position; the other n - 1 lie at its distance on the lattice.

    The lattice has n points and the one nearest to init_position is left
    out, so the n starts together cover the sphere evenly.
    """
    init = np.asarray(init_position, dtype=np.float64)
    starts = [[float(v) for v in init]]
    if n > 1:
        distance = float(np.linalg.norm(init))
        lattice = fibonacci_directions(n)
        nearest = int(np.argmax(lattice @ (init / distance)))
        starts += [[float(v) for v in p * distance] for p in np.delete(lattice, nearest, axis=0)]
    return starts


def view_angle_deg(a, b) -> float:
    """Angle between the rotations of two look-at cameras, in degrees."""
    R = look_at_rotation(torch.tensor([a, b], dtype=torch.float32))
    return rotation_error_deg(R[0], R[1])


class Hypotheses:
    """Starting cameras fitted together: their losses, who is pruned, the best.

    The model's camera parameter is (3,) for the book's single start and
    (n, 3) for n starts; row r belongs to hypothesis active[r]. Each
    hypothesis's loss is its own sum, and one Adam minimises their sum, so
    (Adam being per element) each row moves as if it were fitted alone. With
    one start, step() does exactly what the book's loop does.
    """

    def __init__(self, init_position, restarts: int = 1, *, iterations: int = 200, lr: float = 0.05,
                 renderers: Renderers | None = None, prune_schedule=PRUNE_SCHEDULE,
                 explore_scale: float = EXPLORE_SCALE, explore_lr_factor: float = EXPLORE_LR_FACTOR,
                 refine_share: float = REFINE_SHARE,
                 refine_sigma: float = REFINE_SIGMA, lr_final_factor: float = LR_FINAL_FACTOR):
        self.init_positions = starting_positions(init_position, restarts)
        self.positions = [list(p) for p in self.init_positions]
        self.final_loss: list[float | None] = [None] * restarts
        self.loss_history: list[list[float]] = [[] for _ in range(restarts)]
        self.pruned_at: list[int | None] = [None] * restarts
        self.dropped: list[str | None] = [None] * restarts
        self.active = list(range(restarts))
        self.iterations, self.lr = iterations, lr
        # Iteration after which to prune -> how many to keep.
        self.prune_schedule = {max(0, round(share * iterations) - 1): keep for share, keep in prune_schedule}
        self.renderers, self.refine_sigma, self.lr_final_factor = renderers, refine_sigma, lr_final_factor
        self.explore_scale, self.explore_lr_factor = explore_scale, explore_lr_factor
        self.book_sigma = renderers.silhouette.shader.blend_params.sigma if renderers is not None else None
        # The first iteration of the refinement (full size, sharper renders, falling learning rate).
        self.refine_from = min(iterations, max(0, round(iterations * (1.0 - refine_share))))
        self.best_row = 0  # row of the lowest loss in the last batch
        self.best_loss = math.inf
        self.best_position: torch.Tensor | None = None

    @property
    def single(self) -> bool:
        return len(self.init_positions) == 1

    @property
    def start(self) -> list:
        """The camera parameter's starting value: the book's 3-vector, or n rows of 3."""
        return self.init_positions[0] if self.single else self.init_positions

    def refining(self, i: int) -> bool:
        """Iteration i belongs to the refinement (never with one start)."""
        return not self.single and i >= self.refine_from

    def explore_size(self, image_size):
        """The image size of the exploration: explore_scale of image_size (int or (H, W)), at least 8 pixels."""
        if self.single or self.explore_scale == 1.0:
            return image_size
        if isinstance(image_size, int):
            return max(MIN_TARGET_SIDE, round(image_size * self.explore_scale))
        return tuple(max(MIN_TARGET_SIDE, round(s * self.explore_scale)) for s in image_size)

    def _refine_share(self, i: int) -> float:
        return min(1.0, (i - self.refine_from) / max(1, self.iterations - 1 - self.refine_from))

    def lr_at(self, i: int) -> float:
        """lr (one start); else lr * explore_lr_factor, in the refinement falling geometrically to lr * lr_final_factor."""
        if self.single:
            return self.lr
        explore = self.lr * self.explore_lr_factor
        if not self.refining(i):
            return explore
        return explore * (self.lr * self.lr_final_factor / explore) ** self._refine_share(i)

    def sigma_at(self, i: int) -> float | None:
        """The soft renderers' sigma: the book's, then in the refinement a geometric fall to refine_sigma."""
        if not self.refining(i) or self.book_sigma is None:
            return self.book_sigma
        return self.book_sigma * (self.refine_sigma / self.book_sigma) ** self._refine_share(i)

    def schedule(self) -> dict:
        """What the multi-start schedule did, for summary.json."""
        return {"explore_scale": self.explore_scale, "explore_lr_factor": self.explore_lr_factor,
                "prune_schedule": [list(p) for p in sorted(self.prune_schedule.items())],
                "refine_from": self.refine_from, "refine_sigma": self.refine_sigma,
                "lr_final_factor": self.lr_final_factor}

    def step(self, i: int, loss: torch.Tensor, model, optimizer) -> str | None:
        """Backward and Adam step for iteration i, then bookkeeping and pruning.

        `loss` holds one loss per hypothesis (a scalar for the book's single
        start). Returns "nan" when the run must stop. With several starts a
        hypothesis whose loss or camera turns non-finite is dropped instead,
        and the others go on.
        """
        position = model.camera_position
        if self.single:
            if not all_finite(loss):
                return "nan"
            loss.backward()
            if not adam_step(optimizer, position):
                return "nan"
            self.best_row, self.best_loss = 0, loss.item()
            self.best_position = position.detach().clone()
            self.final_loss[0], self.positions[0] = self.best_loss, self.best_position.tolist()
            self.loss_history[0].append(self.best_loss)
            return None
        finite = torch.isfinite(loss)
        if not bool(finite.any()):
            return "nan"
        before = position.detach().clone()
        # Rows never share a graph node, so a non-finite row cannot spoil the others' gradients.
        loss[finite].sum().backward()
        optimizer.step()
        good = finite & torch.isfinite(position.detach()).all(dim=1)
        with torch.no_grad():
            position[~good] = before[~good]
        values = loss.detach().tolist()
        for row, index in enumerate(self.active):
            self.positions[index] = position[row].detach().tolist()
            if bool(good[row]):
                self.final_loss[index] = values[row]
                self.loss_history[index].append(values[row])
        rows = torch.nonzero(good).squeeze(1).tolist()
        if not rows:
            return "nan"
        self.best_row = min(rows, key=lambda r: values[r])
        self.best_loss = values[self.best_row]
        self.best_position = position[self.best_row].detach().clone()
        keep = rows
        if len(rows) < len(self.active):
            for row in set(range(len(self.active))) - set(rows):
                self.pruned_at[self.active[row]] = i
                self.dropped[self.active[row]] = "nan"
        if i in self.prune_schedule and len(keep) > self.prune_schedule[i]:
            keep = sorted(keep, key=lambda r: values[r])[: self.prune_schedule[i]]
            for row in set(rows) - set(keep):
                self.pruned_at[self.active[row]] = i
        if len(keep) < len(self.active):
            keep = sorted(keep)
            keep_rows(model, optimizer, keep)
            self.active = [self.active[r] for r in keep]
        # The next iteration's learning rate and sharpness.
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(i + 1)
        if self.refining(i + 1) and self.renderers is not None:
            set_sigma(self.renderers, self.sigma_at(i + 1))
        return None

    def best(self) -> int:
        """The hypothesis with the lowest last loss, among those still in.

        (A pruned one's last loss is from an earlier iteration, maybe of
        another loss: the cow's exploration leaves out the colour term.)
        """
        scored = [k for k in self.active if self.final_loss[k] is not None]
        return min(scored, key=lambda k: self.final_loss[k]) if scored else self.active[0]

    def summary(self, ious) -> dict:
        """summary.json's `hypotheses`, and `ambiguous` with the alternative when there is one."""
        entries = []
        for k, init in enumerate(self.init_positions):
            entry = {
                "init_position": init,
                "camera_position": self.positions[k],
                "final_loss": self.final_loss[k],
                "silhouette_iou": ious[k],
                "pruned_at": self.pruned_at[k],
                "loss_history": self.loss_history[k],
            }
            if self.dropped[k]:
                entry["dropped"] = self.dropped[k]
            entries.append(entry)
        best = self.best()
        out = {"best_hypothesis": best, "hypotheses": entries, "ambiguous": False}
        if not self.single:
            out["multistart"] = self.schedule()
        rivals = [
            (ious[k], k, angle)
            for k in range(len(entries))
            if k != best and ious[k] >= max(ious[best] - AMBIGUOUS_IOU, AMBIGUOUS_MIN_IOU)
            and (angle := view_angle_deg(self.positions[k], self.positions[best])) > AMBIGUOUS_DEG
        ]
        if rivals:
            iou, k, angle = max(rivals)
            out["ambiguous"] = True
            out["alternative"] = {"hypothesis": k, "camera_position": self.positions[k],
                                  "silhouette_iou": iou, "angle_deg": angle}
        return out


def keep_rows(model, optimizer, rows) -> None:
    """Keep only these rows of model.camera_position, with their Adam state."""
    old = model.camera_position
    index = torch.tensor(rows, dtype=torch.long, device=old.device)
    new = torch.nn.Parameter(old.detach()[index].clone())
    state = optimizer.state.pop(old, {})
    optimizer.state[new] = {
        key: value[index].clone() if torch.is_tensor(value) and value.dim() and value.shape[0] == old.shape[0]
        else value
        for key, value in state.items()
    }
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    model.camera_position = new


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 pixels, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _fov(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0.0 < value < 180.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 180 degrees (exclusive), got {text}")
    return value


def _byte(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 0 to 255, got {value}")
    return value


def base_parser(description: str, loss_threshold: float, output_dir: Path) -> argparse.ArgumentParser:
    """The flags both scripts share, with the book's values as defaults."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--iterations", type=_positive_int, default=200, help="most optimiser steps (default 200)")
    add("--lr", type=_positive_float, default=0.05, help="Adam learning rate (default 0.05)")
    # default None: finish_args fills in 256, or the size of --target-image
    add("--image-size", type=_image_size, default=None,
        help=f"render size in pixels (default {BOOK_IMAGE_SIZE}; with --target-image, the image's own size)")
    add(
        "--loss-threshold",
        type=non_negative_float,
        default=None,
        help=f"stop once the loss is below this (default {loss_threshold:g} at 256 px, "
        "scaled with the pixel count at other sizes; 0 runs every iteration)",
    )
    add(
        "--init-position",
        nargs=3,
        type=_finite_float,
        default=[3.0, 6.9, 2.5],
        metavar=("X", "Y", "Z"),
        help="starting camera position (default 3.0 6.9 2.5)",
    )
    add("--target-distance", type=_positive_float, default=3.0, help="target camera distance (default 3)")
    add("--target-elevation", type=_finite_float, default=50.0, help="target elevation, degrees (default 50)")
    add("--target-azimuth", type=_finite_float, default=0.0, help="target azimuth, degrees (default 0)")
    add("--output-dir", type=Path, default=output_dir, help=f"where results go (default {output_dir})")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    add(
        "--save-every",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="save frames when i %% N == 0 and at the end (default 1; 0: no frames, no GIF)",
    )
    add("--seed", type=int, default=0, help="random seed (default 0)")
    add(
        "--rasterizer",
        choices=["fast", "stock"],
        default="fast",
        help="fast: this project's CPU rasterizer (PyTorch3D's own on CUDA); "
        "stock: PyTorch3D's MeshRasterizer as the book uses it (default fast)",
    )
    add(
        "--restarts",
        type=_positive_int,
        default=1,
        metavar="N",
        help="fit N starting cameras together: --init-position and N-1 more at its distance, spread evenly "
        "over the sphere; the lowest loss wins (default 1: the book's single start; 8 for an unknown view)",
    )
    add(
        "--target-image",
        type=Path,
        default=None,
        metavar="PATH",
        help="fit this image instead of the synthesised target, at its own size: a 1-channel mask, an RGBA "
        "image whose alpha is the mask, or an RGB image of the object on a plain background",
    )
    add(
        "--background",
        nargs=3,
        type=_byte,
        default=None,
        metavar=("R", "G", "B"),
        help="background colour of an RGB --target-image, 0-255 (default: the median colour of the image "
        f"border); pixels differing from it by more than {BACKGROUND_TOLERANCE} in a channel are the object",
    )
    add("--fov", type=_fov, default=60.0, help="camera field of view in degrees (default 60, PyTorch3D's)")
    parser.set_defaults(book_loss_threshold=loss_threshold)
    return parser


def finish_args(parser: argparse.ArgumentParser, args) -> argparse.Namespace:
    """Checks that need several flags at once; fills in derived values."""
    if args.background is not None and args.target_image is None:
        parser.error("--background: only an RGB --target-image has a background to set")
    if args.target_image is not None:
        if args.image_size is not None:
            parser.error("--image-size: with --target-image the fit runs at the image's own size")
        # Read it now, so that a bad file is refused before anything is written.
        args.image_size = list(load_target_image(args.target_image, args.background).size)
    elif args.image_size is None:
        args.image_size = BOOK_IMAGE_SIZE
    if args.loss_threshold is None:
        pixels = math.prod(args.image_size) if isinstance(args.image_size, list) else args.image_size**2
        args.loss_threshold = args.book_loss_threshold * pixels / BOOK_IMAGE_SIZE**2
    if np.linalg.norm(args.init_position) < 1e-6:
        parser.error("--init-position: the camera cannot sit at the origin it looks at")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (use --device cpu)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def off_up_axis(position, min_offset: float = 1e-2):
    """look_at_rotation is undefined on the +Y axis; nudge a start that sits there."""
    x, y, z = (float(v) for v in position)
    if math.hypot(x, z) >= min_offset * max(1.0, abs(y)):
        return [x, y, z], None
    moved = [x, y, z + min_offset * max(1.0, abs(y))]
    note = (
        f"warning: --init-position {x:g} {y:g} {z:g} lies on the up axis, where look_at_rotation "
        f"is undefined; starting from {moved[0]:g} {moved[1]:g} {moved[2]:g} instead"
    )
    return moved, note


def settings_of(args) -> dict:
    out = {}
    for key, value in sorted(vars(args).items()):
        if key == "book_loss_threshold":
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


# ---------------------------------------------------------------------------
# Output folder
# ---------------------------------------------------------------------------


def prepare_output_dir(path: Path, frame_prefixes) -> Path:
    """Check that `path` can be written, then delete this script's old frames.

    Only files named <prefix><number>.png are removed, so summaries, other
    scripts' results and the user's own files stay.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    for entry in path.iterdir():
        for prefix in frame_prefixes:
            stem = entry.name[len(prefix) : -len(".png")]
            if entry.name.startswith(prefix) and entry.name.endswith(".png") and stem.isdigit():
                entry.unlink()
    return path


def write_json_atomic(path: Path, data) -> None:
    tmp = Path(str(path) + ".part")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The fitting record
# ---------------------------------------------------------------------------


@dataclass
class FitRecord:
    """What a run did, iteration by iteration, for summary.json."""

    loss_history: list = field(default_factory=list)
    camera_history: list = field(default_factory=list)
    stopped: str = "max_iterations"
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def add(self, loss: float, camera_position: torch.Tensor) -> None:
        self.loss_history.append(float(loss))
        self.camera_history.append([float(v) for v in camera_position.detach().reshape(-1).cpu()])

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.started


def all_finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def summarize(record: FitRecord, args, device, extra: dict) -> dict:
    iterations = len(record.loss_history)
    summary = {
        "iterations": iterations,
        "final_loss": record.loss_history[-1] if iterations else None,
        "stopped": record.stopped,
        "loss_history": record.loss_history,
        "camera_history": record.camera_history,
        "seconds": round(record.seconds, 3),
        "seconds_per_iteration": round(record.seconds / iterations, 4) if iterations else None,
        "device": str(device),
    }
    summary.update(extra)
    summary["settings"] = settings_of(args)
    return summary


def save_loss_plot(loss_history, path: Path, threshold: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(range(len(loss_history)), loss_history, lw=1.5)
    if threshold:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (summed squared error)")
    if loss_history and min(loss_history) > 0:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_final_figure(target_rgb, fitted_rgb, fitted_mask, title: str, path: Path) -> None:
    """Target, fitted render, and the fitted outline drawn over the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    outline = find_boundaries(np.asarray(fitted_mask, dtype=bool), mode="inner")
    overlay = np.array(target_rgb, dtype=np.float32, copy=True)
    overlay[outline] = (1.0, 0.1, 0.1)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    for ax, image, name in zip(
        axes, (target_rgb, fitted_rgb, overlay), ("target", "fitted", "fitted outline on target"), strict=True
    ):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def numpy_image(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().numpy()


def run_main(main) -> None:
    """Run a script's main(): user errors become one line on stderr and an exit code."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    sys.exit(code or 0)


def adam_step(optimizer, camera_position: torch.Tensor) -> bool:
    """optimizer.step(), undone if it made the camera non-finite (then False)."""
    before = camera_position.detach().clone()
    optimizer.step()
    if all_finite(camera_position):
        return True
    with torch.no_grad():
        camera_position.copy_(before)
    return False


def finish_run(
    record: FitRecord,
    renderers: Renderers,
    mesh,
    camera_position: torch.Tensor,
    frames,
    output_dir: Path,
    *,
    target_rgb,
    target_mask,
    R_target=None,
    target_position=None,
    loss_threshold=None,
    settings=None,
    device="cpu",
    save_every: int = 1,
    hypotheses: Hypotheses | None = None,
    target_image: TargetImage | None = None,
) -> dict:
    """Measure the fitted camera, write final.png, loss.png, fitting.gif, summary.json.

    With several hypotheses every one is measured in one batched render,
    and the fitted camera (and its pictures) is the best one's.
    """
    every_iou = None
    if hypotheses is not None and not hypotheses.single:
        every = torch.tensor(hypotheses.positions, device=mesh.device)
        best = hypotheses.best()
        with torch.no_grad():
            R_every, T_every = camera_R_T(every)
            rgb_every, mask_every = hard_render(renderers, mesh.extend(len(every)), R_every, T_every)
        every_iou = [silhouette_iou(m, target_mask[0]) for m in mask_every]
        camera_position, R = every[best], R_every[best : best + 1]
        fitted_rgb, fitted_mask = rgb_every[best : best + 1], mask_every[best : best + 1]
    else:
        with torch.no_grad():
            R, T = camera_R_T(camera_position)
            fitted_rgb, fitted_mask = hard_render(renderers, mesh, R, T)
    extra = {
        "camera_position": [float(v) for v in camera_position.detach().reshape(-1).cpu()],
        "silhouette_iou": silhouette_iou(fitted_mask[0], target_mask[0]),
    }
    if target_image is not None:
        extra["target_image"] = str(target_image.path)
        extra["target_kind"] = target_image.kind
        if target_image.background is not None:
            extra["target_background"] = target_image.background
    if hypotheses is not None:
        extra.update(hypotheses.summary(every_iou or [extra["silhouette_iou"]]))
    if target_position is not None:
        extra["target_camera_position"] = [float(v) for v in target_position.reshape(-1).cpu()]
        extra["position_error"] = float(torch.linalg.norm(camera_position.detach().reshape(-1) - target_position))
        extra["rotation_error_deg"] = rotation_error_deg(R[0], R_target[0])
    if save_every and record.loss_history:
        frames.gif(output_dir / "fitting.gif")
    errors = frames.close()
    for message in errors:
        print(f"warning: a picture could not be written: {message}", file=sys.stderr)
    record_settings = settings if settings is not None else {}
    summary = summarize(record, argparse.Namespace(**record_settings), device, extra)
    title = f"{summary['iterations']} iterations, loss {summary['final_loss'] or 0:.1f}, IoU {extra['silhouette_iou']:.3f}"
    save_final_figure(
        numpy_image(target_rgb[0, ..., :3]),
        numpy_image(fitted_rgb[0, ..., :3]),
        numpy_image(fitted_mask[0]),
        title,
        output_dir / "final.png",
    )
    save_loss_plot(record.loss_history, output_dir / "loss.png", loss_threshold)
    write_json_atomic(output_dir / "summary.json", summary)
    return summary


def report(summary: dict, output_dir: Path) -> int:
    """The one result line on stdout; the exit code that goes with it."""
    parts = [f"{summary['iterations']} iterations", f"final loss {summary['final_loss'] or float('nan'):.1f}"]
    if "position_error" in summary:
        parts.append(f"position error {summary['position_error']:.3f}")
        parts.append(f"rotation error {summary['rotation_error_deg']:.2f} deg")
    parts.append(f"IoU {summary['silhouette_iou']:.3f}")
    if len(summary.get("hypotheses", [])) > 1:
        parts.append(f"best of {len(summary['hypotheses'])} starts: {summary['best_hypothesis']}")
    parts.append(f"{summary['seconds']:.1f} s")
    line = ", ".join(parts)
    if summary["silhouette_iou"] < AMBIGUOUS_MIN_IOU:
        print(f"warning: the fitted silhouette covers the target poorly (IoU {summary['silhouette_iou']:.2f}); "
              "try --restarts 8, more --iterations, or check the target's mask (target_silhouette.png)")
    if summary.get("ambiguous"):
        other = summary["alternative"]
        position = " ".join(f"{v:.3f}" for v in other["camera_position"])
        print(f"ambiguous: start {other['hypothesis']} ends at ({position}), {other['angle_deg']:.0f} degrees "
              f"away, with IoU {other['silhouette_iou']:.3f}: the silhouette cannot tell these views apart")
    if summary["stopped"] == "nan":
        print(f"stopped: the loss or the camera became NaN after {line}; results so far in {output_dir}")
        return EXIT_NAN
    if summary["stopped"] == "interrupted":
        print(f"interrupted after {line}; results so far in {output_dir}")
        return EXIT_INTERRUPTED
    print(f"done ({summary['stopped']}): {line}; results in {output_dir}")
    return 0
