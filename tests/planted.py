"""A planted task with a known answer, shared by the learners' tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PlantedOutlierEnv(gym.Env):
    """8–12 prompt nodes, 1–3 of them planted outliers; switch every outlier off, keep the rest, STOP.

    Node features: [active, pattern_a, pattern_b, noise]; outliers sit near (2, 2) in the pattern
    plane, good nodes around the origin. Only active nodes can be toggled (off); reward +1 per
    outlier switched off, −1 per good node switched off. STOP terminates; ``max_steps`` truncates.
    Globals: [share of steps used, share of nodes still active].
    """

    max_nodes, max_steps = 12, 5

    def __init__(self):
        self.observation_space = spaces.Dict({
            "nodes": spaces.Box(-np.inf, np.inf, (self.max_nodes, 4), np.float32),
            "valid": spaces.Box(0, 1, (self.max_nodes,), np.int8),
            "globals": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        })
        self.action_space = spaces.Discrete(self.max_nodes + 1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        rng = self.np_random
        self.count = int(rng.integers(8, self.max_nodes + 1))
        self.outlier = np.zeros(self.count, dtype=bool)
        self.outlier[rng.choice(self.count, size=int(rng.integers(1, 4)), replace=False)] = True
        self.pattern = rng.normal(0.0, 0.5, size=(self.count, 2))
        self.pattern[self.outlier] = rng.normal(2.0, 0.3, size=(int(self.outlier.sum()), 2))
        self.noise = rng.normal(size=self.count)
        self.active = np.ones(self.count, dtype=bool)
        self.steps = 0
        return self._observation(), {}

    def _observation(self) -> dict:
        nodes = np.zeros((self.max_nodes, 4), dtype=np.float32)
        nodes[: self.count] = np.column_stack([self.active, self.pattern, self.noise])
        valid = np.zeros(self.max_nodes, dtype=np.int8)
        valid[: self.count] = 1
        globals_ = np.array([self.steps / self.max_steps, self.active.mean()], dtype=np.float32)
        return {"nodes": nodes, "valid": valid, "globals": globals_}

    def action_masks(self) -> np.ndarray:
        mask = np.zeros(self.max_nodes + 1, dtype=bool)
        mask[: self.count] = self.active
        mask[-1] = True
        return mask

    def step(self, action):
        assert self.action_masks()[action], f"invalid action {action}"
        self.steps += 1
        reward, terminated = 0.0, action == self.max_nodes
        if not terminated:
            reward = 1.0 if self.outlier[action] else -1.0
            self.active[action] = False
        truncated = not terminated and self.steps >= self.max_steps
        success = bool(np.all(self.active != self.outlier))
        return self._observation(), reward, terminated, truncated, {"success": success, "label": "planted"}
