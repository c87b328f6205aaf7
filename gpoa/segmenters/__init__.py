"""Promptable segmenters with SAM's two-phase contract: ``embed`` an image once, then ``decode``
many point-prompt sets against that embedding, batched.

``build_segmenter(cfg, device)`` is the one door: ``segmenter.backend`` picks ``classical`` (the
embedded default: superpixel region graph + random-walker propagation, no download) or ``sam``
(segment-anything from a local checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

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


def build_segmenter(cfg: Config, device: str = "cpu") -> Segmenter:
    backend = cfg.segmenter.backend
    if backend == "classical":
        from gpoa.segmenters.classical import ClassicalSegmenter

        return ClassicalSegmenter(cfg.segmenter)
    if backend == "sam":
        from gpoa.segmenters.sam import SamSegmenter

        return SamSegmenter(cfg.segmenter, device=device)
    raise UsageError(f"unknown segmenter.backend '{backend}'; use 'classical' or 'sam'")
