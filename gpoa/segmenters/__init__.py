"""Promptable segmenters with SAM's two-phase contract: ``embed`` an image once, then ``decode``
many point-prompt sets against that embedding, batched.

``build_segmenter(cfg, device)`` is the one door: ``segmenter.backend`` picks ``classical`` (the
embedded default: superpixel region graph + random-walker propagation, no download), ``sam``
(segment-anything), ``sam2`` (SAM 2.1, the ``sam2`` package) or ``sam_hq`` (HQ-SAM,
segment-anything-hq), each from a local checkpoint (checkpoints/README.md).

Besides points, every backend takes a **mask prompt** (SAM's ``mask_input``: a dense prior of where
the object is, e.g. the previous frame's mask carried to this frame): :func:`with_mask_prompt`
returns the embedding that every later ``decode`` also prompts with it.
"""

from __future__ import annotations

import importlib
import importlib.util
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


def check_mask_prompt(probability: np.ndarray, image_shape: tuple) -> np.ndarray:
    """A mask prompt as float32 (H, W) in [0, 1]; ValueError unless it has the image's ``image_shape``
    (H, W) and finite values in [0, 1]."""
    probability = np.asarray(probability, dtype=np.float32)
    if probability.shape != tuple(image_shape):
        raise ValueError(f"mask prompt of shape {probability.shape} for an image of shape {tuple(image_shape)}; "
                         "give the object's probability at the image's size")
    if not np.all(np.isfinite(probability)) or probability.min(initial=0) < 0 or probability.max(initial=0) > 1:
        raise ValueError("a mask prompt holds probabilities in [0, 1]")
    return probability


def with_mask_prompt(segmenter: Segmenter, embedding: Any, probability: np.ndarray) -> Any:
    """``embedding`` (the segmenter's, of one image) with a mask prompt: ``probability`` (H, W) float in
    [0, 1] at the image's size. Every ``decode`` (and :func:`decode_cells`) of the returned embedding
    is prompted with it besides the point prompts; an empty point set still gives an empty mask. SAM,
    SAM 2 and HQ-SAM take it as their low-resolution ``mask_input`` (logits); the classical segmenter
    as a pull of every region towards it (:mod:`gpoa.segmenters.classical`)."""
    own = getattr(segmenter, "with_mask_prompt", None)
    if own is None:
        raise UsageError(f"segmenter {type(segmenter).__name__} takes no mask prompt; use one of the backends "
                         f"{', '.join(BACKENDS)}")
    return own(embedding, probability)


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
    return cell_means(np.asarray(masks).astype(np.uint8, copy=False), shape)


def cell_means(values: np.ndarray, shape: tuple) -> np.ndarray:
    """Mean of ``values`` (B, H, W) or (H, W) — uint8, or any real numbers — over each cell of a
    ``shape`` = (rows, cols) grid: (B, rows, cols) or (rows, cols) float32, the cells of
    :func:`mask_cells` (exact sums for uint8 values, float64 sums otherwise)."""
    values = np.asarray(values)
    single = values.ndim == 2
    values = values[None] if single else values
    if values.dtype != np.uint8:
        values = values.astype(np.float64, copy=False)
    rows, cols = int(shape[0]), int(shape[1])
    height, width = values.shape[1:]
    row_edges = -(-np.arange(rows + 1) * height // rows)
    col_edges = -(-np.arange(cols + 1) * width // cols)
    # corners of the cells in each plane's summed-area table (cv2.integral: a zero first row and column)
    grid = np.ix_(row_edges, col_edges)
    corners = np.stack([cv2.integral(np.ascontiguousarray(plane))[grid] for plane in values])
    corners = corners.astype(np.float64)
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    counts = np.diff(row_edges)[:, None] * np.diff(col_edges)[None, :]
    cells = (sums / np.maximum(counts, 1)).astype(np.float32)
    return cells[0] if single else cells


#: ``segmenter.backend`` → (module, class) of the segmenter
BACKENDS = {
    "classical": ("gpoa.segmenters.classical", "ClassicalSegmenter"),
    "sam": ("gpoa.segmenters.sam", "SamSegmenter"),
    "sam2": ("gpoa.segmenters.sam2", "Sam2Segmenter"),
    "sam_hq": ("gpoa.segmenters.sam_hq", "SamHqSegmenter"),
}
#: the backends whose package is an optional extra of gpoa: (import name, the command that installs it)
OPTIONAL_PACKAGES = {
    "sam2": ("sam2", "SAM2_BUILD_CUDA=0 pip install --no-build-isolation '.[sam2]'"),
    "sam_hq": ("segment_anything_hq", "pip install '.[hq]'"),
}


def require_package(backend: str) -> None:
    """Raise :class:`UsageError` saying how to install it when the optional package of ``backend``
    (:data:`OPTIONAL_PACKAGES`) is not installed."""
    if backend in OPTIONAL_PACKAGES:
        package, install = OPTIONAL_PACKAGES[backend]
        if importlib.util.find_spec(package) is None:
            raise UsageError(f"segmenter.backend={backend} needs the Python package '{package}', which is not "
                             f"installed; run {install} in the GPOA folder (make setup does)")


def build_segmenter(cfg: Config, device: str = "cpu") -> Segmenter:
    """The segmenter ``cfg.segmenter.backend`` names, on ``device`` (a model backend loads its model now)."""
    backend = cfg.segmenter.backend
    if backend not in BACKENDS:
        raise UsageError(f"unknown segmenter.backend '{backend}'; use one of {', '.join(BACKENDS)}")
    require_package(backend)
    module, name = BACKENDS[backend]
    segmenter_class = getattr(importlib.import_module(module), name)
    if backend == "classical":
        return segmenter_class(cfg.segmenter)
    return segmenter_class(cfg.segmenter, device=device)
