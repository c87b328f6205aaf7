"""DAVIS's J and F and the per-clip statistics (gpoa.metrics) against hand-computed cases, empty masks
included, as the DAVIS toolkit (davis2017-evaluation) computes them."""

from __future__ import annotations

import numpy as np
import pytest

from gpoa.metrics import (
    boundary_f,
    boundary_map,
    boundary_radius,
    clip_statistics,
    iou,
    jaccard,
    scored_frames,
)


def stripe(top: int, bottom: int, shape=(100, 100)) -> np.ndarray:
    """Rows top..bottom (inclusive) of a mask, full width."""
    mask = np.zeros(shape, bool)
    mask[top:bottom + 1] = True
    return mask


def test_boundary_map_is_the_toolkits_seg2bmap():
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    # a pixel is on the boundary when it differs from its right, lower or lower-right neighbour:
    # for a 2 x 2 square the rule marks an L above and left of it plus its own lower and right edge
    expected = np.zeros((5, 5), bool)
    for row, col in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]:
        expected[row, col] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)
    assert not boundary_map(np.zeros((5, 5), bool)).any()
    assert not boundary_map(np.ones((5, 5), bool)).any()  # the image border is not a boundary


def test_the_match_radius_is_a_share_of_the_diagonal():
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_radius((100, 100)) == 2  # ceil(1.13)
    assert boundary_radius((100, 100), tolerance=5) == 5  # 1 or more: pixels


def test_boundary_f_matches_within_the_radius_only():
    truth = stripe(40, 59)  # boundary rows 39 and 59 (seg2bmap), 100 pixels each
    assert boundary_f(truth, truth) == 1.0
    # bottom edge 2 rows lower: within the radius of 2, every boundary pixel is matched
    assert boundary_f(stripe(40, 61), truth) == pytest.approx(1.0)
    # 3 rows lower: the top edges match, the bottom ones do not: precision = recall = 1/2
    assert boundary_f(stripe(40, 62), truth) == pytest.approx(0.5)
    # a stripe elsewhere: no boundary pixel matches
    assert boundary_f(stripe(80, 90), truth) == 0.0


def test_boundary_f_with_unequal_boundary_lengths():
    truth = stripe(40, 59)  # 200 boundary pixels
    prediction = np.zeros((100, 100), bool)
    prediction[40:60, :50] = True  # top 39 (cols 0..49: 50 px), bottom 59 (50 px), right edge column 49
    boundary = boundary_map(prediction)
    n_predicted = int(boundary.sum())
    # matched predicted pixels: those within 2 rows of row 39 or 59; matched true pixels: columns 0..51
    near_truth = np.zeros_like(boundary)
    near_truth[37:42] = near_truth[57:62] = True
    precision = np.count_nonzero(boundary & near_truth) / n_predicted
    recall = 2 * 52 / 200
    assert boundary_f(prediction, truth) == pytest.approx(2 * precision * recall / (precision + recall))


def test_empty_masks():
    empty, truth = np.zeros((100, 100), bool), stripe(40, 59)
    assert boundary_f(empty, empty) == 1.0 and iou(empty, empty) == 1.0  # both empty: perfect
    assert boundary_f(empty, truth) == 0.0 and iou(empty, truth) == 0.0  # missed object
    assert boundary_f(truth, empty) == 0.0 and iou(truth, empty) == 0.0  # hallucinated object


def test_boundary_f_refuses_masks_of_two_sizes():
    with pytest.raises(ValueError, match="one size"):
        boundary_f(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_scored_frames_leave_out_the_first_and_the_last():
    assert list(scored_frames(5)) == [1, 2, 3]
    assert list(scored_frames(2)) == [] and list(scored_frames(1)) == []


def test_clip_statistics_mean_recall_and_decay():
    values = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    stats = clip_statistics(values)
    assert stats["mean"] == pytest.approx(0.65)
    assert stats["recall"] == pytest.approx(5 / 8)  # 0.5 is not above 0.5
    # bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first bin frames 0..2, last 5..7
    assert stats["decay"] == pytest.approx(0.9 - 0.4)
    assert clip_statistics([0.7])["decay"] == 0.0
    assert np.isnan(clip_statistics([])["mean"])


def test_void_pixels_are_left_out_of_j_and_f():
    truth, prediction = stripe(40, 59), stripe(40, 69)  # 10 rows too many
    void = stripe(60, 99)  # everything below the true object is void
    assert jaccard(prediction, truth) == pytest.approx(20 / 30) and jaccard(prediction, truth, void) == 1.0
    assert boundary_f(prediction, truth) == pytest.approx(0.5) and boundary_f(prediction, truth, void=void) == 1.0
    assert jaccard(np.zeros((100, 100), bool), truth & void, void) == 1.0  # nothing left outside the void
