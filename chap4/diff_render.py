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
observed mask or photo instead of the synthesised target (README).

Run `python chap4/diff_render.py --help` for the options.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pytorch3d.io import load_obj
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes
from tqdm import tqdm

import posefit
from frames import FrameWriter

FRAME_PREFIXES = ["fitting_"]


def load_teapot(device) -> Meshes:
    (path,) = posefit.provision_all(posefit.TEAPOT_FILES)
    try:
        verts, faces_idx, _ = load_obj(path, load_textures=False)
    except Exception as exc:  # a corrupt file that still hashed right cannot happen; be clear anyway
        raise posefit.UserError(f"cannot read {path}: {exc}") from None
    faces = faces_idx.verts_idx
    # White vertex colours: the silhouette does not need any, the Phong picture does.
    textures = TexturesVertex(verts_features=torch.ones_like(verts)[None])
    return Meshes(verts=[verts.to(device)], faces=[faces.to(device)], textures=textures.to(device))


class Model(nn.Module):
    """The book's model: a camera position, and the silhouette loss it gives."""

    def __init__(self, meshes, renderer, image_ref, init_position):
        super().__init__()
        self.meshes = meshes
        self.device = meshes.device
        self.renderer = renderer
        self.register_buffer("image_ref", image_ref)
        self.camera_position = nn.Parameter(torch.tensor(init_position, dtype=torch.float32, device=self.device))
        self.pixels, self.loss_scale = image_ref.numel(), 1.0
        self.batch = None  # the mesh once per camera (--restarts), kept while the number of cameras stays

    def use(self, renderer, image_ref):
        """Render and compare at another size (multi-start exploration), the loss scaled to the full size's."""
        self.renderer, self.image_ref = renderer, image_ref
        self.loss_scale = self.pixels / image_ref.numel()

    def forward(self):
        R, T = posefit.camera_R_T(self.camera_position)
        if self.camera_position.dim() == 1:
            image = self.renderer(meshes_world=self.meshes.clone(), R=R, T=T)
            loss = torch.sum((image[..., 3] - self.image_ref) ** 2)
        else:
            # Several cameras (--restarts): one batched render, one loss per camera.
            if self.batch is None or len(self.batch) != len(R):
                self.batch = self.meshes.extend(len(R))
            image = self.renderer(meshes_world=self.batch, R=R, T=T)
            loss = ((image[..., 3] - self.image_ref) ** 2).sum(dim=(1, 2)) * self.loss_scale
        return loss, image


def fit(
    output_dir=posefit.REPO / "result_teapot",
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
    fov: float = 60.0,
    prune_schedule=posefit.PRUNE_SCHEDULE,
    explore_scale: float = posefit.EXPLORE_SCALE,
    explore_lr_factor: float = posefit.EXPLORE_LR_FACTOR,
    refine_share: float = posefit.REFINE_SHARE,
    refine_sigma: float = posefit.REFINE_SIGMA,
    lr_final_factor: float = posefit.LR_FINAL_FACTOR,
) -> dict:
    """Run the book's teapot fit; return what summary.json holds.

    restarts > 1 fits that many starting cameras together: they explore at
    explore_scale of the image size and explore_lr_factor * lr, pruned as
    prune_schedule says ((share of the iterations done, keep), ...); the last
    refine_share of the iterations are at full size, with sigma falling to
    refine_sigma and the learning rate to lr * lr_final_factor
    (posefit.Hypotheses).
    target_image (a path) replaces the synthesised target; the fit then runs
    at the image's size.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    # An observed image is read first, so that a bad one is refused before anything is written.
    target = posefit.load_target_image(target_image, background) if target_image is not None else None
    if target is not None:
        image_size = target.size
    mesh = load_teapot(device)
    output_dir = posefit.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # The renderers: soft silhouette to optimise, hard Phong for pictures.
    if device.type == "cpu":
        posefit.set_cpu_threads(rasterizer)
    renderers = posefit.make_renderers(device, image_size, rasterizer=rasterizer, fov=fov)

    if target is None:
        # The target: a hard Phong render, and the mask of its non-white pixels.
        R_target, T_target, target_position = posefit.target_camera(
            target_distance, target_elevation, target_azimuth, device
        )
        with torch.no_grad():
            target_silhouette = renderers.silhouette(meshes_world=mesh, R=R_target, T=T_target)[..., 3]
            target_rgb, target_hard_mask = posefit.hard_render(renderers, mesh, R_target, T_target)
        image_ref = posefit.book_mask(target_rgb[0])
    else:
        # The target from the file: its mask; no true camera is known.
        R_target = target_position = None
        image_ref = target.mask.to(device)
        target_silhouette, target_hard_mask = image_ref[None], image_ref[None].bool()
        target_rgb = target.shown[None].to(device)

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
    model = Model(meshes=mesh, renderer=renderers.silhouette, image_ref=image_ref,
                  init_position=hypotheses.start).to(device)
    with torch.no_grad():
        _, image_init = model()
    frames.frame(posefit.numpy_image(image_init[0, ..., 3]), "starting silhouette",
                 output_dir / "starting_silhouette.png")
    # With several starts, they explore at a smaller size (cheaper); the refinement is at full size.
    explore_size = hypotheses.explore_size(image_size)
    if explore_size != image_size:
        explore = posefit.make_renderers(device, explore_size, rasterizer=rasterizer, fov=fov)
        model.use(explore.silhouette, posefit.resize_image(image_ref, explore_size))

    optimizer = torch.optim.Adam(model.parameters(), lr=hypotheses.lr_at(0))  # lr itself with one start
    record = posefit.FitRecord()
    bar = tqdm(range(iterations), disable=not progress, desc="teapot", unit="it")
    try:
        for i in bar:
            if i == hypotheses.refine_from and explore_size != image_size:
                model.use(renderers.silhouette, image_ref)
            optimizer.zero_grad()
            loss, _ = model()
            # Backward and Adam step (with several starts: also drop the clear losers).
            stopped = hypotheses.step(i, loss, model, optimizer)
            if stopped:
                record.stopped = stopped
                break
            # The lowest loss, and the camera it moved to (the book's one camera with one start).
            loss, camera_position = hypotheses.best_loss, hypotheses.best_position
            record.add(loss, camera_position)
            bar.set_postfix(loss=f"{loss:.1f}")
            done = loss < loss_threshold
            if save_every and (i % save_every == 0 or done or i == iterations - 1):
                # The book's picture of each step: a hard render from the new camera.
                with torch.no_grad():
                    image, _ = posefit.hard_render(renderers, mesh, *posefit.camera_R_T(camera_position))
                frames.frame(posefit.numpy_image(image[0, ..., :3]), f"iter: {i}, loss: {loss:0.2f}",
                             output_dir / f"fitting_{i}.png", to_gif=True)
            if done:
                record.stopped = "threshold"
                break
    except KeyboardInterrupt:
        record.stopped = "interrupted"
    finally:
        bar.close()
    record.finish()

    summary = posefit.finish_run(
        record, renderers, mesh, model.camera_position, frames, output_dir,
        target_rgb=target_rgb, target_mask=target_hard_mask, R_target=R_target,
        target_position=target_position, loss_threshold=loss_threshold,
        settings=settings, device=device, save_every=save_every,
        hypotheses=hypotheses, target_image=target,
    )
    return summary


def main() -> int:
    parser = posefit.base_parser(
        "Fit the camera position to a teapot silhouette (book chapter 4).",
        loss_threshold=500.0,
        output_dir=posefit.REPO / "result_teapot",
    )
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
