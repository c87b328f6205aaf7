"""Presence: the score of a mask against the reference, the fitted threshold, and what the predictor and
stage 4 do with an image where the object is absent."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO_CONFIG

import main_seg
from gpoa import GPOAPredictor
from gpoa.io import read_mask
from gpoa.matching import ReferenceFeatures, l2_normalise
from gpoa.presence import EMPTY_SCORE, fit_presence_threshold, mask_presence_score, presence_scores


def reference_of(foreground: np.ndarray, background: np.ndarray) -> ReferenceFeatures:
    features = l2_normalise(np.concatenate([foreground, background]).astype(np.float32))
    labels = np.arange(len(features)) < len(foreground)
    return ReferenceFeatures(features=features, foreground=labels, background=~labels, foreground_share=0.5)


@pytest.fixture
def planted():
    """A reference whose object patches point along the first axes and whose background along the
    last, and a 4 x 4 target whose top row holds the object's patches."""
    rng = np.random.default_rng(0)
    object_like = np.eye(8)[[0, 1, 0, 1]] + 0.05 * rng.random((4, 8))
    background_like = np.eye(8)[[6, 7, 6, 7]] + 0.05 * rng.random((4, 8))
    reference = reference_of(object_like, background_like)
    target = np.concatenate([object_like, np.repeat(background_like, 3, axis=0)]).reshape(4, 4, 8)
    return reference, target


def test_a_mask_holding_the_object_scores_near_zero_and_above_one_on_the_background(planted):
    reference, target = planted
    on_object = np.zeros((2, 16))
    on_object[0, :4] = 1.0  # the top row: the object's patches
    on_object[1, 8:] = 1.0  # background only
    scores = presence_scores(on_object, reference, target)
    assert scores[0] == pytest.approx(1.0 - reference.foreground_self_similarity, abs=1e-6)  # every part found
    assert scores[0] > -0.01 and scores[1] < scores[0] - 0.5


def test_an_empty_mask_and_a_mask_smaller_than_a_patch(planted):
    reference, target = planted
    cells = np.zeros((2, 16))
    cells[1, 0] = 0.2  # touches one object patch, less than half of it
    scores = presence_scores(cells, reference, target)
    assert scores[0] == EMPTY_SCORE
    assert scores[1] > EMPTY_SCORE
    with pytest.raises(ValueError, match="16 patches"):
        presence_scores(np.zeros((1, 9)), reference, target)


def test_a_full_resolution_mask_is_read_on_the_feature_grid(planted):
    reference, target = planted
    mask = np.zeros((40, 40), bool)
    mask[:10, :] = True  # the top quarter: the top row of a 4 x 4 grid
    assert mask_presence_score(mask, reference, target) == pytest.approx(
        presence_scores((np.arange(16) < 4)[None].astype(float), reference, target)[0])


def test_self_similarity_of_a_reference():
    single = reference_of(np.eye(3)[[0]], np.eye(3)[[2]])
    assert single.foreground_self_similarity == 1.0
    pair = reference_of(np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]), np.eye(3)[[2]])
    assert pair.foreground_self_similarity == pytest.approx(0.6)


def test_the_threshold_sits_at_the_equal_error_rate():
    # separable: halfway between the lowest present and the highest absent score
    assert fit_presence_threshold([0.0, -0.1, -0.2], [-0.8, -0.9, -1.0]) == pytest.approx(-0.5)
    present = np.linspace(-0.3, 0.0, 101)
    absent = np.linspace(-0.5, -0.2, 101)
    threshold = fit_presence_threshold(present, absent)
    false_absent, false_present = np.mean(present < threshold), np.mean(absent >= threshold)
    assert abs(false_absent - false_present) <= 0.02 and -0.26 < threshold < -0.24
    with pytest.raises(ValueError, match="absent"):
        fit_presence_threshold([0.0], [])


def test_the_predictor_calls_another_familys_image_absent_and_paints_no_mask(demo_master):
    membrane, objects = demo_master / "membrane", demo_master / "objects"
    reference = sorted((membrane / "reference_image").glob("*.png"))[0]
    own = sorted((membrane / "target_image").glob("*.png"))[:2]
    other = sorted((objects / "target_image").glob("*.png"))[:2]
    scores = GPOAPredictor.from_config(DEMO_CONFIG, overrides=["optimize.presence=true", "optimize.presence_threshold=-10"])
    scores.set_reference(reference, membrane / "reference_mask" / reference.name)
    present = [scores.predict(p) for p in own]
    absent = [scores.predict(p) for p in other]
    assert all(r.present and r.mask.any() for r in present + absent)  # -10: nothing is called absent
    cut = (min(r.presence_score for r in present) + max(r.presence_score for r in absent)) / 2
    assert max(r.presence_score for r in absent) < cut < min(r.presence_score for r in present)
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, overrides=["optimize.presence=true", f"optimize.presence_threshold={cut}"])
    predictor.set_reference(reference, membrane / "reference_mask" / reference.name)
    for path, before in zip(own + other, present + absent):
        result = predictor.predict(path)
        assert result.present == (path in own)
        assert result.presence_score == pytest.approx(before.presence_score)
        assert result.mask.any() == result.present
    off = GPOAPredictor.from_config(DEMO_CONFIG, overrides=[f"optimize.presence_threshold={cut}"])  # off by default
    off.set_reference(reference, membrane / "reference_mask" / reference.name)
    result = off.predict(other[0])
    assert result.present and result.presence_score is None and result.mask.any()


def test_stage_4_writes_an_empty_mask_for_a_prompt_file_that_calls_the_object_absent(trained, tmp_path):
    data, _ = trained
    folder = data / "optimized_indices"
    folder.mkdir(exist_ok=True)
    for path in sorted((data / "initial_indices").glob("*.json"))[:2]:
        content = json.loads(path.read_text())
        shutil.copy(path, folder / path.name)
        (folder / path.name).write_text(json.dumps({**content, "present": False}))
    called_absent = sorted(folder.glob("*.json"))
    assert main_seg.main(["--config", str(DEMO_CONFIG), "--data", str(data)]) == 0
    for path in called_absent:
        mask = read_mask(data / "results" / "masks" / "optimized" / f"{path.stem}.png")
        initial = read_mask(data / "results" / "masks" / "initial" / f"{path.stem}.png")
        assert not mask.any() and initial.any()
