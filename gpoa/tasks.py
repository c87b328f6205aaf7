"""Tasks: one one-shot problem each (a reference pair, targets, training pairs), many per run.

A :class:`Task` joins a :class:`~gpoa.layout.TaskLayout` (its files) with the run's shared
:class:`~gpoa.backends.Backends` (models loaded once for all tasks), its feature cache and its
reference features. Stages loop over tasks; training samples episodes across them, so one policy
serves every domain. Samples carry their task's name and reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from gpoa.backends import Backends
from gpoa.config import Config
from gpoa.errors import InputError, UsageError
from gpoa.features.store import FeatureStore, file_digest
from gpoa.inference import propose, reference_features
from gpoa.io import check_prompts_fit_image, image_size, read_image, read_mask, read_prompt_file
from gpoa.layout import TaskLayout, resolve_tasks
from gpoa.matching import ReferenceFeatures
from gpoa.placement import PatchClassifier, fit_patch_classifier
from gpoa.prompts import PromptSet
from gpoa.runtime import StageReport
from gpoa.samples import EpisodeSample, LazySample


class Task:
    """One task of a run: files, feature cache, reference features, stage-1 prompt proposal."""

    def __init__(self, layout: TaskLayout, backends: Backends, cfg: Config,
                 taught_reference: Optional[ReferenceFeatures] = None):
        self.layout, self.backends, self.cfg = layout, backends, cfg
        self.name = layout.name
        self.grid = backends.grid
        self.store = FeatureStore(layout.cache, backends)
        # a taught policy's references (gpoa.teach), which replace the layout's reference pair(s)
        self.taught_reference = taught_reference

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.layout.kind} '{self.layout.source}')"

    @cached_property
    def reference(self) -> ReferenceFeatures:
        """Features and foreground/background patch labels of every reference pair (k-shot: all).

        A bad reference pair stops the task (nothing can be matched without it): UsageError. With a
        taught policy's references (``taught_reference``) the layout's pairs are not read.
        """
        if self.taught_reference is not None:
            return self.taught_reference
        self.layout.require("reference")
        grids, masks = [], []
        for image_path, mask_path in self.layout.reference:
            try:
                image = read_image(image_path)
                mask = read_mask(mask_path, expected_size=image_size(image))
            except InputError as exc:
                raise UsageError(f"task '{self.name}': reference pair unusable: {exc}") from None
            if not mask.any():
                raise UsageError(f"reference mask '{mask_path}' has no foreground pixels; the reference must contain "
                                 "the object (foreground = nonzero pixels)")
            grids.append(self.store.features(image_path, image))
            masks.append(mask)
        try:
            return reference_features(grids, masks, self.grid, self.cfg)
        except ValueError as exc:
            raise UsageError(f"reference of task '{self.name}' ('{self.layout.reference[0][1]}'): {exc}") from None

    @cached_property
    def classifier(self) -> PatchClassifier:
        """The logistic patch classifier fitted on the reference's own patches (placement's second view)."""
        return fit_patch_classifier(self.reference, self.cfg.placement.regularisation)

    def propose(self, image_name: str, image: np.ndarray, features: np.ndarray) -> PromptSet:
        """Stage 1's prompts (:func:`gpoa.inference.propose`) for one target: ``features`` (rows, cols, D)
        of ``image`` (H, W, 3), against this task's reference."""
        return propose(self.reference, self.classifier, features, image, self.grid, self.cfg, image_name)

    # ----- episode samples -------------------------------------------------------------------
    def training_samples(self, report: StageReport) -> list:
        """Lazy samples of the training pairs, prompts from :meth:`propose`; each pair is read once
        now (features cached), so a bad pair is reported here and left out, not met mid-training."""
        self.layout.require("reference", "train")
        samples = []
        for image_path, mask_path in self.layout.train:
            name = f"{self.name}/{image_path.stem}"
            if mask_path is None:
                report.fail(name, f"no mask with the same stem as '{image_path.name}' in the training masks")
                continue
            try:
                image = read_image(image_path)
                read_mask(mask_path, expected_size=image_size(image))
                self.store.features(image_path, image)
            except InputError as exc:
                report.fail(name, str(exc))
                continue
            samples.append(LazySample(image_path.stem, self.name, self._training_loader(image_path, mask_path),
                                       content=file_digest(image_path)))
        return samples

    def _training_loader(self, image_path: Path, mask_path: Path) -> Callable[[], EpisodeSample]:
        def load() -> EpisodeSample:
            image = read_image(image_path)
            truth = read_mask(mask_path, expected_size=image_size(image))
            features = self.store.features(image_path, image)
            prompt_set = self.propose(image_path.name, image, features)
            return EpisodeSample(image_path.stem, self.grid, features, prompt_set, self.reference, image, truth,
                                 task=self.name, classifier=self.classifier)
        return load

    def prompt_file_samples(self, folder: Path, report: StageReport, with_images: bool, with_truth: bool = False,
                            skip: Optional[Callable[[str], bool]] = None) -> list:
        """Lazy samples of the target prompt files in ``folder`` (``<stem>.json``); the prompt file is
        read and checked now, the features (and the image and truth mask, if asked) at ``load()``.

        ``skip(stem)`` → True leaves a prompt file out before anything of it is read (resume).
        """
        if not folder.is_dir() or not any(folder.glob("*.json")):
            raise UsageError(f"no prompt files in '{folder}'; run Generate_initial_prompts.py first")
        samples = []
        for prompt_path in sorted(folder.glob("*.json")):
            stem = prompt_path.stem
            if skip is not None and skip(stem):
                continue
            try:
                prompt_set = read_prompt_file(prompt_path, expected_grid=self.grid)
                image_path = self.layout.target(stem)
                if image_path is None:
                    raise InputError(prompt_path, f"has no target image '{stem}.*' among the targets of task "
                                                  f"'{self.name}'")
            except InputError as exc:
                report.fail(f"{self.name}/{prompt_path.name}", str(exc))
                continue
            mask_path = self.layout.target_mask(stem) if with_truth else None
            samples.append(LazySample(stem, self.name, self._target_loader(prompt_path, prompt_set, image_path,
                                                                              mask_path, with_images),
                                      content=file_digest(image_path)))
        return samples

    def _target_loader(self, prompt_path: Path, prompt_set: PromptSet, image_path: Path, mask_path: Optional[Path],
                       with_image: bool) -> Callable[[], EpisodeSample]:
        def load() -> EpisodeSample:
            image = read_image(image_path) if with_image or mask_path is not None else None
            truth = None
            if image is not None:
                check_prompts_fit_image(prompt_path, prompt_set, image_path, image_size(image))
                if mask_path is not None:
                    truth = read_mask(mask_path, expected_size=image_size(image))
            features = self.store.features(image_path, image)
            return EpisodeSample(prompt_path.stem, self.grid, features, prompt_set, self.reference,
                                 image if with_image else None, truth, task=self.name, classifier=self.classifier)
        return load


def load_tasks(cfg: Config, backends: Backends, max_targets: Optional[int] = None,
               paths: Optional[Sequence] = None, taught_reference: Optional[ReferenceFeatures] = None) -> list:
    """The tasks of ``paths`` (default ``cfg.data``): see :func:`gpoa.layout.resolve_tasks`; with
    ``taught_reference`` (a taught policy's, gpoa.teach) every task matches against it."""
    layouts = resolve_tasks(list(paths if paths is not None else cfg.data), cfg.workspace, max_targets)
    return [Task(layout, backends, cfg, taught_reference) for layout in layouts]
