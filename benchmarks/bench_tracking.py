"""Benchmark chap4/track_pose.py on photo-like video stand-ins rendered by Mitsuba 3 (or on its own sequence).

    python benchmarks/bench_tracking.py                        # render the three sequences once, track each
    python benchmarks/bench_tracking.py --render-only          # only render them (Mitsuba) into --cases
    python benchmarks/bench_tracking.py --only seed2_occluded_jpeg -- --iterations 8   # flags after -- go to the tracker
    python benchmarks/bench_tracking.py --cases DIR            # sequences already prepared (make_test_sequence)
    python benchmarks/bench_tracking.py --synthetic            # the tracker's default synthesised sequence
    git worktree add /tmp/before HEAD~1 && python benchmarks/bench_tracking.py --reference /tmp/before --repeats 3
                                                               # side by side with an earlier commit, in turn

The sequences come from benchmarks/scenes.py (sample_sequence, its
SEQUENCE_RANGES, fixed before any result was looked at): the cow on a
coloured floor with soft shadows, an environment plus a sphere light, a
hand-held camera moving around and towards it with roll and pan, 160x120,
sensor noise and JPEG. The set is fixed (SEQUENCES): seed 1 plain and seed 2
occluded (a post crosses in front, hiding 20-35% of the cow on at least 10
consecutive frames) as JPEG frames, seed 3 plain as one H.264 MP4 at 15 fps
(noise, no JPEG before the video's own compression; the tracker sees the
video's decoded frames), 48 frames each. Mitsuba (`pip install mitsuba
imageio-ffmpeg`, variant scalar_rgb) is needed to render them, not to track.

Each sequence is tracked from its initial pose, as the README tells a user,
by two whole commands (a fresh process each, default outputs on):

    python chap4/track_pose.py --frames DIR/frames | --video DIR/video.mp4 --init-pose DIR/init_pose.json
        --truth DIR/truth.json --fov FOV --num-frames N --output-dir OUT

once with N = all frames and once with N = 10 (--fps-base). Frames per second
= (N - 10) / (wall(N) - wall(10)): start-up is in both walls and cancels.
The errors are computed here from the N-frame run's tracking.json against
truth.json: rotation = geodesic angle between R and R_true (degrees),
translation = the mean over frames of |T - T_true| / |T_true|. Targets on
every sequence: mean rotation error < 3 degrees, max < 10, translation < 3%,
at least 10 frames per second. Exit status: 0 all met, 1 a target missed,
2 a tracker command failed or the cases could not be rendered.

Cases folder (--cases, default /tmp/bench_tracking_cases), one folder a sequence:

    <name>/frames/frame_<i>.jpg   the frames (or <name>/video.mp4)
    <name>/masks/mask_<i>.png     the cow's visible pixels (truth, not given to the tracker)
    <name>/init_pose.json         frame 0's pose {"R", "T"}, PyTorch3D's convention (x_view = x_mesh @ R + T)
    <name>/truth.json             a list of such poses, one per frame (written last: a sequence is complete with it)
    <name>/sequence.json          fov (degrees across the shorter side), size [H, W], kind, seed, source,
                                  occluded_frames, ...

A sequence whose truth.json exists is not rendered again. --cases may also
name one such folder, or a folder of them none of which is one of the fixed
names (e.g. made by make_test_sequence, which needs PyTorch3D only): those
are benchmarked as they are. The load average is printed: other work on the
machine slows the tracker and makes the frame rate look worse than it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "chap4" / "track_pose.py"

# The sequences, fixed before any result was looked at (do not tune them to results).
SEQUENCES = [
    {"name": "seed1_plain_jpeg", "seed": 1, "kind": "plain", "frames": 48, "source": "frames"},
    {"name": "seed2_occluded_jpeg", "seed": 2, "kind": "occluded", "frames": 48, "source": "frames"},
    {"name": "seed3_plain_mp4", "seed": 3, "kind": "plain", "frames": 48, "source": "video", "fps": 15},
]
RENDER_SPP = 16  # scenes.render_sequence's
DEFAULT_CASES = Path(tempfile.gettempdir()) / "bench_tracking_cases"
FPS_BASE = 10

MAX_MEAN_ROTATION_DEG = 3.0
MAX_ROTATION_DEG = 10.0
MAX_TRANSLATION_SHARE = 0.03  # mean over frames of |T - T_true| / |T_true|
MIN_FPS = 10.0

# --synthetic: the tracker's default sequence, and its targets.
SYNTHETIC_MAX_MEAN_ROTATION_DEG = 2.0
SYNTHETIC_MAX_ROTATION_DEG = 5.0
SYNTHETIC_MAX_TRANSLATION_SHARE = 0.02
SYNTHETIC_MIN_FPS = 2.0


# ----------------------------------------------------------------------------------- sequence files


def pose_dict(R, T) -> dict:
    return {"R": [[float(v) for v in row] for row in np.asarray(R).reshape(3, 3)],
            "T": [float(v) for v in np.asarray(T).reshape(3)]}


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def clear_sequence_folder(folder: Path) -> None:
    """Remove what a sequence folder holds (only the names this script writes), so a re-render starts clean."""
    for name in ("truth.json", "init_pose.json", "sequence.json", "video.mp4"):
        (folder / name).unlink(missing_ok=True)
    for name in ("frames", "masks"):
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def write_sequence(folder: Path, poses, pictures, masks, info: dict, fps: float = 15.0) -> None:
    """The files of one sequence folder: frames (info["source"] "frames": encoded bytes with an extension, or
    (H, W, 3) uint8 arrays saved as PNG) or one MP4 ("video": (H, W, 3) uint8 arrays), masks, init_pose.json,
    sequence.json and, last, truth.json."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    clear_sequence_folder(folder)
    (folder / "masks").mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(folder / "masks" / f"mask_{i}.png")
    if info["source"] == "frames":
        (folder / "frames").mkdir()
        for i, picture in enumerate(pictures):
            if isinstance(picture, tuple):  # (encoded bytes, ".jpg")
                (folder / "frames" / f"frame_{i}{picture[1]}").write_bytes(picture[0])
            else:
                Image.fromarray(picture).save(folder / "frames" / f"frame_{i}.png")
        info = {**info, "frames_dir": "frames"}
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import scenes  # numpy only until something is rendered

        scenes.write_mp4(pictures, folder / "video.mp4", fps=int(fps))
        info = {**info, "video": "video.mp4", "fps": fps, "decoded": check_video(folder / "video.mp4", pictures)}
    write_json(folder / "init_pose.json", pose_dict(*poses[0]))
    write_json(folder / "sequence.json", info)
    write_json(folder / "truth.json", [pose_dict(R, T) for R, T in poses])


def check_video(path: Path, pictures) -> dict:
    """Decode the MP4 as the tracker will (imageio's ffmpeg): its frame count and size must be the sequence's."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        decoded = [np.asarray(frame)[..., :3] for frame in reader]
    if len(decoded) != len(pictures) or decoded[0].shape != np.asarray(pictures[0]).shape:
        raise RuntimeError(f"{path}: decoded {len(decoded)} frames of {decoded[0].shape}, "
                           f"wrote {len(pictures)} of {np.asarray(pictures[0]).shape}")
    diff = [np.abs(a.astype(np.int16) - np.asarray(b).astype(np.int16)).mean() for a, b in zip(decoded, pictures,
                                                                                             strict=True)]
    return {"frames": len(decoded), "size": list(decoded[0].shape[:2]),
            "mean_abs_difference_8bit": float(np.mean(diff)), "max_frame_mean_abs_difference_8bit": float(max(diff))}


def render_sequence_case(entry: dict, folder: Path) -> dict:
    """Render one of SEQUENCES with Mitsuba (benchmarks/scenes.py) into folder; returns its sequence.json."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import scenes

    started = time.perf_counter()
    specs = scenes.sample_sequence(entry["seed"], entry["frames"], entry["kind"])
    if entry["source"] == "video":
        specs = [s.replace(jpeg_quality=None) for s in specs]  # the video's own compression instead of JPEG
    pictures, masks, shares = [], [], []
    for i, spec in enumerate(specs):
        result = scenes.render_scene(spec, spp=RENDER_SPP)
        pictures.append((result["encoded"], result["ext"]) if entry["source"] == "frames" else result["rgb"])
        masks.append(result["object_mask"])
        shares.append(float(result["occluded_share"]) if spec.occluder is not None else 0.0)
        print(f"  {entry['name']}: frame {i + 1}/{len(specs)} rendered in {result['seconds']:.1f} s", flush=True)
    first = specs[0]
    info = {
        "name": entry["name"], "renderer": "mitsuba 3 scalar_rgb (benchmarks/scenes.py)", "seed": entry["seed"],
        "kind": entry["kind"], "frames": len(specs), "source": entry["source"], "fov": float(first.fov),
        "size": list(first.size), "mesh": first.mesh, "floor": first.floor_name, "spp": RENDER_SPP,
        "noise_sigma": first.noise_sigma, "jpeg_quality": first.jpeg_quality,
        "occluded_frames": list(first.meta.get("occlusion_frames", [])), "occluded_share": shares,
        "roll_deg": [s.meta["roll_deg"] for s in specs], "distance": [s.meta["distance"] for s in specs],
        "render_seconds": time.perf_counter() - started,
    }
    write_sequence(folder, [(s.R, s.T) for s in specs], pictures, masks, info, fps=entry.get("fps", 15))
    return info


def make_test_sequence(folder, frames: int = 12, size=(96, 128), *, kind: str = "plain", source: str = "frames",
                       ext: str = "jpg", fov: float = 55.0, seed: int = 0) -> Path:
    """A short cow sequence drawn by PyTorch3D (no Mitsuba), laid out as a cases folder's sequence: for tests.

    Hard Phong (the chapter's light) on a coloured backdrop, with a darkened, blurred patch painted on it under
    the cow (the cow's outline flattened onto the floor plane) as its shadow; the camera moves around and
    towards it with roll and pan (scenes.camera_pose); light noise; JPEG (ext "jpg", quality 85) or PNG.
    kind "occluded": a dark vertical bar crosses in front of the cow over the middle half of the frames.
    source "video": one MP4 (15 fps) instead of frames. size: (H, W), or an int W (H = 3/4 W). Returns folder.
    """
    import io

    import torch
    from PIL import Image
    from pytorch3d.io import load_objs_as_meshes
    from scipy.ndimage import gaussian_filter

    sys.path.insert(0, str(REPO / "chap4"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import scenes

    from posefit import data, render

    if kind not in ("plain", "occluded") or source not in ("frames", "video") or ext not in ("jpg", "png"):
        raise ValueError("kind: plain | occluded, source: frames | video, ext: jpg | png")
    folder = Path(folder)
    H, W = (int(size) * 3 // 4, int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng([seed, 31])
    mesh = load_objs_as_meshes([data.provision_all(data.COW_FILES)[0]])
    floor_y = scenes.mesh_info("cow")["floor_y"]
    flat = mesh.clone()
    verts = flat.verts_padded().clone()
    verts[..., 1] = floor_y
    flat = flat.update_padded(verts)
    renderers = render.make_renderers("cpu", (H, W), faces_per_pixel=1, fov=fov)

    n = max(int(frames), 2)
    t = np.arange(n) / max(n - 1, 1)
    azimuth = rng.uniform(0, 360) + 1.5 * np.arange(n)
    elevation = 22 + 4 * np.sin(2 * math.pi * t)
    distance = scenes.distance_for_fill("cow", 0.5, fov) * (1 - 0.2 * t)
    roll = 10 * np.sin(2 * math.pi * 0.8 * t)
    pan = [(0.15 * (2 * u - 1), 0.05 * math.sin(4 * u)) for u in t]
    poses = [scenes.camera_pose("cow", azimuth[i], elevation[i], distance[i], roll[i], pan[i], fov) for i in range(n)]

    floor = np.array(scenes.FLOOR_COLOURS["green"], dtype=np.float64) / 255
    shade = np.linspace(0.8, 1.05, H)[:, None, None]  # lighter towards the bottom (nearer floor)
    backdrop = np.clip(floor[None, None] * shade * np.ones((H, W, 1)), 0, 1)
    bar_colour = np.array(scenes.OCCLUDER_COLOURS["navy"], dtype=np.float64) / 255
    pictures, masks, shares, occluded = [], [], [], []
    for i, (R, T) in enumerate(poses):
        Rt = torch.tensor(R, dtype=torch.float32)[None]
        Tt = torch.tensor(T, dtype=torch.float32)[None]
        with torch.no_grad():
            image, cow = render.hard_render(renderers, mesh, Rt, Tt)
            _, shadow = render.hard_render(renderers, flat, Rt, Tt)
        cow = cow[0].numpy()
        shadow = gaussian_filter(shadow[0].numpy().astype(np.float64), sigma=max(H, W) / 80)
        picture = backdrop * (1 - 0.5 * np.clip(1.5 * shadow, 0, 1))[..., None]
        picture = np.where(cow[..., None], image[0, ..., :3].numpy(), picture)
        visible = cow.copy()
        if kind == "occluded" and n // 4 <= i < n - n // 4:
            cols = np.nonzero(cow.any(0))[0]
            lo, hi = (cols.min(), cols.max()) if len(cols) else (0, W - 1)
            width = max(2, int(0.25 * (hi - lo + 1)))
            u = (i - n // 4) / max(n - 2 * (n // 4) - 1, 1)
            left = int(round(lo - width + u * (hi - lo + width)))
            bar = np.zeros((H, W), dtype=bool)
            bar[:, max(left, 0):max(left + width, 0)] = True
            picture[bar] = bar_colour
            visible &= ~bar
        share = 1 - visible.sum() / max(cow.sum(), 1)
        shares.append(float(share))
        if share > 0:
            occluded.append(i)
        noisy = picture * 255 + rng.normal(0, 2.0, picture.shape)
        pixels = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        masks.append(visible)
        if source == "video":
            pictures.append(pixels)
        elif ext == "jpg":
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
            pictures.append((buf.getvalue(), ".jpg"))
        else:
            pictures.append(pixels)
    info = {"name": folder.name, "renderer": "pytorch3d hard phong (bench_tracking.make_test_sequence)",
            "seed": seed, "kind": kind, "frames": n, "source": source, "fov": float(fov), "size": [H, W],
            "mesh": "cow", "floor": "green", "noise_sigma": 2.0,
            "jpeg_quality": 85 if ext == "jpg" and source == "frames" else None,
            "occluded_frames": occluded, "occluded_share": shares}
    write_sequence(folder, poses, pictures, masks, info, fps=15)
    return folder


# ------------------------------------------------------------------------------------ the cases


def plan(cases: Path, only: list[str] | None) -> tuple[list[tuple[Path, dict | None]], str]:
    """The sequence folders to benchmark, each with its SEQUENCES entry (None: prepared elsewhere), and a note."""
    note = ""
    if (cases / "truth.json").exists():
        chosen = [(cases, None)]
    else:
        prepared = sorted(d for d in cases.iterdir() if (d / "truth.json").exists()) if cases.is_dir() else []
        fixed = {s["name"] for s in SEQUENCES}
        if prepared and not any(d.name in fixed for d in prepared):
            chosen = [(d, None) for d in prepared]
        else:
            chosen = [(cases / s["name"], s) for s in SEQUENCES]
            extra = [d.name for d in prepared if d.name not in fixed]
            if extra:
                note = f"note: ignoring prepared folders that are not among the fixed sequences: {', '.join(extra)}"
    if only:
        unknown = set(only) - {folder.name for folder, _ in chosen}
        if unknown:
            raise ValueError(f"--only {' '.join(sorted(unknown))}: no such sequence in "
                             f"{', '.join(folder.name for folder, _ in chosen)}")
        chosen = [(folder, entry) for folder, entry in chosen if folder.name in only]
    return chosen, note


def load_sequence(folder: Path) -> dict:
    info = json.loads((folder / "sequence.json").read_text())
    info["truth"] = json.loads((folder / "truth.json").read_text())
    info.setdefault("name", folder.name)
    return info


# ------------------------------------------------------------------------------------- tracking


def tracker_command(folder: Path, info: dict, num_frames: int, out: Path, extra: list[str],
                    script: Path = SCRIPT) -> list[str]:
    source = (["--video", str(folder / info.get("video", "video.mp4"))] if info["source"] == "video"
              else ["--frames", str(folder / info.get("frames_dir", "frames"))])
    return [sys.executable, str(script), *source, "--init-pose", str(folder / "init_pose.json"),
            "--truth", str(folder / "truth.json"), "--fov", f"{info['fov']:.6f}", "--num-frames", str(num_frames),
            "--output-dir", str(out), *extra]


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, result


def failure(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return f"exit {result.returncode}: {lines[-1] if lines else '(no output)'}"


def rotation_angle_deg(R1, R2) -> float:
    c = (np.trace(np.asarray(R1).T @ np.asarray(R2)) - 1) / 2
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def frame_errors(frames: list[dict], truth: list[dict]) -> list[dict]:
    """Per tracked frame with a pose: rotation error (deg), |T - T_true| / |T_true|, and its flags."""
    rows = []
    for f in frames:
        if "R" not in f or "T" not in f:
            continue
        true = truth[f["index"]]
        T, T_true = np.asarray(f["T"], dtype=np.float64), np.asarray(true["T"], dtype=np.float64)
        row = {"index": f["index"], "rotation_error_deg": rotation_angle_deg(f["R"], true["R"]),
               "translation_share": float(np.linalg.norm(T - T_true) / np.linalg.norm(T_true)),
               "lost": bool(f.get("lost", False)), "recovered": bool(f.get("recovered", False)),
               "skipped": bool(f.get("skipped", False)), "iou": f.get("iou")}
        if "rotation_error_deg" in f:  # the tracker's own figure: the same truth, the same convention?
            row["tracker_rotation_error_deg"] = f["rotation_error_deg"]
        rows.append(row)
    return rows


# tracking.json's "timing": "report" is the pictures and the record of the frames whose smoothed pose became
# known (since session 46; a checkout before it has "pictures" and "record" instead).
STAGES = ("read", "mask", "fit", "check", "search", "report", "pictures", "record")


def stage_times(frames: list[dict]) -> dict:
    """Milliseconds per frame in each stage of the tracker's loop (its "timing"), the mean over frames 2 on
    (frames 0 and 1 take the starting steps), and their total."""
    later = [f.get("timing", {}) for f in frames[2:]] or [{}]
    times = {stage: 1000 * float(np.mean([t.get(stage, 0.0) for t in later])) for stage in STAGES}
    times["total"] = sum(times.values())
    return times


def benchmark_sequence(folder: Path, info: dict, num_frames: int | None, fps_base: int, out: Path,
                       extra: list[str], repeats: int = 1, reference: Path | None = None) -> dict:
    """Two whole tracker commands (N frames, fps_base frames), `repeats` times; the errors of the N-frame run.

    With a reference (another checkout of this repository), its tracker's two commands follow ours in each
    repeat, on the same machine in the same minutes: frame rates side by side. fps is the median over the
    repeats: (N - fps_base) / (wall N - wall fps_base) per repeat.
    """
    total = len(info["truth"])
    n = min(num_frames or total, total)
    row = {"name": info["name"], "source": info["source"], "kind": info.get("kind", "?"), "frames": n,
           "fps_base": fps_base, "size": info.get("size"), "fov": info["fov"],
           "occluded_frames": info.get("occluded_frames", []), "load_before": os.getloadavg()[0]}
    trees = {"": SCRIPT} if reference is None else {"": SCRIPT, "reference_": reference / "chap4" / "track_pose.py"}
    walls = {prefix: {n: [], fps_base: []} for prefix in trees}
    for _ in range(repeats):
        for prefix, script in trees.items():
            for count in (n, fps_base):
                command = tracker_command(folder, info, count, out / f"{prefix}frames_{count}", extra, script)
                print("command:", " ".join(command), flush=True)
                wall, result = timed(command)
                print(f"  {count} frames: {wall:.1f} s, exit {result.returncode}", flush=True)
                if result.returncode != 0:
                    row["error"] = f"{prefix.rstrip('_') or 'this tree'}: {failure(result)}"
                    return row
                walls[prefix][count].append(wall)
                if count == n and not prefix:
                    row["tracker_line"] = (result.stdout.strip().splitlines() or [""])[-1]
    row["load_after"] = os.getloadavg()[0]
    errors_of = {}
    for prefix in trees:
        runs = [(n - fps_base) / (wn - wb) if wn > wb else math.nan
                for wn, wb in zip(walls[prefix][n], walls[prefix][fps_base], strict=True)]
        row[f"{prefix}wall_n"], row[f"{prefix}wall_base"] = (float(np.median(walls[prefix][n])),
                                                             float(np.median(walls[prefix][fps_base])))
        row[f"{prefix}fps_runs"] = runs
        row[f"{prefix}fps"] = float(np.median(runs))
        frames = json.loads((out / f"{prefix}frames_{n}" / "tracking.json").read_text())["frames"]
        row[f"{prefix}timing_ms"] = stage_times(frames)
        errors = errors_of[prefix] = frame_errors(frames, info["truth"])
        if errors:  # the summary of the errors (the reference's for the side-by-side table)
            rotation = [e["rotation_error_deg"] for e in errors]
            row[f"{prefix}rotation_mean"], row[f"{prefix}rotation_max"] = (float(np.mean(rotation)),
                                                                           float(np.max(rotation)))
            row[f"{prefix}translation_mean"] = float(np.mean([e["translation_share"] for e in errors]))
    errors = errors_of[""]
    row["per_frame"] = errors
    row["tracked"] = len(errors)
    row["gif"] = str(out / f"frames_{n}" / "tracking.gif")
    if errors:
        mismatch = [abs(e["tracker_rotation_error_deg"] - e["rotation_error_deg"]) for e in errors
                    if "tracker_rotation_error_deg" in e]
        if mismatch and max(mismatch) > 0.05:
            print(f"warning: {info['name']}: the tracker's rotation errors differ from this script's by up to "
                  f"{max(mismatch):.2f} deg", file=sys.stderr)
    for flag in ("lost", "recovered", "skipped"):
        row[flag] = sum(e[flag] for e in errors)
    row["met"] = targets_met(row)
    return row


def targets_met(row: dict) -> dict:
    measured = "rotation_mean" in row and row.get("tracked") == row["frames"]
    return {
        "all frames": measured,
        "rotation mean": measured and row["rotation_mean"] < MAX_MEAN_ROTATION_DEG,
        "rotation max": measured and row["rotation_max"] < MAX_ROTATION_DEG,
        "translation": measured and row["translation_mean"] < MAX_TRANSLATION_SHARE,
        "fps": bool(row.get("fps", math.nan) >= MIN_FPS),
    }


def fps_text(row: dict, prefix: str = "") -> str:
    """A row's frame rate (the median), and every run's when there were several."""
    runs = row.get(f"{prefix}fps_runs", [])
    return f"{row[prefix + 'fps']:.2f}" + (f" ({', '.join(f'{x:.2f}' for x in runs)})" if len(runs) > 1 else "")


def print_rows(rows: list[dict]) -> None:
    base = rows[0]["fps_base"] if rows else FPS_BASE
    print(f"\n| sequence | input | frames | rot. mean (deg) | rot. max (deg) | trans. mean | lost | recovered | "
          f"skipped | wall N (s) | wall {base} (s) | fps | targets |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        source = "MP4" if r["source"] == "video" else "frames"
        kind = f"{source}, {r['kind']}"
        if "error" in r:
            print(f"| {r['name']} | {kind} | {r['frames']} | | | | | | | | | | **error** |")
            continue
        if "rotation_mean" in r:
            errors = (f"{r['rotation_mean']:.2f} | {r['rotation_max']:.2f} | {100 * r['translation_mean']:.2f}% | "
                      f"{r['lost']} | {r['recovered']} | {r['skipped']}")
        else:
            errors = " | | | | | "
        missed = [name for name, ok in r["met"].items() if not ok]
        frames = f"{r['tracked']}/{r['frames']}" if r["tracked"] != r["frames"] else f"{r['frames']}"
        print(f"| {r['name']} | {kind} | {frames} | {errors} | {r['wall_n']:.1f} | {r['wall_base']:.1f} | "
              f"{fps_text(r)} | {'met' if not missed else '**missed: ' + ', '.join(missed) + '**'} |")
    compared = [r for r in rows if "reference_fps" in r]
    if compared:
        print("\n| sequence | this: rot. mean / max (deg), trans. | reference: rot. mean / max (deg), trans. | "
              "this: fps | reference: fps |")
        print("|---|---|---|---:|---:|")
        for r in compared:
            def errors(prefix, r=r):
                if f"{prefix}rotation_mean" not in r:
                    return ""
                return (f"{r[prefix + 'rotation_mean']:.2f} / {r[prefix + 'rotation_max']:.2f}, "
                        f"{100 * r[prefix + 'translation_mean']:.2f}%")

            print(f"| {r['name']} | {errors('')} | {errors('reference_')} | {fps_text(r)} | "
                  f"{fps_text(r, 'reference_')} |")
        print("(each repeat: this tree's two commands, then the reference's; fps: the median over the repeats)")
    timed_rows = [r for r in rows if "timing_ms" in r]
    if timed_rows:
        print("\nwhere a frame's time goes (ms, mean over frames 2 on, the last N-frame run"
              + ("; this / reference" if compared else "") + "):\n")
        print("| stage | " + " | ".join(r["name"] for r in timed_rows) + " |")
        print("|---|" + "---:|" * len(timed_rows))
        for stage in (*STAGES, "total"):
            cells = [f"{r['timing_ms'][stage]:.1f}" + (f" / {r['reference_timing_ms'][stage]:.1f}"
                                                      if "reference_timing_ms" in r else "") for r in timed_rows]
            print(f"| {stage} | " + " | ".join(cells) + " |")
    print(f"\ntargets on every sequence: rotation mean < {MAX_MEAN_ROTATION_DEG:g} deg, max < {MAX_ROTATION_DEG:g} "
          f"deg, translation (mean |T - T_true| / |T_true|) < {100 * MAX_TRANSLATION_SHARE:g}%, "
          f">= {MIN_FPS:g} fps = (N - {base}) / (wall N - wall {base}), whole commands")
    for r in rows:
        if "error" in r:
            print(f"{r['name']}: the tracker failed: {r['error']}")
        elif r.get("tracker_line"):
            print(f"{r['name']}: load average {r['load_before']:.2f} before, {r['load_after']:.2f} after; "
                  f"tracker: {r['tracker_line']}")


def save_sequence_plot(rows: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.get("per_frame")]
    if not shown:
        return False
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 2.4 * len(shown) + 0.6), dpi=100, squeeze=False)
    for (left, right), r in zip(axes, shown, strict=True):
        index = [e["index"] for e in r["per_frame"]]
        rotation = [e["rotation_error_deg"] for e in r["per_frame"]]
        share = [100 * e["translation_share"] for e in r["per_frame"]]
        for ax in (left, right):
            if r["occluded_frames"]:
                ax.axvspan(min(r["occluded_frames"]) - 0.5, max(r["occluded_frames"]) + 0.5, color="gray",
                           alpha=0.15, lw=0, label="occluded")
            for e in r["per_frame"]:
                if e["recovered"]:
                    ax.axvline(e["index"], color="tab:orange", alpha=0.5, lw=2)
                if e["lost"]:
                    ax.axvline(e["index"], color="tab:red", alpha=0.5, lw=2, ls=":")
            ax.set_xlim(-0.5, r["frames"] - 0.5)
        left.plot(index, rotation, marker=".", lw=1.2, label="rotation error")
        left.axhline(MAX_ROTATION_DEG, color="tab:red", ls="--", lw=1, label=f"max allowed ({MAX_ROTATION_DEG:g})")
        left.axhline(MAX_MEAN_ROTATION_DEG, color="gray", ls=":", lw=1,
                     label=f"mean allowed ({MAX_MEAN_ROTATION_DEG:g})")
        left.set_ylim(0, 1.3 * max(MAX_ROTATION_DEG, *rotation))
        left.set_ylabel("degrees")
        left.set_title(f"{r['name']}: rotation (mean {r['rotation_mean']:.2f}, max {r['rotation_max']:.2f}), "
                       f"{r['fps']:.1f} fps", fontsize=9)
        right.plot(index, share, marker=".", lw=1.2, color="tab:green", label="translation error")
        right.axhline(100 * MAX_TRANSLATION_SHARE, color="gray", ls=":", lw=1,
                      label=f"mean allowed ({100 * MAX_TRANSLATION_SHARE:g}%)")
        right.set_ylim(0, 1.3 * max(100 * MAX_TRANSLATION_SHARE, *share))
        right.set_ylabel("% of distance")
        right.set_title(f"translation (mean {100 * r['translation_mean']:.2f}%); orange: recovered, red: lost",
                        fontsize=9)
        left.legend(fontsize=7, loc="upper left", ncol=2)
        right.legend(fontsize=7, loc="upper left", ncol=2)
    axes[-1][0].set_xlabel("frame")
    axes[-1][1].set_xlabel("frame")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def run_sequences(args) -> int:
    cases = args.cases
    try:
        chosen, note = plan(cases, args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note)
    for folder, entry in chosen:
        if entry is not None and not (folder / "truth.json").exists():
            print(f"rendering {entry['name']} into {folder} (Mitsuba, once)", flush=True)
            try:
                render_sequence_case(entry, folder)
            except ImportError as exc:
                print(f"error: rendering needs Mitsuba (pip install mitsuba imageio-ffmpeg): {exc}", file=sys.stderr)
                return 2
    if args.render_only:
        print(f"cases in {cases}")
        return 0
    infos = [(folder, load_sequence(folder)) for folder, _ in chosen]
    base = args.fps_base
    for _, info in infos:
        n = min(args.num_frames or len(info["truth"]), len(info["truth"]))
        if n <= base:
            print(f"error: {info['name']}: {n} frames to track, not more than --fps-base {base}", file=sys.stderr)
            return 2

    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    # One untimed start first, so that no timed command pays for reading torch and PyTorch3D from a cold disk.
    subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as scratch:
        runs = args.keep if args.keep is not None else Path(scratch)
        for folder, info in infos:
            row = benchmark_sequence(folder, info, args.num_frames, base, runs / info["name"], args.extra,
                                     repeats=args.repeats, reference=args.reference)
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
        print_rows(rows)
        if save_sequence_plot(rows, args.plot):
            print(f"\nplot: {args.plot}")
        occluded = [r for r in rows if r["kind"] == "occluded" and "gif" in r]
        if occluded and Path(occluded[0]["gif"]).exists():
            args.gif.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(occluded[0]["gif"], args.gif)
            print(f"GIF of {occluded[0]['name']}'s overlays: {args.gif}")
        else:
            print("GIF: none (no occluded sequence tracked, or the tracker wrote no tracking.gif)")
    if any("error" in r for r in rows):
        return 2
    return 0 if all(all(r["met"].values()) for r in rows) else 1


# ---------------------------------------------------------------------- --synthetic: the default sequence


def run_tracker(output_dir: Path, extra: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), *extra]
    print("command:", " ".join(command), flush=True)
    return timed(command)


def synthetic_figures(frames: list[dict], wall: float) -> list[tuple[str, float, str, bool]]:
    """(measure, value, target, met) rows of the --synthetic table."""
    n = len(frames)
    rotation = [f["rotation_error_deg"] for f in frames]
    translation = sum(f["translation_error"] for f in frames) / n
    share = sum(f["translation_error"] / f["distance"] for f in frames) / n
    fps = n / wall
    return [
        ("frames", n, "", True),
        ("wall time of the command, s", wall, "", True),
        ("frames per second (wall)", fps, f">= {SYNTHETIC_MIN_FPS:g}", fps >= SYNTHETIC_MIN_FPS),
        ("mean rotation error, deg", sum(rotation) / n, f"< {SYNTHETIC_MAX_MEAN_ROTATION_DEG:g}",
         sum(rotation) / n < SYNTHETIC_MAX_MEAN_ROTATION_DEG),
        ("max rotation error, deg", max(rotation), f"<= {SYNTHETIC_MAX_ROTATION_DEG:g}",
         max(rotation) <= SYNTHETIC_MAX_ROTATION_DEG),
        ("mean translation error", translation, "", True),
        ("mean translation error, % of distance", 100 * share, f"< {100 * SYNTHETIC_MAX_TRANSLATION_SHARE:g}",
         share < SYNTHETIC_MAX_TRANSLATION_SHARE),
        ("mean IoU", sum(f["iou"] for f in frames) / n, "", True),
        ("frames searched again", sum(f["recovered"] for f in frames), "", True),
        ("tracker seconds per frame (mean)", sum(f["seconds"] for f in frames) / n, "", True),
    ]


def print_table(rows) -> None:
    width = max(len(name) for name, *_ in rows)
    print(f"{'measure':<{width}}  {'value':>10}  {'target':>8}  result")
    for name, value, target, met in rows:
        shown = f"{value:10d}" if isinstance(value, int) else f"{value:10.3f}"
        print(f"{name:<{width}}  {shown}  {target:>8}  {('ok' if met else 'MISSED') if target else ''}")


def save_synthetic_plot(frames: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    max_rot, mean_rot = SYNTHETIC_MAX_ROTATION_DEG, SYNTHETIC_MAX_MEAN_ROTATION_DEG
    max_share = SYNTHETIC_MAX_TRANSLATION_SHARE
    index = [f["index"] for f in frames]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True)
    top.plot(index, [f["rotation_error_deg"] for f in frames], marker=".", lw=1.2, label="rotation error")
    top.axhline(max_rot, color="tab:red", ls="--", lw=1, label=f"max allowed ({max_rot:g})")
    top.axhline(mean_rot, color="gray", ls=":", lw=1, label=f"mean allowed ({mean_rot:g})")
    searched = [f["index"] for f in frames if f["recovered"]]
    for i in searched:
        top.axvline(i, color="tab:orange", alpha=0.4, lw=3)
    top.set_ylabel("degrees")
    top.set_ylim(0, 1.4 * max(max_rot, *(f["rotation_error_deg"] for f in frames)))
    top.legend(fontsize=8, loc="upper center", ncol=3)
    bottom.plot(index, [100 * f["translation_error"] / f["distance"] for f in frames], marker=".", lw=1.2,
                color="tab:green", label="translation error")
    bottom.axhline(100 * max_share, color="gray", ls=":", lw=1, label=f"mean allowed ({100 * max_share:g}%)")
    bottom.set_ylabel("% of distance")
    bottom.set_xlabel("frame" + (" (orange: searched again)" if searched else ""))
    bottom.set_ylim(0, 1.4 * max(100 * max_share, *(100 * f["translation_error"] / f["distance"] for f in frames)))
    bottom.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_synthetic(args) -> int:
    """The tracker's default synthesised sequence, one command, frames / wall time (the benchmark before this)."""
    print(f"machine: {os.cpu_count()} CPU cores, load average before {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as scratch:
        output_dir = args.keep if args.keep is not None else Path(scratch)
        wall, result = run_tracker(output_dir, args.extra)
        load_after = os.getloadavg()[0]
        if result.returncode != 0:
            print(result.stdout + result.stderr[-2000:], file=sys.stderr)
            print(f"error: the tracker exited with status {result.returncode}", file=sys.stderr)
            return 2
        record = json.loads((output_dir / "tracking.json").read_text())
    frames = record["frames"]
    if not frames or "rotation_error_deg" not in frames[0]:
        print("error: no ground truth in tracking.json (benchmark the synthesised sequence)", file=sys.stderr)
        return 2
    print("tracker:", result.stdout.strip().splitlines()[-1])
    print(f"load average after: {load_after:.2f} (this run's own load included)\n")
    rows = synthetic_figures(frames, wall)
    print_table(rows)
    settings = record["settings"]
    title = (f"{len(frames)} frames at {settings['image_size'][1]}x{settings['image_size'][0]} px, "
             f"{settings['iterations']} iterations/frame, {len(frames) / wall:.2f} fps (wall)")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    save_synthetic_plot(frames, args.plot, title)
    print(f"\nplot: {args.plot}")
    return 0 if all(met for *_, met in rows) else 1


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--synthetic", action="store_true",
        help="benchmark the tracker's default synthesised sequence instead (one command, frames / wall time; "
             "targets 2 / 5 degrees, 2%%, 2 fps)")
    add("--cases", type=Path, default=DEFAULT_CASES, metavar="DIR",
        help=f"the sequences' folder, rendered into when missing (default {DEFAULT_CASES}); or prepared "
             "sequence folders, or one")
    add("--only", nargs="+", metavar="NAME", help="benchmark only these sequences (folder names)")
    add("--render-only", action="store_true", help="render the missing sequences and stop")
    add("--num-frames", type=int, default=None, metavar="N",
        help="frames to track per sequence (default: all of each)")
    add("--fps-base", type=int, default=FPS_BASE, metavar="M",
        help=f"the shorter command's --num-frames: fps = (N - M) / (wall N - wall M) (default {FPS_BASE})")
    add("--plot", "--out", dest="plot", type=Path, default=REPO / "benchmarks" / "tracking_errors.png",
        help="where the plot of errors per frame goes (default benchmarks/tracking_errors.png)")
    add("--gif", type=Path, default=REPO / "benchmarks" / "tracking_occluded.gif",
        help="where the occluded sequence's tracking.gif is copied (default benchmarks/tracking_occluded.gif)")
    add("--repeats", type=int, default=1, metavar="K",
        help="time each pair of commands K times; fps is the median (default 1)")
    add("--reference", type=Path, default=None, metavar="REPO",
        help="another checkout of this repository (e.g. a git worktree of an earlier commit): its tracker's "
             "commands run in turn with ours, and the table shows both")
    add("--keep", type=Path, default=None, metavar="DIR",
        help="keep the tracker's outputs in DIR (<sequence>/frames_<N>/; default: a temporary folder, deleted)")
    add("--json", type=Path, default=None, help="write the rows (per-frame errors included) here")
    add("extra", nargs="*", help="arguments for track_pose.py, after --")
    args = parser.parse_args()
    if args.synthetic:
        return run_synthetic(args)
    if args.fps_base < 1 or (args.num_frames is not None and args.num_frames <= args.fps_base):
        parser.error("--num-frames must be more than --fps-base, and --fps-base at least 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.reference is not None and not (args.reference / "chap4" / "track_pose.py").is_file():
        parser.error(f"--reference {args.reference}: no chap4/track_pose.py there")
    return run_sequences(args)


if __name__ == "__main__":
    sys.exit(main())
