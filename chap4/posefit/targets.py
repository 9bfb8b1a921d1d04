"""What is fitted: the book's synthesised target, an observed image file, a tracked frame.

Every target is a `Target`: the mask the silhouette term compares with (the
book's rule for its own render: every pixel that is not pure white), the
colours the colour term compares with (the object on white, as the soft
Phong renderer draws it), what the pictures show, and the true pose when
there is one. The fitting loop consumes them all the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from posefit import pose, render
from posefit.errors import UserError


def book_mask(image: torch.Tensor) -> torch.Tensor:
    """The book's target mask: every pixel that is not pure white."""
    return (image[..., :3].max(-1).values != 1).float()


def resize_image(image: torch.Tensor, size) -> torch.Tensor:
    """An (H, W) or (H, W, C) image averaged down to size (int or (h, w)): each pixel the mean of what it covers."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    channels_last = image.dim() == 3
    batch = image.permute(2, 0, 1)[None] if channels_last else image[None, None]
    out = torch.nn.functional.interpolate(batch, size=size, mode="area")[0]
    return out.permute(1, 2, 0) if channels_last else out[0]


@dataclass
class Target:
    """An image to fit, at one size."""

    kind: str  # "book" (synthesised), "mask" (1 channel), "alpha" (RGBA) or "background" (RGB on a backdrop)
    mask: torch.Tensor  # (H, W) float, 1 on the object: the silhouette term's reference
    rgb: torch.Tensor | None  # (H, W, 3) the object on white: the colour term's reference; None for a mask
    shown: torch.Tensor  # (H, W, 3) the image as observed, for the pictures
    silhouette: torch.Tensor  # (H, W) what target_silhouette.png shows
    hard_mask: torch.Tensor  # (H, W) bool: what the fitted hard silhouette's IoU is measured against
    path: Path | None = None
    background: list | None = None  # the RGB backdrop colour (0-255) that defined an RGB file's mask
    R: torch.Tensor | None = None  # the true pose, when known (the book's target)
    T: torch.Tensor | None = None
    camera_position: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @property
    def colours(self) -> torch.Tensor:
        """The colour term's reference: the object on white (a mask has none: the mask itself)."""
        return self.rgb if self.rgb is not None else self.shown

    def resized(self, size) -> Target:
        """Mask and colours averaged down to size (the multi-start exploration)."""
        return replace(self, mask=resize_image(self.mask, size),
                       rgb=None if self.rgb is None else resize_image(self.rgb, size))

    def to(self, device) -> Target:
        moved = {name: getattr(self, name).to(device) for name in ("mask", "rgb", "shown", "silhouette", "hard_mask",
                                                                  "R", "T", "camera_position")
                 if getattr(self, name) is not None}
        return replace(self, **moved)

    def summary(self) -> dict:
        """summary.json's keys about the target: the file, or the true pose and the errors' reference."""
        if self.path is None:
            return {"target_camera_position": [float(v) for v in self.camera_position.reshape(-1).cpu()]}
        out = {"target_image": str(self.path), "target_kind": self.kind}
        if self.background is not None:
            out["target_background"] = self.background
        return out


def book_target(renderers: render.Renderers, mesh, distance: float, elevation: float, azimuth: float) -> Target:
    """The book's target: a hard Phong render from a view on the sphere, and the mask of its non-white pixels."""
    R, T, position = pose.view_camera(distance, elevation, azimuth, mesh.device)
    with torch.no_grad():
        silhouette = renderers.silhouette(meshes_world=mesh, R=R, T=T)[0, ..., 3]
        image, hard_mask = render.hard_render(renderers, mesh, R, T)
    return Target(kind="book", mask=book_mask(image[0]), rgb=image[0, ..., :3], shown=image[0, ..., :3],
                  silhouette=silhouette, hard_mask=hard_mask[0], R=R[0], T=T[0], camera_position=position)


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


def load_target_image(path, background=None, tolerance: float = BACKGROUND_TOLERANCE) -> Target:
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
    mask = torch.from_numpy(mask.astype(np.float32))
    return Target(
        kind=kind,
        mask=mask,
        rgb=None if rgb is None else torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)),
        shown=torch.from_numpy(np.ascontiguousarray(shown, dtype=np.float32)),
        silhouette=mask,
        hard_mask=mask.bool(),
        path=path,
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
# Frames of a sequence (the tracker)
# ---------------------------------------------------------------------------


@dataclass
class Frame:
    index: int
    file: str | None
    rgb: torch.Tensor  # (H, W, 3) in [0, 1], on white
    mask: torch.Tensor  # (H, W) bool: the object
    truth: tuple | None = None  # (R, T) when known


def natural_key(path: Path):
    """frame2 before frame10: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: Path) -> tuple[list[Path], tuple[int, int]]:
    """The PNG files of `folder` in natural order, all checked to have one size."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--frames {folder}: not a folder")
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=natural_key)
    if not paths:
        raise UserError(f"--frames {folder}: no PNG frames in this folder")
    size = None
    for path in paths:  # the headers only: cheap, and bad files are found before any work
        try:
            with Image.open(path) as image:
                this = (image.height, image.width)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise UserError(f"cannot read frame {path}: {exc}") from None
        if size is None:
            size = this
        elif this != size:
            raise UserError(
                f"frames differ in size: {paths[0].name} is {size[1]}x{size[0]}, {path.name} is {this[1]}x{this[0]}"
            )
    return paths, size


def read_frame(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB on white (mask: non-white pixels) or RGBA (mask: alpha >= 0.5, composited on white)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read frame {path}: {exc}") from None
    rgb = torch.from_numpy(pixels[..., :3].copy())
    if has_alpha:
        alpha = torch.from_numpy(pixels[..., 3].copy())[..., None]
        return rgb * alpha + (1 - alpha), alpha[..., 0] >= 0.5
    return rgb, book_mask(rgb).bool()


def folder_frames(paths, truth):
    for i, path in enumerate(paths):
        rgb, mask = read_frame(path)
        yield Frame(i, str(path), rgb, mask, truth[i] if truth else None)
