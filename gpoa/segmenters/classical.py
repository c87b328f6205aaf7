"""The embedded default segmenter: SLIC superpixels, a region adjacency graph and random-walker
label propagation, behind SAM's two-phase contract (no download, CPU only).

``embed`` cuts the image into superpixels and weights the edges between touching regions by how
alike they look (mean Lab colour and local texture). ``decode`` seeds the regions under the point
prompts (positive = 1, negative = 0) and solves the random-walker system for every other region's
foreground probability, with a weak pull of every region towards a virtual background node so
the system is well posed even with positive prompts only. The mask is every region with
probability > 0.5. :meth:`ClassicalSegmenter.refine_edges` places a mask's edge at pixel level
afterwards (a pixel-level random walker on a band around it; ``gpoa track`` uses it on the masks it
gives out).

A **mask prompt** (SAM's ``mask_input``: a dense prior such as the previous frame's mask carried to
this one) is a second virtual node per region: :meth:`ClassicalSegmenter.with_mask_prompt` ties
every region to the prompt's mean probability over its pixels with the weight
``segmenter.mask_prompt_weight`` (relative to the edge weights in (0, 1]), so the points decide
where they reach and the prompt where they do not. Like SAM, it rewards prompts on the object and is hurt by a positive prompt on
the background, which floods the background regions that look like it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu
from skimage.morphology import skeletonize
from skimage.segmentation import slic

from gpoa.config import SegmenterConfig
from gpoa.errors import UsageError
from gpoa.prompts import PointPrompts
from gpoa.segmenters import check_mask_prompt

#: images whose long side exceeds this are segmented into superpixels on a downscaled copy
MAX_SUPERPIXEL_SIDE = 640
#: Gaussian pre-smoothing (pixels) before SLIC; without it pixel noise shatters the superpixels
SLIC_SIGMA = 1.0
#: side of the box window (pixels of the segmented image) of the local-std texture statistic
TEXTURE_WINDOW = 5
#: edge sharpness of the pixel-level random walker of :meth:`ClassicalSegmenter.refine_edges` (as skimage's
#: ``random_walker`` reads its ``beta``: scaled by the image's spread)
EDGE_BETA = 30.0


def working_size(height: int, width: int) -> tuple:
    """(scale <= 1, (width, height)) of the copy of an image the superpixels are cut from: its long side
    at most :data:`MAX_SUPERPIXEL_SIDE`."""
    scale = min(1.0, MAX_SUPERPIXEL_SIDE / max(height, width))
    return scale, (max(1, round(width * scale)), max(1, round(height * scale)))


@dataclass(frozen=True)
class ClassicalEmbedding:
    """What ``decode`` needs about one image.

    ``labels`` (H, W) int32: superpixel index of every original-image pixel, 0..n_regions-1.
    ``system`` (n_regions, n_regions) CSR float64: graph Laplacian of the region graph plus
    ``background_prior`` on the diagonal (the edge of every region to the virtual background node).
    ``affinity`` (n_regions, n_regions) CSR float64: the region graph's edge weights in (0, 1].
    ``mask_pull`` (n_regions,) float64 or None: with a mask prompt, each region's tie to it (the
    weight times the region's mean prompt probability; the weight is on ``system``'s diagonal).
    """

    labels: np.ndarray
    system: sp.csr_matrix
    affinity: sp.csr_matrix
    # (rows, cols) → (rows * cols, n_regions) CSR share of each grid cell's pixels in each region
    cell_matrices: dict = field(default_factory=dict, compare=False, repr=False)
    mask_pull: Optional[np.ndarray] = None

    @property
    def n_regions(self) -> int:
        return self.system.shape[0]

    @property
    def image_shape(self) -> tuple:
        """(H, W) of the original image."""
        return self.labels.shape


class ClassicalSegmenter:
    """Superpixel random-walker segmenter with SAM's contract (see the module docstring).

    Settings from :class:`~gpoa.config.SegmenterConfig`: ``n_segments`` and ``compactness`` (SLIC),
    ``beta`` (edge sharpness: weight ``exp(-beta * d^2)`` for a normalised descriptor distance
    ``d``) and ``background_prior`` (> 0, the pull of every region towards background).
    """

    def __init__(self, cfg: SegmenterConfig):
        if cfg.n_segments < 2:
            raise UsageError(f"segmenter.n_segments must be at least 2, got {cfg.n_segments}")
        if cfg.compactness <= 0:
            raise UsageError(f"segmenter.compactness must be positive, got {cfg.compactness}")
        if cfg.beta < 0:
            raise UsageError(f"segmenter.beta must be zero or positive, got {cfg.beta}")
        if cfg.background_prior <= 0:
            raise UsageError(f"segmenter.background_prior must be positive (it keeps regions no prompt "
                             f"reaches well defined), got {cfg.background_prior}")
        if cfg.mask_prompt_weight < 0:
            raise UsageError(f"segmenter.mask_prompt_weight must be zero or positive, got {cfg.mask_prompt_weight}")
        self.cfg = cfg

    # ----- embed ------------------------------------------------------------------------------
    def embed(self, image: np.ndarray) -> ClassicalEmbedding:
        """uint8 RGB image (H, W, 3) → superpixels and the region graph (a few hundred ms at 560x560)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        scale, size = working_size(height, width)
        work = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image

        # slic stretches the image to [0, 1] and converts it to Lab itself
        labels = slic(work, n_segments=self.cfg.n_segments, compactness=self.cfg.compactness,
                      sigma=SLIC_SIGMA, convert2lab=True, channel_axis=-1, start_label=0).astype(np.int32)
        labels, n_regions = _consecutive(labels)

        lab = cv2.cvtColor(work.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        lightness = lab[..., 0]
        mean = cv2.blur(lightness, (TEXTURE_WINDOW, TEXTURE_WINDOW))
        mean_sq = cv2.blur(lightness * lightness, (TEXTURE_WINDOW, TEXTURE_WINDOW))
        texture = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
        flat = labels.ravel()
        area = np.bincount(flat, minlength=n_regions).astype(np.float64)
        colour = np.stack([np.bincount(flat, lab[..., c].ravel(), n_regions) for c in range(3)], 1) / area[:, None]
        region_texture = np.bincount(flat, texture.ravel(), n_regions) / area

        rows, cols = _adjacent_pairs(labels, n_regions)
        # Each descriptor difference is normalised by the descriptor's spread over the image's
        # pixels (colour: total Lab variance, isotropic; texture: its variance); d^2 averages the two.
        colour_spread = max(float(lab.reshape(-1, 3).var(axis=0).sum()), 1e-6)
        texture_spread = max(float(texture.var()), 1e-6)
        d2 = 0.5 * (((colour[rows] - colour[cols]) ** 2).sum(1) / colour_spread
                    + (region_texture[rows] - region_texture[cols]) ** 2 / texture_spread)
        weight = np.exp(-self.cfg.beta * d2)
        affinity = sp.coo_matrix((np.concatenate([weight, weight]),
                                  (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                                 shape=(n_regions, n_regions)).tocsr()
        system = self._system(affinity, 0.0)

        if scale < 1.0:
            # nearest-neighbour upsampling of the label map to the original size
            src_rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64),
                                  labels.shape[0] - 1)
            src_cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64),
                                  labels.shape[1] - 1)
            labels = labels[src_rows[:, None], src_cols[None, :]]
        return ClassicalEmbedding(labels=np.ascontiguousarray(labels), system=system, affinity=affinity)

    def _system(self, affinity: sp.csr_matrix, mask_weight: float) -> sp.csr_matrix:
        """The random walker's system: the region graph's Laplacian plus every region's ties to the
        virtual background node and, with ``mask_weight`` > 0, to the mask prompt."""
        degree = np.asarray(affinity.sum(axis=1)).ravel()
        return (sp.diags(degree + self.cfg.background_prior + mask_weight) - affinity).tocsr()

    def with_mask_prompt(self, embedding: ClassicalEmbedding, probability: np.ndarray) -> ClassicalEmbedding:
        """``embedding`` with a mask prompt (module docstring): ``probability`` (H, W) float in [0, 1] at
        the image's size, the object's probability (e.g. the previous frame's mask carried by optical
        flow). Every decode of the returned embedding is prompted with it as well as with its points;
        it replaces any mask prompt ``embedding`` had. The superpixels are not recomputed."""
        probability = check_mask_prompt(probability, embedding.image_shape)
        flat, n = embedding.labels.ravel(), embedding.n_regions
        mean = np.bincount(flat, probability.ravel(), n) / np.maximum(np.bincount(flat, minlength=n), 1)
        weight = float(self.cfg.mask_prompt_weight)
        return ClassicalEmbedding(labels=embedding.labels, system=self._system(embedding.affinity, weight),
                                  affinity=embedding.affinity, cell_matrices=embedding.cell_matrices,
                                  mask_pull=weight * mean)

    def refine_edges(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` (H, W) bool, one of this segmenter's masks of ``image`` (H, W, 3) uint8, with its edge
        placed at pixel level. A superpixel that an object's edge cuts through is all in or all out, so
        on a band one superpixel wide centred on the mask's edge every pixel takes the side that a
        pixel-level random walker on Lab colour gives it (:func:`_pixel_walk`), seeded by the mask
        beyond the band on either side and by the mask's skeleton (a part thinner than the band
        keeps its middle). Works on the copy the superpixels are cut from; an empty mask, or one with
        nothing beyond the band on one side, is returned as it is."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return mask
        height, width = mask.shape
        scale, size = working_size(height, width)
        work, small = np.asarray(image), mask.astype(np.uint8)
        if scale < 1.0:
            work = cv2.resize(work, size, interpolation=cv2.INTER_AREA)
            small = cv2.resize(small, size, interpolation=cv2.INTER_NEAREST)
        radius = max(1, round(0.5 * np.sqrt(size[0] * size[1] / self.cfg.n_segments)))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        inside = cv2.erode(small, disk).astype(bool) | skeletonize(small.astype(bool))
        near = cv2.dilate(small, disk).astype(bool)
        seeds = np.where(inside, 1, np.where(near, 0, 2)).astype(np.int32)  # 0: the band, to be decided
        rows, cols = np.nonzero(near)
        window = (slice(max(rows.min() - 1, 0), rows.max() + 2), slice(max(cols.min() - 1, 0), cols.max() + 2))
        local = seeds[window]
        if not all((local == label).any() for label in (0, 1, 2)):
            return mask
        lab = cv2.cvtColor(work[window].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        full = small.astype(np.float32)
        full[window] = _pixel_walk(lab, local, EDGE_BETA)
        if scale < 1.0:
            full = cv2.resize(full, (width, height), interpolation=cv2.INTER_LINEAR)
        return full > 0.5

    # ----- decode -----------------------------------------------------------------------------
    def decode(self, embedding: ClassicalEmbedding,
               prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """One mask per prompt set: (masks bool (B, H, W) at the original size, scores float32 (B,)).

        The score is the mean certainty ``|2p - 1|`` of the mask's regions (0 for an empty mask).
        """
        height, width = embedding.image_shape
        masks = np.zeros((len(prompt_sets), height, width), dtype=bool)
        scores = np.zeros(len(prompt_sets), dtype=np.float32)
        for b, prompts in enumerate(prompt_sets):
            probability = self.region_probability(embedding, prompts)
            foreground = probability > 0.5
            if foreground.any():
                masks[b] = foreground[embedding.labels]
                scores[b] = float(np.abs(2.0 * probability[foreground] - 1.0).mean())
        return masks, scores

    def region_probability(self, embedding: ClassicalEmbedding, prompts: PointPrompts) -> np.ndarray:
        """Foreground probability of every region (n_regions,) float64 in [0, 1] for one prompt set.

        Each point seeds the region under it. A region under several points takes the majority
        label; a tie goes to the label of the point that comes last in ``prompts``. With no
        positive seed every probability is 0.
        """
        seeds, seed_value = self._seed_regions(embedding, prompts)
        probability = np.zeros(embedding.n_regions)
        if not np.any(seed_value == 1.0):
            return probability
        probability[seeds] = seed_value
        free = np.ones(embedding.n_regions, dtype=bool)
        free[seeds] = False
        if not free.any():
            return probability
        free_index = np.flatnonzero(free)
        # (L + prior I)_FF x_F = W_FS x_S (+ the mask prompt's pull): only positive seeds (value 1)
        # contribute to the right side.
        rhs = _right_side(embedding, free_index, seeds[seed_value == 1.0])
        system = embedding.system[free_index][:, free_index].tocsc()
        # the system is symmetric positive definite: a symmetric ordering factorises it fastest
        factor = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        probability[free_index] = np.clip(factor.solve(rhs), 0.0, 1.0)
        return probability

    # ----- coarse decode of many variants of one prompt set ----------------------------------------
    def decode_cells(self, embedding: ClassicalEmbedding, prompt_sets: Sequence[PointPrompts], shape: tuple,
                     base: Optional[PointPrompts] = None) -> np.ndarray:
        """Share of every cell of a ``shape`` = (rows, cols) grid over the image that each prompt set's
        mask covers: (B, rows, cols) float32 (cells split the image by integer division of pixel
        coordinates, so they follow the patch grid's independent x and y scales).

        The masks are :meth:`decode`'s. With ``base``, a prompt set whose seeds differ from base's
        in one region (one seed more, one fewer, or one seed's label flipped) is solved from base's
        factorisation by a rank-one update (one triangular solve instead of a factorisation), and
        no full-size mask is drawn: editing one prompt at a time, an agent can look at the effect
        of every edit for about the price of one decode.
        """
        matrix = self._cell_matrix(embedding, shape)
        out = np.empty((len(prompt_sets), *shape), dtype=np.float32)
        solver = None if base is None else _RankOneSolver(self, embedding, base)
        for b, prompts in enumerate(prompt_sets):
            probability = (self.region_probability(embedding, prompts) if solver is None
                           else solver.probability(prompts))
            out[b] = (matrix @ (probability > 0.5).astype(np.float64)).reshape(shape)
        return out

    @staticmethod
    def _cell_matrix(embedding: ClassicalEmbedding, shape: tuple) -> sp.csr_matrix:
        shape = (int(shape[0]), int(shape[1]))
        if shape not in embedding.cell_matrices:
            rows, cols = shape
            height, width = embedding.image_shape
            cell = ((np.arange(height) * rows // height)[:, None] * cols
                    + (np.arange(width) * cols // width)[None, :]).ravel()
            counts = sp.coo_matrix((np.ones(cell.size), (cell, embedding.labels.ravel())),
                                   shape=(rows * cols, embedding.n_regions)).tocsr()  # duplicates summed
            size = np.maximum(np.bincount(cell, minlength=rows * cols), 1).astype(np.float64)
            embedding.cell_matrices[shape] = sp.diags(1.0 / size) @ counts
        return embedding.cell_matrices[shape]

    @staticmethod
    def _seed_regions(embedding: ClassicalEmbedding, prompts: PointPrompts) -> tuple[np.ndarray, np.ndarray]:
        """Seeded region indices (S,) int64 and their values (S,) float64, 1 = object, 0 = background."""
        if len(prompts) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        height, width = embedding.image_shape
        x = np.clip(np.floor(prompts.points[:, 0]), 0, width - 1).astype(np.int64)
        y = np.clip(np.floor(prompts.points[:, 1]), 0, height - 1).astype(np.int64)
        region = embedding.labels[y, x].astype(np.int64)
        positive = prompts.labels == 1
        seeds, inverse = np.unique(region, return_inverse=True)
        votes = np.bincount(inverse, np.where(positive, 1.0, -1.0), len(seeds))
        # the last point of each seeded region breaks ties: unique on the reversed order finds it
        _, last_reversed = np.unique(inverse[::-1], return_index=True)
        last_positive = positive[len(region) - 1 - last_reversed]
        value = np.where(votes > 0, 1.0, np.where(votes < 0, 0.0, last_positive.astype(np.float64)))
        return seeds, value


class _RankOneSolver:
    """The random-walker solution of one base prompt set, and of its one-region variants by rank-one
    updates of the base's factorisation (see :meth:`ClassicalSegmenter.decode_cells`).

    With A the system matrix, F the free regions and x the base solution on F (A_FF x = b_F):

    - seed one more region k (value v): g = A_FF⁻¹ e_k, x' = x + (v − x_k) / g_k · g;
    - flip seed k's value v → v': x' = x − (v' − v) A_FF⁻¹ A_Fk (A_Fk = −W_Fk);
    - unseed region k (value v): z = A_FF⁻¹ A_Fk, y = x + v z,
      x_k = (b_k − A_kF y) / (A_kk − A_kF z), x_F = y − z x_k, where b_k sums k's affinities to the
      remaining positive seeds (plus k's pull towards the mask prompt, if there is one).

    Anything else (several regions differ, no positive seed) is solved from scratch.
    """

    def __init__(self, segmenter: ClassicalSegmenter, embedding: ClassicalEmbedding, base: PointPrompts):
        self.segmenter, self.embedding = segmenter, embedding
        seeds, values = segmenter._seed_regions(embedding, base)
        self.seeds = dict(zip(seeds.tolist(), values.tolist()))
        n = embedding.n_regions
        free = np.ones(n, dtype=bool)
        free[seeds] = False
        self.free_index = np.flatnonzero(free)
        self.factor = None
        if not np.any(values == 1.0) or len(self.free_index) == 0:
            return
        self.position = np.full(n, -1, dtype=np.int64)
        self.position[self.free_index] = np.arange(len(self.free_index))
        rhs = _right_side(embedding, self.free_index, seeds[values == 1.0])
        system = embedding.system[self.free_index][:, self.free_index].tocsc()
        self.factor = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        self.solution = self.factor.solve(rhs)  # unclipped: the updates start from it

    def _column(self, region: int) -> np.ndarray:
        """A_Fk: the system's column of ``region`` on the free regions (dense; A is symmetric, so its
        row, read straight from the CSR arrays)."""
        system = self.embedding.system
        start, stop = system.indptr[region], system.indptr[region + 1]
        neighbours, values = system.indices[start:stop], system.data[start:stop]
        position = self.position[neighbours]
        column = np.zeros(len(self.free_index))
        column[position[position >= 0]] = values[position >= 0]
        return column

    def probability(self, prompts: PointPrompts) -> np.ndarray:
        seeds, values = self.segmenter._seed_regions(self.embedding, prompts)
        variant = dict(zip(seeds.tolist(), values.tolist()))
        added = [r for r in variant if r not in self.seeds]
        removed = [r for r in self.seeds if r not in variant]
        flipped = [r for r in variant if r in self.seeds and variant[r] != self.seeds[r]]
        if self.factor is None or not np.any(values == 1.0) or len(added) + len(removed) + len(flipped) > 1:
            return self.segmenter.region_probability(self.embedding, prompts)
        x = self.solution
        free_index = self.free_index
        if added:
            k = added[0]
            unit = np.zeros(len(free_index))
            unit[self.position[k]] = 1.0
            g = self.factor.solve(unit)
            x = x + (variant[k] - x[self.position[k]]) / g[self.position[k]] * g
        elif flipped:
            k = flipped[0]
            x = x - (variant[k] - self.seeds[k]) * self.factor.solve(self._column(k))
        elif removed:
            k = removed[0]
            column = self._column(k)
            z = self.factor.solve(column)
            y = x + self.seeds[k] * z
            affinity = self.embedding.affinity
            start, stop = affinity.indptr[k], affinity.indptr[k + 1]
            to_positive = np.array([variant.get(int(j)) == 1.0 for j in affinity.indices[start:stop]], dtype=bool)
            b_k = float(affinity.data[start:stop][to_positive].sum())
            if self.embedding.mask_pull is not None:
                b_k += float(self.embedding.mask_pull[k])
            x_k = (b_k - column @ y) / (self.embedding.system[k, k] - column @ z)
            x = y - z * x_k
        probability = np.zeros(self.embedding.n_regions)
        probability[free_index] = np.clip(x, 0.0, 1.0)
        if removed:
            probability[removed[0]] = np.clip(x_k, 0.0, 1.0)
        for region, value in variant.items():
            probability[region] = value
        return probability


def _pixel_walk(image: np.ndarray, seeds: np.ndarray, beta: float) -> np.ndarray:
    """Grady's random walker on the 4-connected pixel grid of ``image`` (h, w, C) float: the probability
    (h, w) float32 of reaching a pixel seeded 1 before one seeded 2, for the pixels seeded 0 (the seeds keep
    1 and 0). Edge weights ``exp(-beta * |difference|^2 / (10 * std * sqrt(C)))``, as skimage's
    ``random_walker`` weighs them; solved directly on the unseeded pixels alone."""
    height, width, channels = image.shape
    index = np.arange(height * width).reshape(height, width)
    first = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    second = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    flat = image.reshape(-1, channels)
    scale = beta / (10 * max(float(image.std()), 1e-6) * np.sqrt(channels))
    weight = np.exp(-scale * ((flat[first] - flat[second]) ** 2).sum(1)) + 1e-6
    labels = seeds.ravel()
    free = labels == 0
    slot = np.cumsum(free) - 1  # each unseeded pixel's row in the system
    degree = np.bincount(first, weight, height * width) + np.bincount(second, weight, height * width)
    both = free[first] & free[second]
    system = sp.coo_matrix((np.concatenate([degree[free], -weight[both], -weight[both]]),
                            (np.concatenate([slot[free], slot[first[both]], slot[second[both]]]),
                             np.concatenate([slot[free], slot[second[both]], slot[first[both]]]))),
                           shape=(int(free.sum()),) * 2).tocsc()
    # each unseeded pixel's ties to the object's seeds (value 1; the background's, value 0, add nothing)
    forward, backward = free[first] & (labels[second] == 1), free[second] & (labels[first] == 1)
    rhs = (np.bincount(slot[first[forward]], weight[forward], system.shape[0])
           + np.bincount(slot[second[backward]], weight[backward], system.shape[0]))
    probability = (labels == 1).astype(np.float64)
    probability[free] = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
    return np.clip(probability, 0.0, 1.0).reshape(height, width).astype(np.float32)


def _right_side(embedding: ClassicalEmbedding, free_index: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """b_F of the random walker: each free region's affinity to the positive seeds, plus its pull
    towards the mask prompt when there is one. (F,) float64."""
    rhs = np.asarray(embedding.affinity[free_index][:, positive].sum(axis=1)).ravel()
    if embedding.mask_pull is not None:
        rhs = rhs + embedding.mask_pull[free_index]
    return rhs


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel (H, W) int labels to 0..n-1 without gaps; returns (labels, n)."""
    present = np.bincount(labels.ravel()) > 0
    if present.all():
        return labels, len(present)
    lookup = (np.cumsum(present) - 1).astype(np.int32)
    return lookup[labels], int(present.sum())


def _adjacent_pairs(labels: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique unordered pairs (i < j) of regions that touch horizontally or vertically: (rows (E,), cols (E,))."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    differ = a != b
    low, high = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    keys = np.unique(low * n_regions + high)
    return keys // n_regions, keys % n_regions
