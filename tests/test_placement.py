"""Prompt placement on planted score maps whose answer is known, and the reference patch classifier."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gpoa.config import PlacementConfig, load_config
from gpoa.errors import UsageError
from gpoa.grid import PatchGrid
from gpoa.matching import build_reference
from gpoa.placement import (
    PatchScores,
    fit_patch_classifier,
    margin_scores,
    place_prompts,
    predict_region,
    reference_foreground_share,
    region_correlation,
    score_patches,
)

GRID = PatchGrid.square(560, 14)  # 40 x 40
WIDE = PatchGrid.for_working_size((560, 420), 14)  # 30 rows x 40 cols
SETTINGS = PlacementConfig()


def disc(grid: PatchGrid, row: float, col: float, radius: float) -> np.ndarray:
    """(N,) bool: patches whose centre cell lies within ``radius`` cells of (row, col)."""
    r, c = grid.index_to_rc(np.arange(grid.num_patches))
    return (r - row) ** 2 + (c - col) ** 2 <= radius ** 2


def planted(grid: PatchGrid, objects: list, seed: int = 0, noise: float = 0.05,
            low: float = -0.5) -> np.ndarray:
    """A score map (N,): ``low`` + noise everywhere, (value + noise) on each (mask, value) of ``objects``."""
    rng = np.random.default_rng(seed)
    scores = low + noise * rng.standard_normal(grid.num_patches)
    for mask, value in objects:
        scores[mask] = value + noise * rng.standard_normal(int(mask.sum()))
    return scores


def distance_to(grid: PatchGrid, indices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Distance (patch units, centre to centre) of each index to the nearest patch of ``mask``."""
    return grid.pixel_distance(indices, np.flatnonzero(mask)).min(axis=1) / grid.patch_size


def place(scores, share, grid=GRID, settings=SETTINGS, seed=0):
    return place_prompts(scores, grid, share, settings, np.random.default_rng(seed))


# ----- one object ----------------------------------------------------------------------------------


def test_positives_spread_inside_negatives_in_the_ring():
    obj = disc(GRID, 20, 18, 7)
    placement = place(planted(GRID, [(obj, 0.5)]), share=obj.mean())
    pos, neg = placement.positive_indices, placement.negative_indices
    assert len(pos) == SETTINGS.n_positive and len(neg) == SETTINGS.n_negative
    assert obj[pos].all()
    # interior: no positive on the object's edge (every 8-neighbour is object too)
    r, c = GRID.index_to_rc(pos)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            assert obj[GRID.rc_to_index(r + dr, c + dc)].all()
    # spread: farthest-point sampling over a disc of radius ~6 keeps the 8 points apart
    distance = GRID.pixel_distance(pos, pos) / GRID.patch_size
    assert distance[~np.eye(len(pos), dtype=bool)].min() >= 3.0
    # negatives outside, in a thin ring (within the ring width of the object)
    assert not obj[neg].any()
    d = distance_to(GRID, neg, obj)
    assert (d > SETTINGS.ring_inner).all() and (d <= SETTINGS.ring_outer + 1e-9).all()
    assert placement.confident and placement.confidence > 0.9
    assert np.array_equal(placement.region, obj)


def test_region_size_is_the_reference_share_grown_by_the_margin_vote():
    obj = disc(GRID, 20, 20, 6)
    scores = planted(GRID, [(obj, 0.5)])
    n = GRID.num_patches
    # the reference object was as large: exactly the disc
    candidates, _ = predict_region(scores, GRID, obj.mean(), SETTINGS)
    assert np.array_equal(candidates, obj)
    # the reference object was 1.5x as large: never fewer patches than the reference's share (the
    # disc and its best-scoring surroundings)
    candidates, _ = predict_region(scores, GRID, 1.5 * obj.mean(), SETTINGS)
    assert candidates.sum() == round(1.5 * obj.mean() * n) and candidates[obj].all()
    # the reference object was 1.5x smaller: the margin vote grows the region to the whole disc
    candidates, _ = predict_region(scores, GRID, obj.mean() / 1.5, SETTINGS)
    assert np.array_equal(candidates, obj)
    # the reference object was 4x smaller: the vote grows it to at most twice the reference's share,
    # the best-scoring patches
    ranked = scores + np.where(obj, np.linspace(0, 0.2, n), 0)
    candidates, _ = predict_region(ranked, GRID, obj.mean() / 4, SETTINGS)
    assert candidates.sum() == round(2 * obj.mean() / 4 * n) and obj[candidates].all()


def test_non_square_grid():
    obj = disc(WIDE, 12, 30, 5)
    placement = place(planted(WIDE, [(obj, 0.5)]), share=obj.mean(), grid=WIDE)
    assert obj[placement.positive_indices].all() and not obj[placement.negative_indices].any()
    assert placement.region.shape == (WIDE.num_patches,)


# ----- several pieces ------------------------------------------------------------------------------


def test_every_instance_gets_positives_and_strays_are_dropped():
    a, b = disc(GRID, 10, 10, 5), disc(GRID, 28, 28, 4)
    stray = np.zeros(GRID.num_patches, dtype=bool)
    stray[GRID.rc_to_index(np.array([5, 35]), np.array([35, 5]))] = True  # two lone patches
    scores = planted(GRID, [(a, 0.5), (b, 0.45), (stray, 0.3)])
    placement = place(scores, share=(a | b).mean())
    pos = placement.positive_indices
    assert a[pos].any() and b[pos].any() and (a | b)[pos].all()
    assert a[pos].sum() >= b[pos].sum()  # shared by size, the larger instance gets at least as many
    assert not placement.region[stray].any()
    # negatives never on any candidate patch (an instance, or a stray that looks like the object)
    assert not placement.candidates[placement.negative_indices].any()


def test_keep_ratio_one_keeps_only_the_heaviest_piece():
    a, b = disc(GRID, 10, 10, 5), disc(GRID, 28, 28, 4)
    settings = PlacementConfig(keep_ratio=1.0)
    placement = place(planted(GRID, [(a, 0.5), (b, 0.45)]), share=(a | b).mean(), settings=settings)
    assert np.array_equal(placement.region, a)
    assert a[placement.positive_indices].all()


def test_pieces_beyond_the_positive_count_leave_the_lightest_out():
    centres = [(5 + 10 * (k // 4), 5 + 10 * (k % 4)) for k in range(12)]
    objects = [(disc(GRID, r, c, 1.5), 0.5 - 0.01 * k) for k, (r, c) in enumerate(centres)]
    union = np.any([m for m, _ in objects], axis=0)
    placement = place(planted(GRID, objects, noise=0.0), share=union.mean())
    assert len(placement.positive_indices) == SETTINGS.n_positive
    hit = [m[placement.positive_indices].any() for m, _ in objects]
    assert hit == [True] * 8 + [False] * 4


# ----- edge cases ----------------------------------------------------------------------------------


def test_tiny_object():
    obj = np.zeros(GRID.num_patches, dtype=bool)
    obj[GRID.rc_to_index(30, 7)] = True
    placement = place(planted(GRID, [(obj, 0.5)]), share=1 / GRID.num_patches)
    assert list(placement.positive_indices) == [int(np.flatnonzero(obj)[0])]
    assert len(placement.negative_indices) == SETTINGS.n_negative
    assert (distance_to(GRID, placement.negative_indices, obj) <= SETTINGS.ring_outer + 1e-9).all()


def test_huge_object():
    obj = ~disc(GRID, 20, 20, 8)  # everything but a hole: ~87 % of the image
    placement = place(planted(GRID, [(obj, 0.5)]), share=obj.mean())
    assert obj[placement.positive_indices].all() and len(placement.positive_indices) == SETTINGS.n_positive
    assert not obj[placement.negative_indices].any()
    assert len(placement.negative_indices) == SETTINGS.n_negative


def test_nothing_looks_like_the_object():
    scores = planted(GRID, [], low=-0.5)  # every margin negative, only noise
    placement = place(scores, share=0.1)
    assert len(placement.positive_indices) >= 1  # like matching, at least one positive
    assert len(placement.negative_indices) == SETTINGS.n_negative
    assert not np.isin(placement.negative_indices, placement.positive_indices).any()


def test_everything_looks_like_the_object():
    placement = place(np.full(GRID.num_patches, 0.3), share=0.6)  # flat and positive everywhere
    assert placement.region.all() and not placement.confident
    assert len(placement.positive_indices) == SETTINGS.n_positive
    assert len(placement.negative_indices) == 0  # no patch is below the threshold


def test_unsure_placement_spreads_over_every_candidate_piece():
    # three weak blobs on a map whose spread lies elsewhere (one half of the image far below the
    # other): the region explains little of the map, so no piece is trusted over the others
    a, b, c = disc(GRID, 8, 8, 3), disc(GRID, 30, 10, 1), disc(GRID, 20, 32, 1)
    half = GRID.index_to_rc(np.arange(GRID.num_patches))[1] < 20
    scores = planted(GRID, [(a, 0.3), (b, 0.15), (c, 0.12)], noise=0.02, low=-0.2) - 1.0 * (half & ~(a | b))
    share = (a | b | c).mean()
    placement = place(scores, share=share)
    assert not placement.confident and placement.confidence < SETTINGS.min_correlation
    assert np.array_equal(placement.region, a | b | c)
    assert all(m[placement.positive_indices].any() for m in (a, b, c))
    # with the check off the light pieces (mass < keep_ratio x the heaviest's) are dropped
    sure = place(scores, share=share, settings=PlacementConfig(min_correlation=-1.0))
    assert sure.confident and np.array_equal(sure.region, a)


def test_deterministic_for_a_seed():
    a, b = disc(GRID, 10, 10, 5), disc(GRID, 28, 28, 4)
    scores = planted(GRID, [(a, 0.5), (b, 0.45)])
    one, two = place(scores, (a | b).mean(), seed=7), place(scores, (a | b).mean(), seed=7)
    assert np.array_equal(one.positive_indices, two.positive_indices)
    assert np.array_equal(one.negative_indices, two.negative_indices)


def test_region_correlation():
    region = disc(GRID, 20, 20, 6)
    assert region_correlation(np.where(region, 1.0, 0.0), region) == pytest.approx(1.0)
    assert region_correlation(np.where(region, 0.0, 1.0), region) == pytest.approx(-1.0)
    assert region_correlation(np.ones(GRID.num_patches), region) == 0.0
    everything = np.ones(GRID.num_patches, bool)
    assert region_correlation(np.arange(GRID.num_patches, dtype=float), everything) == 0.0


@pytest.mark.parametrize("overrides, key", [
    (["placement.ranking=best"], "placement.ranking"),
    (["placement.n_positive=0"], "placement.n_positive"),
    (["placement.min_share=2.0", "placement.max_share=1.0"], "placement.min_share"),
    (["placement.ring_inner=3.0", "placement.ring_outer=2.0"], "placement.ring_inner"),
    (["placement.keep_ratio=1.5"], "placement.keep_ratio"),
    (["placement.regularisation=0"], "placement.regularisation"),
])
def test_settings_are_checked_where_every_setting_is(overrides, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_scores_and_regions_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="logistic view"):
        PatchScores(margin=np.zeros(4)).ranking("fusion")
    with pytest.raises(ValueError, match="patches"):
        predict_region(np.zeros(10), GRID, 0.1, SETTINGS)


# ----- scores and the classifier -------------------------------------------------------------------

D = 16


def features(n: int, direction: int, rng: np.random.Generator, spread: float = 0.3) -> np.ndarray:
    """(n, D) features around the unit vector e_direction plus a shared component and noise."""
    x = spread * rng.standard_normal((n, D))
    x[:, direction] += 1.0
    x[:, -1] += 1.0  # like the handcrafted constant dimension
    return x.astype(np.float32)


def planted_reference(rng: np.random.Generator, grid: PatchGrid = GRID):
    """A reference image whose mask is a disc: object patches around e_0, background around e_1."""
    obj = disc(grid, 20, 20, 8).reshape(grid.rows, grid.cols)
    feats = np.where(obj[..., None], features(grid.num_patches, 0, rng).reshape(grid.rows, grid.cols, D),
                     features(grid.num_patches, 1, rng).reshape(grid.rows, grid.cols, D))
    return build_reference([feats], [obj.astype(float)], foreground_fraction=0.5), obj.reshape(-1)


def test_classifier_separates_planted_features():
    rng = np.random.default_rng(0)
    reference, _ = planted_reference(rng)
    start = time.perf_counter()
    classifier = fit_patch_classifier(reference)
    assert time.perf_counter() - start < 1.0
    fg, bg = classifier.score(features(500, 0, rng)), classifier.score(features(500, 1, rng))
    assert classifier.weights.shape == (D,) and fg.shape == (500,) and fg.dtype == np.float32
    assert (fg > 0).mean() > 0.97 and (bg < 0).mean() > 0.97
    # the features are unit-normalised first: scaling a feature does not change its score
    x = features(5, 0, rng)
    np.testing.assert_allclose(classifier.score(x), classifier.score(7.0 * x), rtol=1e-5, atol=1e-5)
    # (rows, cols, D) grids are scored like their flattening
    np.testing.assert_allclose(classifier.score(x.reshape(1, 5, D)), classifier.score(x), rtol=1e-6)


def test_classifier_is_not_swamped_by_a_small_object():
    rng = np.random.default_rng(1)
    obj = disc(GRID, 20, 20, 2).reshape(40, 40)  # 13 of 1600 patches
    feats = np.where(obj[..., None], features(1600, 0, rng).reshape(40, 40, D),
                     features(1600, 1, rng).reshape(40, 40, D))
    reference = build_reference([feats], [obj.astype(float)], foreground_fraction=0.5)
    classifier = fit_patch_classifier(reference)
    assert (classifier.score(features(200, 0, rng)) > 0).mean() > 0.9


def test_scores_and_placement_on_planted_target_features():
    rng = np.random.default_rng(2)
    reference, _ = planted_reference(rng)
    # target: two instances of the object, elsewhere background
    a, b = disc(GRID, 10, 12, 5), disc(GRID, 28, 26, 6)
    target = np.where((a | b)[:, None], features(1600, 0, rng), features(1600, 1, rng))
    scores = score_patches(reference, target.reshape(40, 40, D), fit_patch_classifier(reference))
    assert scores.margin.shape == (1600,) and scores.logistic.shape == (1600,)
    np.testing.assert_allclose(scores.margin, margin_scores(reference, target))
    share = reference_foreground_share(reference)
    for ranking in ("margin", "logistic", "fusion"):
        settings = PlacementConfig(ranking=ranking)
        placement = place_prompts(scores, GRID, share, settings, np.random.default_rng(0))
        pos, neg = placement.positive_indices, placement.negative_indices
        assert (a | b)[pos].all() and a[pos].any() and b[pos].any(), ranking
        assert not (a | b)[neg].any() and len(neg) == 8, ranking
        assert placement.confident, ranking
