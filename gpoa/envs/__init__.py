"""Environments: the episode bank (lazy records of many tasks' samples), the prompt-editing
environment (Gymnasium API) and its batched, vectorised form.

- :mod:`gpoa.envs.bank` — :class:`EpisodeBank`: graphs, embeddings and start masks built on demand;
- :mod:`gpoa.envs.prompt_env` — :class:`PromptEnv`: one episode edits one sample's prompts;
- :mod:`gpoa.envs.vec_env` — :class:`VecPromptEnv`: many environments, one decode per sample;
- :mod:`gpoa.envs.oracle` — the greedy oracle that reads the truth mask (an evaluation yardstick).
"""

from gpoa.envs.bank import EpisodeBank, SampleRecord
from gpoa.envs.prompt_env import GLOBAL_FEATURES, PromptEnv
from gpoa.envs.vec_env import SerialVecEnv, VecPromptEnv

__all__ = ["GLOBAL_FEATURES", "EpisodeBank", "PromptEnv", "SampleRecord", "SerialVecEnv", "VecPromptEnv"]
