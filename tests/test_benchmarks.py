"""The benchmark scripts still run: a tiny case of each that takes minutes in full.

These check the plumbing (arguments, output tables, files), not the figures:
the full runs and their targets are in the README.
"""

import importlib.util
import json
import math
import sys

import numpy as np
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


def test_photo_benchmark_fits_each_case_as_the_readme_says(tmp_path, meshes_ready):
    """A case folder as bench_photo renders it (here drawn by PyTorch3D, not Mitsuba), fitted by the command."""
    import numpy as np
    import torch
    from test_photo import off_centre_rolled_pose, photograph, teapot

    folder = tmp_path / "cases"
    folder.mkdir()
    mesh = teapot()
    R, T = off_centre_rolled_pose(mesh)
    photo, truth, _ = photograph(mesh, R, T, (120, 120, 120))
    Image.fromarray(photo).save(folder / "case_00.jpg", quality=90)
    Image.fromarray(truth.astype(np.uint8) * 255).save(folder / "case_00_truth_mask.png")
    case = {"case": 0, "file": "case_00.jpg", "mesh": "teapot", "R": R.tolist(), "T": T.tolist(), "fov": 50.0,
            "size": list(photo.shape[:2]), "floor": "grey", "cutout": False, "jpeg": 90, "occluded_share": 0.0,
            "roll_deg": 30.0}
    (folder / "cases.json").write_text(json.dumps({"seed": 0, "cases": [case]}))
    rows = tmp_path / "rows.json"
    result = run_benchmark("bench_photo.py", "--cases", folder, "--json", rows, "--keep", tmp_path / "fits",
                           "--figure", tmp_path / "fits.png", "--", "--iterations", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 0 | teapot | grey | JPEG q90 |" in result.stdout and "of 1 succeed" in result.stdout
    (row,) = json.loads(rows.read_text())
    assert np.isfinite(row["rotation_error_deg"]) and 0.0 <= row["silhouette_iou_true"] <= 1.0
    summary = json.loads((tmp_path / "fits" / "fit_00" / "summary.json").read_text())
    assert summary["settings"]["pose_mode"] == "6dof" and summary["settings"]["restarts"] == 8
    assert torch.tensor(summary["R"]).shape == (3, 3)
    # The figure: the photo, the mask used, the true mask, the fitted outline in red over the photo.
    figure = np.asarray(Image.open(tmp_path / "fits.png"))
    H, W = truth.shape
    assert figure.shape == (H, 4 * W, 3)
    assert (figure[:, 2 * W : 3 * W, 0] > 127).sum() == truth.sum()
    assert ((figure[:, 3 * W :] == (255, 0, 0)).all(-1)).any()


def test_tracking_benchmark_runs_a_prepared_sequence(tmp_path, meshes_ready):
    """bench_tracking on a short sequence drawn by PyTorch3D (its make_test_sequence; no Mitsuba): the
    two timed commands, the table, the rows."""
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    import bench_tracking

    bench_tracking.make_test_sequence(tmp_path / "cases" / "test_seq", frames=8, size=(48, 64), kind="occluded")
    rows = tmp_path / "rows.json"
    # This checkout as its own reference, each pair timed twice: the same code tracks to the same errors.
    result = run_benchmark("bench_tracking.py", "--cases", tmp_path / "cases", "--num-frames", 6, "--fps-base", 3,
                           "--repeats", 2, "--reference", BENCHMARKS.parent,
                           "--json", rows, "--plot", tmp_path / "errors.png", "--gif", tmp_path / "occluded.gif")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "| test_seq |" in result.stdout and "fps" in result.stdout and "reference: fps" in result.stdout
    (row,) = json.loads(rows.read_text())
    assert row["frames"] == 6 and row["tracked"] == 6 and 0 <= row["rotation_mean"] <= row["rotation_max"] < 180
    for prefix in ("", "reference_"):
        # Three frames' difference is within the start-up's noise: a run whose N-frame command was not the
        # slower has no frame rate (NaN), as the benchmark says, rather than a negative or infinite one.
        runs = row[f"{prefix}fps_runs"]
        assert len(runs) == 2 and all(r > 0 or math.isnan(r) for r in runs)
        assert row[f"{prefix}wall_n"] > 0 and row[f"{prefix}wall_base"] > 0
    assert row["reference_rotation_mean"] == row["rotation_mean"]
    assert "where a frame's time goes" in result.stdout
    assert row["timing_ms"]["fit"] > 0 and row["reference_timing_ms"]["total"] >= row["reference_timing_ms"]["fit"]
    assert (tmp_path / "errors.png").exists()


def test_mask_benchmark_scores_the_fits_start_against_the_truth(tmp_path, meshes_ready):
    """Two cases as bench_photo renders them (drawn by PyTorch3D): a teapot on brown, and the same with a bar
    in front. The table and rows say how the start read each: the bar in the mask and left out of it."""
    import numpy as np
    from test_photo import off_centre_rolled_pose, photograph, teapot, with_a_bar_in_front

    folder = tmp_path / "cases"
    folder.mkdir()
    mesh = teapot()
    R, T = off_centre_rolled_pose(mesh, turn=(0.4, -0.8, 0.2))
    photo, truth, _ = photograph(mesh, R, T, (170, 110, 60), size=(96, 128))
    occluded, bar = with_a_bar_in_front(photo, truth)
    cases = []
    for i, (image, visible) in enumerate([(photo, truth), (occluded, truth & ~bar)]):
        Image.fromarray(image).save(folder / f"case_{i:02d}.png")
        Image.fromarray(visible.astype(np.uint8) * 255).save(folder / f"case_{i:02d}_truth_mask.png")
        cases.append({"case": i, "file": f"case_{i:02d}.png", "mesh": "teapot", "R": R.tolist(), "T": T.tolist(),
                      "fov": 50.0, "size": list(image.shape[:2]), "floor": "brown", "cutout": False, "jpeg": None,
                      "occluded_share": float((truth & bar).sum() / truth.sum()) if i else 0.0, "roll_deg": 30.0})
    (folder / "cases.json").write_text(json.dumps({"seed": 0, "cases": cases}))
    rows = tmp_path / "rows.json"
    result = run_benchmark("bench_masks.py", "--cases", folder, "--json", rows)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| cases/0 | teapot | brown |" in result.stdout and "2 cases: chosen mask IoU mean" in result.stdout
    clean, behind = json.loads(rows.read_text())
    assert clean["piece_share"] == 0.0 and clean["in_front_share"] < 0.05 and clean["mask_iou"] > 0.8
    assert behind["in_front_share"] > 0.1, "the bar is in the chosen mask"
    assert behind["piece_covers"] > 0.8 and behind["piece_on_object"] < 0.2, "and left out of it"
    assert behind["mask_iou"] > 0.7 and all(0.0 <= r["nearest_start_deg"] <= 180.0 for r in (clean, behind))
    assert "1 of 1 occluded cases had half or more of it left out" in result.stdout
    # A folder with no cases in it: one line, exit 2.
    empty = run_benchmark("bench_masks.py", "--cases", tmp_path)
    assert empty.returncode == 2 and "holds no cases.json" in empty.stderr


def load_scenes(monkeypatch):
    loader = importlib.util.spec_from_file_location("scenes", BENCHMARKS / "scenes.py")
    scenes = importlib.util.module_from_spec(loader)
    monkeypatch.setitem(sys.modules, "scenes", scenes)  # (its dataclasses look their module up; undone after)
    loader.loader.exec_module(scenes)  # (Mitsuba is imported only to render)
    return scenes


def test_the_teapot_colour_probe_paints_only_the_teapots_and_keeps_each_case(monkeypatch):
    scenes = load_scenes(monkeypatch)
    # (made by hand: sampling the benchmark's cases renders a quick look at each occluder, with Mitsuba)
    specs = [scenes.SceneSpec(mesh=("teapot", "cow")[i % 2], R=np.eye(3), T=np.array([0.0, 0.0, 3.0 + i]), fov=50.0,
                              floor_name=f"floor {i}") for i in range(6)]
    painted = scenes.coloured_teapots(specs)
    names = [name for _, name in painted]
    assert names == ["red", None, "blue", None, "black", None]  # teapots first, then every other case
    for (spec, name), plain in zip(painted, specs, strict=True):
        assert np.array_equal(spec.R, plain.R) and np.array_equal(spec.T, plain.T)
        assert spec.floor_name == plain.floor_name and spec.occluder == plain.occluder
        assert spec.object_rgb == (None if name is None else scenes.TEAPOT_COLOURS[name])
        if spec.mesh == "teapot":
            assert scenes._object_bsdf(spec.mesh, spec.object_rgb)["diffuse_reflectance"]["value"] == list(spec.object_rgb)
    assert scenes._object_bsdf("teapot")["diffuse_reflectance"]["value"] == list(scenes.TEAPOT_WHITE)


def test_the_floor_texture_probe_patterns_each_floor_in_its_own_colour_and_keeps_each_case(monkeypatch):
    scenes = load_scenes(monkeypatch)
    specs = [scenes.SceneSpec(mesh=("teapot", "cow")[i % 2], R=np.eye(3), T=np.array([0.0, 0.0, 3.0 + i]), fov=50.0,
                              floor_rgb=(136, 96, 62), floor_name=f"floor {i}", seed=i) for i in range(4)]
    textured = scenes.textured_floors(specs)
    assert [spec.floor_texture for spec in textured] == ["planks", "tiles", "speckle", "planks"]
    for spec, plain in zip(textured, specs, strict=True):
        assert plain.floor_texture is None
        assert np.array_equal(spec.T, plain.T) and spec.floor_rgb == plain.floor_rgb
    colour = scenes.srgb_to_linear((136, 96, 62))
    for name in scenes.FLOOR_TEXTURES:
        image = scenes.floor_texture(name, (136, 96, 62), seed=1, side=128)
        assert image.shape == (128, 128, 3) and image.min() >= 0 and image.max() <= 1
        # the floor's own colour on average, a pattern on it, and the same pattern from the same seed
        assert np.allclose(image.mean((0, 1)), colour, rtol=0.25)
        assert image[..., 0].std() > 0.02 * colour[0]
        assert np.array_equal(image, scenes.floor_texture(name, (136, 96, 62), seed=1, side=128))
        assert not np.array_equal(image, scenes.floor_texture(name, (136, 96, 62), seed=2, side=128))


def test_the_distractor_probe_stands_something_on_the_floor_in_view_and_clear_of_the_object(monkeypatch,
                                                                                             meshes_ready):
    scenes = load_scenes(monkeypatch)
    specs = []
    for i, (mesh, elevation) in enumerate([("teapot", 30), ("cow", 50), ("teapot", 70), ("cow", 20)]):
        fov = 55.0
        R, T = scenes.camera_pose(mesh, 40 * i, elevation, scenes.distance_for_fill(mesh, 0.45, fov), fov=fov)
        specs.append(scenes.SceneSpec(mesh=mesh, R=R, T=T, fov=fov, cutout=i == 3))
    placed = scenes.with_distractors(specs, seed=3)
    assert placed[3].distractor is None  # a cut-out has no floor
    for spec in placed[:3]:
        other = spec.distractor
        assert other is not None and other.kind in ("box", "cylinder")
        assert other.base[1] == scenes.mesh_info(spec.mesh)["floor_y"]  # standing on the floor
        foot, depth = scenes.project(np.array([other.base]), spec.R, spec.T, spec.fov, spec.size)
        assert depth[0] > 0 and 0 <= foot[0, 0] < spec.size[1] and 0 <= foot[0, 1] < spec.size[0]
        assert not scenes._may_overlap(spec, other)  # its image clear of the object's
    assert [s.distractor for s in scenes.with_distractors(specs, seed=3)] == [s.distractor for s in placed]


def test_judge_benchmark_tells_where_a_kept_fit_went_wrong(tmp_path, meshes_ready):
    """A kept fit as bench_photo --keep leaves it (its summary written here, no fit run): one candidate at the
    truth's pose and one turned a quarter turn away. Answered with the turned one, the fit failed at the
    choice (a candidate near the truth was there); answered with the truth's, it did not fail."""
    import torch
    from pytorch3d.transforms import axis_angle_to_matrix
    from test_photo import off_centre_rolled_pose, photograph, teapot

    folder, fits = tmp_path / "cases", tmp_path / "fits"
    folder.mkdir()
    mesh = teapot()
    R, T = off_centre_rolled_pose(mesh)
    photo, truth, _ = photograph(mesh, R, T, (120, 120, 120))
    Image.fromarray(photo).save(folder / "case_00.jpg", quality=90)
    cases = [{"case": i, "file": "case_00.jpg", "mesh": "teapot", "R": R.tolist(), "T": T.tolist(), "fov": 50.0,
              "floor": "grey"} for i in range(2)]
    (folder / "cases.json").write_text(json.dumps({"seed": 0, "cases": cases}))
    R_turned = axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0])) @ R
    candidates = [{"R": R.tolist(), "T": T.tolist(), "polish_loss": 1.0},
                  {"R": R_turned.tolist(), "T": T.tolist(), "polish_loss": 1.0}]
    for i, answer in enumerate((R_turned, R)):
        (fits / f"fit_{i:02d}").mkdir(parents=True)
        summary = {"R": answer.tolist(), "T": T.tolist(), "polished": True, "hypotheses": candidates}
        (fits / f"fit_{i:02d}" / "summary.json").write_text(json.dumps(summary))
    result = run_benchmark("bench_judge.py", "--cases", folder, "--fits", fits, "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 0 ") or
            line.startswith("| 1 ")]
    assert len(rows) == 2
    failed, right = ([cell.strip() for cell in row] for row in rows)
    assert float(failed[3]) > 80 and float(failed[4]) < 1 and failed[7] == "choice"
    assert float(failed[5]) < float(failed[6]), "the truth is judged better than the quarter turn"
    assert float(right[3]) < 1 and right[7] == ""
    only_failures = run_benchmark("bench_judge.py", "--cases", folder, "--fits", fits)
    assert "| 0 |" in only_failures.stdout and "| 1 |" not in only_failures.stdout
    # A folder with no cases in it: one line, exit 2.
    empty = run_benchmark("bench_judge.py", "--cases", tmp_path, "--fits", fits)
    assert empty.returncode == 2 and "holds no cases.json" in empty.stderr


def test_the_smaller_object_probe_moves_the_camera_back_along_the_ray_through_the_object(monkeypatch, meshes_ready):
    scenes = load_scenes(monkeypatch)
    specs = []
    for i, (mesh, elevation) in enumerate([("teapot", 30), ("cow", 50), ("teapot", 70)]):
        fov = 55.0
        R, T = scenes.camera_pose(mesh, 40 * i, elevation, scenes.distance_for_fill(mesh, 0.6, fov), roll_deg=-20 * i,
                                  offset_ndc=(0.3, -0.2), fov=fov)
        specs.append(scenes.SceneSpec(mesh=mesh, R=R, T=T, fov=fov, light_position=(2.0, 4.0, 2.0 + i)))
    smaller = scenes.smaller_objects(specs, seed=3)
    for spec, plain in zip(smaller, specs, strict=True):
        info = scenes.mesh_info(spec.mesh)
        centre = info["centre"]
        assert np.array_equal(spec.R, plain.R) and spec.fov == plain.fov and spec.size == plain.size
        # the object's centre where the photo had it, the camera further off, the sphere spanning 0.25-0.40
        at, _ = scenes.project(centre[None], spec.R, spec.T, spec.fov, spec.size)
        was, _ = scenes.project(centre[None], plain.R, plain.T, plain.fov, plain.size)
        assert np.allclose(at, was, atol=1e-6)
        distance = np.linalg.norm(scenes.camera_centre(spec.R, spec.T) - centre)
        fill = math.tan(math.asin(info["radius"] / distance)) / math.tan(math.radians(spec.fov) / 2)
        assert 0.25 - 1e-6 <= fill <= 0.40 + 1e-6
        assert scenes.framing(spec.mesh, spec.R, spec.T, spec.fov, spec.size)["fill_share"] < \
            scenes.framing(plain.mesh, plain.R, plain.T, plain.fov, plain.size)["fill_share"]
        # the same light on the object: the sphere light as far again, as large again, irradiance kept
        k = distance / np.linalg.norm(scenes.camera_centre(plain.R, plain.T) - centre)
        assert np.allclose(np.asarray(spec.light_position) - centre, k * (np.asarray(plain.light_position) - centre))
        assert math.isclose(spec.light_radius, k * plain.light_radius)
        assert math.isclose(spec.light_intensity / (k * k), plain.light_intensity)
    assert all(np.array_equal(a.T, b.T) for a, b in zip(scenes.smaller_objects(specs, seed=3), smaller, strict=True))
