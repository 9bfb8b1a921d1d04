"""--restarts: the starting lattice, pruning, dropping, ambiguity, and a view that one start misses."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_flags_refused

import diff_render
from posefit import outputs, pose, search

BOOK_START = [3.0, 6.9, 2.5]


def angle_deg(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_starts_are_the_init_then_an_even_lattice_at_its_distance(n):
    starts = search.starting_positions(BOOK_START, n)
    assert len(starts) == n and starts[0] == BOOK_START
    distance = np.linalg.norm(BOOK_START)
    for start in starts[1:]:
        assert np.linalg.norm(start) == pytest.approx(distance)
        assert min(angle_deg(start, (0, 1, 0)), angle_deg(start, (0, -1, 0))) >= search.UP_AXIS_MARGIN_DEG - 1e-9
    if n > 1:
        closest = min(angle_deg(a, b) for i, a in enumerate(starts) for b in starts[i + 1:])
        # Even: no two starts much closer than the spacing of n points on a sphere.
        assert closest > 0.6 * math.degrees(math.sqrt(4 * math.pi / n))
    assert search.starting_positions(BOOK_START, n) == starts, "deterministic"


class Toy(nn.Module):
    """Per row: a weighted squared distance to its own goal; row `nan_row` turns NaN at call `nan_at`."""

    def __init__(self, camera, goals, weights, nan_row=None, nan_at=None):
        super().__init__()
        self.camera = camera
        self.goals, self.weights = goals, weights
        self.rows = list(range(len(goals)))  # the goal of each row, kept in step with pruning
        self.calls, self.nan_row, self.nan_at = 0, nan_row, nan_at

    def forward(self):
        goals, weights = self.goals[self.rows], self.weights[self.rows]
        loss = weights * ((self.camera.camera_position - goals) ** 2).sum(dim=1)
        if self.calls == self.nan_at:
            loss = loss * torch.tensor([float("nan") if r == self.nan_row else 1.0 for r in self.rows])
        self.calls += 1
        return loss


def run_toy(prune_schedule, iterations=20, nan_row=None, nan_at=None, refine_share=0.0):
    """The fitting scripts' loop on the toy: zero_grad, loss, backward, Adam step, Hypotheses.step."""
    hypotheses = search.Hypotheses(pose.LookAt(search.starting_positions(BOOK_START, 4)), iterations=iterations,
                                   lr=0.1, prune_schedule=prune_schedule, refine_share=refine_share)
    goals = torch.tensor(hypotheses.init_positions, dtype=torch.float32) * 0.5
    weights = torch.tensor([4.0, 1.0, 3.0, 2.0])
    model = Toy(hypotheses.poses, goals, weights, nan_row, nan_at)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for i in range(iterations):
        optimizer.zero_grad()
        loss = model()
        loss.sum().backward()
        optimizer.step()
        assert hypotheses.step(i, loss, optimizer) is not None
        model.rows = list(hypotheses.active)
    return hypotheses, model, optimizer


def test_pruning_keeps_the_lowest_losses_and_leaves_them_untouched():
    full, _, _ = run_toy(prune_schedule=())
    pruned, model, optimizer = run_toy(prune_schedule=((0.3, 2),))  # after iteration 5 of 20
    # Row 1 and row 3 have the smallest weights, hence the smallest losses.
    assert pruned.active == [1, 3] and model.camera.camera_position.shape == (2, 3)
    assert pruned.pruned_at == [5, None, 5, None]
    assert optimizer.param_groups[0]["params"][0] is model.camera.camera_position
    # Adam is per element: the survivors move exactly as without pruning.
    for k in (1, 3):
        assert pruned.positions[k] == full.positions[k]
        assert pruned.loss_history[k] == full.loss_history[k]
    for k in (0, 2):
        assert len(pruned.loss_history[k]) == 6, "a pruned hypothesis keeps its last loss and camera"
    assert pruned.best() == 1 == full.best()


def test_a_hypothesis_that_turns_nan_is_dropped_and_the_others_go_on():
    reference, _, _ = run_toy(prune_schedule=())
    hypotheses, model, _ = run_toy(prune_schedule=(), nan_row=2, nan_at=3)
    assert hypotheses.pruned_at == [None, None, 3, None] and hypotheses.dropped[2] == "nan"
    assert hypotheses.active == [0, 1, 3]
    assert all(math.isfinite(v) for p in hypotheses.positions for v in p)
    assert hypotheses.positions[1] == reference.positions[1]


def test_learning_rate_falls_in_the_refinement():
    hypotheses, _, optimizer = run_toy(prune_schedule=(), iterations=20, refine_share=0.5)
    explore = 0.1 * search.EXPLORE_LR_FACTOR
    assert hypotheses.refine_from == 10
    assert hypotheses.lr_at(0) == hypotheses.lr_at(9) == pytest.approx(explore)
    assert hypotheses.lr_at(10) == pytest.approx(explore)
    assert explore > hypotheses.lr_at(15) > hypotheses.lr_at(16) > 0.1 * search.LR_FINAL_FACTOR
    assert hypotheses.lr_at(19) == pytest.approx(0.1 * search.LR_FINAL_FACTOR)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * search.LR_FINAL_FACTOR)
    one = search.Hypotheses(pose.LookAt([BOOK_START]), lr=0.1)
    assert one.lr_at(150) == 0.1, "one start: the book's constant rate"
    assert one.poses.camera_position.shape == (3,), "one start: the book's 3-vector"


def fake_result(positions, ious, losses):
    """The summary of hypotheses that ended at these camera positions with these IoUs and losses."""
    hypotheses = search.Hypotheses(pose.LookAt(positions))
    hypotheses.final_loss = losses
    return hypotheses.summary(ious)


def test_ambiguity_names_a_far_hypothesis_that_fits_as_well():
    mirror = fake_result([[0, 1, 3], [0, 1, -3], [0.1, 1, 3]], [0.980, 0.975, 0.981], [10.0, 11.0, 12.0])
    assert mirror["best_hypothesis"] == 0 and mirror["ambiguous"] is True
    assert mirror["alternative"]["hypothesis"] == 1 and mirror["alternative"]["angle_deg"] > 20
    assert len(mirror["hypotheses"]) == 3
    assert set(mirror["hypotheses"][0]) >= {"init_position", "camera_position", "final_loss", "silhouette_iou",
                                            "pruned_at"}
    worse = fake_result([[0, 1, 3], [0, 1, -3]], [0.980, 0.960], [10.0, 11.0])
    assert worse["ambiguous"] is False and "alternative" not in worse
    near = fake_result([[0, 1, 3], [0.2, 1, 3]], [0.980, 0.980], [10.0, 11.0])
    assert near["ambiguous"] is False, "a hypothesis near the best is the same answer"
    misses = fake_result([[0, 1, 3], [0, 1, -3]], [0.003, 0.001], [10.0, 11.0])
    assert misses["ambiguous"] is False, "two poses that both miss the target are no ambiguity"


def test_the_result_line_names_an_ambiguous_answer(tmp_path, capsys):
    summary = {"iterations": 10, "final_loss": 5.0, "stopped": "max_iterations", "silhouette_iou": 0.98,
               "seconds": 1.0, "best_hypothesis": 0, "hypotheses": [{}, {}], "ambiguous": True,
               "alternative": {"hypothesis": 1, "camera_position": [0.0, 1.0, -3.0], "silhouette_iou": 0.975,
                               "angle_deg": 150.0}}
    assert outputs.report(summary, tmp_path) == 0
    first, last = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("ambiguous: start 1 ends at (0.000 1.000 -3.000), 150 degrees away")
    assert "best of 2 starts: 0" in last


# A view the book's start does not find (it ends 115 degrees off, in another
# local minimum) and eight starts do, at a small size (benchmark view 3).
MISSED_VIEW = {"target_distance": 3.9, "target_elevation": 54.0, "target_azimuth": -179.0}


def test_multistart_recovers_a_view_that_one_start_misses(tmp_path, meshes_ready):
    common = dict(image_size=64, iterations=120, loss_threshold=0, save_every=0, progress=False,
                  background_frames=False, **MISSED_VIEW)
    one = diff_render.fit(output_dir=tmp_path / "one", **common)
    several = diff_render.fit(output_dir=tmp_path / "several", restarts=8, **common)
    assert one["rotation_error_deg"] > 30, one["rotation_error_deg"]
    assert several["rotation_error_deg"] < 5, several["rotation_error_deg"]
    assert several["silhouette_iou"] > 0.95
    best = several["best_hypothesis"]
    assert best != 0 and several["camera_position"] == several["hypotheses"][best]["camera_position"]
    survivors = [h for h in several["hypotheses"] if h["pruned_at"] is None]
    assert len(survivors) == search.PRUNE_SCHEDULE[-1][1]
    assert {h["pruned_at"] for h in several["hypotheses"]} - {None} == {round(search.PRUNE_SCHEDULE[-1][0] * 120) - 1}
    assert several["multistart"]["refine_from"] == round(120 * (1 - search.REFINE_SHARE))
    assert one["hypotheses"][0]["init_position"] == BOOK_START and "multistart" not in one


BAD_FLAGS = [
    ["--restarts", "0"],
    ["--restarts", "-3"],
    ["--restarts", "two"],
    ["--fov", "0"],
    ["--fov", "180"],
    ["--fov", "-10"],
    ["--fov", "nan"],
    ["--background", "0", "0", "0"],  # without --target-image
    ["--target-image", "x.png", "--background", "256", "0", "0"],
    ["--target-image", "x.png", "--background", "-1", "0", "0"],
    ["--target-image", "x.png", "--background", "1", "2"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_multistart_flags_are_refused_cleanly(tmp_path, flags):
    assert_flags_refused(tmp_path, *flags)
