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
                 weight_silhouette, weight_texture, init_position, mask_ref=None):
        super().__init__()
        self.meshes = meshes
        self.device = meshes.device
        self.renderer_silhouette = renderer_silhouette
        self.renderer_textured = renderer_textured
        self.weight_silhouette = weight_silhouette
        self.weight_texture = weight_texture
        # The book's mask (non-white pixels of the target), unless the target comes with its own.
        self.register_buffer("image_ref_silhouette", posefit.book_mask(image_ref) if mask_ref is None else mask_ref)
        self.register_buffer("image_ref_textured", image_ref[..., :3].clone())
        self.camera_position = nn.Parameter(torch.tensor(init_position, dtype=torch.float32, device=self.device))
        self.with_texture = True  # False: the silhouette term alone (multi-start exploration)
        self.pixels, self.loss_scale = self.image_ref_silhouette.numel(), 1.0
        # The mesh once per camera (--restarts), kept while the number of cameras stays: extending
        # copies the texture map N times, which costs as much as a small render.
        self.batch = None

    def use(self, renderer_silhouette, renderer_textured, image_ref_silhouette, image_ref_textured):
        """Render and compare at another size (multi-start exploration), the loss scaled to the full size's."""
        self.renderer_silhouette, self.renderer_textured = renderer_silhouette, renderer_textured
        self.image_ref_silhouette, self.image_ref_textured = image_ref_silhouette, image_ref_textured
        self.loss_scale = self.pixels / image_ref_silhouette.numel()

    def forward(self):
        R, T = posefit.camera_R_T(self.camera_position)
        if self.camera_position.dim() == 1:
            image_silhouette = self.renderer_silhouette(meshes_world=self.meshes.clone(), R=R, T=T)
            image_textured = self.renderer_textured(meshes_world=self.meshes.clone(), R=R, T=T)
            loss_silhouette = torch.sum((image_silhouette[..., 3] - self.image_ref_silhouette) ** 2)
            loss_texture = torch.sum((image_textured[..., :3] - self.image_ref_textured) ** 2)
        else:
            # Several cameras (--restarts): batched renders, one loss per camera.
            if self.batch is None or len(self.batch) != len(R):
                self.batch = self.meshes.extend(len(R))
            meshes = self.batch
            image_silhouette = self.renderer_silhouette(meshes_world=meshes, R=R, T=T)
            loss_silhouette = ((image_silhouette[..., 3] - self.image_ref_silhouette) ** 2).sum(dim=(1, 2))
            if not self.with_texture:
                return self.weight_silhouette * loss_silhouette * self.loss_scale, image_silhouette, None
            image_textured = self.renderer_textured(meshes_world=meshes, R=R, T=T)
            loss_texture = ((image_textured[..., :3] - self.image_ref_textured) ** 2).sum(dim=(1, 2, 3))
            loss = self.weight_silhouette * loss_silhouette + self.weight_texture * loss_texture
            return loss * self.loss_scale, image_silhouette, image_textured
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
    restarts: int = 1,
    target_image=None,
    background=None,
    fov: float = 60.0,
    prune_schedule=posefit.PRUNE_SCHEDULE,
    explore_scale: float = posefit.EXPLORE_SCALE,
    explore_lr_factor: float = posefit.EXPLORE_LR_FACTOR,
    refine_share: float = posefit.REFINE_SHARE,
    refine_sigma: float = posefit.REFINE_SIGMA,
    lr_final_factor: float = posefit.LR_FINAL_FACTOR,
    explore_with_texture: bool = False,
) -> dict:
    """Run the book's cow fit; return what summary.json holds.

    restarts > 1 fits that many starting cameras together: they explore at
    explore_scale of the image size and explore_lr_factor * lr, pruned as
    prune_schedule says ((share of the iterations done, keep), ...); the last
    refine_share of the iterations are at full size, with sigma falling to
    refine_sigma and the learning rate to lr * lr_final_factor
    (posefit.Hypotheses).
    Unless explore_with_texture, the starts explore on the silhouette alone
    and the colour term joins in the refinement: the soft Phong render costs
    about four times the silhouette, and the silhouette finds the basin.
    target_image (a path) replaces the synthesised target; the fit then runs
    at the image's size, on its mask and colours.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    # An observed image is read first, so that a bad one is refused before anything is written.
    target = posefit.load_target_image(target_image, background) if target_image is not None else None
    if target is not None:
        image_size = target.size
        if target.rgb is None and weight_texture:
            print(f"note: {target.path} is a mask, with no colours to compare: fitting the silhouette only",
                  file=sys.stderr)
            weight_texture = 0.0
    mesh = load_cow(device)
    output_dir = posefit.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # Soft silhouette (100 faces per pixel), soft Phong (50), hard Phong.
    if device.type == "cpu":
        posefit.set_cpu_threads(rasterizer)
    renderers = posefit.make_renderers(device, image_size, rasterizer=rasterizer, textured_faces_per_pixel=50,
                                       fov=fov)

    if target is None:
        # The target: a hard Phong render; its non-white mask and its colours.
        R_target, T_target, target_position = posefit.target_camera(
            target_distance, target_elevation, target_azimuth, device
        )
        with torch.no_grad():
            target_silhouette = renderers.silhouette(meshes_world=mesh, R=R_target, T=T_target)[..., 3]
            target_rgb, target_hard_mask = posefit.hard_render(renderers, mesh, R_target, T_target)
        image_ref, mask_ref = target_rgb[0], None
    else:
        # The target from the file: its mask and its colours on white; no true camera is known.
        R_target = target_position = None
        mask_ref = target.mask.to(device)
        target_silhouette, target_hard_mask = mask_ref[None], mask_ref[None].bool()
        target_rgb = target.shown[None].to(device)
        image_ref = (target.rgb if target.rgb is not None else target.shown).to(device)

    frames = FrameWriter(background=background_frames)
    frames.frame(posefit.numpy_image(target_silhouette[0]), "target silhouette",
                 output_dir / "target_silhouette.png")
    frames.frame(posefit.numpy_image(target_rgb[0, ..., :3]), "target", output_dir / "target_rgb.png")

    # One start (the book's) or several, spread over the sphere (--restarts).
    hypotheses = posefit.Hypotheses(init_position, restarts, iterations=iterations, lr=lr, renderers=renderers,
                                    prune_schedule=prune_schedule, explore_scale=explore_scale,
                                    explore_lr_factor=explore_lr_factor, refine_share=refine_share,
                                    refine_sigma=refine_sigma,
                                    lr_final_factor=lr_final_factor)
    model = Model(meshes=mesh, renderer_silhouette=renderers.silhouette, renderer_textured=renderers.textured,
                  image_ref=image_ref, weight_silhouette=weight_silhouette, weight_texture=weight_texture,
                  init_position=hypotheses.start, mask_ref=mask_ref).to(device)
    with torch.no_grad():
        _, silhouette_init, textured_init = model()
    frames.frame(posefit.numpy_image(silhouette_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")
    frames.frame(posefit.numpy_image(textured_init[0, ..., :3]), "starting colour",
                 output_dir / "starting_rgb.png")
    # With several starts, they explore at a smaller size (cheaper); the refinement is at full size.
    full_size = (renderers.silhouette, renderers.textured, model.image_ref_silhouette, model.image_ref_textured)
    explore_size = hypotheses.explore_size(image_size)
    if explore_size != image_size:
        explore = posefit.make_renderers(device, explore_size, rasterizer=rasterizer, textured_faces_per_pixel=50,
                                         fov=fov)
        model.use(explore.silhouette, explore.textured, posefit.resize_image(model.image_ref_silhouette, explore_size),
                  posefit.resize_image(model.image_ref_textured, explore_size))

    optimizer = torch.optim.Adam(model.parameters(), lr=hypotheses.lr_at(0))  # lr itself with one start
    record = posefit.FitRecord()
    bar = tqdm(range(iterations), disable=not progress, desc="cow", unit="it")
    try:
        for i in bar:
            if i == hypotheses.refine_from and explore_size != image_size:
                model.use(*full_size)
            optimizer.zero_grad()
            # With several starts: explore on the silhouette alone (the colour costs 4x more).
            model.with_texture = hypotheses.single or explore_with_texture or hypotheses.refining(i)
            loss, image_silhouette, image_textured = model()
            # Backward and Adam step (with several starts: also drop the clear losers).
            stopped = hypotheses.step(i, loss, model, optimizer)
            if stopped:
                record.stopped = stopped
                break
            # The lowest loss, its renders, and the camera it moved to (the book's one camera with one start).
            loss, camera_position, best = hypotheses.best_loss, hypotheses.best_position, hypotheses.best_row
            record.add(loss, camera_position)
            bar.set_postfix(loss=f"{loss:.1f}")
            done = loss < loss_threshold
            if save_every and (i % save_every == 0 or done or i == iterations - 1):
                title = f"iter: {i}, loss: {loss:0.2f}"
                # The soft renders the loss saw, then hard renders from the new camera.
                frames.frame(posefit.numpy_image(image_silhouette[best, ..., 3]), title,
                             output_dir / f"soft_silhouette_{i}.png")
                with torch.no_grad():
                    R_best, T_best = posefit.camera_R_T(camera_position)
                    image, hard_mask = posefit.hard_render(renderers, mesh, R_best, T_best)
                    if image_textured is None:  # exploring without the colour term: render it for the picture
                        image_textured, best = renderers.textured(meshes_world=mesh, R=R_best, T=T_best), 0
                frames.frame(posefit.numpy_image(image_textured[best, ..., :3]), title,
                             output_dir / f"soft_texture_{i}.png")
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
        hypotheses=hypotheses, target_image=target,
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
        restarts=args.restarts,
        target_image=args.target_image,
        background=args.background,
        fov=args.fov,
    )
    return posefit.report(summary, args.output_dir)


if __name__ == "__main__":
    posefit.run_main(main)
