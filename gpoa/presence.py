"""Presence: is the reference's object in a target image at all? Label-free, from what the mask holds.

GPOA paints a mask on every target; a folder of images usually holds some where the object is
absent. The decision here reads the initial prompts' decoded mask the way a person checks a
segmentation against the example: **does the mask hold what the reference's object looks like?**

The **presence score** of a mask is a cycle-consistency check in feature space,

    score = mean over reference foreground patches f of  max over mask patches m of  cos(f, m)
            − the reference's own foreground self-similarity,

where the self-similarity is the median, over reference foreground patches, of the best cosine
to *another* foreground patch of the reference (:meth:`ReferenceFeatures.foreground_self_similarity`).
When the object is in the mask, every part of the reference object finds a patch inside it about
as similar as the object's own parts are to each other (score near 0); when it is absent, the mask
lands on something else and the reference's parts find poor matches there (score well below 0).
The subtraction puts the score in the units of the reference's own variation, whatever the image.

The threshold (below it: absent) depends on the feature extractor, so it is fitted where the
features are known: :func:`fit_presence_threshold` on a policy's training corpus (the generated
corpus has images without the object, and pairing an image with another task's reference gives
more), at the equal error rate — the threshold where the share of present images called absent
equals the share of absent images called present. It is stored in the policy file
(``presence_threshold``); ``optimize.presence_threshold`` overrides it. Inference applies it only
with ``optimize.presence=true`` (off by default: thin objects, such as the demo's membrane, score low).

Shapes: P = rows * cols patches of the target grid, D the feature size, M_f reference foreground
patches. Scores are in cosine-similarity units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpoa.matching import ReferenceFeatures, l2_normalise
from gpoa.segmenters import mask_cells

#: the score of a mask that covers no patch: below any mask that covers one
EMPTY_SCORE = -2.0


def presence_scores(cells: np.ndarray, reference: ReferenceFeatures, target_features: np.ndarray) -> np.ndarray:
    """Presence scores (B,) float64 of B masks given as per-patch shares ``cells`` (B, P) in [0, 1]
    (:func:`gpoa.segmenters.mask_cells`) on a target with patch features ``target_features`` (P, D) or
    (rows, cols, D), raw or unit-norm.

    A mask's patches are those at least half inside it, or, for a mask smaller than every patch,
    those it touches; a mask that touches none scores :data:`EMPTY_SCORE`.
    """
    cells = np.atleast_2d(np.asarray(cells, dtype=np.float64))
    target = np.asarray(target_features)
    target = l2_normalise(target.reshape(-1, target.shape[-1]).astype(np.float32))
    if cells.shape[1] != len(target):
        raise ValueError(f"masks have {cells.shape[1]} patch cells but the target has {len(target)} patches")
    cover = target @ reference.features[reference.foreground].T  # (P, M_f)
    # a mask's patches: those at least half inside it, or, for a mask smaller than every patch, those it touches
    inside = np.where((cells >= 0.5).any(axis=1, keepdims=True), cells >= 0.5, cells > 0)
    covered = reference_coverage(cover, inside)
    return np.where(np.isnan(covered), EMPTY_SCORE, covered - reference.foreground_self_similarity)


def reference_coverage(cover: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """How well B masks cover the reference object: for each mask (``inside`` (B, P) bool, its patches),
    the mean over the reference foreground patches of their best similarity ``cover`` (P, M_f) to a
    patch inside it; (B,) float64, nan for a mask with no patch. Nothing of size B x P x M_f is formed."""
    out = np.full(len(inside), np.nan)
    for b, row in enumerate(np.asarray(inside, dtype=bool)):
        patches = np.flatnonzero(row)
        if len(patches):
            out[b] = float(cover[patches].max(axis=0).mean(dtype=np.float64))
    return out


def mask_presence_score(mask: np.ndarray, reference: ReferenceFeatures, target_features: np.ndarray) -> float:
    """The presence score of one mask (H, W) bool on a target whose patch features are
    ``target_features`` (rows, cols, D): the mask's cells are those of the feature grid."""
    rows, cols = np.asarray(target_features).shape[:2]
    return float(presence_scores(mask_cells(mask, (rows, cols)).reshape(1, -1), reference, target_features)[0])


def fit_presence_threshold(present: Sequence[float], absent: Sequence[float]) -> float:
    """The equal-error-rate threshold between the presence scores of images that hold the object
    (``present``) and of images that do not (``absent``): the midpoint of the interval of thresholds
    at which the share of present scores below it and of absent scores at or above it are closest.
    Raises ValueError unless both kinds have a score."""
    present, absent = np.sort(np.asarray(present, np.float64)), np.sort(np.asarray(absent, np.float64))
    if len(present) == 0 or len(absent) == 0:
        raise ValueError(f"fitting a presence threshold needs scores of present and of absent images; got "
                         f"{len(present)} present and {len(absent)} absent")
    candidates = np.unique(np.concatenate([present, absent]))
    candidates = np.concatenate([candidates, [candidates[-1] + 1e-6]])
    false_absent = np.searchsorted(present, candidates, side="left") / len(present)
    false_present = 1.0 - np.searchsorted(absent, candidates, side="left") / len(absent)
    gap = np.abs(false_absent - false_present)
    best = np.flatnonzero(gap == gap.min())
    # the lowest threshold of the best run and the score just below it: cut halfway between them
    low = candidates[best[0] - 1] if best[0] > 0 else candidates[best[0]] - 1e-6
    return float(0.5 * (low + candidates[best[0]]))
