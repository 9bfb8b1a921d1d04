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
from posefit.run import FitLoop, FitOptions

DESCRIPTION = "Fit the camera position to a teapot silhouette (book chapter 4)."
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
        self.care = None  # the pixels' weights (a photo with something in front of the object), or all alike

    def use(self, renderers, target, colour=False):
        """Render and compare at another size (multi-start exploration), the loss scaled to the full size's.

        (`colour` does not apply: the teapot is fitted on its silhouette.)
        """
        self.renderer, self.image_ref, self.care = renderers.silhouette, target.mask, target.care
        self.loss_scale = self.pixels / target.mask.numel()

    def forward(self):
        R, T = self.camera()
        image = self.renderer(meshes_world=self.camera.meshes_for(self.meshes), R=R, T=T)
        # The summed squared error, one sum per camera (a photo's pixels of something in front left out).
        error = (image[..., 3] - self.image_ref) ** 2
        if self.care is not None:
            error = error * self.care
        loss = torch.sum(error, dim=(1, 2)) * self.loss_scale
        return loss, image


def fit(output_dir=RESULTS, loss_threshold: float = 500.0, **options) -> dict:
    """Run the book's teapot fit; return what summary.json holds.

    options: posefit.run.FitOptions's keywords, the book's values by default
    (200 iterations, lr 0.05, 256 px, the start (3.0, 6.9, 2.5), the target
    from distance 3, elevation 50, azimuth 0). target_image (a path) replaces
    the synthesised target; restarts > 1 fits that many starting cameras
    together; pose_mode "6dof" fits the object's full pose from a coarse grid
    of views (posefit.initial) instead of the book's look-at camera.
    """
    o = FitOptions(**options)
    torch.manual_seed(o.seed)
    device = torch.device(o.device)
    # 1. The mesh. (And an observed image, read before anything is written, so that a bad one is refused
    #    first; in a photo whose colours do not show the object, the 6-DoF fit's mesh looks for its outline.)
    mesh = load_teapot(device)
    observed = targets.load_target_image(o.target_image, o.background, o.image_size, o.fov,
                                         mesh=mesh if o.pose_mode == "6dof" else None,
                                         upright=search.upright_prior(o, mesh)) if o.target_image else None
    image_size, fov = (observed.size, observed.fov) if observed else (o.image_size, o.fov or targets.DEFAULT_FOV)
    output_dir = outputs.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # 2. The renderers: soft silhouette to optimise, hard Phong for pictures.
    if device.type == "cpu":
        render.set_up_cpu(o.rasterizer)  # one thread; glibc keeps large blocks (process-wide)
    settings = search.renderer_settings(o.pose_mode)
    renderers = render.make_renderers(device, image_size, rasterizer=o.rasterizer, fov=fov, **settings)

    # 3. The target: a hard Phong render and the mask of its non-white pixels (or the observed image).
    target = targets.fit_target(o, observed, renderers, mesh)
    frames = FrameWriter(background=o.background_frames)
    outputs.save_target_pictures(frames, target, output_dir)

    # 4. The model and its parameter, the camera position: the book's start, or several (--restarts);
    #    or the object's full pose (--pose 6dof), from the best views of a coarse grid.
    hypotheses = search.start_fit(o, mesh, target, fov)
    model = Model(meshes=mesh, renderer=renderers.silhouette, image_ref=target.mask, camera=hypotheses.poses)
    with torch.no_grad():
        _, image_init = model()
    frames.frame(outputs.numpy_image(image_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")

    # 5. Adam until the loss is below the threshold, a picture of every step. (With several starts
    #    the schedule explores at a smaller size first: posefit.search.)
    hypotheses.prepare(model, renderers, target, lambda size: render.make_renderers(
        device, size, rasterizer=o.rasterizer, fov=fov, **settings))
    optimizer = torch.optim.Adam(model.parameters(), lr=hypotheses.lr_at(0))  # lr itself with one start
    with FitLoop(hypotheses.iterations, loss_threshold, desc="teapot", save_every=o.save_every,
                 progress=o.progress) as loop:
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

    # 6. A photo (--pose 6dof): the answer refined by the photo's colours, the render lit by the photo's
    #    own light and composited over the floor behind the object, as the tracker fits a frame.
    hypotheses.polish(mesh, target, fov)

    # The fitted pose measured, summary.json, final.png, loss.png, the GIF.
    return outputs.finish_run(loop, renderers, mesh, hypotheses, hypotheses.target, frames, output_dir,
                              loss_threshold=loss_threshold, settings=o.settings, device=device)


def main() -> int:
    return cli.fit_main(cli.fit_parser(DESCRIPTION, loss_threshold=500.0, output_dir=RESULTS), fit)


if __name__ == "__main__":
    cli.run_main(main)
