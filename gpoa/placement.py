"""Prompt placement from patch scores: read the scores as a predicted mask, then prompt that mask
the way the ideal sampler prompts a true one.

Matching (:mod:`gpoa.matching`) proposes the target patches that best match single reference
patches; they crowd the best-matching part of the object, and a promptable segmenter is hurt by
that. Here every target patch gets a score (how much it looks like the reference foreground
rather than the reference background), the scores are turned into a predicted object region, and
the prompts are placed on it as :func:`gpoa.prompts.sample_ideal_prompts` places them on a true mask:

1. **Scores** (:func:`score_patches`), two views of the reference: the nearest-neighbour
   ``margin`` (cosine similarity to the nearest reference foreground patch minus that to the
   nearest background patch; it remembers every reference patch) and a ``logistic`` regression
   fitted on the reference's own patch labels (:func:`fit_patch_classifier`; one smooth boundary).
2. **Region** (:func:`predict_region`): the best-ranked patches, as many as the reference's own
   foreground share of the image, or as many as have a positive margin (closer to the reference
   foreground than to its background: the 1-nearest-neighbour vote) when those are more, up to
   twice the reference's share. The vote only ever enlarges the region (more instances, a closer
   view): under any change of appearance a target object patch tends to find its nearest
   neighbour among the many, varied reference background patches, so the vote undercounts the
   object, and a region that is too small puts the ring of negatives on the object. The
   region's connected pieces (8-connectivity on the patch grid) that hold little of the score
   mass are dropped, the others kept: several instances survive, stray patches do not.
3. **Positives**: farthest-point sampling over the interior of the kept pieces (one patch in
   from their edge where a piece is thick enough), every kept piece getting at least one.
4. **Negatives**: farthest-point sampling over a thin ring just outside the kept pieces, on
   patches below the region's threshold only (never on another instance or an uncertain edge).

**Confidence.** A score map that singles out an object is close to a step: high on the region,
low elsewhere. The point-biserial correlation between a view's scores and the candidates'
indicator (:func:`region_correlation`; its square is Otsu's between-class share of the variance
at the region's threshold; 1 for a perfect step whatever the object's size) measures that, and
the placement is *confident* when some view reaches ``settings.min_correlation``. It is a
heuristic, not a test against chance (the top 10 % of i.i.d. Gaussian noise reach 0.58): it
catches maps whose variance lies elsewhere than on the region (a smooth slope, structure unlike
both classes). When no view reaches it, committing to the heaviest piece is a gamble, so the
positives are spread over every candidate piece instead (``settings.uncertain_keep_ratio``), a
hedge like the matching's scattered prompts. The logistic view matters here: some maps that
work have a flat margin map whose variance lies in the background, but a sharp logistic one.

All functions are pure array code. ``N = grid.rows * grid.cols`` patches, flat row-major patch
indices as everywhere in GPOA; distances are in patch units (one patch = ``grid.patch_size``
working-image pixels, centre to centre) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from scipy import ndimage, optimize
from scipy.stats import rankdata

from gpoa.config import RANKINGS, PlacementConfig
from gpoa.grid import PatchGrid
from gpoa.matching import ReferenceFeatures, l2_normalise, reference_similarity
from gpoa.prompts import farthest_point_order


# ----- scores ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchClassifier:
    """A linear patch classifier: log-odds of foreground ``l2_normalise(x) @ weights + bias``.
    ``weights`` (D,) float64, ``bias`` float."""

    weights: np.ndarray
    bias: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Patch features (N, D) or (rows, cols, D), raw or unit-norm → log-odds (N,) float32."""
        features = np.asarray(features)
        unit = l2_normalise(features.reshape(-1, features.shape[-1])).astype(np.float64)
        return (unit @ self.weights + self.bias).astype(np.float32)


def fit_patch_classifier(reference: ReferenceFeatures, regularisation: float = 1e-2) -> PatchClassifier:
    """L2-regularised logistic regression of the reference's foreground vs background patches.

    Fitted on the unit-norm ``reference.features`` (M, D) of the patches labelled foreground or
    background (partial patches are left out, as in matching). Both classes weigh the same in
    total, so a small object is not ignored; the bias is not regularised. L-BFGS, a few to a few
    tens of ms for thousands of patches. ``regularisation`` multiplies ``|w|^2 / 2`` against the
    weighted mean log-loss.
    """
    if regularisation <= 0:
        raise ValueError(f"regularisation must be positive, got {regularisation}")
    labelled = reference.foreground | reference.background
    x = np.asarray(reference.features[labelled], dtype=np.float64)
    sign = np.where(reference.foreground[labelled], 1.0, -1.0)
    positive = sign > 0
    weight = np.where(positive, 0.5 / positive.sum(), 0.5 / (~positive).sum())  # sums to 1

    def loss(theta):
        w, b = theta[:-1], theta[-1]
        margin = sign * (x @ w + b)
        value = float(weight @ np.logaddexp(0.0, -margin)) + 0.5 * regularisation * float(w @ w)
        slope = -sign * weight * _sigmoid(-margin)
        return value, np.concatenate([x.T @ slope + regularisation * w, [slope.sum()]])

    result = optimize.minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return PatchClassifier(weights=result.x[:-1].copy(), bias=float(result.x[-1]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def margin_scores(reference: ReferenceFeatures, target_features: np.ndarray) -> np.ndarray:
    """Nearest-neighbour margin (N,) float32 in [-2, 2]: cosine similarity of every target patch to
    its nearest reference foreground patch minus that to its nearest reference background patch.
    ``target_features`` (N, D) or (rows, cols, D), raw or unit-norm."""
    target = np.asarray(target_features)
    target = l2_normalise(target.reshape(-1, target.shape[-1]))
    _, foreground, background = reference_similarity(reference, target)
    return (foreground - background).astype(np.float32)


@dataclass(frozen=True)
class PatchScores:
    """The views of one target: ``margin`` (N,) (:func:`margin_scores`) and ``logistic`` (N,)
    log-odds of a :class:`PatchClassifier`, or None. Higher = more object-like in both."""

    margin: np.ndarray
    logistic: Optional[np.ndarray] = None

    def views(self) -> list:
        """The available views, (N,) float64 each."""
        return [np.asarray(v, dtype=np.float64).reshape(-1)
                for v in (self.margin, self.logistic) if v is not None]

    def ranking(self, how: str) -> np.ndarray:
        """The (N,) float64 score that orders the patches (see :attr:`PlacementConfig.ranking`)."""
        if how == "margin":
            return np.asarray(self.margin, dtype=np.float64).reshape(-1)
        if self.logistic is None:
            raise ValueError(f"ranking '{how}' needs the logistic view (pass a classifier to score_patches)")
        if how == "logistic":
            return np.asarray(self.logistic, dtype=np.float64).reshape(-1)
        if how == "fusion":  # mean rank in (0, 1]: scale-free, so neither view dominates
            return (rankdata(self.margin) + rankdata(self.logistic)) / (2.0 * len(self.margin))
        raise ValueError(f"unknown ranking {how!r}; use one of {RANKINGS}")

    def within(self, window: np.ndarray) -> PatchScores:
        """These scores with every patch outside ``window`` (N,) bool below every patch inside it."""
        return PatchScores(*(None if view is None else np.where(window, view, view.min() - 1.0)
                             for view in (self.margin, self.logistic)))


def score_patches(reference: ReferenceFeatures, target_features: np.ndarray,
                  classifier: Optional[PatchClassifier] = None) -> PatchScores:
    """Both views of ``target_features`` (N, D) or (rows, cols, D): the margin always, the
    logistic log-odds when a ``classifier`` is given (fit it once per reference)."""
    margin = margin_scores(reference, target_features)
    logistic = None if classifier is None else classifier.score(target_features)
    return PatchScores(margin=margin, logistic=logistic)


def reference_foreground_share(reference: ReferenceFeatures) -> float:
    """Share of the reference patches labelled foreground: the expected object size, in patches."""
    return float(np.mean(reference.foreground))


def region_correlation(scores: np.ndarray, region: np.ndarray) -> float:
    """Point-biserial correlation in [-1, 1] between ``scores`` (N,) and the indicator of
    ``region`` (N,) bool: 1 when the scores are a clean step up onto the region, about 0 when the
    region is not special; 0 when either is constant."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    region = np.asarray(region, dtype=bool).reshape(-1)
    share = region.mean()
    spread = scores.std()
    if share <= 0 or share >= 1 or spread <= 0:
        return 0.0
    return float((scores[region].mean() - scores[~region].mean()) * np.sqrt(share * (1 - share)) / spread)


# ----- region ------------------------------------------------------------------------------------
def region_size(size_scores: np.ndarray, reference_share: float, settings: PlacementConfig) -> int:
    """Number of patches in the predicted region: those with ``size_scores`` (N,) > 0, held within
    [min_share, max_share] x ``reference_share`` x N, and at least 1."""
    n = len(size_scores)
    low = max(1, int(round(settings.min_share * reference_share * n)))
    high = min(n, max(low, int(round(settings.max_share * reference_share * n))))
    return int(np.clip(np.count_nonzero(np.asarray(size_scores) > 0), low, high))


def predict_region(ranking: np.ndarray, grid: PatchGrid, reference_share: float, settings: PlacementConfig,
                   size_scores: Optional[np.ndarray] = None,
                   keep_ratio: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted object patches from a ranking score (N,) (higher = more object-like).

    The candidates are the best-ranked ``count`` patches: ``count`` is the number of patches with
    ``size_scores > 0`` (default: ``ranking > 0``), held within [min_share, max_share] x
    ``reference_share`` x N and at least 1. Their connected pieces (8-connectivity) are weighed by
    their ranking mass above the best patch left out; pieces lighter than ``keep_ratio`` (default
    ``settings.keep_ratio``) x the heaviest are dropped.

    Returns ``(candidates (N,) bool, piece (N,) int64)``: ``piece`` labels the kept pieces 1..K,
    heaviest first, 0 elsewhere (the region is ``piece > 0``).
    """
    ranking = np.asarray(ranking, dtype=np.float64).reshape(-1)
    n = grid.num_patches
    if len(ranking) != n:
        raise ValueError(f"score map has {len(ranking)} patches, the grid {n}")
    size_scores = ranking if size_scores is None else np.asarray(size_scores, dtype=np.float64).reshape(-1)
    keep_ratio = settings.keep_ratio if keep_ratio is None else keep_ratio
    count = region_size(size_scores, reference_share, settings)
    order = np.lexsort((np.arange(n), -ranking))  # best first, ties by index (deterministic)
    candidates = np.zeros(n, dtype=bool)
    candidates[order[:count]] = True
    floor = ranking[order[count]] if count < n else ranking.min() - 1.0

    labels, n_pieces = ndimage.label(candidates.reshape(grid.rows, grid.cols),
                                     structure=np.ones((3, 3), bool))
    labels = labels.reshape(-1)
    mass = np.bincount(labels, np.where(candidates, ranking - floor, 0.0), n_pieces + 1)[1:]
    size = np.bincount(labels, minlength=n_pieces + 1)[1:]
    heaviest_first = np.lexsort((np.arange(n_pieces), -size, -mass))
    kept = heaviest_first[mass[heaviest_first] >= keep_ratio * mass[heaviest_first[0]]]
    lookup = np.zeros(n_pieces + 1, dtype=np.int64)
    lookup[kept + 1] = np.arange(1, len(kept) + 1)
    return candidates, lookup[labels]


# ----- prompts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Prompts of one target and how they were found.

    ``positive_indices`` (P,) / ``negative_indices`` (Q,) int64 patch indices (P >= 1);
    ``region`` (N,) bool the predicted object (kept pieces); ``candidates`` (N,) bool every patch
    above the threshold; ``confidence`` the best view's :func:`region_correlation` with the
    candidates; ``confident`` whether it reached ``settings.min_correlation``.
    """

    positive_indices: np.ndarray
    negative_indices: np.ndarray
    region: np.ndarray
    candidates: np.ndarray
    confidence: float
    confident: bool


def predicted_region(scores: Union[PatchScores, np.ndarray], grid: PatchGrid, reference_share: float,
                     settings: PlacementConfig) -> tuple:
    """The object region the scores predict, with the confidence check of the module docstring.

    ``scores``: :class:`PatchScores`, or one score map (N,) centred on 0. Returns ``(region (N,)
    bool, candidates (N,) bool, confidence, confident)``: the kept pieces (with
    ``settings.uncertain_keep_ratio`` when not confident), every patch above the threshold, the
    best view's :func:`region_correlation` with the candidates and whether it reached
    ``settings.min_correlation``.
    """
    if not isinstance(scores, PatchScores):
        scores = PatchScores(margin=np.asarray(scores, dtype=np.float64).reshape(-1))
    ranking = scores.ranking(settings.ranking)
    margin = np.asarray(scores.margin, dtype=np.float64).reshape(-1)
    candidates, piece = predict_region(ranking, grid, reference_share, settings, size_scores=margin)
    confidence = max(region_correlation(view, candidates) for view in scores.views())
    confident = confidence >= settings.min_correlation
    if not confident and settings.uncertain_keep_ratio != settings.keep_ratio:
        candidates, piece = predict_region(ranking, grid, reference_share, settings, size_scores=margin,
                                           keep_ratio=settings.uncertain_keep_ratio)
    return piece, candidates, float(confidence), bool(confident)


def place_prompts(scores: Union[PatchScores, np.ndarray], grid: PatchGrid, reference_share: float,
                  settings: PlacementConfig, rng: np.random.Generator) -> Placement:
    """Positive and negative prompts (patch indices) for one target.

    ``scores``: the target's :class:`PatchScores`, or one score map (N,) centred on 0 (positive =
    object-like; it then ranks, sizes and checks the region alone). ``reference_share``: the
    reference's foreground share of patches (:func:`reference_foreground_share`). Always at least
    one positive, on the best-ranked piece; fewer negatives than asked only when the image has
    fewer patches below the threshold. Deterministic for a given ``rng`` state.
    """
    piece, candidates, confidence, confident = predicted_region(scores, grid, reference_share, settings)
    positive, negative = place_on_region(piece, candidates, grid, settings, rng)
    return Placement(positive_indices=positive, negative_indices=negative, region=piece > 0,
                     candidates=candidates, confidence=float(confidence), confident=bool(confident))


def place_on_region(piece: np.ndarray, candidates: np.ndarray, grid: PatchGrid, settings: PlacementConfig,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Prompts on a region, as :func:`place_prompts` places them on the region it predicts:
    ``settings.n_positive`` positives over the interior of its pieces (``piece`` (N,) int64, labels
    1..K heaviest first, 0 outside; at least one patch) and ``settings.n_negative`` negatives over a
    ring around them, never on ``candidates`` (N,) bool (patches that may be the object). Returns
    ``(positive_indices (P,), negative_indices (Q,))`` int64."""
    region = piece > 0
    positive = _place_positives(grid, piece, settings.n_positive, settings.interior_depth, rng)
    shape = (grid.rows, grid.cols)
    distance = ndimage.distance_transform_edt(~region.reshape(shape)).reshape(-1)
    below = ~candidates  # never a negative on a patch that looks like the object
    pool = np.flatnonzero(below & (distance > settings.ring_inner) & (distance <= settings.ring_outer))
    if len(pool) < settings.n_negative:
        pool = np.flatnonzero(below & (distance > settings.ring_inner))
    if len(pool) < settings.n_negative:
        pool = np.flatnonzero(below)
    negative = pool[farthest_point_order(grid.index_to_working_xy(pool), settings.n_negative, rng)]
    return positive, negative.astype(np.int64)


def _place_positives(grid: PatchGrid, piece: np.ndarray, count: int, interior_depth: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Farthest-point positives (P,) int64 over the interior of every kept piece (labels 1..K of
    ``piece`` (N,), heaviest first): each gets a share of ``count`` proportional to its size, at
    least one while they last (the lightest pieces go without when K > count)."""
    n_pieces = int(piece.max())
    size = np.bincount(piece, minlength=n_pieces + 1)[1:].astype(np.float64)
    quota = _allocate(size, count)
    # chessboard distance to the nearest patch outside the region (the grid border counts as outside)
    depth = ndimage.distance_transform_cdt(np.pad(piece.reshape(grid.rows, grid.cols) > 0, 1),
                                           metric="chessboard")[1:-1, 1:-1].reshape(-1)
    chosen = []
    for label in range(1, n_pieces + 1):
        if quota[label - 1] == 0:
            continue
        members = np.flatnonzero(piece == label)
        pool = members[depth[members] >= min(interior_depth, depth[members].max())]
        chosen.append(pool[farthest_point_order(grid.index_to_working_xy(pool), int(quota[label - 1]), rng)])
    return np.concatenate(chosen).astype(np.int64)


def _allocate(size: np.ndarray, count: int) -> np.ndarray:
    """Split ``count`` items over K groups (ordered by priority) in proportion to ``size`` (K,):
    one per group first while items last, the rest by largest remainder. (K,) int64."""
    quota = np.zeros(len(size), dtype=np.int64)
    first = min(len(size), count)
    quota[:first] = 1
    rest = count - first
    if rest > 0:
        want = np.maximum(size / size.sum() * count - quota, 0.0)
        want = want / want.sum() * rest if want.sum() > 0 else np.eye(len(size))[0] * rest
        extra = np.floor(want).astype(np.int64)
        extra[np.argsort(-(want - extra), kind="stable")[:rest - int(extra.sum())]] += 1
        quota += extra
    return quota
