"""Label-free quality statistics of decoded masks, and a linear estimator of an edit's change in Dice.

Which signal, read without the truth, tells a better mask from a worse one of the same image? Each
statistic below compares a mask with what the image and the reference pair say on their own — the
predicted region and match ranks of :mod:`gpoa.envs.mask_view`, the nearest-neighbour margin, the
patch colours, the reference's prototypes and foreground patches — so none reads a truth mask.
``benchmarks/bench_signals.py`` (:mod:`gpoa.experiments.signals`) measures how well each predicts
Dice among the one-toggle variants of an image's initial prompts.

Masks come as per-patch shares ``cells`` (B, P) float in [0, 1], P = rows * cols patches (what
:func:`gpoa.segmenters.mask_cells` and :meth:`gpoa.envs.EpisodeBank.decode_cells` give); a patch
with a share of at least 0.5 is *inside* the mask. The **ring** of a mask is the patches within two
4-connected steps of the inside that are not inside themselves (its immediate surroundings). Per
image, :class:`MaskContext` holds what every statistic needs, computed once.

:class:`QualityEstimator` is a ridge regression of the change in Dice of a one-toggle edit on the
change of every statistic and its current value, fitted on generated tasks and applied to others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from scipy import ndimage

from gpoa.envs.mask_view import RegionView, cell_statistics
from gpoa.matching import l2_normalise, reference_similarity
from gpoa.presence import reference_coverage
from gpoa.samples import EpisodeSample
from gpoa.segmenters import cell_means

#: The statistics of :func:`quality_statistics`, in column order (each is described in its function).
QUALITY_STATISTICS = ("region_agreement", "match_rank_inside", "match_rank_ring", "margin_contrast",
                      "log_area_ratio", "top_coverage", "colour_contrast", "prototype_inside", "prototype_ring",
                      "log_components_ratio", "forward_precision", "reverse_coverage", "chamfer_inside",
                      "chamfer_reference")

#: a patch with at least this share inside a mask counts as inside it
INSIDE = 0.5
#: 4-connected dilation steps from the inside that make up the ring
RING_STEPS = 2
#: added to both area shares before their ratio, so that an empty mask has a finite log ratio
AREA_EPSILON = 1e-3


@dataclass
class MaskContext:
    """The per-image constants of the statistics. P = rows * cols patches, D feature channels,
    M_fg reference foreground patches.

    - ``rows``, ``cols``: the patch grid;
    - ``view``: the mask view's :class:`~gpoa.envs.mask_view.RegionView` (predicted region, match
      ranks, best-matching patches, reference object share);
    - ``margin`` (P,) float64: nearest-neighbour margin, cosine similarity to the nearest reference
      foreground patch minus that to the nearest background patch; ``margin_scale`` its spread (std);
    - ``foreground_similarity`` (P,) float64: cosine similarity to the nearest reference foreground patch;
    - ``lab`` (P, 3) float64: mean CIE Lab colour (L in [0, 100]) of each patch's pixels, the cells
      of :func:`~gpoa.segmenters.mask_cells`; ``lab_scale`` the mean over channels of its std over patches;
    - ``features`` (P, D) float32 unit-norm patch features;
    - ``prototype_contrast`` (D,): the reference's foreground minus background prototype (unit-norm class means);
    - ``instances``: objects per reference image (at least 1);
    - ``nearest_target`` (M_fg,) int: the target patch nearest to each reference foreground patch;
    - ``reference_cover`` (P, M_fg) float32: cosine similarity of every target patch to every
      reference foreground patch (row p: patch p), for :func:`chamfer_reference`.
    """

    rows: int
    cols: int
    view: RegionView
    margin: np.ndarray
    margin_scale: float
    foreground_similarity: np.ndarray
    lab: np.ndarray
    lab_scale: float
    features: np.ndarray
    prototype_contrast: np.ndarray
    instances: float
    nearest_target: np.ndarray
    reference_cover: np.ndarray

    @classmethod
    def of(cls, record) -> MaskContext:
        """The context of an episode record (:class:`gpoa.envs.SampleRecord`: its sample and view)."""
        return cls.build(record.sample, record.view)

    @classmethod
    def build(cls, sample: EpisodeSample, view: RegionView) -> MaskContext:
        """The context of ``sample`` (it needs its image) with its mask ``view``."""
        if sample.image is None:
            raise ValueError(f"sample '{sample.name}' has no image; the colour statistics need it")
        grid, reference = sample.grid, sample.reference
        features = l2_normalise(np.asarray(sample.target_features).reshape(grid.num_patches, -1))
        similarity, foreground, background = reference_similarity(reference, features)
        cover = np.ascontiguousarray(similarity[reference.foreground].T)  # (P, M_fg)
        margin = (foreground - background).astype(np.float64)
        rgb = np.asarray(sample.image, dtype=np.float32) * np.float32(1.0 / 255.0)
        lab = cell_means(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).transpose(2, 0, 1), (grid.rows, grid.cols))
        lab = lab.reshape(3, -1).T.astype(np.float64)
        return cls(rows=grid.rows, cols=grid.cols, view=view, margin=margin,
                   margin_scale=max(float(margin.std()), 1e-6),
                   foreground_similarity=foreground.astype(np.float64), lab=lab,
                   lab_scale=max(float(lab.std(axis=0).mean()), 1e-6), features=features,
                   prototype_contrast=(reference.foreground_prototype - reference.background_prototype),
                   instances=max(float(reference.instances), 1.0), nearest_target=cover.argmax(axis=0),
                   reference_cover=cover)

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols


@dataclass
class MaskSet:
    """B masks prepared once for the statistics: ``cells`` (B, P) float64 shares, ``inside`` and
    ``ring`` (B, P) bool (module docstring), ``basic`` (B, 4) the mask view's
    :func:`~gpoa.envs.mask_view.cell_statistics` (agreement, area share, match rank, top coverage).
    Every statistic takes one in place of ``cells``, so :func:`quality_statistics` prepares them once."""

    cells: np.ndarray
    inside: np.ndarray
    ring: np.ndarray
    basic: np.ndarray

    @classmethod
    def of(cls, cells, context: MaskContext) -> MaskSet:
        """``cells`` (B, P) or (B, rows, cols) shares, checked against ``context``'s grid (a MaskSet passes through)."""
        if isinstance(cells, MaskSet):
            return cells
        cells = _grid_cells(cells, context)
        inside, ring = inside_and_ring(cells, context.rows, context.cols)
        return cls(cells, inside, ring, cell_statistics(cells, context.view))

    @property
    def has_ring(self) -> np.ndarray:
        """(B,) bool: masks with a ring (neither empty nor the whole image)."""
        return self.ring.any(axis=1)


def _grid_cells(cells, context: MaskContext) -> np.ndarray:
    """``cells`` (B, P) or (B, rows, cols) as (B, P) float64, checked against ``context``'s grid."""
    cells = np.asarray(cells, dtype=np.float64)
    cells = cells.reshape(len(cells), -1) if cells.ndim == 3 else cells
    if cells.ndim != 2 or cells.shape[1] != context.num_patches:
        raise ValueError(f"cells of shape {np.shape(cells)} do not fit a {context.rows}x{context.cols} patch "
                         f"grid; pass (B, {context.num_patches}) per-patch shares")
    return cells


def inside_and_ring(cells: np.ndarray, rows: int, cols: int) -> tuple:
    """(inside, ring), each (B, P) bool, of masks ``cells`` (B, P) on a ``rows`` x ``cols`` grid."""
    inside = np.asarray(cells).reshape(-1, rows, cols) >= INSIDE
    cross = ndimage.generate_binary_structure(2, 1)[None]  # 4-connected, never across masks
    grown = ndimage.binary_dilation(inside, structure=cross, iterations=RING_STEPS)
    return inside.reshape(len(inside), -1), (grown & ~inside).reshape(len(inside), -1)


def count_pieces(inside: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """8-connected pieces of each mask ``inside`` (B, P) bool on a ``rows`` x ``cols`` grid → (B,) int."""
    inside = np.asarray(inside, dtype=bool).reshape(-1, rows, cols)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within a mask, never across two masks
    labels, count = ndimage.label(inside, structure=structure)
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[labels.reshape(-1)] = np.repeat(np.arange(len(inside)), rows * cols)
    return np.bincount(owner[1:], minlength=len(inside))


def _mean_over(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted means ``weights`` (B, P) @ ``values`` (P,) or (P, C) over the weight sums; 0 where a sum is 0."""
    weights = np.asarray(weights, dtype=np.float64)
    total = np.maximum(weights.sum(axis=1), 1e-9)
    return (weights @ values) / (total if values.ndim == 1 else total[:, None])


def _prototype_score(weights: np.ndarray, context: MaskContext) -> np.ndarray:
    """Cosine of the weighted mean feature of each mask (B, P weights) with the foreground
    prototype minus that with the background prototype; 0 for an empty weight row."""
    return l2_normalise(np.asarray(weights, dtype=np.float64) @ context.features) @ context.prototype_contrast


def region_agreement(cells, context: MaskContext) -> np.ndarray:
    """(B,) Soft Dice of the mask with the predicted region (placement's reading of the match
    scores); label-free: the region comes from the reference pair and the image alone."""
    return MaskSet.of(cells, context).basic[:, 0]


def match_rank_inside(cells, context: MaskContext) -> np.ndarray:
    """(B,) Mean match rank (0 worst .. 1 best-matching patch) inside the mask, 0 when empty: does
    the mask hold the patches that look most like the reference object?"""
    return MaskSet.of(cells, context).basic[:, 2]


def match_rank_ring(cells, context: MaskContext) -> np.ndarray:
    """(B,) Mean match rank on the mask's ring, 0 without one: object-like patches just outside
    suggest the mask stops short of the object."""
    return _mean_over(MaskSet.of(cells, context).ring, context.view.patch_rank.astype(np.float64))


def margin_contrast(cells, context: MaskContext) -> np.ndarray:
    """(B,) Mean nearest-neighbour margin inside the mask (by shares) minus that on its ring, in
    units of the image's margin spread (0 without a ring): a mask whose edge follows the change
    from object-like to background-like patches scores high."""
    masks = MaskSet.of(cells, context)
    inside = _mean_over(masks.cells, context.margin)
    around = np.where(masks.has_ring, _mean_over(masks.ring, context.margin), inside)
    return (inside - around) / context.margin_scale


def log_area_ratio(cells, context: MaskContext) -> np.ndarray:
    """(B,) log2 of the mask's share of the image over the reference object's share of its image
    (each + 0.001): 0 when the mask is as large as the one shot leads one to expect."""
    area = MaskSet.of(cells, context).basic[:, 1]
    return np.log2((area + AREA_EPSILON) / (context.view.reference_share + AREA_EPSILON))


def top_coverage(cells, context: MaskContext) -> np.ndarray:
    """(B,) Share of the best-matching patches (as many as the reference's object share) that the
    mask covers: label-free recall against the match scores."""
    return MaskSet.of(cells, context).basic[:, 3]


def colour_contrast(cells, context: MaskContext) -> np.ndarray:
    """(B,) Distance between the mean Lab colour inside the mask (by shares) and on its ring, in
    units of the image's colour spread (0 without a ring): masks whose edge is a colour edge score high."""
    masks = MaskSet.of(cells, context)
    inside = _mean_over(masks.cells, context.lab)
    around = np.where(masks.has_ring[:, None], _mean_over(masks.ring, context.lab), inside)
    return np.linalg.norm(inside - around, axis=1) / context.lab_scale


def prototype_inside(cells, context: MaskContext) -> np.ndarray:
    """(B,) Cosine of the mask's mean patch feature (by shares) with the reference foreground
    prototype minus that with the background prototype, 0 when empty: does the mask as a whole
    look like the reference object?"""
    return _prototype_score(MaskSet.of(cells, context).cells, context)


def prototype_ring(cells, context: MaskContext) -> np.ndarray:
    """(B,) The same prototype contrast for the mean feature of the mask's ring (the mask's own
    without a ring): high when object-like patches are left just outside."""
    masks = MaskSet.of(cells, context)
    return np.where(masks.has_ring, _prototype_score(masks.ring, context), _prototype_score(masks.cells, context))


def log_components_ratio(cells, context: MaskContext) -> np.ndarray:
    """(B,) log2 of (the mask's 8-connected pieces on the patch grid + 0.5) over the objects per
    reference image: 0 near as many pieces as the one shot shows, high for a mask in fragments."""
    pieces = count_pieces(MaskSet.of(cells, context).inside, context.rows, context.cols)
    return np.log2((pieces + 0.5) / context.instances)


def forward_precision(cells, context: MaskContext) -> np.ndarray:
    """(B,) Share of the mask (by patch shares) on patches closer to the reference foreground than
    to its background (positive margin), 0 when empty: precision against the 1-NN vote."""
    return _mean_over(MaskSet.of(cells, context).cells, (context.margin > 0).astype(np.float64))


def reverse_coverage(cells, context: MaskContext) -> np.ndarray:
    """(B,) Share of the reference foreground patches whose nearest target patch is inside the mask:
    how much of the reference object finds its counterpart in the mask (cycle consistency)."""
    return MaskSet.of(cells, context).inside[:, context.nearest_target].mean(axis=1)


def chamfer_inside(cells, context: MaskContext) -> np.ndarray:
    """(B,) Mean over the patches inside the mask of their best cosine similarity to a reference
    foreground patch, 0 when empty: every part of the mask should look like some part of the object."""
    return _mean_over(MaskSet.of(cells, context).inside, context.foreground_similarity)


def chamfer_reference(cells, context: MaskContext) -> np.ndarray:
    """(B,) float64: mean over the reference foreground patches of their best cosine similarity to a
    patch inside the mask, 0 for an empty mask: every part of the reference object should find a
    look-alike in the mask (high when the object is present and covered: a presence score).

    ``cells`` (B, P) shares (or a :class:`MaskSet`). Costs one gather of the inside rows of the
    context's precomputed ``reference_cover`` (P, M_fg) and their maximum per mask: at most
    P x M_fg per mask, and nothing of size B x P x M_fg is formed.
    """
    inside = cells.inside if isinstance(cells, MaskSet) else _grid_cells(cells, context) >= INSIDE
    return np.nan_to_num(reference_coverage(context.reference_cover, inside), nan=0.0)


_STATISTICS = dict(zip(QUALITY_STATISTICS, (
    region_agreement, match_rank_inside, match_rank_ring, margin_contrast, log_area_ratio, top_coverage,
    colour_contrast, prototype_inside, prototype_ring, log_components_ratio, forward_precision, reverse_coverage,
    chamfer_inside, chamfer_reference)))


def quality_statistics(cells, context: MaskContext) -> np.ndarray:
    """Masks ``cells`` (B, P) or (B, rows, cols) shares → (B, S) float64, the
    :data:`QUALITY_STATISTICS` in order (each statistic's function gives its meaning and units)."""
    masks = MaskSet.of(cells, context)
    return np.column_stack([_STATISTICS[name](masks, context) for name in QUALITY_STATISTICS])


# ----- the estimator ---------------------------------------------------------------------------------
@dataclass
class MaskVariants:
    """One target's current mask and its one-toggle variants: ``statistics`` (1 + V, S) float64 of
    :data:`QUALITY_STATISTICS` (row 0 the current mask, rows 1.. the variants) and their true
    ``dice`` (1 + V,) as fractions; ``domain`` and ``name`` say where they come from."""

    statistics: np.ndarray
    dice: np.ndarray
    domain: str = ""
    name: str = ""


def estimator_inputs(current: np.ndarray, variants: np.ndarray) -> np.ndarray:
    """The estimator's inputs for V variants of a mask: [variants − current, current] (V, 2S) from the
    statistics of the current mask ``current`` (S,) and of the variants ``variants`` (V, S)."""
    current = np.asarray(current, dtype=np.float64).reshape(-1)
    variants = np.asarray(variants, dtype=np.float64).reshape(-1, len(current))
    return np.hstack([variants - current, np.broadcast_to(current, variants.shape)])


def input_names(statistics: Sequence[str]) -> tuple:
    """Names of :func:`estimator_inputs`' columns: ``change:<statistic>`` then ``current:<statistic>``."""
    return tuple(f"change:{s}" for s in statistics) + tuple(f"current:{s}" for s in statistics)


class QualityEstimator:
    """A linear estimate of the change in Dice (a fraction) of a one-toggle edit from the change of
    every statistic and its current value (:func:`estimator_inputs`).

    Inputs are standardised by the fitting rows' mean and std (a constant input gets scale 1 and
    weight 0); ridge regression in closed form, ``(Z'Z + alpha I) w = Z'(y − mean y)``, with the
    intercept the mean change. ``alpha`` is in units of rows (Z'Z's diagonal is the row count).
    """

    def __init__(self, alpha: float = 10.0, statistics: Sequence[str] = QUALITY_STATISTICS):
        if alpha < 0:
            raise ValueError(f"alpha must be at least 0, got {alpha}")
        self.alpha = float(alpha)
        self.statistics = tuple(statistics)
        self.inputs = input_names(self.statistics)
        self.mean: Optional[np.ndarray] = None  # (2S,) input means
        self.scale: Optional[np.ndarray] = None  # (2S,) input stds
        self.weights: Optional[np.ndarray] = None  # (2S,) on standardised inputs
        self.intercept = 0.0
        self.rows = 0  # fitting rows (variants)

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, images: Sequence[MaskVariants]) -> QualityEstimator:
        """Fit on every variant of ``images`` (its target: its Dice minus the current mask's). Returns self."""
        inputs, targets = [], []
        for image in images:
            stats = np.asarray(image.statistics, dtype=np.float64)
            if stats.ndim != 2 or stats.shape[1] != len(self.statistics) or len(stats) != len(image.dice):
                raise ValueError(f"statistics of shape {stats.shape} with {len(image.dice)} Dice values do not fit "
                                 f"an estimator of the {len(self.statistics)} statistics {self.statistics}")
            inputs.append(estimator_inputs(stats[0], stats[1:]))
            targets.append(np.asarray(image.dice[1:], dtype=np.float64) - float(image.dice[0]))
        x = np.concatenate(inputs) if inputs else np.zeros((0, len(self.inputs)))
        y = np.concatenate(targets) if targets else np.zeros(0)
        if len(y) < 2:
            raise ValueError(f"an estimator needs at least 2 variants to fit, got {len(y)}")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        self.intercept = float(y.mean())
        self.weights = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ (y - self.intercept))
        self.mean, self.scale, self.rows = mean, scale, len(y)
        return self

    @property
    def coefficients(self) -> np.ndarray:
        """(2S,) weights on the raw inputs (Dice fraction per unit of each input)."""
        self._require_fit()
        return self.weights / self.scale

    @property
    def bias(self) -> float:
        """The estimate at raw inputs of 0."""
        return float(self.intercept - self.coefficients @ self.mean)

    def predict(self, current: np.ndarray, variants: np.ndarray,
                names: Sequence[str] = QUALITY_STATISTICS) -> np.ndarray:
        """Estimated change in Dice (V,) of each variant: statistics ``current`` (S,) and
        ``variants`` (V, S), whose columns are ``names`` (the estimator's statistics, checked)."""
        self._require_fit()
        if tuple(names) != self.statistics:
            raise ValueError(f"the estimator reads the statistics {self.statistics}, given {tuple(names)}")
        x = estimator_inputs(current, variants)
        return ((x - self.mean) / self.scale) @ self.weights + self.intercept

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("the estimator is not fitted; call fit() or load one with from_dict()")

    def to_dict(self) -> dict:
        """Plain lists and floats (JSON-able): the statistics, the input names and the fit."""
        self._require_fit()
        return {"statistics": list(self.statistics), "inputs": list(self.inputs), "alpha": self.alpha,
                "rows": self.rows, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict, statistics: Sequence[str] = QUALITY_STATISTICS) -> QualityEstimator:
        """The estimator of :meth:`to_dict`; ValueError unless it reads ``statistics`` (what this code
        computes) with the inputs named as here."""
        if tuple(data.get("statistics", ())) != tuple(statistics):
            raise ValueError(f"the estimator was fitted on the statistics {tuple(data.get('statistics', ()))}, "
                             f"this code computes {tuple(statistics)}; fit it again")
        estimator = cls(float(data["alpha"]), statistics)
        if tuple(data.get("inputs", ())) != estimator.inputs:
            raise ValueError(f"the estimator's inputs {data.get('inputs')} are not {list(estimator.inputs)}")
        arrays = [np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
        if any(a.shape != (len(estimator.inputs),) for a in arrays):
            raise ValueError(f"the estimator's mean, scale and weights must have {len(estimator.inputs)} entries")
        estimator.mean, estimator.scale, estimator.weights = arrays
        estimator.intercept, estimator.rows = float(data["intercept"]), int(data["rows"])
        return estimator
