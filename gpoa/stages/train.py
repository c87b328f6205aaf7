"""Stage 2: train ONE prompt-editing policy across every task given (DQN, PPO or PPD on the dual-space graph).

Two sources of episodes, picked by ``env.reward``:

- ``segmentation`` — each task's training pairs (``train_image/`` + ``train_mask/``, or a domain
  folder's non-reference pairs): prompts from stage 1's proposal for each training image against
  its task's reference, reward = change in Dice of the segmenter's mask (segmenter in the loop);
- ``graph`` — each task's target prompt files ``initial_indices/*.json`` alone (label-free,
  transductive): reward = change in the graph score.

Episodes are drawn uniformly over the samples of all tasks, from an
:class:`~gpoa.envs.bank.EpisodeBank` that builds graphs and embeddings lazily. A share
``train.eval_fraction`` of each task's images is held out; every ``train.eval_every`` steps the
greedy policy (with the inference gate ``optimize.stop_margin``) runs on them, the result is
logged per task (``eval/<task>/dice``) and averaged over tasks (``eval/dice``), and the best
policy is kept. The learner is ``agent.learner`` (:data:`gpoa.agents.LEARNERS`), its budget
``train.total_steps`` transitions. Writes to ``train.checkpoints/<run>/``: ``best.pt`` and ``last.pt`` (policy files,
:mod:`gpoa.agents.policy_file`), ``train_state.pt`` (optimizer and counters, for ``--resume``),
``log.csv`` (step, key, value), ``reward_curve.png`` and ``eval_curve.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from gpoa.agents import learner_of
from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.agents.policy_file import save_policy
from gpoa.backends import Backends
from gpoa.config import Config, config_to_dict, save_config
from gpoa.distributed import barrier, process_group, rank_device
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv, VecPromptEnv
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES
from gpoa.inference import propose
from gpoa.io import atomic_write_bytes
from gpoa.presence import fit_presence_threshold, mask_presence_score
from gpoa.runtime import RunContext, StageReport, stable_seed
from gpoa.tasks import load_tasks
from gpoa.viz import plot_curves

BEST, LAST, STATE, LOG = "best.pt", "last.pt", "train_state.pt", "log.csv"


def latest_run(checkpoints: Path) -> Path:
    runs = [p.parent for p in Path(checkpoints).glob(f"*/{LAST}")]
    if not runs:
        raise UsageError(f"no trained run in '{checkpoints}'; train one with train_GPOA.py first")
    return max(runs, key=lambda p: (p / LAST).stat().st_mtime)


def resolve_policy(cfg: Config) -> Path:
    """``optimize.policy``, or the best checkpoint of the most recent run."""
    if cfg.optimize.policy:
        return Path(cfg.optimize.policy)
    return latest_run(Path(cfg.train.checkpoints)) / BEST


def split_samples(samples: list, eval_fraction: float, seed: int) -> tuple:
    """(training samples, held-out samples) of one task: a deterministic shuffle drawn from the run
    ``seed`` and each image's content (``sample.content``), never from a name, so renaming a task or
    an image does not move the split; at least one image in each part when there are two or more."""
    order = sorted(range(len(samples)), key=lambda i: (stable_seed(seed, "split", samples[i].content), i))
    held = int(round(eval_fraction * len(samples)))
    held = min(max(held, 1 if eval_fraction > 0 else 0), len(samples) - 1)
    return [samples[i] for i in sorted(order[held:])], [samples[i] for i in sorted(order[:held])]


def evaluate(policy, env: PromptEnv, seed: int) -> dict:
    """A greedy episode on every sample of ``env``'s bank → per task and averaged over tasks:
    ``eval/<task>/dice`` and ``eval/<task>/dice_start`` (when the Dice is known) and
    ``eval/<task>/score``, then ``eval/dice``, ``eval/dice_start``, ``eval/gain`` and ``eval/score``
    (means over tasks of the per-task means)."""
    per_task: dict = {}
    for index in range(env.num_samples):
        _, start = env.reset(seed=seed, options={"sample": index})
        _, final, _ = run_greedy(policy, env, options={"sample": index}, seed=seed)
        values = per_task.setdefault(final["task"], {"dice": [], "dice_start": [], "score": []})
        values["score"].append(final["score"])
        if "dice" in final:
            values["dice"].append(final["dice"])
            values["dice_start"].append(start["dice"])
    result = {}
    for task, values in per_task.items():
        for key, items in values.items():
            if items:
                result[f"eval/{task}/{key}"] = float(np.mean(items))
    for key in ("dice", "dice_start", "score"):
        means = [result[f"eval/{task}/{key}"] for task in per_task if f"eval/{task}/{key}" in result]
        if means:
            result[f"eval/{key}"] = float(np.mean(means))
    if "eval/dice" in result:
        result["eval/gain"] = result["eval/dice"] - result["eval/dice_start"]
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
        plot_curves(path, steps[window - 1:], series, title=f"GPOA training ({reward} reward)")
        keys = ["eval/dice", "eval/dice_start"] if reward == "segmentation" else ["eval/score"]
        eval_steps, _ = self.series(keys[0])
        if eval_steps:
            plot_curves(path.with_name("eval_curve.png"), eval_steps, {k: self.series(k)[1] for k in keys},
                        title="greedy policy on held-out images (mean over tasks)")


def episode_sources(cfg: Config, tasks: list, report: StageReport) -> tuple:
    """(training sources, held-out sources) over all tasks, split per task."""
    training, held_out = [], []
    for task in tasks:
        if cfg.env.reward == "segmentation":
            samples = task.training_samples(report)
        else:
            task.layout.require("reference", "targets")
            samples = task.prompt_file_samples(task.layout.initial_indices, report, with_images=False)
        if not samples:
            continue
        train_part, eval_part = split_samples(samples, cfg.train.eval_fraction, cfg.seed)
        training += train_part
        held_out += eval_part
    return training, held_out


def fit_presence(bank: EpisodeBank, tasks: list, cfg: Config) -> dict:
    """The presence threshold (:mod:`gpoa.presence`) fitted on the training images of ``bank`` at the
    equal error rate, with what it scores there: ``{"presence_threshold": t, "presence_fit": {...}}``.

    Present examples: the training images that hold the object; absent examples: those that do not
    (the generated corpus has some) and, with several tasks, every image that holds its object paired
    with the next task's reference (its prompts proposed and decoded as for a target). The masks are
    the initial prompts', as at inference. Raises ValueError when there is no absent example.
    """
    present, absent = [], []
    references = {task.name: task for task in tasks}
    names = sorted(references)
    for index in tqdm(range(len(bank)), desc="presence threshold", unit="image"):
        record = bank.record(index)
        sample = record.sample
        masks, _ = bank.decode_prompts(record, [sample.prompt_set.point_prompts()])
        score = mask_presence_score(masks[0], sample.reference, sample.target_features)
        if not sample.truth_mask.any():
            absent.append(score)
            continue
        present.append(score)
        if len(names) > 1:  # the same image as a target of another task: its object is not there
            other = references[names[(names.index(sample.task) + 1) % len(names)]]
            prompts = propose(other.reference, other.classifier, sample.target_features, sample.image, sample.grid,
                              cfg)
            masks, _ = bank.decode_prompts(record, [prompts.point_prompts()])
            absent.append(mask_presence_score(masks[0], other.reference, sample.target_features))
    threshold = fit_presence_threshold(present, absent)
    fit = {"present": len(present), "absent": len(absent),
           "false_absent": float(np.mean(np.asarray(present) < threshold)),
           "false_present": float(np.mean(np.asarray(absent) >= threshold))}
    print(f"[train] presence threshold {threshold:+.4f} on {fit['present']} present and {fit['absent']} absent "
          f"training images (called absent: {100 * fit['false_absent']:.1f} % of present, called present: "
          f"{100 * fit['false_present']:.1f} % of absent)")
    return {"presence_threshold": threshold, "presence_fit": fit}


def _run_dir(cfg: Config) -> Path:
    checkpoints = Path(cfg.train.checkpoints)
    if cfg.train.resume:
        run_dir = checkpoints / cfg.train.run if cfg.train.run else latest_run(checkpoints)
        if not (run_dir / STATE).is_file():
            raise UsageError(f"cannot resume: '{run_dir / STATE}' does not exist; start without --resume")
        return run_dir
    run_dir = checkpoints / (cfg.train.run or time.strftime("run-%Y%m%d-%H%M%S"))
    if (run_dir / LAST).exists() and not cfg.overwrite:
        raise UsageError(f"run '{run_dir}' exists; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another --set train.run=NAME")
    return run_dir


def train_policy(cfg: Config, device: str = "cpu", tasks: Optional[list] = None) -> StageReport:
    """Stage 2 over ``tasks`` (default: the tasks of ``cfg.data``). Under ``torchrun`` every process
    trains the same policy on its own episodes (:mod:`gpoa.distributed`)."""
    device = rank_device(device)
    with process_group(device) as context:
        return _train(cfg, device, tasks, context)


def _saved_best(path: Path, key: str) -> float:
    """The held-out score stored in the policy file ``path`` (-inf when there is none). A run stopped
    between writing ``best.pt`` and ``train_state.pt`` resumes with the state's older best: the file
    on disk is the one a later, worse evaluation must not replace."""
    if not path.is_file():
        return -np.inf
    try:
        return float(torch.load(path, map_location="cpu", weights_only=True)["extra"][key])
    except Exception:  # an unreadable or older file: the state's best stands
        return -np.inf


def _train(cfg: Config, device: str, tasks: Optional[list], context: RunContext) -> StageReport:
    backends = Backends(cfg, device)
    tasks = tasks if tasks is not None else load_tasks(cfg, backends)
    if device == "cpu" and cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    report = StageReport("train")
    segmentation = cfg.env.reward == "segmentation"
    learner = learner_of(cfg)
    # the learner's training episodes (PPD: from ideal prompts) and how its policy will be applied
    train_cfg, run_cfg = learner.training_config(cfg), learner.inference_config(cfg)
    # with several processes each collects its share of the budget, from episodes of its own
    world, main = context.world, context.is_main
    train_cfg = dataclasses.replace(train_cfg, train=dataclasses.replace(
        train_cfg.train, total_steps=-(-cfg.train.total_steps // world)))
    env_seed = cfg.seed if main else stable_seed(cfg.seed, "rank", context.rank)
    train_cfg = dataclasses.replace(train_cfg, seed=env_seed)  # the episodes each rank draws (not the weights)
    if train_cfg.env.start == "ideal" and not segmentation:
        raise UsageError(f"agent.learner={learner.name} starts its episodes from prompts sampled from the truth: "
                         "it needs env.reward=segmentation and training masks")
    training, held_out = episode_sources(cfg, tasks, report)
    if len(training) < 1 or len(training) + len(held_out) < 2:
        raise UsageError(f"training needs at least 2 usable images over the tasks {[t.name for t in tasks]}, "
                         f"found {len(training) + len(held_out)}")
    segmenter = backends.segmenter if segmentation else None
    run_dir = _run_dir(cfg)  # every rank checks (the same files), so a refusal stops them all
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        print(f"[train] {learner.name}: {len(tasks)} task(s), {len(training)} training and {len(held_out)} "
              f"held-out images, {cfg.env.reward} reward, run {run_dir}"
              + (f", {world} processes" if world > 1 else ""))

    capacity = cfg.train.bank_capacity or None
    try:
        bank = EpisodeBank(training, train_cfg, segmenter=segmenter, seed=env_seed, capacity=capacity)
        eval_bank = EpisodeBank(held_out or training[:1], run_cfg, segmenter=segmenter, seed=cfg.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    vec_env = VecPromptEnv(bank, train_cfg, max(1, cfg.train.parallel_envs), seed=env_seed)
    eval_env = PromptEnv(eval_bank, run_cfg, seed=cfg.seed + 10_000)

    # the same seed on every rank: identical initial networks
    agent, best = learner.make_agent(vec_env, cfg, cfg.seed, device), -np.inf
    eval_key = "eval/dice" if segmentation else "eval/score"
    if cfg.train.resume:
        try:
            state = torch.load(run_dir / STATE, map_location=device, weights_only=True)
            if int(state.get("world", 1)) != world:
                raise ValueError(f"the run was trained by {int(state.get('world', 1))} process(es), not {world}")
            agent.load_state_dict(state["agent"])
            best = max(float(state["best"]), _saved_best(run_dir / BEST, eval_key))
        except Exception as exc:  # unreadable file or a network of another shape: same advice
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot resume from '{run_dir / STATE}' ({reason}); resume with the settings the run "
                             "was started with (see its config.yaml) or start a new run") from None
        if main:
            print(f"[train] resuming {run_dir} at step {agent.global_step * world}")
    if world > 1:
        agent.data_parallel(context.rank)
    log = TrainingLog(run_dir / LOG, resume=cfg.train.resume) if main else None
    meta = {"config": config_to_dict(run_cfg), "grid": backends.grid.to_dict(), "reward": cfg.env.reward,
            "segmenter_in_loop": segmenter is not None, "feature_cache_key": backends.feature_key,
            "tasks": [task.name for task in tasks]}
    if main and segmenter is not None:  # the presence threshold this policy's inference applies
        try:
            meta.update(fit_presence(bank, tasks, cfg))
        except ValueError as exc:  # e.g. no image without the object and a single task
            print(f"[train] no presence threshold fitted ({exc}); inference calls no target absent unless "
                  "optimize.presence_threshold is set")
    recent = {"return": [], "dice": []}
    # steps (logs, evaluation, the bar) count transitions over all ranks
    bar = tqdm(total=cfg.train.total_steps, initial=agent.global_step * world, desc=f"train {learner.name}",
               unit="step", disable=not main)
    next_eval = [(agent.global_step * world // cfg.train.eval_every + 1) * cfg.train.eval_every]
    evaluated = [-1]

    def save(name: str, step: int, scores: dict) -> None:
        save_policy(run_dir / name, agent.network, learner=agent.learner, settings=learner.settings(cfg),
                    node_features=NODE_FEATURES, global_features=GLOBAL_FEATURES,
                    extra={**meta, "step": step, **scores})

    def checkpoint(step: int) -> None:
        nonlocal best
        if evaluated[0] == step or not main:  # rank 0 evaluates and writes
            return
        evaluated[0] = step
        scores = evaluate(GreedyPolicy(agent.network, cfg.optimize.gates()[0]), eval_env, seed=cfg.seed)
        log.add(step, scores)
        if scores[eval_key] > best:
            best = scores[eval_key]
            save(BEST, step, scores)
            for role, network in getattr(agent, "companions", dict)().items():  # PPD: the best defender's attacker
                save_policy(run_dir / f"{role}.pt", network, learner=f"{agent.learner}-{role}",
                            settings=learner.settings(cfg), node_features=NODE_FEATURES,
                            global_features=GLOBAL_FEATURES,
                            extra={**meta, "config": config_to_dict(train_cfg), "step": step})
        save(LAST, step, scores)
        buffer = _io.BytesIO()
        torch.save({"agent": agent.state_dict(), "best": best, "world": world}, buffer)
        atomic_write_bytes(run_dir / STATE, buffer.getvalue())
        log.save()
        log.plot(run_dir / "reward_curve.png", cfg.env.reward)
        shown = {k: v for k, v in scores.items() if k.count("/") == 1}
        bar.write(f"[train] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))

    def callback(step: int, logs: dict) -> None:
        if not main:
            return
        step *= world
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
            checkpoint(step)

    try:
        agent = learner.train(vec_env, train_cfg, agent, callback)
    except ValueError as exc:  # a sample that cannot be played (e.g. too many nodes), met when first drawn
        raise UsageError(str(exc)) from None
    checkpoint(agent.global_step * world)
    bar.close()
    barrier()  # the other ranks wait until rank 0 has written the last checkpoint
    report.done.extend(f"{s.task}/{s.name}" for s in training + held_out)
    if main:
        print(f"[train] best {eval_key}={best:.4f}; policy: {run_dir / BEST}")
    return report
