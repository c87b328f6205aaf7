#!/usr/bin/env python
"""Agent speed: graph build, environment step, greedy optimisation of one image, decode share.

Two settings are measured on one CPU thread:

1. the paper's scale: 34 positives + 400 negatives (434 nodes) on a 40 x 40 grid with DINOv2-L-like
   1024-d features, graph reward, no segmenter;
2. the demo data (``--data``, default data/demo/membrane, generated if missing): graph reward, and
   segmentation reward with the classical segmenter in the loop (share of step time inside decode).

``build_ms`` builds the graph from the matching similarities (stage 1 computes them anyway);
``match_ms`` is that matching (every target patch against every reference patch) on its own.
``optimise_ms`` = build + a greedy 100-step episode (STOP masked so all 100 steps run).
The last line is machine-readable:
``nodes=434 build_ms=… step_ms=… optimise_ms=… decode_share=…``
"""

from __future__ import annotations

import os

# one CPU thread, as the targets are stated: fixed before numpy loads its BLAS (a second BLAS thread
# makes the small per-step matrix products slower, not faster)
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from timing import time_ms

from gpoa.agents.greedy import GreedyPolicy
from gpoa.agents.network import NodeSetNetwork
from gpoa.config import Config, load_config
from gpoa.envs import EpisodeBank, PromptEnv, VecPromptEnv
from gpoa.graph import build_graph
from gpoa.grid import PatchGrid
from gpoa.matching import build_reference, l2_normalise, reference_similarity
from gpoa.prompts import PromptSet
from gpoa.samples import EpisodeSample

ROOT = Path(__file__).resolve().parents[1]


def synthetic_case(dim: int, seed: int = 0):
    """A 40 x 40 grid, a reference with a foreground blob, 34 positive + 400 negative prompts."""
    rng = np.random.default_rng(seed)
    grid = PatchGrid.square(560, 14)
    object_feature, background_feature = rng.normal(size=dim), rng.normal(size=dim)
    fraction = np.zeros((40, 40))
    fraction[12:28, 10:30] = 1.0
    reference = l2_normalise(np.where(fraction[..., None] > 0, object_feature, background_feature)
                             + 0.8 * rng.normal(size=(40, 40, dim)))
    target = l2_normalise(np.where(np.roll(fraction, 5, axis=1)[..., None] > 0, object_feature, background_feature)
                          + 0.8 * rng.normal(size=(40, 40, dim)))
    ref = build_reference([reference], [fraction], 0.5)
    order = rng.permutation(grid.num_patches)
    prompt_set = PromptSet("synthetic.png", (640, 480), grid, order[:34], order[34:434], source="benchmark")
    return grid, target.astype(np.float32), ref, prompt_set


def greedy_steps(env: PromptEnv, policy: GreedyPolicy, steps: int) -> int:
    """Up to ``steps`` greedy actions with STOP masked out; returns how many were taken (fewer only
    when every node has been toggled once)."""
    obs, _ = env.reset(options={"sample": 0})
    for taken in range(steps):
        mask = env.action_masks()
        mask[env.stop_action] = False
        if not mask.any():
            return taken
        obs, _, terminated, truncated, _ = env.step(policy(obs, mask))
        if terminated or truncated:
            return taken + 1
    return steps


def paper_scale(repeats: int) -> dict:
    grid, target, reference, prompt_set = synthetic_case(dim=1024)
    cfg = Config()
    cfg.env = dataclasses.replace(cfg.env, reward="graph", episode_length=100, max_nodes=512)
    cfg.graph = dataclasses.replace(cfg.graph, extra_positive=0, extra_negative=0)
    _, fg, bg = reference_similarity(reference, target.reshape(-1, target.shape[-1]))
    match_ms = time_ms(lambda: reference_similarity(reference, target.reshape(-1, target.shape[-1])), repeats)
    build_ms = time_ms(lambda: build_graph(grid, target, prompt_set, reference, cfg.graph, (fg, bg)), repeats)
    with_context = dataclasses.replace(cfg.graph, match_context=True)
    context_ms = time_ms(lambda: build_graph(grid, target, prompt_set, reference, with_context, (fg, bg)), repeats)
    sample = EpisodeSample("synthetic", grid, target, prompt_set, reference)
    env = PromptEnv([sample], cfg, seed=0)
    torch.manual_seed(0)
    space = env.observation_space
    policy = GreedyPolicy(NodeSetNetwork(space["nodes"].shape[1], space["globals"].shape[0], cfg.dqn.hidden))
    episode_ms = time_ms(lambda: greedy_steps(env, policy, 100), repeats)
    optimise_ms = time_ms(lambda: (build_graph(grid, target, prompt_set, reference, cfg.graph, (fg, bg)),
                                     greedy_steps(env, policy, 100)), repeats)
    return {"nodes": env.graph.num_nodes, "match_ms": match_ms, "build_ms": build_ms,
            "build_context_ms": context_ms, "step_ms": episode_ms / 100, "optimise_ms": optimise_ms}


class TimedSegmenter:
    """Wraps a segmenter and adds up the seconds spent in ``decode``."""

    def __init__(self, segmenter):
        self.segmenter, self.decode_seconds = segmenter, 0.0

    def embed(self, image):
        return self.segmenter.embed(image)

    def decode(self, embedding, prompt_sets):
        start = time.perf_counter()
        result = self.segmenter.decode(embedding, prompt_sets)
        self.decode_seconds += time.perf_counter() - start
        return result


def demo_case(data: Path, steps: int) -> dict:
    from gpoa.backends import Backends
    from gpoa.runtime import StageReport
    from gpoa.tasks import load_tasks

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    cfg.data = [str(data)]
    backends = Backends(cfg)
    (task,) = load_tasks(cfg, backends)
    samples = [lazy.load() for lazy in task.training_samples(StageReport("bench"))[:4]]
    segmenter = TimedSegmenter(backends.segmenter)
    cfg.env = dataclasses.replace(cfg.env, reward="segmentation", episode_length=steps)
    vec_env = VecPromptEnv(EpisodeBank(samples, cfg, segmenter=segmenter, seed=0), cfg, num_envs=8, seed=0)
    rng = np.random.default_rng(0)
    vec_env.reset(seed=int(rng.integers(1 << 30)))
    segmenter.decode_seconds = 0.0
    start, transitions = time.perf_counter(), 0
    for _ in range(steps):
        actions = []
        for mask in vec_env.action_masks():
            mask[-1] = False  # STOP masked: every step toggles
            actions.append(int(rng.choice(np.flatnonzero(mask))) if mask.any() else len(mask) - 1)
        for k, (_, _, terminated, truncated, _) in enumerate(vec_env.step(actions)):
            transitions += 1
            if terminated or truncated:
                vec_env.reset_one(k)
    total = time.perf_counter() - start
    nodes = int(np.mean([e.graph.num_nodes for e in vec_env.envs]))
    graph_env = PromptEnv(samples, dataclasses.replace(cfg, env=dataclasses.replace(
        cfg.env, reward="graph", episode_length=100)), seed=0)
    space = graph_env.observation_space
    torch.manual_seed(0)
    policy = GreedyPolicy(NodeSetNetwork(space["nodes"].shape[1], space["globals"].shape[0], cfg.dqn.hidden))
    taken = greedy_steps(graph_env, policy, 100)
    return {"demo_nodes": nodes, "demo_seg_step_ms": 1000 * total / transitions,
            "decode_share": segmenter.decode_seconds / total,
            "demo_graph_step_ms": time_ms(lambda: greedy_steps(graph_env, policy, 100), 5) / taken}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo" / "membrane")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="segmentation-reward steps of 8 batched envs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (args.data / "train_image").is_dir():
        from gpoa.synth.demo import write_demo_dataset

        write_demo_dataset(args.data.parent, seed=0, families=[args.data.name])
    paper = paper_scale(args.repeats)
    print(f"434-node graph, graph reward: match {paper['match_ms']:.2f} ms, build {paper['build_ms']:.2f} ms "
          f"({paper['build_context_ms']:.2f} ms with graph.match_context), step {paper['step_ms']:.3f} ms, build + greedy 100-step episode {paper['optimise_ms']:.2f} ms")
    demo = demo_case(args.data, args.steps)
    print(f"demo data ({demo['demo_nodes']} nodes): graph-reward step {demo['demo_graph_step_ms']:.3f} ms; "
          f"segmentation-reward step {demo['demo_seg_step_ms']:.2f} ms per env, "
          f"{100 * demo['decode_share']:.1f} % of it inside decode")
    print(f"nodes={paper['nodes']} build_ms={paper['build_ms']:.2f} step_ms={paper['step_ms']:.3f} "
          f"optimise_ms={paper['optimise_ms']:.2f} decode_share={demo['decode_share']:.3f}")


if __name__ == "__main__":
    main()
