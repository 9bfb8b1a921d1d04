"""Track an object's 6-DoF pose through a sequence of frames.

An extension of chapter 4: instead of fitting one camera to one picture, follow
a moving object from frame to frame. With the poses known up to frame t-1, the
pose at frame t is found by differentiable rendering, starting from frame
t-1's estimate carried forward with the last velocity:

1. load the mesh (the textured cow unless --mesh) and set up the chapter's
   renderers: soft silhouette and soft Phong from one soft rasterization,
   hard Phong for the pictures and the IoU check;
2. take the frames: a synthesised sequence of the cow moving and turning
   (the default, ground truth kept), or PNG frames from --frames in natural
   name order, starting from --init-pose;
3. for each frame: predict the pose from the last two estimates, run a few
   Adam steps on a small rotation (axis-angle, in camera axes, about the
   object's origin) and translation that correct the prediction, scored by
   summed squared silhouette error + weighted summed squared RGB error
   (frames with no motion to extrapolate yet get more steps);
4. check the hard silhouette against the frame's mask: when the IoU is below
   --lost-iou the frame is searched again from a dozen turned starts,
   optimised together as one batch, and marked `recovered`;
5. save an overlay (estimated outline on the observed frame) per frame,
   rewrite tracking.json after every frame, and finish with tracking.gif.

The soft edges are much sharper than the book's (sigma 5e-6 at 128 px instead
of 1e-4), with 8 faces per pixel: the cow's faces are smaller than a pixel
here, and with the book's blur its soft silhouette is grey inside and haloed
outside, which pulls the fit off the true pose by a degree or two. The colour
term weighs as much as the silhouette (the book: 0.1): texture is what tells
a turn from a sideways move. With 6 steps per frame this tracks the default
sequence (60 frames, 128 px) to about 0.7 degrees and 0.5% of the distance,
at about 3 frames per second on two CPU cores.

A pose is the (R, T) that PyTorch3D's MeshRenderer takes, the mesh in its own
coordinates: x_view = x_mesh @ R + T (row vectors, as look_at_view_transform
returns them). Lights and camera are the book's (render.make_renderers).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch3d.io import load_objs_as_meshes
from pytorch3d.renderer import TexturesVertex, look_at_view_transform
from pytorch3d.transforms import axis_angle_to_matrix, matrix_to_axis_angle
from tqdm import tqdm

from posefit import cli, data, outputs, pose, render, targets
from posefit.errors import EXIT_INTERRUPTED, UserError
from posefit.frames import FrameWriter
from posefit.targets import Frame

DEFAULT_OUTPUT = data.REPO / "result_cow" / "tracking"
FRAME_PREFIXES = ["overlay_"]
OBSERVED_DIR = "observed"  # where the synthesised frames are saved, as a --frames folder


# ---------------------------------------------------------------------------
# Poses: the true ones, and the next one predicted
# ---------------------------------------------------------------------------


def load_truth(path: Path):
    """A --truth file: a JSON list of poses, one per frame."""
    data = pose.read_json(path, "--truth")
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        data = data["frames"]  # a tracking.json is accepted too
    if not isinstance(data, list) or not all(isinstance(p, dict) and "R" in p and "T" in p for p in data):
        raise UserError(f"--truth {path}: expected a JSON list of objects with keys R and T")
    return [pose.check_pose(p["R"], p["T"], f"--truth {path}, pose {i}") for i, p in enumerate(data)]


def predict(poses, factor: float):
    """The next pose from the last two estimates: their step repeated, times `factor`."""
    R1, T1 = poses[-1]
    if len(poses) < 2 or factor == 0:
        return R1, T1
    R0, T0 = poses[-2]
    step = matrix_to_axis_angle((R0.T @ R1)[None])[0]
    return pose.rotate(R1, factor * step), T1 + factor * (T1 - T0)


# ---------------------------------------------------------------------------
# Frames: a synthesised sequence, or PNG files
# ---------------------------------------------------------------------------


def synthetic_poses(num_frames: int, seed: int = 0, distance: float = 3.0, elevation: float = 15.0,
                    azimuth: float = 120.0, max_degrees: float = 4.0, max_step: float = 0.05):
    """A smooth path about a three-quarter view: a slow sinusoid on each rotation axis and coordinate.

    Periods and phases are random (from `seed`); the amplitudes are scaled so
    that the fastest frame turns by 0.98 * max_degrees and the fastest moves
    by 0.98 * max_step.
    """
    g = torch.Generator().manual_seed(seed)
    horizon = max(num_frames, 240)  # scaled over a long stretch, so that shorter runs are its first frames
    t = torch.arange(horizon, dtype=torch.float64)[:, None]

    def wave(weights, periods):
        stretch = 0.85 + 0.3 * torch.rand(3, generator=g, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(3, generator=g, dtype=torch.float64)
        angle = 2 * math.pi * t / (torch.tensor(periods, dtype=torch.float64) * stretch) + phase
        return torch.tensor(weights, dtype=torch.float64) * torch.sin(angle)

    R0, T0 = look_at_view_transform(distance, elevation, azimuth)
    turn = wave([0.4, 1.0, 0.3], [50.0, 60.0, 45.0])  # about x (nod), y (turn), z (roll), camera axes
    move = wave([1.0, 0.6, 1.0], [45.0, 35.0, 55.0])  # across, up and down, towards and away

    def path(s_turn, s_move):
        return R0.double() @ axis_angle_to_matrix(s_turn * turn), T0.double() + s_move * move

    def fastest(R, T):
        if len(R) < 2:
            return 1.0, 1.0
        cos = ((R[:-1].transpose(1, 2) @ R[1:]).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
        return float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).max()), float((T[1:] - T[:-1]).norm(dim=1).max())

    s_turn, s_move = 1.0, 1.0
    for _ in range(4):  # the steps are nearly linear in the scales: a few rounds settle them
        degrees, step = fastest(*path(s_turn, s_move))
        s_turn *= 0.98 * max_degrees / max(degrees, 1e-9)
        s_move *= 0.98 * max_step / max(step, 1e-9)
    R, T = path(s_turn, s_move)
    return R[:num_frames].float(), T[:num_frames].float()


def synthetic_frames(renderers, mesh, R, T, save_dir: Path | None):
    """Render the sequence like the book's targets (hard Phong on white); save PNGs if asked."""
    for i in range(len(R)):
        with torch.no_grad():
            image, _ = render.hard_render(renderers, mesh, R[i : i + 1].to(mesh.device), T[i : i + 1].to(mesh.device))
        rgb = image[0, ..., :3].cpu()
        path = None
        if save_dir is not None:
            path = save_dir / f"frame_{i}.png"
            save_png(rgb, path)
        yield Frame(i, None if path is None else str(path), rgb, targets.book_mask(rgb).bool(), (R[i], T[i]))


def save_png(rgb: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray((rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)


# ---------------------------------------------------------------------------
# Fitting one frame
# ---------------------------------------------------------------------------


def losses(renderers, meshes, R, T, target_rgb, target_mask, weight_colour: float) -> torch.Tensor:
    """Per pose: summed squared silhouette error + weight_colour * summed squared RGB error.

    One soft rasterization feeds both the soft silhouette and the soft Phong shader.
    """
    fragments = renderers.textured.rasterizer(meshes, R=R, T=T)
    silhouette = renderers.silhouette.shader(fragments, meshes, R=R, T=T)[..., 3]
    loss = ((silhouette - target_mask) ** 2).sum(dim=(1, 2))
    if weight_colour:
        colour = renderers.textured.shader(fragments, meshes, R=R, T=T)[..., :3]
        loss = loss + weight_colour * ((colour - target_rgb) ** 2).sum(dim=(1, 2, 3))
    return loss


def refine(renderers, meshes, R_start, T_start, target_rgb, target_mask, *, iterations: int, lr: float,
           lr_end: float, weight_colour: float):
    """Adam on N 6-DoF poses at once, each a correction of its start (posefit.pose.SixDoF).

    The learning rate falls geometrically from lr to lr * lr_end, so that the
    last steps settle instead of rattling around the minimum. A step that
    makes a number non-finite is undone and ends the refinement; the depth
    shrinks by at most half. Returns the final (R, T) of each start and its
    loss at the last evaluation.
    """
    poses = pose.SixDoF(R_start, T_start)
    optimizer = torch.optim.Adam(poses.parameters(), lr=lr)
    loss = torch.full((len(poses),), math.inf, device=R_start.device)
    for step in range(iterations):
        optimizer.param_groups[0]["lr"] = lr * lr_end ** (step / max(iterations - 1, 1))
        loss = losses(renderers, meshes, *poses(), target_rgb, target_mask, weight_colour)
        if not torch.isfinite(loss).all():
            break
        optimizer.zero_grad()
        loss.sum().backward()
        before = [p.detach().clone() for p in poses.parameters()]
        optimizer.step()
        with torch.no_grad():
            if not all(poses.finite_rows()):
                for parameter, value in zip(poses.parameters(), before, strict=True):
                    parameter.copy_(value)
                break
            poses.translation[:, 2].clamp_(min=-0.5 * poses.T0[:, 2])
    R, T = poses.poses()
    return R, T, loss.detach()


def search(renderers, mesh, candidates, target_rgb, target_mask, generator, *, degrees: float, shift: float,
           iterations: int, final_iterations: int, lr: float, lr_end: float, weight_colour: float):
    """Look for a lost frame's pose again, wider; returns the best pose found and the steps taken.

    The candidates, and 12 starts around the first (turned by +-degrees/2 and
    +-degrees about each camera axis, and moved by up to `shift` times the
    depth at random), are refined together as one batch on the silhouette
    alone (PyTorch3D copies the texture map for every pose of a batch, which
    would cost more than the search). Then the candidates as they were and the
    refined poses are ranked one by one by the full loss, and the best, unless
    it is the first candidate as it was, gets final_iterations steps on the
    full loss.
    """
    R0, T0 = candidates[0]
    turns = torch.cat([torch.eye(3) * f for f in (0.5, -0.5, 1.0, -1.0)]) * math.radians(degrees)
    move = (2 * torch.rand(len(turns), 3, generator=generator) - 1) * shift * float(T0[2])
    R_all = torch.cat([torch.stack([R for R, _ in candidates]), pose.rotate(R0.expand(len(turns), 3, 3), turns.to(R0))])
    T_all = torch.cat([torch.stack([T for _, T in candidates]), T0 + move.to(T0)])
    R_all, T_all, _ = refine(renderers, mesh.extend(len(R_all)), R_all, T_all, target_rgb, target_mask,
                             iterations=iterations, lr=lr, lr_end=lr_end, weight_colour=0.0)
    pool = list(candidates) + list(zip(R_all, T_all, strict=True))
    with torch.no_grad():
        scores = [float(losses(renderers, mesh, R[None], T[None], target_rgb, target_mask, weight_colour))
                  for R, T in pool]
    best = min(range(len(pool)), key=lambda i: scores[i] if math.isfinite(scores[i]) else math.inf)
    R, T = pool[best][0][None], pool[best][1][None]
    if best == 0:
        return R, T, iterations
    R, T, _ = refine(renderers, mesh, R, T, target_rgb, target_mask, iterations=final_iterations, lr=lr,
                     lr_end=lr_end, weight_colour=weight_colour)
    return R, T, iterations + final_iterations


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------


def overlay(rgb: torch.Tensor, estimate_mask: torch.Tensor) -> np.ndarray:
    """The observed frame with the estimated silhouette's outline drawn in red."""
    mask = estimate_mask.cpu().numpy()
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    picture = rgb.numpy().copy()
    picture[mask & ~inner] = (1.0, 0.1, 0.1)
    return picture


# ---------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------


def track(
    output_dir=DEFAULT_OUTPUT,
    frames_dir=None,
    init_pose=None,
    truth=None,
    mesh_path=None,
    num_frames: int | None = None,
    image_size: int = 128,
    iterations: int = 6,
    start_iterations: int | None = None,
    lr: float = 0.008,
    lr_end: float = 0.2,
    weight_colour: float = 1.0,
    faces_per_pixel: int = 8,
    sigma: float = 5e-6,
    extrapolate: float = 1.0,
    fov: float = 60.0,
    lost_iou: float = 0.9,
    search_iterations: int = 12,
    search_degrees: float = 40.0,
    search_shift: float = 0.05,
    device: str = "cpu",
    rasterizer: str = "fast",
    seed: int = 0,
    save_overlays: bool = True,
    progress: bool = True,
    background_frames: bool = True,
) -> dict:
    """Track the pose frame by frame; return what tracking.json holds (plus "stopped" and "seconds").

    frames_dir None: the synthesised cow sequence, num_frames (default 60) at
    image_size, with its ground truth. Otherwise the PNG frames of frames_dir
    (at their own size; num_frames, if given, tracks only the first ones),
    starting from init_pose = (R, T) and, if given, compared with truth, a
    list of (R, T). Each frame starts from the last estimate moved on by
    `extrapolate` times the last frame-to-frame motion; frames without a
    motion yet (the first two, and the one after a search) get
    start_iterations steps (default 3 * iterations) instead. sigma is the
    soft edge width at 128 px, scaled with the pixel area at other sizes.
    """
    started = time.perf_counter()
    knobs = {name: value for name, value in locals().items() if name not in ("init_pose", "truth", "started")}
    start_iterations = knobs["start_iterations"] = start_iterations or 3 * iterations
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device)

    # 1. The input: everything that can be checked is checked before any output is touched.
    if frames_dir is not None:
        if init_pose is None:
            raise UserError("--frames needs --init-pose (the pose at frame 0)")
        paths, size = targets.list_frames(frames_dir)
        paths = paths[:num_frames] if num_frames else paths
        if truth is not None and len(truth) < len(paths):
            raise UserError(f"--truth has {len(truth)} poses for {len(paths)} frames")
    else:
        size = (image_size, image_size)
    mesh_path = Path(mesh_path) if mesh_path is not None else data.provision_all(data.COW_FILES)[0]
    try:
        mesh = load_objs_as_meshes([mesh_path], device=device)
    except Exception as exc:
        raise UserError(f"cannot read mesh {mesh_path}: {exc}") from None
    if mesh.textures is None:  # an untextured mesh is shaded in plain grey
        mesh.textures = TexturesVertex(verts_features=torch.full_like(mesh.verts_padded(), 0.7))
    knobs["mesh_path"] = mesh_path
    output_dir = outputs.prepare_output_dir(output_dir, FRAME_PREFIXES)

    # 2. Renderers: the soft ones for the loss, hard Phong for targets, IoU and pictures.
    renderers = render.make_renderers(device, size, rasterizer=rasterizer, faces_per_pixel=faces_per_pixel,
                                       textured_faces_per_pixel=faces_per_pixel,
                                       sigma=sigma * (128 / min(size)) ** 2, fov=fov)
    render.set_cpu_threads(rasterizer)

    # 3. The frames, read (or rendered) one at a time as tracking reaches them.
    if frames_dir is not None:
        source, total = targets.folder_frames(paths, truth), len(paths)
    else:
        total = num_frames or 60
        R_truth, T_truth = synthetic_poses(total, seed)
        init_pose = (R_truth[0], T_truth[0])
        observed = outputs.prepare_output_dir(output_dir / OBSERVED_DIR, ["frame_"])
        outputs.write_json_atomic(observed / "init_pose.json", pose.pose_json(*init_pose))
        poses = [pose.pose_json(R, T) for R, T in zip(R_truth, T_truth, strict=True)]
        outputs.write_json_atomic(observed / "truth.json", poses)
        source = synthetic_frames(renderers, mesh, R_truth, T_truth, observed)
    knobs.update(image_size=list(size), num_frames=total, device=str(device), init_pose=pose.pose_json(*init_pose),
                 truth="synthesised" if frames_dir is None else truth is not None)
    record = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in knobs.items()}, "frames": []}
    outputs.write_json_atomic(output_dir / "tracking.json", record)

    # 4. Frame by frame: predict, refine, check, search again if lost, record.
    pictures = FrameWriter(background=background_frames) if save_overlays else None
    init = tuple(p.to(device) for p in init_pose)
    history = []  # the estimates since the start or the last search
    stopped = "done"
    bar = tqdm(source, total=total, disable=not progress, desc="tracking", unit="frame")
    try:
        for frame in bar:
            frame_started = time.perf_counter()
            rgb, mask = frame.rgb.to(device)[None], frame.mask.to(device)[None].float()
            if len(history) >= 2:
                R_start, T_start = predict(history, extrapolate)
                steps = iterations
            else:
                R_start, T_start = history[-1] if history else init
                steps = start_iterations
            R, T, _ = refine(renderers, mesh, R_start[None], T_start[None], rgb, mask,
                             iterations=steps, lr=lr, lr_end=lr_end, weight_colour=weight_colour)
            with torch.no_grad():
                _, estimate_mask = render.hard_render(renderers, mesh, R, T)
            iou = pose.silhouette_iou(estimate_mask[0], mask[0])

            recovered = iou < lost_iou
            if recovered:
                candidates = [(R[0], T[0]), (R_start, T_start)] + ([history[-1]] if history else [])
                R, T, more = search(renderers, mesh, candidates, rgb, mask, generator, degrees=search_degrees,
                                    shift=search_shift, iterations=search_iterations,
                                    final_iterations=start_iterations, lr=2 * lr, lr_end=lr_end,
                                    weight_colour=weight_colour)
                with torch.no_grad():
                    _, estimate_mask = render.hard_render(renderers, mesh, R, T)
                iou = pose.silhouette_iou(estimate_mask[0], mask[0])
                steps += more
                history = []  # the motion before a jump says nothing about the motion after it
            history = (history + [(R[0], T[0])])[-2:]

            entry = {"index": frame.index, "file": frame.file, **pose.pose_json(R[0], T[0]), "iou": iou,
                     "iterations": steps, "seconds": time.perf_counter() - frame_started, "recovered": recovered}
            title = f"frame {frame.index}: IoU {iou:.3f}"
            if frame.truth is not None:
                entry["rotation_error_deg"] = pose.rotation_error_deg(R[0].cpu(), frame.truth[0])
                entry["translation_error"] = float(torch.linalg.norm(T[0].cpu() - frame.truth[1]))
                entry["distance"] = float(torch.linalg.norm(frame.truth[1]))
                title += f", {entry['rotation_error_deg']:.1f} deg off"
            record["frames"].append(entry)
            outputs.write_json_atomic(output_dir / "tracking.json", record)
            if pictures is not None:
                pictures.frame(overlay(frame.rgb, estimate_mask[0]), title + (" (searched)" if recovered else ""),
                               output_dir / f"overlay_{frame.index}.png", to_gif=True)
            errors = {"deg": f"{entry['rotation_error_deg']:.2f}"} if frame.truth is not None else {}
            bar.set_postfix(iou=f"{iou:.3f}", **errors)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        bar.close()
        if pictures is not None:
            if record["frames"]:
                pictures.gif(output_dir / "tracking.gif")
            for message in pictures.close():
                print(f"warning: a picture could not be written: {message}", file=sys.stderr)
    return dict(record, stopped=stopped, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def summary_line(record: dict, output_dir: Path) -> str:
    """Frames, errors (with a truth), IoU, searches and speed, on one line."""
    frames, seconds = record["frames"], record["seconds"]
    n = len(frames)
    parts = [f"tracked {n} frame{'' if n == 1 else 's'} in {seconds:.1f} s ({n / seconds if seconds else 0.0:.2f} fps)"]
    if n and "rotation_error_deg" in frames[0]:
        rotation = [f["rotation_error_deg"] for f in frames]
        translation = sum(f["translation_error"] for f in frames) / n
        distance = sum(f["distance"] for f in frames) / n
        parts.append(f"rotation error mean {sum(rotation) / n:.2f} deg, max {max(rotation):.2f} deg")
        parts.append(f"translation error mean {translation:.4f} ({100 * translation / distance:.2f}% of the distance)")
    if n:
        parts.append(f"IoU mean {sum(f['iou'] for f in frames) / n:.3f}, min {min(f['iou'] for f in frames):.3f}")
        parts.append(f"{sum(f['recovered'] for f in frames)} searched again")
    return ", ".join(parts) + f"; results in {output_dir}"


def main() -> int:
    parser = argparse.ArgumentParser(description="Track an object's 6-DoF pose through a sequence of frames "
                                                 "by differentiable rendering (an extension of chapter 4).")
    add = parser.add_argument
    add("--frames", type=Path, default=None, metavar="DIR",
        help="PNG frames (RGB on white, or RGBA), taken in natural name order (default: synthesise a cow sequence)")
    add("--init-pose", type=Path, default=None, metavar="FILE",
        help='the pose at frame 0, JSON {"R": [[...], [...], [...]], "T": [...]} (required with --frames)')
    add("--truth", type=Path, default=None, metavar="FILE",
        help="the true poses, a JSON list of {R, T}, one per frame, to report errors (with --frames)")
    add("--mesh", type=Path, default=None, help="the object's .obj (default: the cow, data/cow_mesh/cow.obj)")
    add("--num-frames", type=cli.positive_int, default=None,
        help="frames to synthesise (default 60); with --frames, track only the first N")
    add("--image-size", type=cli.image_side, default=128,
        help="size of the synthesised frames in pixels (default 128); --frames are tracked at their own size")
    add("--iterations", type=cli.positive_int, default=6,
        help="Adam steps per frame (default 6; three times as many while there is no motion to extrapolate)")
    add("--lr", type=cli.positive_float, default=0.008,
        help="Adam learning rate at each frame's first step, falling to a fifth by its last (default 0.008)")
    add("--faces-per-pixel", type=cli.positive_int, default=8,
        help="faces blended per pixel by the soft renderers (default 8)")
    add("--weight-colour", type=cli.non_negative_float, default=1.0,
        help="weight of the summed squared RGB error against the silhouette's (default 1.0)")
    add("--lost-iou", type=cli.non_negative_float, default=0.9,
        help="a frame whose hard-silhouette IoU with the observed mask is below this after its steps is searched "
             "again from a dozen turned starts and marked recovered (default 0.9: tracked frames score 0.95-0.99 "
             "at 64-128 px, a pose 30 degrees off about 0.85)")
    add("--no-overlays", action="store_true", help="write no overlay pictures and no GIF")
    cli.add_common(parser, DEFAULT_OUTPUT)  # --output-dir, --device, --seed (the path, the search's shifts), --fov
    args = parser.parse_args()
    if args.frames is None and (args.init_pose is not None or args.truth is not None):
        parser.error("--init-pose and --truth go with --frames")
    if args.frames is not None and args.init_pose is None:
        parser.error("--frames needs --init-pose (the pose at frame 0)")
    cli.resolve_device(parser, args)
    record = track(
        output_dir=args.output_dir,
        frames_dir=args.frames,
        init_pose=pose.load_pose(args.init_pose) if args.init_pose else None,
        truth=load_truth(args.truth) if args.truth else None,
        mesh_path=args.mesh,
        num_frames=args.num_frames,
        image_size=args.image_size,
        iterations=args.iterations,
        lr=args.lr,
        faces_per_pixel=args.faces_per_pixel,
        weight_colour=args.weight_colour,
        fov=args.fov,
        lost_iou=args.lost_iou,
        device=args.device,
        seed=args.seed,
        save_overlays=not args.no_overlays,
    )
    line = summary_line(record, args.output_dir)
    if record["stopped"] == "interrupted":
        print(f"interrupted: {line}")
        return EXIT_INTERRUPTED
    print(line)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
