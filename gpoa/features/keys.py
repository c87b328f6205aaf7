"""What names a feature cache: the backend, its model and weights file, the grid, and the version of
the handcrafted descriptor. The extractors and the package door both read it (no import between them)."""

from __future__ import annotations

from pathlib import Path

from gpoa.config import FeaturesConfig

#: version of the handcrafted descriptor (gpoa.features.handcrafted): bump it whenever those features change
HANDCRAFTED_VERSION = 1


def feature_cache_key(cfg: FeaturesConfig) -> str:
    """Name of the feature cache for this config: backend, model, weights file and grid.

    Computable without loading a model, so later stages read cached features without the backbone.
    """
    grid = f"{cfg.working_size}-{cfg.patch_size}"
    if cfg.backend == "dinov2":
        return f"dinov2-{cfg.model}-{Path(cfg.checkpoint).stem}-{grid}"
    if cfg.backend == "handcrafted":
        return f"handcrafted-v{HANDCRAFTED_VERSION}-{grid}"
    return f"{cfg.backend}-{grid}"
