"""Episode samples: one target image an agent can edit the prompts of, with the task it belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from gpoa.domain import DomainEncoder
from gpoa.grid import PatchGrid
from gpoa.matching import ReferenceFeatures
from gpoa.placement import PatchClassifier
from gpoa.prompts import PromptSet
from gpoa.runtime import array_digest


@dataclass
class EpisodeSample:
    """One target image an episode can edit.

    ``target_features`` (rows, cols, D) are its patch features on ``grid``; ``prompt_set`` the
    prompts to start from (e.g. stage 1's); ``reference`` the features of its task's reference
    pair(s), against which the graph's candidates and similarities are computed. ``image`` (H, W, 3)
    uint8 and ``truth_mask`` (H, W) bool, at the original image size, are needed for a segmenter
    in the loop and for the segmentation reward / ideal start respectively. ``task`` names the task;
    ``classifier`` (optional) is its reference's patch classifier, a second view of the patch
    scores for the predicted region (:mod:`gpoa.envs.mask_view`); ``domain`` (optional) the encoder
    of a taught policy's node columns that mean something only within its domain (:mod:`gpoa.domain`).

    What a clip adds (:mod:`gpoa.video`): ``region_prior`` (rows * cols,) float32 in [0, 1], the
    share of each patch inside the previous frame's mask carried to this frame; when given, the
    agent's predicted region (its label-free yardstick) is the patches at least half inside it
    instead of the one the match scores predict. ``mask_prompt`` (H, W) float32 in [0, 1]: the
    segmenter's mask prompt (:func:`gpoa.segmenters.with_mask_prompt`) for every decode.
    """

    name: str
    grid: PatchGrid
    target_features: np.ndarray
    prompt_set: PromptSet
    reference: ReferenceFeatures
    image: Optional[np.ndarray] = None
    truth_mask: Optional[np.ndarray] = None
    task: str = ""
    classifier: Optional[PatchClassifier] = None
    domain: Optional[DomainEncoder] = None
    region_prior: Optional[np.ndarray] = None
    mask_prompt: Optional[np.ndarray] = None

    def load(self) -> EpisodeSample:
        return self

    @property
    def content(self) -> str:
        """A digest of the image (or, without it, of the features): what seeds a per-image draw."""
        return array_digest(self.image if self.image is not None else self.target_features)


@dataclass
class LazySample:
    """A sample read from disk only when an episode needs it: ``load()`` calls ``loader``.

    Many tasks of many images stay cheap in memory: an :class:`~gpoa.envs.bank.EpisodeBank` keeps
    only the samples it has loaded recently.
    """

    name: str
    task: str
    loader: Callable[[], EpisodeSample]
    #: a digest of the image file's bytes (what seeds a per-image draw; never the name)
    content: str = ""

    def load(self) -> EpisodeSample:
        return self.loader()
