"""The benchmark scripts still run: a tiny case of each that takes minutes in full.

These check the plumbing (arguments, output tables, files), not the figures:
the full runs and their targets are in the README.
"""

import json

from conftest import REPO, run_script
from PIL import Image

BENCHMARKS = REPO / "benchmarks"


def run_benchmark(name, *args):
    return run_script(name, *args, folder=BENCHMARKS, timeout=300)


def test_multistart_benchmark_runs_every_mesh_view_and_start_count(tmp_path, meshes_ready):
    report = tmp_path / "fits.json"
    result = run_benchmark("bench_multistart.py", "--views", 2, "--view-indices", 1, "--restarts-list", 1, 2,
                           "--iterations", 3, "--image-size", 24, "--json", report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "### teapot" in result.stdout and "### cow" in result.stdout
    for mesh in ("teapot", "cow"):
        for n in (1, 2):
            assert f"- {mesh}, --restarts {n}: " in result.stdout
    fits = json.loads(report.read_text())["fits"]
    assert [(f["mesh"], f["view"], f["restarts"]) for f in fits] == [
        ("teapot", 1, 1), ("teapot", 1, 2), ("cow", 1, 1), ("cow", 1, 2)
    ]
    assert all(0.0 <= f["silhouette_iou"] <= 1.0 and f["seconds"] > 0 for f in fits)


def test_photo_benchmark_follows_the_readme_steps(tmp_path, meshes_ready):
    result = run_benchmark("bench_photo.py", "--meshes", "teapot", "--iterations", 2, "--keep", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with Image.open(tmp_path / "teapot_photo.jpg") as photo:
        assert photo.size == (640, 480) and photo.format == "JPEG"
    with Image.open(tmp_path / "teapot_photo.png") as shrunk:  # step 2: at most 256 a side
        assert shrunk.size == (256, 192)
    summary = json.loads((tmp_path / "result_teapot_photo" / "summary.json").read_text())
    # The backdrop is found from the border colour, and the fit ran at the file's size.
    assert summary["target_kind"] == "background"
    assert summary["settings"]["image_size"] == [192, 256]
    assert (tmp_path / "result_teapot_photo" / "final.png").is_file()
    assert "| teapot | 640x480 JPEG -> 256x192 |" in result.stdout
