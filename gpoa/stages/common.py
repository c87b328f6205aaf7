"""What every stage shares: the run report, seeding, the patch-feature store and the reference."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.config import Config
from gpoa.errors import InputError, UsageError
from gpoa.features import FeatureExtractor, build_feature_extractor, feature_cache_key
from gpoa.grid import PatchGrid
from gpoa.io import (
    DatasetLayout,
    atomic_write_text,
    check_prompts_fit_image,
    image_size,
    load_array,
    read_image,
    read_mask,
    read_prompt_file,
    save_array,
)
from gpoa.matching import ReferenceFeatures, build_reference, match_prompts
from gpoa.prompts import PromptSet


@dataclass
class StageReport:
    """Outcome of one stage over a batch of images: exit code 0 when nothing failed, else 1."""

    stage: str
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (name, reason): kept from an earlier run
    failed: list = field(default_factory=list)  # (name, message)

    def fail(self, name: str, message: str) -> None:
        self.failed.append((name, message))
        print(f"[{self.stage}] FAILED {name}: {message}", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        lines = [f"[{self.stage}] {len(self.done)} done, {len(self.skipped)} kept from an earlier run, "
                 f"{len(self.failed)} failed"]
        lines += [f"  failed: {name}: {message}" for name, message in self.failed]
        return "\n".join(lines)


def settings_stamp(path: Path, settings: dict) -> Path:
    """The file recording the settings an output folder was made with.

    Rewritten (so its modification time moves forward) only when ``settings`` differ from what it
    holds: outputs older than the stamp were made with other settings and are redone on resume.
    """
    text = json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def is_fresh(output: Path, *inputs: Optional[Path]) -> bool:
    """``output`` exists and is at least as new as every existing input (resume without stale results)."""
    if not output.is_file():
        return False
    made = output.stat().st_mtime
    return all(p is None or not p.exists() or p.stat().st_mtime <= made for p in inputs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds legacy global-RNG users too
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def stable_seed(*parts) -> int:
    """A 32-bit seed derived from ``parts`` (e.g. the run seed and an image stem), stable across runs."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def working_grid(cfg: Config) -> PatchGrid:
    return PatchGrid.square(cfg.features.working_size, cfg.features.patch_size)


class FeatureStore:
    """Patch features (rows, cols, D) of dataset images, cached as fp16 under ``DATASET/cache``.

    The cache is keyed by the features settings (:func:`~gpoa.features.feature_cache_key`) and an
    entry is recomputed when its image is newer; ``--overwrite`` redoes stage outputs, not features.
    The extractor (and its checkpoint) is loaded only when an image is not cached yet.
    """

    def __init__(self, cfg: Config, layout: DatasetLayout, device: str = "cpu"):
        self.cfg, self.layout, self.device = cfg, layout, device
        self.key = feature_cache_key(cfg.features)
        self.grid = working_grid(cfg)
        self._extractor: Optional[FeatureExtractor] = None

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = build_feature_extractor(self.cfg, device=self.device)
        return self._extractor

    def path(self, split: str, stem: str) -> Path:
        return self.layout.feature_cache(self.key, split, stem)

    def features(self, split: str, image_path: Path, image: Optional[np.ndarray] = None) -> np.ndarray:
        """Features of ``image_path`` (read unless ``image`` is given); computed once, then cached."""
        path = self.path(split, Path(image_path).stem)
        if is_fresh(path, Path(image_path)):
            try:
                cached = load_array(path)
                if cached.shape[:2] == (self.grid.rows, self.grid.cols):
                    return cached.astype(np.float32)
            except (OSError, ValueError):
                # an unreadable cache entry (e.g. a write interrupted by another tool) is recomputed
                pass
        if image is None:
            image = read_image(image_path)
        stored = np.asarray(self.extractor.extract(image), dtype=np.float32).astype(np.float16)
        save_array(path, stored)
        # the cached precision, so a run gives the same prompts whether or not the cache existed
        return stored.astype(np.float32)


def load_reference(cfg: Config, layout: DatasetLayout, store: FeatureStore) -> ReferenceFeatures:
    """Features and foreground/background patch labels of every reference pair (k-shot: all of them).

    A bad reference pair stops the stage (nothing can be matched without it): UsageError.
    """
    grids, fractions = [], []
    for image_path, mask_path in layout.reference_pairs():
        try:
            image = read_image(image_path)
            mask = read_mask(mask_path, expected_size=image_size(image))
        except InputError as exc:
            raise UsageError(f"reference pair unusable: {exc}") from None
        if not mask.any():
            raise UsageError(f"reference mask '{mask_path}' has no foreground pixels; the reference must contain "
                             "the object (foreground = nonzero pixels)")
        grids.append(store.features("reference", image_path, image))
        fractions.append(store.grid.mask_fraction(mask))
    try:
        return build_reference(grids, fractions, cfg.matching.foreground_fraction)
    except ValueError as exc:
        raise UsageError(f"reference in '{layout.reference_mask}': {exc}") from None


def matched_samples(cfg: Config, layout: DatasetLayout, store: FeatureStore, reference: ReferenceFeatures,
                    split: str, report: StageReport) -> list:
    """Episode samples of ``<split>_image/`` + ``<split>_mask/``: prompts from matching, image and truth kept.

    Bad pairs are reported on ``report`` and left out.
    """
    from gpoa.env import EpisodeSample

    samples = []
    image_folder, mask_folder = layout.root / f"{split}_image", layout.root / f"{split}_mask"
    for image_path, mask_path in tqdm(list(layout.pairs(image_folder, mask_folder)), desc=f"{split} images",
                                      unit="image"):
        if mask_path is None:
            report.fail(image_path.name, f"no mask with the same stem in '{mask_folder}'")
            continue
        try:
            image = read_image(image_path)
            truth = read_mask(mask_path, expected_size=image_size(image))
            features = store.features(split, image_path, image)
        except InputError as exc:
            report.fail(image_path.name, str(exc))
            continue
        match = match_prompts(reference, features, cfg.matching)
        prompt_set = PromptSet(image_path.name, image_size(image), store.grid, match.positive_indices,
                               match.negative_indices, source="matching")
        samples.append(EpisodeSample(image_path.stem, store.grid, features, prompt_set, image, truth))
    return samples


def prompt_file_samples(layout: DatasetLayout, store: FeatureStore, folder: Path, report: StageReport,
                        with_images: bool, skip=None) -> list:
    """Episode samples of the target prompt files in ``folder`` (features from the cache, images if asked).

    ``skip(stem)`` → True leaves a prompt file out before anything of it is read (resume).
    """
    from gpoa.env import EpisodeSample

    if not folder.is_dir() or not any(folder.glob("*.json")):
        raise UsageError(f"no prompt files in '{folder}'; run Generate_initial_prompts.py first")
    samples = []
    for prompt_path in tqdm(sorted(folder.glob("*.json")), desc="prompt files", unit="image"):
        if skip is not None and skip(prompt_path.stem):
            continue
        try:
            prompt_set = read_prompt_file(prompt_path, expected_grid=store.grid)
            image_path = layout.find_by_stem(layout.target_image, prompt_path.stem)
            if image_path is None:
                raise InputError(prompt_path, f"has no target image '{prompt_path.stem}.*' in '{layout.target_image}'")
            image = read_image(image_path) if with_images else None
            if image is not None:
                check_prompts_fit_image(prompt_path, prompt_set, image_path, image_size(image))
            features = store.features("target", image_path, image)
        except InputError as exc:
            report.fail(prompt_path.name, str(exc))
            continue
        samples.append(EpisodeSample(prompt_path.stem, store.grid, features, prompt_set, image, None))
    return samples
