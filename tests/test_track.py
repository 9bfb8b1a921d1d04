"""Pose tracking (chap4/track_pose.py): accuracy at small sizes, the --frames path, clean refusals."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHAP4, run_script
from PIL import Image
from pytorch3d.io import load_objs_as_meshes
from pytorch3d.renderer import look_at_view_transform
from pytorch3d.transforms import axis_angle_to_matrix
from scipy import ndimage

import track_pose
from posefit import data, frame_fit, masks, pose, render, smoothing, video

# Stated accuracy at 64 px over the first 8 frames of the default path (the
# benchmark's targets, at 128 px over 60 frames, are 2 / 5 degrees and 2%).
# A track is sensitive to the last bits of its numbers (a start moved by 1e-4
# changes a run's mean by a degree or more, and so does another processor's
# rounding), so the default path's accuracy is checked over three of its seeds.
MAX_MEAN_ROTATION_DEG = 4.0
MAX_ROTATION_DEG = 8.0
MAX_TRANSLATION_SHARE = 0.03  # of the distance
ACCURACY_SEEDS = (0, 1, 2)


def strict_json(path):
    """Parse JSON that must not hold NaN or Infinity."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def check_accuracy(frames):
    rotation = [f["rotation_error_deg"] for f in frames]
    share = [f["translation_error"] / f["distance"] for f in frames]
    assert sum(rotation) / len(rotation) < MAX_MEAN_ROTATION_DEG, rotation
    assert max(rotation) < MAX_ROTATION_DEG, rotation
    assert sum(share) / len(share) < MAX_TRANSLATION_SHARE, share


def write_sequence(folder, size=64, count=8, seed=0, names=None):
    """Render `count` frames of the synthesised path as PNGs; write init pose and truth JSON beside them.

    Even frames are RGB on white, odd ones RGBA on black (the tracker must
    composite them on white).
    """
    folder.mkdir(parents=True, exist_ok=True)
    R, T = track_pose.synthetic_poses(count, seed)
    mesh = load_objs_as_meshes([data.DATA_DIR / "cow_mesh" / "cow.obj"])
    renderers = render.make_renderers("cpu", size)
    with torch.no_grad():
        images, masks = render.hard_render(renderers, mesh.extend(count), R, T)
    names = names or [f"frame_{i}.png" for i in range(count)]
    for i, name in enumerate(names):
        rgb = (images[i, ..., :3].numpy() * 255 + 0.5).astype(np.uint8)
        if i % 2:
            alpha = masks[i].numpy().astype(np.uint8) * 255
            rgba = np.dstack([rgb * (alpha[..., None] > 0), alpha])
            Image.fromarray(rgba, "RGBA").save(folder / name)
        else:
            Image.fromarray(rgb).save(folder / name)
    poses = [pose.pose_json(R[i], T[i]) for i in range(count)]
    (folder / "init.json").write_text(json.dumps(poses[0]))
    (folder / "truth.json").write_text(json.dumps(poses))
    return folder


def test_synthesised_sequence_is_tracked_closely(tmp_path, meshes_ready):
    record = track_pose.track(output_dir=tmp_path, num_frames=8, image_size=64, progress=False,
                              background_frames=False)
    frames = record["frames"]
    assert [f["index"] for f in frames] == list(range(8))
    others = [track_pose.track(output_dir=tmp_path / f"seed_{seed}", num_frames=8, image_size=64, progress=False,
                               background_frames=False, save_overlays=False, seed=seed)["frames"]
              for seed in ACCURACY_SEEDS if seed != 0]
    check_accuracy(frames + [f for run in others for f in run])
    # The reported poses are smoothed; the tracking goes on from the fits, which --smooth 0 reports as they are.
    unsmoothed = track_pose.track(output_dir=tmp_path / "unsmoothed", num_frames=8, image_size=64, progress=False,
                                  background_frames=False, save_overlays=False, seed=ACCURACY_SEEDS[1],
                                  smooth=0)["frames"]
    assert [f["R"] for f in unsmoothed] == [f["fit_R"] for f in others[0]]
    assert [f["T"] for f in unsmoothed] == [f["fit_T"] for f in others[0]]
    assert "fit_R" not in unsmoothed[0] and any(f["R"] != f["fit_R"] for f in others[0])
    assert all(f["iou"] > 0.9 and not f["recovered"] for f in frames)
    saved = strict_json(tmp_path / "tracking.json")
    assert saved["frames"] == json.loads(json.dumps(frames))
    assert saved["settings"]["num_frames"] == 8 and saved["settings"]["image_size"] == [64, 85]
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"overlay_{i}.png" for i in range(8)} | {"tracking.gif", "tracking.json", "observed", "path.png"} <= names
    assert not any(f["lost"] for f in frames)
    # Every frame entry is a valid --init-pose file.
    for frame in frames:
        path = tmp_path / "pose.json"
        path.write_text(json.dumps(frame))
        pose.load_pose(path)
    # The synthesised frames are kept as a --frames folder with its poses.
    assert len(list((tmp_path / "observed").glob("frame_*.png"))) == 8
    assert len(track_pose.load_truth(tmp_path / "observed" / "truth.json")) == 8


def test_synthesised_path_keeps_to_the_stated_speeds():
    R, T = track_pose.synthetic_poses(120, seed=3)
    turns = [pose.rotation_error_deg(R[i], R[i + 1]) for i in range(119)]
    moves = (T[1:] - T[:-1]).norm(dim=1)
    assert 3.0 < max(turns) <= 4.0 and 0.03 < float(moves.max()) <= 0.05
    assert float(T[:, 2].min()) > 2.0
    R_short, _ = track_pose.synthetic_poses(10, seed=3)
    assert torch.allclose(R_short, R[:10]), "a shorter run is the start of the same path"


def test_natural_order():
    names = ["shot10.png", "shot2.png", "Shot1.png", "shot2b.png", "a.png"]
    ordered = sorted((Path(n) for n in names), key=video.natural_key)
    assert [p.name for p in ordered] == ["a.png", "Shot1.png", "shot2.png", "shot2b.png", "shot10.png"]


def test_frames_folder_is_tracked_from_any_directory(tmp_path, meshes_ready):
    # Names that sort wrongly as text (shot10 before shot2): only natural order tracks them.
    names = [f"shot{2 + 4 * i}.png" for i in range(8)]
    folder = write_sequence(tmp_path / "frames", names=names)
    out = tmp_path / "out"
    result = run_script("track_pose.py", "--frames", folder, "--init-pose", folder / "init.json",
                        "--truth", folder / "truth.json", "--output-dir", out, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "tracked 8 frames" in last and "rotation error mean" in last and "fps" in last
    record = strict_json(out / "tracking.json")
    assert [Path(f["file"]).name for f in record["frames"]] == names
    check_accuracy(record["frames"])
    assert (out / "tracking.gif").exists() and (out / "overlay_7.png").exists()
    assert not (out / "observed").exists(), "only synthesised frames are saved"


def test_a_video_and_its_frames_as_pngs_track_alike(tmp_path, meshes_ready):
    # The same pixels through --video and through --frames (each read ahead in a process of its own) give
    # the same poses; the video's overlays also come as an MP4.
    count = 6
    R, T = track_pose.synthetic_poses(count)
    mesh = load_objs_as_meshes([data.DATA_DIR / "cow_mesh" / "cow.obj"])
    with torch.no_grad():
        images, _ = render.hard_render(render.make_renderers("cpu", (48, 64)), mesh.extend(count), R, T)
    clip = tmp_path / "clip.mp4"
    import imageio.v2 as imageio

    with imageio.get_writer(clip, format="FFMPEG", fps=10, codec="libx264", macro_block_size=2) as writer:
        for i in range(count):
            writer.append_data((images[i, ..., :3].numpy() * 255 + 0.5).astype(np.uint8))
    folder = tmp_path / "frames"
    folder.mkdir()
    for raw in video.VideoFrames(clip):  # the video's own decoded frames, saved losslessly
        Image.fromarray(raw.pixels).save(folder / f"frame_{raw.index}.png")
    init = (R[0], T[0])
    common = dict(init_pose=init, progress=False, iterations=3)
    from_video = track_pose.track(output_dir=tmp_path / "video", video_path=clip, **common)
    from_frames = track_pose.track(output_dir=tmp_path / "png", frames_dir=folder, **common)
    assert len(from_video["frames"]) == len(from_frames["frames"]) == count
    for a, b in zip(from_video["frames"], from_frames["frames"], strict=True):
        assert np.allclose(a["R"], b["R"], atol=1e-6) and np.allclose(a["T"], b["T"], atol=1e-6)
    assert not (tmp_path / "png" / "tracking.mp4").exists()
    with imageio.get_reader(tmp_path / "video" / "tracking.mp4", format="FFMPEG") as movie:
        assert movie.count_frames() == count  # the overlays, encoded as they came


def test_lost_frames_are_searched_again(tmp_path, meshes_ready):
    # An IoU above 1 is never reached: every frame is lost. A frame takes the multi-start search, unless one
    # within the last SEARCH_PAUSE frames found nothing either (then it keeps its own fit, marked lost).
    count = track_pose.SEARCH_PAUSE + 3
    record = track_pose.track(output_dir=tmp_path, num_frames=count, image_size=48, lost_iou=1.01,
                              search_iterations=3, search_final_iterations=5, start_iterations=4, iterations=2,
                              save_overlays=False, progress=False)
    frames = record["frames"]
    searched = [0, track_pose.SEARCH_PAUSE + 1]
    assert [f["recovered"] for f in frames] == [i in searched for i in range(count)]
    assert all(f["lost"] for f in frames)
    # The frame's own steps, a few more (--iterations) that did not bring the IoU back, the search's, and the
    # best start's final refinement.
    assert frames[0]["iterations"] == 4 + 2 + 3 + 5
    assert all(math.isfinite(f["rotation_error_deg"]) and f["iou"] > 0.8 for f in frames)


@pytest.mark.parametrize("own_mask", [False, True])
def test_a_search_whose_pose_explains_the_frame_worse_keeps_the_frames_own_fit(tmp_path, meshes_ready,
                                                                                monkeypatch, own_mask):
    # Every frame is lost (an IoU above 1 is never reached) and every search "finds" the cow turned a quarter
    # turn away (its own mask could be wrong: a wall the colour of the object). Judged with the frame's own
    # fit on one frame (frame_fit.judged_on) it explains the frame worse, and the fit is kept: the track
    # stays on the cow. own_mask: the search's frame comes with a mask drawn exactly around the turned pose,
    # so that its IoU there (1) beats the fit's on the frame's mask: a search judged by its IoU on its own
    # mask (the rule until session 46) took it.
    searched = []

    def wrong_search(renderers, mesh, raw, size, background, fov, candidates, **_):
        R, T = candidates[1]
        searched.append(raw.raw.index)
        turned = R @ axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))
        frame = frame_fit.Observed(raw, size, background)
        if own_mask:
            frame.mask = track_pose.hard_silhouette(renderers, mesh, turned[None], T[None]).float()
        return frame, turned[None], T[None], None

    monkeypatch.setattr(track_pose, "reacquire", wrong_search)
    count = track_pose.SEARCH_PAUSE + 3
    record = track_pose.track(output_dir=tmp_path, num_frames=count, image_size=64, lost_iou=1.01,
                              save_overlays=False, progress=False)
    frames = record["frames"]
    assert searched == [0, track_pose.SEARCH_PAUSE + 1] and all(f["lost"] for f in frames)
    check_accuracy(frames)


def test_a_frame_whose_loss_is_not_finite_is_searched_and_the_track_goes_on(tmp_path, meshes_ready, monkeypatch):
    # Frame 3's fit reports a non-finite loss (its pose stays finite: `fit` undoes a step that is not): the
    # frame is searched whatever its IoU, the search's pose judged against the fit's, and the track goes on.
    fitted = []
    real_fit = track_pose.fit

    def failing_fit(renderers, mesh, R, T, frame, **knobs):
        R_fit, T_fit, loss, silhouette = real_fit(renderers, mesh, R, T, frame, **knobs)
        fitted.append(1)
        return R_fit, T_fit, loss * math.nan if len(fitted) == 4 else loss, silhouette

    monkeypatch.setattr(track_pose, "fit", failing_fit)
    record = track_pose.track(output_dir=tmp_path, num_frames=6, image_size=64, save_overlays=False,
                              progress=False)
    frames = record["frames"]
    assert [f["recovered"] for f in frames] == [i == 3 for i in range(6)]
    check_accuracy(frames)


def test_a_jump_is_found_by_the_search(tmp_path, meshes_ready):
    folder = tmp_path / "frames"
    write_sequence(folder, count=3)
    # Frame 3 turns the cow by 30 degrees at once: too far to follow, found by the search.
    truth = json.loads((folder / "truth.json").read_text())
    R = torch.tensor(truth[2]["R"]) @ axis_angle_to_matrix(torch.tensor([0.0, math.radians(30), 0.0]))
    T = torch.tensor(truth[2]["T"])
    renderers = render.make_renderers("cpu", 64)
    mesh = load_objs_as_meshes([data.DATA_DIR / "cow_mesh" / "cow.obj"])
    with torch.no_grad():
        image, _ = render.hard_render(renderers, mesh, R[None], T[None])
    picture = Image.fromarray((image[0, ..., :3].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    picture.save(folder / "frame_3.png")
    picture.save(folder / "frame_4.png")  # and there it stays
    record = track_pose.track(output_dir=tmp_path / "out", frames_dir=folder, init_pose=pose.load_pose(
        folder / "init.json"), save_overlays=False, progress=False)
    assert [f["recovered"] for f in record["frames"]] == [False, False, False, True, False]
    for found in record["frames"][3:]:
        assert found["iou"] > 0.95
        assert pose.rotation_error_deg(torch.tensor(found["R"]), R) < 5.0
    # The frame after the search starts from the pose it found, with a frame's steps (not frame 0's three
    # times as many: the search has just refined that start).
    assert record["frames"][4]["iterations"] == track_pose.STEPS_PER_FRAME


def test_the_smoothed_poses_follow_a_steady_motion_and_lie_nearer_it_than_noisy_fits():
    # A steady turn and move (each entry of R nearly linear over a few frames), fits off by a degree at random.
    count, radius = 12, smoothing.RADIUS
    generator = torch.Generator().manual_seed(0)
    angles = torch.stack([torch.zeros(count), torch.linspace(0.0, 0.3, count), torch.zeros(count)], 1)
    R_true = axis_angle_to_matrix(angles)
    T_true = torch.stack([torch.linspace(-0.2, 0.2, count), torch.zeros(count), torch.full((count,), 3.0)], 1)
    noise = torch.randn(count, 3, generator=generator) * math.radians(1.0)
    R_fit = R_true @ axis_angle_to_matrix(noise)
    T_fit = T_true + 0.01 * torch.randn(count, 3, generator=generator)
    smoother, reported = smoothing.FixedLag(radius), []
    for i in range(count):
        ready = smoother.push(R_fit[i], T_fit[i], i)
        # A frame comes back once `radius` more have come.
        assert [p for p, _, _ in ready] == ([i - radius] if i >= radius else [])
        reported += ready
    reported += smoother.flush()
    assert [p for p, _, _ in reported] == list(range(count))
    R_out = torch.stack([R for _, R, _ in reported])
    T_out = torch.stack([T for _, _, T in reported])
    assert torch.allclose(R_out @ R_out.transpose(1, 2), torch.eye(3).expand(count, 3, 3), atol=1e-5)
    error_fit = [pose.rotation_error_deg(a, b) for a, b in zip(R_fit, R_true, strict=True)]
    error_out = [pose.rotation_error_deg(a, b) for a, b in zip(R_out, R_true, strict=True)]
    assert np.mean(error_out) < 0.7 * np.mean(error_fit)
    assert (T_out - T_true).norm(dim=1).mean() < 0.7 * (T_fit - T_true).norm(dim=1).mean()
    # Without noise a straight move comes back as it was, at the ends too (the line does not lag).
    smoother, still = smoothing.FixedLag(radius), []
    for i in range(count):
        still += smoother.push(torch.eye(3), T_true[i], i)
    still += smoother.flush()
    assert torch.allclose(torch.stack([T for _, _, T in still]), T_true, atol=1e-6)


def test_the_smoothing_neither_crosses_a_cut_nor_takes_in_a_frame_without_a_fit():
    smoother, reported = smoothing.FixedLag(2), []
    moves = [0.0, 1.0, 2.0, None, 4.0, 100.0, 101.0, 102.0]  # None: undecodable; a jump at 100 (cut)
    for i, x in enumerate(moves):
        T = None if x is None else torch.tensor([x, 0.0, 3.0])
        reported += smoother.push(None if x is None else torch.eye(3), T, i, cut=i == 5)
    reported += smoother.flush()
    assert [p for p, _, _ in reported] == list(range(len(moves)))
    assert reported[3][1:] == (None, None)
    # On each side of the cut the fits lie on a line: each comes back as it was.
    assert [float(T[0]) for _, _, T in reported if T is not None] == pytest.approx(
        [x for x in moves if x is not None], abs=1e-9)
    # Radius 0: each frame back at once, its fit itself.
    R, T = torch.eye(3), torch.ones(3)
    alone = smoothing.FixedLag(0)
    (_, R_out, T_out), = alone.push(R, T, "frame")
    assert R_out is not None and torch.equal(R_out, R) and torch.equal(T_out, T)
    assert [p for p, _, _ in alone.push(R, T + 1, "next") + alone.flush()] == ["next"]


def test_the_prediction_repeats_a_share_of_the_last_step():
    R0, T0 = torch.eye(3), torch.tensor([0.0, 0.0, 3.0])
    R1, T1 = axis_angle_to_matrix(torch.tensor([0.0, 0.1, 0.0])), torch.tensor([0.1, 0.0, 3.0])
    R, T = track_pose.predict([(R0, T0), (R1, T1)], 0.8)
    assert pose.rotation_error_deg(R, axis_angle_to_matrix(torch.tensor([0.0, 0.18, 0.0]))) < 1e-3
    assert torch.allclose(T, torch.tensor([0.18, 0.0, 3.0]), atol=1e-6)
    assert track_pose.predict([(R0, T0)], 0.8) == (R0, T0)  # no motion yet: the last estimate
    # The tracker repeats less than the whole step: all of it carries the last frame's error on as motion.
    assert 0.0 < track_pose.EXTRAPOLATE < 1.0


def bad_init(folder, R, T):
    path = folder / "init.json"
    path.write_text(json.dumps({"R": R, "T": T}))
    return path


EYE = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def make_empty(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "notes.txt").write_text("no pictures here")
    return tmp_path / "frames", bad_init(tmp_path, EYE, [0, 0, 3]), "no PNG or JPEG frames"


def make_mismatched(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 32), "white").save(folder / "frame_1.png")
    Image.new("RGB", (40, 32), "white").save(folder / "frame_2.png")
    return folder, bad_init(tmp_path, EYE, [0, 0, 3]), "differ in size"


def make_unreadable(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 32), "white").save(folder / "frame_1.png")
    (folder / "frame_2.png").write_bytes(b"this is not a PNG")
    return folder, bad_init(tmp_path, EYE, [0, 0, 3]), "cannot read frame"


def make_bad_pose(R, T, message):
    def make(tmp_path):
        folder = tmp_path / "frames"
        folder.mkdir()
        Image.new("RGB", (32, 32), "white").save(folder / "frame_1.png")
        return folder, bad_init(tmp_path, R, T), message

    return make


BAD_INPUTS = {
    "empty folder": make_empty,
    "frames of different sizes": make_mismatched,
    "unreadable frame": make_unreadable,
    "scaled R": make_bad_pose([[2, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 3], "not a rotation"),
    "reflection": make_bad_pose([[1, 0, 0], [0, 1, 0], [0, 0, -1]], [0, 0, 3], "not a rotation"),
    "R not 3x3": make_bad_pose([[1, 0], [0, 1]], [0, 0, 3], "3x3"),
    "object behind the camera": make_bad_pose(EYE, [0, 0, -3], "behind the camera"),
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_cleanly(tmp_path, make):
    folder, init, message = make(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracking.json").write_text("{}")
    result = run_script("track_pose.py", "--frames", folder, "--init-pose", init, "--output-dir", out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert (out / "tracking.json").read_text() == "{}", "refused before touching the output"


@pytest.mark.parametrize("T, message", [([0, 0, 3], "no object found against the backdrop where --init-pose"),
                                         ([40, 0, 3], "outside frame 0")], ids=["bare floor", "pose off frame"])
def test_frame_0_without_the_object_where_the_init_pose_puts_it_is_refused(tmp_path, meshes_ready, T, message):
    # A photo of a bare floor (noisy, so the backdrop model judges it): nothing of the object where the init
    # pose puts it, or the pose puts the object outside the frame.
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        floor = np.array([200, 170, 120]) + rng.normal(0, 4, (48, 64, 3))
        Image.fromarray(np.clip(floor, 0, 255).astype(np.uint8)).save(folder / f"frame_{i}.png")
    R, _ = look_at_view_transform(3.0, 20.0, 30.0)
    init = bad_init(tmp_path, R[0].tolist(), T)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracking.json").write_text("{}")
    result = run_script("track_pose.py", "--frames", folder, "--init-pose", init, "--output-dir", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert (out / "tracking.json").read_text() == "{}", "refused before touching the output"


def test_frames_without_init_pose_is_a_usage_error(tmp_path):
    result = run_script("track_pose.py", "--frames", tmp_path, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--init-pose" in result.stderr and "--pose 6dof" in result.stderr  # says where to get one


def test_a_frame_that_cannot_be_decoded_is_skipped_and_tracking_goes_on(tmp_path, meshes_ready):
    # 64 px: at 48 the first frames' errors (3-5 degrees, either tracker step) are as large as the bounds.
    folder = write_sequence(tmp_path / "frames", size=64, count=5)
    whole = (folder / "frame_2.png").read_bytes()
    (folder / "frame_2.png").write_bytes(whole[: len(whole) // 2])  # a valid header, then nothing
    out = tmp_path / "out"
    result = run_script("track_pose.py", "--frames", folder, "--init-pose", folder / "init.json",
                        "--truth", folder / "truth.json", "--output-dir", out, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning: frame 2 could not be decoded" in result.stderr and "Traceback" not in result.stderr
    record = strict_json(out / "tracking.json")
    assert [f["index"] for f in record["frames"]] == [0, 1, 2, 3, 4], "one entry per input frame, in order"
    skipped = record["frames"][2]
    assert skipped["skipped"] is True
    pose.check_pose(skipped["R"], skipped["T"], "skipped frame")  # the prediction: a valid pose
    check_accuracy([f for f in record["frames"] if not f.get("skipped")])
    assert "1 skipped" in result.stdout


def test_the_frame_fits_adam_steps_as_torchs_adam():
    # frame_fit.Adam replaces torch.optim.Adam in a frame's fit (torch's imports torch._dynamo, 1.5 s): the same
    # parameters after every step, bit for bit, with the rate changing from step to step.
    torch.manual_seed(0)
    ours = [torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    start = ours[0].detach().clone()
    adam, reference = frame_fit.Adam(ours), torch.optim.Adam(theirs, lr=0.1)
    for step in range(12):
        rate = 0.1 * 0.2 ** (step / 11)
        grads = [torch.randn(4, 3) * 10.0 ** (step % 3 - 1) for _ in ours]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        adam.step(rate)
        reference.param_groups[0]["lr"] = rate
        reference.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))
    assert not torch.allclose(ours[0], start, atol=0.1)  # they did move


def test_the_carried_gradient_scale_steps_with_the_gradient_where_fresh_adam_does_not():
    # Fresh Adam's first step is the rate times the gradient's sign, however small the gradient; with the
    # running scale of earlier frames' gradients carried, a gradient a hundredth of theirs moves a hundredth.
    rate, small = 0.01, torch.full((1, 3), 0.01)
    fresh = torch.nn.Parameter(torch.zeros(1, 3))
    fresh.grad = small.clone()
    torch.optim.Adam([fresh], lr=rate).step()
    assert torch.allclose(fresh.detach().abs(), torch.full((1, 3), rate), rtol=1e-3)

    carried, scale = torch.nn.Parameter(torch.zeros(1, 3)), frame_fit.GradientScale()
    first = scale.start([carried])
    carried.grad = torch.ones(1, 3)
    scale.step([carried], first, rate, 0)  # a new scale's first step is Adam's
    assert torch.allclose(carried.detach(), torch.full((1, 3), -rate), rtol=1e-3)
    for _ in range(9):  # more frames with gradients of 1
        moments = scale.start([carried])
        scale.step([carried], moments, rate, 0)
    before = carried.detach().clone()
    moments = scale.start([carried])
    carried.grad = small.clone()
    scale.step([carried], moments, rate, 0)
    moved = (carried.detach() - before).abs()
    assert (moved < 2 * rate * 0.01).all() and (moved > 0.5 * rate * 0.01).all(), moved


def white_box_photo(scale: int = 1):
    """A white box on a terracotta floor (40 x 50 px times scale), as it is and with sensor noise."""
    rng = np.random.default_rng(0)
    pixels = np.full((40 * scale, 50 * scale, 3), (180, 90, 60), np.float32)
    pixels[10 * scale : 30 * scale, 15 * scale : 35 * scale] = (240, 240, 240)
    return pixels, np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)


def test_a_photo_frame_leaves_its_outline_out_and_a_render_does_not():
    # A noisy frame (a photo): the pixels on the mask's outline weigh nothing, those a pixel further in and
    # out count fully. A clean render's mask is exact: every pixel counts.
    pixels, noisy = white_box_photo()
    frame = frame_fit.Observed(video.RawFrame(0, None, noisy), (40, 50))
    assert frame.photo and frame.weight is not None
    mask = frame.mask.numpy() > 0.5
    weight = frame.weight.numpy()
    assert mask[12:28, 17:33].all() and not mask[:8].any()
    edge = mask & ~np.roll(mask, 1, axis=0)  # the top row of the object
    assert (weight[edge] == 0).all() and (weight[np.roll(edge, -1, axis=0)] == 0).all()
    assert weight[20, 25] == 1 and weight[2, 2] == 1
    clean = frame_fit.Observed(video.RawFrame(0, None, pixels.astype(np.uint8)), (40, 50))
    assert not clean.photo and clean.weight is None


def test_a_frame_halved_is_the_frame_seen_at_half_its_size():
    # A search's coarse fit sees the frame halved: the same photo read at half the size gives the same
    # mask (but for its soft edge), colours and backdrop, and the fit's window still holds the object.
    _, noisy = white_box_photo(scale=2)
    full = frame_fit.Observed(video.RawFrame(0, None, noisy), (80, 100))
    coarse, small = frame_fit.halved(full), frame_fit.Observed(video.RawFrame(0, None, noisy), (40, 50))
    assert coarse.mask.shape == small.mask.shape == (40, 50) and coarse.photo
    assert float(((coarse.mask > 0.5) != (small.mask > 0.5)).float().mean()) < 0.02
    assert float((coarse.colours - small.colours).abs().mean()) < 0.01
    assert float((coarse.backdrop - small.backdrop).abs().mean()) < 0.01
    assert torch.allclose(coarse.backdrop_linear, frame_fit.to_linear(coarse.backdrop))
    y0, y1, x0, x1 = coarse.window
    rows, cols = np.nonzero(small.mask.numpy() > 0.5)
    assert y0 <= rows.min() and rows.max() < y1 and x0 <= cols.min() and cols.max() < x1
    assert full.mask.shape == (80, 100)  # the frame itself is left as it was


def test_read_ahead_keeps_order_raises_in_place_and_stops_when_closed():
    import threading

    assert list(video.read_ahead(range(7), lambda i: i * i)) == [i * i for i in range(7)]

    def work(i):
        if i == 3:
            raise ValueError("frame 3 is bad")
        return i

    seen = []
    with pytest.raises(ValueError, match="frame 3 is bad"):
        for value in video.read_ahead(range(10), work):
            seen.append(value)
    assert seen == [0, 1, 2]

    started = threading.active_count()
    reads = []
    ahead = video.read_ahead(iter(range(1000)), lambda i: reads.append(i) or i, depth=2)
    assert next(ahead) == 0
    ahead.close()  # a tracker that stops early: the thread ends, and reads stop a few items ahead
    assert threading.active_count() <= started
    assert len(reads) <= 5


def test_read_ahead_in_a_process_keeps_order_raises_in_place_and_stops_when_closed():
    import functools
    import multiprocessing
    import operator

    square = functools.partial(pow, exp=2)  # what the process runs must pickle: no lambdas
    assert list(video.read_ahead(range(7), square, process=True)) == [i * i for i in range(7)]
    seen = []
    with pytest.raises(ZeroDivisionError):
        for value in video.read_ahead(range(-3, 3), functools.partial(operator.truediv, 6), process=True):
            seen.append(value)
    assert seen == [-2, -3, -6]
    ahead = video.read_ahead(range(10**6), square, depth=2, process=True)
    assert next(ahead) == 0
    ahead.close()
    assert not multiprocessing.active_children()
    with pytest.raises(StopIteration):
        next(ahead)


def test_the_outline_on_a_large_frame_is_drawn_wider_along_the_silhouettes_edge():
    # A silhouette at the working size (120 x 160) with a notch, drawn on the frame as it came: at that size
    # the 1-pixel inner boundary; on a frame 8 times larger a line several pixels wide that follows the
    # silhouette's scaled-up edge (within a few pixels of it, all round it) and nothing else.
    silhouette = torch.zeros(120, 160, dtype=torch.bool)
    silhouette[30:90, 50:110] = True
    silhouette[60:90, 70:90] = False
    red = (255, 26, 26)
    small = track_pose.overlay(np.zeros((120, 160, 3), np.uint8), silhouette)
    inside = silhouette.numpy()
    boundary = inside & ~ndimage.binary_erosion(inside)
    assert np.array_equal((small == red).all(-1), boundary)
    big = track_pose.overlay(np.zeros((960, 1280, 3), np.uint8), silhouette)
    drawn = (big == red).all(-1)
    scaled = np.kron(inside, np.ones((8, 8), bool))
    edge = scaled ^ ndimage.binary_erosion(scaled)
    assert (drawn & ~ndimage.binary_dilation(edge, iterations=4)).sum() == 0  # only near the edge
    assert (edge & ~ndimage.binary_dilation(drawn, iterations=4)).sum() == 0  # all round it
    assert drawn[480, :560].sum() >= 3  # the left side, crossed: several pixels wide, not one


def test_tracker_overlays_are_captioned_at_their_own_size(tmp_path):
    from posefit.frames import FrameWriter

    writer = FrameWriter(background=False, captions="plain")
    picture = np.zeros((30, 40, 3), np.uint8)
    writer.frame(picture, "frame 0: IoU 0.900", tmp_path / "overlay_0.png", to_gif=True)
    writer.gif(tmp_path / "tracking.gif")
    assert writer.close() == []
    saved = np.asarray(Image.open(tmp_path / "overlay_0.png").convert("RGB"))
    strip = saved.shape[0] - 30
    assert saved.shape[1] == 40 and strip > 0
    assert (saved[strip:] == 0).all()  # the picture itself, untouched, under the caption
    assert (saved[:strip] < 128).any() and (saved[:strip] == 255).any()  # dark text on white
    with Image.open(tmp_path / "tracking.gif") as gif:
        assert gif.size == (40, 30) and gif.info["duration"] == 100  # 10 frames a second, in milliseconds


@pytest.mark.parametrize("background", [False, True])
def test_the_writer_encodes_the_movie_as_the_pictures_come(tmp_path, background):
    import imageio.v2 as imageio

    from posefit.frames import FrameWriter

    writer = FrameWriter(background=background, captions="plain")
    writer.movie(tmp_path / "tracking.mp4", fps=15)
    for shade in (0, 120, 240):
        writer.frame(np.full((30, 40, 3), shade, np.uint8), "a frame", None, to_movie=True)
    writer.frame(np.zeros((30, 40, 3), np.uint8), "not in the movie", tmp_path / "still.png")
    assert writer.close() == []
    with imageio.get_reader(tmp_path / "tracking.mp4", format="FFMPEG") as movie:
        frames = [frame for frame in movie]
    assert len(frames) == 3 and frames[0].shape == (30, 40, 3)
    assert [round(float(f.mean()) / 60) for f in frames] == [0, 2, 4]  # in order
    assert not list(tmp_path.glob("*.part*"))


def test_the_fitted_light_is_the_light_that_made_the_colours():
    # Colours made by an albedo under a known light (ambient, direction, offset) give that light back, and
    # shade under it gives the colours back; a gain-and-offset light (no direction) cannot explain them.
    from posefit import targets

    rng = np.random.default_rng(0)
    H, W = 12, 14
    albedo = torch.from_numpy(rng.uniform(0.1, 0.9, (1, H, W, 3)).astype(np.float32))
    normals = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(1, H, W, 3)).astype(np.float32)), dim=-1)
    light = torch.tensor([[0.6, 0.5, 0.4, 0.3, -0.2, 0.25, 0.05, 0.02, 0.0]])
    colours = targets.shade(albedo, normals, light)[0]
    weights = torch.ones(1, H, W)
    found = targets.solve_light(albedo, normals, colours, weights)
    assert torch.allclose(found, light, atol=0.02)  # (the least squares are lightly regularised)
    assert torch.allclose(targets.shade(albedo, normals, found)[0], colours, atol=0.01)
    flat = targets.shade(albedo, torch.zeros_like(normals), targets.solve_light(albedo, torch.zeros_like(normals),
                                                                                colours, weights))[0]
    assert (flat - colours).abs().mean() > 10 * (targets.shade(albedo, normals, found)[0] - colours).abs().mean()


def test_the_backdrop_behind_the_object_is_filled_from_around_it():
    # A smooth floor (a left-to-right ramp) with an object on it: the fill behind the object follows the
    # ramp, and the known pixels are kept as they are.
    from posefit import masks

    H, W = 40, 60
    ramp = np.linspace(0.2, 0.8, W, dtype=np.float32)
    floor = np.stack([np.tile(ramp, (H, 1))] * 3, -1)
    image = floor.copy()
    image[12:28, 20:40] = (1.0, 0.0, 0.0)
    known = np.ones((H, W), bool)
    known[10:30, 18:42] = False
    behind = masks.backdrop_behind(image, known)
    assert np.array_equal(behind[known], image[known])
    assert np.abs(behind[~known] - floor[~known]).max() < 0.08
    assert np.abs(behind[12:28, 20:40] - floor[12:28, 20:40]).mean() < 0.03


def test_the_masks_shortcuts_give_the_same_numbers():
    # Two of a tracked frame's steps are computed on less than the whole image, with the same numbers: the
    # colours smoothed only around the silhouette (refine_with_silhouette), and the backdrop's half-size
    # blocks averaged by explicit sums in numpy's order (backdrop_behind).
    from scipy import ndimage

    from posefit import masks

    rng = np.random.default_rng(3)
    for _ in range(60):
        H, W = rng.integers(4, 90, 2)
        rgb = rng.random((H, W, 3), dtype=np.float32)
        region = np.zeros((H, W), bool)
        y, x = rng.integers(0, H), rng.integers(0, W)
        region[y : y + rng.integers(1, 30), x : x + rng.integers(1, 30)] = True
        region &= rng.random((H, W)) < 0.8
        whole = np.stack([ndimage.gaussian_filter(rgb[..., c], 0.7) for c in range(3)], -1)
        assert np.array_equal(masks._smoothed_around(rgb, region, 0.7)[region], whole[region])
        blocks = (rgb[: H // 2 * 2, : W // 2 * 2] * 10.0 ** rng.integers(-3, 3, (H // 2 * 2, W // 2 * 2, 3))
                  ).astype(np.float32).reshape(H // 2, 2, W // 2, 2, 3)
        assert np.array_equal(masks.block_means(blocks), blocks.mean((1, 3)))


def test_the_colour_shader_blends_view_normals_with_the_same_weights(meshes_ready):
    # normals=True: the albedo as without it, and a normal per covered pixel in view coordinates: facing
    # the camera (view +Z into the scene, so negative z) and of about unit length where one face covers it.
    mesh = load_objs_as_meshes([data.provision_all(data.COW_FILES)[0]])
    renderers = render.make_renderers("cpu", (48, 64), faces_per_pixel=8, textured_faces_per_pixel=8,
                                      sigma=5e-6, albedo=render.face_colours(mesh), cull_backfaces=True)
    R, T = track_pose.synthetic_poses(1)
    plain = mesh.__class__(verts=mesh.verts_list(), faces=mesh.faces_list())
    fragments = renderers.textured.rasterizer(plain, R=R[:1], T=T[:1])
    colour = renderers.textured.shader(fragments, plain, R=R[:1], T=T[:1])
    albedo, normals = renderers.textured.shader(fragments, plain, normals=True, R=R[:1], T=T[:1])
    assert torch.allclose(albedo, colour, atol=1e-6)
    covered = fragments.pix_to_face[0, ..., 0] >= 0
    assert covered.sum() > 100 and (normals[0][~covered] == 0).all()
    assert (normals[0][covered][:, 2] < 0.1).float().mean() > 0.95
    length = normals[0][covered].norm(dim=-1)
    assert length.median() > 0.9 and length.max() < 1.01


@pytest.mark.parametrize("normals", [False, True])
def test_the_compiled_colour_blend_gives_torchs_numbers_and_gradients(meshes_ready, monkeypatch, normals):
    # blend_kernels' compiled blend (the CPU default) against the shader's torch operations: the same colours
    # and normals, and the same gradients with respect to two poses of a batch, to float rounding.
    mesh = load_objs_as_meshes([data.provision_all(data.COW_FILES)[0]])
    renderers = render.make_renderers("cpu", (48, 64), faces_per_pixel=8, textured_faces_per_pixel=8,
                                      sigma=5e-6, albedo=render.face_colours(mesh), cull_backfaces=True)
    R_true, T_true = track_pose.synthetic_poses(8)
    plain = mesh.__class__(verts=mesh.verts_list(), faces=mesh.faces_list()).extend(2)
    weights = torch.rand(2, 48, 64, 6, generator=torch.Generator().manual_seed(0))

    def blend(compiled):
        monkeypatch.setattr(render, "COMPILED_BLEND", compiled)
        R, T = R_true[[0, 7]].clone().requires_grad_(), T_true[[0, 7]].clone().requires_grad_()
        fragments = renderers.textured.rasterizer(plain, R=R, T=T)
        out = renderers.textured.shader(fragments, plain, normals=normals, R=R, T=T)
        image = torch.cat(out, -1) if normals else out
        (image * weights[..., : image.shape[-1]]).sum().backward()
        return image.detach(), R.grad, T.grad

    (image, grad_R, grad_T), (torch_image, torch_grad_R, torch_grad_T) = blend(True), blend(False)
    assert (torch_image != torch_image[0, 0, 0]).any(dim=-1).sum() > 200  # the cow is in both images
    assert torch.allclose(image, torch_image, atol=1e-5)
    for grad, expected in ((grad_R, torch_grad_R), (grad_T, torch_grad_T)):
        assert expected.abs().max() > 0
        assert torch.allclose(grad, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_the_compiled_soft_silhouette_gives_pytorch3ds_numbers_and_gradients(meshes_ready, monkeypatch):
    # render.soft_silhouette by blend_kernels (the CPU default) against PyTorch3D's sigmoid_alpha_blend: the
    # same alphas and the same gradients with respect to two poses of a batch (its float steps taken as its
    # C++ takes them: to the bit here, on these CPUs; the test allows float rounding).
    mesh = load_objs_as_meshes([data.provision_all(data.COW_FILES)[0]])
    renderers = render.make_renderers("cpu", (48, 64), faces_per_pixel=8, textured_faces_per_pixel=8,
                                      sigma=5e-6, albedo=render.face_colours(mesh), cull_backfaces=True)
    R_true, T_true = track_pose.synthetic_poses(8)
    plain = mesh.__class__(verts=mesh.verts_list(), faces=mesh.faces_list()).extend(2)
    weights = torch.rand(2, 48, 64, generator=torch.Generator().manual_seed(0)) - 0.5

    def silhouette(compiled):
        monkeypatch.setattr(render, "COMPILED_BLEND", compiled)
        R, T = R_true[[0, 7]].clone().requires_grad_(), T_true[[0, 7]].clone().requires_grad_()
        fragments = renderers.textured.rasterizer(plain, R=R, T=T)
        alpha = render.soft_silhouette(fragments, renderers.silhouette.shader.blend_params)
        (alpha * weights).sum().backward()
        return alpha.detach(), R.grad, T.grad

    (alpha, grad_R, grad_T), (stock_alpha, stock_grad_R, stock_grad_T) = silhouette(True), silhouette(False)
    assert ((stock_alpha > 0.01) & (stock_alpha < 0.99)).sum() > 20  # soft edges, where the gradient lives
    assert torch.allclose(alpha, stock_alpha, atol=1e-6, rtol=0)
    for grad, expected in ((grad_R, stock_grad_R), (grad_T, stock_grad_T)):
        assert expected.abs().max() > 0
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def random_shading(seed: int):
    """Two images' albedo and normals (2, 10, 12, 3), a reference's colours (10, 12, 3) and weights (2, 10, 12)."""
    rng = np.random.default_rng(seed)
    albedo = torch.from_numpy(rng.uniform(0.1, 0.9, (2, 10, 12, 3)).astype(np.float32))
    normals = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(2, 10, 12, 3)).astype(np.float32)),
                                            dim=-1)
    colours = torch.from_numpy(rng.uniform(0, 1, (10, 12, 3)).astype(np.float32))
    weights = torch.from_numpy((rng.uniform(size=(2, 10, 12)) > 0.4).astype(np.float32))
    return albedo, normals, colours, weights


def test_the_compiled_light_solve_gives_torchs_light(monkeypatch):
    # targets.solve_light's normal equations by blend_kernels (the CPU default) and by torch's einsum: one light.
    from posefit import targets

    albedo, normals, colours, weights = random_shading(seed=1)
    lights = []
    for compiled in (True, False):
        monkeypatch.setattr(render, "COMPILED_BLEND", compiled)
        lights.append(targets.solve_light(albedo, normals, colours, weights))
    assert lights[0].shape == (2, 9) and not torch.equal(lights[0][0], lights[0][1])
    assert torch.allclose(lights[0], lights[1], atol=1e-4)


def test_the_compiled_robust_light_gives_the_reweighted_solves_light(monkeypatch):
    # frame_fit.robust_light's passes in one compiled loop (the CPU default) and as torch's solves and
    # reweightings, one after the other: one light per image, for each number of passes.
    from posefit import frame_fit

    albedo, normals, colours, weights = random_shading(seed=2)
    for passes in (1, 2, 4):
        lights = []
        for compiled in (True, False):
            monkeypatch.setattr(render, "COMPILED_BLEND", compiled)
            lights.append(frame_fit.robust_light(albedo, normals, colours, weights, passes))
        assert lights[0].shape == (2, 9) and not torch.equal(lights[0][0], lights[0][1])
        assert torch.allclose(lights[0], lights[1], atol=1e-4)
    plain = frame_fit.robust_light(albedo, normals, colours, weights, 0)
    assert (plain - lights[1]).abs().max() > 1e-3  # the passes do change the light


def patched_cow_frame(photo: bool):
    """A 48 x 64 frame of the cow at the synthesised sequence's first pose, its silhouette filled with random
    patches, on a green floor with sensor noise (a photo) or on white (a render); and the renderers, the
    mesh, that pose, its hard silhouette, the frame (a RawFrame) and its size."""
    from posefit import frame_fit

    mesh = data.load_mesh(data.provision_all(data.COW_FILES)[0], "cpu")
    R, T = track_pose.synthetic_poses(1)
    size, fov = (48, 64), 55.0
    renderers, meshes = frame_fit.make_renderers(mesh, size, fov, "cpu")
    silhouette = frame_fit.hard_silhouette(renderers, meshes, R, T)
    rng = np.random.default_rng(3)
    floor = [0.3, 0.5, 0.4] if photo else [1.0, 1.0, 1.0]
    pixels = np.where(silhouette[0, ..., None].numpy(), rng.uniform(0.2, 0.9, (*size, 3)), floor)
    if photo:
        pixels = pixels + rng.normal(0, 0.02, pixels.shape)  # a noisy floor: a photo
    raw = video.RawFrame(0, "frame.png", (255 * np.clip(pixels, 0, 1)).astype(np.uint8))
    return renderers, meshes, R, T, silhouette, raw, size


def test_the_compiled_photo_colour_term_gives_torchs_loss_and_gradient(monkeypatch, meshes_ready):
    # losses' colour term of a photo's frame, in one compiled loop (the CPU default) and as torch's
    # operations: the same loss and the same gradient in the pose, with something in front and without.
    from posefit import frame_fit

    renderers, meshes, R, T, silhouette, raw, size = patched_cow_frame(photo=True)
    R_off, T_off = pose.rotate(R, torch.tensor([[0.03, -0.02, 0.01]])), T * 1.02
    for covered in (False, True):
        results = []
        for compiled in (True, False):
            monkeypatch.setattr(render, "COMPILED_BLEND", compiled)
            frame = frame_fit.Observed(raw, size, None, silhouette)
            assert frame.photo
            if covered:
                frame.covered = torch.zeros_like(frame.mask)
                frame.covered[20:30, 25:35] = 1.0
            poses = pose.SixDoF(R_off, T_off)
            loss, _ = frame_fit.losses(renderers, meshes, *poses(), frame, frame_fit.WEIGHT_COLOUR)
            loss.sum().backward()
            results.append((loss.detach(), poses.rotation.grad.clone(), poses.translation.grad.clone()))
        (loss_a, *grads_a), (loss_b, *grads_b) = results
        assert torch.allclose(loss_a, loss_b, rtol=1e-4)
        for a, b in zip(grads_a, grads_b, strict=True):
            assert a.abs().max() > 0 and torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


@pytest.mark.parametrize("kind", ["photo", "covered", "render"])
def test_the_compiled_step_gives_the_loss_and_gradient_of_autograd(meshes_ready, kind):
    # posefit.compiled_step (a fit's step without autograd, the tracker's CPU default) against losses() and
    # autograd: two poses at once, the motion prior, the light solved robustly (a photo), something in front
    # (covered), and a render's frame (on white, its colours composited as they are).
    from posefit import compiled_step, frame_fit

    renderers, meshes, R, T, silhouette, raw, size = patched_cow_frame(photo=kind != "render")
    frame = frame_fit.Observed(raw, size, None, silhouette if kind != "render" else None)
    assert frame.photo == (kind != "render")
    if kind == "covered":
        frame.covered = torch.zeros_like(frame.mask)
        frame.covered[20:30, 25:35] = 1.0
    assert compiled_step.applies(renderers, meshes, frame, 0.0)
    R2 = torch.cat([pose.rotate(R, torch.tensor([[0.03, -0.02, 0.01]])), pose.rotate(R, torch.tensor([[-0.05, 0.0, 0.02]]))])
    T2 = torch.cat([T * 1.02, T + torch.tensor([[0.05, -0.03, 0.1]])])
    start = torch.tensor([[0.01, 0.02, -0.01], [0.0, -0.01, 0.02]]), torch.tensor([[0.02, 0.0, -0.05], [0.01, 0.01, 0.0]])
    depth, pixels_count, prior_weight = T2[:, 2:], frame.mask.numel(), 0.02
    results = []
    for compiled in (True, False):
        poses = pose.SixDoF(R2, T2)
        with torch.no_grad():
            poses.rotation.copy_(start[0])
            poses.translation.copy_(start[1])
        if compiled:
            loss, share = compiled_step.FrameStep(renderers, meshes.extend(2), frame).loss_and_gradient(
                poses, frame_fit.WEIGHT_COLOUR, (prior_weight, pixels_count, depth), frame_fit.ROBUST_LIGHT_PASSES,
                frame_fit.COLOUR_OUTLIER)
        else:
            def prior(poses=poses):
                return prior_weight * pixels_count * ((poses.rotation**2).sum(1) + ((poses.translation / depth) ** 2).sum(1))
            loss, share = frame_fit.losses(renderers, meshes.extend(2), *poses(), frame, frame_fit.WEIGHT_COLOUR,
                                           prior, frame_fit.ROBUST_LIGHT_PASSES)
            loss.sum().backward()
        results.append((loss.detach(), share, poses.rotation.grad.clone(), poses.translation.grad.clone()))
    (loss_a, share_a, *grads_a), (loss_b, share_b, *grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-4)
    assert torch.allclose(share_a, share_b, atol=1e-6) and not torch.allclose(share_a[0], share_a[1], atol=0.1)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert a.abs().max() > 0 and torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_the_compiled_loops_give_the_same_bits_on_one_thread_on_several_and_off_the_main_thread(meshes_ready):
    # posefit.threads: the step's loops share their pixels among numba's threads from the main thread (each
    # pixel's numbers its own, the sums added afterwards in the pixels' order) and run serially from any other
    # thread (numba's fallback pool aborts on parallel launches from two threads). The compiled step (the
    # rasterization, the blend, the photo's colour term and their gradients) and the autograd path's
    # rasterizer gradient must come out the same to the bit every way.
    import threading

    import numba

    from posefit import compiled_step, frame_fit, threads

    renderers, meshes, R, T, silhouette, raw, size = patched_cow_frame(photo=True)
    frame = frame_fit.Observed(raw, size, None, silhouette)
    frame.covered = torch.zeros_like(frame.mask)
    frame.covered[20:30, 25:35] = 1.0
    R2 = torch.cat([pose.rotate(R, torch.tensor([[0.03, -0.02, 0.01]])), pose.rotate(R, torch.tensor([[-0.05, 0.0, 0.02]]))])
    T2 = torch.cat([T * 1.02, T + torch.tensor([[0.05, -0.03, 0.1]])])

    def step():
        poses = pose.SixDoF(R2, T2)
        loss, share = compiled_step.FrameStep(renderers, meshes.extend(2), frame).loss_and_gradient(
            poses, frame_fit.WEIGHT_COLOUR, None, frame_fit.ROBUST_LIGHT_PASSES, frame_fit.COLOUR_OUTLIER)
        R_leaf = R2.clone().requires_grad_()
        fragments = renderers.textured.rasterizer(meshes.extend(2), R=R_leaf, T=T2)
        (fragments.dists.clamp(min=0).sum() * 1e3 + fragments.zbuf.clamp(min=0).sum()).backward()
        return [loss, share, poses.rotation.grad, poses.translation.grad, fragments.pix_to_face, fragments.dists,
                R_leaf.grad]

    cores = numba.get_num_threads()
    results, workers = {}, {}
    try:
        for count in sorted({1, cores}):
            numba.set_num_threads(count)
            workers[count], results[count] = threads.workers(), step()

        def elsewhere():
            workers["thread"], results["thread"] = threads.workers(), step()

        worker = threading.Thread(target=elsewhere)
        worker.start()
        worker.join()
    finally:
        numba.set_num_threads(cores)
    assert workers[1] == 1 and workers[cores] == cores and workers["thread"] == 1
    assert results[1][0].abs().min() > 0 and results[1][2].abs().max() > 0 and results[1][6].abs().max() > 0
    for way in results:
        for got, want in zip(results[way], results[1], strict=True):
            assert torch.equal(got, want), way


def test_numbas_threads_leave_torchs_thread_count_alone():
    # numba's OpenMP layer and torch share one runtime (torch's libgomp.so.1): starting numba's threads after
    # torch had started its own set torch's thread count to the cores', and the book's cow fit moved
    # (posefit.threads keeps it). A fresh process, since each starts its threads once.
    code = (
        "import torch, numpy as np; torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1  # (torch starts its own threads at its first use)\n"
        "from posefit import raster_kernels, threads\n"
        "threads.workers()\n"
        "faces = np.array([[[-0.9, -0.9, 1.0], [0.9, -0.9, 1.0], [0.0, 0.9, 1.0]]], dtype=np.float32)\n"
        "centres = (np.arange(8, dtype=np.float32) - 3.5) / 4\n"
        "out = [np.full((64, 2), -1, np.int64)] + [np.full((64, 2), -1.0, np.float32) for _ in range(2)]\n"
        "raster_kernels.rasterize(faces, np.zeros(1, np.int64), centres, centres, 8, 8, 2, np.float32(0.0), True,"
        " False, False, out[0], out[1], np.full((64, 2, 3), -1.0, np.float32), out[2], np.zeros(64, np.int32))\n"
        "assert (out[0] >= 0).sum() > 10, out[0]\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=CHAP4, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


def test_a_photos_edge_pixel_is_matched_at_its_true_share_only_when_mixed_as_light():
    # A camera averages the light over a pixel, then encodes it: a bright object covering 40% of a pixel over a
    # dark floor. encoded_composite reproduces that pixel at the object's true share; mixing the encoded colours
    # (a render's way) needs a larger share, i.e. a bright object fitted too large, too close.
    from posefit import frame_fit

    bright, dark, coverage = torch.tensor([0.9, 0.85, 0.8]), torch.tensor([0.25, 0.3, 0.2]), 0.4
    light = coverage * frame_fit.to_linear(bright) + (1 - coverage) * frame_fit.to_linear(dark)
    pixel = frame_fit.to_srgb(light)
    assert torch.allclose(frame_fit.to_linear(pixel), light, atol=1e-6)  # the two transfer functions invert
    share = torch.full((1, 1, 1, 1), coverage)
    composite = frame_fit.encoded_composite(share, bright.reshape(1, 1, 1, 3), frame_fit.to_linear(dark).reshape(1, 1, 3))
    assert torch.allclose(composite.reshape(3), pixel, atol=1e-5)
    encoded_share = (pixel - dark) / (bright - dark)  # the share at which the encoded colours' mix matches
    assert (encoded_share > coverage + 0.1).all()
    # Wholly the object, it is the object's colour; not at all, the backdrop's (a light's values below 0 too).
    shaded = torch.tensor([[-0.05, 0.5, 1.1]]).reshape(1, 1, 1, 3)
    behind = frame_fit.to_linear(torch.tensor([0.0, 0.3, 0.7])).reshape(1, 1, 3)
    for share, expected in ((1.0, shaded.reshape(3)), (0.0, torch.tensor([0.0, 0.3, 0.7]))):
        out = frame_fit.encoded_composite(torch.full((1, 1, 1, 1), share), shaded, behind)
        assert torch.allclose(out.reshape(3), expected, atol=1e-5)


def test_a_post_in_front_skews_the_plain_light_but_not_the_robust_one():
    # A third of the object's pixels covered by a red post: solved on every pixel, the light makes up for the
    # post (its ambient and direction skewed, every pixel's shading wrong); reweighted as the colour term
    # weighs the pixels, it comes back near the true light. Without a post the two agree.
    from posefit import frame_fit, targets

    g = torch.Generator().manual_seed(0)
    H, W = 24, 30
    albedo = torch.where(torch.rand(1, H, W, 1, generator=g) < 0.4, 0.1, 0.85).expand(1, H, W, 3).contiguous()
    normals = torch.nn.functional.normalize(torch.randn(1, H, W, 3, generator=g) + torch.tensor([0, 0, -1.5]), dim=-1)
    true = torch.tensor([[0.55, 0.5, 0.45, 0.1, 0.3, -0.35, 0.02, 0.03, 0.01]])
    clean = targets.shade(albedo, normals, true)[0]
    weights = torch.ones(1, H, W)
    covered = clean.clone()
    covered[:, 10:20] = torch.tensor([0.7, 0.15, 0.12])  # the post, over a third of the columns

    def error(light):
        return float((targets.shade(albedo, normals, light) - clean).norm(dim=-1)[0, :, :10].mean())

    plain = targets.solve_light(albedo, normals, covered, weights)
    robust = frame_fit.robust_light(albedo, normals, covered, weights, frame_fit.ROBUST_LIGHT_PASSES)
    assert error(plain) > 0.05  # the shading of the pixels the post leaves alone, off by 5% of white or more
    assert error(robust) < 0.5 * error(plain)
    unharmed = frame_fit.robust_light(albedo, normals, clean, weights, frame_fit.ROBUST_LIGHT_PASSES)
    assert error(unharmed) < 0.01 and abs(error(unharmed) - error(targets.solve_light(albedo, normals, clean, weights))) < 1e-3


def test_a_pose_that_shows_nothing_is_lost_even_against_an_empty_mask():
    # A fitted pose whose silhouette is empty (the object gone far away or behind the camera) must not pass
    # for a perfect fit of an empty mask (IoU 1): the tracker would follow it for ever.
    empty = torch.zeros(6, 8, dtype=torch.bool)
    mask = empty.clone()
    mask[2:4, 2:5] = True
    assert track_pose.tracked_iou(empty, empty) == 0.0
    assert track_pose.tracked_iou(empty, mask) == 0.0
    assert track_pose.tracked_iou(mask, mask) == 1.0


@pytest.mark.parametrize("kind", ["fast", "stock"])
def test_the_hard_silhouette_in_a_window_is_the_whole_images(meshes_ready, kind):
    # Rendered in a window around it, or in one that cuts it (then the whole image is rasterized), the
    # silhouette is the whole image's, pixel for pixel.
    mesh = load_objs_as_meshes([data.provision_all(data.COW_FILES)[0]])
    plain = mesh.__class__(verts=mesh.verts_list(), faces=mesh.faces_list())
    renderers = render.make_renderers("cpu", (48, 64), rasterizer=kind, faces_per_pixel=8, cull_backfaces=True)
    R, T = track_pose.synthetic_poses(1)
    whole = frame_fit.hard_silhouette(renderers, plain, R, T)
    rows, cols = torch.nonzero(whole, as_tuple=True)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    around = (max(0, y0 - 3), min(48, y1 + 3), max(0, x0 - 3), min(64, x1 + 3))
    cutting = (y0 + 4, y1, x0, x1)
    for window in (around, cutting, (0, 48, 0, 64)):
        assert torch.equal(frame_fit.hard_silhouette(renderers, plain, R, T, window), whole), window


def test_recentring_follows_a_photos_centroid_across_the_view_and_leaves_its_depth():
    H, W = 60, 80
    y, x = np.mgrid[:H, :W]

    def disc(cy, cx, radius):
        return torch.from_numpy((y - cy) ** 2 + (x - cx) ** 2 <= radius**2)

    T = torch.tensor([0.1, -0.2, 4.0])
    silhouette = disc(30, 40, 10)
    # The mask 6 pixels to the image's right and 4 down: the object moves that way (+X is left, +Y up).
    moved = track_pose.recentre(T, silhouette, disc(34, 46, 10), fov=60.0)
    assert moved[0] < T[0] and moved[1] < T[1]
    assert float(moved[2]) == float(T[2])
    # At its depth, the shift across the view is the centroid's in NDC times z tan(fov / 2).
    per_pixel = 2 / H * math.tan(math.radians(30)) * 4.0
    assert float(T[0] - moved[0]) == pytest.approx(6 * per_pixel, rel=0.05)
    assert float(T[1] - moved[1]) == pytest.approx(4 * per_pixel, rel=0.05)
    # A smaller mask on the same centroid (a part hidden, a shaded side lost), or one shifted by a pixel,
    # moves nothing.
    assert torch.equal(track_pose.recentre(T, silhouette, disc(30, 40, 7), fov=60.0), T)
    assert torch.equal(track_pose.recentre(T, silhouette, disc(30, 41, 10), fov=60.0), T)
    # A render's mask is the silhouette itself: its area sets the depth (half the area, sqrt(2) as far).
    render_mask = torch.zeros(H, W, dtype=torch.bool)
    render_mask[::2] = silhouette[::2]
    farther = track_pose.recentre(T, silhouette, render_mask, fov=60.0, photo=False)
    assert float(farther[2]) == pytest.approx(4.0 * math.sqrt(2), rel=0.05)


def test_something_in_front_is_found_where_it_crosses_the_predicted_silhouette_and_reaches_beyond():
    # A disc (the predicted silhouette) crossed by a bar from top to bottom: the bar's pixels are in neither
    # mask, and the bar reaches far beyond the disc; a blob by the disc's edge (a shadow) and a bar that
    # does not touch the disc are not in front of it.
    yy, xx = np.mgrid[:60, :80]
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 <= 15**2
    bar = (xx >= 48) & (xx < 52)
    far = (xx >= 70) & (xx < 73)
    blob = (yy - 44) ** 2 + (xx - 32) ** 2 <= 3**2
    mask = disc & ~bar
    background = ~disc & ~bar & ~far & ~blob
    hidden = masks.in_front(mask, background, disc)
    assert hidden[bar].all(), "the bar, where it covers the disc and beyond"
    assert not hidden[far].any() and not hidden[blob & ~disc].any() and not hidden[mask].any()
    assert not masks.in_front(mask | (bar & disc), background, disc).any(), "nothing in front: nothing found"


def test_the_pixels_a_post_covers_are_told_from_the_object_by_colour_and_reach():
    # A black-and-white object (a disc of patches) on a brown floor, a teal post crossing it from top to
    # bottom: the post's pixels over the disc are found (they are nearer the post's colours than the object's
    # expected ones), the object's own pixels are not, even its black patches; without a post, or with a
    # post of the object's own white (not told apart here), nothing is.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :80]
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 <= 15**2
    patches = np.kron(rng.random((12, 16)) < 0.35, np.ones((5, 5), bool))  # black patches of 5x5 pixels
    expected = np.where(patches[..., None], 0.08, 0.85) * np.ones(3)
    floor = np.array([0.55, 0.36, 0.25])
    frame = np.where(disc[..., None], expected, floor)
    palette = masks.object_palette(frame, disc)
    post = (xx >= 44) & (xx < 50)
    for colour, shade, found in (((0.1, 0.45, 0.45), 0.8 + 0.2 * (yy / 60)[..., None], True),
                                 ((0.85, 0.85, 0.85), 1.0, False)):
        seen = np.where(post[..., None], np.array(colour) * shade, frame) + rng.normal(0, 0.01, frame.shape)
        sure_object = disc | post
        covered = masks.covered_by_front(seen, disc, sure_object, expected, palette)
        if found:
            assert masks.iou(covered, post & disc) > 0.9, "the post's pixels over the object"
            assert not covered[disc & ~post].any(), "the object's own pixels, black patches included"
        else:
            assert not covered.any(), "a post coloured like the object is not told from it"
    assert not masks.covered_by_front(frame, disc, disc.copy(), expected, palette).any(), "no post: nothing"


def test_a_photo_frame_keeps_the_predicted_object_behind_something_in_front():
    # A white box on a terracotta floor, a navy post crossing its right side and reaching well above and
    # below it. Drawn around the box's silhouette, the mask keeps the box behind the post (the mask drawn
    # around the silhouette alone gives the post's pixels there to the floor), and the post's pixels beyond
    # the box do not count.
    rng = np.random.default_rng(0)
    pixels = np.full((48, 64, 3), (176, 104, 76), np.float32)
    box = np.zeros((48, 64), bool)
    box[12:36, 18:42] = True
    pixels[box] = (235, 235, 235)
    post = np.zeros((48, 64), bool)
    post[4:44, 37:43] = True
    pixels[post] = (40, 58, 108)
    noisy = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
    frame = frame_fit.Observed(video.RawFrame(0, None, noisy), (48, 64), silhouette=torch.from_numpy(box))
    mask, weight = frame.mask.numpy() > 0.5, frame.weight.numpy()
    prepared = video.prepare(video.RawFrame(0, None, noisy), (48, 64))
    refined = masks.refine_with_silhouette(prepared.values, box, background_mask=prepared.backdrop[0])
    assert not refined[box & post].all(), "(the refined mask alone gives some of the post to the floor)"
    assert mask[box].all(), "the box, behind the post too"
    beyond = post & ~ndimage.binary_dilation(box, iterations=1) & ~mask
    assert beyond.sum() > 60 and (weight[beyond] == 0).all()
    assert weight[2, 2] == 1 and weight[24, 28] == 1
    pixels[post], pixels[box] = (176, 104, 76), (235, 235, 235)  # no post: every pixel off the outline counts
    noisy = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
    plain = frame_fit.Observed(video.RawFrame(0, None, noisy), (48, 64), silhouette=torch.from_numpy(box))
    assert (plain.weight.numpy()[post & ~ndimage.binary_dilation(box, iterations=1)] == 1).all()
