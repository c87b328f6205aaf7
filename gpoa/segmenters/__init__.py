"""Promptable segmenters with SAM's two-phase contract: ``embed`` an image once, then ``decode``
many point-prompt sets against that embedding, batched.

``build_segmenter(cfg, device)`` is the one door: ``segmenter.backend`` picks ``classical`` (the
embedded default: superpixel region graph + random-walker propagation, no download) or ``sam``
(segment-anything from a local checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol, runtime_checkable

import cv2
import numpy as np

from gpoa.config import Config
from gpoa.errors import UsageError
from gpoa.prompts import PointPrompts


@runtime_checkable
class Segmenter(Protocol):
    def embed(self, image: np.ndarray) -> Any:
        """uint8 RGB image (H, W, 3) → an opaque embedding that ``decode`` reuses."""
        ...

    def decode(self, embedding: Any, prompt_sets: Sequence[PointPrompts]) -> tuple:
        """One mask per prompt set: (masks bool (B, H, W) at the original image size,
        scores float32 (B,) — the segmenter's confidence in each mask, in [0, 1]).

        Prompt sets may have different sizes; an empty prompt set gives an empty mask, score 0.
        """
        ...


def decode_cells(segmenter: Segmenter, embedding: Any, prompt_sets: Sequence[PointPrompts], shape: tuple,
                 base: Optional[PointPrompts] = None) -> np.ndarray:
    """Share of every cell of a ``shape`` = (rows, cols) grid over the image inside each prompt set's
    mask: (B, rows, cols) float32. Cells split the image by integer division of pixel coordinates.

    A segmenter may offer a faster ``decode_cells`` of its own (the classical one solves the
    one-prompt variants of ``base`` by rank-one updates); otherwise the full masks are decoded and
    averaged per cell.
    """
    own = getattr(segmenter, "decode_cells", None)
    if own is not None:
        return own(embedding, prompt_sets, shape, base=base)
    masks, _ = segmenter.decode(embedding, prompt_sets)
    return mask_cells(masks, shape)


def mask_cells(masks: np.ndarray, shape: tuple) -> np.ndarray:
    """Masks (B, H, W) or (H, W) bool → share of each cell of a ``shape`` = (rows, cols) grid inside
    them, (B, rows, cols) or (rows, cols) float32; cell i of an axis of n pixels spans pixels
    [ceil(i n / rows), ceil((i + 1) n / rows)), the cells of :func:`decode_cells`."""
    masks = np.asarray(masks)
    single = masks.ndim == 2
    masks = masks[None] if single else masks
    rows, cols = int(shape[0]), int(shape[1])
    height, width = masks.shape[1:]
    row_edges = -(-np.arange(rows + 1) * height // rows)
    col_edges = -(-np.arange(cols + 1) * width // cols)
    # corners of the cells in each mask's summed-area table (cv2.integral: a zero first row and column)
    grid = np.ix_(row_edges, col_edges)
    corners = np.stack([cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8))[grid] for mask in masks])
    corners = corners.astype(np.float64)
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    counts = np.diff(row_edges)[:, None] * np.diff(col_edges)[None, :]
    cells = (sums / np.maximum(counts, 1)).astype(np.float32)
    return cells[0] if single else cells


def build_segmenter(cfg: Config, device: str = "cpu") -> Segmenter:
    backend = cfg.segmenter.backend
    if backend == "classical":
        from gpoa.segmenters.classical import ClassicalSegmenter

        return ClassicalSegmenter(cfg.segmenter)
    if backend == "sam":
        from gpoa.segmenters.sam import SamSegmenter

        return SamSegmenter(cfg.segmenter, device=device)
    raise UsageError(f"unknown segmenter.backend '{backend}'; use 'classical' or 'sam'")
