"""Patch-feature extractors: image → (rows, cols, D) features on the config's patch grid.

``build_feature_extractor(cfg)`` is the one door: ``features.backend`` picks ``handcrafted`` (the
embedded default, no download) or ``dinov2`` (DINOv2 through timm, from a local checkpoint).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from gpoa.config import Config
from gpoa.errors import UsageError
from gpoa.features.keys import feature_cache_key  # noqa: F401 - the package's door to it
from gpoa.grid import PatchGrid


@runtime_checkable
class FeatureExtractor(Protocol):
    #: the patch grid every output lives on
    grid: PatchGrid
    #: names these features in the cache: backend, model and grid (different keys never mix)
    cache_key: str

    def extract(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB image (H, W, 3) of any size → float32 patch features (rows, cols, D)."""
        ...


def patch_features(extractor: FeatureExtractor, image: np.ndarray) -> np.ndarray:
    """Patch features (rows, cols, D) float32 of a uint8 RGB image (H, W, 3), rounded to float16 as
    the feature cache (:class:`gpoa.features.store.FeatureStore`) keeps them: a cached and a freshly
    computed image give the same values."""
    return np.asarray(extractor.extract(image), dtype=np.float32).astype(np.float16).astype(np.float32)


def build_feature_extractor(cfg: Config, device: str = "cpu") -> FeatureExtractor:
    backend = cfg.features.backend
    if backend == "handcrafted":
        from gpoa.features.handcrafted import HandcraftedExtractor

        return HandcraftedExtractor(cfg.features)
    if backend == "dinov2":
        from gpoa.features.dinov2 import DinoV2Extractor

        return DinoV2Extractor(cfg.features, device=device)
    raise UsageError(f"unknown features.backend '{backend}'; use 'handcrafted' or 'dinov2'")
