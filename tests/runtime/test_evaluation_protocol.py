"""The benchmark metric against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ophreg_rt.evaluation import protocol
from ophreg_rt.evaluation.runner import GRID_POINTS_PER_SIDE, AffineTruth, moving_grid

INF = math.inf


@pytest.mark.parametrize("errors, expected", [
    ([0.5], 1.0),  # below every threshold 1..25
    ([1.0], 24 / 25),  # "below" is strict: 1.0 misses threshold 1, makes 2..25
    ([24.5], 1 / 25),  # only threshold 25
    ([25.0], 0.0),
    ([0.5, INF], 0.5),  # a failed pair never succeeds
    ([10.0, 30.0], 15 * 0.5 / 25),  # 10 px succeeds at 11..25, 30 px nowhere
    ([2.5, 2.5, 0.2, INF], (2 * 0.25 + 23 * 0.75) / 25),  # thresholds 1, 2: one of four
])
def test_auc_of_known_error_lists(errors, expected):
    assert protocol.auc(errors) == pytest.approx(expected, abs=1e-12)


def test_auc_limit_sets_the_thresholds():
    assert protocol.auc([3.5], limit_px=5) == pytest.approx(2 / 5)  # succeeds at 4 and 5
    with pytest.raises(ValueError):
        protocol.auc([3.5], limit_px=0)


def test_an_empty_group_has_no_auc_and_is_left_out_of_the_mean():
    assert protocol.auc([]) is None
    assert protocol.mean_auc([0.3, None, 0.5]) == pytest.approx(0.4)
    assert protocol.mean_auc([None, None]) is None


@pytest.mark.parametrize("errors, verdict", [
    ([1.0, 2.0, 3.0], protocol.ACCEPTABLE),
    ([0.0, 0.0, 51.0], protocol.INACCURATE),  # max > 50
    ([21.0, 21.0, 1.0], protocol.INACCURATE),  # median > 20
    ([50.0, 20.0, 20.0], protocol.ACCEPTABLE),  # both bounds are strict
])
def test_verdicts_follow_the_max_and_median_bounds(errors, verdict):
    scored = protocol.score(np.array(errors))
    assert scored.verdict == verdict
    assert scored.mean_error == pytest.approx(np.mean(errors))
    assert scored.median_error == pytest.approx(np.median(errors))
    assert scored.max_error == pytest.approx(max(errors))


def test_a_failed_registration_scores_infinite_and_counts_as_failed():
    scored = protocol.score(None)
    assert scored.failed and scored.mean_error == INF
    assert protocol.verdict_counts([scored, protocol.score(np.array([1.0]))]) == {
        protocol.FAILED: 1, protocol.INACCURATE: 0, protocol.ACCEPTABLE: 1}
    assert protocol.finite_or_none(scored.mean_error) is None


def test_point_errors_map_the_moving_points_onto_the_fixed_ones():
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    moving = np.array([[10.0, 20.0], [100.0, 5.0]])
    assert protocol.point_errors(shift, moving, moving + [3.0, 4.0]) == pytest.approx([0.0, 0.0])
    assert protocol.point_errors(shift, moving, moving) == pytest.approx([5.0, 5.0])


def test_affine_truth_is_compared_on_a_grid_spanning_the_moving_image_corners_included():
    size = (100, 50)
    grid = moving_grid(size)
    assert len(grid) == GRID_POINTS_PER_SIDE ** 2
    assert {(0.0, 0.0), (99.0, 0.0), (0.0, 49.0), (99.0, 49.0)} <= set(map(tuple, grid))
    truth = AffineTruth(np.eye(3))
    zoom = np.diag([1.01, 1.01, 1.0])  # error 0.01 |p|: 0 at the origin, largest at (99, 49)
    errors = truth.errors(zoom, size)
    assert errors.min() == pytest.approx(0.0)
    assert errors.max() == pytest.approx(0.01 * math.hypot(99, 49))
