"""--target-image: a mask, an RGBA image and an RGB image on a background of one view give one pose."""

import json

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image
from pytorch3d.io import load_obj
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes

import diff_render
import diff_render_texture
from posefit import data, pose, render, targets
from posefit.errors import UserError

SIZE = (48, 64)  # (H, W): non-square on purpose
VIEW = (3.0, 30.0, 40.0)  # distance, elevation, azimuth
BACKGROUND = (30, 90, 200)


def teapot():
    verts, faces, _ = load_obj(data.DATA_DIR / "teapot.obj", load_textures=False)
    return Meshes([verts], [faces.verts_idx], textures=TexturesVertex(torch.ones_like(verts)[None]))


def cow():
    from pytorch3d.io import load_objs_as_meshes

    return load_objs_as_meshes([data.DATA_DIR / "cow_mesh" / "cow.obj"])


def write_targets(folder, mesh, size=SIZE):
    """The same view as a mask (L), as RGBA (alpha = mask, black elsewhere) and as RGB on BACKGROUND."""
    renderers = render.make_renderers("cpu", size)
    R, T, position = pose.view_camera(*VIEW, "cpu")
    with torch.no_grad():
        image, mask = render.hard_render(renderers, mesh, R, T)
    rgb = (image[0, ..., :3].numpy() * 255 + 0.5).astype(np.uint8)
    mask = mask[0].numpy()
    alpha = mask.astype(np.uint8) * 255
    paths = {"mask": folder / "mask.png", "alpha": folder / "rgba.png", "background": folder / "rgb.png"}
    Image.fromarray(alpha, "L").save(paths["mask"])
    Image.fromarray(np.dstack([rgb * mask[..., None], alpha]), "RGBA").save(paths["alpha"])
    Image.fromarray(np.where(mask[..., None], rgb, np.array(BACKGROUND, dtype=np.uint8)), "RGB").save(
        paths["background"]
    )
    return paths, mask, position


def test_three_kinds_of_file_give_the_same_mask(tmp_path, meshes_ready):
    paths, mask, _ = write_targets(tmp_path, teapot())
    for kind, path in paths.items():
        target = targets.load_target_image(path)
        assert target.kind == kind
        assert target.size == SIZE
        assert torch.equal(target.mask.bool(), torch.from_numpy(mask)), kind
    # Told the backdrop's colour, the photo's mask is the same.
    told = targets.load_target_image(paths["background"], background=BACKGROUND)
    assert torch.equal(told.mask.bool(), torch.from_numpy(mask)) and told.background == list(BACKGROUND)
    # The colours the loss sees: the object on white, whatever the file's background.
    rgba, rgb = targets.load_target_image(paths["alpha"]), targets.load_target_image(paths["background"])
    assert torch.equal(rgba.rgb, rgb.rgb)
    assert targets.load_target_image(paths["mask"]).rgb is None


def test_teapot_fits_the_same_pose_from_each_kind_of_file(tmp_path, meshes_ready):
    paths, _, position = write_targets(tmp_path, teapot())
    start = (position * torch.tensor([1.15, 0.9, 1.1])).tolist()
    fitted = {}
    for kind, path in paths.items():
        summary = diff_render.fit(output_dir=tmp_path / kind, target_image=path, init_position=start, iterations=40,
                                  loss_threshold=0, save_every=0, progress=False, background_frames=False)
        fitted[kind] = summary["camera_position"]
        assert summary["target_image"] == str(path) and summary["target_kind"] == kind
        assert "position_error" not in summary and "rotation_error_deg" not in summary
        assert (tmp_path / kind / "final.png").exists()
    assert fitted["mask"] == fitted["alpha"] == fitted["background"]
    # ... and it is the right pose (no truth is given to the fit; we know it here).
    assert torch.linalg.norm(torch.tensor(fitted["mask"]) - position) < 0.1 * VIEW[0]


def test_cow_fits_colour_and_mask_from_a_photo(tmp_path, meshes_ready):
    paths, _, position = write_targets(tmp_path, cow(), size=(32, 40))
    start = (position * torch.tensor([1.1, 0.95, 1.05])).tolist()
    fitted = {}
    for kind in ("alpha", "background"):
        summary = diff_render_texture.fit(output_dir=tmp_path / kind, target_image=paths[kind], init_position=start,
                                          iterations=5, loss_threshold=0, save_every=0, progress=False,
                                          background_frames=False)
        fitted[kind] = summary["camera_position"]
    assert fitted["alpha"] == fitted["background"]


def test_cow_with_a_mask_fits_the_silhouette_only(tmp_path, meshes_ready, capsys):
    paths, _, position = write_targets(tmp_path, cow(), size=(24, 24))
    summary = diff_render_texture.fit(output_dir=tmp_path / "out", target_image=paths["mask"], iterations=2,
                                      loss_threshold=0, save_every=0, progress=False, background_frames=False)
    assert summary["target_kind"] == "mask"
    assert "silhouette only" in capsys.readouterr().err


def test_command_line_file_target_end_to_end(tmp_path, meshes_ready):
    paths, _, _ = write_targets(tmp_path, teapot())
    out = tmp_path / "out"
    result = run_script("diff_render.py", "--target-image", paths["background"], "--restarts", "3",
                        "--iterations", "4", "--loss-threshold", "0", "--save-every", "2", "--fov", "55",
                        "--output-dir", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["image_size"] == list(SIZE)
    assert summary["settings"]["fov"] == 55.0 and summary["settings"]["restarts"] == 3
    assert len(summary["hypotheses"]) == 3 and "position_error" not in summary
    assert {"final.png", "target_rgb.png", "fitting_0.png", "fitting_3.png"} <= {p.name for p in out.iterdir()}
    assert "position error" not in result.stdout and "best of 3 starts" in result.stdout


# --------------------------------------------------------------------------- bad input


def bad_files(folder):
    """name -> (path, words the one-line error must hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not a picture\n" * 10)
    truncated = folder / "truncated.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    plain = folder / "plain.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(plain)
    all_mask = folder / "all_mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8), "L").save(all_mask)
    no_mask = folder / "no_mask.png"
    Image.fromarray(np.zeros((32, 32), np.uint8), "L").save(no_mask)
    transparent = folder / "transparent.png"
    Image.fromarray(np.zeros((32, 32, 4), np.uint8), "RGBA").save(transparent)
    huge = folder / "huge.png"
    Image.fromarray(np.zeros((4, 2000), np.uint8), "L").save(huge)
    return {
        "missing": (folder / "nope.png", "no such file"),
        "folder": (folder, "not a file"),
        "empty": (empty, "empty"),
        "garbage": (garbage, "cannot read"),
        "truncated": (truncated, "cannot read"),
        "plain": (plain, "no foreground"),
        "all_mask": (all_mask, "no background"),
        "no_mask": (no_mask, "no foreground"),
        "transparent": (transparent, "no foreground"),
        "huge": (huge, "2000x4"),
    }


BAD = ["missing", "folder", "empty", "garbage", "truncated", "plain", "all_mask", "no_mask", "transparent", "huge"]


@pytest.mark.parametrize("name", BAD)
def test_bad_images_are_refused_by_the_loader(tmp_path, name):
    path, words = bad_files(tmp_path / "files")[name]
    with pytest.raises(UserError, match=words):
        targets.load_target_image(path)


CLI_CASES = [("diff_render.py", name) for name in ("missing", "empty", "garbage", "plain", "all_mask")]
CLI_CASES.append(("diff_render_texture.py", "transparent"))


@pytest.mark.parametrize(("script", "name"), CLI_CASES)
def test_bad_images_are_refused_cleanly_on_the_command_line(tmp_path, script, name):
    path, words = bad_files(tmp_path / "files")[name]
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    result = run_script(script, "--target-image", path, "--output-dir", out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and words in result.stderr, result.stderr
    assert (out / "summary.json").read_text() == "{}", "earlier results stay untouched"
