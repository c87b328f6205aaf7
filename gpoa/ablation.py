"""Point Prompt Defender's ablation on one target: ideal → attacked → defended, and initial → defended.

Shared by ``benchmarks/bench_ppd.py`` and the table runner (:mod:`gpoa.reproduce`). On the graph
the training episodes use:

- **ideal**: prompts sampled from the truth mask (the training episodes' start);
- **attacked**: the attacker, greedy, activates candidates for up to ``attack_steps`` steps;
- **defended**: the defender, greedy, deactivates prompts of the attacked set until it STOPs;
- **initial** → **initial_defended**: the defender applied to stage 1's prompts (as test_GPOA.py does).
"""

from __future__ import annotations

from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.envs import EpisodeBank, PromptEnv

#: The columns of one ablation row, in table order.
ABLATION_COLUMNS = ("ideal", "attacked", "defended", "initial", "initial_defended")


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
