"""Fit a camera position to a textured cow by silhouette and colour.

3D Deep Learning with Python, chapter 4 (diff_render_texture.py). The same
steps as diff_render.py, with a textured mesh and a second loss term:

1. load the cow mesh with its texture map;
2. set up the renderers: soft silhouette (100 faces per pixel), soft Phong
   (50 faces per pixel) for the colour term, hard Phong for targets and
   pictures;
3. render the target from distance 3, elevation 50, azimuth 0; keep its
   mask (non-white pixels) and its colours;
4. a model whose only parameter is the camera position; loss =
   1.0 * summed squared silhouette error + 0.1 * summed squared RGB error;
5. Adam from (3.0, 6.9, 2.5), at most 200 steps, until the loss is below 800,
   saving soft and hard pictures of every step.

The book's own run of this experiment does not converge; the README explains
why and which one-flag change does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pytorch3d.io import load_objs_as_meshes
from tqdm import tqdm

import posefit
from frames import FrameWriter

FRAME_PREFIXES = ["soft_silhouette_", "soft_texture_", "hard_silhouette_", "hard_texture_"]


def load_cow(device):
    path = posefit.provision_all(posefit.COW_FILES)[0]
    try:
        return load_objs_as_meshes([path], device=device)
    except Exception as exc:
        raise posefit.UserError(f"cannot read {path}: {exc}") from None


class Model(nn.Module):
    """The book's model: a camera position, scored by silhouette and colour."""

    def __init__(self, meshes, renderer_silhouette, renderer_textured, image_ref,
                 weight_silhouette, weight_texture, init_position):
        super().__init__()
        self.meshes = meshes
        self.device = meshes.device
        self.renderer_silhouette = renderer_silhouette
        self.renderer_textured = renderer_textured
        self.weight_silhouette = weight_silhouette
        self.weight_texture = weight_texture
        self.register_buffer("image_ref_silhouette", posefit.book_mask(image_ref))
        self.register_buffer("image_ref_textured", image_ref[..., :3].clone())
        self.camera_position = nn.Parameter(torch.tensor(init_position, dtype=torch.float32, device=self.device))

    def forward(self):
        R, T = posefit.camera_R_T(self.camera_position)
        image_silhouette = self.renderer_silhouette(meshes_world=self.meshes.clone(), R=R, T=T)
        image_textured = self.renderer_textured(meshes_world=self.meshes.clone(), R=R, T=T)
        loss_silhouette = torch.sum((image_silhouette[..., 3] - self.image_ref_silhouette) ** 2)
        loss_texture = torch.sum((image_textured[..., :3] - self.image_ref_textured) ** 2)
        loss = self.weight_silhouette * loss_silhouette + self.weight_texture * loss_texture
        return loss, image_silhouette, image_textured


def fit(
    output_dir=posefit.REPO / "result_cow",
    iterations: int = 200,
    lr: float = 0.05,
    image_size: int = 256,
    loss_threshold: float = 800.0,
    init_position=(3.0, 6.9, 2.5),
    target_distance: float = 3.0,
    target_elevation: float = 50.0,
    target_azimuth: float = 0.0,
    weight_silhouette: float = 1.0,
    weight_texture: float = 0.1,
    device: str = "cpu",
    save_every: int = 1,
    rasterizer: str = "fast",
    seed: int = 0,
    settings: dict | None = None,
    progress: bool = True,
    background_frames: bool = True,
) -> dict:
    """Run the book's cow fit; return what summary.json holds."""
    torch.manual_seed(seed)
    device = torch.device(device)
    mesh = load_cow(device)
    output_dir = posefit.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # Soft silhouette (100 faces per pixel), soft Phong (50), hard Phong.
    renderers = posefit.make_renderers(device, image_size, rasterizer=rasterizer, textured_faces_per_pixel=50)

    # The target: a hard Phong render; its non-white mask and its colours.
    R_target, T_target, target_position = posefit.target_camera(
        target_distance, target_elevation, target_azimuth, device
    )
    with torch.no_grad():
        target_silhouette = renderers.silhouette(meshes_world=mesh, R=R_target, T=T_target)
        target_rgb, target_hard_mask = posefit.hard_render(renderers, mesh, R_target, T_target)

    frames = FrameWriter(background=background_frames)
    frames.frame(posefit.numpy_image(target_silhouette[0, ..., 3]), "target silhouette",
                 output_dir / "target_silhouette.png")
    frames.frame(posefit.numpy_image(target_rgb[0, ..., :3]), "target", output_dir / "target_rgb.png")

    model = Model(meshes=mesh, renderer_silhouette=renderers.silhouette, renderer_textured=renderers.textured,
                  image_ref=target_rgb[0], weight_silhouette=weight_silhouette,
                  weight_texture=weight_texture, init_position=list(init_position)).to(device)
    with torch.no_grad():
        _, silhouette_init, textured_init = model()
    frames.frame(posefit.numpy_image(silhouette_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")
    frames.frame(posefit.numpy_image(textured_init[0, ..., :3]), "starting colour",
                 output_dir / "starting_rgb.png")

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    record = posefit.FitRecord()
    bar = tqdm(range(iterations), disable=not progress, desc="cow", unit="it")
    try:
        for i in bar:
            optimizer.zero_grad()
            loss, image_silhouette, image_textured = model()
            if not posefit.all_finite(loss):
                record.stopped = "nan"
                break
            loss.backward()
            if not posefit.adam_step(optimizer, model.camera_position):
                record.stopped = "nan"
                break
            record.add(loss.item(), model.camera_position)
            bar.set_postfix(loss=f"{loss.item():.1f}")
            done = loss.item() < loss_threshold
            if save_every and (i % save_every == 0 or done or i == iterations - 1):
                title = f"iter: {i}, loss: {loss.item():0.2f}"
                # The soft renders the loss saw, then hard renders from the new camera.
                frames.frame(posefit.numpy_image(image_silhouette[0, ..., 3]), title,
                             output_dir / f"soft_silhouette_{i}.png")
                frames.frame(posefit.numpy_image(image_textured[0, ..., :3]), title,
                             output_dir / f"soft_texture_{i}.png")
                with torch.no_grad():
                    image, hard_mask = posefit.hard_render(
                        renderers, mesh, *posefit.camera_R_T(model.camera_position)
                    )
                frames.frame(posefit.numpy_image(hard_mask[0].float()), title,
                             output_dir / f"hard_silhouette_{i}.png")
                frames.frame(posefit.numpy_image(image[0, ..., :3]), title,
                             output_dir / f"hard_texture_{i}.png", to_gif=True)
            if done:
                record.stopped = "threshold"
                break
    except KeyboardInterrupt:
        record.stopped = "interrupted"
    finally:
        bar.close()
    record.finish()

    return posefit.finish_run(
        record, renderers, mesh, model.camera_position, frames, output_dir,
        target_rgb=target_rgb, target_mask=target_hard_mask, R_target=R_target,
        target_position=target_position, loss_threshold=loss_threshold,
        settings=settings, device=device, save_every=save_every,
    )


def main() -> int:
    parser = posefit.base_parser(
        "Fit the camera position to a textured cow by silhouette and colour (book chapter 4).",
        loss_threshold=800.0,
        output_dir=posefit.REPO / "result_cow",
    )
    parser.add_argument("--weight-silhouette", type=posefit.non_negative_float, default=1.0,
                        help="weight of the summed squared silhouette error (default 1.0)")
    parser.add_argument("--weight-texture", type=posefit.non_negative_float, default=0.1,
                        help="weight of the summed squared RGB error (default 0.1)")
    args = posefit.finish_args(parser, parser.parse_args())
    args.init_position, note = posefit.off_up_axis(args.init_position)
    if note:
        print(note)
    summary = fit(
        output_dir=args.output_dir,
        iterations=args.iterations,
        lr=args.lr,
        image_size=args.image_size,
        loss_threshold=args.loss_threshold,
        init_position=args.init_position,
        target_distance=args.target_distance,
        target_elevation=args.target_elevation,
        target_azimuth=args.target_azimuth,
        weight_silhouette=args.weight_silhouette,
        weight_texture=args.weight_texture,
        device=args.device,
        save_every=args.save_every,
        rasterizer=args.rasterizer,
        seed=args.seed,
        settings=posefit.settings_of(args),
    )
    return posefit.report(summary, args.output_dir)


if __name__ == "__main__":
    posefit.run_main(main)
