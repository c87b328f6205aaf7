"""Double DQN over node sets: the agent that edits a prompt set by toggling graph nodes.

One file, read top to bottom (CleanRL style): the replay buffer, the agent's acting and update
rule, and the training loop. The network is :class:`~gpoa.agents.network.NodeSetNetwork`, whose
scores are read as Q-values; every hyperparameter is a field of :class:`gpoa.config.DQNConfig`.

Environment contract (Gymnasium API; :mod:`gpoa.envs` follows it, and so may any other env):

- observation: dict ``nodes`` (M, F) float32 per-node features, zero-padded; ``valid`` (M,) int8,
  1 for real nodes; ``globals`` (G,) float32. M = ``max_nodes``; F and G are fixed per env and
  read from ``observation_space``.
- action: ``Discrete(M + 1)``; a < M toggles node a, a = M is STOP (terminates the episode).
  ``action_masks()`` → (M + 1,) bool, the valid actions; STOP is always valid.
- :func:`train` steps K environments through a vectorised environment
  (:class:`~gpoa.envs.vec_env.VecPromptEnv`, or :class:`~gpoa.envs.vec_env.SerialVecEnv` over any
  such envs) and resets an environment itself when its episode ends.

Logged quantities, passed to ``callback(step, logs)`` (``step`` counts env transitions): at every
episode end ``charts/episodic_return``, ``charts/episode_length``, ``charts/epsilon`` and
``charts/<key>`` for each number in the episode's final ``info``; every ``LOG_EVERY`` gradient
steps ``losses/td_loss``, ``losses/q_values``, ``charts/epsilon`` and ``charts/SPS`` (env
transitions per second).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

from gpoa.agents.network import (
    NodeSetNetwork,
    env_actions,
    masked_argmax,
    network_actions,
    network_masks,
    observation_tensors,
    stack_observations,
)
from gpoa.config import DQNConfig
from gpoa.distributed import data_parallel

#: Gradient steps between two ``losses/*`` reports to the callback.
LOG_EVERY = 100


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


# ----- agent -----------------------------------------------------------------------------------
def linear_schedule(start: float, end: float, duration: float, step: int) -> float:
    """``start`` → ``end`` linearly over ``duration`` steps, then ``end``."""
    fraction = min(step / max(duration, 1.0), 1.0)
    return start + fraction * (end - start)


class DQNAgent:
    """Double DQN on a :class:`NodeSetNetwork`: ε-greedy acting, replay, and the update rule.

    ``global_step`` counts env transitions collected and ``gradient_steps`` the updates done; both
    survive :meth:`state_dict`, so :func:`train` resumes where a checkpoint stopped (the replay
    buffer is not saved: updates restart from the transitions collected after the resume).
    """

    learner = "dqn"

    def __init__(self, node_dim: int, global_dim: int, max_nodes: int, cfg: DQNConfig, seed: int = 0,
                 device: str = "cpu", network_options: Optional[dict] = None):
        torch.manual_seed(seed)  # the networks' initial weights; replay and exploration use self.rng
        self.cfg, self.max_nodes, self.device = cfg, max_nodes, device
        options = network_options or {}  # NodeSetNetwork's prior (gpoa.agents.network_options)
        self.q_network = NodeSetNetwork(node_dim, global_dim, cfg.hidden, cfg.node_layers, **options).to(device)
        self.target_network = NodeSetNetwork(node_dim, global_dim, cfg.hidden, cfg.node_layers, **options).to(device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = optim.Adam(self.q_network.parameters(), lr=cfg.learning_rate)
        self.buffer = ReplayBuffer(cfg.buffer_size, max_nodes, node_dim, global_dim)
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.trainer = self.q_network  # what updates run through: the network, or its DDP wrapper
        self.global_step = 0
        self.gradient_steps = 0

    def data_parallel(self, rank: int) -> None:
        """Train with several processes (:mod:`gpoa.distributed`): gradients averaged over the
        ranks, exploration and replay draws of this rank's own."""
        self.trainer = data_parallel(self.q_network)
        self.rng = np.random.default_rng([self.seed, rank])

    @property
    def network(self) -> NodeSetNetwork:
        """The network a policy file keeps (the online Q-network)."""
        return self.q_network

    @classmethod
    def for_env(cls, env, cfg: DQNConfig, seed: int = 0, device: str = "cpu",
                network_options: Optional[dict] = None) -> DQNAgent:
        """An agent sized from ``env.observation_space`` (M, F, G) and checked against its action space."""
        max_nodes, node_dim = env.observation_space["nodes"].shape
        (global_dim,) = env.observation_space["globals"].shape
        if env.action_space.n != max_nodes + 1:
            raise ValueError(f"action space has {env.action_space.n} actions; expected max_nodes + 1 = "
                             f"{max_nodes + 1} (one toggle per node slot, then STOP)")
        return cls(node_dim, global_dim, max_nodes, cfg, seed=seed, device=device, network_options=network_options)

    def act(self, observations: Sequence[dict], masks: np.ndarray, epsilon: float) -> np.ndarray:
        """ε-greedy actions (K,) int64 for K observations and their action masks (K, M + 1) bool."""
        explore = self.rng.random(len(observations)) < epsilon
        actions = np.zeros(len(observations), dtype=np.int64)
        for k in np.flatnonzero(explore):  # a random draw only for the environments that explore
            actions[k] = self.rng.choice(np.flatnonzero(masks[k]))
        if explore.all():
            return actions
        inputs, width = stack_observations(observations, self.device)
        with torch.no_grad():
            q = self.q_network(*inputs)
        greedy = masked_argmax(q, torch.as_tensor(network_masks(masks, width), device=self.device)).cpu().numpy()
        return np.where(explore, actions, env_actions(greedy, width, self.max_nodes))

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
            next_q = self.target_network.action_scores(*next_inputs, next_actions)
            target = rewards + cfg.gamma * (1.0 - dones) * next_q
        q = self.trainer(*inputs, actions=actions)
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
def copy_observation(obs: dict) -> dict:
    """An observation that stays valid after the env steps again (envs may reuse their arrays)."""
    return {key: np.array(value) for key, value in obs.items()}


def info_logs(info: dict) -> dict:
    """Every number (or flag) of an episode's final ``info`` as ``charts/<key>``."""
    return {f"charts/{key}": float(value) for key, value in info.items()
            if isinstance(value, (int, float, bool, np.number, np.bool_))}


def train(vec_env, cfg: DQNConfig, total_steps: int, seed: int,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, agent: Optional[DQNAgent] = None,
          device: str = "cpu") -> DQNAgent:
    """Train (or, given ``agent``, continue training) until ``total_steps`` env transitions in all.

    ``vec_env`` steps K environments together (module docstring); each iteration adds K
    transitions. One gradient step follows every ``cfg.train_frequency`` transitions once
    ``cfg.learning_starts`` have been collected. ε decays over ``cfg.epsilon_fraction *
    total_steps``. ``callback(step, logs)`` receives the names of the module docstring and may
    return True to stop after the iteration. The same ``seed`` (same envs, same K) gives the same
    weights on CPU.
    """
    agent = agent or DQNAgent.for_env(vec_env, cfg, seed=seed, device=device)
    report = callback or (lambda step, logs: None)
    observations = [copy_observation(obs) for obs in vec_env.reset(seed=seed + agent.global_step)]
    masks = vec_env.action_masks()
    k_envs = vec_env.num_envs
    returns, lengths = np.zeros(k_envs), np.zeros(k_envs, dtype=np.int64)
    start_time, start_step, stop = time.perf_counter(), agent.global_step, False
    while agent.global_step < total_steps and not stop:
        epsilon = linear_schedule(cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_fraction * total_steps,
                                  agent.global_step)
        actions = agent.act(observations, masks, epsilon)
        results = vec_env.step(actions)
        agent.global_step += k_envs
        next_masks = vec_env.action_masks()
        for k, (next_obs, reward, terminated, truncated, info) in enumerate(results):
            agent.buffer.add(observations[k], actions[k], reward, next_obs, next_masks[k], terminated)
            returns[k] += reward
            lengths[k] += 1
            if terminated or truncated:
                logs = {"charts/episodic_return": float(returns[k]), "charts/episode_length": int(lengths[k]),
                        "charts/epsilon": epsilon, **info_logs(info)}
                stop = bool(report(agent.global_step, logs)) or stop
                returns[k], lengths[k] = 0.0, 0
                next_obs = vec_env.reset_one(k)
                next_masks[k] = vec_env[k].action_masks()
            observations[k] = copy_observation(next_obs)
        masks = next_masks
        if agent.global_step < cfg.learning_starts or len(agent.buffer) < cfg.batch_size:
            continue
        due = agent.global_step // cfg.train_frequency - (agent.global_step - k_envs) // cfg.train_frequency
        for _ in range(due):
            losses = agent.update()
            if agent.gradient_steps % LOG_EVERY == 0:
                sps = (agent.global_step - start_step) / max(time.perf_counter() - start_time, 1e-9)
                logs = {**losses, "charts/epsilon": epsilon, "charts/SPS": sps}
                stop = bool(report(agent.global_step, logs)) or stop
    return agent
