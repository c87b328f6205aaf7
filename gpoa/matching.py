"""Reference-to-target patch matching: the initial point prompts.

Every foreground patch of the reference (share of mask pixels ≥ ``foreground_fraction``) is
matched to its nearest target patch by cosine similarity of patch features: those target patches
are the positive prompts. Every background patch of the reference (no mask pixel) is matched the
same way: the negatives. With several reference pairs (k-shot) the union of their patches is used.
Matches are deduplicated, positives and negatives are made disjoint (a target patch reached from
both sides keeps the side it resembles more), optionally filtered to mutual nearest neighbours,
and ranked by similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np
from scipy import ndimage

from gpoa.config import MatchingConfig


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows of ``features`` (..., D) scaled to unit length (zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float32)
    norm = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norm, 1e-12)


@dataclass
class ReferenceFeatures:
    """Patch features of the reference pair(s), flattened over all reference images.

    ``features`` (M, D) unit-norm; ``foreground`` / ``background`` (M,) bool patch labels;
    ``foreground_share`` the share of the reference image area inside its mask (the expected object
    size); ``instances`` how many objects a reference image holds (:func:`count_instances`); ``foreground_prototype`` / ``background_prototype`` (D,) unit-norm class means and
    ``foreground_self_similarity`` (computed once).
    """

    features: np.ndarray
    foreground: np.ndarray
    background: np.ndarray
    foreground_share: float = 0.0
    # objects (connected pieces of the mask) per reference image, averaged over the references
    instances: float = 1.0

    @cached_property
    def foreground_prototype(self) -> np.ndarray:
        return l2_normalise(self.features[self.foreground].mean(axis=0))

    @cached_property
    def background_prototype(self) -> np.ndarray:
        return l2_normalise(self.features[self.background].mean(axis=0))

    @cached_property
    def foreground_self_similarity(self) -> float:
        """How alike the object's own patches are: the median, over foreground patches, of the best
        cosine similarity to another foreground patch (1.0 with a single foreground patch). The
        presence score (:mod:`gpoa.presence`) is measured against it."""
        foreground = self.features[self.foreground]
        if len(foreground) < 2:
            return 1.0
        similarity = foreground @ foreground.T
        np.fill_diagonal(similarity, -np.inf)
        return float(np.median(similarity.max(axis=1)))


def count_instances(mask: np.ndarray, min_share: float = 0.1) -> int:
    """Objects in a mask (H, W) bool: its 8-connected pieces of at least ``min_share`` of the largest one's
    area (specks and fragments of an outline do not count); 0 for an empty mask."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), bool))
    if count == 0:
        return 0
    areas = np.bincount(labels.ravel())[1:]
    return int(np.count_nonzero(areas >= min_share * areas.max()))


def build_reference(feature_grids: Sequence[np.ndarray], mask_fractions: Sequence[np.ndarray],
                    foreground_fraction: float, instances: Optional[Sequence[int]] = None) -> ReferenceFeatures:
    """Combine reference images: ``feature_grids`` [(rows, cols, D)], ``mask_fractions`` [(rows, cols)],
    ``instances`` [objects per reference image] (default one each).

    Raises ``ValueError`` when no patch qualifies as foreground or as background.
    """
    features = np.concatenate([l2_normalise(f.reshape(-1, f.shape[-1])) for f in feature_grids])
    fractions = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1) for m in mask_fractions])
    foreground = fractions >= foreground_fraction
    background = fractions <= 0.0
    if not foreground.any():
        raise ValueError(f"no reference patch is at least {foreground_fraction:.0%} foreground; the reference "
                         "object is smaller than one patch (lower matching.foreground_fraction or use a larger "
                         "reference object)")
    if not background.any():
        raise ValueError("no reference patch is pure background; the reference mask covers the whole image")
    count = float(np.mean(instances)) if instances else 1.0
    return ReferenceFeatures(features, foreground, background, float(fractions.mean()), count)


def reference_similarity(reference: ReferenceFeatures, target: np.ndarray) -> tuple:
    """Cosine similarity of unit-norm target patch features ``target`` (N, D) to the reference.

    Returns ``(similarity, foreground_similarity, background_similarity)``: ``similarity`` (M, N) to
    every reference patch, and for every target patch the similarity to its nearest reference
    foreground patch and to its nearest reference background patch, (N,) each. All float32.
    """
    similarity = reference.features @ np.asarray(target, dtype=np.float32).T  # (M, N)
    foreground_similarity = similarity[reference.foreground].max(axis=0)
    background_similarity = similarity[reference.background].max(axis=0)
    return similarity, foreground_similarity, background_similarity


@dataclass
class MatchResult:
    """Initial prompts of one target, best match first.

    ``positive_indices`` / ``negative_indices`` (P,) / (Q,) patch indices; ``*_scores`` their cosine
    similarity to the reference patch that matched them. ``foreground_similarity`` /
    ``background_similarity`` (N,) give, for every target patch, the similarity to its nearest
    reference foreground / background patch (used to rank further candidates).
    """

    positive_indices: np.ndarray
    negative_indices: np.ndarray
    positive_scores: np.ndarray
    negative_scores: np.ndarray
    foreground_similarity: np.ndarray
    background_similarity: np.ndarray


def _matches(similarity: np.ndarray, reverse_best: np.ndarray, source_rows: np.ndarray, mutual: bool):
    """Nearest target of each source row → (unique target indices, best score per target)."""
    best_target = similarity.argmax(axis=1)
    best_score = similarity[np.arange(len(similarity)), best_target]
    if mutual:
        keep = reverse_best[best_target] == source_rows
        best_target, best_score = best_target[keep], best_score[keep]
    scores = np.full(similarity.shape[1], -np.inf)
    np.maximum.at(scores, best_target, best_score)
    targets = np.flatnonzero(np.isfinite(scores))
    return targets, scores[targets]


def match_prompts(reference: ReferenceFeatures, target_features: np.ndarray, cfg: MatchingConfig) -> MatchResult:
    """Match the reference patches onto ``target_features`` (rows, cols, D) → :class:`MatchResult`."""
    target = l2_normalise(target_features.reshape(-1, target_features.shape[-1]))
    similarity, foreground_similarity, background_similarity = reference_similarity(reference, target)
    reverse_best = similarity.argmax(axis=0)  # nearest reference patch of each target patch
    fg_rows, bg_rows = np.flatnonzero(reference.foreground), np.flatnonzero(reference.background)

    positive, positive_score = _matches(similarity[fg_rows], reverse_best, fg_rows, cfg.mutual_nearest)
    negative, negative_score = _matches(similarity[bg_rows], reverse_best, bg_rows, cfg.mutual_nearest)

    both = np.intersect1d(positive, negative)
    if len(both):
        to_positive = foreground_similarity[both] >= background_similarity[both]
        drop_from_negative = np.isin(negative, both[to_positive])
        drop_from_positive = np.isin(positive, both[~to_positive])
        negative, negative_score = negative[~drop_from_negative], negative_score[~drop_from_negative]
        positive, positive_score = positive[~drop_from_positive], positive_score[~drop_from_positive]

    def ranked(indices, scores, limit):
        order = np.lexsort((indices, -scores))  # best first, ties by index (deterministic)
        if limit > 0:
            order = order[:limit]
        return indices[order].astype(np.int64), scores[order].astype(np.float32)

    positive, positive_score = ranked(positive, positive_score, cfg.max_positive)
    negative, negative_score = ranked(negative, negative_score, cfg.max_negative)
    return MatchResult(positive, negative, positive_score, negative_score,
                       foreground_similarity.astype(np.float32), background_similarity.astype(np.float32))
