"""Segmenter backends: the classical default's behaviour, and SAM's loading and batched wiring with a
tiny randomly initialised SAM saved to a temporary checkpoint."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import torch

from gpoa.config import Config, SegmenterConfig
from gpoa.errors import UsageError
from gpoa.grid import PatchGrid
from gpoa.metrics import iou
from gpoa.prompts import PointPrompts, PromptSet, sample_ideal_prompts
from gpoa.segmenters import Segmenter, build_segmenter
from gpoa.segmenters.classical import ClassicalSegmenter

WIDTH, HEIGHT = 320, 240


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def textured_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A striped bright disc (the object) and a blue square (a distractor) on a noisy dark
    textured background: (uint8 RGB (240, 320, 3), object mask bool (240, 320))."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    disc = (xx - 0.4 * WIDTH) ** 2 + (yy - 0.5 * HEIGHT) ** 2 <= (0.27 * HEIGHT) ** 2
    square = (np.abs(xx - 0.82 * WIDTH) < 0.08 * WIDTH) & (np.abs(yy - 0.3 * HEIGHT) < 0.12 * HEIGHT)
    blotches = 75.0 * cv2.GaussianBlur(rng.standard_normal((HEIGHT, WIDTH)), (0, 0), 2)[..., None]
    image = np.array([60.0, 70.0, 55.0]) + blotches + rng.normal(0.0, 12.0, (HEIGHT, WIDTH, 3))
    stripes = 20.0 * np.sin(xx / 3.0 + yy / 5.0)[..., None]
    image[disc] = (np.array([190.0, 150.0, 110.0]) + stripes + rng.normal(0.0, 12.0, image.shape))[disc]
    image[square] = (np.array([120.0, 160.0, 200.0]) + rng.normal(0.0, 12.0, image.shape))[square]
    return np.clip(image, 0, 255).astype(np.uint8), disc


def ideal_prompts(mask: np.ndarray, seed: int = 0) -> PointPrompts:
    """8 positive + 8 negative prompts read off ``mask`` on a 16 x 16 patch grid."""
    grid = PatchGrid.square(224, 14)
    positive, negative = sample_ideal_prompts(grid, mask, 8, 8, np.random.default_rng(seed))
    return PromptSet("scene", (mask.shape[1], mask.shape[0]), grid, positive, negative).point_prompts()


# ----- classical ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    image, mask = textured_scene()
    segmenter = ClassicalSegmenter(SegmenterConfig())
    return segmenter, segmenter.embed(image), mask


def test_build_segmenter_picks_the_classical_default():
    segmenter = build_segmenter(Config())
    assert isinstance(segmenter, ClassicalSegmenter)
    assert isinstance(segmenter, Segmenter)


def test_classical_ideal_prompts_segment_the_object(scene):
    segmenter, embedding, mask = scene
    masks, scores = segmenter.decode(embedding, [ideal_prompts(mask)])
    assert dice(masks[0], mask) >= 0.85
    assert 0.0 < scores[0] <= 1.0


@pytest.mark.parametrize("planted_xy", [(20, 20), (300, 220), (150, 225), (290, 120)])
def test_classical_positive_on_background_makes_the_mask_worse(scene, planted_xy):
    segmenter, embedding, mask = scene
    assert not mask[planted_xy[1], planted_xy[0]]
    prompts = ideal_prompts(mask)
    planted = PointPrompts(np.vstack([prompts.points, planted_xy]), np.append(prompts.labels, 1))
    masks, _ = segmenter.decode(embedding, [prompts, planted])
    assert dice(masks[1], mask) < dice(masks[0], mask) - 0.02


def test_classical_empty_and_negative_only_sets_give_empty_masks(scene):
    segmenter, embedding, mask = scene
    negatives = PointPrompts.from_xy([], [[20, 20], [300, 220]])
    masks, scores = segmenter.decode(embedding, [PointPrompts.from_xy([], []), negatives])
    assert not masks.any()
    assert scores.tolist() == [0.0, 0.0]


def test_classical_output_shapes_and_dtypes_at_original_size(scene):
    segmenter, embedding, mask = scene
    masks, scores = segmenter.decode(embedding, [ideal_prompts(mask), ideal_prompts(mask, seed=1)])
    assert masks.shape == (2, HEIGHT, WIDTH) and masks.dtype == bool
    assert scores.shape == (2,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert segmenter.decode(embedding, [])[0].shape == (0, HEIGHT, WIDTH)


def test_classical_large_image_is_segmented_downscaled_and_painted_back():
    image, mask = textured_scene()
    big_image = np.repeat(np.repeat(image, 3, axis=0), 3, axis=1)  # 960 x 720: long side > 640
    big_mask = np.repeat(np.repeat(mask, 3, axis=0), 3, axis=1)
    segmenter = ClassicalSegmenter(SegmenterConfig())
    embedding = segmenter.embed(big_image)
    prompts = ideal_prompts(mask)
    big_prompts = PointPrompts(prompts.points * 3, prompts.labels)
    masks, _ = segmenter.decode(embedding, [big_prompts])
    assert masks.shape == (1, 3 * HEIGHT, 3 * WIDTH)
    assert dice(masks[0], big_mask) >= 0.85


def test_classical_batched_decode_equals_one_by_one(scene):
    segmenter, embedding, mask = scene
    prompts = ideal_prompts(mask)
    sets = [prompts, PointPrompts.from_xy([], []), PointPrompts(prompts.points[:3], prompts.labels[:3]),
            PointPrompts.from_xy(prompts.points[prompts.labels == 1][:1], [])]
    masks, scores = segmenter.decode(embedding, sets)
    for b, prompt_set in enumerate(sets):
        alone_masks, alone_scores = segmenter.decode(embedding, [prompt_set])
        np.testing.assert_array_equal(masks[b], alone_masks[0])
        assert scores[b] == alone_scores[0]


def test_classical_conflicting_points_on_one_region_take_the_majority_then_the_last(scene):
    segmenter, embedding, mask = scene
    inside = ideal_prompts(mask).points[:1]  # a point on the object
    # two positives and one negative on the same pixel: the majority (positive) wins
    majority = PointPrompts(np.repeat(inside, 3, axis=0), [1, 0, 1])
    assert segmenter.decode(embedding, [majority])[0].any()
    # a tie goes to the later point
    later_negative = PointPrompts(np.repeat(inside, 2, axis=0), [1, 0])
    later_positive = PointPrompts(np.repeat(inside, 2, axis=0), [0, 1])
    masks, _ = segmenter.decode(embedding, [later_negative, later_positive])
    assert not masks[0].any() and masks[1].any()


def edged_scene(size=(240, 320), seed=0):
    """A uint8 RGB image of a dark textured ellipse with a thin arm (3 px wide) on a light textured
    background, and its true mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size[0], :size[1]]
    truth = ((rows - 120) / 70.0) ** 2 + ((cols - 150) / 95.0) ** 2 <= 1.0
    truth |= (np.abs(rows - 120) <= 1) & (cols > 150) & (cols < 300)  # the arm: thinner than any superpixel
    image = np.where(truth[..., None], [60, 40, 90], [200, 190, 150]) + rng.normal(0, 12, size + (3,))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_classical_refine_edges_puts_a_superpixel_mask_on_the_objects_edge_and_keeps_thin_parts():
    image, truth = edged_scene()
    segmenter = ClassicalSegmenter(SegmenterConfig(n_segments=300))  # superpixels of about 16 x 16 pixels
    # a mask whose edge is 16 x 16 blocks (as regions cut across an edge give it), with the arm
    blocks = cv2.resize(truth.astype(np.float32), (20, 15), interpolation=cv2.INTER_AREA) >= 0.5
    coarse = cv2.resize(blocks.astype(np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST).astype(bool)
    coarse |= truth & (np.abs(np.mgrid[:240, :320][0] - 120) <= 1)
    refined = segmenter.refine_edges(image, coarse)
    assert refined.shape == truth.shape and refined.dtype == bool
    assert iou(coarse, truth) < 0.92 and iou(refined, truth) > 0.97
    arm = truth & (np.mgrid[:240, :320][1] > 260)
    assert refined[arm].mean() > 0.9  # the thin arm is an edge too: moved onto the image, not deleted
    assert not segmenter.refine_edges(image, np.zeros_like(truth)).any()


def test_the_pixel_walker_is_grady_s_random_walker():
    """The edge step's solver gives skimage's random walker (direct solve) on the same seeds and weights."""
    from skimage.segmentation import random_walker

    from gpoa.segmenters.classical import _pixel_walk

    rng = np.random.default_rng(0)
    image = rng.random((30, 40, 3)).astype(np.float32)
    seeds = np.zeros((30, 40), np.int32)
    seeds[:, :3], seeds[:, -3:], seeds[10:12, 20] = 1, 2, 1
    ours = _pixel_walk(image, seeds, 30.0)
    theirs = random_walker(image, seeds, beta=30.0, mode="bf", channel_axis=-1, return_full_prob=True)[0]
    assert np.abs(ours - theirs).max() < 1e-3 and 0.05 < ours[seeds == 0].mean() < 0.95


def test_classical_rejects_a_zero_background_prior():
    with pytest.raises(UsageError, match="background_prior"):
        ClassicalSegmenter(SegmenterConfig(background_prior=0.0))


# ----- SAM wiring with a tiny random SAM --------------------------------------------------------------
TINY = "vit_tiny_test"


@pytest.fixture
def tiny_sam(monkeypatch, tmp_path):
    """Registers a tiny SAM builder as ``vit_tiny_test`` and saves a seeded, perturbed model to a
    checkpoint; returns (checkpoint path, the saved state dict)."""
    import importlib

    import segment_anything

    # the package re-exports a function named build_sam, which shadows the module's name
    build_sam = importlib.import_module("segment_anything.build_sam")
    builder = functools.partial(build_sam._build_sam, encoder_embed_dim=32, encoder_depth=2,
                                encoder_num_heads=2, encoder_global_attn_indexes=[1])
    monkeypatch.setitem(build_sam.sam_model_registry, TINY, builder)
    monkeypatch.setitem(segment_anything.sam_model_registry, TINY, builder)
    torch.manual_seed(0)
    model = builder(checkpoint=None)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)  # weights a fresh random build would not have
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    return path, state


def sam_config(checkpoint, multimask: str = "single", model_type: str = TINY) -> SegmenterConfig:
    return SegmenterConfig(backend="sam", model_type=model_type, checkpoint=str(checkpoint), multimask=multimask)


@pytest.fixture
def sam_scene(tiny_sam):
    from gpoa.segmenters.sam import SamSegmenter

    path, _ = tiny_sam
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    segmenter = SamSegmenter(sam_config(path), device="cpu")
    return segmenter, segmenter.embed(image)


SAM_SETS = [
    PointPrompts.from_xy([[10.0, 20.0], [100.0, 50.0]], [[140.0, 80.0]]),
    PointPrompts.from_xy([], []),
    PointPrompts.from_xy([[70.0, 40.0]], [[5.0, 5.0], [120.0, 10.0], [30.0, 85.0], [149.0, 89.0]]),
    PointPrompts.from_xy([[60.0, 30.0]], [[8.0, 80.0], [130.0, 70.0]]),
]


def test_sam_loads_the_checkpoint_weights(tiny_sam):
    from gpoa.segmenters.sam import SamSegmenter

    path, state = tiny_sam
    segmenter = build_segmenter(Config(segmenter=sam_config(path)), device="cpu")
    assert isinstance(segmenter, SamSegmenter)
    loaded = segmenter.model.state_dict()
    for key in ("mask_decoder.iou_token.weight", "image_encoder.patch_embed.proj.weight"):
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)
    assert not segmenter.model.training


def test_sam_accepts_a_state_dict_wrapped_under_model(tiny_sam, tmp_path):
    from gpoa.segmenters.sam import SamSegmenter

    _, state = tiny_sam
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 3}, wrapped)
    loaded = SamSegmenter(sam_config(wrapped)).model.state_dict()
    torch.testing.assert_close(loaded["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"])


def test_sam_embedding_and_decode_shapes(sam_scene):
    segmenter, embedding = sam_scene
    assert tuple(embedding.features.shape) == (1, 256, 64, 64)
    assert embedding.original_size == (90, 150) and embedding.input_size == (614, 1024)
    masks, scores = segmenter.decode(embedding, SAM_SETS)
    assert masks.shape == (4, 90, 150) and masks.dtype == bool
    assert scores.shape == (4,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert not masks[1].any() and scores[1] == 0.0


def test_sam_batched_decode_equals_one_by_one(sam_scene):
    segmenter, embedding = sam_scene
    masks, scores = segmenter.decode(embedding, SAM_SETS)
    for b, prompt_set in enumerate(SAM_SETS):
        alone_masks, alone_scores = segmenter.decode(embedding, [prompt_set])
        # float rounding of a batched matmul may flip a pixel whose logit is ~0; padding would flip many
        assert (masks[b] != alone_masks[0]).mean() <= 1e-3
        np.testing.assert_allclose(scores[b], alone_scores[0], atol=1e-5)


def test_sam_matches_sam_predictor(sam_scene):
    from segment_anything import SamPredictor

    segmenter, embedding = sam_scene
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    predictor = SamPredictor(segmenter.model)
    predictor.set_image(image)
    prompts = SAM_SETS[2]
    expected, expected_iou, _ = predictor.predict(prompts.points, prompts.labels, multimask_output=False)
    masks, scores = segmenter.decode(embedding, [prompts])
    np.testing.assert_array_equal(masks[0], expected[0])
    np.testing.assert_allclose(scores[0], np.clip(expected_iou[0], 0, 1), atol=1e-6)


@pytest.mark.parametrize("multimask", ["best", "0", "2"])
def test_sam_multimask_modes(tiny_sam, multimask):
    from segment_anything import SamPredictor

    from gpoa.segmenters.sam import SamSegmenter

    path, _ = tiny_sam
    image = (np.random.default_rng(1).random((64, 96, 3)) * 255).astype(np.uint8)
    segmenter = SamSegmenter(sam_config(path, multimask=multimask))
    masks, scores = segmenter.decode(segmenter.embed(image), SAM_SETS[:1])
    predictor = SamPredictor(segmenter.model)
    predictor.set_image(image)
    all_masks, all_iou, _ = predictor.predict(SAM_SETS[0].points, SAM_SETS[0].labels, multimask_output=True)
    index = int(np.argmax(all_iou)) if multimask == "best" else int(multimask)
    np.testing.assert_array_equal(masks[0], all_masks[index])
    np.testing.assert_allclose(scores[0], np.clip(all_iou[index], 0, 1), atol=1e-6)


def test_sam_missing_checkpoint_names_the_path_and_the_download(tmp_path):
    from gpoa.segmenters.sam import SamSegmenter

    missing = tmp_path / "nowhere" / "sam_vit_l_0b3195.pth"
    with pytest.raises(UsageError) as error:
        SamSegmenter(sam_config(missing, model_type="vit_l"))
    message = str(error.value)
    assert str(missing) in message
    assert "sam_vit_l_0b3195.pth" in message and "segment-anything#model-checkpoints" in message
    assert "segmenter.checkpoint" in message and "segmenter.model_type" in message


def test_sam_unknown_model_type_lists_the_known_ones(tmp_path):
    from gpoa.segmenters.sam import SamSegmenter

    with pytest.raises(UsageError, match="vit_b, vit_h, vit_l"):
        SamSegmenter(sam_config(tmp_path / "x.pth", model_type="vit_xxl"))


def test_sam_corrupt_checkpoint(tiny_sam, tmp_path):
    from gpoa.segmenters.sam import SamSegmenter

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UsageError, match="corrupt"):
        SamSegmenter(sam_config(corrupt))


def test_sam_checkpoint_of_another_architecture(tiny_sam, tmp_path):
    from gpoa.segmenters.sam import SamSegmenter

    _, state = tiny_sam
    other = tmp_path / "other.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("mask_decoder.")}, other)
    with pytest.raises(UsageError, match="incompatible with model_type 'vit_tiny_test'.*missing keys"):
        SamSegmenter(sam_config(other))


def test_sam_unknown_multimask_mode(tiny_sam):
    from gpoa.segmenters.sam import SamSegmenter

    path, _ = tiny_sam
    with pytest.raises(UsageError, match="multimask"):
        SamSegmenter(sam_config(path, multimask="all"))


def test_sam_pad_batching_is_one_decoder_call_with_ignore_labels(tiny_sam, monkeypatch):
    from gpoa.segmenters.sam import SamSegmenter

    path, _ = tiny_sam
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    cfg = sam_config(path)
    cfg.sam_batching = "pad"
    segmenter = SamSegmenter(cfg)
    embedding = segmenter.embed(image)
    calls = []
    original = segmenter.model.prompt_encoder.forward

    def spy(points, boxes, masks):
        calls.append((tuple(points[0].shape), points[1].clone()))
        return original(points, boxes, masks)

    monkeypatch.setattr(segmenter.model.prompt_encoder, "forward", spy)
    masks, scores = segmenter.decode(embedding, SAM_SETS)
    # the three non-empty sets (3, 5 and 3 points) go in one call, padded to 5 points with label -1
    assert len(calls) == 1 and calls[0][0] == (3, 5, 2)
    assert (calls[0][1] == -1).sum().item() == 4
    assert masks.shape == (4, 90, 150) and not masks[1].any() and scores[1] == 0.0
    # the longest set needs no padding: its mask is the exact one
    exact = SamSegmenter(sam_config(path))
    exact_masks, _ = exact.decode(exact.embed(image), [SAM_SETS[2]])
    assert (masks[2] != exact_masks[0]).mean() <= 1e-3


def test_sam_unknown_batching_mode(tiny_sam):
    from gpoa.segmenters.sam import SamSegmenter

    cfg = sam_config(tiny_sam[0])
    cfg.sam_batching = "sometimes"
    with pytest.raises(UsageError, match="sam_batching"):
        SamSegmenter(cfg)


def test_decode_cells_matches_the_full_masks_and_its_rank_one_updates_are_exact():
    from gpoa.segmenters import decode_cells, mask_cells

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(150, 230, 3), dtype=np.uint8)
    image[40:110, 60:160] = (200, 60, 40)
    segmenter = ClassicalSegmenter(SegmenterConfig(n_segments=120))
    embedding = segmenter.embed(image)
    points = np.column_stack([rng.uniform(0, 230, 14), rng.uniform(0, 150, 14)])
    points[:4] = [(70, 50), (150, 100), (100, 80), (130, 60)]  # on the object
    labels = np.array([1, 1, 1, 1] + [0] * 10)
    base_rows = np.arange(9)

    def prompts(rows):
        return PointPrompts(points[rows], labels[rows])

    flipped = labels.copy()
    flipped[5] = 1
    variants = ([prompts(np.delete(base_rows, i)) for i in range(9)]  # one seed fewer
                + [prompts(np.r_[base_rows, j]) for j in range(9, 14)]  # one seed more
                + [PointPrompts(points[base_rows], flipped[base_rows])]  # one seed's label flipped
                + [prompts(np.r_[base_rows[2:], 12])]  # several seeds differ: solved from scratch
                + [prompts(base_rows), prompts(np.array([5, 6]))])  # unchanged; no positive at all
    fast = segmenter.decode_cells(embedding, variants, (10, 12), base=prompts(base_rows))
    slow = segmenter.decode_cells(embedding, variants, (10, 12))
    masks, _ = segmenter.decode(embedding, variants)
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    np.testing.assert_allclose(slow, mask_cells(masks, (10, 12)), atol=1e-6)
    assert not fast[-1].any() and fast[:-1].any(axis=(1, 2)).all()

    class Plain:  # a segmenter without its own decode_cells: masks averaged per cell
        decode = staticmethod(segmenter.decode)

    np.testing.assert_allclose(decode_cells(Plain(), embedding, variants, (10, 12)), slow, atol=1e-6)


@pytest.mark.parametrize("height, width, shape", [(140, 140, (10, 10)), (37, 53, (10, 12)), (9, 7, (10, 12))])
def test_mask_cells_are_the_share_of_each_cell_inside_the_mask(height, width, shape):
    from gpoa.segmenters import mask_cells

    rng = np.random.default_rng(0)
    mask = rng.random((height, width)) < 0.4
    rows, cols = shape
    expected = np.zeros(shape)
    row_of = np.arange(height) * rows // height
    col_of = np.arange(width) * cols // width
    for r in range(rows):
        for c in range(cols):
            block = mask[np.ix_(row_of == r, col_of == c)]
            expected[r, c] = block.mean() if block.size else 0.0
    np.testing.assert_allclose(mask_cells(mask, shape), expected, atol=1e-6)
    np.testing.assert_allclose(mask_cells(mask[None], shape)[0], expected, atol=1e-6)


# ----- the mask prompt (SAM's mask_input) ------------------------------------------------------------------
def test_mask_prompt_logits_put_the_prompt_where_the_model_sees_the_image():
    from gpoa.segmenters.common import MASK_PROMPT_LOGIT, mask_prompt_logits

    probability = np.zeros((40, 80), np.float32)
    probability[:, :40] = 1.0  # the left half of the image
    logits = mask_prompt_logits(probability, (8, 16), 16)  # SAM: long side to the grid, the rest padded
    expected = np.full((16, 16), -MASK_PROMPT_LOGIT, np.float32)
    expected[:8, :8] = MASK_PROMPT_LOGIT
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    half = mask_prompt_logits(np.full((40, 80), 0.5, np.float32), (16, 16), 16)  # SAM 2: stretched
    np.testing.assert_allclose(half, 0.0, atol=1e-6)


def test_classical_mask_prompt_fills_what_the_points_do_not_reach(scene):
    segmenter, embedding, mask = scene
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    square = (np.abs(xx - 0.82 * WIDTH) < 0.08 * WIDTH) & (np.abs(yy - 0.3 * HEIGHT) < 0.12 * HEIGHT)
    one_point = PointPrompts.from_xy([np.argwhere(mask).mean(axis=0)[::-1]], [])
    alone = segmenter.decode(embedding, [one_point])[0][0]
    # the prompt says the square (no point on it) is object too: the mask takes it, the disc stays
    prompted = segmenter.with_mask_prompt(embedding, (mask | square).astype(np.float32))
    guided = segmenter.decode(prompted, [one_point])[0][0]
    assert alone[square].mean() < 0.05 and guided[square].mean() > 0.9
    assert dice(guided & ~square, mask) > 0.9
    # a point set without a positive still gives an empty mask
    assert not segmenter.decode(prompted, [PointPrompts.from_xy([], [[5.0, 5.0]])])[0].any()
    # the prompt's weight 0 is no prompt at all; a prompt of another size is refused
    unweighted = ClassicalSegmenter(SegmenterConfig(mask_prompt_weight=0.0)).with_mask_prompt(embedding, mask * 1.0)
    np.testing.assert_array_equal(segmenter.decode(unweighted, [one_point])[0][0], alone)
    with pytest.raises(ValueError, match="image's size"):
        segmenter.with_mask_prompt(embedding, np.zeros((10, 10)))


def test_classical_rank_one_updates_stay_exact_with_a_mask_prompt(scene):
    segmenter, embedding, mask = scene
    prompted = segmenter.with_mask_prompt(embedding, np.roll(mask, 25, axis=1).astype(np.float32))
    base = ideal_prompts(mask)
    variants = ([PointPrompts(np.delete(base.points, i, 0), np.delete(base.labels, i)) for i in range(len(base))]
                + [PointPrompts(np.r_[base.points, [[300.0, 20.0]]], np.r_[base.labels, 1])]
                + [PointPrompts(base.points, np.where(np.arange(len(base)) == 9, 1, base.labels))])
    fast = segmenter.decode_cells(prompted, variants, (12, 16), base=base)
    slow = segmenter.decode_cells(prompted, variants, (12, 16))
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    assert not np.allclose(slow, segmenter.decode_cells(embedding, variants, (12, 16)))  # the prompt counts


def test_sam_mask_prompt_is_the_predictors_mask_input(sam_scene):
    from segment_anything import SamPredictor

    from gpoa.segmenters import with_mask_prompt
    from gpoa.segmenters.common import mask_prompt_logits

    segmenter, embedding = sam_scene
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    probability = np.zeros((90, 150), np.float32)
    probability[20:70, 30:110] = 1.0
    prompted = with_mask_prompt(segmenter, embedding, probability)
    predictor = SamPredictor(segmenter.model)
    predictor.set_image(image)
    # SAM's input: long side 1024 (614 x 1024), a quarter of it on the 256 x 256 grid (154 x 256)
    logits = mask_prompt_logits(probability, (154, 256), 256)
    np.testing.assert_allclose(prompted.mask_input[0, 0].numpy(), logits)
    prompts = SAM_SETS[2]
    expected, _, _ = predictor.predict(prompts.points, prompts.labels, mask_input=logits[None], multimask_output=False)
    masks, _ = segmenter.decode(prompted, [prompts, SAM_SETS[3]])
    assert (masks[0] != expected[0]).mean() <= 1e-3 and expected[0].any() and not expected[0].all()
    assert (masks[0] != segmenter.decode(embedding, [prompts])[0][0]).any()  # the prompt is not ignored
