"""Prompt sets: patch indices on a grid (what the agent edits) and the point prompts a segmenter takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpoa.grid import PatchGrid


@dataclass(frozen=True)
class PointPrompts:
    """Point prompts for one decode: ``points`` (N, 2) float (x, y) in original-image pixels,
    ``labels`` (N,) int64 with 1 = positive (object) and 0 = negative (background)."""

    points: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def from_xy(cls, positive_xy, negative_xy) -> PointPrompts:
        positive_xy = np.asarray(positive_xy, dtype=np.float64).reshape(-1, 2)
        negative_xy = np.asarray(negative_xy, dtype=np.float64).reshape(-1, 2)
        return cls(np.concatenate([positive_xy, negative_xy]),
                   np.concatenate([np.ones(len(positive_xy), np.int64), np.zeros(len(negative_xy), np.int64)]))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PromptSet:
    """Positive and negative patch indices of one target image, on ``grid``.

    ``original_size`` is (width, height) of the target image; ``source`` says who made the set
    (``matching``, ``ideal``, a policy checkpoint, a person...).
    """

    image: str
    original_size: tuple
    grid: PatchGrid
    positive_indices: np.ndarray
    negative_indices: np.ndarray
    source: str = "unknown"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.original_size = (int(self.original_size[0]), int(self.original_size[1]))
        self.positive_indices = np.asarray(self.positive_indices, dtype=np.int64).reshape(-1)
        self.negative_indices = np.asarray(self.negative_indices, dtype=np.int64).reshape(-1)
        self.grid._check_index(self.positive_indices)
        self.grid._check_index(self.negative_indices)

    @property
    def positive_points(self) -> np.ndarray:
        """(P, 2) patch centres as (x, y) original-image pixels."""
        return self.grid.index_to_original_xy(self.positive_indices, self.original_size)

    @property
    def negative_points(self) -> np.ndarray:
        return self.grid.index_to_original_xy(self.negative_indices, self.original_size)

    def point_prompts(self) -> PointPrompts:
        """The point prompts a segmenter takes: positives first, then negatives."""
        return PointPrompts.from_xy(self.positive_points, self.negative_points)

    @property
    def points(self) -> np.ndarray:
        """(N, 2) float64 (x, y) original-image pixels of every prompt, as :meth:`point_prompts` orders them."""
        return self.point_prompts().points

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels of :attr:`points`: 1 = positive (object), 0 = negative (background)."""
        return self.point_prompts().labels

    def to_dict(self) -> dict:
        data = {
            "image": self.image,
            "original_size": list(self.original_size),
            "grid": self.grid.to_dict(),
            "positive_indices": [int(i) for i in self.positive_indices],
            "negative_indices": [int(i) for i in self.negative_indices],
            "positive_points": [[round(float(x), 2), round(float(y), 2)] for x, y in self.positive_points],
            "negative_points": [[round(float(x), 2), round(float(y), 2)] for x, y in self.negative_points],
            "source": self.source,
        }
        data.update(self.extra)
        return data


def farthest_point_order(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``count`` rows of ``points`` (N, 2) chosen by farthest-point sampling from a random start."""
    n = len(points)
    if n == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [int(rng.integers(n))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(min(count, n) - 1):
        nxt = int(np.argmax(distance))
        if distance[nxt] <= 0:
            break
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def sample_ideal_prompts(grid: PatchGrid, mask: np.ndarray, n_positive: int, n_negative: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Prompts read off a ground-truth mask (H, W): the upper bound a perfect matcher would reach.

    Positives are spread (farthest-point sampling) over patches entirely inside the object (falling
    back to the patches most inside it); negatives over patches entirely outside, preferring those
    within two patches of the object so they delimit it. Returns (positive_indices, negative_indices).
    """
    fraction = grid.mask_fraction(mask).reshape(-1)
    inside = np.flatnonzero(fraction >= 0.999)
    if len(inside) == 0:
        inside = np.flatnonzero(fraction >= max(0.5, fraction.max() * 0.99)) if fraction.max() > 0 else inside
    outside = np.flatnonzero(fraction <= 0.0)
    centres = grid.index_to_working_xy(np.arange(grid.num_patches))
    positive = inside[farthest_point_order(centres[inside], n_positive, rng)]
    if len(outside) and len(inside):
        near = grid.pixel_distance(outside, inside).min(axis=1)
        ring = outside[near <= 2.5 * grid.patch_size]
        pool = ring if len(ring) >= n_negative else outside
    else:
        pool = outside
    negative = pool[farthest_point_order(centres[pool], n_negative, rng)]
    return positive, negative
