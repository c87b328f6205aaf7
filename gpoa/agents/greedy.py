"""Fast deterministic inference: the greedy policy of a :class:`~gpoa.agents.network.NodeSetNetwork`.

:class:`GreedyPolicy` computes the network's scores for one observation at a time on numpy copies
of its weights, in compiled code (:func:`gpoa.kernels.node_set_q`), and picks the best valid
action. Its ``stop_margin`` is the do-no-harm gate: a toggle is taken only when its score beats
STOP's by more than the margin (for Double DQN: when the expected gain in Dice of editing on
exceeds the margin), so a policy that expects nothing from an edit leaves the prompts as they are.
Its ``min_confidence`` is the second gate: on an image whose predicted region is not trustworthy
(the observation's ``region_confidence`` global below it) the policy STOPs at once, since the
edits it learned follow that region.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from gpoa.agents.network import NodeSetNetwork
from gpoa.envs import GLOBAL_FEATURES
from gpoa.kernels import node_set_q


class GreedyPolicy:
    """Greedy policy for one observation at a time (module docstring).

    Equal, up to float32 rounding, to the argmax of :meth:`NodeSetNetwork.forward` over the valid
    actions (with ``stop_margin`` subtracted from every node's score), without autograd, module
    dispatch or padding: only the valid nodes are touched, and when they come first (as the
    environments pad) they are read in place. Later changes to the network are not seen: build a
    new policy after training.

    ``min_confidence`` > 0 needs ``confidence_index``, the position of ``region_confidence`` in the
    observation's globals.
    """

    def __init__(self, network: NodeSetNetwork, stop_margin: float = 0.0, min_confidence: float = 0.0,
                 confidence_index: Optional[int] = None):
        def numpy(tensor: torch.Tensor) -> np.ndarray:
            return np.array(tensor.detach().cpu().numpy(), dtype=np.float32, order="C")  # a copy

        self.architecture = network.architecture
        self.stop_margin = float(stop_margin)
        self.min_confidence, self.confidence_index = confidence_gate(min_confidence, confidence_index)
        self.prior_column, self.prior_weight = network.prior_column, np.float32(network.prior_weight)
        node_weight = numpy(network.node_encoder.weight)  # (H, F + 1), the last column for the flag 1
        self.node_weight = np.ascontiguousarray(node_weight[:, :-1])  # (H, F)
        self.node_bias = np.ascontiguousarray(node_weight[:, -1])
        self.node_weight2 = (np.zeros((0, 0), np.float32) if network.node_encoder2 is None
                             else numpy(network.node_encoder2.weight))
        self.global_weight = numpy(network.global_encoder.weight.T)
        self.global_bias = numpy(network.global_encoder.bias)
        self.head_weight1, self.head_bias1 = numpy(network.context_hidden.weight.T), numpy(network.context_hidden.bias)
        self.head_weight2, self.head_bias2 = numpy(network.context_out.weight.T), numpy(network.context_out.bias)
        # fold the 1/√H of the node score into the query outputs
        scale = np.float32(1.0 / math.sqrt(network.hidden))
        self.head_weight2[:, :-2] *= scale
        self.head_bias2[:-2] *= scale

    @classmethod
    def gated(cls, network: NodeSetNetwork, optimize_cfg, in_loop: bool,
              calibrated: Optional[dict] = None) -> GreedyPolicy:
        """The policy as inference runs it (stage 3): the ``stop_margin`` and, for a policy with the
        segmenter in the loop (the only one whose observation has a meaningful region confidence),
        the ``min_region_confidence`` of ``optimize_cfg.gates(calibrated)`` (``calibrated``: a taught
        policy's gates, which replace the defaults but not a value set in the config)."""
        stop_margin, min_confidence = optimize_cfg.gates(calibrated)
        return cls(network, stop_margin=stop_margin, min_confidence=min_confidence if in_loop else 0.0,
                   confidence_index=GLOBAL_FEATURES.index("region_confidence"))

    def scores(self, obs: dict) -> np.ndarray:
        """(M + 1,) float32 network scores of one observation (STOP last); padded nodes get -inf."""
        nodes, valid = obs["nodes"], obs["valid"]
        count = int(np.count_nonzero(valid))
        scores = np.full(len(nodes) + 1, -np.inf, dtype=np.float32)
        if valid[:count].all():  # the real nodes come first (as the envs pad): read them in place
            scores[-1] = self._scores(np.ascontiguousarray(nodes[:count], dtype=np.float32), obs["globals"],
                                      scores[:count])
        else:
            index = np.flatnonzero(valid)
            node_scores = np.empty(count, dtype=np.float32)
            scores[-1] = self._scores(np.ascontiguousarray(nodes[index], dtype=np.float32), obs["globals"],
                                      node_scores)
            scores[index] = node_scores
        return scores

    def _scores(self, nodes: np.ndarray, globals_: np.ndarray, out: np.ndarray) -> float:
        stop = node_set_q(nodes, self.node_weight, self.node_bias, self.node_weight2,
                          np.asarray(globals_, dtype=np.float32), self.global_weight, self.global_bias,
                          self.head_weight1, self.head_bias1, self.head_weight2, self.head_bias2, out)
        if self.prior_weight:
            out += self.prior_weight * nodes[:, self.prior_column]
        return stop

    def __call__(self, obs: dict, action_mask: Optional[np.ndarray] = None) -> int:
        """The greedy action of one observation; without a mask every real node and STOP are valid."""
        if region_untrusted(obs, self.min_confidence, self.confidence_index):
            return len(obs["nodes"])  # STOP: the predicted region the edits follow is not trustworthy
        scores = self.scores(obs)
        if self.stop_margin:
            scores[:-1] -= self.stop_margin
        if action_mask is not None:
            scores[~np.asarray(action_mask, dtype=bool)] = -np.inf
        return int(np.argmax(scores))


def confidence_gate(min_confidence: float, confidence_index: Optional[int]) -> tuple:
    """The checked settings of a confidence gate: (``min_confidence``, ``confidence_index``)."""
    if min_confidence > 0 and confidence_index is None:
        raise ValueError("a confidence gate (min_confidence > 0) needs the confidence_index of region_confidence")
    return float(min_confidence), confidence_index


def region_untrusted(obs: dict, min_confidence: float, confidence_index: Optional[int]) -> bool:
    """The confidence gate: whether the observation's ``region_confidence`` global is below
    ``min_confidence`` (never, when that is 0)."""
    return min_confidence > 0 and obs["globals"][confidence_index] < min_confidence


class LookaheadRule:
    """A hand-made, label-free baseline on the same observations: toggle the node whose lookahead
    says the mask would agree best with the predicted region (observation column
    ``lookahead_region_agreement``, :mod:`gpoa.envs.mask_view`), while that agreement would rise;
    then STOP. It shows what a learned policy adds to simply following that one signal; given the
    policy's confidence gate (``min_confidence``, ``confidence_index``), it obeys it too, so that the
    two are compared on the same targets."""

    def __init__(self, node_features, column: str = "lookahead_region_agreement", min_confidence: float = 0.0,
                 confidence_index: Optional[int] = None):
        self.column = list(node_features).index(column)
        self.min_confidence, self.confidence_index = confidence_gate(min_confidence, confidence_index)

    def __call__(self, obs: dict, action_mask: np.ndarray) -> int:
        if region_untrusted(obs, self.min_confidence, self.confidence_index):
            return len(action_mask) - 1  # STOP
        action_mask = np.asarray(action_mask, dtype=bool)
        gains = np.where(action_mask[:-1] & (obs["valid"] > 0), obs["nodes"][:, self.column], -np.inf)
        best = int(np.argmax(gains))
        return best if gains[best] > 0 else len(action_mask) - 1


def run_greedy(policy, env, options: Optional[dict] = None, seed: Optional[int] = None) -> tuple:
    """One deterministic episode with action masks → (actions list, final info, total reward).

    ``policy`` is a :class:`GreedyPolicy`, a :class:`NodeSetNetwork` or any callable
    ``policy(obs, action_mask) -> action``.
    """
    if isinstance(policy, NodeSetNetwork):
        policy = GreedyPolicy(policy)
    obs, info = env.reset(seed=seed, options=options)
    actions, total_reward = [], 0.0
    while True:
        action = policy(obs, env.action_masks())
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        total_reward += float(reward)
        if terminated or truncated:
            return actions, info, total_reward
