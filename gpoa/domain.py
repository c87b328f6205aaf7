"""Node inputs that mean something only within one domain: what a taught policy sees (gpoa.teach).

The node columns of :data:`gpoa.graph.NODE_FEATURES` are chosen to mean the same on any image, so
that one policy serves every domain. A policy taught on labelled pairs of ONE domain may also see
what only means something there, as the papers' agents see DINOv2 features on their nodes:

- ``domain_classifier`` — the log-odds of the task's patch classifier (the logistic regression
  fitted on the reference patches, :func:`gpoa.placement.fit_patch_classifier`; with a taught
  policy's many references, a classifier of this domain's object) at the node's patch, squashed
  to (-1, 1) by tanh(z / 4);
- ``domain_classifier_rank`` — the share of the image's patches whose log-odds are below the
  node's, in [0, 1];
- ``domain_feature_<i>`` — the node patch's own features, projected on the first k principal axes
  of the labelled pairs' patch features, each in units of its spread over those patches (three
  spreads = 1) and clipped to [-1, 1]: the network's first layer learns what to read from them.

The columns are static per node (they depend on the image and the node's patch, not on the prompt
set), so an :class:`~gpoa.envs.EpisodeBank` computes them once per sample (``DomainEncoder.columns``)
and the environment appends them to every observation (``env.domain_inputs`` of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpoa.graph import match_rank
from gpoa.matching import l2_normalise
from gpoa.placement import PatchClassifier

#: the classifier's columns, before the k projected features
CLASSIFIER_COLUMNS = ("domain_classifier", "domain_classifier_rank")
#: log-odds per unit of tanh's argument in the ``domain_classifier`` column
LOG_ODDS_SCALE = 4.0
#: spreads per unit of a projected feature column
FEATURE_SPREADS = 3.0


@dataclass(frozen=True)
class DomainEncoder:
    """The projection of the ``domain_feature_<i>`` columns: ``mean`` (D,) and ``components`` (D, k)
    of the principal axes of unit-norm patch features, ``scale`` (k,) their spreads."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @property
    def names(self) -> tuple:
        """The node columns this encoder adds, in order."""
        return CLASSIFIER_COLUMNS + tuple(f"domain_feature_{i}" for i in range(self.components.shape[1]))

    def columns(self, target_features: np.ndarray, classifier: PatchClassifier, indices: np.ndarray) -> np.ndarray:
        """(N, len(names)) float32 in [-1, 1]: the columns of the nodes at patch ``indices`` (N,) of a
        target with patch features ``target_features`` (rows, cols, D), under the task's ``classifier``."""
        features = np.asarray(target_features)
        flat = features.reshape(-1, features.shape[-1])
        if flat.shape[1] != len(self.mean):
            raise ValueError(f"target features have {flat.shape[1]} dimensions, the domain encoder {len(self.mean)}; "
                             "use the features settings the policy was taught with")
        log_odds = classifier.score(flat).astype(np.float64)
        rank = match_rank(log_odds)
        projected = (l2_normalise(flat[indices]) - self.mean) @ self.components / self.scale
        return np.column_stack([np.tanh(log_odds[indices] / LOG_ODDS_SCALE), rank[indices],
                                np.clip(projected / FEATURE_SPREADS, -1.0, 1.0)]).astype(np.float32)

    def to_dict(self) -> dict:
        """Tensors a policy file keeps (``weights_only`` loadable); :meth:`from_dict` reads them back."""
        return {name: torch.as_tensor(np.asarray(getattr(self, name), dtype=np.float32))
                for name in ("mean", "components", "scale")}

    @classmethod
    def from_dict(cls, values: dict) -> DomainEncoder:
        arrays = {name: np.asarray(torch.as_tensor(values[name]).numpy(), dtype=np.float32)
                  for name in ("mean", "components", "scale")}
        return cls(**arrays)


def fit_domain_encoder(feature_grids, count: int) -> DomainEncoder:
    """The first ``count`` principal axes of the unit-norm patch features of ``feature_grids``
    [(rows, cols, D)] (all patches of the labelled images, object and background alike)."""
    flat = np.concatenate([l2_normalise(np.asarray(f).reshape(-1, np.shape(f)[-1])) for f in feature_grids])
    mean = flat.mean(axis=0)
    centred = flat - mean
    count = min(count, *centred.shape)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    components = axes[:count].T.astype(np.float32)
    scale = np.maximum((centred @ components).std(axis=0), 1e-6).astype(np.float32)
    return DomainEncoder(mean.astype(np.float32), components, scale)
