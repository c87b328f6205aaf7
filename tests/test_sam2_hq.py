"""The SAM 2.1 (``sam2``) and HQ-SAM (``sam_hq``) segmenter backends with tiny randomly initialised
models (gpoa.segmenters.tiny) saved to temporary checkpoints: each backend's masks against its
official predictor, strict and safe checkpoint loading with its errors, the shipped configs, and
the four stages end to end with each backend."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from sam2.sam2_image_predictor import SAM2ImagePredictor

import Generate_initial_prompts
import main_seg
import test_GPOA
import train_GPOA
from gpoa.config import Config, SegmenterConfig, load_config
from gpoa.errors import UsageError
from gpoa.prompts import PointPrompts
from gpoa.segmenters import Segmenter, build_segmenter
from gpoa.segmenters.sam2 import SAM2_MODELS, Sam2Segmenter
from gpoa.segmenters.sam_hq import OFFICIAL_CHECKPOINTS as HQ_CHECKPOINTS
from gpoa.segmenters.sam_hq import SamHqSegmenter, import_sam_hq
from gpoa.segmenters.tiny import TINY_MODEL_TYPES, build_random, register_tiny_model, save_random_segmenter
from gpoa.synth.demo import write_demo_dataset

BACKENDS = ("sam2", "sam_hq")
CLASSES = {"sam2": Sam2Segmenter, "sam_hq": SamHqSegmenter}
HEIGHT, WIDTH = 90, 150
#: prompt sets of 3, 0, 5, 3 and 1 points: two share a size (decoded together), one is empty
SETS = [
    PointPrompts.from_xy([[10.0, 20.0], [100.0, 50.0]], [[140.0, 80.0]]),
    PointPrompts.from_xy([], []),
    PointPrompts.from_xy([[70.0, 40.0]], [[5.0, 5.0], [120.0, 10.0], [30.0, 85.0], [149.0, 89.0]]),
    PointPrompts.from_xy([[60.0, 30.0]], [[8.0, 80.0], [130.0, 70.0]]),
    PointPrompts.from_xy([[20.0, 70.0]], []),
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """backend → the segmenter config of its tiny random model, saved to a temporary checkpoint."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {backend: save_random_segmenter(backend, TINY_MODEL_TYPES[backend], folder, seed=0) for backend in BACKENDS}


def config(checkpoints: dict, backend: str, **changes) -> SegmenterConfig:
    """The tiny model's segmenter config of ``backend`` with ``changes``."""
    return dataclasses.replace(checkpoints[backend], **changes)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scenes(checkpoints, image) -> dict:
    """backend → (segmenter, the image's embedding, the official predictor with the image set)."""
    scenes = {}
    with torch.inference_mode():
        for backend in BACKENDS:
            segmenter = build_segmenter(Config(segmenter=checkpoints[backend]))
            predictor = (import_sam_hq().SamPredictor(segmenter.model) if backend == "sam_hq"
                         else SAM2ImagePredictor(segmenter.model))
            predictor.set_image(image)
            scenes[backend] = segmenter, segmenter.embed(image), predictor
    return scenes


def official(backend: str, predictor, prompts: PointPrompts, multimask: str, hq_token_only: bool = False):
    """The official predictor's mask (bool (H, W)) and score for one prompt set under ``multimask``."""
    with torch.inference_mode():
        if backend == "sam_hq":
            masks, iou, _ = predictor.predict(prompts.points, prompts.labels, multimask_output=multimask == "best",
                                              hq_token_only=hq_token_only)
            return masks[0], iou[0]
        masks, iou, _ = predictor.predict(prompts.points, prompts.labels, multimask_output=multimask != "single")
    index = {"single": 0, "best": int(np.argmax(iou))}.get(multimask) if not multimask.isdigit() else int(multimask)
    return masks[index] > 0, iou[index]


# ----- masks against the official predictors ----------------------------------------------------------
@pytest.mark.parametrize("backend, changes", [("sam2", {}), ("sam2", {"multimask": "best"}),
                                              ("sam2", {"multimask": "2"}), ("sam_hq", {}),
                                              ("sam_hq", {"multimask": "best"}), ("sam_hq", {"hq_token_only": True})])
def test_batched_masks_equal_the_official_predictor_per_set(scenes, checkpoints, backend, changes):
    segmenter, embedding, predictor = scenes[backend]
    if changes:  # the same weights, another way to pick the mask: the embedding is the same
        segmenter = CLASSES[backend](config(checkpoints, backend, **changes))
    cfg = segmenter.cfg
    masks, scores = segmenter.decode(embedding, SETS)
    assert masks.shape == (len(SETS), HEIGHT, WIDTH) and masks.dtype == bool
    assert scores.shape == (len(SETS),) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert not masks[1].any() and scores[1] == 0.0
    for b, prompts in enumerate(SETS):
        if not len(prompts):
            continue
        expected, expected_score = official(backend, predictor, prompts, cfg.multimask, cfg.hq_token_only)
        # sets of one size are decoded together: float rounding of a batched matmul may flip a pixel
        # whose logit is ~0 (padding or a mixed-up set would change many)
        assert (masks[b] != expected).mean() <= 1e-3, (backend, changes, b)
        np.testing.assert_allclose(scores[b], np.clip(expected_score, 0, 1), atol=1e-5)
    # the masks differ between sets: a mix-up of sets would not go unnoticed
    assert len({masks[b].tobytes() for b in (0, 2, 3, 4)}) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_group_of_equal_size_sets_equals_the_official_batched_call(scenes, backend):
    """The official batched call on one image: SAM2ImagePredictor.predict with (B, N, 2) points;
    HQ-SAM's predict_torch with transform.apply_coords_torch (its predict takes one set)."""
    segmenter, embedding, predictor = scenes[backend]
    group = [SETS[0], SETS[3]]
    points, labels = np.stack([p.points for p in group]), np.stack([p.labels for p in group])
    with torch.inference_mode():
        if backend == "sam2":
            expected, _, _ = predictor.predict(points, labels, multimask_output=False)
            expected = expected[:, 0] > 0
        else:
            coords = predictor.transform.apply_coords_torch(torch.as_tensor(points, dtype=torch.float),
                                                            predictor.original_size)
            expected, _, _ = predictor.predict_torch(coords, torch.as_tensor(labels), multimask_output=False)
            expected = expected[:, 0].numpy()
    masks, _ = segmenter.decode(embedding, group)
    np.testing.assert_array_equal(masks, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_batching_gives_the_longest_set_its_exact_mask(scenes, checkpoints, backend):
    segmenter, embedding, _ = scenes[backend]
    padded = CLASSES[backend](config(checkpoints, backend, sam_batching="pad"))
    calls = []
    encoder = padded.model.sam_prompt_encoder if backend == "sam2" else padded.model.prompt_encoder
    original = encoder.forward

    def spy(points, boxes, masks):
        calls.append(points[1].clone())
        return original(points, boxes, masks)

    encoder.forward = spy
    masks, _ = padded.decode(embedding, SETS)
    # the four non-empty sets go in one call, padded to 5 points with the "not a point" label -1
    assert len(calls) == 1 and tuple(calls[0].shape) == (4, 5) and (calls[0] == -1).sum().item() == 2 + 2 + 4
    exact, _ = segmenter.decode(embedding, [SETS[2]])
    assert (masks[2] != exact[0]).mean() <= 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backend_loads_the_checkpoint_weights(scenes, checkpoints, backend):
    segmenter = scenes[backend][0]
    assert isinstance(segmenter, CLASSES[backend]) and isinstance(segmenter, Segmenter)
    assert not segmenter.model.training
    saved = torch.load(checkpoints[backend].checkpoint, weights_only=True)
    saved = saved["model"] if backend == "sam2" else saved
    loaded = segmenter.model.state_dict()
    assert set(loaded) == set(saved)
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
    # and they are not what a fresh random build would have
    fresh = build_random(backend, TINY_MODEL_TYPES[backend]).state_dict()
    assert any(not torch.equal(fresh[key], saved[key]) for key in saved if saved[key].is_floating_point())


# ----- errors: one clear message naming the file and the fix --------------------------------------------
@pytest.mark.parametrize("backend, model_type, official, url", [
    ("sam2", "hiera_l", "sam2.1_hiera_large.pt", "facebookresearch/sam2"),
    ("sam2", "hiera_b+", "sam2.1_hiera_base_plus.pt", "facebookresearch/sam2"),
    ("sam_hq", "vit_l", "sam_hq_vit_l.pth", "SysCV/sam-hq"),
    ("sam_hq", "vit_tiny", "sam_hq_vit_tiny.pth", "SysCV/sam-hq")])
def test_missing_checkpoint_names_the_path_and_the_official_file(tmp_path, backend, model_type, official, url):
    missing = tmp_path / "nowhere" / official
    with pytest.raises(UsageError) as error:
        build_segmenter(Config(segmenter=SegmenterConfig(backend=backend, model_type=model_type,
                                                         checkpoint=str(missing))))
    message = str(error.value)
    assert f"checkpoint '{missing}' does not exist" in message
    assert f"download {official} (model_type {model_type})" in message and url in message
    assert "segmenter.checkpoint" in message and "segmenter.model_type" in message


@pytest.mark.parametrize("backend, known", [("sam2", "hiera_t, hiera_s, hiera_b+, hiera_l"),
                                            ("sam_hq", "vit_b, vit_h, vit_l, vit_tiny")])
def test_unknown_model_type_lists_the_known_ones(tmp_path, backend, known):
    with pytest.raises(UsageError, match=re.escape(known)) as error:
        CLASSES[backend](SegmenterConfig(backend=backend, model_type="vit_xxl", checkpoint=str(tmp_path / "x.pt")))
    assert "unknown segmenter.model_type 'vit_xxl'" in str(error.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_and_truncated_checkpoints(checkpoints, tmp_path, backend):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"  # an interrupted download
    data = Path(checkpoints[backend].checkpoint).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (corrupt, truncated):
        with pytest.raises(UsageError) as error:
            CLASSES[backend](config(checkpoints, backend, checkpoint=str(path)))
        assert f"checkpoint '{path}' is corrupt or not a PyTorch weights file" in str(error.value)
        assert "again" in str(error.value)


class Payload:
    """A Python object in a checkpoint: loading it would run code, weights_only=True refuses it."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_with_python_objects_is_refused(checkpoints, tmp_path, backend):
    state = torch.load(checkpoints[backend].checkpoint, weights_only=True)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": state.get("model", state), "extra": Payload()}, unsafe)
    with pytest.raises(UsageError, match=r"holds Python objects besides tensors \((tests\.)?test_sam2_hq\.Payload\).*weights_only=True"):
        CLASSES[backend](config(checkpoints, backend, checkpoint=str(unsafe)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_partial_checkpoint_is_refused_not_half_loaded(checkpoints, tmp_path, backend):
    state = torch.load(checkpoints[backend].checkpoint, weights_only=True)
    state = state.get("model", state)
    decoder = "sam_mask_decoder." if backend == "sam2" else "mask_decoder.transformer."
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith(decoder)}, partial)
    with pytest.raises(UsageError) as error:
        CLASSES[backend](config(checkpoints, backend, checkpoint=str(partial)))
    message = str(error.value)
    assert f"checkpoint '{partial}' is incompatible with model_type '{TINY_MODEL_TYPES[backend]}'" in message
    assert "missing keys (e.g. " + decoder in message and "set segmenter.model_type" in message


def test_sam2_checkpoint_of_another_size_is_refused(checkpoints, tmp_path):
    state = torch.load(checkpoints["sam2"].checkpoint, weights_only=True)["model"]
    bigger = tmp_path / "wider.pt"
    key = "image_encoder.trunk.patch_embed.proj.weight"
    torch.save({"model": {**state, key: torch.zeros(32, *state[key].shape[1:])}}, bigger)
    with pytest.raises(UsageError, match=f"1 wrong shapes \\(e.g. {re.escape(key)}\\)"):
        Sam2Segmenter(config(checkpoints, "sam2", checkpoint=str(bigger)))


def test_sam2_refuses_a_sam2_0_checkpoint_and_says_so(checkpoints, tmp_path):
    from gpoa.segmenters.sam2 import SAM21_ONLY_KEYS

    state = torch.load(checkpoints["sam2"].checkpoint, weights_only=True)["model"]
    older = tmp_path / "sam2_hiera_tiny.pt"  # SAM 2.0's files lack the weights 2.1 added
    torch.save({"model": {k: v for k, v in state.items() if k not in SAM21_ONLY_KEYS}}, older)
    with pytest.raises(UsageError, match="is a SAM 2.0 checkpoint \\(it lacks SAM 2.1's no_obj_embed_spatial, "
                                         "obj_ptr_tpos_proj.bias, obj_ptr_tpos_proj.weight\\); GPOA builds SAM 2.1"):
        Sam2Segmenter(config(checkpoints, "sam2", checkpoint=str(older)))


def test_hq_refuses_an_original_sam_checkpoint_and_says_so(checkpoints, tmp_path):
    state = torch.load(checkpoints["sam_hq"].checkpoint, weights_only=True)
    original = tmp_path / "sam_vit_l_0b3195.pth"  # SAM's keys only: what HQ-SAM's builder loads silently
    torch.save({k: v for k, v in state.items() if "hf_" not in k and "embedding_" not in k
                and "compress_vit_feat" not in k}, original)
    with pytest.raises(UsageError) as error:
        SamHqSegmenter(config(checkpoints, "sam_hq", checkpoint=str(original)))
    message = str(error.value)
    assert f"HQ-SAM checkpoint '{original}' is an original SAM checkpoint, not an HQ-SAM one" in message
    assert "lacks the 25 HQ-SAM decoder weights (e.g. mask_decoder." in message
    assert "for the sam_hq backend, or use this file with segmenter.backend=sam" in message


def test_sam_refuses_an_hq_checkpoint_and_says_so(checkpoints):
    from gpoa.segmenters.sam import SamSegmenter

    register_tiny_model("sam")  # the same architecture as the tiny HQ-SAM, without the HQ layers
    with pytest.raises(UsageError, match="is an HQ-SAM checkpoint \\(25 HQ-SAM decoder weights.*segmenter.backend=sam_hq"):
        SamSegmenter(SegmenterConfig(backend="sam", model_type=TINY_MODEL_TYPES["sam"],
                                     checkpoint=checkpoints["sam_hq"].checkpoint))


def test_hq_takes_single_or_best_only(checkpoints):
    with pytest.raises(UsageError, match="unknown segmenter.multimask '2'; HQ-SAM returns one mask per prompt set: "
                                         "use single, best"):
        SamHqSegmenter(config(checkpoints, "sam_hq", multimask="2"))


@pytest.mark.parametrize("backend, package, install", [
    ("sam2", "sam2", "SAM2_BUILD_CUDA=0 pip install --no-build-isolation '.[sam2]'"),
    ("sam_hq", "segment_anything_hq", "pip install '.[hq]'")])
def test_a_backend_whose_package_is_missing_says_how_to_install_it(monkeypatch, checkpoints, backend, package,
                                                                   install):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    with pytest.raises(UsageError) as error:
        build_segmenter(Config(segmenter=checkpoints[backend]))
    assert f"segmenter.backend={backend} needs the Python package '{package}'" in str(error.value)
    assert install in str(error.value)


def test_unknown_backend_lists_every_backend():
    with pytest.raises(UsageError, match="use one of classical, sam, sam2, sam_hq"):
        build_segmenter(Config(segmenter=SegmenterConfig(backend="sam3")))


# ----- the shipped configs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, backend, model_type, checkpoint", [
    ("sam2_dinov2.yaml", "sam2", "hiera_l", "sam2.1_hiera_large.pt"),
    ("samhq_dinov2.yaml", "sam_hq", "vit_l", "sam_hq_vit_l.pth")])
def test_shipped_configs_name_the_official_checkpoints(name, backend, model_type, checkpoint):
    cfg = load_config(ROOT / "configs" / name)
    assert (cfg.segmenter.backend, cfg.segmenter.model_type) == (backend, model_type)
    assert cfg.segmenter.checkpoint == f"checkpoints/{checkpoint}"
    assert cfg.features.backend == "dinov2" and cfg.features.model == "vit_large_patch14_dinov2"
    official = SAM2_MODELS[model_type].checkpoint if backend == "sam2" else HQ_CHECKPOINTS[model_type]
    assert official == checkpoint
    readme = (ROOT / "checkpoints" / "README.md").read_text()
    names = [SAM2_MODELS[t].checkpoint for t in ("hiera_t", "hiera_s", "hiera_b+", "hiera_l")]
    names += [HQ_CHECKPOINTS[t] for t in ("vit_b", "vit_l", "vit_h", "vit_tiny")]
    assert [file for file in names if f"`{file}`" not in readme] == []


# ----- the four stages end to end with each backend ----------------------------------------------------
#: tiny budgets: few prompts and candidates, short episodes, a few training steps
FAST = ["features.backend=handcrafted", "features.working_size=224", "placement.n_positive=3",
        "placement.n_negative=3", "segmentation.ideal_positive=3", "segmentation.ideal_negative=3",
        "graph.extra_positive=2", "graph.extra_negative=2", "env.episode_length=2",
        "train.total_steps=8", "train.eval_every=8", "train.parallel_envs=2", "dqn.learning_starts=4",
        "dqn.batch_size=4", "dqn.hidden=16", "dqn.buffer_size=64", "env.max_nodes=32"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_four_stages_run_end_to_end(checkpoints, tmp_path, monkeypatch, capsys, backend):
    """Generate_initial_prompts → train_GPOA → test_GPOA → main_seg with the shipped config of the
    backend (its segmenter; the embedded handcrafted features and tiny budgets to stay fast)."""
    data = write_demo_dataset(tmp_path / "data", seed=0, n_train=2, n_targets=1, families=["membrane"])[0]
    cfg = checkpoints[backend]
    overrides = FAST + [f"segmenter.model_type={cfg.model_type}", f"segmenter.checkpoint={cfg.checkpoint}",
                        f"train.checkpoints={tmp_path / 'runs'}"]
    args = ["--config", str(ROOT / "configs" / ("sam2_dinov2.yaml" if backend == "sam2" else "samhq_dinov2.yaml")),
            "--data", str(data), *[a for o in overrides for a in ("--set", o)]]
    decoded = []  # the size of every decode call of the backend
    decode = CLASSES[backend].decode

    def counted(self, embedding, prompt_sets):
        decoded.append(len(prompt_sets))
        return decode(self, embedding, prompt_sets)

    monkeypatch.setattr(CLASSES[backend], "decode", counted)

    assert Generate_initial_prompts.main(args) == 0
    assert train_GPOA.main([*args, "--run", "tiny"]) == 0
    trained = len(decoded)
    assert trained > 0  # the environment's rewards and lookahead came from this backend's masks
    assert test_GPOA.main([*args, "--policy", str(tmp_path / "runs" / "tiny" / "best.pt")]) == 0
    assert len(decoded) > trained
    assert main_seg.main(args) == 0
    capsys.readouterr()

    assert len(list((data / "optimized_indices").glob("*.json"))) == 1
    with open(data / "results" / "summary.csv") as handle:
        summary = {row["prompt_set"]: row for row in csv.DictReader(handle)}
    assert {"initial", "optimized", "ideal"} <= set(summary)
    assert all(int(row["images"]) == 1 and 0.0 <= float(row["dice_mean"]) <= 1.0 for row in summary.values())
    saved = load_config(data / "results" / "config.yaml")
    assert (saved.segmenter.backend, saved.segmenter.model_type) == (backend, cfg.model_type)
    masks = sorted((data / "results" / "masks" / "optimized").glob("*.png"))
    assert len(masks) == 1


# ----- the mask prompt (mask_input) ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mask_prompt_is_the_official_predictors_mask_input(scenes, backend):
    from gpoa.segmenters import with_mask_prompt
    from gpoa.segmenters.common import mask_prompt_logits

    segmenter, embedding, predictor = scenes[backend]
    probability = np.zeros((HEIGHT, WIDTH), np.float32)
    probability[15:75, 40:120] = 1.0
    prompted = with_mask_prompt(segmenter, embedding, probability)
    # SAM 2 stretches the image to its square 1024 input (256 x 256 low-res grid); the tiny HQ-SAM, like
    # SAM, resizes the long side to its 256 input and pads: 154 x 256, a quarter of it on a 64 x 64 grid
    logits = (mask_prompt_logits(probability, (256, 256), 256) if backend == "sam2"
              else mask_prompt_logits(probability, (38, 64), 64))
    np.testing.assert_allclose(prompted.mask_input[0, 0].cpu().numpy(), logits)
    for prompts in (SETS[2], SETS[4]):
        with torch.inference_mode():
            expected, _, _ = predictor.predict(prompts.points, prompts.labels, mask_input=logits[None],
                                               multimask_output=False)
        expected = expected[0] > 0
        masks, _ = segmenter.decode(prompted, [prompts])
        assert (masks[0] != expected).mean() <= 1e-3 and expected.any() and not expected.all(), backend
        assert (masks[0] != segmenter.decode(embedding, [prompts])[0][0]).any()  # the prompt is not ignored
