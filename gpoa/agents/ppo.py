"""PPO with invalid-action masking over node sets (AlignSAM's learner), CleanRL style.

One file, read top to bottom: the rollout storage, generalised advantage estimation, the agent
(sampling and the clipped update) and the training loop. The network is
:class:`~gpoa.agents.network.NodeSetNetwork` with a value head; its node scores (and STOP's) are
the policy's logits. Every hyperparameter is a field of :class:`gpoa.config.PPOConfig`.

Invalid actions (padding, toggles the environment's ``action_masks()`` refuses) get the logit
``MASKED_LOGIT``, a large finite negative: their probability is 0, the entropy runs over the valid
actions only, and no NaN can appear. The mask of every transition is stored with it and applied
again in every update epoch; STOP is always valid. Rollouts come from a vectorised environment
(:class:`~gpoa.envs.vec_env.VecPromptEnv`, one batched decode per step), which does not reset by
itself: an episode that ends is reset here at once, and a truncated episode bootstraps from the
value of its true final observation (added to the last reward), so truncation is not mistaken for
an end of the task. Inference is deterministic: the argmax of the masked logits (the same greedy
path as DQN's, :class:`~gpoa.agents.greedy.GreedyPolicy`).

Logged (``callback(step, logs)``): at every episode end ``charts/episodic_return``,
``charts/episode_length`` and ``charts/<key>`` of the final ``info``; after every update
``losses/policy_loss``, ``losses/value_loss``, ``losses/entropy``, ``losses/approx_kl``,
``losses/clipfrac``, ``losses/explained_variance``, ``charts/learning_rate`` and ``charts/SPS``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn, optim

from gpoa.agents.dqn import copy_observation, info_logs
from gpoa.agents.network import (
    NodeSetNetwork,
    env_actions,
    network_actions,
    network_masks,
    observation_tensors,
)
from gpoa.config import PPOConfig
from gpoa.distributed import agree_min, data_parallel
from gpoa.runtime import stable_seed

#: the logit of an invalid action
MASKED_LOGIT = -1e8


def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, next_value: np.ndarray,
                gamma: float, lam: float) -> tuple:
    """Generalised advantage estimation over a rollout of T steps of K environments.

    ``rewards``, ``values``, ``dones`` (T, K): ``values[t]`` is V of the observation step t acted
    on; ``dones[t]`` is 1 when the episode ended AT step t (its reward was the last: nothing after
    it is credited to it); ``next_value`` (K,) the value of the observation after the rollout.
    Returns ``(advantages, returns)`` (T, K) float32, returns = advantages + values.
    """
    steps = len(rewards)
    advantages = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1])
    for t in reversed(range(steps)):
        continues = 1.0 - dones[t]
        following = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * continues - values[t]
        last = delta + gamma * lam * continues * last
        advantages[t] = last
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)


class RolloutStorage:
    """T steps × K environments of observations (padded to M nodes), masks, actions, log-probs,
    values, rewards and episode ends."""

    def __init__(self, steps: int, envs: int, max_nodes: int, node_dim: int, global_dim: int):
        self.nodes = np.zeros((steps, envs, max_nodes, node_dim), dtype=np.float32)
        self.valid = np.zeros((steps, envs, max_nodes), dtype=bool)
        self.globals = np.zeros((steps, envs, global_dim), dtype=np.float32)
        self.masks = np.zeros((steps, envs, max_nodes + 1), dtype=bool)
        self.actions = np.zeros((steps, envs), dtype=np.int64)
        self.logprobs = np.zeros((steps, envs), dtype=np.float32)
        self.values = np.zeros((steps, envs), dtype=np.float32)
        self.rewards = np.zeros((steps, envs), dtype=np.float32)
        self.dones = np.zeros((steps, envs), dtype=np.float32)


def masked_distribution(scores: torch.Tensor, masks: torch.Tensor) -> torch.distributions.Categorical:
    """The policy over the valid actions: scores (B, A) with every invalid action at MASKED_LOGIT."""
    return torch.distributions.Categorical(logits=scores.masked_fill(~masks, MASKED_LOGIT))


class PPOAgent:
    """The actor-critic network, its optimizer and the step counters (``state_dict`` for resuming)."""

    learner = "ppo"

    def __init__(self, node_dim: int, global_dim: int, max_nodes: int, cfg: PPOConfig, seed: int = 0,
                 device: str = "cpu", network_options: Optional[dict] = None):
        torch.manual_seed(seed)
        self.cfg, self.max_nodes, self.device = cfg, max_nodes, device
        self.network = NodeSetNetwork(node_dim, global_dim, cfg.hidden, cfg.node_layers, value_head=True,
                                      **(network_options or {})).to(device)
        self.optimizer = optim.Adam(self.network.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.seed, self.rng = seed, np.random.default_rng(seed)
        self.trainer = self.network  # what updates run through: the network, or its DDP wrapper
        self.global_step = 0
        self.updates = 0

    def data_parallel(self, rank: int) -> None:
        """Train with several processes (:mod:`gpoa.distributed`): gradients averaged over the
        ranks, action sampling and minibatch order of this rank's own."""
        self.trainer = data_parallel(self.network)
        self.generator.manual_seed(stable_seed(self.seed, "rank", rank))
        self.rng = np.random.default_rng([self.seed, rank])

    @classmethod
    def for_env(cls, env, cfg: PPOConfig, seed: int = 0, device: str = "cpu",
                network_options: Optional[dict] = None) -> PPOAgent:
        max_nodes, node_dim = env.observation_space["nodes"].shape
        (global_dim,) = env.observation_space["globals"].shape
        return cls(node_dim, global_dim, max_nodes, cfg, seed=seed, device=device, network_options=network_options)

    def _inputs(self, nodes, valid, globals_) -> tuple:
        return observation_tensors(nodes, valid, globals_, self.device)

    def act(self, observations: list, masks: np.ndarray) -> tuple:
        """Sample an action per observation → (actions (K,) env ids, log-probs (K,), values (K,))."""
        nodes = np.stack([o["nodes"] for o in observations])
        valid = np.stack([o["valid"] for o in observations]).astype(bool)
        globals_ = np.stack([o["globals"] for o in observations])
        inputs, width = self._inputs(nodes, valid, globals_)
        with torch.no_grad():
            scores, values = self.network.scores_and_value(*inputs)
            distribution = masked_distribution(scores, torch.as_tensor(network_masks(masks, width), device=self.device))
            probabilities = distribution.probs.cpu()
            columns = torch.multinomial(probabilities, 1, generator=self.generator)[:, 0]
            logprobs = distribution.log_prob(columns.to(self.device))
        return (env_actions(columns.numpy(), width, self.max_nodes), logprobs.cpu().numpy(),
                values.cpu().numpy())

    def values(self, observations: list) -> np.ndarray:
        nodes = np.stack([o["nodes"] for o in observations])
        valid = np.stack([o["valid"] for o in observations]).astype(bool)
        globals_ = np.stack([o["globals"] for o in observations])
        inputs, _ = self._inputs(nodes, valid, globals_)
        with torch.no_grad():
            return self.network.scores_and_value(*inputs)[1].cpu().numpy()

    def update(self, storage: RolloutStorage, advantages: np.ndarray, returns: np.ndarray) -> dict:
        """``update_epochs`` passes of clipped-surrogate minibatch updates over the rollout."""
        cfg = self.cfg
        flat = lambda array: array.reshape(-1, *array.shape[2:])  # noqa: E731
        nodes, valid, globals_ = flat(storage.nodes), flat(storage.valid), flat(storage.globals)
        masks, actions = flat(storage.masks), flat(storage.actions)
        old_logprobs, old_values = flat(storage.logprobs), flat(storage.values)
        advantages, returns = flat(advantages), flat(returns)
        batch = len(actions)
        minibatch = max(1, batch // cfg.num_minibatches)
        clipfracs, logs = [], {}
        for _ in range(cfg.update_epochs):
            order = self.rng.permutation(batch)
            for start in range(0, batch, minibatch):
                rows = order[start:start + minibatch]
                inputs, width = self._inputs(nodes[rows], valid[rows], globals_[rows])
                scores, new_values = self.trainer(*inputs, with_value=True)
                # the stored masks, applied again in every epoch
                distribution = masked_distribution(scores, torch.as_tensor(network_masks(masks[rows], width),
                                                                           device=self.device))
                columns = torch.as_tensor(network_actions(actions[rows], width, self.max_nodes), device=self.device)
                new_logprobs = distribution.log_prob(columns)
                entropy = distribution.entropy()
                log_ratio = new_logprobs - torch.as_tensor(old_logprobs[rows], device=self.device)
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                    clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
                advantage = torch.as_tensor(advantages[rows], device=self.device)
                if cfg.norm_adv and len(rows) > 1:
                    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
                policy_loss = torch.max(-advantage * ratio,
                                        -advantage * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                target = torch.as_tensor(returns[rows], device=self.device)
                if cfg.clip_vloss:
                    old = torch.as_tensor(old_values[rows], device=self.device)
                    clipped = old + (new_values - old).clamp(-cfg.clip_coef, cfg.clip_coef)
                    value_loss = 0.5 * torch.max((new_values - target) ** 2, (clipped - target) ** 2).mean()
                else:
                    value_loss = 0.5 * ((new_values - target) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = policy_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * value_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.network.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
            # early stop on KL: every rank stops when one does (they must run the same updates)
            if cfg.target_kl > 0 and agree_min(int(approx_kl <= cfg.target_kl)) == 0:
                break
        variance = np.var(returns)
        explained = float("nan") if variance == 0 else float(1 - np.var(returns - old_values) / variance)
        self.updates += 1
        logs.update({"losses/policy_loss": policy_loss.item(), "losses/value_loss": value_loss.item(),
                     "losses/entropy": entropy_loss.item(), "losses/approx_kl": approx_kl,
                     "losses/clipfrac": float(np.mean(clipfracs)), "losses/explained_variance": explained})
        return logs

    def state_dict(self) -> dict:
        return {"architecture": self.network.architecture, "max_nodes": self.max_nodes,
                "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "global_step": self.global_step, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("architecture"), state.get("max_nodes")) != (self.network.architecture, self.max_nodes):
            raise ValueError(f"agent state is for network {state.get('architecture')} with max_nodes "
                             f"{state.get('max_nodes')}, this agent has {self.network.architecture} with max_nodes "
                             f"{self.max_nodes}")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step, self.updates = int(state["global_step"]), int(state["updates"])


def train(vec_env, cfg: PPOConfig, total_steps: int, seed: int,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, agent: Optional[PPOAgent] = None,
          device: str = "cpu") -> PPOAgent:
    """Train (or continue) until ``total_steps`` environment transitions: rollouts of
    ``cfg.num_steps`` steps of every environment, then an update; the learning rate falls linearly
    to 0 over the updates that ``total_steps`` allows (``cfg.anneal_lr``)."""
    agent = agent or PPOAgent.for_env(vec_env, cfg, seed=seed, device=device)
    report = callback or (lambda step, logs: None)
    k_envs = vec_env.num_envs
    per_update = cfg.num_steps * k_envs
    total_updates = max(1, -(-total_steps // per_update))
    max_nodes, node_dim = vec_env.observation_space["nodes"].shape
    (global_dim,) = vec_env.observation_space["globals"].shape
    storage = RolloutStorage(cfg.num_steps, k_envs, max_nodes, node_dim, global_dim)
    observations = [copy_observation(o) for o in vec_env.reset(seed=seed + agent.global_step)]
    masks = vec_env.action_masks()
    next_done = np.zeros(k_envs, dtype=np.float32)
    returns_so_far, lengths = np.zeros(k_envs), np.zeros(k_envs, dtype=np.int64)
    start_time, start_step, stop = time.perf_counter(), agent.global_step, False
    while agent.global_step < total_steps and not stop:
        if cfg.anneal_lr:
            fraction = 1.0 - min(agent.updates, total_updates - 1) / total_updates
            for group in agent.optimizer.param_groups:
                group["lr"] = fraction * cfg.learning_rate
        for t in range(cfg.num_steps):
            storage.nodes[t] = np.stack([o["nodes"] for o in observations])
            storage.valid[t] = np.stack([o["valid"] for o in observations]).astype(bool)
            storage.globals[t] = np.stack([o["globals"] for o in observations])
            storage.masks[t] = masks
            actions, logprobs, values = agent.act(observations, masks)
            storage.actions[t], storage.logprobs[t], storage.values[t] = actions, logprobs, values
            results = vec_env.step(actions)
            agent.global_step += k_envs
            next_masks = vec_env.action_masks()
            truncated_final = {}
            for k, (next_obs, reward, terminated, truncated, info) in enumerate(results):
                storage.rewards[t, k] = reward
                returns_so_far[k] += reward
                lengths[k] += 1
                next_done[k] = float(terminated or truncated)
                if terminated or truncated:
                    if truncated and not terminated:
                        truncated_final[k] = copy_observation(next_obs)
                    logs = {"charts/episodic_return": float(returns_so_far[k]),
                            "charts/episode_length": int(lengths[k]), **info_logs(info)}
                    stop = bool(report(agent.global_step, logs)) or stop
                    returns_so_far[k], lengths[k] = 0.0, 0
                    next_obs = vec_env.reset_one(k)
                    next_masks[k] = vec_env[k].action_masks()
                observations[k] = copy_observation(next_obs)
            if truncated_final:  # bootstrap the cut-off episodes from their true final observation
                keys = sorted(truncated_final)
                storage.rewards[t, keys] += cfg.gamma * agent.values([truncated_final[k] for k in keys])
            storage.dones[t] = next_done
            masks = next_masks
        advantages, returns = compute_gae(storage.rewards, storage.values, storage.dones,
                                          agent.values(observations), cfg.gamma, cfg.gae_lambda)
        logs = agent.update(storage, advantages, returns)
        sps = (agent.global_step - start_step) / max(time.perf_counter() - start_time, 1e-9)
        logs.update({"charts/learning_rate": agent.optimizer.param_groups[0]["lr"], "charts/SPS": sps})
        stop = bool(report(agent.global_step, logs)) or stop
    return agent
