"""What a run leaves behind: the output folder, summary.json, loss.png, final.png, the GIF, the result line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from posefit import pose, render, search
from posefit.errors import EXIT_INTERRUPTED, EXIT_NAN, UserError


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


def numpy_image(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().numpy()


def save_target_pictures(frames, target, output_dir: Path) -> None:
    """The book's first two pictures: the target's silhouette and the target itself."""
    frames.frame(numpy_image(target.silhouette), "target silhouette", output_dir / "target_silhouette.png")
    frames.frame(numpy_image(target.shown), "target", output_dir / "target_rgb.png")


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


OUTLINE_PIXELS_PER_WIDTH = 256  # final.png's outline is a pixel wide per this many pixels of the image's longer side


def outline_overlay(target_rgb, fitted_mask) -> np.ndarray:
    """The target (H, W, 3, floats) with the fitted mask's outline drawn in red: the mask's inner boundary,
    widened inwards to a pixel per OUTLINE_PIXELS_PER_WIDTH of the image's longer side. final.png shows each
    picture about 280 pixels wide: a photo's 1024 (at_original_size) would shrink a 1-pixel line to a
    quarter of one, out of sight; the book's 256 x 256 keeps its 1-pixel line."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    mask = np.asarray(fitted_mask, dtype=bool)
    outline = find_boundaries(mask, mode="inner")
    width = max(1, round(max(mask.shape) / OUTLINE_PIXELS_PER_WIDTH))
    if width > 1:
        outline = ndimage.binary_dilation(outline, iterations=width - 1) & mask
    overlay = np.array(target_rgb, dtype=np.float32, copy=True)
    overlay[outline] = (1.0, 0.1, 0.1)
    return overlay


def save_final_figure(target_rgb, fitted_rgb, fitted_mask, title: str, path: Path) -> None:
    """Target, fitted render, and the fitted outline drawn over the target (outline_overlay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlay = outline_overlay(target_rgb, fitted_mask)
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


FINAL_MAX_SIDE = 1024  # final.png draws a larger photo scaled down to this


def at_original_size(target, renderers: render.Renderers, mesh, R, T):
    """The photo as it came (at most FINAL_MAX_SIDE a side) and the fitted pose rendered at its size."""
    from PIL import Image

    original = target.original
    H, W = original.shape[:2]
    factor = min(1.0, FINAL_MAX_SIDE / max(H, W))
    size = (max(8, round(H * factor)), max(8, round(W * factor)))
    if factor < 1.0:
        image = Image.fromarray((original * 255 + 0.5).astype(np.uint8)).resize(size[::-1], Image.Resampling.BOX)
        original = np.asarray(image, dtype=np.float32) / 255.0
    big = render.make_renderers(R.device, size, rasterizer="fast", fov=float(renderers.cameras.fov[0]))
    with torch.no_grad():
        rgb, mask = render.hard_render(big, mesh, R[None], T[None])
    return torch.from_numpy(original), rgb[0, ..., :3], mask[0]


def save_mask(target, path: Path) -> None:
    """The mask the fit used, 8-bit, at the file's own size (255 = object); beside it in_front_mask.png, the
    pixels taken for something in front of the object (left out of the loss and of the IoU), if any."""
    from PIL import Image

    H, W = target.original_size
    mask = Image.fromarray(target.hard_mask.cpu().numpy().astype(np.uint8) * 255)
    mask.resize((W, H), Image.Resampling.NEAREST).save(path)
    if target.care is not None:
        in_front = Image.fromarray((target.care.cpu().numpy() < 0.5).astype(np.uint8) * 255)
        in_front.resize((W, H), Image.Resampling.NEAREST).save(path.with_name("in_front_mask.png"))


def finish_run(loop, renderers: render.Renderers, mesh, hypotheses: search.Hypotheses, target, frames,
               output_dir: Path, *, loss_threshold=None, settings=None, device="cpu") -> dict:
    """Measure every hypothesis, write fitting.gif, final.png, loss.png and summary.json; return the summary.

    Every hypothesis (pruned ones at their last pose) is hard-rendered in one
    batch for its IoU with the target; the fitted pose and its pictures are
    the best one's.
    """
    R_every, T_every = torch.stack(hypotheses.R), torch.stack(hypotheses.T)
    best = hypotheses.best()
    with torch.no_grad():
        rgb_every, mask_every = render.hard_render(renderers, mesh.extend(len(R_every)), R_every, T_every)
    # Against the pixels the fit counted: what was taken for something in front of the object is left out.
    ious = [pose.silhouette_iou(mask, target.hard_mask, target.care) for mask in mask_every]
    camera_position = hypotheses.positions[best]
    # The pose, PyTorch3D's: x_view = x_mesh @ R + T; camera_position = -T @ R^T.
    fitted = pose.pose_json(R_every[best], T_every[best])
    extra = {"camera_position": camera_position, "R": fitted["R"], "T": fitted["T"],
             "silhouette_iou": ious[best], **target.summary(), **hypotheses.summary(ious)}
    if target.R is not None:
        extra["position_error"] = float(torch.linalg.norm(torch.tensor(camera_position) - target.camera_position.cpu()))
        extra["rotation_error_deg"] = pose.rotation_error_deg(R_every[best].cpu(), target.R.cpu())
    if loop.save_every and loop.loss_history:
        frames.gif(output_dir / "fitting.gif")
    for message in frames.close():
        print(f"warning: a picture could not be written: {message}", file=sys.stderr)
    summary = {**loop.summary(), "device": str(device), **extra, "settings": settings or {}}
    if hypotheses.final_loss[best] is not None:
        # The answer's own last loss in the loop: with the floor's prior, or the polish's choice (a photo), the
        # answer need not be the hypothesis with the lowest loss, whose loss the loop's record ends with.
        summary["final_loss"] = hypotheses.final_loss[best]
    title = f"{summary['iterations']} iterations, loss {summary['final_loss'] or 0:.1f}, IoU {ious[best]:.3f}"
    # An answer the loop did not fit has no loop loss: its title says where it came from, and its polish loss.
    added = ("a start chosen by the colours" if hypotheses.by_colour[best]
             else "a start from the photo's edges" if hypotheses.by_outline[best]  # (posefit.outlines)
             else "turned about the vertical" if hypotheses.turned_from[best] is not None  # (posefit.turns)
             else None)
    if added is not None:
        title = (f"{summary['iterations']} iterations; the answer {added}, polish loss "
                 f"{hypotheses.polish_loss[best]:.1f}, IoU {ious[best]:.3f}")
    shown, fitted_rgb, fitted_mask = target.shown, rgb_every[best, ..., :3], mask_every[best]
    if target.original is not None:
        # A photo: the fit's pictures and outline on the file as it came, its mask at its own size.
        shown, fitted_rgb, fitted_mask = at_original_size(target, renderers, mesh, R_every[best], T_every[best])
        save_mask(target, output_dir / "target_mask.png")
    save_final_figure(numpy_image(shown), numpy_image(fitted_rgb), numpy_image(fitted_mask), title,
                      output_dir / "final.png")
    save_loss_plot(loop.loss_history, output_dir / "loss.png", loss_threshold)
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
    if summary["silhouette_iou"] < search.AMBIGUOUS_MIN_IOU:
        # A file's mask is the likelier culprit (a photo's backdrop model can lose a white object on a light
        # floor); the synthesised target's is the book's rule.
        settings = summary.get("settings", {})
        check = ("the mask found in the image (target_mask.png); if it is wrong, cut the object out with a "
                 "background remover and fit the RGBA PNG" if settings.get("target_image")
                 else "the target's mask (target_silhouette.png)")
        more = "--restarts 8, more --iterations" if settings.get("restarts", 1) < 8 else "more --iterations"
        print(f"warning: the fitted silhouette covers the target poorly (IoU {summary['silhouette_iou']:.2f}); "
              f"try {more}, or check {check}")
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
