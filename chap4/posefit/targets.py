"""What is fitted: the book's synthesised target, or an observed image file.

Every target is a `Target`: the mask the silhouette term compares with (the
book's rule for its own render: every pixel that is not pure white), the
colours the colour term compares with (the object on white, as the soft
Phong renderer draws it), what the pictures show, and the true pose when
there is one. The fitting loop consumes them all the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from posefit import blend_kernels, masks, outlines, pose, render
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


def relight(rendered: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rendered colours (N, H, W, 3) as the photo's light would show them, compared only on the object.

    Per image and channel, the gain and offset that best map the rendered
    colours onto the reference's over the mask (least squares, solved in
    closed form at every call, held constant for the gradient); outside the
    mask, the reference itself, so that the silhouette term alone speaks
    there.
    """
    m, reference = mask[None, ..., None], reference[None]
    count = m.sum().clamp(min=1.0)
    with torch.no_grad():
        mean_x = (m * rendered).sum((1, 2), keepdim=True) / count
        mean_y = (m * reference).sum((1, 2), keepdim=True) / count
        covariance = (m * (rendered - mean_x) * (reference - mean_y)).sum((1, 2), keepdim=True)
        variance = (m * (rendered - mean_x) ** 2).sum((1, 2), keepdim=True)
        gain = (covariance / variance.clamp(min=1e-6)).clamp(min=0.0)
        offset = mean_y - gain * mean_x
    return m * (gain * rendered + offset) + (1 - m) * reference


SHADE_RIDGE = 1e-3  # the light's least squares, regularised this much (relative to the pixels' count)


def solve_light(albedo: torch.Tensor, normals: torch.Tensor, reference: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """The light (N, 9) under which albedo (N, H, W, 3) best explains the reference (H, W, 3); see `shade`.

    The light is the first two terms of a smooth lighting's expansion:
    colour_c = albedo_c * (ambient_c + d . normal) + offset_c, per image an
    ambient and an offset per channel and one direction d (normal: the
    surface's, in view coordinates): a lit side and a shaded side, which a
    gain and offset (relight) cannot give. Solved in closed form (weighted
    least squares over `weights`, (N, H, W), e.g. the pixels the object
    covers), constant for the gradient, as relight's gain and offset.
    """
    N = albedo.shape[0]
    with torch.no_grad():
        if not albedo.is_cuda and render.COMPILED_BLEND:  # one compiled pass (posefit.blend_kernels)
            normal_matrix, right = blend_kernels.light_normal_equations(albedo, normals, reference, weights)
            count = weights.reshape(N, -1).sum(1).clamp(min=1.0)
        else:
            # Only the pixels some image weighs (the object covers a tenth of a tracker's frame).
            pixels = torch.nonzero(weights.reshape(N, -1).sum(0) > 0).squeeze(1)
            a = albedo.reshape(N, -1, 3)[:, pixels]
            n = normals.reshape(N, -1, 3)[:, pixels]
            w = weights.reshape(N, -1)[:, pixels, None, None]
            y = reference.reshape(-1, 3)[pixels].expand(N, -1, 3)
            eye = torch.eye(3, dtype=a.dtype, device=a.device)
            # Each pixel and channel is one equation in the 9 unknowns (ambient_rgb, d_xyz, offset_rgb).
            rows = torch.cat([a[..., :, None] * eye, a[..., :, None] * n[..., None, :],
                              eye.expand(*a.shape[:2], 3, 3)], -1)  # (N, P, 3, 9)
            weighted = rows * w
            normal_matrix = torch.einsum("npck,npcl->nkl", weighted, rows)
            right = torch.einsum("npck,npc->nk", weighted, y)
            count = w.sum((1, 2, 3)).clamp(min=1.0)
        ridge = SHADE_RIDGE * count[:, None, None] * torch.eye(9, dtype=normal_matrix.dtype,
                                                               device=normal_matrix.device)
        return torch.linalg.solve(normal_matrix + ridge, right[..., None])[..., 0]


def shade(albedo: torch.Tensor, normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Colours (N, H, W, 3) of albedo (N, H, W, 3) with normals (N, H, W, 3) under light (N, 9) (solve_light)."""
    ambient, direction, offset = light[:, None, None, :3], light[:, None, None, 3:6], light[:, None, None, 6:]
    return albedo * (ambient + (normals * direction).sum(-1, keepdim=True)) + offset


def colour_model(target) -> callable:
    """What the colour term compares: the rendered colours as they are (the book), or relit (a photo)."""
    if not target.relit:
        return lambda rendered: rendered
    return lambda rendered: relight(rendered, target.colours, target.mask)


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
    photo: torch.Tensor | None = None  # (H, W, 3) a photo's pixels at the working size, to redo its mask
    # The file as it came (EXIF orientation applied; at most ORIGINAL_MAX_SIDE a side), for final.png and a
    # photo's polish, and its own size (H0, W0), at which target_mask.png is written.
    original: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    fov: float | None = None  # degrees across the shorter side, and where that came from
    fov_source: str = ""
    relit: bool = False  # the colour term compares after a per-channel gain and offset (a photo's own light)
    # (H, W) how much each pixel counts in the loss (None: all alike): 0 on something in front of the object
    # that joined a photo's mask (posefit.occluders.in_front_piece)
    care: torch.Tensor | None = None

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
                       rgb=None if self.rgb is None else resize_image(self.rgb, size),
                       care=None if self.care is None else resize_image(self.care, size))

    def to(self, device) -> Target:
        moved = {name: getattr(self, name).to(device) for name in ("mask", "rgb", "shown", "silhouette", "hard_mask",
                                                                  "R", "T", "camera_position", "photo", "care")
                 if getattr(self, name) is not None}
        return replace(self, **moved)

    def with_mask(self, mask: torch.Tensor) -> Target:
        """A photo's target with another mask (H, W, bool) of its pixels: the colour term's reference follows."""
        mask = mask.to(self.mask.device)
        rgb = torch.where(mask[..., None], self.photo, torch.ones_like(self.photo))
        return replace(self, mask=mask.float(), hard_mask=mask, silhouette=mask.float(), rgb=rgb)

    def summary(self) -> dict:
        """summary.json's keys about the target: the file, or the true pose and the errors' reference."""
        if self.path is None:
            return {"target_camera_position": [float(v) for v in self.camera_position.reshape(-1).cpu()]}
        out = {"target_image": str(self.path), "target_kind": self.kind, "fov": self.fov, "fov_source": self.fov_source}
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


def fit_target(options, observed: Target | None, renderers: render.Renderers, mesh) -> Target:
    """A fit's target: the observed image (moved to the mesh's device), or the book's render from
    options.target_distance, target_elevation and target_azimuth (posefit.run.FitOptions)."""
    if observed is not None:
        return observed.to(mesh.device)
    return book_target(renderers, mesh, options.target_distance, options.target_elevation, options.target_azimuth)


# ---------------------------------------------------------------------------
# A target from a file (--target-image)
# ---------------------------------------------------------------------------

# A photo larger than this (its shorter side, pixels) is scaled down to it for the fit; --image-size sets it.
WORKING_SIDE = 256
MIN_TARGET_SIDE = 8
ORIGINAL_MAX_SIDE = 2048  # a file larger than this is kept averaged down to it (Target.original)
MIN_OBJECT_SHARE = 0.001  # a mask that covers less of the image is refused
DEFAULT_FOV = 60.0  # PyTorch3D's, and the book's
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # a 35 mm-equivalent focal length refers to this diagonal


def border_median(pixels: np.ndarray) -> list[int]:
    """Median colour of the image border."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return [int(round(v)) for v in np.median(border, axis=0)]


def _mask_scale(mode: str) -> float:
    """Full scale of a 1-channel image mode (16-bit PNGs open as I;16 or I)."""
    if mode in ("1", "L"):
        return 255.0
    if mode == "F":
        return 1.0
    return 65535.0


def exif_fov(image, size) -> tuple[float | None, str]:
    """The field of view across the shorter side from the file's 35 mm-equivalent focal length, if it has one.

    A 35 mm-equivalent focal length f gives the diagonal field of view of a 36x24 mm frame,
    2 atan(43.3 / 2f); the image's shorter side sees tan(fov / 2) = tan(diagonal / 2) * shorter / diagonal.
    """
    try:
        focal = image.getexif().get_ifd(0x8769).get(0xA405)  # Exif IFD, FocalLengthIn35mmFilm
    except Exception:  # a broken EXIF block is no reason to refuse the photo
        return None, ""
    if not focal or float(focal) <= 0:
        return None, ""
    H, W = size
    half_diagonal = math.atan(FULL_FRAME_DIAGONAL_MM / 2 / float(focal))
    fov = 2 * math.degrees(math.atan(math.tan(half_diagonal) * min(H, W) / math.hypot(H, W)))
    return fov, f"EXIF: 35 mm-equivalent focal length {float(focal):g} mm"


def load_target_image(path, background=None, working_side=WORKING_SIDE, fov: float | None = None,
                      relight: bool = False, mesh=None, upright=None, unfound_ok: bool = False) -> Target:
    """Read an observed image, scale it to the working size, and decide which pixels are the object.

    A 1-channel image is a mask (foreground >= half its full scale); an image
    with any alpha below 255 uses alpha >= 128 as the mask; otherwise it is a
    photo, and posefit.masks finds the object against the backdrop (whose
    colour is `background`, 0-255, if given). The EXIF orientation is
    applied; an image whose shorter side is over `working_side` is averaged
    down to it (the original is kept for the pictures). The field of view:
    `fov` if given, else the file's 35 mm-equivalent focal length, else
    DEFAULT_FOV (target.fov_source says which). The colour term compares a
    photo's colours after a per-channel gain and offset (relight), an RGBA
    cut-out's too if `relight`. Anything unusable is a UserError naming the
    file. working_side: an int, or (H, W) (its shorter side counts).

    mesh: with a photo in which no reading of its colours finds the object (a
    white teapot on a grey floor under a lamp), the mesh looks for its own
    outline among the photo's edges (posefit.outlines.outline_reading), and
    the mask is what it finds if its outline follows them well enough
    (posefit.outlines.MIN_OUTLINE_SHARE); None: such a photo is refused. upright: the fit's
    floor prior for that search (posefit.initial.Upright), if any. unfound_ok: return
    such a photo with its empty mask instead (for a check of the file that
    the fit, with the mesh, repeats).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if working_side is None:
        working_side = WORKING_SIDE
    elif not isinstance(working_side, int):
        working_side = min(int(v) for v in working_side)

    path = Path(path)
    where = f"--target-image {path}"
    if not path.exists():
        raise UserError(f"{where}: no such file")
    if not path.is_file():
        raise UserError(f"{where}: not a file")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{where}: the file is empty")
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            W, H = image.size
            if min(W, H) < MIN_TARGET_SIDE:
                raise UserError(f"{where}: the image is {W}x{H}; it needs at least {MIN_TARGET_SIDE} pixels a side")
            exif, exif_source = exif_fov(opened, (H, W))
            if len(image.getbands()) == 1 and image.mode != "P":
                kind, scale = "mask", _mask_scale(image.mode)
                image = image.convert("F")
            else:
                image = image.convert("RGBA")
                kind = "alpha" if image.getextrema()[3][0] < 255 else "background"
                scale = 255.0
            # The file as it came, for the pictures and a photo's polish, at most ORIGINAL_MAX_SIDE a side
            # (averaged down; final.png draws at most 1024, the polish at 180): kept whole, a phone's
            # 48-megapixel photo held 0.58 GB of floats through the fit, and reading it peaked at 2.1 GB
            # of memory against 1.2.
            kept = image.convert("RGB") if kind != "mask" else image
            if max(W, H) > ORIGINAL_MAX_SIDE:
                factor = ORIGINAL_MAX_SIDE / max(W, H)
                kept = kept.resize((max(1, round(W * factor)), max(1, round(H * factor))), Image.Resampling.BOX)
            original = np.asarray(kept, dtype=np.float32) / scale
            del kept
            if min(W, H) > working_side:
                factor = working_side / min(W, H)
                small = (max(1, round(W * factor)), max(1, round(H * factor)))
                # Averaged down; RGBA premultiplied, so that transparent pixels lend no colour.
                image = image.convert("RGBa").resize(small, Image.Resampling.BOX).convert("RGBA") \
                    if kind != "mask" else image.resize(small, Image.Resampling.BOX)
            values = np.asarray(image, dtype=np.float32) / scale
    except UserError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read {where}: {exc}") from None

    if kind == "mask":
        mask = values >= 0.5
        shown = np.repeat(mask[..., None].astype(np.float32), 3, axis=2)
        rgb, photo = None, None
        original = np.repeat(original[..., None], 3, axis=2)
    elif kind == "alpha":
        alpha = values[..., 3:]
        # Composited on white: the soft Phong renderer's background.
        shown = values[..., :3] * alpha + (1.0 - alpha)
        mask = alpha[..., 0] >= 0.5
        rgb, photo = shown, None

    if fov is not None:
        fov_source = "--fov"
    elif exif is not None:
        fov, fov_source = exif, exif_source
    else:
        fov, fov_source = DEFAULT_FOV, "default (no --fov, and no 35 mm-equivalent focal length in the file)"
    unfound = False
    if kind == "background":
        photo = np.ascontiguousarray(values[..., :3])
        mask = masks.photo_mask(photo, background)
        if not usable_mask(mask):  # (the wall taken for the floor may take the object in with it)
            mask = next((m for m in masks.floor_readings(photo, background)[1:] if usable_mask(m)), mask)
        if not usable_mask(mask) and masks.is_photo(photo):
            if mesh is not None:
                mask, _ = outlines.outline_reading(mesh, photo, fov, upright=upright)  # (empty if poorly followed)
            unfound = unfound_ok and not usable_mask(mask)
        shown = photo
        # The renderer draws the object on white, so the colour loss sees the same.
        rgb = np.where(mask[..., None], shown, 1.0)
    if not unfound:
        _check_mask(mask, where, kind)
    mask = torch.from_numpy(mask.astype(np.float32))
    return Target(
        kind=kind,
        mask=mask,
        rgb=None if rgb is None else torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)),
        shown=torch.from_numpy(np.ascontiguousarray(shown, dtype=np.float32)),
        silhouette=mask,
        hard_mask=mask.bool(),
        path=path,
        background=list(background) if background is not None else None,
        photo=None if photo is None else torch.from_numpy(photo),
        original=np.clip(original, 0.0, 1.0, out=original),
        original_size=(H, W),
        fov=float(fov),
        fov_source=fov_source,
        # A photo's colours carry its own light; a clean render's are the renderer's.
        relit=(kind == "background" and masks.is_photo(photo)) or (relight and kind != "mask"),
    )


def usable_mask(mask: np.ndarray) -> bool:
    """Would _check_mask take this mask?"""
    try:
        _check_mask(mask, "", "background")
    except UserError:
        return False
    return True


def _check_mask(mask: np.ndarray, where: str, kind: str) -> None:
    """Refuse a mask the fit cannot use: empty, everything, touching all four borders, or too small."""
    rule = {"mask": "a 1-channel image is a mask: object where the value is at least half of white",
            "alpha": "object where alpha >= 128",
            "background": "object where the photo differs from the backdrop along its border; "
                          "set the backdrop's colour with --background R G B"}[kind]
    if not mask.any():
        raise UserError(f"{where}: no foreground: every pixel counts as background ({rule})")
    if mask.all():
        raise UserError(f"{where}: no background: every pixel counts as object ({rule})")
    if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any():
        raise UserError(f"{where}: the object touches all four borders of the image: the whole object must be "
                        f"in the picture, on a backdrop ({rule})")
    if mask.mean() < MIN_OBJECT_SHARE:
        raise UserError(f"{where}: the object covers {100 * mask.mean():.3f}% of the image, less than "
                        f"{100 * MIN_OBJECT_SHARE:g}%: move closer, or crop ({rule})")
