"""Double DQN over node sets: the agent that edits a prompt set by toggling graph nodes.

One file, read top to bottom (CleanRL style): the Q-network, its fast greedy policy, the replay
buffer, the agent's update rule, the training loop, and policy checkpoints. Every hyperparameter
is a field of :class:`gpoa.config.DQNConfig`.

Environment contract (Gymnasium API; :mod:`gpoa.env` follows it, and so may any other env):

- observation: dict ``nodes`` (M, F) float32 per-node features, zero-padded; ``valid`` (M,) int8,
  1 for real nodes; ``globals`` (G,) float32. M = ``max_nodes``; F and G are fixed per env and
  read from ``env.observation_space``.
- action: ``Discrete(M + 1)``; a < M toggles node a, a = M is STOP (terminates the episode).
  ``env.action_masks()`` → (M + 1,) bool, the valid actions; STOP is always valid.

Logged quantities, passed to ``callback(step, logs)`` of :func:`train` (``step`` counts env
transitions): at every episode end ``charts/episodic_return``, ``charts/episode_length``,
``charts/epsilon`` and ``charts/<key>`` for each number in the episode's final ``info``; every
``LOG_EVERY`` gradient steps ``losses/td_loss``, ``losses/q_values``, ``charts/epsilon`` and
``charts/SPS`` (env transitions per second).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

from gpoa.config import DQNConfig
from gpoa.errors import UsageError
from gpoa.io import atomic_write_bytes
from gpoa.kernels import node_set_q

#: Gradient steps between two ``losses/*`` reports to the callback.
LOG_EVERY = 100
#: Tag of a policy file written by :func:`save_policy`.
POLICY_FORMAT = "gpoa-node-set-q-network/1"


# ----- Q-network -------------------------------------------------------------------------------
class NodeSetQNetwork(nn.Module):
    """Q-values of toggling each node, and of STOP, for a graph with any number of nodes.

    Permutation-equivariant over nodes (permuting the nodes permutes their Q-values and leaves
    Q_STOP unchanged) and blind to padding (padded nodes enter no pooled quantity). With
    H = ``hidden``:

    1. φ, shared by all nodes: h_i = ReLU(W [x_i, 1]) (H). The 1 is the node's validity flag, so
       the last column of W is φ's bias and a padded node, whose input is all zero, embeds to
       exactly 0: it adds nothing to the sum, nor (h ≥ 0) to the max, with no mask to apply. With
       ``node_layers=2`` a second bias-free layer follows, h_i ← ReLU(W₂ h_i) (0 stays 0);
    2. graph context c = [mean of h over valid nodes, max of h, ReLU(W_g globals + b_g)] (3H);
    3. one MLP on the context, 3H → H → H + 2, gives a query q (H), a node offset s and Q_STOP (ρ);
    4. ψ: Q_i = ⟨h_i, q⟩ / √H + s, the bilinear node-context score of attention decoders.

    φ is the only per-node matrix product (N·F·H multiply-adds); the rest of the per-node work is
    O(N·H). An MLP ψ on [h_i, c], or a message-passing round h_i ← h_i + MLP([h_i, c]), would add
    N·H² per node layer: at N = 434, H = 128 that alone is more than the whole greedy step budget.
    """

    def __init__(self, node_dim: int, global_dim: int, hidden: int = 128, node_layers: int = 1):
        super().__init__()
        if node_layers not in (1, 2):
            raise ValueError(f"node_layers must be 1 or 2, got {node_layers}")
        self.node_dim, self.global_dim, self.hidden, self.node_layers = node_dim, global_dim, hidden, node_layers
        self.node_encoder = nn.Linear(node_dim + 1, hidden, bias=False)
        # optional second bias-free layer of φ: a padded node still embeds to exactly 0
        self.node_encoder2 = nn.Linear(hidden, hidden, bias=False) if node_layers == 2 else None
        self.global_encoder = nn.Sequential(nn.Linear(global_dim, hidden), nn.ReLU())
        self.context_head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden + 2))

    @property
    def architecture(self) -> dict:
        """The constructor arguments: ``NodeSetQNetwork(**net.architecture)`` rebuilds the network."""
        return {"node_dim": self.node_dim, "global_dim": self.global_dim, "hidden": self.hidden,
                "node_layers": self.node_layers}

    def embed(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor) -> tuple:
        """nodes (B, N, F), valid (B, N) bool, globals_ (B, G) → h (B, N, H), head (B, H + 2).

        ``h`` is 0 on padded nodes; ``head`` is [q, s, Q_STOP] of the module docstring.
        """
        flag = valid.unsqueeze(-1).to(nodes.dtype)
        h = torch.relu(self.node_encoder(torch.cat([nodes * flag, flag], dim=-1)))
        if self.node_encoder2 is not None:
            h = torch.relu(self.node_encoder2(h))
        mean = h.sum(dim=1) / flag.sum(dim=1).clamp(min=1.0)
        context = torch.cat([mean, h.amax(dim=1), self.global_encoder(globals_)], dim=-1)
        return h, self.context_head(context)

    def forward(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        """nodes (B, N, F) float, valid (B, N) bool, globals_ (B, G) → Q (B, N + 1), STOP last.

        Padded nodes get Q = s, a finite but meaningless value: mask them (:func:`masked_argmax`).
        """
        h, head = self.embed(nodes, valid, globals_)
        node_q = torch.einsum("bnh,bh->bn", h, head[:, :-2]) / math.sqrt(self.hidden) + head[:, -2:-1]
        return torch.cat([node_q, head[:, -1:]], dim=1)

    def action_q(self, nodes: torch.Tensor, valid: torch.Tensor, globals_: torch.Tensor,
                 actions: torch.Tensor) -> torch.Tensor:
        """Q (B,) of one action per graph, ``actions`` (B,) int64 columns of :meth:`forward` (STOP = N).

        Equals ``forward(...).gather(1, actions[:, None])[:, 0]`` but scores only the chosen nodes,
        which spares the DQN update a pass over all node embeddings and its backward.
        """
        h, head = self.embed(nodes, valid, globals_)
        stop = actions == h.shape[1]
        chosen = h[torch.arange(len(h), device=h.device), actions.masked_fill(stop, 0)]
        node_q = (chosen * head[:, :-2]).sum(dim=-1) / math.sqrt(self.hidden) + head[:, -2]
        return torch.where(stop, head[:, -1], node_q)


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the largest Q among the valid actions: q (..., A), mask (..., A) bool → (...) int64.

    Ties go to the lowest index. Every row needs a valid action (STOP always is one).
    """
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("an action mask has no valid action; STOP must always be valid")
    return q.masked_fill(~mask, -math.inf).argmax(dim=-1)


class GreedyPolicy:
    """ε = 0 policy for one observation at a time, on numpy copies of a network's weights.

    Computes :meth:`NodeSetQNetwork.forward` for a single observation (equal up to float32
    rounding) without autograd, module dispatch or padding: only the valid nodes are touched, and
    when they come first (as the envs pad) they are read in place. The pass itself is compiled
    (:func:`gpoa.kernels.node_set_q`: one matrix product per node layer, ReLU fused with the mean
    and max pooling). Later changes to the network are not seen: build a new policy after training.
    """

    def __init__(self, network: NodeSetQNetwork):
        def numpy(tensor: torch.Tensor) -> np.ndarray:
            return np.array(tensor.detach().cpu().numpy(), dtype=np.float32, order="C")  # a copy

        head_in, _, head_out = network.context_head
        self.architecture = network.architecture
        node_weight = numpy(network.node_encoder.weight)  # (H, F + 1), the last column for the flag 1
        self.node_weight = np.ascontiguousarray(node_weight[:, :-1])  # (H, F)
        self.node_bias = np.ascontiguousarray(node_weight[:, -1])
        self.node_weight2 = (np.zeros((0, 0), np.float32) if network.node_encoder2 is None
                             else numpy(network.node_encoder2.weight))
        self.global_weight = numpy(network.global_encoder[0].weight.T)
        self.global_bias = numpy(network.global_encoder[0].bias)
        self.head_weight1, self.head_bias1 = numpy(head_in.weight.T), numpy(head_in.bias)
        self.head_weight2, self.head_bias2 = numpy(head_out.weight.T), numpy(head_out.bias)
        # fold the 1/√H of the node score into the query outputs
        scale = np.float32(1.0 / math.sqrt(network.hidden))
        self.head_weight2[:, :-2] *= scale
        self.head_bias2[:-2] *= scale

    def q_values(self, obs: dict) -> np.ndarray:
        """(M + 1,) float32 Q-values of one observation (STOP last); padded nodes get -inf."""
        nodes, valid = obs["nodes"], obs["valid"]
        count = int(np.count_nonzero(valid))
        q = np.full(len(nodes) + 1, -np.inf, dtype=np.float32)
        if valid[:count].all():  # the real nodes come first (as the envs pad): read them in place
            q[-1] = self._q(np.ascontiguousarray(nodes[:count], dtype=np.float32), obs["globals"], q[:count])
        else:
            index = np.flatnonzero(valid)
            node_q = np.empty(count, dtype=np.float32)
            q[-1] = self._q(np.ascontiguousarray(nodes[index], dtype=np.float32), obs["globals"], node_q)
            q[index] = node_q
        return q

    def _q(self, nodes: np.ndarray, globals_: np.ndarray, out: np.ndarray) -> float:
        return node_set_q(nodes, self.node_weight, self.node_bias, self.node_weight2,
                          np.asarray(globals_, dtype=np.float32), self.global_weight, self.global_bias,
                          self.head_weight1, self.head_bias1, self.head_weight2, self.head_bias2, out)

    def __call__(self, obs: dict, action_mask: Optional[np.ndarray] = None) -> int:
        """The greedy action of one observation; without a mask every real node and STOP are valid."""
        q = self.q_values(obs)
        if action_mask is not None:
            q[~np.asarray(action_mask, dtype=bool)] = -np.inf
        return int(np.argmax(q))


# ----- replay buffer ---------------------------------------------------------------------------
class ReplayBuffer:
    """Ring buffer of the last ``capacity`` transitions, as numpy arrays.

    Per transition: observation (nodes (M, F), valid (M,), globals (G,)), action, reward, next
    observation, next action mask (M + 1,) and done, which means *terminated* only: a truncated
    episode still bootstraps from its next observation. ``np.zeros`` commits memory as slots are
    written, about 2·M·(4F + 1) bytes per transition (79 KB for M = 512, F = 19).
    """

    def __init__(self, capacity: int, max_nodes: int, node_dim: int, global_dim: int):
        self.capacity, self.max_nodes = capacity, max_nodes
        self.size = self.position = 0
        self.nodes = np.zeros((capacity, max_nodes, node_dim), dtype=np.float32)
        self.valid = np.zeros((capacity, max_nodes), dtype=bool)
        self.globals = np.zeros((capacity, global_dim), dtype=np.float32)
        self.next_nodes = np.zeros_like(self.nodes)
        self.next_valid = np.zeros_like(self.valid)
        self.next_globals = np.zeros_like(self.globals)
        self.next_masks = np.zeros((capacity, max_nodes + 1), dtype=bool)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: dict, action: int, reward: float, next_obs: dict, next_mask: np.ndarray,
            terminated: bool) -> None:
        i = self.position
        self.nodes[i], self.valid[i], self.globals[i] = obs["nodes"], obs["valid"], obs["globals"]
        self.next_nodes[i], self.next_valid[i] = next_obs["nodes"], next_obs["valid"]
        self.next_globals[i], self.next_masks[i] = next_obs["globals"], next_mask
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        """``batch_size`` transitions drawn uniformly with replacement: dict of arrays named as the fields."""
        rows = rng.integers(0, self.size, size=batch_size)
        names = ("nodes", "valid", "globals", "next_nodes", "next_valid", "next_globals", "next_masks",
                 "actions", "rewards", "dones")
        return {name: getattr(self, name)[rows] for name in names}


def observation_tensors(nodes: np.ndarray, valid: np.ndarray, globals_: np.ndarray, device: str) -> tuple:
    """Stacked observations (B, M, F), (B, M), (B, G) → network inputs cut to the batch's widest graph.

    Returns ``(nodes, valid, globals_)`` tensors and that width W (1 ≤ W ≤ M): the network's output
    then has W + 1 columns, STOP being column W (see :func:`network_actions`).
    """
    used = np.flatnonzero(valid.any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return ((torch.as_tensor(nodes[:, :width], device=device), torch.as_tensor(valid[:, :width], device=device),
             torch.as_tensor(globals_, device=device)), width)


def network_actions(actions: np.ndarray, width: int, max_nodes: int) -> np.ndarray:
    """Env actions (STOP = M) → output columns of a network run on width W (STOP = W)."""
    return np.where(actions == max_nodes, width, actions)


def network_masks(masks: np.ndarray, width: int) -> np.ndarray:
    """Env action masks (B, M + 1) → masks of the W + 1 output columns (nodes beyond W are padding)."""
    return np.concatenate([masks[:, :width], masks[:, -1:]], axis=1)


# ----- agent -----------------------------------------------------------------------------------
def linear_schedule(start: float, end: float, duration: float, step: int) -> float:
    """``start`` → ``end`` linearly over ``duration`` steps, then ``end``."""
    fraction = min(step / max(duration, 1.0), 1.0)
    return start + fraction * (end - start)


class DQNAgent:
    """Double DQN on a :class:`NodeSetQNetwork`: ε-greedy acting, replay, and the update rule.

    ``global_step`` counts env transitions collected and ``gradient_steps`` the updates done; both
    survive :meth:`state_dict`, so :func:`train` resumes where a checkpoint stopped (the replay
    buffer is not saved: updates restart from the transitions collected after the resume).
    """

    def __init__(self, node_dim: int, global_dim: int, max_nodes: int, cfg: DQNConfig, seed: int = 0,
                 device: str = "cpu"):
        torch.manual_seed(seed)  # the networks' initial weights; replay and exploration use self.rng
        self.cfg, self.max_nodes, self.device = cfg, max_nodes, device
        self.q_network = NodeSetQNetwork(node_dim, global_dim, cfg.hidden, cfg.node_layers).to(device)
        self.target_network = NodeSetQNetwork(node_dim, global_dim, cfg.hidden, cfg.node_layers).to(device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = optim.Adam(self.q_network.parameters(), lr=cfg.learning_rate)
        self.buffer = ReplayBuffer(cfg.buffer_size, max_nodes, node_dim, global_dim)
        self.rng = np.random.default_rng(seed)
        self.global_step = 0
        self.gradient_steps = 0

    @classmethod
    def for_env(cls, env, cfg: DQNConfig, seed: int = 0, device: str = "cpu") -> DQNAgent:
        """An agent sized from ``env.observation_space`` (M, F, G) and checked against its action space."""
        max_nodes, node_dim = env.observation_space["nodes"].shape
        (global_dim,) = env.observation_space["globals"].shape
        if env.action_space.n != max_nodes + 1:
            raise ValueError(f"action space has {env.action_space.n} actions; expected max_nodes + 1 = "
                             f"{max_nodes + 1} (one toggle per node slot, then STOP)")
        return cls(node_dim, global_dim, max_nodes, cfg, seed=seed, device=device)

    def act(self, observations: Sequence[dict], masks: np.ndarray, epsilon: float) -> np.ndarray:
        """ε-greedy actions (K,) int64 for K observations and their action masks (K, M + 1) bool."""
        explore = self.rng.random(len(observations)) < epsilon
        actions = np.zeros(len(observations), dtype=np.int64)
        for k in np.flatnonzero(explore):  # a random draw only for the environments that explore
            actions[k] = self.rng.choice(np.flatnonzero(masks[k]))
        if explore.all():
            return actions
        stacked = [np.stack([obs[key] for obs in observations]) for key in ("nodes", "valid", "globals")]
        inputs, width = observation_tensors(stacked[0], stacked[1].astype(bool), stacked[2], self.device)
        with torch.no_grad():
            q = self.q_network(*inputs)
        greedy = masked_argmax(q, torch.as_tensor(network_masks(masks, width), device=self.device)).cpu().numpy()
        greedy = np.where(greedy == width, self.max_nodes, greedy)
        return np.where(explore, actions, greedy)

    def update(self) -> dict:
        """One gradient step on a replayed batch; returns ``losses/td_loss`` and ``losses/q_values``."""
        cfg, device = self.cfg, self.device
        batch = self.buffer.sample(cfg.batch_size, self.rng)
        inputs, width = observation_tensors(batch["nodes"], batch["valid"], batch["globals"], device)
        next_inputs, next_width = observation_tensors(batch["next_nodes"], batch["next_valid"],
                                                      batch["next_globals"], device)
        next_masks = torch.as_tensor(network_masks(batch["next_masks"], next_width), device=device)
        actions = torch.as_tensor(network_actions(batch["actions"], width, self.max_nodes), device=device)
        rewards = torch.as_tensor(batch["rewards"], device=device)
        dones = torch.as_tensor(batch["dones"], device=device)
        with torch.no_grad():
            # Double DQN: the online network picks the next action, the target network rates it
            next_actions = masked_argmax(self.q_network(*next_inputs), next_masks)
            next_q = self.target_network.action_q(*next_inputs, next_actions)
            target = rewards + cfg.gamma * (1.0 - dones) * next_q
        q = self.q_network.action_q(*inputs, actions)
        loss = F.smooth_l1_loss(q, target)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_network.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        if self.gradient_steps % cfg.target_update == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())
        return {"losses/td_loss": loss.item(), "losses/q_values": q.mean().item()}

    def state_dict(self) -> dict:
        """Networks, optimizer and step counters: plain tensors and numbers (``weights_only`` loadable)."""
        return {"architecture": self.q_network.architecture, "max_nodes": self.max_nodes,
                "q_network": self.q_network.state_dict(), "target_network": self.target_network.state_dict(),
                "optimizer": self.optimizer.state_dict(), "global_step": self.global_step,
                "gradient_steps": self.gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        expected = (self.q_network.architecture, self.max_nodes)
        if (state.get("architecture"), state.get("max_nodes")) != expected:
            raise ValueError(f"agent state is for network {state.get('architecture')} with max_nodes "
                             f"{state.get('max_nodes')}, this agent has {expected[0]} with max_nodes {expected[1]}")
        self.q_network.load_state_dict(state["q_network"])
        self.target_network.load_state_dict(state["target_network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step, self.gradient_steps = int(state["global_step"]), int(state["gradient_steps"])


# ----- training loop ---------------------------------------------------------------------------
def step_envs(envs: Sequence, actions: np.ndarray) -> list:
    """Default ``step_fn`` of :func:`train`: step each env in turn → list of (obs, reward, terminated, truncated, info)."""
    return [env.step(int(action)) for env, action in zip(envs, actions)]


def copy_observation(obs: dict) -> dict:
    """An observation that stays valid after the env steps again (envs may reuse their arrays)."""
    return {key: np.array(value) for key, value in obs.items()}


def info_logs(info: dict) -> dict:
    """Every number (or flag) of an episode's final ``info`` as ``charts/<key>``."""
    return {f"charts/{key}": float(value) for key, value in info.items()
            if isinstance(value, (int, float, bool, np.number, np.bool_))}


def train(envs: Sequence, cfg: DQNConfig, total_steps: int, seed: int, step_fn: Optional[Callable] = None,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, agent: Optional[DQNAgent] = None,
          device: str = "cpu") -> DQNAgent:
    """Train (or, given ``agent``, continue training) until ``total_steps`` env transitions in all.

    ``envs`` (K of them, same spaces) are stepped together by ``step_fn(envs, actions)``, e.g. a
    helper that batches their segmenter decodes; each iteration adds K transitions. One gradient
    step follows every ``cfg.train_frequency`` transitions once ``cfg.learning_starts`` have been
    collected. ε decays over ``cfg.epsilon_fraction * total_steps``. ``callback(step, logs)``
    receives the names of the module docstring and may return True to stop after the iteration.
    The same ``seed`` (same envs, same K) gives the same weights on CPU.
    """
    step_fn = step_fn or step_envs
    agent = agent or DQNAgent.for_env(envs[0], cfg, seed=seed, device=device)
    report = callback or (lambda step, logs: None)
    observations = [copy_observation(env.reset(seed=seed + agent.global_step + k)[0]) for k, env in enumerate(envs)]
    masks = np.stack([env.action_masks() for env in envs])
    returns, lengths = np.zeros(len(envs)), np.zeros(len(envs), dtype=np.int64)
    start_time, start_step, stop = time.perf_counter(), agent.global_step, False
    while agent.global_step < total_steps and not stop:
        epsilon = linear_schedule(cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_fraction * total_steps,
                                  agent.global_step)
        actions = agent.act(observations, masks, epsilon)
        results = step_fn(envs, actions)
        agent.global_step += len(envs)
        for k, (next_obs, reward, terminated, truncated, info) in enumerate(results):
            next_mask = envs[k].action_masks()
            agent.buffer.add(observations[k], actions[k], reward, next_obs, next_mask, terminated)
            returns[k] += reward
            lengths[k] += 1
            if terminated or truncated:
                logs = {"charts/episodic_return": float(returns[k]), "charts/episode_length": int(lengths[k]),
                        "charts/epsilon": epsilon, **info_logs(info)}
                stop = bool(report(agent.global_step, logs)) or stop
                returns[k], lengths[k] = 0.0, 0
                next_obs, _ = envs[k].reset()
                next_mask = envs[k].action_masks()
            observations[k], masks[k] = copy_observation(next_obs), next_mask
        if agent.global_step < cfg.learning_starts or len(agent.buffer) < cfg.batch_size:
            continue
        due = agent.global_step // cfg.train_frequency - (agent.global_step - len(envs)) // cfg.train_frequency
        for _ in range(due):
            losses = agent.update()
            if agent.gradient_steps % LOG_EVERY == 0:
                sps = (agent.global_step - start_step) / max(time.perf_counter() - start_time, 1e-9)
                logs = {**losses, "charts/epsilon": epsilon, "charts/SPS": sps}
                stop = bool(report(agent.global_step, logs)) or stop
    return agent


def run_greedy(policy, env, options: Optional[dict] = None, seed: Optional[int] = None) -> tuple:
    """One ε = 0 episode with action masks → (actions list, final info, total reward).

    ``policy`` is a :class:`GreedyPolicy`, a :class:`NodeSetQNetwork` or a :class:`DQNAgent`.
    """
    if isinstance(policy, DQNAgent):
        policy = policy.q_network
    if isinstance(policy, NodeSetQNetwork):
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


# ----- policy checkpoints ----------------------------------------------------------------------
def _plain(value, where: str):
    """``value`` with numpy numbers/arrays and paths turned into what ``weights_only`` loading accepts."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}; policy metadata must be numbers, strings, lists, "
                    "dicts with string keys or tensors")


def save_policy(path: Union[str, Path], agent_or_network: Union[DQNAgent, NodeSetQNetwork],
                extra: Optional[dict] = None) -> None:
    """Write the Q-network (architecture + weights) and ``extra`` metadata to ``path`` atomically."""
    network = agent_or_network.q_network if isinstance(agent_or_network, DQNAgent) else agent_or_network
    payload = {"format": POLICY_FORMAT, "architecture": network.architecture,
               "state_dict": {name: value.detach().cpu() for name, value in network.state_dict().items()},
               "extra": _plain(extra or {}, "extra")}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_policy(path: Union[str, Path], device: str = "cpu") -> tuple:
    """Rebuild a policy written by :func:`save_policy` → (network in eval mode, extra metadata dict).

    Loads with ``weights_only=True``: the file cannot run code. Raises
    :class:`~gpoa.errors.UsageError` naming the file when it is missing, unreadable or not a policy.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"policy checkpoint '{path}' does not exist; train one with train_GPOA.py or point "
                         "optimize.policy (--policy) at an existing best.pt or last.pt")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # zip, pickle and weights-only refusals all mean the same to a user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"policy checkpoint '{path}' cannot be read ({reason}); the file is truncated, corrupt "
                         "or not written by GPOA: retrain with train_GPOA.py or copy the file again") from None
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != POLICY_FORMAT:
        raise UsageError(f"'{path}' is not a GPOA policy checkpoint (format {found!r}, expected "
                         f"{POLICY_FORMAT!r}); pass the best.pt or last.pt that train_GPOA.py writes")
    try:
        network = NodeSetQNetwork(**payload["architecture"])
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise UsageError(f"policy checkpoint '{path}' is damaged ({reason}); retrain with train_GPOA.py") from None
    return network.to(device).eval(), payload.get("extra", {})
