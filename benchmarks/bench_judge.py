"""Where a photo fit went wrong after the loop: among its candidates, or in the judge that chose among them.

    python benchmarks/bench_photo.py --cases /tmp/photos47 --keep /tmp/fits47    # fits kept, one folder each
    python benchmarks/bench_judge.py --cases /tmp/photos47 --fits /tmp/fits47     # then this
    python benchmarks/bench_judge.py --cases /tmp/photos47 --fits /tmp/fits47 --only 16 --all

A polished 6-DoF fit of an RGB photo (posefit.search.Hypotheses.polish)
chooses among its polished candidates (the loop's finalists, the colour
starts, a plain mesh's turns) by their colours: a plain mesh's answer last
on one frame (posefit.frame_fit.judged_together: the colour term on the
union of the masks drawn around each candidate). This script judges the
truth's pose with them, on such a frame, and tells the failures (rotation
error over FAR_DEG) apart:

- judge: a candidate far off is judged better than the truth itself;
- choice: the truth is judged better than every candidate FAR_DEG or more
  off, and a candidate nearer than that was there, but not chosen (a
  textured mesh's answer goes by each candidate's own polish loss, not by
  the one frame);
- candidates: the truth is judged better than every candidate far off, and
  none was near it (`nearest`: the nearest candidate): the judge would have
  chosen a pose near the truth, had one been among them.

Each case takes about a second (one frame, at the polish's size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "chap4"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from posefit import frame_fit, pose  # noqa: E402

FAR_DEG = 20.0  # a candidate this far from the truth is a wrong one (and a fit this far off, a failure)


def judge_case(folder: Path, fits: Path, case: dict, mesh) -> dict | None:
    """The truth and a kept fit's polished candidates judged on one frame; None if the fit has none (a
    cut-out, a clean render) or was not kept."""
    summary_path = fits / f"fit_{case['case']:02d}" / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    hypotheses = summary.get("hypotheses") or []
    polished = [k for k, h in enumerate(hypotheses) if h.get("polish_loss") is not None]
    if not summary.get("polished") or not polished:
        return None
    pixels = np.asarray(Image.open(folder / case["file"]).convert("RGB"), dtype=np.float32) / 255
    R_true, T_true = torch.tensor(case["R"]), torch.tensor(case["T"])
    R = torch.stack([R_true] + [torch.tensor(hypotheses[k]["R"]) for k in polished])
    T = torch.stack([T_true] + [torch.tensor(hypotheses[k]["T"]) for k in polished])
    scores = frame_fit.judged_together(mesh, pixels, case["fov"], R, T)
    errors = [pose.rotation_error_deg(R[i], R_true) for i in range(1, len(R))]
    far = [scores[i + 1] for i, error in enumerate(errors) if error >= FAR_DEG]
    answer_error = pose.rotation_error_deg(torch.tensor(summary["R"]), R_true)
    return {"case": case["case"], "mesh": case["mesh"], "floor": case["floor"], "answer_deg": answer_error,
            "nearest_deg": min(errors), "truth": float(scores[0]), "best_far": float(min(far, default=np.inf))}


def main() -> int:
    from bench_photo import load_mesh

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cases", type=Path, required=True, help="a folder bench_photo.py --render-only wrote")
    parser.add_argument("--fits", type=Path, required=True, help="the folder bench_photo.py --keep wrote for it")
    parser.add_argument("--only", type=int, nargs="+", help="these cases only")
    parser.add_argument("--all", action="store_true", help="every polished fit, not only the failures")
    args = parser.parse_args()
    listing = args.cases / "cases.json"
    if not listing.is_file():
        print(f"error: {args.cases} holds no cases.json (render it with bench_photo.py --render-only --cases "
              f"{args.cases})", file=sys.stderr)
        return 2
    cases = json.loads(listing.read_text())["cases"]
    print("| case | mesh | floor | answer (deg) | nearest candidate (deg) | truth judged | best far one | failed at |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for case in cases:
        if args.only and case["case"] not in args.only:
            continue
        row = judge_case(args.cases, args.fits, case, load_mesh(case["mesh"]))  # (bench_photo caches each mesh)
        if row is None or (row["answer_deg"] < FAR_DEG and not args.all):
            continue
        where = ("" if row["answer_deg"] < FAR_DEG else "judge" if row["best_far"] < row["truth"]
                 else "choice" if row["nearest_deg"] < FAR_DEG else "candidates")
        print(f"| {row['case']} | {row['mesh']} | {row['floor']} | {row['answer_deg']:.1f} | {row['nearest_deg']:.1f} "
              f"| {row['truth']:.0f} | {row['best_far']:.0f} | {where} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
