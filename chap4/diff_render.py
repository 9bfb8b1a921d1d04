"""Fit a camera position to a teapot silhouette by differentiable rendering.

3D Deep Learning with Python, chapter 4 (diff_render.py). The steps, in the
book's order:

1. load the teapot mesh (white vertex colours);
2. set up the renderers: a soft silhouette renderer (blur radius, sigma,
   100 faces per pixel) to optimise, and a hard Phong renderer for targets
   and pictures;
3. render the target from distance 3, elevation 50, azimuth 0 and keep the
   mask of its non-white pixels;
4. a model whose only parameter is the camera position, the camera always
   looking at the origin; its loss is the summed squared difference between
   the soft silhouette and the target mask;
5. Adam from (3.0, 6.9, 2.5), at most 200 steps, until the loss is below 500,
   saving a hard-rendered picture of every step.

Beyond the book: `--restarts N` fits N starting cameras at once (one batch
per render, the lowest loss wins), and `--target-image PATH` fits an
observed mask or photo instead of the synthesised target (README). The
machinery for both, and for the pictures and summary.json, is the posefit
package beside this file.

Run `python chap4/diff_render.py --help` for the options.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pytorch3d.io import load_obj
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes

from posefit import cli, data, outputs, render, search, targets
from posefit.errors import UserError
from posefit.frames import FrameWriter
from posefit.run import FitLoop

RESULTS = data.REPO / "result_teapot"
FRAME_PREFIXES = ["fitting_"]


def load_teapot(device) -> Meshes:
    (path,) = data.provision_all(data.TEAPOT_FILES)
    try:
        verts, faces_idx, _ = load_obj(path, load_textures=False)
    except Exception as exc:  # a corrupt file that still hashed right cannot happen; be clear anyway
        raise UserError(f"cannot read {path}: {exc}") from None
    faces = faces_idx.verts_idx
    # White vertex colours: the silhouette does not need any, the Phong picture does.
    textures = TexturesVertex(verts_features=torch.ones_like(verts)[None])
    return Meshes(verts=[verts.to(device)], faces=[faces.to(device)], textures=textures.to(device))


class Model(nn.Module):
    """The book's model: a camera position, and the silhouette loss it gives."""

    def __init__(self, meshes, renderer, image_ref, camera):
        super().__init__()
        self.meshes = meshes
        self.renderer = renderer
        self.register_buffer("image_ref", image_ref)
        # The book's nn.Parameter is camera.camera_position, where the camera is; it looks at the
        # origin (posefit.pose.LookAt). With --restarts N it has N rows, one camera each.
        self.camera = camera
        self.pixels, self.loss_scale = image_ref.numel(), 1.0

    def use(self, renderers, target, colour=False):
        """Render and compare at another size (multi-start exploration), the loss scaled to the full size's.

        (`colour` does not apply: the teapot is fitted on its silhouette.)
        """
        self.renderer, self.image_ref = renderers.silhouette, target.mask
        self.loss_scale = self.pixels / target.mask.numel()

    def forward(self):
        R, T = self.camera()
        image = self.renderer(meshes_world=self.camera.meshes_for(self.meshes), R=R, T=T)
        # The summed squared error, one sum per camera.
        loss = torch.sum((image[..., 3] - self.image_ref) ** 2, dim=(1, 2)) * self.loss_scale
        return loss, image


def fit(
    output_dir=RESULTS,
    iterations: int = 200,
    lr: float = 0.05,
    image_size: int = 256,
    loss_threshold: float = 500.0,
    init_position=(3.0, 6.9, 2.5),
    target_distance: float = 3.0,
    target_elevation: float = 50.0,
    target_azimuth: float = 0.0,
    device: str = "cpu",
    save_every: int = 1,
    rasterizer: str = "fast",
    seed: int = 0,
    settings: dict | None = None,
    progress: bool = True,
    background_frames: bool = True,
    restarts: int = 1,
    target_image=None,
    background=None,
    fov: float | None = None,
    pose_mode: str = "lookat",
    prune_schedule=search.PRUNE_SCHEDULE,
    explore_scale: float = search.EXPLORE_SCALE,
    explore_lr_factor: float = search.EXPLORE_LR_FACTOR,
    refine_share: float = search.REFINE_SHARE,
    refine_sigma: float = search.REFINE_SIGMA,
    lr_final_factor: float = search.LR_FINAL_FACTOR,
) -> dict:
    """Run the book's teapot fit; return what summary.json holds.

    restarts > 1 fits that many starting cameras together: they explore at
    explore_scale of the image size and explore_lr_factor * lr, pruned as
    prune_schedule says ((share of the iterations done, keep), ...); the last
    refine_share of the iterations are at full size, with sigma falling to
    refine_sigma and the learning rate to lr * lr_final_factor
    (posefit.search.Hypotheses).
    target_image (a path) replaces the synthesised target; the fit then runs
    at the image's size, scaled down so that its shorter side is at most
    image_size. fov: degrees across the shorter side (None: the book's 60, or
    a photo's EXIF). pose_mode "6dof" fits the object's full pose, started
    from a coarse grid of views (posefit.initial), instead of the book's
    look-at camera.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    # An observed image is read first, so that a bad one is refused before anything is written.
    observed = targets.load_target_image(target_image, background, image_size, fov) if target_image else None
    image_size, fov = (observed.size, observed.fov) if observed else (image_size, fov or targets.DEFAULT_FOV)

    # 1. The mesh.
    mesh = load_teapot(device)
    output_dir = outputs.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # 2. The renderers: soft silhouette to optimise, hard Phong for pictures.
    if device.type == "cpu":
        render.set_cpu_threads(rasterizer)
    renderers = render.make_renderers(device, image_size, rasterizer=rasterizer, fov=fov,
                                      **search.renderer_settings(pose_mode))

    # 3. The target: a hard Phong render and the mask of its non-white pixels (or the observed image).
    target = observed.to(device) if observed else targets.book_target(
        renderers, mesh, target_distance, target_elevation, target_azimuth)
    frames = FrameWriter(background=background_frames)
    frames.frame(outputs.numpy_image(target.silhouette), "target silhouette", output_dir / "target_silhouette.png")
    frames.frame(outputs.numpy_image(target.shown), "target", output_dir / "target_rgb.png")

    # 4. The model and its parameter, the camera position: the book's start, or several (--restarts);
    #    or the object's full pose (--pose 6dof), from the best views of a coarse grid.
    hypotheses = search.start(
        pose_mode, mesh, target, fov, init_position=init_position, restarts=restarts, iterations=iterations,
        lr=lr, prune_schedule=prune_schedule, explore_scale=explore_scale, explore_lr_factor=explore_lr_factor,
        refine_share=refine_share, refine_sigma=refine_sigma, lr_final_factor=lr_final_factor)
    model = Model(meshes=mesh, renderer=renderers.silhouette, image_ref=target.mask, camera=hypotheses.poses)
    with torch.no_grad():
        _, image_init = model()
    frames.frame(outputs.numpy_image(image_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")

    # 5. Adam until the loss is below the threshold, a picture of every step. (With several starts
    #    the schedule explores at a smaller size first: posefit.search.)
    hypotheses.prepare(model, mesh, renderers, target, lambda size: render.make_renderers(
        device, size, rasterizer=rasterizer, fov=fov, **search.renderer_settings(pose_mode)))
    optimizer = torch.optim.Adam(model.parameters(), lr=hypotheses.lr_at(0))  # lr itself with one start
    with FitLoop(hypotheses.iterations, loss_threshold, desc="teapot", save_every=save_every,
                 progress=progress) as loop:
        for i in loop:
            optimizer.zero_grad()
            loss, _ = model()
            loss.sum().backward()
            optimizer.step()
            # The lowest loss and its camera; NaN poses dropped, losers pruned (several starts).
            if not loop.add(hypotheses.step(i, loss, optimizer)):
                break
            if loop.saves(i):
                # The book's picture of each step: a hard render from the new camera.
                with torch.no_grad():
                    image, _ = render.hard_render(renderers, mesh, *hypotheses.best_pose())
                frames.frame(outputs.numpy_image(image[0, ..., :3]), f"iter: {i}, loss: {hypotheses.best_loss:0.2f}",
                             output_dir / f"fitting_{i}.png", to_gif=True)
            if loop.done:
                break

    return outputs.finish_run(loop, renderers, mesh, hypotheses, hypotheses.target, frames, output_dir,
                              loss_threshold=loss_threshold, settings=settings, device=device)


def main() -> int:
    parser = cli.fit_parser("Fit the camera position to a teapot silhouette (book chapter 4).",
                            loss_threshold=500.0, output_dir=RESULTS)
    args = cli.finish_fit_args(parser, parser.parse_args())
    return outputs.report(fit(**cli.fit_arguments(args)), args.output_dir)


if __name__ == "__main__":
    cli.run_main(main)
