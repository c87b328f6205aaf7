"""Point Prompt Defender's ablation on one target: ideal → attacked → defended, and initial → defended.

Shared by ``benchmarks/bench_ppd.py`` and the table runner (:mod:`gpoa.reproduce`). On the graph
the training episodes use:

- **ideal**: prompts sampled from the truth mask (the training episodes' start);
- **attacked**: the attacker, greedy, activates candidates for up to ``attack_steps`` steps;
- **defended**: the defender, greedy, deactivates prompts of the attacked set until it STOPs;
- **initial** → **initial_defended**: the defender applied to stage 1's prompts (as test_GPOA.py does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gpoa.agents.adversarial import inference_config, training_config
from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.agents.policy_file import check_observation, load_policy
from gpoa.config import Config, EnvConfig, GraphConfig
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES

#: The columns of one ablation row, in table order.
ABLATION_COLUMNS = ("ideal", "attacked", "defended", "initial", "initial_defended")


@dataclass
class PPDRun:
    """A Point Prompt Defender training run, ready for the ablation: both roles (greedy) and the
    settings of its training episodes and of its inference."""

    attacker: GreedyPolicy
    defender: GreedyPolicy
    train_cfg: Config
    run_cfg: Config
    attack_steps: int  # the most toggles the attacker may take

    def row(self, sample, segmenter) -> dict:
        return ablation_row(sample, self.train_cfg, self.run_cfg, self.attacker, self.defender, segmenter,
                            self.attack_steps)


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
    return PPDRun(GreedyPolicy(attacker_file.network), GreedyPolicy(defender_file.network), training_config(cfg),
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
                 attack_steps: int) -> dict:
    """The Dice of each column of :data:`ABLATION_COLUMNS` for one target with its truth mask."""
    env = PromptEnv(EpisodeBank([sample], train_cfg, segmenter), train_cfg)
    _, info = env.reset(options={"sample": 0})
    row = {"ideal": info["dice"]}
    env.set_edits("activate", shield=False)
    greedy_steps(attacker, env, attack_steps)
    row["attacked"] = env.dice
    env.set_edits(run_cfg.env.edits, shield=True)
    greedy_steps(defender, env, run_cfg.env.episode_length)
    row["defended"] = env.dice
    initial = PromptEnv(EpisodeBank([sample], run_cfg, segmenter), run_cfg)
    _, start = initial.reset(options={"sample": 0})
    _, final, _ = run_greedy(defender, initial, options={"sample": 0})
    row.update({"initial": start["dice"], "initial_defended": final["dice"]})
    return row
