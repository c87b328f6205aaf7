"""Point Prompt Defender's ablation on one target: ideal → attacked → defended, and initial → defended.

Shared by ``benchmarks/bench_ppd.py`` and the table runner (:mod:`gpoa.experiments.reproduce`). On the graph
the training episodes use:

- **ideal**: prompts sampled from the truth mask (the training episodes' start);
- **attacked**: the attacker, greedy, activates candidates for up to ``attack_steps`` steps;
- **defended**: the defender, greedy, deactivates prompts of the attacked set until it STOPs;
- **initial** → **initial_defended**: the defender applied to stage 1's prompts as test_GPOA.py
  applies it, with the config's inference gates (``optimize.stop_margin``,
  ``optimize.min_region_confidence``); the attacked → defended step measures the defender itself,
  ungated.

Each column is the Dice of that step's mask against the truth; pixels of the target's ignore mask (a
benchmark's void label, as stage 4 reads it) count for neither, so the columns are comparable with
stage 4's metrics. The agents themselves never see the ignore mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from gpoa.agents.adversarial import inference_config, training_config
from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.agents.policy_file import check_observation, load_policy
from gpoa.config import Config, EnvConfig, GraphConfig
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv
from gpoa.errors import InputError, UsageError
from gpoa.graph import NODE_FEATURES
from gpoa.io import read_mask
from gpoa.metrics import dice

#: The columns of one ablation row, in table order.
ABLATION_COLUMNS = ("ideal", "attacked", "defended", "initial", "initial_defended")


@dataclass
class PPDRun:
    """A Point Prompt Defender training run, ready for the ablation: both roles (greedy) and the
    settings of its training episodes and of its inference."""

    attacker: GreedyPolicy
    defender: GreedyPolicy  # ungated, on the attacked sets
    gated_defender: GreedyPolicy  # with the inference gates, on stage 1's prompts
    train_cfg: Config
    run_cfg: Config
    attack_steps: int  # the most toggles the attacker may take

    def row(self, sample, segmenter, ignore_path: Optional[Path] = None) -> dict:
        """:func:`ablation_row` for ``sample``, leaving out the pixels of the ignore mask at ``ignore_path``
        (a task layout's ``ignore_masks[stem]``), if any."""
        truth = np.asarray(sample.truth_mask)
        ignore = None if ignore_path is None else read_mask(ignore_path, expected_size=(truth.shape[1], truth.shape[0]))
        return ablation_row(sample, self.train_cfg, self.run_cfg, self.attacker, self.defender, segmenter,
                            self.attack_steps, ignore, self.gated_defender)

    def task_rows(self, task, samples, segmenter, report) -> Iterator[tuple]:
        """(stem, :meth:`row`) for each of ``task``'s lazy ``samples`` that has a truth mask, with the
        task's ignore masks; an unreadable image or mask is reported in ``report`` and skipped."""
        for lazy in samples:
            try:
                sample = lazy.load()
                if sample.truth_mask is not None:
                    yield sample.name, self.row(sample, segmenter, task.layout.ignore_masks.get(sample.name))
            except (InputError, ValueError) as exc:
                report.fail(f"{task.name}/{lazy.name}", str(exc))


def load_ppd_run(run: Path, cfg: Config) -> PPDRun:
    """The run folder's defender (``best.pt``) and attacker (``attacker.pt``), checked, with the graph,
    environment and attack settings they were trained with laid over ``cfg``."""
    run = Path(run)
    defender_file, attacker_file = load_policy(run / "best.pt"), load_policy(run / "attacker.pt")
    for policy, path in ((defender_file, run / "best.pt"), (attacker_file, run / "attacker.pt")):
        check_observation(policy, path, NODE_FEATURES, GLOBAL_FEATURES)
    if defender_file.learner != "ppd":
        raise UsageError(f"'{run / 'best.pt'}' was trained by '{defender_file.learner}', not by ppd")
    trained = defender_file.extra["config"]
    cfg = dataclasses.replace(cfg, graph=GraphConfig(**trained["graph"]), env=EnvConfig(**trained["env"]),
                              ppd=dataclasses.replace(cfg.ppd, attack_steps=list(trained["ppd"]["attack_steps"]),
                                                      defender_edits=trained["ppd"]["defender_edits"]))
    in_loop = bool(defender_file.extra.get("segmenter_in_loop"))
    return PPDRun(GreedyPolicy(attacker_file.network), GreedyPolicy(defender_file.network),
                  GreedyPolicy.gated(defender_file.network, cfg.optimize, in_loop), training_config(cfg),
                  inference_config(cfg), cfg.ppd.attack_steps[1])


def greedy_steps(policy: GreedyPolicy, env: PromptEnv, limit: int) -> None:
    """Greedy actions in ``env`` (whose episode is open) until STOP, truncation or ``limit`` toggles."""
    obs = env.observation()
    for _ in range(limit):
        action = policy(obs, env.action_masks())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return


def ablation_row(sample, train_cfg, run_cfg, attacker: GreedyPolicy, defender: GreedyPolicy, segmenter,
                 attack_steps: int, ignore: Optional[np.ndarray] = None,
                 initial_defender: Optional[GreedyPolicy] = None) -> dict:
    """The Dice of each column of :data:`ABLATION_COLUMNS` for one target with its truth mask;
    ``ignore`` (H, W) bool marks pixels that count for neither mask. ``initial_defender`` (default:
    ``defender``) edits stage 1's prompts."""
    if segmenter is None or sample.truth_mask is None:
        raise ValueError(f"the ablation of '{sample.name}' needs a segmenter and the truth mask")
    truth = np.asarray(sample.truth_mask, bool)
    if ignore is not None and np.shape(ignore) != truth.shape:
        raise ValueError(f"ignore mask of '{sample.name}' has shape {np.shape(ignore)}, its truth mask {truth.shape}")
    keep = None if ignore is None else ~np.asarray(ignore, bool)

    def score(env: PromptEnv) -> float:
        return env.dice if keep is None else dice(env.mask & keep, truth & keep)

    env = PromptEnv(EpisodeBank([sample], train_cfg, segmenter), train_cfg)
    env.reset(options={"sample": 0})
    row = {"ideal": score(env)}
    env.set_edits("activate", shield=False)
    greedy_steps(attacker, env, attack_steps)
    row["attacked"] = score(env)
    env.set_edits(run_cfg.env.edits, shield=True)
    greedy_steps(defender, env, run_cfg.env.episode_length)
    row["defended"] = score(env)
    initial = PromptEnv(EpisodeBank([sample], run_cfg, segmenter), run_cfg)
    initial.reset(options={"sample": 0})
    row["initial"] = score(initial)
    run_greedy(initial_defender or defender, initial, options={"sample": 0})
    row["initial_defended"] = score(initial)
    return row
