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

Beyond the book: `--restarts N` fits N starting cameras at once (one batch
per render, the lowest loss wins), and `--target-image PATH` fits an
observed photo (mask and colour) instead of the synthesised target (README).
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from posefit import cli, data, outputs, render, search, targets
from posefit.frames import FrameWriter
from posefit.run import FitLoop, FitOptions

RESULTS = data.REPO / "result_cow"
FRAME_PREFIXES = ["soft_silhouette_", "soft_texture_", "hard_silhouette_", "hard_texture_"]


def load_cow(device):
    return data.load_mesh(data.provision_all(data.COW_FILES)[0], device)


class Model(nn.Module):
    """The book's model: a camera position, scored by silhouette and colour."""

    def __init__(self, meshes, renderer_silhouette, renderer_textured, image_ref_silhouette, image_ref_textured,
                 weight_silhouette, weight_texture, camera):
        super().__init__()
        self.meshes = meshes
        self.renderer_silhouette = renderer_silhouette
        self.renderer_textured = renderer_textured
        self.weight_silhouette = weight_silhouette
        self.weight_texture = self.book_weight_texture = weight_texture
        # The mask of the target's non-white pixels, and its colours.
        self.register_buffer("image_ref_silhouette", image_ref_silhouette)
        self.register_buffer("image_ref_textured", image_ref_textured)
        # The book's nn.Parameter is camera.camera_position, where the camera is; it looks at the
        # origin (posefit.pose.LookAt). With --restarts N it has N rows, one camera each.
        self.camera = camera
        self.pixels, self.loss_scale = image_ref_silhouette.numel(), 1.0
        self.care = None  # the pixels' weights (a photo with something in front of the object), or all alike
        self.lighting = lambda rendered: rendered

    def use(self, renderers, target, colour=True):
        """Render and compare at another size (multi-start exploration), the loss scaled to the full size's;
        without the colour term if not `colour` (its render costs four times the silhouette's)."""
        self.renderer_silhouette, self.renderer_textured = renderers.silhouette, renderers.textured
        self.image_ref_silhouette, self.image_ref_textured = target.mask, target.colours
        self.care = target.care
        self.loss_scale = self.pixels / target.mask.numel()
        self.weight_texture = self.book_weight_texture if colour else 0.0
        # The book compares the rendered colours as they are; a photo's, after its own light (a per-channel
        # gain and offset, posefit.targets.relight).
        self.lighting = targets.colour_model(target)

    def forward(self):
        R, T = self.camera()
        meshes = self.camera.meshes_for(self.meshes)
        image_silhouette = self.renderer_silhouette(meshes_world=meshes, R=R, T=T)
        error_silhouette = (image_silhouette[..., 3] - self.image_ref_silhouette) ** 2
        if self.care is not None:  # a photo's pixels of something in front of the object left out
            error_silhouette = error_silhouette * self.care
        loss_silhouette = torch.sum(error_silhouette, dim=(1, 2))
        loss, image_textured = self.weight_silhouette * loss_silhouette, None
        if self.weight_texture:
            image_textured = self.renderer_textured(meshes_world=meshes, R=R, T=T)
            error_texture = (self.lighting(image_textured[..., :3]) - self.image_ref_textured) ** 2
            if self.care is not None:
                error_texture = error_texture * self.care[..., None]
            loss_texture = torch.sum(error_texture, dim=(1, 2, 3))
            loss = loss + self.weight_texture * loss_texture
        # One loss per camera.
        return loss * self.loss_scale, image_silhouette, image_textured


def save_frames(frames, renderers, mesh, hypotheses, image_silhouette, image_textured, title, output_dir, i):
    """The book's four pictures of a step: the soft renders the loss saw, hard renders from the new camera."""
    best = hypotheses.best_row
    frames.frame(outputs.numpy_image(image_silhouette[best, ..., 3]), title, output_dir / f"soft_silhouette_{i}.png")
    with torch.no_grad():
        R, T = hypotheses.best_pose()
        image, hard_mask = render.hard_render(renderers, mesh, R, T)
        if image_textured is None:  # a step without the colour term: render it for the picture
            image_textured, best = renderers.textured(meshes_world=mesh, R=R, T=T), 0
    frames.frame(outputs.numpy_image(image_textured[best, ..., :3]), title, output_dir / f"soft_texture_{i}.png")
    frames.frame(outputs.numpy_image(hard_mask[0].float()), title, output_dir / f"hard_silhouette_{i}.png")
    frames.frame(outputs.numpy_image(image[0, ..., :3]), title, output_dir / f"hard_texture_{i}.png", to_gif=True)


def fit(output_dir=RESULTS, loss_threshold: float = 800.0, weight_silhouette: float = 1.0,
        weight_texture: float = 0.1, **options) -> dict:
    """Run the book's cow fit; return what summary.json holds.

    options: posefit.run.FitOptions's keywords, the book's values by default.
    With several starts (restarts > 1) they explore on the silhouette alone
    and the colour term joins in the refinement (schedule {"explore_colour":
    True} keeps it throughout): the soft Phong render costs four times the
    silhouette's. target_image (a path) replaces the synthesised target, its
    mask and colours; a photo's colours are compared after a per-channel gain
    and offset (posefit.targets.relight), and so are an RGBA file's with
    pose_mode "6dof" (the object's full pose, from a coarse grid of views).
    """
    o = FitOptions(**options)
    torch.manual_seed(o.seed)
    device = torch.device(o.device)
    # 1. The mesh, with its texture. (And an observed image, read before anything is written, so that a bad
    #    one is refused first; in a photo whose colours do not show the object, the 6-DoF fit's mesh looks for
    #    its outline.)
    mesh = load_cow(device)
    observed = targets.load_target_image(o.target_image, o.background, o.image_size, o.fov,
                                         relight=o.pose_mode == "6dof",
                                         mesh=mesh if o.pose_mode == "6dof" else None,
                                         upright=search.upright_prior(o, mesh)) if o.target_image else None
    image_size, fov = (observed.size, observed.fov) if observed else (o.image_size, o.fov or targets.DEFAULT_FOV)
    if observed and observed.rgb is None and weight_texture:
        print(f"note: {observed.path} is a mask, with no colours to compare: fitting the silhouette only",
              file=sys.stderr)
        weight_texture = 0.0
    output_dir = outputs.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # 2. Soft silhouette (100 faces per pixel), soft Phong (50), hard Phong.
    if device.type == "cpu":
        render.set_up_cpu(o.rasterizer)  # one thread; glibc keeps large blocks (process-wide)
    settings = search.renderer_settings(o.pose_mode, textured=True)
    if observed and observed.relit:
        # A photo's light is not the renderer's: its colours are compared after their own gain and offset,
        # against one albedo per face (the texture, unlit), blended on the covered pixels only.
        settings["albedo"] = render.face_colours(mesh)
    renderers = render.make_renderers(device, image_size, rasterizer=o.rasterizer, fov=fov, **settings)

    # 3. The target: a hard Phong render, its non-white mask and its colours (or the observed image).
    target = targets.fit_target(o, observed, renderers, mesh)
    frames = FrameWriter(background=o.background_frames)
    outputs.save_target_pictures(frames, target, output_dir)

    # 4. The model and its parameter, the camera position: the book's start, or several (--restarts);
    #    or the object's full pose (--pose 6dof), from the best views of a coarse grid.
    hypotheses = search.start_fit(o, mesh, target, fov, explore_colour=False)  # the colour term: see Model.use
    model = Model(meshes=mesh, renderer_silhouette=renderers.silhouette, renderer_textured=renderers.textured,
                  image_ref_silhouette=target.mask, image_ref_textured=target.colours,
                  weight_silhouette=weight_silhouette, weight_texture=weight_texture, camera=hypotheses.poses)
    with torch.no_grad():
        _, silhouette_init, _ = model()
        textured_init = renderers.textured(meshes_world=mesh, R=hypotheses.R[0][None], T=hypotheses.T[0][None])
    frames.frame(outputs.numpy_image(silhouette_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")
    frames.frame(outputs.numpy_image(textured_init[0, ..., :3]), "starting colour", output_dir / "starting_rgb.png")

    # 5. Adam until the loss is below the threshold, pictures of every step. (With several starts
    #    the schedule explores at a smaller size and on the silhouette first: posefit.search.)
    hypotheses.prepare(model, renderers, target, lambda size: render.make_renderers(
        device, size, rasterizer=o.rasterizer, fov=fov, **settings))
    optimizer = torch.optim.Adam(model.parameters(), lr=hypotheses.lr_at(0))  # lr itself with one start
    with FitLoop(hypotheses.iterations, loss_threshold, desc="cow", save_every=o.save_every,
                 progress=o.progress) as loop:
        for i in loop:
            optimizer.zero_grad()
            loss, image_silhouette, image_textured = model()
            loss.sum().backward()
            optimizer.step()
            # The lowest loss and its camera; NaN poses dropped, losers pruned (several starts).
            if not loop.add(hypotheses.step(i, loss, optimizer)):
                break
            if loop.saves(i):
                save_frames(frames, renderers, mesh, hypotheses, image_silhouette, image_textured,
                            f"iter: {i}, loss: {hypotheses.best_loss:0.2f}", output_dir, i)
            if loop.done:
                break

    # 6. A photo (--pose 6dof): the answer refined by the photo's colours, the render lit by the photo's
    #    own light and composited over the floor behind the object, as the tracker fits a frame.
    hypotheses.polish(mesh, target, fov)

    return outputs.finish_run(loop, renderers, mesh, hypotheses, hypotheses.target, frames, output_dir,
                              loss_threshold=loss_threshold, settings=o.settings, device=device)


def main() -> int:
    parser = cli.fit_parser("Fit the camera position to a textured cow by silhouette and colour (book chapter 4).",
                            loss_threshold=800.0, output_dir=RESULTS)
    parser.add_argument("--weight-silhouette", type=cli.non_negative_float, default=1.0,
                        help="weight of the summed squared silhouette error (default 1.0)")
    parser.add_argument("--weight-texture", type=cli.non_negative_float, default=0.1,
                        help="weight of the summed squared RGB error (default 0.1)")
    return cli.fit_main(parser, fit)


if __name__ == "__main__":
    cli.run_main(main)
