"""The scripts as a user runs them: help, bad input, up-axis start, exit codes."""

import json

import pytest
from conftest import assert_flags_refused, run_script

from posefit import cli

SCRIPTS = ["diff_render.py", "diff_render_texture.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_book_defaults(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    for text in ("--iterations", "default 200", "--lr", "0.05", "3.0 6.9 2.5", "--rasterizer", "--save-every"):
        assert text in result.stdout


@pytest.mark.parametrize("book", [500.0, 800.0])
def test_the_book_threshold_is_the_default_but_a_6dof_fit_runs_its_schedule(book, tmp_path):
    parser = cli.fit_parser("a fit", loss_threshold=book, output_dir=tmp_path)

    def threshold(*flags):
        return cli.finish_fit_args(parser, parser.parse_args(list(flags))).loss_threshold

    assert threshold() == pytest.approx(book)
    assert threshold("--image-size", "128") == pytest.approx(book / 4)
    assert threshold("--pose", "6dof") == 0.0
    assert threshold("--pose", "6dof", "--loss-threshold", "30") == 30.0


BAD_FLAGS = [
    ["--iterations", "0"],
    ["--lr", "0"],
    ["--lr", "-1"],
    ["--image-size", "4"],
    ["--save-every", "-1"],
    ["--init-position", "0", "0", "0"],
    ["--iterations", "ten"],
    ["--device", "tpu"],
    ["--loss-threshold", "nan"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_flags_are_refused_cleanly(tmp_path, flags):
    assert_flags_refused(tmp_path, *flags)


def test_unwritable_output_folder_is_one_line_error(tmp_path, meshes_ready):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_script("diff_render_texture.py", "--output-dir", blocker / "out", "--iterations", "1",
                        "--image-size", "16")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cannot write to output folder" in result.stderr


def test_up_axis_start_warns_and_runs_finite(tmp_path, meshes_ready):
    result = run_script("diff_render.py", "--init-position", "0", "5", "0", "--iterations", "3",
                        "--image-size", "24", "--loss-threshold", "0", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "up axis" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["stopped"] == "max_iterations"
    assert all(loss == loss for loss in summary["loss_history"])
    assert "3 iterations" in result.stdout.strip().splitlines()[-1]


def test_runs_from_another_working_directory(tmp_path, meshes_ready):
    result = run_script("diff_render.py", "--iterations", "2", "--image-size", "16", "--save-every", "0",
                        "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "summary.json" in names and "fitting.gif" not in names and "fitting_0.png" not in names


@pytest.mark.parametrize(("target_image", "names"), [(None, "target_silhouette.png"),
                                                     ("photo.jpg", "target_mask.png")], ids=["book", "photo"])
def test_a_poor_fit_says_which_mask_to_check(tmp_path, capsys, target_image, names):
    from posefit import outputs

    summary = {"iterations": 200, "final_loss": 900.0, "silhouette_iou": 0.2, "seconds": 1.0,
               "stopped": "max_iterations", "settings": {"target_image": target_image}}
    assert outputs.report(summary, tmp_path) == 0
    warning = capsys.readouterr().out.splitlines()[0]
    assert warning.startswith("warning: the fitted silhouette covers the target poorly") and names in warning
    assert ("background remover" in warning) == (target_image is not None)
    assert "--restarts 8" in warning  # not asked for yet; once it was, only more iterations are suggested
    summary["settings"]["restarts"] = 8
    outputs.report(summary, tmp_path)
    assert "--restarts" not in capsys.readouterr().out.splitlines()[0]


def test_the_packages_imports_run_one_way():
    # README, "Imports run one way": no module of the posefit package imports one that imports it, directly or
    # through others (a cycle would make a module's meaning depend on which was imported first).
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "chap4" / "posefit"
    names = {path.stem for path in package.glob("*.py")}
    imports = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "posefit":
                found.update(alias.name for alias in node.names if alias.name in names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("posefit."):
                found.add(node.module.split(".")[1])
        imports[path.stem] = found
    assert imports["search"] >= {"readings", "occluders", "initial"}  # (the parse found the package's imports)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"an import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for other in imports[name]:
            visit(other, path + (name,))
        done.add(name)

    for name in sorted(imports):
        visit(name, ())
