"""Reference-to-target matching on constructed features whose answer is known.

Feature dimensions: 0 is the object direction A, 1 the background direction B, 2.. are "keys"
that pair one reference patch with exactly one target patch (a small shared component makes that
target its unique nearest neighbour among patches of the same class).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpoa.config import MatchingConfig
from gpoa.matching import build_reference, l2_normalise, match_prompts

D = 12
A, B = 0, 1


def vec(a: float = 0.0, b: float = 0.0, **keys: float) -> np.ndarray:
    """A feature vector from named parts: vec(a=1, k2=0.2) = A + 0.2 * e_2."""
    v = np.zeros(D, np.float32)
    v[A], v[B] = a, b
    for name, value in keys.items():
        v[int(name[1:])] = value
    return v


def cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


# reference: 2 x 4 patches; 0..2 foreground (keys 2, 3, 4), 3 partial (ignored), 4..7 background
REFERENCE = np.stack([
    vec(a=1, k2=0.2), vec(a=1, k3=0.2), vec(a=1, k4=0.2),
    vec(a=1, b=1),
    vec(b=1, k5=0.2), vec(b=1, k5=0.2), vec(b=1, k6=0.2), vec(b=1, k7=0.2),
]).reshape(2, 4, D)
REFERENCE_FRACTION = np.array([[1.0, 1.0, 0.5, 0.3], [0.0, 0.0, 0.0, 0.0]])


def target_features(rng_seed: int = 0) -> np.ndarray:
    """4 x 4 target: object patches 5, 6, 9 (keys 2, 3, 4 with decreasing strength of the shared
    key, so decreasing scores), a near-A distractor at 15, background patches 0, 3, 12 keyed 5, 6, 7,
    every other patch plain B; plus a little noise in the unused dimensions 8..11."""
    rng = np.random.default_rng(rng_seed)
    target = np.zeros((16, D), np.float32)
    target[:] = vec(b=1)
    target[5], target[6], target[9] = vec(a=1, k2=0.2), vec(a=1, k3=0.3), vec(a=1, k4=0.4)
    target[15] = vec(a=0.9, b=0.45)  # looks like the object, but no reference patch's nearest
    target[0], target[3], target[12] = vec(b=1, k5=0.2), vec(b=1, k6=0.25), vec(b=1, k7=0.35)
    target[:, 8:] += rng.normal(0, 0.01, (16, D - 8)).astype(np.float32)
    return target.reshape(4, 4, D)


def reference():
    return build_reference([REFERENCE], [REFERENCE_FRACTION], foreground_fraction=0.5)


def test_build_reference_labels():
    ref = reference()
    assert ref.features.shape == (8, D)
    np.testing.assert_allclose(np.linalg.norm(ref.features, axis=1), 1.0, rtol=1e-6)
    assert np.flatnonzero(ref.foreground).tolist() == [0, 1, 2]  # 0.5 counts as foreground
    assert np.flatnonzero(ref.background).tolist() == [4, 5, 6, 7]  # 0.3 is neither
    mean = l2_normalise(REFERENCE.reshape(8, D)[:3]).mean(axis=0)
    np.testing.assert_allclose(ref.foreground_prototype, mean / np.linalg.norm(mean), rtol=1e-6)
    assert ref.foreground_prototype[A] > 0.9 and ref.background_prototype[B] > 0.9


def test_positives_are_the_object_patches_and_not_the_distractor():
    result = match_prompts(reference(), target_features(), MatchingConfig())
    assert result.positive_indices.tolist() == [5, 6, 9]  # best first
    assert 15 not in result.positive_indices
    assert result.negative_indices.tolist() == [0, 3, 12]  # reference 4 and 5 both reach 0: once
    assert not set(result.positive_indices) & set(result.negative_indices)
    assert result.positive_indices.dtype == np.int64


def test_scores_are_cosine_similarities_sorted_descending():
    target = target_features().reshape(16, D)
    result = match_prompts(reference(), target.reshape(4, 4, D), MatchingConfig())
    expected = [cos(REFERENCE[0, 0], target[5]), cos(REFERENCE[0, 1], target[6]), cos(REFERENCE[0, 2], target[9])]
    np.testing.assert_allclose(result.positive_scores, expected, rtol=1e-5)
    assert np.all(np.diff(result.positive_scores) < 0)
    assert np.all(np.diff(result.negative_scores) < 0)
    # similarity of every target patch to its nearest reference foreground / background patch
    assert result.foreground_similarity.shape == (16,) and result.background_similarity.shape == (16,)
    np.testing.assert_allclose(result.foreground_similarity[[5, 6, 9]], expected, rtol=1e-5)
    assert result.foreground_similarity[15] > result.foreground_similarity[0]
    assert result.background_similarity[0] > result.foreground_similarity[0]


def test_max_positive_and_max_negative_keep_the_best():
    result = match_prompts(reference(), target_features(), MatchingConfig(max_positive=2, max_negative=1))
    assert result.positive_indices.tolist() == [5, 6]
    assert result.negative_indices.tolist() == [0]
    assert len(result.positive_scores) == 2 and len(result.negative_scores) == 1


def test_distractor_becomes_positive_when_it_is_some_reference_patch_nearest():
    ref_features = np.concatenate([REFERENCE.reshape(8, D), vec(a=0.9, b=0.45)[None]])  # a 9th fg patch like 15
    fraction = np.concatenate([REFERENCE_FRACTION.reshape(-1), [1.0]])
    ref = build_reference([ref_features.reshape(1, 9, D)], [fraction.reshape(1, 9)], 0.5)
    result = match_prompts(ref, target_features(), MatchingConfig())
    assert sorted(result.positive_indices.tolist()) == [5, 6, 9, 15]


def test_mutual_nearest_drops_a_non_mutual_match():
    # in the (A, e2) plane: reference fg R0 at 0°, R1 at 45°; target T0 at 30°, T1 at 50°.
    # R0 → T0 (30° < 50°) but T0 → R1 (15° < 30°): not mutual. R1 → T1 and T1 → R1: mutual.
    def at(degrees):
        return vec(a=np.cos(np.radians(degrees)), k2=np.sin(np.radians(degrees)))

    ref_features = np.stack([at(0), at(45), vec(b=1)]).reshape(1, 3, D)
    ref = build_reference([ref_features], [np.array([[1.0, 1.0, 0.0]])], 0.5)
    target = np.stack([at(30), at(50), vec(b=1, k5=0.1), vec(b=1)]).reshape(2, 2, D)
    plain = match_prompts(ref, target, MatchingConfig(mutual_nearest=False))
    assert sorted(plain.positive_indices.tolist()) == [0, 1]
    mutual = match_prompts(ref, target, MatchingConfig(mutual_nearest=True))
    assert mutual.positive_indices.tolist() == [1]
    assert mutual.negative_indices.tolist() == [3]  # B's nearest is plain B, which is mutual


def test_target_reached_from_both_sides_keeps_the_side_it_resembles_more():
    ref_features = np.stack([vec(a=1), vec(b=1)]).reshape(1, 2, D)
    ref = build_reference([ref_features], [np.array([[1.0, 0.0]])], 0.5)
    # the only target patch near either class is 0.8 A + 0.6 B: nearest to both reference patches
    target = np.stack([vec(a=0.8, b=0.6), vec(b=0.5, k5=0.866)]).reshape(1, 2, D)
    result = match_prompts(ref, target, MatchingConfig())
    assert result.positive_indices.tolist() == [0] and result.negative_indices.tolist() == []
    target = np.stack([vec(a=0.6, b=0.8), vec(a=0.5, k5=0.866)]).reshape(1, 2, D)
    result = match_prompts(ref, target, MatchingConfig())
    assert result.positive_indices.tolist() == [] and result.negative_indices.tolist() == [0]


def test_k_shot_uses_the_union_of_reference_patches():
    first = np.stack([vec(a=1, k2=0.2), vec(b=1, k5=0.2)]).reshape(1, 2, D)
    second = np.stack([vec(a=1, k3=0.2), vec(b=1, k6=0.2), vec(b=1, k7=0.2)]).reshape(1, 3, D)
    one = build_reference([first], [np.array([[1.0, 0.0]])], 0.5)
    two = build_reference([first, second], [np.array([[1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])], 0.5)
    assert two.features.shape == (5, D)
    assert two.foreground.tolist() == [True, False, True, False, False]
    assert match_prompts(one, target_features(), MatchingConfig()).positive_indices.tolist() == [5]
    result = match_prompts(two, target_features(), MatchingConfig())
    assert result.positive_indices.tolist() == [5, 6]
    assert result.negative_indices.tolist() == [0, 3, 12]


def test_build_reference_without_foreground_patch():
    with pytest.raises(ValueError, match="foreground"):
        build_reference([REFERENCE], [np.where(REFERENCE_FRACTION > 0, 0.3, 0.0)], 0.5)


def test_build_reference_without_background_patch():
    with pytest.raises(ValueError, match="background"):
        build_reference([REFERENCE], [np.full((2, 4), 0.1)], 0.05)


def test_l2_normalise_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_count_instances_counts_objects_not_specks():
    from gpoa.matching import count_instances

    mask = np.zeros((60, 80), dtype=bool)
    assert count_instances(mask) == 0
    mask[5:25, 5:25] = True  # 400 px
    mask[30:45, 40:60] = True  # 300 px
    mask[50, 70] = True  # a speck
    mask[55:57, 2:4] = True  # a fragment under 10 % of the largest
    assert count_instances(mask) == 2
    mask[24:31, 20:41] = True  # a bridge joins the two objects (8-connected)
    assert count_instances(mask) == 1
    reference = build_reference([np.eye(4)[None].repeat(4, 0)], [np.eye(4)], 0.5, instances=[1, 3])
    assert reference.instances == 2.0
