"""The patch grid (index ↔ cell ↔ working pixel ↔ original pixel, mask fractions, distances) and the
prompt sets built on it (point prompts, ideal prompts, farthest-point sampling)."""

from __future__ import annotations

import numpy as np
import pytest

from gpoa.errors import UsageError
from gpoa.grid import PatchGrid
from gpoa.prompts import PointPrompts, PromptSet, farthest_point_order, sample_ideal_prompts

SQUARE = PatchGrid.square(560, 14)  # 40 x 40
WIDE = PatchGrid.for_working_size((560, 420), 14)  # 30 rows x 40 cols


# ----- construction ------------------------------------------------------------------------------


def test_square_and_non_square_shapes():
    assert (SQUARE.rows, SQUARE.cols, SQUARE.num_patches) == (40, 40, 1600)
    assert (WIDE.rows, WIDE.cols, WIDE.num_patches) == (30, 40, 1200)
    assert WIDE.working_size == (560, 420)


@pytest.mark.parametrize("working_size, patch", [((560, 421), 14), ((500, 560), 14), ((560, 560), 0)])
def test_working_size_not_divisible_by_patch_is_a_usage_error(working_size, patch):
    with pytest.raises(UsageError, match="multiple of the patch size"):
        PatchGrid.for_working_size(working_size, patch)


def test_square_not_divisible_is_a_usage_error():
    with pytest.raises(UsageError):
        PatchGrid.square(500, 14)


@pytest.mark.parametrize("grid", [SQUARE, WIDE])
def test_to_dict_from_dict_round_trip(grid):
    data = grid.to_dict()
    assert data == {"rows": grid.rows, "cols": grid.cols, "patch_size": 14,
                    "working_size": list(grid.working_size)}
    assert PatchGrid.from_dict(data) == grid


def test_from_dict_rejects_inconsistent_rows_and_cols():
    data = WIDE.to_dict()
    data["rows"], data["cols"] = data["cols"], data["rows"]
    with pytest.raises(ValueError, match="do not match"):
        PatchGrid.from_dict(data)


# ----- indices, cells and pixels -----------------------------------------------------------------


@pytest.mark.parametrize("grid", [SQUARE, WIDE])
def test_index_cell_round_trip(grid):
    index = np.arange(grid.num_patches)
    row, col = grid.index_to_rc(index)
    assert row.max() == grid.rows - 1 and col.max() == grid.cols - 1
    np.testing.assert_array_equal(row * grid.cols + col, index)  # row-major
    np.testing.assert_array_equal(grid.rc_to_index(row, col), index)


@pytest.mark.parametrize("grid", [SQUARE, WIDE])
def test_index_working_pixel_round_trip(grid):
    index = np.arange(grid.num_patches)
    xy = grid.index_to_working_xy(index)
    assert xy.shape == (grid.num_patches, 2)
    np.testing.assert_array_equal(grid.working_xy_to_index(xy), index)


@pytest.mark.parametrize("grid", [SQUARE, WIDE])
@pytest.mark.parametrize("original_size", [(640, 480), (333, 517), (560, 560)])
def test_index_original_pixel_round_trip(grid, original_size):
    index = np.arange(grid.num_patches)
    xy = grid.index_to_original_xy(index, original_size)
    assert np.all((xy > 0) & (xy < np.asarray(original_size)))
    np.testing.assert_array_equal(grid.original_xy_to_index(xy, original_size), index)
    np.testing.assert_allclose(grid.original_to_working(xy, original_size), grid.index_to_working_xy(index))


def test_patch_centres_by_hand_non_square_grid():
    # WIDE: 40 columns of 14 px; index 41 = row 1, col 1; index 40 = row 1, col 0; 1199 = row 29, col 39
    np.testing.assert_array_equal(WIDE.index_to_working_xy([0, 40, 41, 1199]),
                                  [[7, 7], [7, 21], [21, 21], [553, 413]])
    rows, cols = WIDE.index_to_rc([41, 1199])
    assert rows.tolist() == [1, 29] and cols.tolist() == [1, 39]
    # 640x480 original: x scale 640/560 = 8/7, y scale 480/420 = 8/7
    np.testing.assert_allclose(WIDE.index_to_original_xy([0, 41], (640, 480)), [[8, 8], [24, 24]])
    # 333x517 original: independent x and y scales
    np.testing.assert_allclose(WIDE.index_to_original_xy([0], (333, 517)), [[7 * 333 / 560, 7 * 517 / 420]])
    np.testing.assert_allclose(WIDE.scale_to_original((333, 517)), [333 / 560, 517 / 420])


def test_patch_centres_by_hand_square_grid_non_square_original():
    # SQUARE index 81 = row 2, col 1 → working (21, 35) → original 640x480: (24, 30)
    np.testing.assert_array_equal(SQUARE.index_to_working_xy([81]), [[21, 35]])
    np.testing.assert_allclose(SQUARE.index_to_original_xy([81], (640, 480)), [[24, 30]])


def test_working_pixels_map_to_the_patch_containing_them_and_clip_outside():
    # (13.9, 0) is still in column 0; (14, 0) starts column 1; points off the image clip to the border patch
    assert WIDE.working_xy_to_index([[13.9, 0], [14, 0], [0, 14], [-5, -5], [9999, 9999]]).tolist() == \
        [0, 1, 40, 0, 1199]


@pytest.mark.parametrize("bad", [-1, 1200, [0, 1200]])
def test_out_of_range_index_raises_index_error(bad):
    with pytest.raises(IndexError):
        WIDE.index_to_rc(bad)
    with pytest.raises(IndexError):
        WIDE.index_to_working_xy(bad)
    with pytest.raises(IndexError):
        WIDE.index_to_original_xy(bad, (640, 480))


@pytest.mark.parametrize("row, col", [(30, 0), (0, 40), (-1, 0)])
def test_out_of_range_cell_raises_index_error(row, col):
    with pytest.raises(IndexError):
        WIDE.rc_to_index(row, col)


# ----- masks and distances ---------------------------------------------------------------------------


def test_mask_fraction_left_half_of_a_twice_as_large_original():
    grid = PatchGrid.for_working_size((56, 28), 14)  # 2 rows x 4 cols
    mask = np.zeros((56, 112), dtype=bool)  # original is 112 x 56, twice the working size
    mask[:, :56] = True
    fraction = grid.mask_fraction(mask)
    assert fraction.shape == (2, 4)
    np.testing.assert_allclose(fraction, [[1, 1, 0, 0], [1, 1, 0, 0]], atol=1e-6)


def test_mask_fraction_partial_patches():
    grid = PatchGrid.for_working_size((28, 14), 14)  # 1 row x 2 cols
    mask = np.zeros((14, 28), dtype=np.uint8)
    mask[:, :7] = 1  # half of patch 0
    mask[:7, 14:] = 1  # top half of patch 1 ...
    mask[7:, 14:21] = 1  # ... plus a quarter
    np.testing.assert_allclose(grid.mask_fraction(mask), [[0.5, 0.75]], atol=1e-6)


def test_normalised_distance_by_hand():
    grid = PatchGrid.for_working_size((56, 42), 14)  # 3 rows x 4 cols, diagonal hypot(56, 42) = 70
    distance = grid.normalised_distance(np.array([0]), np.array([0, 3, 8, 11]))
    # centres: 0 → (7, 7), 3 → (49, 7), 8 → (7, 35), 11 → (49, 35)
    assert distance.shape == (1, 4)
    np.testing.assert_allclose(distance, [[0.0, 42 / 70, 28 / 70, np.hypot(42, 28) / 70]])
    np.testing.assert_allclose(grid.normalised_distance(np.array([3, 8]), np.array([0])), [[0.6], [0.4]])


# ----- point prompts and prompt sets ---------------------------------------------------------------------


def test_point_prompts_from_xy_labels():
    prompts = PointPrompts.from_xy([[1, 2], [3, 4]], [[5, 6]])
    np.testing.assert_array_equal(prompts.points, [[1, 2], [3, 4], [5, 6]])
    assert prompts.labels.tolist() == [1, 1, 0]
    assert prompts.labels.dtype == np.int64 and len(prompts) == 3
    only_negative = PointPrompts.from_xy(np.zeros((0, 2)), [[5, 6], [7, 8]])
    assert only_negative.labels.tolist() == [0, 0]


def test_point_prompts_reject_mismatched_labels():
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        PointPrompts([[0, 0], [1, 1]], [1])


def test_prompt_set_points_are_scaled_patch_centres():
    prompt_set = PromptSet("a.png", (640, 480), WIDE, [0, 41], [1199])
    np.testing.assert_allclose(prompt_set.positive_points, [[8, 8], [24, 24]])
    np.testing.assert_allclose(prompt_set.negative_points, [[553 * 8 / 7, 413 * 8 / 7]])
    prompts = prompt_set.point_prompts()
    assert prompts.labels.tolist() == [1, 1, 0]


def test_prompt_set_rejects_out_of_range_indices():
    with pytest.raises(IndexError):
        PromptSet("a.png", (640, 480), WIDE, [1200], [])


# ----- ideal prompts and farthest-point sampling ------------------------------------------------------


def object_mask() -> tuple[PatchGrid, np.ndarray]:
    """A 10 x 10 grid (140 px working image) and a 280 x 200 mask whose object covers working
    pixels x 28..84, y 42..98, i.e. exactly the patches of rows 3..6 and cols 2..5."""
    grid = PatchGrid.square(140, 14)
    mask = np.zeros((200, 280), dtype=bool)  # original is 280 wide, 200 high
    sx, sy = 280 / 140, 200 / 140
    mask[round(42 * sy):round(98 * sy), round(28 * sx):round(84 * sx)] = True
    return grid, mask


def test_sample_ideal_prompts_inside_and_outside_the_mask():
    grid, mask = object_mask()
    fraction = grid.mask_fraction(mask).reshape(-1)
    positive, negative = sample_ideal_prompts(grid, mask, 5, 6, np.random.default_rng(0))
    assert len(positive) == 5 and len(negative) == 6
    assert len(set(positive.tolist())) == 5 and len(set(negative.tolist())) == 6
    assert np.all(fraction[positive] >= 0.999)
    assert np.all(fraction[negative] == 0)
    # negatives delimit the object: within 2.5 patches of it
    rows, cols = grid.index_to_rc(negative)
    assert np.all((rows >= 3 - 2) & (rows <= 6 + 2) & (cols >= 2 - 2) & (cols <= 5 + 2))


def test_sample_ideal_prompts_counts_capped_by_available_patches():
    grid, mask = object_mask()
    positive, negative = sample_ideal_prompts(grid, mask, 100, 3, np.random.default_rng(1))
    assert sorted(positive.tolist()) == [r * 10 + c for r in range(3, 7) for c in range(2, 6)]
    assert len(negative) == 3


def test_sample_ideal_prompts_deterministic_for_a_seed():
    grid, mask = object_mask()
    first = sample_ideal_prompts(grid, mask, 4, 4, np.random.default_rng(7))
    second = sample_ideal_prompts(grid, mask, 4, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    others = [sample_ideal_prompts(grid, mask, 4, 4, np.random.default_rng(seed))[0] for seed in range(8)]
    assert len({tuple(p.tolist()) for p in others}) > 1  # the seed matters


def test_farthest_point_order_spreads_points():
    points = np.stack([np.arange(101.0), np.zeros(101)], axis=1)  # 0..100 on a line
    for seed in range(20):
        chosen = farthest_point_order(points, 3, np.random.default_rng(seed))
        assert len(set(chosen.tolist())) == 3
        xs = np.sort(points[chosen, 0])
        assert np.diff(xs).min() >= 25  # the best possible is 50; farthest-point sampling is within 2x
        assert xs[0] == 0 or xs[-1] == 100  # the second point is the farthest from the first: an end


def test_farthest_point_order_second_point_is_farthest_from_first():
    points = np.array([[0, 0], [1, 0], [10, 10], [2, 1]], dtype=float)
    for seed in range(10):
        chosen = farthest_point_order(points, 2, np.random.default_rng(seed))
        distance = np.linalg.norm(points - points[chosen[0]], axis=1)
        assert distance[chosen[1]] == distance.max()


def test_farthest_point_order_edge_cases():
    rng = np.random.default_rng(0)
    assert farthest_point_order(np.zeros((0, 2)), 3, rng).tolist() == []
    assert farthest_point_order(np.ones((5, 2)), 0, rng).tolist() == []
    assert len(farthest_point_order(np.ones((5, 2)), 3, rng)) == 1  # identical points: nothing farther
    assert sorted(farthest_point_order(np.eye(2), 10, rng).tolist()) == [0, 1]  # never more than there are
