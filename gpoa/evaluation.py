"""Evaluation rows and tables: per-image metrics with raw counts, summaries per task and over tasks.

A row is one (task, prompt set, image): Dice, IoU and HD95 plus the raw pixel counts behind them
(intersection, union, predicted and true area), so that class-wise or dataset-wise aggregates
(summed intersection over summed union) can be computed later from the CSV alone. Summaries are
per task and prompt set (mean and population std over images); the ``MEAN`` task averages the
per-task means (every task weighs the same, whatever its number of images).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from gpoa.metrics import Boundary, hd95_between, overlap_counts, overlap_scores

METRICS = ("dice", "iou", "hd95")
COUNTS = ("intersection", "union", "prediction_area", "truth_area")
ROW_COLUMNS = ("task", "prompt_set", "image") + METRICS + COUNTS
SUMMARY_COLUMNS = ("task", "prompt_set", "images", "dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean",
                   "hd95_std")
#: task name of the rows that average the per-task means
MEAN_TASK = "MEAN"


def image_row(task: str, prompt_set: str, image: str, prediction: np.ndarray, truth: np.ndarray,
              ignore: Optional[np.ndarray] = None) -> dict:
    """The evaluation row of one predicted mask (H, W) bool against its truth mask (H, W) bool;
    pixels of ``ignore`` (H, W) bool (a benchmark's void label) count for neither."""
    return image_rows(task, image, {prompt_set: prediction}, truth, ignore)[0]


def image_rows(task: str, image: str, predictions: Mapping[str, np.ndarray], truth: np.ndarray,
               ignore: Optional[np.ndarray] = None) -> list:
    """The rows of :func:`image_row` of several predicted masks of one image (prompt set → (H, W)
    bool), in the mapping's order. What depends on the truth alone (its area and boundary) is found
    once for all of them."""
    truth = np.asarray(truth, bool)
    keep = None if ignore is None else ~np.asarray(ignore, bool)
    truth = truth if keep is None else truth & keep
    truth_area, truth_boundary = int(np.count_nonzero(truth)), Boundary(truth)
    rows = []
    for prompt_set, prediction in predictions.items():
        prediction = np.asarray(prediction, bool)
        prediction = prediction if keep is None else prediction & keep
        intersection, prediction_area, _ = counts = overlap_counts(prediction, truth, truth_area)
        dice, iou = overlap_scores(*counts)
        rows.append({"task": task, "prompt_set": prompt_set, "image": image, "dice": dice, "iou": iou,
                     "hd95": hd95_between(Boundary(prediction), truth_boundary),
                     "intersection": intersection, "union": prediction_area + truth_area - intersection,
                     "prediction_area": prediction_area, "truth_area": truth_area})
    return rows


def summarise(rows: Sequence[dict], order: Sequence[str]) -> list:
    """Per task (in order of first appearance) and prompt set (in ``order``): images, mean and std."""
    summary = []
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    for task in tasks:
        for name in order:
            chosen = [r for r in rows if r["task"] == task and r["prompt_set"] == name]
            if not chosen:
                continue
            entry = {"task": task, "prompt_set": name, "images": len(chosen)}
            for metric in METRICS:
                values = np.array([r[metric] for r in chosen], dtype=np.float64)
                entry[f"{metric}_mean"] = float(values.mean())
                entry[f"{metric}_std"] = float(values.std())
            summary.append(entry)
    return summary


def mean_over_tasks(summary: Sequence[dict], order: Sequence[str]) -> list:
    """Rows of task ``MEAN``: for each prompt set, the mean over tasks of the per-task means and stds
    (only over the tasks that have the prompt set); ``images`` is the total."""
    means = []
    for name in order:
        chosen = [s for s in summary if s["prompt_set"] == name and s["task"] != MEAN_TASK]
        if not chosen:
            continue
        entry = {"task": MEAN_TASK, "prompt_set": name, "images": int(sum(s["images"] for s in chosen))}
        for key in SUMMARY_COLUMNS[3:]:
            entry[key] = float(np.mean([s[key] for s in chosen]))
        means.append(entry)
    return means


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with exactly ``columns``; floats with 4 decimals."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def markdown_table(summary: Sequence[dict], with_task: bool = False) -> str:
    """Dice and IoU in %, HD95 in pixels, mean ± std over images."""
    task_head, task_rule = ("| task ", "| --- ") if with_task else ("", "")
    header = (f"{task_head}| prompt set | images | Dice | IoU | HD95 (px) |\n"
              f"{task_rule}| --- | ---: | ---: | ---: | ---: |\n")
    lines = [(f"| {s['task']} " if with_task else "")
             + f"| {s['prompt_set']} | {s['images']} | {100 * s['dice_mean']:.1f} ± {100 * s['dice_std']:.1f} | "
               f"{100 * s['iou_mean']:.1f} ± {100 * s['iou_std']:.1f} | {s['hd95_mean']:.1f} ± {s['hd95_std']:.1f} |"
             for s in summary]
    return header + "\n".join(lines) + "\n"
