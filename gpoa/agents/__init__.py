"""Agents that edit a prompt set on the dual-space graph: one shared network, one module per learner.

- :mod:`gpoa.agents.network` — the node-set network every learner uses (one score per node + STOP);
- :mod:`gpoa.agents.greedy` — fast deterministic inference with the do-no-harm gate;
- :mod:`gpoa.agents.policy_file` — policy files (learner, settings, observation feature names);
- :mod:`gpoa.agents.dqn` — Double DQN;
- :mod:`gpoa.agents.ppo` — PPO with invalid-action masking;
- :mod:`gpoa.agents.adversarial` — Point Prompt Defender (attacker and defender, both DQN).

:data:`LEARNERS` is the one door (``agent.learner`` in the config picks one, like SAM's model
registry): each entry builds an agent for a vectorised environment, trains it for
``train.total_steps`` transitions, and says which settings its episodes and its kept policy use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from gpoa.agents import adversarial, dqn, ppo
from gpoa.config import Config
from gpoa.envs.mask_view import LOOKAHEAD_SCALE
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES


def network_options(cfg: Config) -> dict:
    """The kept network's prior (``agent.agreement_prior``) as :class:`NodeSetNetwork` arguments:
    the lookahead's agreement column is that change × LOOKAHEAD_SCALE, so the weight is divided by it
    and the prior is in Dice (the unit of the segmentation reward)."""
    if not cfg.agent.agreement_prior:
        return {}
    return {"prior_column": NODE_FEATURES.index("lookahead_region_agreement"),
            "prior_weight": cfg.agent.agreement_prior / LOOKAHEAD_SCALE}


@dataclass(frozen=True)
class Learner:
    """How one learner is built, trained and applied.

    ``make_agent(vec_env, cfg, seed, device)`` → an agent with ``network`` (the policy kept),
    ``global_step``, ``state_dict`` / ``load_state_dict`` and ``learner`` (its name);
    ``train(vec_env, cfg, agent, callback)`` trains it to ``cfg.train.total_steps`` transitions;
    ``settings(cfg)`` its hyperparameters (recorded in policy files); ``training_config(cfg)`` /
    ``inference_config(cfg)`` the settings of its training episodes and of the kept policy's use.
    """

    name: str
    make_agent: Callable
    train: Callable
    settings: Callable
    training_config: Callable = lambda cfg: cfg
    inference_config: Callable = lambda cfg: cfg


LEARNERS = {
    "dqn": Learner(
        "dqn",
        make_agent=lambda env, cfg, seed, device: dqn.DQNAgent.for_env(env, cfg.dqn, seed=seed, device=device,
                                                                       network_options=network_options(cfg)),
        train=lambda env, cfg, agent, callback: dqn.train(env, cfg.dqn, cfg.train.total_steps, cfg.seed,
                                                          callback=callback, agent=agent, device=agent.device),
        settings=lambda cfg: dataclasses.asdict(cfg.dqn)),
    "ppo": Learner(
        "ppo",
        make_agent=lambda env, cfg, seed, device: ppo.PPOAgent.for_env(env, cfg.ppo, seed=seed, device=device,
                                                                       network_options=network_options(cfg)),
        train=lambda env, cfg, agent, callback: ppo.train(env, cfg.ppo, cfg.train.total_steps, cfg.seed,
                                                          callback=callback, agent=agent, device=agent.device),
        settings=lambda cfg: dataclasses.asdict(cfg.ppo)),
    "ppd": Learner(
        "ppd",
        make_agent=lambda env, cfg, seed, device: adversarial.AttackDefendAgent.for_env(
            env, cfg, seed=seed, device=device, network_options=network_options(cfg)),
        train=lambda env, cfg, agent, callback: adversarial.train(env, cfg, cfg.train.total_steps, cfg.seed,
                                                                  callback=callback, agent=agent,
                                                                  device=agent.device),
        settings=lambda cfg: {**dataclasses.asdict(cfg.dqn), **dataclasses.asdict(cfg.ppd)},
        training_config=adversarial.training_config,
        inference_config=adversarial.inference_config),
}


def build_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise UsageError(f"unknown agent.learner '{name}'; use one of {', '.join(LEARNERS)}")
    return LEARNERS[name]


def learner_of(cfg: Config) -> Learner:
    return build_learner(cfg.agent.learner)
