"""Stage 3: run a trained policy greedily on every initial prompt file → ``optimized_indices/``.

Runs over every task of ``cfg.data`` with one policy. For each ``initial_indices/<stem>.json`` the
policy edits the prompt set on its dual-space graph (deterministic; a toggle is taken only when
its score beats STOP's by ``optimize.stop_margin``) and the result is written to
``optimized_indices/<stem>.json`` (``source`` names the checkpoint) with the action trace in
``optimized_indices/traces/<stem>.json``. Baselines with the optimised set's prompt counts are
written beside it for stage 4 to evaluate:

- ``random_subset_indices/`` — a random subset of the initial prompts (what the original code's
  inference amounts to);
- ``topk_indices/`` — the initial positives and negatives that match the reference best;
- ``lookahead_rule_indices/`` (when the policy sees the lookahead) — a hand-made label-free rule on
  the same observations (:class:`~gpoa.agents.greedy.LookaheadRule`): what learning adds to it;
- ``oracle_indices/`` (with ``optimize.oracle=true`` and target masks) — the greedy oracle
  (:mod:`gpoa.envs.oracle`) over the same candidates and start state as the policy: how much of
  the reachable gain the policy takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.backends import Backends
from gpoa.config import Config, save_config
from gpoa.errors import InputError
from gpoa.inference import (
    TAUGHT_REFERENCE,
    Optimizer,
    load_optimizer,
    optimize_sample,
    taught_reference_digest,
)
from gpoa.io import atomic_write_json, write_prompt_file
from gpoa.runtime import ONE_PROCESS, RunContext, StageReport, is_fresh, stable_seed
from gpoa.stages.train import resolve_policy
from gpoa.tasks import Task, load_tasks

OPTIMIZED, RANDOM_SUBSET, TOPK = "optimized_indices", "random_subset_indices", "topk_indices"
ORACLE, RULE = "oracle_indices", "lookahead_rule_indices"


def _up_to_date(task: Task, stem: str, outputs: list, policy_path: Path, source: str) -> bool:
    """Whether an earlier run already optimised ``stem``'s current initial prompts with this very
    policy file (resume)."""
    inputs = (policy_path, task.layout.initial_indices / f"{stem}.json")
    if not all(is_fresh(p, *inputs) for p in outputs):
        return False
    try:
        return json.loads(outputs[0].read_text()).get("source") == source
    except (OSError, ValueError):
        return False


def optimize_prompts(cfg: Config, device: str = "cpu", tasks: Optional[list] = None) -> StageReport:
    """Stage 3 over ``tasks`` (default: the tasks of ``cfg.data``)."""
    backends = tasks[0].backends if tasks else Backends(cfg, device)  # the tasks' models: loaded once
    optimizer = load_optimizer(resolve_policy(cfg), cfg, backends.feature_key, backends.grid)
    # a taught policy's references replace the tasks' (as they did in stage 1)
    tasks = tasks if tasks is not None else load_tasks(cfg, backends, taught_reference=optimizer.reference)
    report = StageReport("optimize")
    context = RunContext.from_settings(cfg.shard)
    for task in tasks:
        optimize_task(task, backends, optimizer, report, context)
    return report


def optimize_task(task: Task, backends: Backends, optimizer: Optimizer, report: StageReport,
                  context: RunContext = ONE_PROCESS) -> None:
    """Stage 3 for one task, this process's share of its targets (see :func:`optimize_prompts`); each
    target is :func:`gpoa.inference.optimize_sample`'s work, written to the task's prompt folders."""
    cfg, layout = task.cfg, task.layout
    layout.require("reference", "targets")
    oracle = cfg.optimize.oracle and layout.has_truth
    in_loop, policy_path = optimizer.in_loop, optimizer.path
    out = layout.prompt_folder(OPTIMIZED)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    folders = [OPTIMIZED, RANDOM_SUBSET, TOPK] + ([RULE] if optimizer.rule is not None else [])
    share = {p.stem for p in context.mine(layout.targets)}

    def done_before(stem: str) -> bool:
        if stem not in share:  # another process's image
            return True
        wanted = folders + ([ORACLE] if oracle and layout.target_mask(stem) is not None else [])
        outputs = [layout.prompt_folder(f) / f"{stem}.json" for f in wanted]
        if cfg.overwrite or not _up_to_date(task, stem, outputs, policy_path, optimizer.source):
            return False
        report.skipped.append((f"{task.name}/{stem}", "exists"))
        return True

    with_images = in_loop or oracle or optimizer.presence_threshold is not None  # presence decodes the image
    sources = task.prompt_file_samples(layout.initial_indices, report, with_images=with_images,
                                       with_truth=oracle, skip=done_before)
    taught = None if optimizer.reference is None else taught_reference_digest(optimizer.reference)
    for lazy in tqdm(sources, desc=f"optimize [{task.name}]", unit="image"):
        name = f"{task.name}/{lazy.name}"
        try:
            sample = lazy.load()
            if taught is not None and sample.prompt_set.extra.get(TAUGHT_REFERENCE) != taught:
                raise InputError(layout.initial_indices / f"{lazy.name}.json",
                                 f"was not matched against the references of the taught policy '{policy_path}'",
                                 f"run gpoa prompts --policy {policy_path} first")
            rng = np.random.default_rng(stable_seed(cfg.seed, "random_subset", lazy.content))
            result = optimize_sample(optimizer, sample, backends.segmenter, cfg.seed, baseline_rng=rng, rule=True,
                                     oracle=oracle)
        except (InputError, ValueError) as exc:
            report.fail(name, str(exc))
            continue
        policy = result.policy
        write_prompt_file(out / f"{sample.name}.json", policy.prompt_set)
        atomic_write_json(out / "traces" / f"{sample.name}.json",
                          {"policy": str(policy_path), "actions": policy.trace(),
                           "positives": int(policy.info["positives"]), "negatives": int(policy.info["negatives"])})
        for kind, prompt_set in result.baselines.items():
            write_prompt_file(layout.prompt_folder(f"{kind}_indices") / f"{sample.name}.json", prompt_set)
        for folder, edit in ((RULE, result.rule), (ORACLE, result.oracle)):
            if edit is not None:
                write_prompt_file(layout.prompt_folder(folder) / f"{sample.name}.json", edit.prompt_set)
                atomic_write_json(layout.prompt_folder(folder) / "traces" / f"{sample.name}.json",
                                  {"actions": edit.trace()})
        report.done.append(name)
