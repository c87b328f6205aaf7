"""Stage 3: run a trained policy greedily on every initial prompt file → ``optimized_indices/``.

For each ``initial_indices/<stem>.json`` the policy edits the prompt set on its dual-space graph
(ε = 0, deterministic) and the result is written to ``optimized_indices/<stem>.json`` (``source``
names the checkpoint) with the action trace in ``optimized_indices/traces/<stem>.json``. Two
baselines with the optimised set's prompt counts are written beside it for stage 4 to evaluate:

- ``random_subset_indices/`` — a random subset of the initial prompts (what the original code's
  inference amounts to);
- ``topk_indices/`` — the initial positives and negatives that match the reference best.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from tqdm import tqdm

from gpoa.agents.dqn import GreedyPolicy, load_policy, run_greedy
from gpoa.config import Config, EnvConfig, GraphConfig, save_config
from gpoa.env import GLOBAL_FEATURES, PromptEnv
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES
from gpoa.io import DatasetLayout, atomic_write_json, write_prompt_file
from gpoa.prompts import PromptSet
from gpoa.segmenters import build_segmenter
from gpoa.stages.common import (
    FeatureStore,
    StageReport,
    is_fresh,
    load_reference,
    prompt_file_samples,
    stable_seed,
)
from gpoa.stages.train import resolve_policy

OPTIMIZED, RANDOM_SUBSET, TOPK = "optimized_indices", "random_subset_indices", "topk_indices"


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


def _up_to_date(layout: DatasetLayout, stem: str, target, policy_path, source: str) -> bool:
    """Whether an earlier run already optimised ``stem``'s current initial prompts with this very
    policy file (resume)."""
    inputs = (policy_path, layout.initial_indices / f"{stem}.json")
    outputs = [target] + [layout.prompt_folder(f) / f"{stem}.json" for f in (RANDOM_SUBSET, TOPK)]
    if not all(is_fresh(p, *inputs) for p in outputs):
        return False
    try:
        return json.loads(target.read_text()).get("source") == source
    except (OSError, ValueError):
        return False


def optimize_prompts(cfg: Config, device: str = "cpu") -> StageReport:
    layout = DatasetLayout(cfg.data)
    layout.require("target_image")
    policy_path = resolve_policy(cfg)
    network, meta = load_policy(policy_path, device="cpu")
    if (network.node_dim, network.global_dim) != (len(NODE_FEATURES), len(GLOBAL_FEATURES)):
        raise UsageError(f"policy '{policy_path}' observes {network.node_dim} node and {network.global_dim} graph "
                         f"features, this version of GPOA gives {len(NODE_FEATURES)} and {len(GLOBAL_FEATURES)}: it "
                         "was trained by another version; retrain it with train_GPOA.py (the demo's: make clean-demo)")
    store = FeatureStore(cfg, layout, device)
    if meta.get("feature_cache_key", store.key) != store.key:
        raise UsageError(f"policy '{policy_path}' was trained on '{meta['feature_cache_key']}' features but this "
                         f"config gives '{store.key}'; run with the features settings the policy was trained with")
    if meta.get("grid") != store.grid.to_dict():
        raise UsageError(f"policy '{policy_path}' was trained on grid {meta.get('grid')} but this config uses "
                         f"{store.grid.to_dict()}; run with the features settings the policy was trained with")
    # the observation layout and the start state are fixed by the training run: take its graph and
    # environment settings (an "ideal" start needs ground truth, so inference starts from the prompts)
    trained_env = meta["config"]["env"]
    start = "initial" if trained_env["start"] == "ideal" else trained_env["start"]
    run_cfg = dataclasses.replace(cfg, graph=GraphConfig(**meta["config"]["graph"]),
                                  env=EnvConfig(**{**trained_env, "reward": "graph", "start": start}))
    reference = load_reference(cfg, layout, store)
    in_loop = bool(meta.get("segmenter_in_loop"))
    segmenter = build_segmenter(cfg, device=device) if in_loop else None

    report = StageReport("optimize")
    out = layout.prompt_folder(OPTIMIZED)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    source = f"gpoa-dqn:{policy_path}"

    def done_before(stem: str) -> bool:
        if cfg.overwrite or not _up_to_date(layout, stem, out / f"{stem}.json", policy_path, source):
            return False
        report.skipped.append((stem, "exists"))
        return True

    samples = prompt_file_samples(layout, store, layout.initial_indices, report, with_images=in_loop,
                                  skip=done_before)
    policy = GreedyPolicy(network)
    for sample in tqdm(samples, desc="optimize", unit="image"):
        target = out / f"{sample.name}.json"
        try:
            env = PromptEnv([sample], reference, run_cfg, segmenter=segmenter, seed=cfg.seed)
        except ValueError as exc:
            report.fail(sample.name, str(exc))
            continue
        actions, info, _ = run_greedy(policy, env, options={"sample": 0}, seed=cfg.seed)
        optimized = env.prompt_set(source=source)
        graph = env.graph
        trace = [{"step": i, "action": "stop" if a >= graph.num_nodes else "toggle",
                  **({} if a >= graph.num_nodes else {
                      "node": int(a), "patch": int(graph.indices[a]),
                      "label": "positive" if graph.category[a] else "negative"})}
                 for i, a in enumerate(actions)]
        write_prompt_file(target, optimized)
        atomic_write_json(out / "traces" / f"{sample.name}.json",
                          {"policy": str(policy_path), "actions": trace,
                           "positives": int(info["positives"]), "negatives": int(info["negatives"])})
        margin = np.zeros(store.grid.num_patches, dtype=np.float32)
        margin[graph.indices] = graph.match_score
        rng = np.random.default_rng(stable_seed(cfg.seed, "random_subset", sample.name))
        for folder, prompt_set in baselines(sample.prompt_set, optimized, margin, rng).items():
            write_prompt_file(layout.prompt_folder(folder) / f"{sample.name}.json", prompt_set)
        report.done.append(sample.name)
    return report
