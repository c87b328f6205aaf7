"""Point Prompt Defender: an attacker that learns to spoil a good prompt set and a defender that
learns to repair it (attack for defense), both Double DQN on the same node-set network.

One file, read top to bottom. Training, as in the paper:

1. every episode starts from *ideal* prompts sampled from the truth mask (``env.start=ideal``);
   the graph's other nodes — the matching's prompts, the next-best matches (lookalikes) and
   background patches — are inactive candidates;
2. the **attacker** acts first, for T steps (T drawn uniformly from ``ppd.attack_steps``, or
   until it STOPs): each step activates one inactive candidate, rewarded by the Dice it removes
   (−ΔDice); its episode ends when it hands over;
3. the **defender** then repairs the attacked set: each step deactivates one active prompt (or,
   with ``ppd.defender_edits=toggle``, toggles any node), rewarded by the Dice it restores (+ΔDice,
   with the environment's step penalty and harm weight), until it STOPs or its
   ``env.episode_length`` steps are used;
4. both learn off-policy from their own replay buffers: every ``dqn.train_frequency`` transitions
   of a role, that role's agent takes a gradient step (so their updates alternate as their phases
   do), each with its own ε schedule over its own transitions.

The attacker's and the defender's phases of one episode run in the same environment, whose edit
mode is switched between them (:meth:`gpoa.envs.prompt_env.PromptEnv.set_edits`; the defender may
undo the attacker's toggles). Only the defender is kept for inference: from any prompt set (the
initial prompts, a person's clicks) it deactivates prompts greedily and STOPs when no deactivation
is worth it; it never reads a truth mask.

Logged: at every defender episode end ``charts/episodic_return`` (the defender's),
``charts/attack_return``, ``charts/attack_steps``, ``charts/<key>`` of the final info
(``charts/dice`` the repaired Dice); every ``LOG_EVERY`` gradient steps of each role
``losses/<role>_td_loss`` and ``losses/<role>_q_values``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np

from gpoa.agents.dqn import LOG_EVERY, DQNAgent, copy_observation, info_logs, linear_schedule
from gpoa.config import Config
from gpoa.distributed import agree_min

ATTACKER, DEFENDER = "attacker", "defender"


def inference_config(cfg: Config) -> Config:
    """The settings the defender is applied with: from the prompts as they are, deactivations only."""
    return dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, start="initial", edits=cfg.ppd.defender_edits))


def training_config(cfg: Config) -> Config:
    """The settings of a training episode: ideal prompts first (sampled from the truth)."""
    return dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, start="ideal", edits=cfg.ppd.defender_edits))


class AttackDefendAgent:
    """The attacker and the defender (two :class:`~gpoa.agents.dqn.DQNAgent`, each with its network,
    target network, optimizer and replay buffer). ``network`` is the defender's: the policy kept."""

    learner = "ppd"

    def __init__(self, node_dim: int, global_dim: int, max_nodes: int, cfg: Config, seed: int = 0,
                 device: str = "cpu", network_options: Optional[dict] = None):
        self.cfg = cfg
        # the prior scores edits by what they do for the mask: the defender's aim, not the attacker's
        self.attacker = DQNAgent(node_dim, global_dim, max_nodes, cfg.dqn, seed=seed, device=device)
        self.defender = DQNAgent(node_dim, global_dim, max_nodes, cfg.dqn, seed=seed + 1, device=device,
                                 network_options=network_options)
        self.seed, self.rng = seed, np.random.default_rng(seed + 2)
        self.global_step = 0

    def data_parallel(self, rank: int) -> None:
        """Train with several processes (:mod:`gpoa.distributed`): both roles data-parallel, attack
        lengths drawn per rank."""
        self.attacker.data_parallel(rank)
        self.defender.data_parallel(rank)
        self.rng = np.random.default_rng([self.seed + 2, rank])

    @classmethod
    def for_env(cls, env, cfg: Config, seed: int = 0, device: str = "cpu",
                network_options: Optional[dict] = None) -> AttackDefendAgent:
        max_nodes, node_dim = env.observation_space["nodes"].shape
        (global_dim,) = env.observation_space["globals"].shape
        return cls(node_dim, global_dim, max_nodes, cfg, seed=seed, device=device, network_options=network_options)

    @property
    def network(self):
        return self.defender.q_network

    @property
    def device(self) -> str:
        return self.defender.device

    def companions(self) -> dict:
        """The networks trained beside the kept one: the attacker (saved as ``attacker.pt``)."""
        return {ATTACKER: self.attacker.q_network}

    def role(self, name: str) -> DQNAgent:
        return self.attacker if name == ATTACKER else self.defender

    def draw_attack_steps(self) -> int:
        low, high = self.cfg.ppd.attack_steps
        return int(self.rng.integers(low, high + 1))

    def state_dict(self) -> dict:
        return {"attacker": self.attacker.state_dict(), "defender": self.defender.state_dict(),
                "global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.attacker.load_state_dict(state["attacker"])
        self.defender.load_state_dict(state["defender"])
        self.global_step = int(state["global_step"])


def train(vec_env, cfg: Config, total_steps: int, seed: int,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, agent: Optional[AttackDefendAgent] = None,
          device: str = "cpu") -> AttackDefendAgent:
    """Train both roles until ``total_steps`` transitions (attacker's and defender's) in all.

    ``vec_env`` must be built with :func:`training_config` (ideal start). The order within an
    episode is fixed: attack (T steps or STOP), then defend (until STOP or truncation).
    """
    agent = agent or AttackDefendAgent.for_env(vec_env, cfg, seed=seed, device=device)
    dqn = cfg.dqn
    report = callback or (lambda step, logs: None)
    k_envs = vec_env.num_envs
    roles, budgets = [ATTACKER] * k_envs, [agent.draw_attack_steps() for _ in range(k_envs)]
    vec_env.reset(seed=seed + agent.global_step)
    observations = [copy_observation(env.set_edits("activate", shield=False)) for env in vec_env.envs]
    masks = vec_env.action_masks()
    returns = {ATTACKER: np.zeros(k_envs), DEFENDER: np.zeros(k_envs)}
    attack_lengths = np.zeros(k_envs, dtype=np.int64)
    counts = {ATTACKER: 0, DEFENDER: 0}
    start_time, stop = time.perf_counter(), False
    while agent.global_step < total_steps and not stop:
        actions = np.zeros(k_envs, dtype=np.int64)
        for name in (ATTACKER, DEFENDER):
            members = [k for k in range(k_envs) if roles[k] == name]
            if not members:
                continue
            learner = agent.role(name)
            epsilon = linear_schedule(dqn.epsilon_start, dqn.epsilon_end, dqn.epsilon_fraction * total_steps / 2,
                                      learner.global_step)
            chosen = learner.act([observations[k] for k in members], masks[members], epsilon)
            actions[members] = chosen
        dice_before = [env.dice for env in vec_env.envs]
        results = vec_env.step(actions)
        agent.global_step += k_envs
        next_masks = vec_env.action_masks()
        for k, (next_obs, reward, terminated, truncated, info) in enumerate(results):
            name = roles[k]
            learner = agent.role(name)
            learner.global_step += 1
            counts[name] += 1
            if name == ATTACKER:
                change = (info["dice"] - dice_before[k]) if "dice" in info else 0.0
                reward = -change - cfg.env.step_penalty * (not terminated)
                attack_lengths[k] += 0 if terminated else 1
                handover = terminated or truncated or attack_lengths[k] >= budgets[k]
                # the attacker's episode ends when it hands over: nothing after it is its doing
                learner.buffer.add(observations[k], actions[k], reward, next_obs, next_masks[k], handover)
                returns[ATTACKER][k] += reward
                if handover:
                    roles[k] = DEFENDER
                    next_obs = vec_env[k].set_edits(cfg.ppd.defender_edits, shield=True)
                    next_masks[k] = vec_env[k].action_masks()
            else:
                learner.buffer.add(observations[k], actions[k], reward, next_obs, next_masks[k], terminated)
                returns[DEFENDER][k] += reward
                if terminated or truncated:
                    logs = {"charts/episodic_return": float(returns[DEFENDER][k]),
                            "charts/attack_return": float(returns[ATTACKER][k]),
                            "charts/attack_steps": int(attack_lengths[k]), **info_logs(info)}
                    stop = bool(report(agent.global_step, logs)) or stop
                    returns[ATTACKER][k] = returns[DEFENDER][k] = 0.0
                    attack_lengths[k] = 0
                    roles[k], budgets[k] = ATTACKER, agent.draw_attack_steps()
                    vec_env.reset_one(k)
                    next_obs = vec_env[k].set_edits("activate", shield=False)
                    next_masks[k] = vec_env[k].action_masks()
            observations[k] = copy_observation(next_obs)
        masks = next_masks
        for name in (ATTACKER, DEFENDER):
            learner = agent.role(name)
            ready = learner.global_step >= dqn.learning_starts and len(learner.buffer) >= dqn.batch_size
            # how many updates are due depends on this rank's episodes: with several processes the
            # ranks agree on the fewest (the rest stay due), so that every rank runs the same updates
            due = agree_min(counts[name] // dqn.train_frequency if ready else 0)
            counts[name] -= due * dqn.train_frequency
            for _ in range(due):
                losses = learner.update()
                if learner.gradient_steps % LOG_EVERY == 0:
                    sps = agent.global_step / max(time.perf_counter() - start_time, 1e-9)
                    logs = {f"losses/{name}_td_loss": losses["losses/td_loss"],
                            f"losses/{name}_q_values": losses["losses/q_values"], "charts/SPS": sps}
                    stop = bool(report(agent.global_step, logs)) or stop
    return agent
