"""How a photo is read before the fit: its mask and the piece taken for something in front, against the truth.

    python benchmarks/bench_masks.py --cases /tmp/photos0 /tmp/photos1      # folders from bench_photo.py --render-only
    python benchmarks/bench_masks.py --cases /tmp/photos15 --only 3 17 --json rows.json

A 6-DoF fit of a photo (`--pose 6dof --restarts 8`) spends about half its
time before the loop: it reads the photo's masks (each surface of the border
taken for the floor, and the mesh's outline among the photo's edges), lets
the mesh choose one (posefit.readings.choose_reading, with its short trial
fits), looks for a piece of it in front of the object (in_front_piece), and
takes the grid's best 8 poses as its starts (posefit.search.start). This
script runs exactly that, on the cases bench_photo.py renders, and scores it
against the renderer's truth (case_NN_truth_mask.png: the object's visible
pixels), without the loop:

- mask: the IoU of the chosen mask, less the piece left out, with the true
  one; best: the best IoU of any reading as it is (the choice lost about
  `best - mask` where nothing was left out);
- in front: what of the chosen mask truly is in front of the object (more
  than 2 pixels from the true mask: a post, a plank; or a shadow or a lamp's
  patch taken in) as a share of the mask; the piece left out: its share of
  that (covers) and the share of the piece that is the object (on object);
- start: the rotation error of the start nearest the truth, and of the first.

A failure of bench_photo.py whose mask is poor, or whose thing in front was
missed, or whose starts are all far, began before the loop. A case takes
10-20 s (the whole fit about 30); --jobs runs cases in parallel processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "chap4"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from posefit import initial, masks, pose, readings, search, targets  # noqa: E402

TRUTH_MARGIN = 2  # pixels: what lies this far from the true mask is not the object
POOR_MASK = 0.85  # a chosen mask below this IoU with the truth is counted as poor


def read_case(folder: Path, case: dict) -> dict:
    """The fit's start on one case (as the README's command makes it), scored against the truth."""
    from bench_photo import load_mesh

    torch.set_num_threads(1)
    mesh = load_mesh(case["mesh"])
    upright = initial.Upright.of(mesh)
    target = targets.load_target_image(folder / case["file"], fov=case["fov"], mesh=mesh, upright=upright)
    H, W = target.size
    truth = Image.open(folder / f"case_{case['case']:02d}_truth_mask.png").convert("L")
    truth = np.asarray(truth.resize((W, H), Image.BILINEAR)) > 127
    photo = None if target.photo is None else target.photo.cpu().numpy()
    found = [target.hard_mask.cpu().numpy() > 0.5]
    if photo is not None and masks.is_photo(photo):  # the readings start() chooses among
        found = readings.photo_readings(mesh, photo, case["fov"], upright=upright)[0] or found
    hypotheses = search.start("6dof", mesh, target, case["fov"], init_position=None, restarts=8, iterations=200,
                              lr=0.05, upright=upright)
    chosen = (target.hard_mask if hypotheses.mask is None else hypotheses.mask).cpu().numpy() > 0.5
    in_front = chosen & ~ndimage.binary_dilation(truth, iterations=TRUTH_MARGIN)
    piece = np.zeros_like(chosen) if hypotheses.care is None else (hypotheses.care.cpu().numpy() < 0.5) & chosen
    R, _ = hypotheses.poses.poses()
    errors = [pose.rotation_error_deg(r, torch.tensor(case["R"], dtype=R.dtype)) for r in R.detach()]
    return {**case, "readings": len(found), "mask_iou": masks.iou(chosen & ~piece, truth),
            "best_reading_iou": max(masks.iou(m, truth) for m in found),
            "in_front_share": float(in_front.sum() / max(chosen.sum(), 1)),
            "piece_share": float(piece.sum() / max(chosen.sum(), 1)),
            "piece_covers": float((piece & in_front).sum() / max(in_front.sum(), 1)),
            "piece_on_object": float((piece & truth).sum() / max(piece.sum(), 1)) if piece.any() else 0.0,
            "nearest_start_deg": float(min(errors)), "first_start_deg": float(errors[0])}


def print_table(rows: list[dict]) -> None:
    print("\n| case | mesh | floor | occluded | readings | mask IoU (less the piece) | best reading | in front | piece covers | "
          "piece on object | nearest start (deg) | first start (deg) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        occluded = f"{100 * r['occluded_share']:.0f}%" if r["occluded_share"] else ""
        piece = (f"{100 * r['piece_covers']:.0f}% | {100 * r['piece_on_object']:.0f}%" if r["piece_share"]
                 else "none | ")
        print(f"| {r['name']} | {r['mesh']} | {r['floor']} | {occluded} | {r['readings']} | {r['mask_iou']:.3f} | "
              f"{r['best_reading_iou']:.3f} | {100 * r['in_front_share']:.0f}% | {piece} | "
              f"{r['nearest_start_deg']:.1f} | {r['first_start_deg']:.1f} |")
    ious = np.array([r["mask_iou"] for r in rows])
    lost = np.array([r["best_reading_iou"] - r["mask_iou"] for r in rows])
    occluded = [r for r in rows if r["occluded_share"]]
    found = sum(r["piece_covers"] >= 0.5 for r in occluded)
    wrong = sum(r["piece_share"] > 0 and r["piece_on_object"] >= 0.5 for r in rows)
    starts = np.array([r["nearest_start_deg"] for r in rows])
    print(f"\n{len(rows)} cases: chosen mask IoU mean {ious.mean():.3f}, {int((ious < POOR_MASK).sum())} below "
          f"{POOR_MASK}; {int((lost > 0.02).sum())} chose a reading 0.02 or more below the best")
    print(f"something in front: {found} of {len(occluded)} occluded cases had half or more of it left out; "
          f"{wrong} pieces left out were mostly the object")
    print(f"nearest start: median {np.median(starts):.1f} deg, {int((starts > 20).sum())} cases over 20 deg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, nargs="+", required=True,
                        help="case folders rendered by bench_photo.py (--render-only --cases DIR)")
    parser.add_argument("--only", type=int, nargs="+", help="only these case numbers (of every folder)")
    parser.add_argument("--jobs", type=int, default=1, help="cases read in parallel (processes)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    work = []
    for folder in args.cases:
        listing = folder / "cases.json"
        if not listing.is_file():
            print(f"error: {folder} holds no cases.json (render it with bench_photo.py --render-only --cases "
                  f"{folder})", file=sys.stderr)
            return 2
        for case in json.loads(listing.read_text())["cases"]:
            if args.only is None or case["case"] in args.only:
                work.append((folder, {**case, "name": f"{folder.name}/{case['case']}"}))
    if not work:
        print("error: no case to read (--only names none of them)", file=sys.stderr)
        return 2
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(read_case, *zip(*work, strict=True)))
    else:
        rows = [read_case(folder, case) for folder, case in work]
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
