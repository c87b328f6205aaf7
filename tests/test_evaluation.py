"""Evaluation rows (metrics and raw counts), summaries per task, the mean over tasks, CSV and tables."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from gpoa.evaluation import (
    MEAN_TASK,
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    image_row,
    markdown_table,
    mean_over_tasks,
    summarise,
    to_csv,
)
from gpoa.metrics import all_metrics


def rect(top: int, left: int, height: int, width: int, shape=(20, 30)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def row(task: str, prompt_set: str, image: str, dice: float) -> dict:
    return {"task": task, "prompt_set": prompt_set, "image": image, "dice": dice, "iou": dice / 2,
            "hd95": 10 * dice}


def test_image_row_counts_match_the_masks():
    prediction, truth = rect(2, 3, 5, 6), rect(4, 5, 6, 8)  # overlap rows 4-6, cols 5-8: 3 x 4
    entry = image_row("cells", "initial", "img_001", prediction, truth)
    assert list(entry) == list(ROW_COLUMNS)
    assert (entry["task"], entry["prompt_set"], entry["image"]) == ("cells", "initial", "img_001")
    assert entry["intersection"] == 12 and entry["prediction_area"] == 30 and entry["truth_area"] == 48
    assert entry["union"] == 30 + 48 - 12 == int(np.count_nonzero(prediction | truth))
    assert entry["dice"] == pytest.approx(2 * 12 / 78) and entry["iou"] == pytest.approx(12 / 66)
    assert {k: entry[k] for k in ("dice", "iou", "hd95")} == all_metrics(prediction, truth)
    # the counts alone give dataset-wise scores: summed intersection over summed union
    assert entry["intersection"] / entry["union"] == pytest.approx(entry["iou"])
    empty = image_row("cells", "initial", "blank", np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    assert (empty["intersection"], empty["union"], empty["dice"]) == (0, 0, 1.0)
    assert all(isinstance(empty[k], int) for k in ("intersection", "union", "prediction_area", "truth_area"))


def test_summaries_are_per_task_and_prompt_set():
    rows = [row("b", "initial", "x", 0.2), row("b", "initial", "y", 0.6), row("b", "optimized", "x", 0.8),
            row("a", "initial", "z", 0.5), row("a", "ideal", "z", 0.9), row("a", "unlisted", "z", 0.1)]
    summary = summarise(rows, ["initial", "optimized", "ideal"])
    assert [(s["task"], s["prompt_set"], s["images"]) for s in summary] == [
        ("b", "initial", 2), ("b", "optimized", 1), ("a", "initial", 1), ("a", "ideal", 1)]
    first = summary[0]
    assert first["dice_mean"] == pytest.approx(0.4) and first["dice_std"] == pytest.approx(0.2)  # population std
    assert first["iou_mean"] == pytest.approx(0.2) and first["hd95_mean"] == pytest.approx(4.0)
    assert summary[2]["dice_mean"] == pytest.approx(0.5) and summary[2]["dice_std"] == 0.0
    assert summarise([], ["initial"]) == []


def test_mean_over_tasks_averages_the_task_means_not_the_images():
    # task a: 4 images at 0.9; task b: 1 image at 0.1 → per-task mean 0.5 (the image mean would be 0.74)
    rows = [row("a", "initial", f"i{k}", 0.9) for k in range(4)] + [row("b", "initial", "j", 0.1)]
    rows += [row("a", "optimized", "i0", 0.7)]  # only task a has this set
    summary = summarise(rows, ["initial", "optimized"])
    means = mean_over_tasks(summary, ["initial", "optimized"])
    assert [(m["task"], m["prompt_set"], m["images"]) for m in means] == [
        (MEAN_TASK, "initial", 5), (MEAN_TASK, "optimized", 1)]
    assert means[0]["dice_mean"] == pytest.approx(0.5) and means[0]["dice_std"] == pytest.approx(0.0)
    assert means[0]["hd95_mean"] == pytest.approx(5.0) and means[1]["dice_mean"] == pytest.approx(0.7)
    assert list(means[0]) == list(SUMMARY_COLUMNS)
    # earlier MEAN rows never count as a task
    again = mean_over_tasks(summary + means + [{**means[0], "dice_mean": 99.0}], ["initial"])
    assert again[0]["dice_mean"] == pytest.approx(0.5)


def test_csv_and_markdown():
    summary = summarise([row("cells", "initial", "x", 0.25), row("cells", "initial", "y", 0.75)], ["initial"])
    text = to_csv(summary, SUMMARY_COLUMNS)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(SUMMARY_COLUMNS)
    assert parsed[0]["task"] == "cells" and parsed[0]["images"] == "2" and parsed[0]["dice_mean"] == "0.5000"
    table = markdown_table(summary)
    assert "| prompt set | images | Dice |" in table and "| initial | 2 | 50.0 ± 25.0 |" in table
    assert "cells" not in table
    with_task = markdown_table(summary, with_task=True)
    assert "| task | prompt set |" in with_task and "| cells | initial | 2 |" in with_task


def test_ignored_pixels_count_for_neither_mask():
    prediction, truth = rect(2, 3, 5, 6), rect(4, 5, 6, 8)
    ignore = np.zeros_like(truth)
    ignore[4:6, :] = True  # the void band holds part of the overlap and part of each mask
    entry = image_row("voc", "initial", "img", prediction, truth, ignore)
    kept = ~ignore
    assert entry["intersection"] == int(np.count_nonzero(prediction & truth & kept))
    assert entry["prediction_area"] == int(np.count_nonzero(prediction & kept))
    assert entry["truth_area"] == int(np.count_nonzero(truth & kept))
    assert entry["truth_area"] < int(np.count_nonzero(truth))
    assert image_row("voc", "initial", "img", prediction, truth, np.zeros_like(truth)) == image_row(
        "voc", "initial", "img", prediction, truth)
