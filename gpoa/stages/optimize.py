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

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.agents.greedy import GreedyPolicy, LookaheadRule, run_greedy
from gpoa.agents.policy_file import check_observation, load_policy
from gpoa.backends import Backends
from gpoa.config import Config, EnvConfig, GraphConfig, save_config
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv
from gpoa.envs.oracle import run_oracle
from gpoa.errors import InputError, UsageError
from gpoa.graph import NODE_FEATURES
from gpoa.io import atomic_write_json, write_prompt_file
from gpoa.prompts import PromptSet
from gpoa.runtime import ONE_PROCESS, RunContext, StageReport, is_fresh, stable_seed
from gpoa.stages.train import resolve_policy
from gpoa.tasks import Task, load_tasks

OPTIMIZED, RANDOM_SUBSET, TOPK = "optimized_indices", "random_subset_indices", "topk_indices"
ORACLE, RULE = "oracle_indices", "lookahead_rule_indices"


def baselines(initial: PromptSet, optimized: PromptSet, margin: np.ndarray, rng: np.random.Generator) -> dict:
    """The two baseline prompt sets with the optimised set's counts (capped at the initial counts).

    ``margin`` (rows * cols,) is each patch's fg − bg nearest-neighbour similarity to the reference.
    """
    n_pos = min(len(optimized.positive_indices), len(initial.positive_indices))
    n_neg = min(len(optimized.negative_indices), len(initial.negative_indices))
    # drawn from the sorted indices: the subset does not depend on the order of the prompt file
    random_pos = np.sort(rng.choice(np.sort(initial.positive_indices), size=n_pos, replace=False))
    random_neg = np.sort(rng.choice(np.sort(initial.negative_indices), size=n_neg, replace=False))
    top_pos = initial.positive_indices[np.argsort(-margin[initial.positive_indices], kind="stable")[:n_pos]]
    top_neg = initial.negative_indices[np.argsort(margin[initial.negative_indices], kind="stable")[:n_neg]]
    make = lambda pos, neg, source: PromptSet(initial.image, initial.original_size, initial.grid, pos, neg, source)  # noqa: E731
    return {RANDOM_SUBSET: make(random_pos, random_neg, "random_subset"), TOPK: make(top_pos, top_neg, "topk")}


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


def action_trace(actions: list, graph) -> list:
    """The actions of an episode as readable entries (node, patch, label), STOP included."""
    return [{"step": i, "action": "stop" if a >= graph.num_nodes else "toggle",
             **({} if a >= graph.num_nodes else {
                 "node": int(a), "patch": int(graph.indices[a]),
                 "label": "positive" if graph.category[a] else "negative"})}
            for i, a in enumerate(actions)]


def optimize_prompts(cfg: Config, device: str = "cpu", tasks: Optional[list] = None) -> StageReport:
    """Stage 3 over ``tasks`` (default: the tasks of ``cfg.data``)."""
    backends = tasks[0].backends if tasks else Backends(cfg, device)  # the tasks' models: loaded once
    tasks = tasks if tasks is not None else load_tasks(cfg, backends)
    policy_path = resolve_policy(cfg)
    policy = load_policy(policy_path, device="cpu")
    check_observation(policy, policy_path, NODE_FEATURES, GLOBAL_FEATURES)
    meta = policy.extra
    if meta.get("feature_cache_key", backends.feature_key) != backends.feature_key:
        raise UsageError(f"policy '{policy_path}' was trained on '{meta['feature_cache_key']}' features but this "
                         f"config gives '{backends.feature_key}'; run with the features settings the policy was "
                         "trained with")
    if meta.get("grid") != backends.grid.to_dict():
        raise UsageError(f"policy '{policy_path}' was trained on grid {meta.get('grid')} but this config uses "
                         f"{backends.grid.to_dict()}; run with the features settings the policy was trained with")
    # the observation layout and the start state are fixed by the training run: take its graph and
    # environment settings (an "ideal" start needs ground truth, so inference starts from the prompts)
    trained_env = meta["config"]["env"]
    start = "initial" if trained_env["start"] == "ideal" else trained_env["start"]
    run_cfg = dataclasses.replace(cfg, graph=GraphConfig(**meta["config"]["graph"]),
                                  env=EnvConfig(**{**trained_env, "reward": "graph", "start": start}))
    in_loop = bool(meta.get("segmenter_in_loop"))
    greedy = GreedyPolicy.gated(policy.network, cfg.optimize, in_loop)
    # the gates are part of the source: a rerun with other gates is not mistaken for a finished one
    gates = "".join(f" [{name}={value:g}]" for name, value in (("stop_margin", greedy.stop_margin),
                                                                ("min_region_confidence", greedy.min_confidence))
                    if value)
    source = f"gpoa-{policy.learner}:{policy_path}{gates}"
    report = StageReport("optimize")
    context = RunContext.from_settings(cfg.shard)
    for task in tasks:
        optimize_task(task, backends, run_cfg, greedy, in_loop, policy_path, source, report, context)
    return report


def optimize_task(task: Task, backends: Backends, run_cfg: Config, greedy: GreedyPolicy, in_loop: bool,
                  policy_path: Path, source: str, report: StageReport, context: RunContext = ONE_PROCESS) -> None:
    """Stage 3 for one task, this process's share of its targets (see :func:`optimize_prompts`)."""
    cfg, layout = task.cfg, task.layout
    layout.require("reference", "targets")
    oracle = cfg.optimize.oracle and layout.has_truth
    out = layout.prompt_folder(OPTIMIZED)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rule = in_loop and run_cfg.env.lookahead
    folders = [OPTIMIZED, RANDOM_SUBSET, TOPK] + ([RULE] if rule else [])
    # the hand-made baseline, under the policy's confidence gate: the two edit the same targets
    rule_policy = LookaheadRule(NODE_FEATURES, min_confidence=greedy.min_confidence,
                                confidence_index=greedy.confidence_index)

    share = {p.stem for p in context.mine(layout.targets)}

    def done_before(stem: str) -> bool:
        if stem not in share:  # another process's image
            return True
        wanted = folders + ([ORACLE] if oracle and layout.target_mask(stem) is not None else [])
        outputs = [layout.prompt_folder(f) / f"{stem}.json" for f in wanted]
        if cfg.overwrite or not _up_to_date(task, stem, outputs, policy_path, source):
            return False
        report.skipped.append((f"{task.name}/{stem}", "exists"))
        return True

    sources = task.prompt_file_samples(layout.initial_indices, report, with_images=in_loop or oracle,
                                       with_truth=oracle, skip=done_before)
    for lazy in tqdm(sources, desc=f"optimize [{task.name}]", unit="image"):
        name = f"{task.name}/{lazy.name}"
        try:
            sample = lazy.load()
            bank = EpisodeBank([sample], run_cfg, backends.segmenter if in_loop else None, seed=cfg.seed)
            env = PromptEnv(bank, run_cfg, seed=cfg.seed)
            actions, info, _ = run_greedy(greedy, env, options={"sample": 0}, seed=cfg.seed)
        except (InputError, ValueError) as exc:
            report.fail(name, str(exc))
            continue
        optimized = env.prompt_set(source=source)
        graph = env.graph
        write_prompt_file(out / f"{sample.name}.json", optimized)
        atomic_write_json(out / "traces" / f"{sample.name}.json",
                          {"policy": str(policy_path), "actions": action_trace(actions, graph),
                           "positives": int(info["positives"]), "negatives": int(info["negatives"])})
        margin = np.zeros(task.grid.num_patches, dtype=np.float32)
        margin[graph.indices] = graph.match_score
        rng = np.random.default_rng(stable_seed(cfg.seed, "random_subset", sample.name))
        for folder, prompt_set in baselines(sample.prompt_set, optimized, margin, rng).items():
            write_prompt_file(layout.prompt_folder(folder) / f"{sample.name}.json", prompt_set)
        if rule:  # the hand-made baseline on the same candidates and observations
            rule_env = PromptEnv(bank, run_cfg, seed=cfg.seed)
            rule_actions, _, _ = run_greedy(rule_policy, rule_env, options={"sample": 0}, seed=cfg.seed)
            write_labelled(layout, RULE, sample.name, rule_env, rule_actions, "lookahead_rule")
        if oracle and sample.truth_mask is not None:
            oracle_bank = bank if in_loop else EpisodeBank([sample], run_cfg, backends.segmenter, seed=cfg.seed)
            oracle_env = PromptEnv(oracle_bank, run_cfg, seed=cfg.seed)
            oracle_actions, _ = run_oracle(oracle_env, options={"sample": 0}, seed=cfg.seed)
            write_labelled(layout, ORACLE, sample.name, oracle_env, oracle_actions, "oracle")
        report.done.append(name)


def write_labelled(layout, folder: str, stem: str, env: PromptEnv, actions: list, source: str) -> None:
    """A baseline episode's prompts and action trace: ``<folder>/<stem>.json`` and ``<folder>/traces/``."""
    write_prompt_file(layout.prompt_folder(folder) / f"{stem}.json", env.prompt_set(source=source))
    atomic_write_json(layout.prompt_folder(folder) / "traces" / f"{stem}.json",
                      {"actions": action_trace(actions, env.graph)})
