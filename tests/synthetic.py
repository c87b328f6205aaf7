"""Synthetic graphs, episode samples and a counting fake segmenter shared by the graph, environment
and oracle tests (tiny, no files, no models)."""

from __future__ import annotations

import numpy as np

from gpoa.config import Config, GraphConfig
from gpoa.graph import build_graph
from gpoa.grid import PatchGrid
from gpoa.matching import build_reference
from gpoa.prompts import PromptSet
from gpoa.samples import EpisodeSample

GRID = PatchGrid.square(140, 14)  # 10 x 10 patches of 14 px
SIZE = (140, 140)  # original image (width, height)
OBJECT = GRID.rc_to_index(*np.meshgrid(np.arange(2, 6), np.arange(2, 6), indexing="ij")).reshape(-1)
DISTRACTOR = 88  # (8, 8): looks like the object, far from it
OUTLIER = 81  # (8, 1): looks like background


def random_graph(seed: int, positives: int = 4, negatives: int = 12, extra: int = 5):
    """A graph over random features → (graph, (target features, prompt set, reference, graph config))."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(GRID.rows, GRID.cols, 8)).astype(np.float32)
    reference_features = rng.normal(size=(GRID.rows, GRID.cols, 8)).astype(np.float32)
    fraction = np.zeros((GRID.rows, GRID.cols))
    fraction[3:7, 3:7] = 1.0
    reference = build_reference([reference_features], [fraction], 0.5)
    order = rng.permutation(GRID.num_patches)
    prompt_set = PromptSet("random", SIZE, GRID, order[:positives], order[positives:positives + negatives])
    cfg = GraphConfig(extra_positive=extra, extra_negative=extra, negative_ring=0.0, positive_spacing=0.0,
                      negative_spacing=0.0)  # candidates in rank order
    return build_graph(GRID, target, prompt_set, reference, cfg), (target, prompt_set, reference, cfg)


def scene_features(rng: np.random.Generator, distractor: bool, dim: int = 16) -> np.ndarray:
    """Background patches near e1, object patches (and the distractor) near e0, (rows, cols, dim)."""
    features = 0.3 * rng.normal(size=(GRID.num_patches, dim))
    features[:, 1] += 1.0
    like_object = np.r_[OBJECT, DISTRACTOR] if distractor else OBJECT
    features[like_object, 1] -= 1.0
    features[like_object, 0] += 1.0
    return features.reshape(GRID.rows, GRID.cols, dim).astype(np.float32)


def truth_mask() -> np.ndarray:
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    mask[28:84, 28:84] = True  # exactly the OBJECT patches
    return mask


def scene(name: str = "scene", seed: int = 0, task: str = "scenes") -> EpisodeSample:
    """A sample whose prompts hold object positives, a distractor positive and a background-like
    positive; its reference (the object alone) rides on the sample."""
    rng = np.random.default_rng(seed)
    fraction = np.zeros((GRID.rows, GRID.cols))
    fraction.reshape(-1)[OBJECT] = 1.0
    reference = build_reference([scene_features(rng, distractor=False)], [fraction], 0.5)
    positives = [OBJECT[5], OBJECT[6], OBJECT[9], OBJECT[10], DISTRACTOR, OUTLIER]
    negatives = [0, 9, 90, 99, 47, 50, 7, 70]
    prompt_set = PromptSet(name, SIZE, GRID, positives, negatives, source="matching")
    image = rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    return EpisodeSample(name, GRID, scene_features(rng, distractor=True), prompt_set, reference, image=image,
                         truth_mask=truth_mask(), task=task)


def random_sample(seed: int, task: str = "random") -> EpisodeSample:
    """A scene with random prompts (1-6 positives, 0-8 negatives) and a random object rectangle."""
    rng = np.random.default_rng(seed)
    sample = scene(f"r{seed}", seed, task)
    order = rng.permutation(GRID.num_patches)
    n_pos, n_neg = int(rng.integers(1, 7)), int(rng.integers(0, 9))
    sample.prompt_set = PromptSet(sample.name, SIZE, GRID, order[:n_pos], order[n_pos:n_pos + n_neg])
    top, left = rng.integers(0, 70, size=2)
    height, width = rng.integers(20, 70, size=2)
    truth = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    truth[top:top + height, left:left + width] = True
    sample.truth_mask = truth
    return sample


class DiscSegmenter:
    """Mask = union of discs around the positive points minus discs around the negative points.

    Counts its calls: ``embed_calls``, ``decode_calls`` and ``decoded`` (prompt sets decoded).
    """

    def __init__(self, radius: float = 14.0):
        self.radius = radius
        self.embed_calls = 0
        self.decode_calls = 0
        self.decoded = 0

    def embed(self, image: np.ndarray):
        self.embed_calls += 1
        return image.shape[:2]

    def decode(self, embedding, prompt_sets):
        self.decode_calls += 1
        self.decoded += len(prompt_sets)
        height, width = embedding
        yy, xx = np.mgrid[:height, :width]
        masks = np.zeros((len(prompt_sets), height, width), dtype=bool)
        for mask, prompts in zip(masks, prompt_sets):
            discs = [(xx - x) ** 2 + (yy - y) ** 2 <= self.radius ** 2 for x, y in prompts.points]
            for disc, label in zip(discs, prompts.labels):
                if label == 1:
                    mask |= disc
            for disc, label in zip(discs, prompts.labels):
                if label == 0:
                    mask &= ~disc
        return masks, masks.any(axis=(1, 2)).astype(np.float32)


def make_cfg(**env) -> Config:
    """A config for the environment's mechanics on these small scenes, then the given ``env.*``
    settings: 4 + 4 candidates in rank order (no spacing, no ring), the graph reward, 24 steps, no
    shield, Dice changes as they are (harm weight 1, no step penalty) and no agreement prior."""
    cfg = Config()
    cfg.graph = GraphConfig(extra_positive=4, extra_negative=4, negative_ring=0.0, positive_spacing=0.0,
                            negative_spacing=0.0)
    cfg.env.reward = "graph"
    cfg.env.episode_length = 24
    cfg.env.shield = -1.0
    cfg.env.harm_weight = 1.0
    cfg.env.step_penalty = 0.0
    cfg.env.max_nodes = 512
    cfg.agent.agreement_prior = 0.0
    for key, value in env.items():
        setattr(cfg.env, key, value)
    return cfg


def node_of(env, patch: int, category: int) -> int:
    """The node of ``env``'s graph on ``patch`` with ``category`` (1 positive, 0 negative)."""
    return int(np.flatnonzero((env.graph.indices == patch) & (env.graph.category == category))[0])
