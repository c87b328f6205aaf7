"""Several prompt environments stepped together, with one segmenter decode per distinct sample.

Decoding is the cost of a step with the segmenter in the loop; a decode call handles many prompt
sets at once (SAM: one mask-decoder pass; the classical segmenter: one factorisation per set but
no per-call overhead). :class:`VecPromptEnv` owns that batching: it applies every environment's
action, groups the environments by the sample they play, decodes each group in one call and
finishes every step. Episodes are NOT reset automatically: the caller resets an environment
whose episode ended (:meth:`VecPromptEnv.reset_one`), so the final observation of an episode is
always the one ``step`` returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from gpoa.config import Config
from gpoa.envs.bank import EpisodeBank
from gpoa.envs.prompt_env import PromptEnv


class SerialVecEnv:
    """K Gymnasium environments with ``action_masks()`` behind the vectorised interface the learners
    use, stepped one after the other (no batching): lets the learners train on other environments.
    :class:`VecPromptEnv` is the batched one over prompt environments."""

    def __init__(self, envs: Sequence):
        if len(envs) == 0:
            raise ValueError("a vectorised environment needs at least one environment")
        self.envs = list(envs)
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def __len__(self) -> int:
        return len(self.envs)

    def __getitem__(self, k: int):
        return self.envs[k]

    def reset(self, seed: Optional[int] = None) -> list:
        """Reset every environment (environment k with ``seed + k`` when a seed is given) → observations."""
        return [env.reset(seed=None if seed is None else seed + k)[0] for k, env in enumerate(self.envs)]

    def reset_one(self, k: int, options: Optional[dict] = None) -> dict:
        """Start the next episode of environment k → its observation."""
        return self.envs[k].reset(options=options)[0]

    def action_masks(self) -> np.ndarray:
        """(K, A) bool: the valid actions of every environment."""
        return np.stack([env.action_masks() for env in self.envs])

    def step(self, actions: Sequence[int]) -> list:
        """Step every environment → one (obs, reward, terminated, truncated, info) per environment."""
        if len(actions) != len(self.envs):
            raise ValueError(f"{len(self.envs)} environments but {len(actions)} actions")
        return [env.step(int(action)) for env, action in zip(self.envs, actions)]


class VecPromptEnv(SerialVecEnv):
    """``num_envs`` :class:`PromptEnv` over one bank, environment k seeded with ``seed + k``, whose
    steps decode each sample's prompt sets in one call."""

    def __init__(self, bank: EpisodeBank, cfg: Config, num_envs: int, seed: int = 0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        super().__init__([PromptEnv(bank, cfg, seed=seed + k) for k in range(num_envs)])
        self.bank, self.seed = bank, seed

    def step(self, actions: Sequence[int]) -> list:
        """Step every environment → one (obs, reward, terminated, truncated, info) per environment.

        All actions are checked before any is applied. One ``segmenter.decode`` call per distinct
        sample, with the prompt sets of all environments that toggled a node on it.
        """
        if len(actions) != len(self.envs):
            raise ValueError(f"{len(self.envs)} environments but {len(actions)} actions")
        actions = [int(action) for action in actions]
        for env, action in zip(self.envs, actions):
            env.check_action(action)
        dice_before = [env.dice for env in self.envs]
        groups: dict = {}
        for env, action in zip(self.envs, actions):
            if env.apply(action) and self.bank.segmenter is not None:
                groups.setdefault(id(env.record), []).append(env)
        for group in groups.values():
            masks, dice = self.bank.decode(group[0].record, [env.graph for env in group])
            for j, env in enumerate(group):
                env.observe_mask(masks[j], None if dice is None else float(dice[j]))
        return [env.finish(action, before) for env, action, before in zip(self.envs, actions, dice_before)]
