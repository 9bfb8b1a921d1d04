"""Shared machinery of the chapter's scripts.

Both experiments (diff_render.py, diff_render_texture.py) import this module
for what is not part of the book's story: getting the meshes, building the
renderers, the command line, the output folder, the fitting record
(summary.json, loss curve, final picture) and clean failures.
"""

from __future__ import annotations

import argparse
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


def base_parser(description: str, loss_threshold: float, output_dir: Path) -> argparse.ArgumentParser:
    """The flags both scripts share, with the book's values as defaults."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--iterations", type=_positive_int, default=200, help="most optimiser steps (default 200)")
    add("--lr", type=_positive_float, default=0.05, help="Adam learning rate (default 0.05)")
    add("--image-size", type=_image_size, default=BOOK_IMAGE_SIZE, help="render size in pixels (default 256)")
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
    parser.set_defaults(book_loss_threshold=loss_threshold)
    return parser


def finish_args(parser: argparse.ArgumentParser, args) -> argparse.Namespace:
    """Checks that need several flags at once; fills in derived values."""
    if args.loss_threshold is None:
        pixels = args.image_size * args.image_size
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
) -> dict:
    """Measure the fitted camera, write final.png, loss.png, fitting.gif, summary.json."""
    with torch.no_grad():
        R, T = camera_R_T(camera_position)
        fitted_rgb, fitted_mask = hard_render(renderers, mesh, R, T)
    extra = {
        "camera_position": [float(v) for v in camera_position.detach().reshape(-1).cpu()],
        "silhouette_iou": silhouette_iou(fitted_mask[0], target_mask[0]),
    }
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
    parts.append(f"{summary['seconds']:.1f} s")
    line = ", ".join(parts)
    if summary["stopped"] == "nan":
        print(f"stopped: the loss or the camera became NaN after {line}; results so far in {output_dir}")
        return EXIT_NAN
    if summary["stopped"] == "interrupted":
        print(f"interrupted after {line}; results so far in {output_dir}")
        return EXIT_INTERRUPTED
    print(f"done ({summary['stopped']}): {line}; results in {output_dir}")
    return 0
