"""Stage 2: train the prompt-editing policy (Double DQN on the dual-space graph).

Two sources of episodes, picked by ``env.reward``:

- ``segmentation`` — ``train_image/`` + ``train_mask/``: prompts from matching each training image,
  reward = change in Dice of the segmenter's mask (the segmenter is in the loop);
- ``graph`` — the target prompt files ``initial_indices/*.json`` alone (label-free, transductive):
  reward = change in the graph score.

A share ``train.eval_fraction`` of the images is held out; every ``train.eval_every`` steps the
greedy policy runs on them and the best one is kept. Writes to ``train.checkpoints/<run>/``:
``best.pt`` and ``last.pt`` (policy + config, ``torch.load(weights_only=True)``), ``train_state.pt``
(optimizer and counters, for ``--resume``), ``log.csv`` (step, key, value) and ``reward_curve.png``.
"""

from __future__ import annotations

import csv
import io as _io
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpoa.agents.dqn import DQNAgent, run_greedy, save_policy, train
from gpoa.config import Config, config_to_dict, save_config
from gpoa.env import PromptEnv, step_batch
from gpoa.errors import UsageError
from gpoa.io import DatasetLayout, atomic_write_bytes
from gpoa.segmenters import build_segmenter
from gpoa.stages.common import (
    FeatureStore,
    StageReport,
    load_reference,
    matched_samples,
    prompt_file_samples,
    stable_seed,
)
from gpoa.viz import plot_curves

BEST, LAST, STATE, LOG = "best.pt", "last.pt", "train_state.pt", "log.csv"


def latest_run(checkpoints: Path) -> Path:
    runs = [p.parent for p in Path(checkpoints).glob(f"*/{LAST}")]
    if not runs:
        raise UsageError(f"no trained run in '{checkpoints}'; train one with train_GPOA.py first")
    return max(runs, key=lambda p: (p / LAST).stat().st_mtime)


def split_samples(samples: list, eval_fraction: float, seed: int) -> tuple:
    """(training samples, held-out samples): a deterministic shuffle, at least one image in each when possible."""
    order = np.random.default_rng(stable_seed(seed, "split")).permutation(len(samples))
    held = int(round(eval_fraction * len(samples)))
    held = min(max(held, 1 if eval_fraction > 0 else 0), len(samples) - 1)
    return [samples[i] for i in sorted(order[held:])], [samples[i] for i in sorted(order[:held])]


def evaluate(policy, env: PromptEnv, seed: int) -> dict:
    """Greedy episode on every sample of ``env`` → mean start/final Dice (if known) and graph score."""
    start_dice, final_dice, start_score, final_score = [], [], [], []
    for index in range(env.num_samples):
        _, info = env.reset(seed=seed, options={"sample": index})
        start_score.append(info["score"])
        if "dice" in info:
            start_dice.append(info["dice"])
        _, info, _ = run_greedy(policy, env, options={"sample": index}, seed=seed)
        final_score.append(info["score"])
        if "dice" in info:
            final_dice.append(info["dice"])
    result = {"eval/score_start": float(np.mean(start_score)), "eval/score": float(np.mean(final_score))}
    if final_dice:
        result.update({"eval/dice_start": float(np.mean(start_dice)), "eval/dice": float(np.mean(final_dice))})
    return result


class TrainingLog:
    """Long-format CSV (step, key, value) appended as training goes; survives interruption."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.rows = []
        if resume and path.is_file():
            with open(path) as handle:
                self.rows = [(int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(handle)]

    def add(self, step: int, logs: dict) -> None:
        self.rows += [(int(step), key, float(value)) for key, value in logs.items()]

    def save(self) -> None:
        buffer = _io.StringIO()
        buffer.write("step,key,value\n")
        buffer.writelines(f"{s},{k},{v:.6g}\n" for s, k, v in self.rows)
        atomic_write_bytes(self.path, buffer.getvalue().encode())

    def series(self, key: str) -> tuple:
        points = [(s, v) for s, k, v in self.rows if k == key]
        return [s for s, _ in points], [v for _, v in points]

    def plot(self, path: Path, reward: str) -> None:
        steps, returns = self.series("charts/episodic_return")
        if not steps:
            return
        window = max(1, len(returns) // 50)
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid").tolist()
        series = {f"episodic return (moving mean of {window})": smooth}
        eval_key = "eval/dice" if reward == "segmentation" else "eval/score"
        eval_steps, eval_values = self.series(eval_key)
        plot_curves(path, steps[window - 1:], series, title=f"GPOA training ({reward} reward)")
        if eval_steps:
            plot_curves(path.with_name("eval_curve.png"), eval_steps, {eval_key: eval_values},
                        title="greedy policy on held-out images")


def train_policy(cfg: Config, device: str = "cpu") -> StageReport:
    layout = DatasetLayout(cfg.data)
    store = FeatureStore(cfg, layout, device)
    reference = load_reference(cfg, layout, store)
    report = StageReport("train")
    segmentation = cfg.env.reward == "segmentation"
    if segmentation:
        layout.require("train_image", "train_mask")
        samples = matched_samples(cfg, layout, store, reference, "train", report)
    else:
        layout.require("target_image")
        samples = prompt_file_samples(layout, store, layout.initial_indices, report, with_images=False)
    if len(samples) < 2:
        raise UsageError(f"training needs at least 2 usable images in '{layout.root}', found {len(samples)}")
    train_samples, eval_samples = split_samples(samples, cfg.train.eval_fraction, cfg.seed)
    segmenter = build_segmenter(cfg, device=device) if segmentation else None

    checkpoints = Path(cfg.train.checkpoints)
    if cfg.train.resume:
        run_dir = checkpoints / cfg.train.run if cfg.train.run else latest_run(checkpoints)
        if not (run_dir / STATE).is_file():
            raise UsageError(f"cannot resume: '{run_dir / STATE}' does not exist; start without --resume")
    else:
        run_dir = checkpoints / (cfg.train.run or time.strftime("run-%Y%m%d-%H%M%S"))
        if (run_dir / LAST).exists() and not cfg.overwrite:
            raise UsageError(f"run '{run_dir}' exists; pass --resume to continue it, --overwrite to replace it, "
                             "or choose another --set train.run=NAME")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    print(f"[train] {len(train_samples)} training and {len(eval_samples)} held-out images, "
          f"{cfg.env.reward} reward, run {run_dir}")
    try:
        env = PromptEnv(train_samples, reference, cfg, segmenter=segmenter, seed=cfg.seed)
        eval_env = PromptEnv(eval_samples, reference, cfg, segmenter=segmenter, seed=cfg.seed + 10_000)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    envs = [env] + [env.spawn(seed=cfg.seed + k) for k in range(1, max(1, cfg.train.parallel_envs))]

    agent, best = DQNAgent.for_env(env, cfg.dqn, seed=cfg.seed, device=device), -np.inf
    if cfg.train.resume:
        try:
            state = torch.load(run_dir / STATE, map_location=device, weights_only=True)
            agent.load_state_dict(state["agent"])
            best = float(state["best"])
        except Exception as exc:  # unreadable file or a network of another shape: same advice
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot resume from '{run_dir / STATE}' ({reason}); resume with the settings the run "
                             "was started with (see its config.yaml) or start a new run") from None
        print(f"[train] resuming {run_dir} at step {agent.global_step}")
    log = TrainingLog(run_dir / LOG, resume=cfg.train.resume)
    meta = {"config": config_to_dict(cfg), "grid": store.grid.to_dict(), "reward": cfg.env.reward,
            "segmenter_in_loop": segmenter is not None, "feature_cache_key": store.key}
    eval_key = "eval/dice" if segmentation else "eval/score"
    recent = {"return": [], "dice": []}
    bar = tqdm(total=cfg.dqn.total_steps, initial=agent.global_step, desc="train", unit="step")
    next_eval = [(agent.global_step // cfg.train.eval_every + 1) * cfg.train.eval_every]

    evaluated = [-1]

    def checkpoint(current: DQNAgent, step: int) -> None:
        nonlocal best
        if evaluated[0] == step:
            return
        evaluated[0] = step
        scores = evaluate(current.q_network, eval_env, seed=cfg.seed)
        log.add(step, scores)
        if scores[eval_key] > best:
            best = scores[eval_key]
            save_policy(run_dir / BEST, current, {**meta, "step": step, **scores})
        save_policy(run_dir / LAST, current, {**meta, "step": step, **scores})
        buffer = _io.BytesIO()
        torch.save({"agent": current.state_dict(), "best": best}, buffer)
        atomic_write_bytes(run_dir / STATE, buffer.getvalue())
        log.save()
        log.plot(run_dir / "reward_curve.png", cfg.env.reward)
        bar.write(f"[train] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))

    def callback(step: int, logs: dict) -> None:
        log.add(step, logs)
        if "charts/episodic_return" in logs:
            recent["return"] = (recent["return"] + [logs["charts/episodic_return"]])[-50:]
            if "charts/dice" in logs:
                recent["dice"] = (recent["dice"] + [logs["charts/dice"]])[-50:]
            postfix = {"reward": f"{np.mean(recent['return']):+.3f}"}
            if recent["dice"]:
                postfix["dice"] = f"{np.mean(recent['dice']):.3f}"
            bar.set_postfix(postfix, refresh=False)
        bar.update(step - bar.n)
        if step >= next_eval[0]:
            next_eval[0] += cfg.train.eval_every
            checkpoint(agent, step)

    agent = train(envs, cfg.dqn, cfg.dqn.total_steps, cfg.seed, step_fn=step_batch, callback=callback,
                  agent=agent, device=device)
    checkpoint(agent, agent.global_step)
    bar.close()
    report.done.extend(s.name for s in samples)
    print(f"[train] best {eval_key}={best:.4f}; policy: {run_dir / BEST}")
    return report


def resolve_policy(cfg: Config) -> Path:
    """``optimize.policy``, or the best checkpoint of the most recent run."""
    if cfg.optimize.policy:
        return Path(cfg.optimize.policy)
    return latest_run(Path(cfg.train.checkpoints)) / BEST

