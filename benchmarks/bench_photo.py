"""Full 6-DoF pose from one photograph: photo-like stand-ins rendered by Mitsuba 3, fitted as the README says.

    python benchmarks/bench_photo.py --seed 8                    # render 24 cases, fit each, print the table
    python benchmarks/bench_photo.py --seed 0 --render-only --cases /tmp/photos0   # only render (Mitsuba)
    python benchmarks/bench_photo.py --cases /tmp/photos0 --only 3 7               # fit cases already rendered

The cases come from benchmarks/scenes.py (its PHOTO_RANGES, fixed before any
tuning): the teapot and the cow on floors of several colours (grey among
them) with soft shadows, an environment light plus a sphere light at random,
the camera anywhere above the floor with roll in +-40 degrees, the object
off-centre by at least 10% of the shorter side, a field of view of 40-65
degrees, 240x180 to 256x192 pixels, sensor noise and JPEG for most, about one
in six an RGBA cut-out, up to a quarter with an object in front hiding up to
a quarter of the silhouette. Mitsuba (`pip install mitsuba`, variant
scalar_rgb) is needed to render, not to fit; it is not a dependency of the
project. Tuning used seeds 0 and 1 (seed 1, a report once, was looked at to
design the twin step and the mask's edge rules), then 4 and 5 (reports of
earlier rounds), 6 (whose failures showed the shadow rule) and 7 (a report in
session 14, whose photos with something in front showed the search for it),
8 and 9 (reports of sessions 16 and 17, whose white teapots on grey showed
the floor readings and the outline reading), 10 (session 18's report, whose
teapot twins and cows behind a bar showed the polish's choice among the
finalists and the occluder's rim; with 7-9 to check it), 11 (session 19's
report, whose cows behind a red post showed the candidates' growth into the
post's shaded face; checked on the occluded photos of 7-11), 12 (session 20's
report, whose white teapot on wood-brown showed the readings' trial; checked
on the photos of 7-12 with several readings), 13 and 14 (session 21's
reports, whose teapots a few degrees off showed the loop's mask redrawn around
one pose holding them there; checked on the failures of 10, 11, 13 and 14 and
the successes of 13, 14 and part of 10); seed 15, fresh in session 22 (its
failures looked into in session 23, with bench_masks.py: a tuning seed now);
seed 16, fresh in session 24 (its two failures looked at then); seed 17,
fresh in session 25, whose photos with something in front showed the trial
of the grid's near misses (checked on the chosen readings of seeds 13-17);
seed 18, fresh in session 25; seed 19, fresh in session 26 (its failures
looked at after); seeds 20 and 21, fresh in sessions 29 and 32 (21 chose
session 34's local gain in the polish); seed 22, fresh in session 34 (with
21, its photos with something in front chose session 35's joined faces and
the hidden part's centroid); seed 23, fresh in session 35 (its failures
looked at in session 36); seed 24, fresh in session 36 (its cows behind a
post and a box chose session 37's larger share for something in front;
checked on 23); the masks of seeds 22-27's RGB photos (reports of sessions
34-38) chose session 39's grey-floor rules in posefit/masks.py (checked on
seed 27's fits); the failures of seeds 25-28 chose session 40's second polish
of the answer (checked on the successes of 26-28); case 23 of seed 30 chose
session 42's colour starts (checked on the cows of seeds 29 and 30 and the
cow failures of 26-29); the teapot failures of seeds 31 and 32 chose
session 45's turns of the answer (checked on the teapot photos of seeds
29-32). Seeds 34-62, 65 and 66 were the fresh reports of sessions 45-64, each looked
at after it was fitted, and the failures and photos of several chose later
changes (benchmarks/RESULTS.md says which, round by round; seeds 52-59's
photos with a piece taken for something in front checked session 62's;
seed 61's two failures chose session 63's, checked on seeds 52-61;
seeds 65 and 66 were session 64's, after its change, checked on seeds
56-62; seed 67 was session 65's first, before its change, and 68 its
report, after it; 69, 70 and 71 session 66's, before its change, 71's
failure choosing it, and 72 its report, after it; 73 session 67's first,
before its changes, whose failure chose the first, 74 after it, whose
failure chose the second, and 75 and 76 its reports, after both; 76's
failures chose session 68's, and 77-80 were its reports, after it;
78's and 80's failures chose session 69's, and 81-84 were its reports,
after it; 85-87 were session 70's first, before its change, whose
failures with 81-84's chose it, and 88-90 its reports, after it; 91 was
session 71's first, before its change, which the failures of 78-90 chose,
and 92-94 its reports, after it; 95 was session 72's first, before its
changes, whose failure chose the first, and 96 its report; 92's chose the
second, and 97 was its report; 98 was session 73's first, before its
change, whose failure chose it, and 99 and 100 its reports); the
README reports the latest. The next fresh seed is 101 (63
and 64 drew the
--smaller probe's scenes). Seed
40 with --teapot-colours is a probe outside the fixed ranges (session 26),
not tuned on; seed 67 with --teapot-colours, a probe too, chose session
65's two pieces in front together (its case 16); seed 63 with --smaller, a
probe too, chose session 61's larger frames for a small object (its
teapots), and seed 64 with --smaller was fitted after them.

Each case is fitted by the command a user runs (a fresh process; its wall
time, start-up included, is what counts):

    python chap4/diff_render.py|diff_render_texture.py --target-image PHOTO --fov FOV --pose 6dof
        --restarts 8 --loss-threshold 0 --device cpu --save-every 0 --output-dir OUT

Success: rotation error (geodesic between the fitted and true R) <= 5 degrees
and translation error |T - T_true| / |T_true| <= 5%; a teapot may instead
count when PyTorch3D's hard silhouettes at the fitted and at the true pose
(the photo's size and fov) have IoU >= 0.95 (its symmetry). Target: at least
23 of 24, every command at most 60 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "chap4"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from posefit import data, pose, render  # noqa: E402

SCRIPTS = {"teapot": "diff_render.py", "cow": "diff_render_texture.py"}
ROTATION_SUCCESS_DEG = 5.0
TRANSLATION_SUCCESS = 0.05
TEAPOT_IOU_SUCCESS = 0.95
SECONDS_TARGET = 60.0
SUCCESS_TARGET = 23  # of 24


def render_cases(seed: int, count: int, folder: Path, teapot_colours: bool = False,
                 floor_textures: bool = False, distractors: bool = False, smaller: bool = False) -> list[dict]:
    """Render the photo stand-ins into folder (case_NN.jpg/png) and write folder/cases.json with the truth.
    teapot_colours: the teapots painted in other colours (scenes.coloured_teapots), their names after the floor's;
    floor_textures: the floors given a pattern in turn (scenes.textured_floors), its name after the floor's;
    distractors: something else on the floor beside the object (scenes.with_distractors), named after the floor;
    smaller: the camera moved back, the object smaller in the photo (scenes.smaller_objects)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import scenes  # benchmark-only: needs Mitsuba

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    specs = scenes.sample_photo_cases(seed, count)
    if distractors:
        specs = scenes.with_distractors(specs, seed)
    if floor_textures:
        specs = scenes.textured_floors(specs)
    if smaller:
        specs = scenes.smaller_objects(specs, seed)
    painted = scenes.coloured_teapots(specs) if teapot_colours else [(spec, None) for spec in specs]
    for i, (spec, colour) in enumerate(painted):
        result = scenes.render_scene(spec)
        path = scenes.save(result, folder / f"case_{i:02d}")
        Image.fromarray(result["object_mask"].astype(np.uint8) * 255).save(folder / f"case_{i:02d}_truth_mask.png")
        cases.append({"case": i, "file": path.name, "mesh": spec.mesh, "R": np.asarray(spec.R).tolist(),
                      "T": np.asarray(spec.T).tolist(), "fov": float(spec.fov), "size": list(spec.size),
                      "floor": spec.floor_name + (f" {spec.floor_texture}" if spec.floor_texture else "")
                      + (f"/{colour} teapot" if colour else "")
                      + (f" + {spec.distractor.name} {spec.distractor.kind}" if spec.distractor else ""),
                      "cutout": bool(spec.cutout), "jpeg": spec.jpeg_quality,
                      "occluded_share": float(result["occluded_share"]) if spec.occluder is not None else 0.0,
                      "roll_deg": float(spec.meta.get("roll_deg", 0.0))})
        print(f"rendered case {i:2d}: {spec.mesh} on {spec.floor_name}, {path.name}, "
              f"{result['seconds']:.1f} s", flush=True)
        (folder / "cases.json").write_text(json.dumps({"seed": seed, "cases": cases}, indent=1))
    return cases


def hard_silhouette(mesh, R, T, fov, size) -> torch.Tensor:
    """PyTorch3D's hard silhouette (one face per pixel, no blur) at this pose, size and fov."""
    renderers = render.make_renderers("cpu", tuple(size), fov=fov)
    with torch.no_grad():
        fragments = renderers.phong.rasterizer(mesh, R=torch.as_tensor(R, dtype=torch.float32)[None],
                                               T=torch.as_tensor(T, dtype=torch.float32)[None])
    return fragments.pix_to_face[0, ..., 0] >= 0


@functools.cache  # once per mesh: every case's errors and the figure's rows use it
def load_mesh(name: str):
    from pytorch3d.io import load_objs_as_meshes

    files = data.provision_all(data.TEAPOT_FILES if name == "teapot" else data.COW_FILES)
    return load_objs_as_meshes([files[0]])


def fit_case(case: dict, folder: Path, out: Path, extra: list[str]) -> dict:
    """Run the README's command on one case; its errors against the truth."""
    command = [sys.executable, str(REPO / "chap4" / SCRIPTS[case["mesh"]]), "--target-image",
               str(folder / case["file"]), "--fov", f"{case['fov']:.6f}", "--pose", "6dof", "--restarts", "8",
               "--loss-threshold", "0", "--device", "cpu", "--save-every", "0", "--output-dir", str(out), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {**case, "seconds": seconds, "failed": (result.stderr or result.stdout).strip().splitlines()[-1:]}
    summary = json.loads((out / "summary.json").read_text())
    R, T = torch.tensor(summary["R"]), torch.tensor(summary["T"])
    R_true, T_true = torch.tensor(case["R"]), torch.tensor(case["T"])
    rotation = pose.rotation_error_deg(R, R_true)
    translation = float((T - T_true).norm() / T_true.norm())
    mesh = load_mesh(case["mesh"])
    iou = pose.silhouette_iou(hard_silhouette(mesh, R, T, case["fov"], case["size"]),
                              hard_silhouette(mesh, R_true, T_true, case["fov"], case["size"]))
    success = (rotation <= ROTATION_SUCCESS_DEG and translation <= TRANSLATION_SUCCESS) or (
        case["mesh"] == "teapot" and iou >= TEAPOT_IOU_SUCCESS)
    # The mask the fit started from (target_mask.png) against the true one: how well the photo was read.
    used = np.asarray(Image.open(out / "target_mask.png").convert("L")) > 127
    truth = np.asarray(Image.open(folder / f"case_{case['case']:02d}_truth_mask.png").convert("L")) > 127
    first_mask = pose.silhouette_iou(torch.from_numpy(used), torch.from_numpy(truth))
    return {**case, "seconds": seconds, "rotation_error_deg": rotation, "translation_error": translation,
            "silhouette_iou_true": iou, "mask_iou": summary["silhouette_iou"], "first_mask_iou": first_mask,
            "ambiguous": summary["ambiguous"], "success": success}


def print_table(rows: list[dict]) -> None:
    print("\n| case | mesh | floor | kind | occluded | rot. err. (deg) | trans. err. | IoU vs truth | s | success |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|:-:|")
    for r in rows:
        kind = "RGBA cut-out" if r["cutout"] else (f"JPEG q{r['jpeg']}" if r["jpeg"] else "PNG")
        occluded = f"{100 * r['occluded_share']:.0f}%" if r["occluded_share"] else ""
        if "failed" in r:
            print(f"| {r['case']} | {r['mesh']} | {r['floor']} | {kind} | {occluded} | | | | {r['seconds']:.1f} | "
                  f"**error** |")
            continue
        mark = "yes" if r["success"] else "**no**"
        print(f"| {r['case']} | {r['mesh']} | {r['floor']} | {kind} | {occluded} | {r['rotation_error_deg']:.1f} | "
              f"{100 * r['translation_error']:.1f}% | {r['silhouette_iou_true']:.3f} | {r['seconds']:.1f} | {mark} |")
    wins = sum(r.get("success", False) for r in rows)
    slowest = max(r["seconds"] for r in rows)
    print(f"\n{wins} of {len(rows)} succeed; whole command: mean {sum(r['seconds'] for r in rows) / len(rows):.1f} s, "
          f"max {slowest:.1f} s")
    masks = [r["first_mask_iou"] for r in rows if "first_mask_iou" in r and not r["cutout"]]
    if masks:
        print(f"the first mask's IoU with the true one, RGB photos: mean {sum(masks) / len(masks):.3f}")


def outline_over(photo: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """The photo (H, W, 3 uint8) with the silhouette's outline drawn in red, two pixels wide."""
    from scipy import ndimage

    edge = silhouette & ~ndimage.binary_erosion(silhouette, iterations=2)
    out = photo.copy()
    out[edge] = (255, 0, 0)
    return out


def save_figure(rows: list[dict], folder: Path, fits: Path, path: Path) -> None:
    """One row per fitted case: the photo, the mask the fit used (target_mask.png), the true mask, the fitted
    pose's outline (PyTorch3D's hard silhouette at the photo's size and fov) over the photo."""
    pictures = []
    for row in rows:
        if "failed" in row:
            continue
        with Image.open(folder / row["file"]) as image:  # a cut-out shown on white
            photo = np.asarray(Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
                               .convert("RGB"))
        used = np.asarray(Image.open(fits / f"fit_{row['case']:02d}" / "target_mask.png").convert("RGB"))
        truth = np.asarray(Image.open(folder / f"case_{row['case']:02d}_truth_mask.png").convert("RGB"))
        summary = json.loads((fits / f"fit_{row['case']:02d}" / "summary.json").read_text())
        fitted = hard_silhouette(load_mesh(row["mesh"]), summary["R"], summary["T"], row["fov"], row["size"]).numpy()
        pictures.append(np.concatenate([photo, used, truth, outline_over(photo, fitted)], axis=1))
    width = max(p.shape[1] for p in pictures)
    Image.fromarray(np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in pictures])).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=8,
                        help="the cases' seed (default 8; the README reports the latest fresh seed; see this "
                             "file's docstring)")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--cases", type=Path, help="folder of rendered cases (made if missing; default: temporary)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--only", type=int, nargs="+", help="fit only these case numbers")
    parser.add_argument("--keep", type=Path, help="keep each fit's output folder here")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--figure", type=Path, help="draw the fitted cases here, a row each: the photo, the mask "
                        "used, the true mask, the fitted outline (with --only: the README's picture)")
    parser.add_argument("--teapot-colours", action="store_true",
                        help="a probe outside the fixed ranges: the teapots painted in other colours in turn "
                             "(red, blue, black, green, yellow, brown, pink, teal), all else as the seed draws it")
    parser.add_argument("--floor-textures", action="store_true",
                        help="a probe outside the fixed ranges: the floors given a pattern in turn (planks, tiles, "
                             "speckle) on their colours, all else as the seed draws it")
    parser.add_argument("--distractors", action="store_true",
                        help="a probe outside the fixed ranges: something else (a box or a post-like cylinder) on "
                             "the floor beside each object, clear of it in the image, all else as the seed draws it")
    parser.add_argument("--smaller", action="store_true",
                        help="a probe outside the fixed ranges: the camera moved back along the ray through the "
                             "object, whose bounding sphere spans 0.25-0.40 of the shorter side (the fixed ranges: "
                             "0.40-0.70), all else as the seed draws it")
    parser.add_argument("extra", nargs="*", help="more flags for the scripts, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_photo_") as tmp:
        folder = args.cases or Path(tmp) / "cases"
        if (folder / "cases.json").exists():
            cases = json.loads((folder / "cases.json").read_text())["cases"]
        else:
            cases = render_cases(args.seed, args.count, folder, args.teapot_colours, args.floor_textures,
                                 args.distractors, args.smaller)
        if args.render_only:
            return 0
        rows = []
        for case in cases:
            if args.only is not None and case["case"] not in args.only:
                continue
            out = (args.keep or Path(tmp)) / f"fit_{case['case']:02d}"
            row = fit_case(case, folder, out, args.extra)
            rows.append(row)
            if "failed" in row:
                print(f"case {row['case']:2d} {row['mesh']}: command failed: {row['failed']}", flush=True)
            else:
                print(f"case {row['case']:2d} {row['mesh']:6s}: rotation {row['rotation_error_deg']:6.1f} deg, "
                      f"translation {100 * row['translation_error']:5.1f}%, IoU vs truth "
                      f"{row['silhouette_iou_true']:.3f}, {row['seconds']:.1f} s, "
                      f"{'success' if row['success'] else 'FAIL'}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
        if args.figure:
            save_figure(rows, folder, args.keep or Path(tmp), args.figure)
    print_table(rows)
    wins = sum(r.get("success", False) for r in rows)
    met = len(rows) == 24 and wins >= SUCCESS_TARGET and max(r["seconds"] for r in rows) <= SECONDS_TARGET
    if len(rows) == 24:
        print(f"target (>= {SUCCESS_TARGET}/24, each <= {SECONDS_TARGET:.0f} s): {'met' if met else 'NOT met'}")
    return 0 if met or len(rows) != 24 else 1


if __name__ == "__main__":
    sys.exit(main())
