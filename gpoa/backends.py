"""The models a run uses, built on first use and shared by every task of the run."""

from __future__ import annotations

from functools import cached_property

from gpoa.config import Config
from gpoa.features import FeatureExtractor, build_feature_extractor, feature_cache_key
from gpoa.grid import PatchGrid
from gpoa.segmenters import Segmenter, build_segmenter


def working_grid(cfg: Config) -> PatchGrid:
    """The patch grid of the config's working image (features and prompt files live on it)."""
    return PatchGrid.square(cfg.features.working_size, cfg.features.patch_size)


class Backends:
    """Feature extractor and segmenter of ``cfg`` on ``device``; each is loaded the first time it is
    used (a stage that finds every feature cached never loads the backbone)."""

    def __init__(self, cfg: Config, device: str = "cpu"):
        self.cfg, self.device = cfg, device
        self.feature_key = feature_cache_key(cfg.features)
        self.grid = working_grid(cfg)

    @cached_property
    def extractor(self) -> FeatureExtractor:
        return build_feature_extractor(self.cfg, device=self.device)

    @cached_property
    def segmenter(self) -> Segmenter:
        return build_segmenter(self.cfg, device=self.device)
