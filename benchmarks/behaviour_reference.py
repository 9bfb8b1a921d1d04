"""Behaviour reference: record what the chapter's commands compute, and check that a change kept it.

    python benchmarks/behaviour_reference.py               # run every case, compare with the recording
    python benchmarks/behaviour_reference.py --record      # run every case, (re)write the recording
    python benchmarks/behaviour_reference.py --cases teapot_default multistart_cow_0 --jobs 1

Every case runs a script as a user would (a child process, the command line,
results in a temporary folder) and keeps what the fit computed, not how long
it took. The recording, benchmarks/behaviour_reference.json, was first made
at the commit before the pose library replaced posefit.py, so the comparison
says whether a refactoring changed behaviour (a case re-recorded since,
because its behaviour was changed on purpose, is named with the reason in
the recording's "rerecorded"):

- default runs of both scripts (book settings): iterations, stop reason,
  final loss, final camera;
- --restarts 8 at 128 px on views 0-3 of bench_multistart.py, both meshes:
  the best hypothesis, its camera and loss, every hypothesis's pruned_at,
  and ambiguous;
- a file target of each kind (a 1-channel mask, RGBA, RGB on a coloured
  backdrop), written by this script from fixed poses with PyTorch3D's stock
  renderer, fitted by each script;
- the default tracking run: each frame's fit (R, T as fitted, before they
  are smoothed for the report: fit_R, fit_T) on every frame.

The comparison: the same iterations, stop reasons, best hypotheses,
pruned_at and ambiguous; cameras within 1e-5; losses within 1e-4 relative;
tracked poses within 0.01 degree and 1e-4 of the distance on every frame.
Exit status 0 when every case agrees, 1 otherwise.

The numbers depend on the processor as well as on the code: the same
commit gives cameras up to 1e-3 apart and tracked poses up to 4.5 degrees
apart (the tracker amplifies the last bits) on another kind of CPU, whose
vector units round differently. So a recording belongs to a machine kind
(the processor's model name): the first one (top level, made on a kind
it does not name) and others under "by_machine", each made with `--record` on that
kind at a commit whose first recording it had matched, or whose changes
since were on purpose (its "note" says). A run compares with its own
kind's recording if there is one, else with the first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "behaviour_reference.json"

CAMERA_TOLERANCE = 1e-5
LOSS_RELATIVE_TOLERANCE = 1e-4
TRACK_DEGREES = 0.01
TRACK_DISTANCE_SHARE = 1e-4

# Fixed poses of the file targets: (distance, elevation, azimuth), image (H, W), and the fit's start.
FILE_VIEW = (3.0, 30.0, 40.0)
FILE_SIZE = (96, 128)
FILE_START = (3.4, 1.3, 2.6)
FILE_BACKDROP = (30, 90, 200)


def machine_kind() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what platform says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def multistart_views(count: int = 4, seed: int = 0) -> list[tuple[float, float, float]]:
    """Views 0..count-1 of benchmarks/bench_multistart.py (its draw_views, same seed)."""
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(2.5, 4.0)), float(rng.uniform(-60.0, 80.0)), float(rng.uniform(-180.0, 180.0)))
            for _ in range(count)]


def write_file_targets(folder: Path, mesh_name: str) -> dict[str, Path]:
    """The fixed view as a mask (L), RGBA (alpha = coverage) and RGB on a backdrop, by stock PyTorch3D."""
    import torch
    from PIL import Image
    from pytorch3d.io import load_obj, load_objs_as_meshes
    from pytorch3d.renderer import (
        FoVPerspectiveCameras,
        HardPhongShader,
        MeshRasterizer,
        MeshRenderer,
        PointLights,
        RasterizationSettings,
        TexturesVertex,
        look_at_view_transform,
    )
    from pytorch3d.structures import Meshes

    data = REPO / "data"
    if mesh_name == "teapot":
        verts, faces, _ = load_obj(data / "teapot.obj", load_textures=False)
        mesh = Meshes([verts], [faces.verts_idx], textures=TexturesVertex(torch.ones_like(verts)[None]))
    else:
        mesh = load_objs_as_meshes([data / "cow_mesh" / "cow.obj"])
    cameras = FoVPerspectiveCameras()
    rasterizer = MeshRasterizer(cameras=cameras,
                                raster_settings=RasterizationSettings(image_size=FILE_SIZE, faces_per_pixel=1))
    renderer = MeshRenderer(rasterizer, HardPhongShader(cameras=cameras,
                                                        lights=PointLights(location=((2.0, 2.0, -2.0),))))
    R, T = look_at_view_transform(*FILE_VIEW)
    with torch.no_grad():
        image = renderer(mesh, R=R, T=T)[0]
        covered = (rasterizer(mesh, R=R, T=T).pix_to_face[0, ..., 0] >= 0).numpy()
    rgb = (image[..., :3].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    alpha = covered.astype(np.uint8) * 255
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"{mesh_name}_{kind}.png" for kind in ("mask", "rgba", "rgb")}
    Image.fromarray(alpha, "L").save(paths["mask"])
    Image.fromarray(np.dstack([rgb * covered[..., None], alpha]), "RGBA").save(paths["rgba"])
    Image.fromarray(np.where(covered[..., None], rgb, np.array(FILE_BACKDROP, np.uint8)), "RGB").save(paths["rgb"])
    return paths


SCRIPTS = {"teapot": "diff_render.py", "cow": "diff_render_texture.py"}


def run(script: str, *args, folder: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "chap4" / script), *map(str, args)],
                            capture_output=True, text=True, cwd=folder, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")


def fit_result(summary: dict) -> dict:
    """What a fit computed: its iterations, stop reason, final loss and camera, and the hypotheses."""
    out = {key: summary[key] for key in ("iterations", "stopped", "final_loss", "camera_position")}
    hypotheses = summary.get("hypotheses", [])
    if len(hypotheses) > 1:
        best = summary["best_hypothesis"]
        out.update(best_hypothesis=best, best_loss=hypotheses[best]["final_loss"],
                   best_camera=hypotheses[best]["camera_position"],
                   pruned_at=[h["pruned_at"] for h in hypotheses], ambiguous=summary["ambiguous"])
    return out


def fit_case(mesh: str, *flags) -> callable:
    def case(folder: Path) -> dict:
        out = folder / "out"
        run(SCRIPTS[mesh], "--output-dir", out, "--save-every", "0", "--device", "cpu", *flags, folder=folder)
        return fit_result(json.loads((out / "summary.json").read_text()))

    return case


def file_case(mesh: str, kind: str) -> callable:
    def case(folder: Path) -> dict:
        path = write_file_targets(folder, mesh)[kind]
        return fit_case(mesh, "--target-image", path, "--init-position", *FILE_START, "--iterations", "60",
                        "--loss-threshold", "0")(folder)

    return case


def tracking_case(folder: Path) -> dict:
    out = folder / "out"
    run("track_pose.py", "--output-dir", out, "--no-overlays", "--device", "cpu", folder=folder)
    frames = json.loads((out / "tracking.json").read_text())["frames"]
    # The fits: since session 46 the R, T reported are the fits smoothed (posefit.smoothing), the fits fit_R, fit_T.
    return {"frames": [{"R": f.get("fit_R", f["R"]), "T": f.get("fit_T", f["T"])} for f in frames]}


def cases() -> dict[str, callable]:
    table = {"teapot_default": fit_case("teapot"), "cow_default": fit_case("cow")}
    for mesh in ("teapot", "cow"):
        for view, (distance, elevation, azimuth) in enumerate(multistart_views()):
            table[f"multistart_{mesh}_{view}"] = fit_case(
                mesh, "--restarts", "8", "--image-size", "128", "--loss-threshold", "0",
                "--target-distance", repr(distance), "--target-elevation", repr(elevation),
                "--target-azimuth", repr(azimuth))
    for mesh, kinds in (("teapot", ("mask", "rgba", "rgb")), ("cow", ("rgba", "rgb"))):
        for kind in kinds:
            table[f"file_{mesh}_{kind}"] = file_case(mesh, kind)
    table["tracking_default"] = tracking_case
    return table


# --------------------------------------------------------------------------- comparison


def camera_gap(a, b) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())


def loss_gap(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def rotation_gap_deg(R1, R2) -> float:
    """The angle of R1^T R2, from its sine and cosine: arccos alone loses small angles to float32 rounding."""
    R = np.asarray(R1, float).T @ np.asarray(R2, float)
    sine = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2
    return math.degrees(math.atan2(sine, (np.trace(R) - 1) / 2))


def compare(name: str, now: dict, then: dict) -> list[str]:
    """What differs beyond the tolerances, one line each (empty: the same behaviour)."""
    problems = []
    if "frames" in then:
        if len(now["frames"]) != len(then["frames"]):
            return [f"{len(now['frames'])} frames, recorded {len(then['frames'])}"]
        for i, (a, b) in enumerate(zip(now["frames"], then["frames"], strict=True)):
            degrees = rotation_gap_deg(a["R"], b["R"])
            share = float(np.linalg.norm(np.subtract(a["T"], b["T"])) / np.linalg.norm(b["T"]))
            if degrees > TRACK_DEGREES or share > TRACK_DISTANCE_SHARE:
                problems.append(f"frame {i}: {degrees:.4f} deg, {share:.2e} of the distance from the recording")
        return problems
    for key in ("iterations", "stopped", "best_hypothesis", "pruned_at", "ambiguous"):
        if key in then and now.get(key) != then[key]:
            problems.append(f"{key} {now.get(key)!r}, recorded {then[key]!r}")
    for key in ("camera_position", "best_camera"):
        if key in then and (gap := camera_gap(now[key], then[key])) > CAMERA_TOLERANCE:
            problems.append(f"{key} {gap:.2e} from the recording")
    for key in ("final_loss", "best_loss"):
        if key in then and (gap := loss_gap(now[key], then[key])) > LOSS_RELATIVE_TOLERANCE:
            problems.append(f"{key} {now[key]:.6g}, recorded {then[key]:.6g} ({gap:.1e} relative)")
    return problems


def main() -> int:
    table = cases()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the results as the new reference")
    parser.add_argument("--cases", nargs="+", choices=list(table), default=list(table), metavar="CASE",
                        help=f"which cases (default all: {', '.join(table)})")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (each script uses one thread)")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    args = parser.parse_args()
    recorded = json.loads(args.reference.read_text()) if args.reference.exists() else {"cases": {}}
    machine = machine_kind()
    # This machine kind's own recording if it has one (or gets one now), else the first.
    mine = recorded.get("by_machine", {}).get(machine)
    if args.record and mine is None and recorded["cases"]:
        mine = recorded.setdefault("by_machine", {}).setdefault(machine, {"cases": {}})
    recording = mine if mine is not None else recorded
    print(f"machine: {machine}; recording: {'its own' if mine is not None else 'the first'}", flush=True)

    def one(name):
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            started = time.perf_counter()
            result = table[name](Path(tmp))
            return name, result, time.perf_counter() - started

    failures = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, result, seconds in pool.map(one, args.cases):
            if args.record:
                recording["cases"][name] = result
                print(f"{name}: recorded ({seconds:.0f} s)", flush=True)
                continue
            if name not in recording["cases"]:
                print(f"{name}: NOT RECORDED ({seconds:.0f} s)", flush=True)
                failures += 1
                continue
            problems = compare(name, result, recording["cases"][name])
            failures += bool(problems)
            print(f"{name}: {'DIFFERS' if problems else 'same'} ({seconds:.0f} s)", flush=True)
            for line in problems:
                print(f"    {line}")
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        recording["recorded_at_commit"] = recording.get("recorded_at_commit", commit)
        recording["cases"] = dict(sorted(recording["cases"].items()))
        args.reference.write_text(json.dumps(recorded, indent=1) + "\n")
        print(f"wrote {args.reference}")
        return 0
    print(f"{len(args.cases) - failures} of {len(args.cases)} cases behave as recorded")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
