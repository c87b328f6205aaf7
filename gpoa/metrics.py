"""Segmentation metrics on boolean masks (H, W): Dice, IoU and the 95th-percentile Hausdorff distance;
for clips, DAVIS's region similarity J and boundary F with its per-clip statistics (the last section).

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


# ----- video object segmentation: DAVIS's J and F ---------------------------------------------------------
# As the DAVIS toolkit (davis2017-evaluation: davis2017/metrics.py and utils.db_statistics) computes
# them, so that a table of ours sits beside the published ones. J is :func:`iou` (1 when both masks
# are empty); F is the F-measure of boundary pixels matched within a disk.

#: F's match tolerance: a share of the image diagonal (the toolkit's ``bound_th``)
BOUNDARY_TOLERANCE = 0.008
#: the toolkit's decay compares the first and the last of this many bins of frames
DECAY_BINS = 4


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels (H, W) bool of a mask (H, W): the toolkit's ``seg2bmap`` at the mask's own
    size. A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (outside the image the mask is taken to continue, except at the bottom-right corner)."""
    seg = np.asarray(mask, dtype=bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_radius(shape: tuple, tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """The match radius in pixels for masks of ``shape`` (H, W): ceil(tolerance x the image diagonal)
    (a tolerance of 1 or more is a radius in pixels already). 8 at DAVIS's 854 x 480."""
    if tolerance >= 1:
        return int(tolerance)
    return int(np.ceil(tolerance * np.linalg.norm(shape)))


def jaccard(prediction: np.ndarray, truth: np.ndarray, void: Optional[np.ndarray] = None) -> float:
    """DAVIS's region similarity J: :func:`iou` of the masks (H, W) on the pixels outside ``void`` (H, W)
    bool (DAVIS's void label; None: every pixel counts). 1 when both are empty there."""
    if void is None:
        return iou(prediction, truth)
    keep = ~np.asarray(void, bool)
    return iou(np.asarray(prediction, bool) & keep, np.asarray(truth, bool) & keep)


def boundary_f(prediction: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE,
               void: Optional[np.ndarray] = None) -> float:
    """DAVIS's boundary measure F in [0, 1] of ``prediction`` against ``truth`` (H, W): the F-measure of
    the boundary pixels' precision (predicted boundary within :func:`boundary_radius` of the true one,
    matched through a dilation by a disk) and recall. No boundary on either side: 1; on one side only:
    precision 1 and recall 0 (or the reverse), so F = 0. Pixels in ``void`` (H, W) bool are taken out
    of both masks first, as the toolkit does."""
    from skimage.morphology import disk

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"masks of shapes {prediction.shape} and {truth.shape}; F compares masks of one size")
    if void is not None:
        keep = ~np.asarray(void, bool)
        prediction, truth = prediction & keep, truth & keep
    kernel = disk(boundary_radius(truth.shape, tolerance)).astype(np.uint8)
    predicted, true = boundary_map(prediction), boundary_map(truth)
    n_predicted, n_true = int(predicted.sum()), int(true.sum())
    if n_predicted == 0 or n_true == 0:
        return 1.0 if n_predicted == n_true else 0.0
    predicted_near = cv2.dilate(predicted.astype(np.uint8), kernel).astype(bool)
    true_near = cv2.dilate(true.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(predicted & true_near) / n_predicted
    recall = np.count_nonzero(true & predicted_near) / n_true
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def scored_frames(count: int) -> range:
    """The frames of a clip of ``count`` frames that DAVIS scores: all but the first (the annotation
    given) and the last."""
    return range(1, max(count - 1, 1))


def clip_statistics(values) -> dict:
    """DAVIS's statistics of one clip's per-frame J (or F), the values of its scored frames in time
    order: ``mean``; ``recall``, the share of frames above 0.5; ``decay``, the mean of the first of
    :data:`DECAY_BINS` equal bins of frames minus the mean of the last (the toolkit's bins: edges
    ``round(linspace(1, n, 5)) - 1``, each bin taking its upper edge too, so neighbouring bins share a
    frame). All nan for no value."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    # the toolkit casts the edges to uint8 (they wrap past 255 frames); int64 is the same below that
    edges = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    first, last = values[edges[0]:edges[1] + 1], values[edges[-2]:edges[-1] + 1]
    return {"mean": float(values.mean()), "recall": float(np.mean(values > 0.5)),
            "decay": float(first.mean() - last.mean())}
