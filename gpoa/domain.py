"""Node inputs that mean something only within one domain: what a taught policy sees (gpoa.teach).

The node columns of :data:`gpoa.graph.NODE_FEATURES` are chosen to mean the same on any image, so
that one policy serves every domain. A policy taught on labelled pairs of ONE domain may also see
what only means something there, as the papers' agents see DINOv2 features on their nodes. A
:class:`DomainEncoder` holds what they are computed from: a **domain patch classifier** (a logistic
regression of the labelled pairs' patches, object against background, on their truth:
:func:`gpoa.placement.fit_patch_classifier`; with a pair used as a training target, fitted without
it) and the principal axes of the labelled pairs' patch features. The columns:

- ``domain_classifier`` — the classifier's log-odds at the node's patch, squashed to (-1, 1) by
  tanh(z / 4);
- ``domain_classifier_rank`` — the share of the image's patches whose log-odds are below the
  node's, in [0, 1];
- ``domain_feature_<i>`` — the node patch's own features, projected on the first k principal axes,
  each in units of its spread over the labelled patches (three spreads = 1) and clipped to
  [-1, 1]: the network's first layer learns what to read from them;
- ``domain_lookahead_agreement`` — what toggling the node would do to the mask's agreement (soft
  Dice on the patch grid) with the classifier's region, the patches whose log-odds are positive
  (:meth:`DomainEncoder.region`): the lookahead of :mod:`gpoa.envs.mask_view`, against what this
  domain's classifier calls the object instead of the region the reference matching predicts.

All but the last are static per node (they depend on the image and the node's patch, not on the
prompt set): an :class:`~gpoa.envs.EpisodeBank` computes them once per sample
(:meth:`DomainEncoder.columns`); the environment appends them and the lookahead column to every
observation (``env.domain_inputs`` columns in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpoa.graph import match_rank
from gpoa.matching import ReferenceFeatures, l2_normalise
from gpoa.placement import PatchClassifier, fit_patch_classifier

#: the classifier's columns, before the k projected features
CLASSIFIER_COLUMNS = ("domain_classifier", "domain_classifier_rank")
#: the column that follows the mask, after the static ones (the environment writes it)
LOOKAHEAD_COLUMN = "domain_lookahead_agreement"
#: log-odds per unit of tanh's argument in the ``domain_classifier`` column
LOG_ODDS_SCALE = 4.0
#: spreads per unit of a projected feature column
FEATURE_SPREADS = 3.0


@dataclass(frozen=True)
class DomainEncoder:
    """What the domain columns are computed from: the domain patch ``classifier``, and ``mean`` (D,)
    and ``components`` (D, k) of the principal axes of unit-norm patch features with ``scale`` (k,)
    their spreads."""

    classifier: PatchClassifier
    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @property
    def names(self) -> tuple:
        """The node columns a policy with this encoder observes after the usual ones, in order."""
        return (CLASSIFIER_COLUMNS + tuple(f"domain_feature_{i}" for i in range(self.components.shape[1]))
                + (LOOKAHEAD_COLUMN,))

    def region(self, target_features: np.ndarray) -> np.ndarray:
        """(rows * cols,) float32 0/1: the patches the classifier calls the object (log-odds > 0) of a
        target with patch features ``target_features`` (rows, cols, D)."""
        return (self.classifier.score(target_features) > 0).astype(np.float32)

    def columns(self, target_features: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """(N, len(names) - 1) float32 in [-1, 1]: the static columns (all but the lookahead) of the nodes
        at patch ``indices`` (N,) of a target with patch features ``target_features`` (rows, cols, D)."""
        features = np.asarray(target_features)
        flat = features.reshape(-1, features.shape[-1])
        if flat.shape[1] != len(self.mean):
            raise ValueError(f"target features have {flat.shape[1]} dimensions, the domain encoder {len(self.mean)}; "
                             "use the features settings the policy was taught with")
        log_odds = self.classifier.score(flat).astype(np.float64)
        rank = match_rank(log_odds)
        projected = (l2_normalise(flat[indices]) - self.mean) @ self.components / self.scale
        return np.column_stack([np.tanh(log_odds[indices] / LOG_ODDS_SCALE), rank[indices],
                                np.clip(projected / FEATURE_SPREADS, -1.0, 1.0)]).astype(np.float32)

    def to_dict(self) -> dict:
        """Tensors a policy file keeps (``weights_only`` loadable); :meth:`from_dict` reads them back."""
        return {"classifier_weights": torch.as_tensor(np.asarray(self.classifier.weights, dtype=np.float64)),
                "classifier_bias": float(self.classifier.bias),
                **{name: torch.as_tensor(np.asarray(getattr(self, name), dtype=np.float32))
                   for name in ("mean", "components", "scale")}}

    @classmethod
    def from_dict(cls, values: dict) -> DomainEncoder:
        classifier = PatchClassifier(torch.as_tensor(values["classifier_weights"]).numpy().astype(np.float64),
                                     float(values["classifier_bias"]))
        arrays = {name: np.asarray(torch.as_tensor(values[name]).numpy(), dtype=np.float32)
                  for name in ("mean", "components", "scale")}
        return cls(classifier, **arrays)


def fit_domain_encoder(reference: ReferenceFeatures, count: int, regularisation: float) -> DomainEncoder:
    """The encoder of labelled patches ``reference`` (:class:`~gpoa.matching.ReferenceFeatures` of
    every labelled pair: their unit-norm features and object / background labels): the classifier
    (``regularisation``: its L2 weight) and the first ``count`` principal axes of all the patches."""
    flat = reference.features
    mean = flat.mean(axis=0)
    centred = flat - mean
    count = min(count, *centred.shape)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    components = axes[:count].T.astype(np.float32)
    scale = np.maximum((centred @ components).std(axis=0), 1e-6).astype(np.float32)
    return DomainEncoder(fit_patch_classifier(reference, regularisation), mean.astype(np.float32), components, scale)
