"""gpoa.quality: each label-free statistic on hand-made masks and contexts whose answer is known, the
context of a real episode record, and the ridge estimator's fit and round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import OBJECT, make_cfg, scene

from gpoa.envs import EpisodeBank
from gpoa.envs.mask_view import RegionView
from gpoa.quality import (
    QUALITY_STATISTICS,
    MaskContext,
    MaskVariants,
    QualityEstimator,
    chamfer_reference,
    colour_contrast,
    count_pieces,
    forward_precision,
    log_area_ratio,
    log_components_ratio,
    margin_contrast,
    match_rank_inside,
    match_rank_ring,
    prototype_inside,
    prototype_ring,
    quality_statistics,
    region_agreement,
    reverse_coverage,
    top_coverage,
)
from gpoa.quality import chamfer_inside as chamfer_inside_of
from gpoa.segmenters import cell_means

ROWS, COLS = 6, 6
P = ROWS * COLS
BLOCK = np.array([r * COLS + c for r in (1, 2) for c in (1, 2)])  # the object: a 2 x 2 block
CORNER = np.array([r * COLS + c for r in (4, 5) for c in (4, 5)])  # background, far from the object


def mask(*patches) -> np.ndarray:
    """(1, P) cells: 1 on ``patches``."""
    cells = np.zeros((1, P))
    for group in patches:
        cells[0, np.asarray(group)] = 1.0
    return cells


def hand_context() -> MaskContext:
    """Object = BLOCK: it is the predicted region and the top patches, rank 1, margin +1, a red Lab
    colour, feature e0; background: rank 0, margin -1, grey, feature e1. The reference's 4 foreground
    patches are copies of the object's features, each nearest to its own object patch."""
    on = np.zeros(P, bool)
    on[BLOCK] = True
    view = RegionView(on.astype(np.float32), 1.0, on.copy(), on.astype(np.float32), len(BLOCK) / P)
    margin = np.where(on, 1.0, -1.0)
    lab = np.where(on[:, None], [50.0, 40.0, 0.0], [50.0, 0.0, 0.0])
    features = np.zeros((P, 4), np.float32)
    features[on, 0] = 1.0
    features[~on, 1] = 1.0
    reference_foreground = features[BLOCK]
    cover = features @ reference_foreground.T
    return MaskContext(rows=ROWS, cols=COLS, view=view, margin=margin, margin_scale=float(margin.std()),
                       foreground_similarity=cover.max(axis=1).astype(np.float64), lab=lab,
                       lab_scale=float(lab.std(axis=0).mean()), features=features,
                       prototype_contrast=np.array([1.0, -1.0, 0.0, 0.0], np.float32), instances=1.0,
                       nearest_target=BLOCK.copy(), reference_cover=cover)


@pytest.fixture(scope="module")
def context() -> MaskContext:
    return hand_context()


def test_region_agreement_is_one_for_the_predicted_region_and_zero_off_it(context):
    assert region_agreement(mask(BLOCK), context)[0] == pytest.approx(1.0)
    assert region_agreement(mask(CORNER), context)[0] == pytest.approx(0.0)
    assert region_agreement(mask(BLOCK[:2]), context)[0] == pytest.approx(2 * 2 / (2 + 4))


def test_match_ranks_inside_and_on_the_ring(context):
    assert match_rank_inside(mask(BLOCK), context)[0] == pytest.approx(1.0)
    assert match_rank_ring(mask(BLOCK), context)[0] == pytest.approx(0.0)  # its ring is background
    # half of the object: the other half lies on its ring
    half = mask(BLOCK[:2])
    assert match_rank_inside(half, context)[0] == pytest.approx(1.0)
    assert 0.0 < match_rank_ring(half, context)[0] < 1.0
    assert match_rank_inside(mask(), context)[0] == 0.0 and match_rank_ring(mask(), context)[0] == 0.0


def test_margin_contrast_is_high_on_the_object_and_zero_without_a_ring(context):
    assert margin_contrast(mask(BLOCK), context)[0] == pytest.approx(2.0 / context.margin_scale)
    assert margin_contrast(mask(CORNER), context)[0] == pytest.approx(0.0)  # background inside and around
    assert margin_contrast(np.ones((1, P)), context)[0] == 0.0  # the whole image has no ring
    assert margin_contrast(mask(), context)[0] == 0.0


def test_log_area_ratio_compares_with_the_reference_share(context):
    assert log_area_ratio(mask(BLOCK), context)[0] == pytest.approx(0.0)
    assert log_area_ratio(mask(BLOCK, CORNER), context)[0] == pytest.approx(1.0, abs=0.01)
    assert log_area_ratio(mask(), context)[0] < -5


def test_top_coverage_is_the_share_of_top_patches_covered(context):
    assert top_coverage(mask(BLOCK[:1], CORNER), context)[0] == pytest.approx(0.25)


def test_colour_contrast_is_the_lab_distance_to_the_ring(context):
    assert colour_contrast(mask(BLOCK), context)[0] == pytest.approx(40.0 / context.lab_scale)
    assert colour_contrast(mask(CORNER), context)[0] == pytest.approx(0.0)
    assert colour_contrast(np.ones((1, P)), context)[0] == 0.0


def test_prototype_contrast_inside_and_on_the_ring(context):
    assert prototype_inside(mask(BLOCK), context)[0] == pytest.approx(1.0)
    assert prototype_ring(mask(BLOCK), context)[0] == pytest.approx(-1.0)
    assert prototype_inside(mask(CORNER), context)[0] == pytest.approx(-1.0)
    assert prototype_inside(mask(), context)[0] == 0.0
    # half of the object: the other half on its ring pulls the ring's mean feature towards e0
    assert -1.0 < prototype_ring(mask(BLOCK[:2]), context)[0] < 1.0


def test_log_components_counts_eight_connected_pieces(context):
    assert log_components_ratio(mask(BLOCK), context)[0] == pytest.approx(np.log2(1.5))
    three = mask([0], [5], [30, 31])
    assert log_components_ratio(three, context)[0] == pytest.approx(np.log2(3.5))
    diagonal = mask([0], [7])  # touching at a corner: one piece
    assert log_components_ratio(diagonal, context)[0] == pytest.approx(np.log2(1.5))
    assert log_components_ratio(mask(), context)[0] == pytest.approx(np.log2(0.5))
    # many masks at once: pieces never join across masks
    stack = np.concatenate([three, diagonal, mask(), np.ones((1, P))])
    np.testing.assert_array_equal(count_pieces(stack >= 0.5, ROWS, COLS), [3, 1, 0, 1])


def test_forward_precision_and_reverse_coverage(context):
    assert forward_precision(mask(BLOCK[:2], CORNER[:2]), context)[0] == pytest.approx(0.5)
    assert reverse_coverage(mask(BLOCK), context)[0] == pytest.approx(1.0)
    assert reverse_coverage(mask(BLOCK[:1], CORNER), context)[0] == pytest.approx(0.25)


def test_chamfer_statistics_prefer_the_patches_that_look_like_the_reference(context):
    on_object, on_background = mask(BLOCK), mask(CORNER)
    assert chamfer_reference(on_object, context)[0] == pytest.approx(1.0)
    assert chamfer_reference(on_background, context)[0] == pytest.approx(0.0)
    assert chamfer_inside_of(on_object, context)[0] == pytest.approx(1.0)
    assert chamfer_inside_of(mask(BLOCK, CORNER), context)[0] == pytest.approx(0.5)
    assert chamfer_reference(mask(), context)[0] == 0.0


def test_statistics_of_many_masks_stack_the_single_ones(context):
    rng = np.random.default_rng(0)
    cells = rng.random((5, P)) ** 2
    table = quality_statistics(cells.reshape(5, ROWS, COLS), context)
    assert table.shape == (5, len(QUALITY_STATISTICS))
    for b in range(5):
        np.testing.assert_allclose(quality_statistics(cells[b:b + 1], context)[0], table[b], atol=1e-9)
    with pytest.raises(ValueError, match="patch grid"):
        quality_statistics(np.zeros((1, P + 1)), context)


@pytest.fixture(scope="module")
def record():
    """The episode record of the synthetic scene (its object OBJECT looks like the reference's)."""
    return EpisodeBank([scene()], make_cfg()).record(0)


def test_context_of_a_record_precomputes_the_similarity_to_the_reference(record):
    context = MaskContext.of(record)
    sample = record.sample
    reference = sample.reference
    features = sample.target_features.reshape(P_SCENE := sample.grid.num_patches, -1)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    expected = unit @ reference.features[reference.foreground].T
    assert context.reference_cover.shape == (P_SCENE, int(reference.foreground.sum()))
    np.testing.assert_allclose(context.reference_cover, expected, atol=1e-5)
    np.testing.assert_array_equal(context.nearest_target, expected.argmax(axis=0))
    np.testing.assert_allclose(context.foreground_similarity, expected.max(axis=1), atol=1e-5)
    assert context.lab.shape == (P_SCENE, 3) and 0.0 <= context.lab[:, 0].min() <= context.lab[:, 0].max() <= 100.0
    # the reference object is found in the scene's object, not in its background
    cells = np.zeros((3, P_SCENE))
    cells[0, OBJECT] = 1.0
    cells[1, np.setdiff1d(np.arange(P_SCENE), OBJECT)[:len(OBJECT)]] = 1.0
    cells[2, ::3] = 0.7
    presence = chamfer_reference(cells, context)
    assert presence[0] > presence[1] + 0.3
    # as the brute-force masked maximum over all target patches
    brute = [expected[cells[b] >= 0.5].max(axis=0).mean() for b in range(3)]
    np.testing.assert_allclose(presence, brute, atol=1e-5)


def test_cell_means_are_the_mean_of_each_mask_cell():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 37, 53))
    rows, cols = 10, 12
    row_of, col_of = np.arange(37) * rows // 37, np.arange(53) * cols // 53
    expected = [[[v[np.ix_(row_of == r, col_of == c)].mean() for c in range(cols)] for r in range(rows)]
                for v in values]
    np.testing.assert_allclose(cell_means(values, (rows, cols)), expected, atol=1e-5)


# ----- the estimator ---------------------------------------------------------------------------------
def linear_images(coefficients: np.ndarray, bias: float, seed: int, images: int = 40) -> list:
    """Images whose variants' Dice change is exactly ``coefficients`` · [change, current] + ``bias``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(images):
        stats = rng.normal(size=(1 + int(rng.integers(3, 9)), len(QUALITY_STATISTICS)))
        inputs = np.hstack([stats[1:] - stats[0], np.broadcast_to(stats[0], stats[1:].shape)])
        start = rng.random()
        out.append(MaskVariants(stats, np.concatenate([[start], start + inputs @ coefficients + bias]), "d", str(i)))
    return out


def test_estimator_recovers_known_linear_coefficients_and_round_trips():
    rng = np.random.default_rng(2)
    coefficients = rng.normal(size=2 * len(QUALITY_STATISTICS)) * 0.05
    estimator = QualityEstimator(alpha=1e-9).fit(linear_images(coefficients, 0.01, seed=3))
    np.testing.assert_allclose(estimator.coefficients, coefficients, atol=1e-6)
    assert estimator.bias == pytest.approx(0.01, abs=1e-6)
    assert estimator.inputs[0] == "change:region_agreement" and estimator.inputs[-1] == "current:chamfer_reference"
    test = linear_images(coefficients, 0.01, seed=4, images=3)
    for image in test:
        np.testing.assert_allclose(estimator.predict(image.statistics[0], image.statistics[1:]),
                                   image.dice[1:] - image.dice[0], atol=1e-6)
    loaded = QualityEstimator.from_dict(json.loads(json.dumps(estimator.to_dict())))
    for image in test:
        np.testing.assert_array_equal(loaded.predict(image.statistics[0], image.statistics[1:]),
                                      estimator.predict(image.statistics[0], image.statistics[1:]))


def test_ridge_penalty_shrinks_the_weights():
    images = linear_images(np.full(2 * len(QUALITY_STATISTICS), 0.05), 0.0, seed=5)
    free, shrunk = QualityEstimator(alpha=0.0).fit(images), QualityEstimator(alpha=1e4).fit(images)
    assert np.linalg.norm(shrunk.weights) < 0.5 * np.linalg.norm(free.weights)


def test_estimator_checks_the_names_of_its_inputs():
    estimator = QualityEstimator().fit(linear_images(np.zeros(2 * len(QUALITY_STATISTICS)), 0.0, seed=6, images=4))
    data = estimator.to_dict()
    with pytest.raises(ValueError, match="fitted on the statistics"):
        QualityEstimator.from_dict({**data, "statistics": data["statistics"][:-1]})
    with pytest.raises(ValueError, match="inputs"):
        QualityEstimator.from_dict({**data, "inputs": list(reversed(data["inputs"]))})
    with pytest.raises(ValueError, match="reads the statistics"):
        estimator.predict(np.zeros(len(QUALITY_STATISTICS)), np.zeros((2, len(QUALITY_STATISTICS))),
                          names=tuple(reversed(QUALITY_STATISTICS)))
    with pytest.raises(RuntimeError, match="not fitted"):
        QualityEstimator().predict(np.zeros(len(QUALITY_STATISTICS)), np.zeros((1, len(QUALITY_STATISTICS))))
    with pytest.raises(ValueError, match="at least 2 variants"):
        QualityEstimator().fit([MaskVariants(np.zeros((2, len(QUALITY_STATISTICS))), np.zeros(2))])
