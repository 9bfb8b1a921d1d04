"""Benchmark chap4/track_pose.py on its default synthesised sequence.

Runs the tracker as a user would (a fresh `python chap4/track_pose.py`, so
start-up counts), then reads its tracking.json and prints a table against the
targets:

* mean rotation error < 2 degrees, and no frame above 5 degrees;
* mean translation error < 2% of the object's distance from the camera;
* at least 2 frames per second: frames / wall time of the whole command.

It also saves the errors per frame as a PNG (--out). Exit status 1 when a
target is missed. Arguments after `--` go to track_pose.py unchanged, e.g.

    python benchmarks/bench_tracking.py -- --iterations 8 --faces-per-pixel 10

The load average is printed before and after: other work on the machine
slows the tracker down and makes the frame rate look worse than it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "chap4" / "track_pose.py"

MAX_MEAN_ROTATION_DEG = 2.0
MAX_ROTATION_DEG = 5.0
MAX_TRANSLATION_SHARE = 0.02  # of the object's distance
MIN_FPS = 2.0


def run_tracker(output_dir: Path, extra: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), *extra]
    print("command:", " ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, result


def figures(frames: list[dict], wall: float) -> list[tuple[str, float, str, bool]]:
    """(measure, value, target, met) rows of the table."""
    n = len(frames)
    rotation = [f["rotation_error_deg"] for f in frames]
    translation = sum(f["translation_error"] for f in frames) / n
    share = sum(f["translation_error"] / f["distance"] for f in frames) / n
    fps = n / wall
    return [
        ("frames", n, "", True),
        ("wall time of the command, s", wall, "", True),
        ("frames per second (wall)", fps, f">= {MIN_FPS:g}", fps >= MIN_FPS),
        ("mean rotation error, deg", sum(rotation) / n, f"< {MAX_MEAN_ROTATION_DEG:g}",
         sum(rotation) / n < MAX_MEAN_ROTATION_DEG),
        ("max rotation error, deg", max(rotation), f"<= {MAX_ROTATION_DEG:g}", max(rotation) <= MAX_ROTATION_DEG),
        ("mean translation error", translation, "", True),
        ("mean translation error, % of distance", 100 * share, f"< {100 * MAX_TRANSLATION_SHARE:g}",
         share < MAX_TRANSLATION_SHARE),
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


def save_plot(frames: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = [f["index"] for f in frames]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True)
    top.plot(index, [f["rotation_error_deg"] for f in frames], marker=".", lw=1.2, label="rotation error")
    top.axhline(MAX_ROTATION_DEG, color="tab:red", ls="--", lw=1, label=f"max allowed ({MAX_ROTATION_DEG:g})")
    top.axhline(MAX_MEAN_ROTATION_DEG, color="gray", ls=":", lw=1, label=f"mean allowed ({MAX_MEAN_ROTATION_DEG:g})")
    searched = [f["index"] for f in frames if f["recovered"]]
    for i in searched:
        top.axvline(i, color="tab:orange", alpha=0.4, lw=3)
    top.set_ylabel("degrees")
    top.set_ylim(0, 1.4 * max(MAX_ROTATION_DEG, *(f["rotation_error_deg"] for f in frames)))
    top.legend(fontsize=8, loc="upper center", ncol=3)
    bottom.plot(index, [100 * f["translation_error"] / f["distance"] for f in frames], marker=".", lw=1.2,
                color="tab:green", label="translation error")
    bottom.axhline(100 * MAX_TRANSLATION_SHARE, color="gray", ls=":", lw=1,
                   label=f"mean allowed ({100 * MAX_TRANSLATION_SHARE:g}%)")
    bottom.set_ylabel("% of distance")
    bottom.set_xlabel("frame" + (" (orange: searched again)" if searched else ""))
    bottom.set_ylim(0, 1.4 * max(100 * MAX_TRANSLATION_SHARE, *(100 * f["translation_error"] / f["distance"]
                                                                   for f in frames)))
    bottom.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "tracking_errors.png",
                        help="where the plot of errors per frame goes (default benchmarks/tracking_errors.png)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the tracker's output in DIR (default: a temporary folder, deleted)")
    parser.add_argument("extra", nargs="*", help="arguments for track_pose.py, after --")
    args = parser.parse_args()

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
    rows = figures(frames, wall)
    print_table(rows)
    settings = record["settings"]
    title = (f"{len(frames)} frames at {settings['image_size'][1]}x{settings['image_size'][0]} px, "
             f"{settings['iterations']} iterations/frame, {len(frames) / wall:.2f} fps (wall)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_plot(frames, args.out, title)
    print(f"\nplot: {args.out}")
    return 0 if all(met for *_, met in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
