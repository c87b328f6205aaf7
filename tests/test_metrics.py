"""Dice, IoU and HD95 against hand-computed values, and the documented empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from gpoa.metrics import all_metrics, dice, dice_batch, hd95, iou


def square(top: int, left: int, size: int = 4, shape=(10, 12)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_squares_offset_by_one_column():
    a, b = square(2, 2), square(2, 3)
    # overlap 4 rows x 3 cols = 12 of 16 + 16 pixels; union 20
    assert dice(a, b) == pytest.approx(2 * 12 / 32)  # 0.75
    assert iou(a, b) == pytest.approx(12 / 20)  # 0.6


def test_squares_offset_diagonally():
    a, b = square(2, 2), square(3, 3)
    # overlap 3 x 3 = 9; union 16 + 16 - 9 = 23
    assert dice(a, b) == pytest.approx(18 / 32)
    assert iou(a, b) == pytest.approx(9 / 23)


def test_identical_and_disjoint_masks():
    a = square(2, 2)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0 and hd95(a, a) == 0.0
    b = square(2, 8)
    assert dice(a, b) == 0.0 and iou(a, b) == 0.0


def test_metrics_accept_non_bool_masks():
    a, b = square(2, 2).astype(np.uint8) * 255, square(2, 3).astype(np.float32)
    assert dice(a, b) == pytest.approx(0.75) and iou(a, b) == pytest.approx(0.6)


@pytest.mark.parametrize("distance", [1, 3, 7])
def test_hd95_of_parallel_lines_is_their_distance(distance):
    a = np.zeros((20, 30), bool)
    b = np.zeros((20, 30), bool)
    a[5, 4:26] = True
    b[5 + distance, 4:26] = True
    assert hd95(a, b) == pytest.approx(distance)
    assert hd95(b, a) == pytest.approx(distance)  # symmetric


def test_hd95_of_vertical_lines_is_their_distance():
    a = np.zeros((30, 20), bool)
    b = np.zeros((30, 20), bool)
    a[3:27, 2] = True
    b[3:27, 12] = True
    assert hd95(a, b) == pytest.approx(10)


def test_hd95_ignores_a_few_outlier_pixels():
    a = np.zeros((50, 100), bool)
    b = np.zeros((50, 100), bool)
    a[10, 0:100] = True
    b[12, 0:100] = True
    b[45, 0] = True  # one far pixel of 201 boundary pixels: below the 95th percentile
    assert hd95(a, b) == pytest.approx(2)


def test_hd95_uses_surfaces_not_interiors():
    # nested squares 10x10 and 6x6 centred, compared by their boundaries only (the inner square's
    # interior, up to 5 pixels from the outer boundary, does not count): the 20 inner boundary pixels
    # and 24 outer edge pixels are 2 away, 8 outer pixels next to a corner sqrt(5), the 4 corners sqrt(8)
    outer = square(5, 5, size=10, shape=(20, 20))
    inner = square(7, 7, size=6, shape=(20, 20))
    distances = [2.0] * 44 + [np.sqrt(5)] * 8 + [np.sqrt(8)] * 4
    assert hd95(outer, inner) == pytest.approx(np.percentile(distances, 95))
    assert hd95(outer, inner) == pytest.approx(np.sqrt(8))


def test_empty_mask_conventions():
    empty = np.zeros((6, 8), bool)
    full = square(1, 1, size=3, shape=(6, 8))
    # both empty: perfect agreement
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    # one empty: worst score; HD95 is the image diagonal hypot(6, 8) = 10
    for prediction, truth in ((empty, full), (full, empty)):
        assert dice(prediction, truth) == 0.0
        assert iou(prediction, truth) == 0.0
        assert hd95(prediction, truth) == pytest.approx(10.0)


def test_all_metrics_combines_the_three():
    a, b = square(2, 2), square(2, 3)
    assert all_metrics(a, b) == {"dice": dice(a, b), "iou": iou(a, b), "hd95": hd95(a, b)}


def test_dice_batch_equals_dice_per_mask():
    rng = np.random.default_rng(0)
    truth = square(2, 2)
    predictions = np.stack([square(2, 3), truth, np.zeros_like(truth), rng.random(truth.shape) < 0.3,
                            np.ones_like(truth)])
    batch = dice_batch(predictions, truth)
    assert batch.shape == (5,) and batch.dtype == np.float64
    np.testing.assert_allclose(batch, [dice(p, truth) for p in predictions])
    assert batch[0] == pytest.approx(0.75) and batch[1] == 1.0 and batch[2] == 0.0


def test_dice_batch_empty_truth():
    empty = np.zeros((5, 5), bool)
    predictions = np.stack([empty, square(0, 0, size=2, shape=(5, 5))])
    np.testing.assert_array_equal(dice_batch(predictions, empty), [1.0, 0.0])
