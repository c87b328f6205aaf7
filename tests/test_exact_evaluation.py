"""Stage 4's fast scoring gives the numbers of the straightforward computation, to the bit: HD95 on
boundary pixels with k-d trees against distance transforms over the whole image and against brute
force, the rows of many prompt sets scored together against each scored alone, the mask files
byte for byte, and the display-size overlays; then stage 4 end to end on a 700 x 500 image."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gpoa.evaluation import ROW_COLUMNS, image_row, image_rows
from gpoa.io import encode_png, read_mask, write_mask, write_prompt_file
from gpoa.metrics import Boundary, boundary_pixels, hd95
from gpoa.viz import MaskOverlays, draw_points, overlay_mask


# ----- the straightforward computations the fast ones must equal --------------------------------------
def transform_hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    """HD95 as gpoa.metrics computed it before boundary pixels and k-d trees: the surfaces as the masks
    minus their erosions, distances from two Euclidean distance transforms over the whole image."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float(np.hypot(*truth.shape))
    surface = [m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), border_value=0)
               for m in (prediction, truth)]
    to_truth, to_prediction = (ndimage.distance_transform_edt(~s) for s in surface[::-1])
    return float(np.percentile(np.concatenate([to_truth[surface[0]], to_prediction[surface[1]]]), 95))


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) of the mask's pixels with an 8-neighbour outside it or outside the image."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    outside = np.zeros_like(mask)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            outside |= ~padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width]
    return np.argwhere(mask & outside)


def brute_hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    """HD95 from every pair of surface pixels."""
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float(np.hypot(*truth.shape))
    a, b = brute_surface(prediction), brute_surface(truth)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).astype(np.float64))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


def straightforward_row(task: str, prompt_set: str, image: str, prediction, truth, ignore=None) -> dict:
    """An evaluation row as gpoa.evaluation made it before: each metric from the whole masks."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if ignore is not None:
        prediction, truth = prediction & ~ignore, truth & ~ignore
    intersection = int(np.logical_and(prediction, truth).sum())
    union = int(np.logical_or(prediction, truth).sum())
    total = int(prediction.sum()) + int(truth.sum())
    return {"task": task, "prompt_set": prompt_set, "image": image,
            "dice": 1.0 if total == 0 else 2.0 * intersection / total,
            "iou": 1.0 if union == 0 else intersection / union, "hd95": transform_hd95(prediction, truth),
            "intersection": intersection, "union": union, "prediction_area": int(prediction.sum()),
            "truth_area": int(truth.sum())}


# ----- masks ------------------------------------------------------------------------------------------
def hand_made(shape=(24, 32)) -> list:
    """Masks whose boundaries test the edge cases: touching the image's edges, one pixel, one row,
    a hole, a diagonal, the whole image, nothing."""
    masks = []
    for top, left, height, width in ((2, 3, 6, 9), (0, 0, 5, 5), (19, 27, 5, 5), (5, 0, 1, 32), (10, 10, 1, 1),
                                     (0, 0, 24, 32)):
        mask = np.zeros(shape, bool)
        mask[top:top + height, left:left + width] = True
        masks.append(mask)
    ring = np.zeros(shape, bool)
    ring[4:20, 6:26] = True
    ring[8:16, 10:22] = False
    diagonal = np.eye(*shape, dtype=bool) | np.eye(*shape, k=1, dtype=bool)
    return masks + [ring, diagonal, np.zeros(shape, bool)]


def random_masks(rng: np.random.Generator, count: int) -> list:
    """Salt-and-pepper noise, smooth blobs and sparse specks of random shapes, a few empty."""
    masks = []
    for i in range(count):
        shape = tuple(int(v) for v in rng.integers(8, 60, size=2))
        kind = i % 4
        if kind == 0:
            mask = rng.random(shape) < rng.uniform(0.2, 0.8)
        elif kind == 1:
            mask = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(1, 4)) > rng.uniform(-0.2, 0.3)
        elif kind == 2:
            mask = rng.random(shape) < 0.02
        else:
            mask = np.zeros(shape, bool) if i % 8 == 3 else ndimage.binary_dilation(rng.random(shape) < 0.01,
                                                                                   iterations=3)
        masks.append(mask)
    return masks


def test_boundary_pixels_are_the_mask_minus_its_erosion():
    for mask in hand_made() + random_masks(np.random.default_rng(1), 40):
        np.testing.assert_array_equal(boundary_pixels(mask), brute_surface(mask))
        assert Boundary(mask).empty == (not mask.any())


def test_hd95_equals_distance_transforms_and_brute_force_to_the_bit():
    masks = hand_made()
    for prediction in masks:
        for truth in masks:
            assert hd95(prediction, truth) == transform_hd95(prediction, truth) == brute_hd95(prediction, truth)
    rng = np.random.default_rng(2)
    shapes = random_masks(rng, 160)
    for prediction in shapes:
        # a truth of the same size: another random mask, or the prediction shifted and eroded
        truth = (rng.random(prediction.shape) < 0.5 if rng.random() < 0.5
                 else ndimage.binary_erosion(np.roll(prediction, int(rng.integers(-3, 4)), axis=1)))
        assert hd95(prediction, truth) == transform_hd95(prediction, truth) == brute_hd95(prediction, truth)
    # empty masks: the documented conventions
    empty, one = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    one[2, 3] = True
    assert hd95(empty, empty) == 0.0 and hd95(empty, one) == hd95(one, empty) == 10.0


def test_rows_scored_together_equal_each_scored_alone_and_the_straightforward_row():
    rng = np.random.default_rng(3)
    shape = (45, 61)
    truth = ndimage.gaussian_filter(rng.normal(size=shape), 3) > 0.1
    ignore = np.zeros(shape, bool)
    ignore[:, :7] = True
    predictions = {"initial": np.roll(truth, 2, axis=0), "empty": np.zeros(shape, bool), "full": np.ones(shape, bool),
                   "noise": rng.random(shape) < 0.4, "same": truth.copy(), "uint8": (truth * 255).astype(np.uint8)}
    for void in (None, ignore):
        rows = image_rows("task", "img", predictions, truth, void)
        assert [r["prompt_set"] for r in rows] == list(predictions)
        for entry, (name, prediction) in zip(rows, predictions.items()):
            assert list(entry) == list(ROW_COLUMNS)
            assert entry == image_row("task", name, "img", prediction, truth, void)
            assert entry == straightforward_row("task", name, "img", prediction, truth, void)
    # an empty truth: every boundary-free case
    rows = image_rows("task", "img", predictions, np.zeros(shape, bool))
    assert [r["hd95"] for r in rows] == [transform_hd95(p, np.zeros(shape, bool)) for p in predictions.values()]


def test_mask_files_are_byte_identical_to_the_default_png_of_0_and_255(tmp_path):
    mask = ndimage.gaussian_filter(np.random.default_rng(4).normal(size=(90, 70)), 4) > 0
    write_mask(tmp_path / "m.png", mask)
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="PNG")  # how it was written
    assert (tmp_path / "m.png").read_bytes() == buffer.getvalue()
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_photo_pngs_are_lossless():
    rng = np.random.default_rng(5)
    for array in (rng.integers(0, 256, (33, 47, 3), dtype=np.uint8), rng.integers(0, 256, (20, 9), dtype=np.uint8)):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(array, photo=True))))
        np.testing.assert_array_equal(decoded, array)


def test_overlays_of_small_images_are_unchanged_and_large_ones_shrink_once():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:40, 20:70] = True
    positive, negative = np.array([[30.0, 20.0]]), np.array([[5.0, 50.0], [75.0, 55.0]])
    np.testing.assert_array_equal(MaskOverlays(image)(mask, positive, negative),
                                  overlay_mask(image, mask, positive, negative))
    # over the limit: drawn on the image shrunk to a long side of 40 (half size), prompts halved
    overlays = MaskOverlays(image, max_side=40)
    assert overlays.image.shape == (30, 40, 3) and overlays.scale == 0.5
    drawn = overlays(mask, positive, negative)
    np.testing.assert_array_equal(drawn, overlay_mask(overlays.image, mask[::2, ::2], positive / 2, negative / 2))
    # stage 1's prompt overlays: the same points on the same (shrunk) image
    np.testing.assert_array_equal(MaskOverlays(image).points(positive, negative), draw_points(image, positive, negative))
    np.testing.assert_array_equal(overlays.points(positive, negative),
                                  draw_points(overlays.image, positive / 2, negative / 2))


# ----- stage 4 end to end ---------------------------------------------------------------------------
def test_stage_four_writes_the_decoded_masks_and_scores_them_exactly(tmp_path):
    """On a 700 x 500 image (the classical segmenter upsamples its label map): every mask file holds
    the segmenter's mask, and every row equals the straightforward row of that mask."""
    from gpoa.backends import Backends
    from gpoa.config import Config
    from gpoa.inference import decode_masks
    from gpoa.prompts import PromptSet, sample_ideal_prompts
    from gpoa.runtime import StageReport
    from gpoa.stages.segmentation import segment_task
    from gpoa.tasks import load_tasks

    rng = np.random.default_rng(7)
    height, width = 500, 700
    yy, xx = np.mgrid[0:height, 0:width]
    truth = (xx - 380) ** 2 / 190 ** 2 + (yy - 240) ** 2 / 130 ** 2 <= 1
    image = np.where(truth[..., None], [150, 80, 60], [210, 170, 150]) + rng.normal(0, 12, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    root = tmp_path / "task"
    for folder, array in (("reference_image", image), ("target_image", image)):
        (root / folder).mkdir(parents=True)
        Image.fromarray(array).save(root / folder / "a.png")
    for folder in ("reference_mask", "target_mask"):
        (root / folder).mkdir()
        write_mask(root / folder / "a.png", truth)
    cfg = dataclasses.replace(Config(), data=[str(root)], overwrite=True)
    backends = Backends(cfg, "cpu")
    grid = backends.grid
    positive, negative = sample_ideal_prompts(grid, truth, 6, 6, rng)
    sets = {"initial": PromptSet("a.png", (width, height), grid, positive, negative),
            "flood": PromptSet("a.png", (width, height), grid, [positive[0], 0], negative[:2])}
    for name, prompt_set in sets.items():
        write_prompt_file(root / f"{name}_indices" / "a.json", prompt_set)
    task = load_tasks(cfg, backends)[0]
    out = tmp_path / "results"
    report = StageReport("segmentation")
    segment_task(task, backends, [], out, report)
    assert not report.failed
    rows = {row["prompt_set"]: row for row in json.loads((out / "metrics.json").read_text())}
    assert set(rows) == {"initial", "flood", "ideal"}
    decoded = decode_masks(backends.segmenter, image, list(sets.values()))
    for name, mask in zip(sets, decoded):
        np.testing.assert_array_equal(read_mask(out / "masks" / name / "a.png"), mask)
    for name, row in rows.items():
        written = read_mask(out / "masks" / name / "a.png")
        assert row == straightforward_row(task.name, name, "a", written, truth)
        assert (out / "overlays" / name / "a.png").is_file()
    assert rows["initial"]["dice"] > 0.8 and rows["flood"]["hd95"] != rows["initial"]["hd95"]
    assert pytest.approx(rows["initial"]["intersection"] / rows["initial"]["union"]) == rows["initial"]["iou"]
