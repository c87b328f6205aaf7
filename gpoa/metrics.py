"""Segmentation metrics on boolean masks (H, W): Dice, IoU and the 95th-percentile Hausdorff distance.

Conventions for empty masks (both documented in README.md):

- Dice and IoU: both masks empty → 1.0 (perfect agreement); one empty → 0.0.
- HD95 (pixels): both empty → 0.0; exactly one empty → the image diagonal, the largest distance
  two pixels of the image can have, so a missed or hallucinated object gets the worst score
  instead of an undefined one.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
from scipy.spatial import cKDTree


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    return overlap_scores(*overlap_counts(prediction, truth))[0]


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    return overlap_scores(*overlap_counts(prediction, truth))[1]


def overlap_counts(prediction: np.ndarray, truth: np.ndarray, truth_area: Optional[int] = None) -> tuple:
    """(intersection, prediction area, truth area) in pixels of two bool masks (H, W); ``truth_area``
    when it is known already."""
    truth_area = int(np.count_nonzero(truth)) if truth_area is None else int(truth_area)
    return int(np.count_nonzero(prediction & truth)), int(np.count_nonzero(prediction)), truth_area


def overlap_scores(intersection: int, prediction_area: int, truth_area: int) -> tuple:
    """(Dice, IoU) from the pixel counts of :func:`overlap_counts` (see the module docstring for empty masks)."""
    total = prediction_area + truth_area
    union = total - intersection
    return (1.0 if total == 0 else 2.0 * intersection / total), (1.0 if union == 0 else intersection / union)


def dice_batch(predictions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of each mask of ``predictions`` (B, H, W) against one ``truth`` (H, W): (B,) float64."""
    predictions, truth = np.asarray(predictions, bool), np.asarray(truth, bool)
    # count_nonzero per mask is ~10x faster than boolean indexing or a summed reduction
    overlap = np.empty_like(truth)
    overlaps = np.array([np.count_nonzero(np.logical_and(p, truth, out=overlap)) for p in predictions], np.float64)
    total = np.array([np.count_nonzero(p) for p in predictions], np.float64) + np.count_nonzero(truth)
    return np.where(total == 0, 1.0, 2.0 * overlaps / np.maximum(total, 1))


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """(N, 2) int64 (row, col) of the boundary pixels of ``mask`` (H, W) bool, in raster order: its
    pixels with a pixel outside it among their 8 neighbours, the image's edge counting as outside
    (the mask minus its erosion by a 3 x 3 square). Work is confined to the mask's bounding box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros((0, 2), dtype=np.int64)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # the box with a margin of one pixel of background on every side
    window = np.zeros((bottom - top + 2, right - left + 2), dtype=np.uint8)
    window[1:-1, 1:-1] = mask[top:bottom, left:right]
    eroded = cv2.erode(window, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.argwhere(window > eroded) + np.array([top - 1, left - 1])


class Boundary:
    """The boundary pixels of one mask (H, W) (:func:`boundary_pixels`) and a k-d tree over them:
    exact Euclidean distances, in pixels, from any pixels to the nearest of them. Built once, it
    serves every mask compared with this one."""

    def __init__(self, mask: np.ndarray):
        mask = np.asarray(mask, bool)
        self.shape = mask.shape
        self.points = boundary_pixels(mask)
        self._tree = cKDTree(self.points) if len(self.points) else None

    @property
    def empty(self) -> bool:
        """Whether the mask is empty (every non-empty mask has a boundary pixel)."""
        return self._tree is None

    def distances(self, points: np.ndarray) -> np.ndarray:
        """Distance of each of ``points`` (N, 2) (row, col) to the nearest boundary pixel: (N,) float64,
        the values a Euclidean distance transform of the boundary's complement holds there."""
        return self._tree.query(points)[0]


def hd95_between(prediction: Boundary, truth: Boundary) -> float:
    """:func:`hd95` of two masks given as their :class:`Boundary`: the distances from each boundary
    pixel to the other boundary, both ways, are exact, so the result equals :func:`hd95`'s."""
    if prediction.empty and truth.empty:
        return 0.0
    if prediction.empty or truth.empty:
        return float(np.hypot(*truth.shape))
    distances = np.concatenate([truth.distances(prediction.points), prediction.distances(truth.points)])
    return float(np.percentile(distances, 95))


def hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    """95th percentile of the symmetric surface distances, in pixels (see the module docstring for empty
    masks): every boundary pixel of each mask (:func:`boundary_pixels`) to the nearest of the other's."""
    return hd95_between(Boundary(prediction), Boundary(truth))


def all_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict:
    return {"dice": dice(prediction, truth), "iou": iou(prediction, truth), "hd95": hd95(prediction, truth)}
