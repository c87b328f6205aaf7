"""What the agent sees of the segmenter's mask, without the truth: node columns and graph globals.

Everything here compares the mask with the image's own match scores, on the patch grid, so it
means the same on any image and with any features:

- the **predicted region** (:func:`gpoa.placement.predicted_region`: the best-matching patches, as
  many as the reference's object share, light pieces dropped) and its **confidence** (how
  step-like the score map is on it);
- the mask's **agreement** with that region (soft Dice of the mask's per-patch share against the
  region), its **area** relative to the reference's object area, the **mean match rank** inside it,
  and its **coverage** of the best-matching patches;
- for every node that can be toggled, the **lookahead**: how those quantities would change if it
  were toggled (the segmenter decodes every one-toggle variant of the current prompts; the
  classical segmenter does it by rank-one updates of one factorisation), and how much of the mask
  would change. An agent that sees the effect of each edit before making it can tell an edit that
  floods the background from one that completes the object on images it was never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from gpoa.config import PlacementConfig
from gpoa.graph import MASK_COLUMNS, MASK_DISTANCE_SCALE, DualSpaceGraph
from gpoa.placement import PatchScores, predicted_region, reference_foreground_share, region_correlation
from gpoa.samples import EpisodeSample

#: lookahead changes of agreement, match rank and coverage are multiplied by this before clipping to [-1, 1]
LOOKAHEAD_SCALE = 4.0
#: the smallest reference object share the area ratios divide by
MIN_SHARE = 0.02
#: statistics of :func:`cell_statistics`, in order
STATISTICS = ("region_agreement", "area", "match_rank", "top_coverage")


@dataclass
class RegionView:
    """Per-image constants of the mask view: ``region`` (P,) float32 0/1 (P = rows * cols patches),
    ``confidence`` in [0, 1], ``top`` (P,) bool the best-matching patches (as many as the reference's
    object area covers), ``patch_rank`` (P,) float32 match ranks, ``reference_share`` the share of
    the reference image inside its mask; ``domain_region`` (P,) float32 0/1, with a taught policy's
    domain encoder, the patches its classifier calls the object (:mod:`gpoa.domain`), else None."""

    region: np.ndarray
    confidence: float
    top: np.ndarray
    patch_rank: np.ndarray
    reference_share: float
    domain_region: Optional[np.ndarray] = None


def region_view(sample: EpisodeSample, graph: DualSpaceGraph, margin: np.ndarray,
                settings: PlacementConfig) -> RegionView:
    """The :class:`RegionView` of a sample whose patches have nearest-neighbour ``margin`` (P,); the
    logistic view joins when the sample carries its task's classifier. A sample with a
    ``region_prior`` (a clip's carried mask) has that as its region, and the confidence says how
    step-like the match scores are on it (:func:`gpoa.placement.region_correlation`)."""
    logistic = None if sample.classifier is None else sample.classifier.score(sample.target_features)
    scores = PatchScores(margin=margin, logistic=logistic)
    if sample.region_prior is not None:
        piece = (np.asarray(sample.region_prior, dtype=np.float32).reshape(-1) >= 0.5).astype(np.int64)
        confidence = max(region_correlation(view, piece > 0) for view in scores.views())
    else:
        piece, _, confidence, _ = predicted_region(scores, graph.grid,
                                                   reference_foreground_share(sample.reference), settings)
    share = float(sample.reference.foreground_share)
    rank = graph.patch_rank
    top = rank >= min(1.0 - share, float(rank.max()))
    domain = None if sample.domain is None else sample.domain.region(sample.target_features)
    return RegionView((piece > 0).astype(np.float32), float(np.clip(confidence, 0.0, 1.0)), top, rank, share, domain)


def soft_dice(cells: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Soft Dice (B,) float64 of per-patch mask shares ``cells`` (B, P) with a 0/1 ``region`` (P,)."""
    cells = np.asarray(cells, dtype=np.float64)
    return 2.0 * (cells @ region) / np.maximum(cells.sum(axis=1) + region.sum(), 1e-9)


def domain_lookahead(cells_now: np.ndarray, cells_after: np.ndarray, view: RegionView) -> np.ndarray:
    """The ``domain_lookahead_agreement`` column (:mod:`gpoa.domain`) of V one-toggle variants, (V,)
    float32 in [-1, 1]: the change of the mask's soft Dice with ``view.domain_region``, scaled as the
    lookahead's agreement column."""
    change = soft_dice(cells_after, view.domain_region) - soft_dice(cells_now[None], view.domain_region)[0]
    return np.clip(change * LOOKAHEAD_SCALE, -1.0, 1.0).astype(np.float32)


def cell_statistics(cells: np.ndarray, view: RegionView) -> np.ndarray:
    """Per-patch mask shares (B, P) → (B, 4) float64, the :data:`STATISTICS`: soft Dice with the
    region, area share of the image, mean match rank inside the mask (0 when empty), share of the
    top patches covered."""
    cells = np.asarray(cells, dtype=np.float64)
    area = cells.sum(axis=1)
    agreement = soft_dice(cells, view.region)
    rank = (cells @ view.patch_rank) / np.maximum(area, 1e-9)
    coverage = cells[:, view.top].mean(axis=1) if view.top.any() else np.zeros(len(cells))
    return np.column_stack([agreement, area / cells.shape[1], rank, coverage])


def current_columns(mask: np.ndarray, cells: np.ndarray, graph: DualSpaceGraph, node_pixels: tuple) -> np.ndarray:
    """The first two :data:`~gpoa.graph.MASK_COLUMNS` of every node, (N, 2) float32: the mask pixel
    under the node's patch centre, and the signed distance of its patch to the mask's edge (patches
    at least half inside count as inside)."""
    grid = graph.grid
    inside = cells.reshape(grid.rows, grid.cols) >= 0.5
    if inside.all():
        edge = np.ones(grid.num_patches)
    elif not inside.any():
        edge = -np.ones(grid.num_patches)
    else:
        edge = np.where(inside, ndimage.distance_transform_edt(inside),
                        -ndimage.distance_transform_edt(~inside)).reshape(-1) / MASK_DISTANCE_SCALE
    return np.column_stack([mask[node_pixels], np.clip(edge[graph.indices], -1.0, 1.0)]).astype(np.float32)


def lookahead_columns(cells_now: np.ndarray, stats_now: np.ndarray, cells_after: np.ndarray,
                      view: RegionView) -> np.ndarray:
    """The lookahead :data:`~gpoa.graph.MASK_COLUMNS` of V one-toggle variants, (V, 5) float32 in [-1, 1].

    ``cells_now`` (P,) and ``stats_now`` (4,) describe the current mask, ``cells_after`` (V, P) the
    variants' masks.
    """
    stats_after = cell_statistics(cells_after, view)
    change = stats_after - stats_now
    share = max(view.reference_share, MIN_SHARE)
    changed = np.abs(cells_after - cells_now).sum(axis=1) / max(cells_now.sum(), view.region.sum(), 1.0)
    columns = np.column_stack([change[:, 0] * LOOKAHEAD_SCALE, change[:, 1] / share,
                               change[:, 2] * LOOKAHEAD_SCALE, change[:, 3] * LOOKAHEAD_SCALE, changed])
    return np.clip(columns, -1.0, 1.0).astype(np.float32)


def no_lookahead(num_nodes: int) -> np.ndarray:
    return np.zeros((num_nodes, len(MASK_COLUMNS) - 2), dtype=np.float32)
