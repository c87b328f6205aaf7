"""GPOAPredictor: the same prompts and masks as the four scripts, any form of input, one clear error per bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from PIL import Image

import Generate_initial_prompts
import main_seg
import test_GPOA
from gpoa import GPOAPredictor, Prediction
from gpoa.errors import InputError, UsageError
from gpoa.io import read_image, read_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompt_file(path):
    data = json.loads(path.read_text())
    return data["positive_indices"], data["negative_indices"]


def indices(prompt_set):
    return prompt_set.positive_indices.tolist(), prompt_set.negative_indices.tolist()


def test_the_predictor_gives_exactly_what_the_four_scripts_write(trained, capsys):
    data, checkpoints = trained  # stage 1 and a tiny training run (train_GPOA.py) are done
    policy = checkpoints / "tiny" / "best.pt"
    args = ["--config", str(DEMO_CONFIG), "--data", str(data)]
    assert test_GPOA.main(args + ["--policy", str(policy)]) == 0
    assert main_seg.main(args) == 0
    capsys.readouterr()

    predictor = GPOAPredictor.from_config(DEMO_CONFIG, policy=policy, device="cpu", seed=0)
    predictor.set_reference(data / "reference_image" / "reference.png", data / "reference_mask" / "reference.png")
    targets = sorted((data / "target_image").glob("*.png"))
    results = list(predictor.predict_many(targets))
    assert len(results) == len(targets) == 6
    edited = 0
    for target, result in zip(targets, results):
        stem = target.stem
        assert isinstance(result, Prediction)
        assert indices(result.prompts.initial) == prompt_file(data / "initial_indices" / f"{stem}.json")
        assert indices(result.prompts.optimized) == prompt_file(data / "optimized_indices" / f"{stem}.json")
        written = read_mask(data / "results" / "masks" / "optimized" / f"{stem}.png")
        assert result.mask.dtype == bool and np.array_equal(result.mask, written)
        assert 0.0 <= result.confidence <= 1.0
        points, labels = result.prompts.optimized.points, result.prompts.optimized.labels
        assert points.shape == (len(labels), 2) and labels.sum() == len(result.prompts.optimized.positive_indices)
        edited += indices(result.prompts.initial) != indices(result.prompts.optimized)
    assert edited, "the policy edits some target, so the optimised prompts are not just the initial ones"


def test_without_a_policy_the_k_shot_predictor_segments_the_scripts_initial_prompts(demo_master, tmp_path, capsys):
    data = tmp_path / "membrane"
    shutil.copytree(demo_master / "membrane", data, ignore=shutil.ignore_patterns("train_*"))
    for path in sorted((data / "target_image").iterdir())[3:]:
        path.unlink()
    # a second reference pair (k-shot): every reference pair is used, by the scripts and by the predictor
    for folder, target in (("target_image", "reference_image"), ("target_mask", "reference_mask")):
        shutil.copy(demo_master / "membrane" / folder / "membrane_005.png", data / target / "second.png")
    args = ["--config", str(DEMO_CONFIG), "--data", str(data)]
    assert Generate_initial_prompts.main(args) == 0 and main_seg.main(args) == 0
    capsys.readouterr()

    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
    references = sorted((data / "reference_image").iterdir())
    predictor.set_reference(references, [data / "reference_mask" / p.name for p in references])
    for target in sorted((data / "target_image").iterdir()):
        result = predictor.predict(target)
        assert indices(result.prompts.initial) == prompt_file(data / "initial_indices" / f"{target.stem}.json")
        assert indices(result.prompts.optimized) == indices(result.prompts.initial)
        assert np.array_equal(result.mask, read_mask(data / "results" / "masks" / "initial" / f"{target.stem}.png"))


@pytest.fixture(scope="module")
def plain(demo_master):
    """A predictor without a policy, its reference set from the membrane family's pair."""
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
    root = demo_master / "membrane"
    predictor.set_reference(read_image(root / "reference_image" / "reference.png"),
                            read_mask(root / "reference_mask" / "reference.png"))
    return predictor


def test_an_array_a_pil_image_and_a_file_give_the_same_prediction_and_inputs_stay_unchanged(plain, demo_master):
    path = sorted((demo_master / "membrane" / "target_image").iterdir())[0]
    array = read_image(path)
    before = array.copy()
    results = [plain.predict(path), plain.predict(array), plain.predict(Image.open(path)),
               plain.predict(np.dstack([array, np.full(array.shape[:2], 255, np.uint8)]))]  # RGBA
    for result in results[1:]:
        assert np.array_equal(result.mask, results[0].mask)
        assert indices(result.prompts.initial) == indices(results[0].prompts.initial)
    assert results[0].mask.shape == array.shape[:2] and results[0].mask.any()
    assert np.array_equal(array, before)


@pytest.fixture
def pair(demo_master):
    root = demo_master / "membrane"
    return read_image(root / "reference_image" / "reference.png"), read_mask(root / "reference_mask" / "reference.png")


def test_predict_before_set_reference_is_one_clear_error():
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu")
    with pytest.raises(UsageError, match=r"no reference is set: call set_reference\(image, mask\)"):
        predictor.predict(np.zeros((40, 50, 3), np.uint8))


@pytest.mark.parametrize("image, words", [
    (np.zeros((40, 50, 3), np.float64), r"reference image: is an array of dtype float64; images are uint8.*astype"),
    (np.zeros((40, 50, 2), np.uint8), r"reference image: is an array of shape \(40, 50, 2\)"),
    (42, r"reference image: is of type int; pass a uint8 array"),
])
def test_a_wrong_reference_image_is_one_clear_error(plain, image, words):
    with pytest.raises(InputError, match=words):
        plain.set_reference(image, np.ones((40, 50), bool))


def test_wrong_masks_are_one_clear_error_each(plain, pair, tmp_path):
    image, mask = pair
    height, width = mask.shape
    with pytest.raises(InputError, match=rf"reference mask: is {width}x{height - 1} pixels but its image is "
                                         rf"{width}x{height}; a mask must have exactly the size"):
        plain.set_reference(image, mask[:-1])
    with pytest.raises(InputError, match=r"reference mask: is an array of dtype float32.*mask > 0.5"):
        plain.set_reference(image, mask.astype(np.float32))
    with pytest.raises(InputError, match=r"reference mask: has no foreground pixels; the reference must contain"):
        plain.set_reference(image, np.zeros_like(mask))
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros(mask.shape, np.uint8)).save(empty)
    with pytest.raises(InputError, match=rf"{empty}: has no foreground pixels"):
        plain.set_reference(image, empty)
    with pytest.raises(InputError, match=r"reference mask 1: has no foreground"):  # k-shot: the pair is named
        plain.set_reference([image, image], [mask, np.zeros_like(mask)])
    with pytest.raises(UsageError, match=r"two lists of the same length; got 2 image\(s\) and 1 mask"):
        plain.set_reference([image, image], [mask])


def test_a_wrong_target_is_one_clear_error(plain, tmp_path):
    with pytest.raises(InputError, match=r"image: is an array of dtype int64"):
        plain.predict(np.zeros((40, 50, 3), np.int64))
    missing = tmp_path / "nowhere.png"
    with pytest.raises(InputError, match=rf"{missing}: file does not exist"):
        plain.predict(missing)


def test_a_missing_policy_or_a_bad_setting_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        GPOAPredictor.from_config(DEMO_CONFIG, policy=tmp_path / "nope.pt", device="cpu")
    with pytest.raises(UsageError, match=r"'env\.max_nodes' must be at least 1"):
        GPOAPredictor.from_config(DEMO_CONFIG, device="cpu", overrides=["env.max_nodes=0"])
