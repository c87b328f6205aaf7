"""The node-set network every learner uses: one score per graph node, plus one for STOP.

Observations are graphs of any size (the environments pad them to ``max_nodes``): node features
(B, N, F), a validity flag per node (B, N) and graph-level features (B, G). The network is
permutation-equivariant over nodes (permuting the nodes permutes their scores and leaves the
STOP score unchanged) and blind to padding (padded nodes enter no pooled quantity). Double DQN
reads the scores as Q-values.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn


class NodeSetNetwork(nn.Module):
    """Scores of toggling each node, and of STOP, for a graph with any number of nodes.

    With H = ``hidden``:

    1. φ, shared by all nodes: h_i = ReLU(W [x_i, 1]) (H). The 1 is the node's validity flag, so
       the last column of W is φ's bias and a padded node, whose input is all zero, embeds to
       exactly 0: it adds nothing to the sum, nor (h ≥ 0) to the max, with no mask to apply. With
       ``node_layers=2`` a second bias-free layer follows, h_i ← ReLU(W₂ h_i) (0 stays 0);
    2. graph context c = [mean of h over valid nodes, max of h, ReLU(W_g globals + b_g)] (3H);
    3. an MLP on the context, 3H → H → H + 2, gives a query q (H), a node offset s and the STOP
       score;
    4. ψ: score_i = ⟨h_i, q⟩ / √H + s, the bilinear node-context score of attention decoders.

    φ is the only per-node matrix product (N·F·H multiply-adds); the rest of the per-node work is
    O(N·H), which keeps a greedy step on hundreds of nodes well under a millisecond.

    With ``value_head=True`` a linear head on the context MLP's hidden layer also gives a state
    value (:meth:`value`; actor-critic learners), which the scores do not depend on.

    With ``prior_weight`` w ≠ 0, every node's score also gets w · x_i[``prior_column``], a fixed
    prior the learned part corrects (a residual on a hand-made score, ``agent.agreement_prior``).
    """

    def __init__(self, node_dim: int, global_dim: int, hidden: int = 128, node_layers: int = 1,
                 value_head: bool = False, prior_column: int = -1, prior_weight: float = 0.0):
        super().__init__()
        if node_layers not in (1, 2):
            raise ValueError(f"node_layers must be 1 or 2, got {node_layers}")
        if prior_weight and not 0 <= prior_column < node_dim:
            raise ValueError(f"prior_column must be a node column (0 to {node_dim - 1}), got {prior_column}")
        self.node_dim, self.global_dim, self.hidden, self.node_layers = node_dim, global_dim, hidden, node_layers
        self.prior_column, self.prior_weight = int(prior_column), float(prior_weight)
        self.node_encoder = nn.Linear(node_dim + 1, hidden, bias=False)
        # optional second bias-free layer of φ: a padded node still embeds to exactly 0
        self.node_encoder2 = nn.Linear(hidden, hidden, bias=False) if node_layers == 2 else None
        self.global_encoder = nn.Linear(global_dim, hidden)
        self.context_hidden = nn.Linear(3 * hidden, hidden)
        self.context_out = nn.Linear(hidden, hidden + 2)
        self.value_out = nn.Linear(hidden, 1) if value_head else None

    @property
    def architecture(self) -> dict:
        """The constructor arguments: ``NodeSetNetwork(**net.architecture)`` rebuilds the network."""
        return {"node_dim": self.node_dim, "global_dim": self.global_dim, "hidden": self.hidden,
                "node_layers": self.node_layers, "value_head": self.value_out is not None,
                "prior_column": self.prior_column, "prior_weight": self.prior_weight}

    def with_node_inputs(self, count: int) -> NodeSetNetwork:
        """A copy that reads ``count`` more node columns, appended after this network's F, through
        zero weights: until training moves them it scores every observation exactly as this network
        scores the observation without those columns (``gpoa teach --init``)."""
        wider = NodeSetNetwork(**{**self.architecture, "node_dim": self.node_dim + count})
        state = {name: value.detach().clone() for name, value in self.state_dict().items()}
        weight = state["node_encoder.weight"]  # (H, F + 1): the last column reads the validity flag
        state["node_encoder.weight"] = torch.cat([weight[:, :-1], weight.new_zeros(len(weight), count),
                                                  weight[:, -1:]], dim=1)
        wider.load_state_dict(state)
        return wider

    def with_prior(self, scores: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Node scores (...) of nodes (..., F) plus the fixed prior, ``prior_weight`` · the prior
        column (the scores themselves when there is no prior)."""
        if not self.prior_weight:
            return scores
        return scores + self.prior_weight * nodes[..., self.prior_column]

    def _node_scores(self, h: torch.Tensor, head: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """ψ of every node, (B, N), from h (B, N, H) and head (B, H + 2) (class docstring, step 4)."""
        scores = torch.einsum("bnh,bh->bn", h, head[:, :-2]) / math.sqrt(self.hidden) + head[:, -2:-1]
        return self.with_prior(scores, nodes)

    def trunk(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor) -> tuple:
        """nodes (B, N, F), valid (B, N) bool, globals_ (B, G) → h (B, N, H) (0 on padded nodes) and
        the context MLP's hidden layer (B, H)."""
        flag = valid.unsqueeze(-1).to(nodes.dtype)
        h = torch.relu(self.node_encoder(torch.cat([nodes * flag, flag], dim=-1)))
        if self.node_encoder2 is not None:
            h = torch.relu(self.node_encoder2(h))
        mean = h.sum(dim=1) / flag.sum(dim=1).clamp(min=1.0)
        context = torch.cat([mean, h.amax(dim=1), torch.relu(self.global_encoder(globals_))], dim=-1)
        return h, torch.relu(self.context_hidden(context))

    def embed(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor) -> tuple:
        """nodes (B, N, F), valid (B, N) bool, globals_ (B, G) → h (B, N, H), head (B, H + 2).

        ``h`` is 0 on padded nodes; ``head`` is [q, s, STOP score] of the class docstring.
        """
        h, hidden = self.trunk(nodes, valid, globals_)
        return h, self.context_out(hidden)

    def scores_and_value(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor) -> tuple:
        """(scores (B, N + 1) as :meth:`forward`, value (B,)) in one pass; needs ``value_head=True``."""
        if self.value_out is None:
            raise ValueError("this network has no value head (build it with value_head=True)")
        h, hidden = self.trunk(nodes, valid, globals_)
        head = self.context_out(hidden)
        return torch.cat([self._node_scores(h, head, nodes), head[:, -1:]], dim=1), self.value_out(hidden)[:, 0]

    def forward(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor,
                actions: Optional[torch.Tensor] = None, with_value: bool = False):
        """nodes (B, N, F) float, valid (B, N) bool, globals_ (B, G) → scores (B, N + 1), STOP last.

        Padded nodes get the score s, finite but meaningless: mask them (:func:`masked_argmax`).
        With ``actions`` → :meth:`action_scores`; with ``with_value`` → :meth:`scores_and_value`
        (so that a learner's whole training pass goes through ``forward``, as
        DistributedDataParallel needs).
        """
        if actions is not None:
            return self.action_scores(nodes, valid, globals_, actions)
        if with_value:
            return self.scores_and_value(nodes, valid, globals_)
        h, head = self.embed(nodes, valid, globals_)
        return torch.cat([self._node_scores(h, head, nodes), head[:, -1:]], dim=1)

    def action_scores(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor,
                      actions: torch.Tensor) -> torch.Tensor:
        """Score (B,) of one action per graph, ``actions`` (B,) int64 columns of :meth:`forward` (STOP = N).

        Equals ``forward(...).gather(1, actions[:, None])[:, 0]`` but scores only the chosen nodes,
        which spares an update a pass over all node embeddings and its backward.
        """
        h, head = self.embed(nodes, valid, globals_)
        stop = actions == h.shape[1]
        rows, columns = torch.arange(len(h), device=h.device), actions.masked_fill(stop, 0)
        node_scores = self.with_prior((h[rows, columns] * head[:, :-2]).sum(dim=-1) / math.sqrt(self.hidden)
                                      + head[:, -2], nodes[rows, columns])
        return torch.where(stop, head[:, -1], node_scores)


def masked_argmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the largest score among the valid actions: scores (..., A), mask (..., A) bool → (...) int64.

    Ties go to the lowest index. Every row needs a valid action (STOP always is one).
    """
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("an action mask has no valid action; STOP must always be valid")
    return scores.masked_fill(~mask, -math.inf).argmax(dim=-1)


def observation_tensors(nodes: np.ndarray, valid: np.ndarray, globals_: np.ndarray, device: str) -> tuple:
    """Stacked observations (B, M, F), (B, M), (B, G) → network inputs cut to the batch's widest graph.

    Returns ``(nodes, valid, globals_)`` tensors and that width W (1 ≤ W ≤ M): the network's output
    then has W + 1 columns, STOP being column W (see :func:`network_actions`).
    """
    used = np.flatnonzero(valid.any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return ((torch.as_tensor(nodes[:, :width], device=device), torch.as_tensor(valid[:, :width], device=device),
             torch.as_tensor(globals_, device=device)), width)


def stack_observations(observations, device: str) -> tuple:
    """A list of observation dicts → (network inputs, width), as :func:`observation_tensors`."""
    stacked = [np.stack([obs[key] for obs in observations]) for key in ("nodes", "valid", "globals")]
    return observation_tensors(stacked[0], stacked[1].astype(bool), stacked[2], device)


def network_actions(actions: np.ndarray, width: int, max_nodes: int) -> np.ndarray:
    """Env actions (STOP = M) → output columns of a network run on width W (STOP = W)."""
    return np.where(actions == max_nodes, width, actions)


def env_actions(columns: np.ndarray, width: int, max_nodes: int) -> np.ndarray:
    """Output columns of a network run on width W (STOP = W) → env actions (STOP = M)."""
    return np.where(columns == width, max_nodes, columns)


def network_masks(masks: np.ndarray, width: int) -> np.ndarray:
    """Env action masks (B, M + 1) → masks of the W + 1 output columns (nodes beyond W are padding)."""
    return np.concatenate([masks[:, :width], masks[:, -1:]], axis=1)
