"""Stock PyTorch3D vs this project's fast CPU path, per stage, on the same inputs.

    python benchmarks/bench_cpu.py                      # both experiments, 256 px, stage table + peak RSS
    python benchmarks/bench_cpu.py --trajectory         # + stock and fast fits side by side (slow: stock!)
    python benchmarks/bench_cpu.py --malloc-ab 3        # does glibc's malloc tuning pay? (A/B, child processes)

Each stage is timed after a warm-up iteration, as the mean of --repeats
iterations, at the book's settings. "frame" is what the loop pays to save
its pictures: the book's plt.figure()/savefig per picture for stock, the
hand-off to the background FrameWriter for fast. Peak RSS is measured in a
child process per path (VmHWM of that child).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "chap4"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import diff_render  # noqa: E402
import diff_render_texture  # noqa: E402
from posefit import data, pose, render, targets  # noqa: E402
from posefit.frames import FrameWriter  # noqa: E402

BOOK_START = [3.0, 6.9, 2.5]


def book_frame(image, title, path):
    """What the book does per picture: a new figure, imshow, title, savefig."""
    plt.figure()
    plt.imshow(image)
    plt.title(title)
    plt.axis("off")
    plt.savefig(path)
    plt.close()


class Stages:
    def __init__(self):
        self.seconds = {}

    def time(self, name, fn):
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return out


def setup(experiment, kind, size):
    mesh = diff_render.load_teapot("cpu") if experiment == "teapot" else diff_render_texture.load_cow("cpu")
    textured = 50 if experiment == "cow" else None
    render.set_up_cpu(kind)  # as the scripts do: one thread and glibc keeping large blocks for fast; stock as is
    renderers = render.make_renderers("cpu", size, rasterizer=kind, textured_faces_per_pixel=textured)
    R_t, T_t, _ = pose.view_camera(3.0, 50.0, 0.0, "cpu")
    with torch.no_grad():
        target, _ = render.hard_render(renderers, mesh, R_t, T_t)
    return mesh, renderers, target[0]


def one_iteration(experiment, kind, mesh, renderers, target, stages, out_dir, writer, i):
    position = torch.tensor(BOOK_START, requires_grad=True)
    R, T = pose.look_at(position)
    mask = targets.book_mask(target)
    sil = renderers.silhouette
    fragments = stages.time("raster forward (silhouette)", lambda: sil.rasterizer(mesh, R=R, T=T))
    image = stages.time("silhouette shading", lambda: sil.shader(fragments, mesh, R=R, T=T))
    loss = ((image[..., 3] - mask) ** 2).sum()
    pictures = [image[0, ..., 3]]
    if experiment == "cow":
        tex = renderers.textured
        frag_t = stages.time("raster forward (textured)", lambda: tex.rasterizer(mesh, R=R, T=T))
        rgb = stages.time("Phong shading (textured)", lambda: tex.shader(frag_t, mesh, R=R, T=T))
        loss = loss + 0.1 * ((rgb[..., :3] - target[..., :3]) ** 2).sum()
        pictures.append(rgb[0, ..., :3])
    stages.time("backward", loss.backward)

    def hard():
        with torch.no_grad():
            return render.hard_render(renderers, mesh, R.detach(), T.detach())

    hard_rgb, hard_mask = stages.time("hard Phong frame", hard)
    pictures += [hard_mask[0].float(), hard_rgb[0, ..., :3]]
    if experiment == "teapot":
        pictures = [hard_rgb[0, ..., :3]]
    for j, picture in enumerate(pictures):
        array = picture.detach().numpy()
        path = out_dir / f"{kind}_{i}_{j}.png"
        if kind == "stock":
            stages.time("saving frames", lambda a=array, p=path: book_frame(a, "iter: 0, loss: 0.00", p))
        else:
            stages.time("saving frames", lambda a=array, p=path: writer.frame(a, "iter: 0, loss: 0.00", p))


def measure_stages(experiment, size, repeats, kinds=("stock", "fast")):
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            mesh, renderers, target = setup(experiment, kind, size)
            writer = FrameWriter() if kind == "fast" else None
            one_iteration(experiment, kind, mesh, renderers, target, Stages(), Path(tmp), writer, -1)  # warm-up
            stages = Stages()
            for i in range(repeats):
                one_iteration(experiment, kind, mesh, renderers, target, stages, Path(tmp), writer, i)
            if writer:
                writer.close()
            table[kind] = {name: s / repeats for name, s in stages.seconds.items()}
    return table


def peak_rss_mb(experiment, kind, size):
    """Peak RSS (VmHWM) of a child process that runs two iterations of one path."""
    code = (
        "import sys, resource, tempfile; from pathlib import Path; "
        f"sys.argv=['x']; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import bench_cpu as b; "
        f"m, r, t = b.setup({experiment!r}, {kind!r}, {size}); d = Path(tempfile.mkdtemp()); "
        f"w = b.FrameWriter() if {kind!r} == 'fast' else None; "
        f"[b.one_iteration({experiment!r}, {kind!r}, m, r, t, b.Stages(), d, w, i) for i in range(2)]; "
        "w and w.close(); "
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec from this (large) parent.
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def print_table(experiment, table, rss):
    names = list(dict.fromkeys(list(table["stock"]) + list(table["fast"])))
    print(f"\n{experiment}, book settings, seconds per iteration (mean), 2-core CPU")
    print("| stage | stock | fast | speed-up |\n|---|---:|---:|---:|")
    for name in names + ["total"]:
        stock = sum(table["stock"].values()) if name == "total" else table["stock"].get(name, 0.0)
        fast = sum(table["fast"].values()) if name == "total" else table["fast"].get(name, 0.0)
        ratio = f"{stock / fast:.0f}x" if fast > 0 else "-"
        print(f"| {name} | {stock:.3f} | {fast:.3f} | {ratio} |")
    print(f"| peak RSS (MB) | {rss['stock']:.0f} | {rss['fast']:.0f} | {rss['fast'] / rss['stock']:.2f}x of stock |")


def trajectories(size, kinds=("stock", "fast")):
    """Stock and fast fits of the teapot: the default run, and a fixed 40 iterations."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for label, threshold, iterations in (("default", 500.0 * size**2 / 256**2, 200), ("fixed 40", 0.0, 40)):
                start = time.perf_counter()
                summary = diff_render.fit(output_dir=Path(tmp) / f"{kind}{label}", image_size=size,
                                          loss_threshold=threshold, iterations=iterations, rasterizer=kind,
                                          progress=False)
                rows.append((kind, label, summary, time.perf_counter() - start))
    print(f"\nteapot fits at {size} px, stock vs fast (whole fit wall time, frames included)")
    print("| path | run | iterations | final loss | camera | IoU | seconds |\n|---|---|---:|---:|---|---:|---:|")
    for kind, label, s, seconds in rows:
        cam = ", ".join(f"{v:.4f}" for v in s["camera_position"])
        print(f"| {kind} | {label} | {s['iterations']} | {s['final_loss']:.1f} | ({cam}) | "
              f"{s['silhouette_iou']:.3f} | {seconds:.1f} |")
    fixed = {kind: torch.tensor(s["camera_position"]) for kind, label, s, _ in rows if label == "fixed 40"}
    if len(fixed) == 2:
        print(f"fixed 40 iterations: |camera_fast - camera_stock| = {(fixed['fast'] - fixed['stock']).norm():.2e}")
    return [{"path": kind, "run": label, "iterations": s["iterations"], "final_loss": s["final_loss"],
             "camera_position": s["camera_position"], "silhouette_iou": s["silhouette_iou"], "seconds": seconds}
            for kind, label, s, seconds in rows]


def malloc_ab(repeats: int, size: int, iterations: int) -> dict:
    """The fast path's seconds per iteration with glibc's defaults and with render.keep_large_blocks, each
    variant in its own child process, alternated (ABBA...), `repeats` times per variant and experiment."""
    seconds = {(e, v): [] for e in ("teapot", "cow") for v in ("default", "tuned")}
    for r in range(repeats):
        for experiment in ("teapot", "cow"):
            order = ("default", "tuned") if r % 2 == 0 else ("tuned", "default")
            for variant in order:
                with tempfile.NamedTemporaryFile(suffix=".json") as out:
                    command = [sys.executable, __file__, "--experiment", experiment, "--paths", "fast",
                               "--size", str(size), "--repeats", str(iterations), "--no-rss", "--json", out.name]
                    command += ["--no-malloc-tuning"] if variant == "default" else []
                    subprocess.run(command, check=True, capture_output=True)
                    stages = json.loads(Path(out.name).read_text())[experiment]["stages"]["fast"]
                seconds[experiment, variant].append(sum(stages.values()))
                print(f"repeat {r}, {experiment}, {variant}: {seconds[experiment, variant][-1]:.3f} s per iteration",
                      flush=True)
    print("\n| experiment | glibc default (s/it) | tuned (s/it) | tuned / default |\n|---|---:|---:|---:|")
    result = {}
    for experiment in ("teapot", "cow"):
        default = sum(seconds[experiment, "default"]) / repeats
        tuned = sum(seconds[experiment, "tuned"]) / repeats
        result[experiment] = {"default": seconds[experiment, "default"], "tuned": seconds[experiment, "tuned"]}
        print(f"| {experiment} | {default:.3f} | {tuned:.3f} | {tuned / default:.3f} |")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", choices=["teapot", "cow", "both", "none"], default="both",
                        help="stage tables to measure (none: only --trajectory)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trajectory", action="store_true", help="also run stock and fast teapot fits")
    parser.add_argument("--trajectory-size", type=int, default=256)
    parser.add_argument("--trajectory-paths", nargs="+", choices=["stock", "fast"], default=["stock", "fast"],
                        help="which paths to fit with --trajectory (stock alone takes ~30 min)")
    parser.add_argument("--json", type=Path, help="write the measured figures here")
    parser.add_argument("--paths", nargs="+", choices=["stock", "fast"], default=["stock", "fast"],
                        help="which rasterizers the stage table measures (default both)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc as it is (the fast path's set-up opts in to keep_large_blocks)")
    parser.add_argument("--malloc-ab", type=int, default=0, metavar="REPEATS",
                        help="only the malloc A/B: REPEATS child processes per variant and experiment, alternated")
    args = parser.parse_args()
    data.provision_all(data.TEAPOT_FILES + data.COW_FILES)
    if args.malloc_ab:
        result = malloc_ab(args.malloc_ab, args.size, args.repeats)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    if args.no_malloc_tuning:
        render.keep_large_blocks = lambda: None  # the set-up's opt-in, switched off for the A/B's other side
    torch.set_num_threads(torch.get_num_threads())
    results = {}
    experiments = {"both": ["teapot", "cow"], "none": []}.get(args.experiment, [args.experiment])
    for experiment in experiments:
        table = measure_stages(experiment, args.size, args.repeats, args.paths)
        rss = {} if args.no_rss else {kind: peak_rss_mb(experiment, kind, args.size) for kind in args.paths}
        if rss and len(args.paths) == 2:
            print_table(experiment, table, rss)
        results[experiment] = {"stages": table, "peak_rss_mb": rss}
    if args.trajectory:
        results["trajectory"] = trajectories(args.trajectory_size, args.trajectory_paths)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\nthreads: {torch.get_num_threads()}, peak RSS of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
