"""The dual-space graph (incremental statistics, candidates, score) and the prompt-editing environment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from gpoa.config import Config, GraphConfig, MatchingConfig
from gpoa.env import GLOBAL_FEATURES, EpisodeSample, PromptEnv, step_batch
from gpoa.graph import CONTEXT_RADII, NODE_FEATURES, build_graph, match_context
from gpoa.grid import PatchGrid
from gpoa.matching import build_reference, match_prompts
from gpoa.prompts import PromptSet

GRID = PatchGrid.square(140, 14)  # 10 x 10 patches of 14 px
SIZE = (140, 140)  # original image (width, height)
OBJECT = GRID.rc_to_index(*np.meshgrid(np.arange(2, 6), np.arange(2, 6), indexing="ij")).reshape(-1)
DISTRACTOR = 88  # (8, 8): looks like the object, far from it
OUTLIER = 81  # (8, 1): looks like background


# ----- synthetic inputs --------------------------------------------------------------------------
def random_graph(seed: int, positives: int = 4, negatives: int = 12, extra: int = 5):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(GRID.rows, GRID.cols, 8)).astype(np.float32)
    reference_features = rng.normal(size=(GRID.rows, GRID.cols, 8)).astype(np.float32)
    fraction = np.zeros((GRID.rows, GRID.cols))
    fraction[3:7, 3:7] = 1.0
    reference = build_reference([reference_features], [fraction], 0.5)
    order = rng.permutation(GRID.num_patches)
    prompt_set = PromptSet("random", SIZE, GRID, order[:positives], order[positives:positives + negatives])
    cfg = GraphConfig(extra_positive=extra, extra_negative=extra)
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


def scene(name: str = "scene", seed: int = 0):
    """A sample whose prompts hold object positives, a distractor positive and a background-like positive."""
    rng = np.random.default_rng(seed)
    fraction = np.zeros((GRID.rows, GRID.cols))
    fraction.reshape(-1)[OBJECT] = 1.0
    reference = build_reference([scene_features(rng, distractor=False)], [fraction], 0.5)
    positives = [OBJECT[5], OBJECT[6], OBJECT[9], OBJECT[10], DISTRACTOR, OUTLIER]
    negatives = [0, 9, 90, 99, 47, 50, 7, 70]
    prompt_set = PromptSet(name, SIZE, GRID, positives, negatives, source="matching")
    image = rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    sample = EpisodeSample(name, GRID, scene_features(rng, distractor=True), prompt_set, image=image,
                           truth_mask=truth_mask())
    return sample, reference


class DiscSegmenter:
    """Mask = union of discs around the positive points minus discs around the negative points."""

    def __init__(self, radius: float = 14.0):
        self.radius = radius
        self.embed_calls = 0
        self.decode_calls = 0

    def embed(self, image: np.ndarray):
        self.embed_calls += 1
        return image.shape[:2]

    def decode(self, embedding, prompt_sets):
        self.decode_calls += 1
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
    cfg = Config()
    cfg.graph.extra_positive = 4
    cfg.graph.extra_negative = 4
    cfg.env.reward = "graph"
    for key, value in env.items():
        setattr(cfg.env, key, value)
    return cfg


def node_of(env: PromptEnv, patch: int, category: int) -> int:
    return int(np.flatnonzero((env.graph.indices == patch) & (env.graph.category == category))[0])


# ----- graph -----------------------------------------------------------------------------------
def brute_force_features(graph) -> np.ndarray:
    """The eight distance columns of node_features straight from the dense matrices."""
    columns = np.zeros((graph.num_nodes, len(NODE_FEATURES)))
    for i in range(graph.num_nodes):
        for space, distance in (("feature", graph.feature_distance), ("physical", graph.physical_distance)):
            for side, category in (("positive", 1), ("negative", 0)):
                others = graph.active & (graph.category == category)
                others[i] = False
                values = distance[i, others].astype(np.float64)
                mean, minimum = (values.mean(), values.min()) if len(values) else (1.0, 1.0)
                columns[i, NODE_FEATURES.index(f"{space}_distance_{side}_mean")] = mean
                columns[i, NODE_FEATURES.index(f"{space}_distance_{side}_min")] = minimum
    return columns


def brute_force_terms(graph) -> np.ndarray:
    positive = np.flatnonzero(graph.active & (graph.category == 1))
    negative = np.flatnonzero(graph.active & (graph.category == 0))
    fd, pd = graph.feature_distance.astype(np.float64), graph.physical_distance.astype(np.float64)

    def mean_pairs(distance, nodes):
        if len(nodes) < 2:
            return None
        return distance[np.ix_(nodes, nodes)][np.triu_indices(len(nodes), 1)].mean()

    both = len(positive) > 0 and len(negative) > 0
    compact = mean_pairs(fd, positive)
    return np.array([
        0.0 if compact is None else 1.0 - compact,
        fd[np.ix_(positive, negative)].mean() if both else 0.0,
        mean_pairs(pd, positive) or 0.0,
        mean_pairs(pd, negative) or 0.0,
        pd[np.ix_(positive, negative)].min(axis=1).mean() if both else 0.0,
    ])


@pytest.mark.parametrize("seed", range(12))
def test_incremental_statistics_equal_recompute(seed):
    graph, _ = random_graph(seed, positives=2, negatives=3)
    rng = np.random.default_rng(100 + seed)
    distance_columns = [i for i, name in enumerate(NODE_FEATURES) if "_distance_" in name]
    for step in range(150):
        graph.toggle(int(rng.integers(graph.num_nodes)))
        if step % 15 == 0:
            fresh = graph.clone()
            fresh.recompute()
            np.testing.assert_allclose(graph.node_features(), fresh.node_features(), atol=1e-6)
            np.testing.assert_allclose(graph.graph_terms(), fresh.graph_terms(), atol=1e-9)
            assert graph.graph_score() == pytest.approx(fresh.graph_score(), abs=1e-9)
            np.testing.assert_allclose(graph.node_features()[:, distance_columns],
                                       brute_force_features(graph)[:, distance_columns], atol=1e-6)
            np.testing.assert_allclose(graph.graph_terms(), brute_force_terms(graph), atol=1e-9)


def test_set_active_resets_and_empty_sets_report_distance_one():
    graph, _ = random_graph(3)
    graph.set_active(np.zeros(graph.num_nodes, dtype=bool))
    features = graph.node_features()
    distance_columns = [i for i, name in enumerate(NODE_FEATURES) if "_distance_" in name]
    assert np.all(features[:, distance_columns] == 1.0)
    assert graph.graph_score() == 0.0
    assert graph.num_positive == graph.num_negative == 0
    graph.set_active(graph.initially_active)
    np.testing.assert_allclose(graph.node_features()[:, distance_columns],
                               brute_force_features(graph)[:, distance_columns], atol=1e-6)
    before = graph.node_features()
    for node in (-1, graph.num_nodes):  # the compiled toggle does not check bounds: the method must
        with pytest.raises(IndexError, match="outside"):
            graph.toggle(node)
    np.testing.assert_array_equal(graph.node_features(), before)


def test_graph_attributes_and_node_features_layout():
    graph, (_, prompt_set, _, _) = random_graph(1)
    n = graph.num_nodes
    assert graph.feature_distance.shape == graph.physical_distance.shape == (n, n)
    assert graph.feature_distance.dtype == np.float32
    np.testing.assert_allclose(graph.feature_distance, graph.feature_distance.T, atol=1e-6)
    assert np.all(np.diag(graph.feature_distance) == 0) and np.all(np.diag(graph.physical_distance) == 0)
    assert graph.feature_distance.min() >= 0 and graph.feature_distance.max() <= 1
    np.testing.assert_allclose(graph.physical_distance, GRID.normalised_distance(graph.indices, graph.indices),
                               rtol=1e-6)
    features = graph.node_features()
    assert features.shape == (n, len(NODE_FEATURES)) == (n, 19) and features.dtype == np.float32
    np.testing.assert_array_equal(features[:, NODE_FEATURES.index("category")], graph.category)
    np.testing.assert_array_equal(features[:, NODE_FEATURES.index("active")], graph.active)
    np.testing.assert_allclose(features[:, NODE_FEATURES.index("half_match_score")], graph.match_score / 2)
    np.testing.assert_array_equal(features[:, NODE_FEATURES.index("inside_mask")], 0.0)
    inside = np.arange(n) % 2 == 0
    np.testing.assert_array_equal(graph.node_features(inside)[:, NODE_FEATURES.index("inside_mask")], inside)
    assert np.all(features >= -1) and np.all(features <= 1)
    edges = graph.edge_types()
    assert edges[0, 0] == 2 and edges[0, len(prompt_set.positive_indices)] == 1 and edges[-1, -1] == 0


def test_candidates_are_top_ranked_non_prompt_patches():
    graph, (target, prompt_set, reference, cfg) = random_graph(7, positives=6, negatives=10, extra=7)
    match = match_prompts(reference, target, MatchingConfig())
    margin = match.foreground_similarity - match.background_similarity
    prompts = np.r_[prompt_set.positive_indices, prompt_set.negative_indices]
    free = np.setdiff1d(np.arange(GRID.num_patches), prompts)
    expected_positive = free[np.argsort(-margin[free], kind="stable")][:7]
    rest = np.setdiff1d(free, expected_positive)
    expected_negative = rest[np.argsort(margin[rest], kind="stable")][:7]

    p, q = len(prompt_set.positive_indices), len(prompt_set.negative_indices)
    np.testing.assert_array_equal(graph.indices[:p], prompt_set.positive_indices)
    np.testing.assert_array_equal(graph.indices[p:p + q], prompt_set.negative_indices)
    np.testing.assert_array_equal(graph.indices[p + q:p + q + 7], expected_positive)
    np.testing.assert_array_equal(graph.indices[p + q + 7:], expected_negative)
    np.testing.assert_array_equal(graph.category, np.r_[np.ones(p), np.zeros(q), np.ones(7), np.zeros(7)])
    assert len(np.unique(graph.indices)) == graph.num_nodes
    assert set(graph.indices) == set(prompts) | set(expected_positive) | set(expected_negative)
    np.testing.assert_array_equal(graph.initially_active, np.arange(graph.num_nodes) < p + q)
    np.testing.assert_array_equal(graph.active, graph.initially_active)
    np.testing.assert_allclose(graph.match_score, margin[graph.indices], atol=1e-6)
    np.testing.assert_array_equal(graph.positive_indices(), prompt_set.positive_indices)
    back = graph.to_prompt_set(prompt_set, source="test")
    np.testing.assert_array_equal(back.negative_indices, prompt_set.negative_indices)
    assert back.source == "test" and back.image == prompt_set.image
    # the same nearest-neighbour similarities passed in give the same graph
    again = build_graph(GRID, target, prompt_set, reference, cfg,
                        nearest_similarity=(match.foreground_similarity, match.background_similarity))
    np.testing.assert_array_equal(again.indices, graph.indices)


def test_build_graph_rejects_a_patch_on_both_sides():
    _, (target, _, reference, cfg) = random_graph(0)
    prompt_set = PromptSet("both", SIZE, GRID, [3, 4], [4, 5])
    with pytest.raises(ValueError, match="both positive and negative"):
        build_graph(GRID, target, prompt_set, reference, cfg)


def test_removing_a_feature_outlier_positive_increases_graph_score():
    sample, reference = scene()
    graph = build_graph(GRID, sample.target_features, sample.prompt_set, reference, GraphConfig(0, 0))
    before = graph.graph_score()
    graph.toggle(int(np.flatnonzero(graph.indices == OUTLIER)[0]))
    assert graph.graph_score() > before


# ----- environment -------------------------------------------------------------------------------
def test_action_masks_honour_bounds():
    sample, reference = scene()
    cfg = make_cfg(min_positive=5, max_positive=7, min_negative=7, max_negative=8, max_nodes=40)
    env = PromptEnv([sample], reference, cfg, seed=0)
    env.reset(seed=0)
    graph = env.graph
    assert (graph.num_positive, graph.num_negative) == (6, 8)
    mask = env.action_masks()
    assert mask.shape == (41,) and mask[env.stop_action] and not mask[graph.num_nodes:env.stop_action].any()
    positive_active = np.flatnonzero(graph.active & (graph.category == 1))
    negative_active = np.flatnonzero(graph.active & (graph.category == 0))
    positive_candidate = np.flatnonzero(~graph.active & (graph.category == 1))
    negative_candidate = np.flatnonzero(~graph.active & (graph.category == 0))
    assert mask[positive_active].all() and mask[positive_candidate].all()
    assert mask[negative_active].all() and not mask[negative_candidate].any()  # 8 is max_negative

    env.step(int(positive_active[0]))  # 5 positives: at min_positive
    mask = env.action_masks()
    assert not mask[positive_active[1:]].any()
    with pytest.raises(ValueError, match="min_positive"):
        env.step(int(positive_active[1]))
    env.step(int(positive_candidate[0]))
    env.step(int(positive_candidate[1]))  # 7 positives: at max_positive
    assert not env.action_masks()[positive_candidate[2:]].any()
    with pytest.raises(ValueError, match="max_positive"):
        env.step(int(positive_candidate[2]))
    env.step(int(negative_active[0]))  # 7 negatives: at min_negative, candidates allowed again
    mask = env.action_masks()
    assert not mask[negative_active[1:]].any() and mask[negative_candidate].all()
    with pytest.raises(ValueError, match="padding"):
        env.step(graph.num_nodes)
    with pytest.raises(ValueError, match="outside"):
        env.step(env.stop_action + 1)


@pytest.mark.parametrize("reward", ["graph", "segmentation"])
def test_gymnasium_env_checker(reward):
    # every action valid (wide bounds, no padding): the checker steps with unmasked random actions
    samples = [scene("a", 0)[0], scene("b", 1)[0]]
    reference = scene()[1]
    n = len(samples[0].prompt_set.positive_indices) + len(samples[0].prompt_set.negative_indices) + 8
    cfg = make_cfg(reward=reward, min_positive=0, min_negative=0, max_nodes=n)
    segmenter = DiscSegmenter() if reward == "segmentation" else None
    env = PromptEnv(samples, reference, cfg, segmenter=segmenter, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports most problems as warnings
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=5)
    assert obs in env.observation_space


def test_observation_layout():
    sample, reference = scene()
    cfg = make_cfg(max_nodes=30, max_positive=12, max_negative=16)
    env = PromptEnv([sample], reference, cfg, segmenter=DiscSegmenter(), seed=0)
    obs, info = env.reset(seed=0)
    n = env.graph.num_nodes
    assert obs["nodes"].shape == (30, len(NODE_FEATURES)) and not obs["nodes"][n:].any()
    np.testing.assert_array_equal(obs["valid"], np.arange(30) < n)
    inside = obs["nodes"][:n, NODE_FEATURES.index("inside_mask")]
    np.testing.assert_array_equal(obs["nodes"][:n], env.graph.node_features(inside))
    object_positives = np.isin(env.graph.indices, OBJECT) & (env.graph.category == 1) & env.graph.active
    assert object_positives.sum() == 4 and inside[object_positives].all()
    assert len(GLOBAL_FEATURES) == 5
    area = env.mask.mean()
    np.testing.assert_allclose(obs["globals"], [6 / 12, 8 / 16, 0.0, 1.0, area], rtol=1e-6)
    assert info["positives"] == 6 and info["negatives"] == 8 and info["sample"] == "scene"
    assert set(info) == {"score", "positives", "negatives", "sample", "dice"}


def test_segmentation_reward_for_removing_a_wrong_positive():
    sample, reference = scene()
    cfg = make_cfg(reward="segmentation", max_nodes=40)
    env = PromptEnv([sample], reference, cfg, segmenter=DiscSegmenter(), seed=0)
    _, info = env.reset(seed=0)
    node = node_of(env, DISTRACTOR, 1)
    _, reward, terminated, truncated, after = env.step(node)
    assert reward > 0 and not terminated and not truncated
    assert after["dice"] == pytest.approx(info["dice"] + reward)
    # each node changes at most once per episode: putting it back is masked out and refused
    assert not env.action_masks()[node]
    with pytest.raises(ValueError, match="at most once"):
        env.step(node)
    env.reset(seed=0)
    assert env.action_masks()[node]
    _, reward, terminated, _, _ = env.step(env.stop_action)
    assert terminated and reward == 0.0


def test_graph_reward_for_removing_an_outlier_positive():
    sample, reference = scene()
    env = PromptEnv([sample], reference, make_cfg(reward="graph", max_nodes=40), seed=0)
    _, info = env.reset(seed=0)
    _, reward, _, _, after = env.step(node_of(env, OUTLIER, 1))
    assert reward > 0
    assert after["score"] == pytest.approx(info["score"] + reward)
    assert "dice" not in after


def test_stop_and_truncation():
    sample, reference = scene()
    env = PromptEnv([sample], reference, make_cfg(episode_length=3, max_nodes=40), seed=0)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(env.stop_action)
    assert terminated is True and truncated is False
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    flags = []
    for _ in range(3):
        node = int(np.flatnonzero(env.action_masks()[:env.stop_action])[0])
        flags.append(env.step(node)[2:4])
    assert flags == [(False, False), (False, False), (False, True)]


def test_reset_is_deterministic_given_a_seed():
    samples = [scene(f"s{i}", i)[0] for i in range(5)]
    env = PromptEnv(samples, scene()[1], make_cfg(max_nodes=40), seed=0)
    names = [env.reset(seed=s)[1]["sample"] for s in range(12)]
    again = [env.reset(seed=s)[1]["sample"] for s in range(12)]
    assert names == again and len(set(names)) > 1
    first, _ = env.reset(seed=3)
    second, _ = env.reset(seed=3)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert env.reset(options={"sample": 4})[1]["sample"] == "s4"


def test_start_modes():
    sample, reference = scene()
    initial = PromptEnv([sample], reference, make_cfg(start="initial", max_nodes=40), seed=0)
    initial.reset(seed=0)
    np.testing.assert_array_equal(initial.graph.positive_indices(), sample.prompt_set.positive_indices)
    np.testing.assert_array_equal(initial.graph.negative_indices(), sample.prompt_set.negative_indices)

    cfg = make_cfg(start="ideal", max_nodes=60)
    ideal = PromptEnv([sample], reference, cfg, seed=0)
    ideal.reset(seed=0)
    fraction = GRID.mask_fraction(sample.truth_mask).reshape(-1)
    positives, negatives = ideal.graph.positive_indices(), ideal.graph.negative_indices()
    assert len(positives) == cfg.segmentation.ideal_positive and len(negatives) == cfg.segmentation.ideal_negative
    assert np.all(fraction[positives] >= 0.999) and np.all(fraction[negatives] == 0)
    assert set(sample.prompt_set.negative_indices) - set(positives) <= set(ideal.graph.indices)

    empty = PromptEnv([sample], reference, make_cfg(start="empty", max_nodes=40), seed=0)
    obs, info = empty.reset(seed=0)
    assert not empty.graph.active.any() and info["positives"] == info["negatives"] == 0
    # below env.min_positive=1 is allowed at the start; additions are, and the count cannot drop below again
    assert empty.action_masks()[:empty.graph.num_nodes].all()
    first_positive = int(np.flatnonzero(empty.graph.category == 1)[0])
    empty.step(first_positive)
    assert empty.graph.num_positive == 1 and not empty.action_masks()[first_positive]


def test_construction_errors():
    sample, reference = scene()
    with pytest.raises(ValueError, match=r"'scene'.*env\.max_nodes"):
        PromptEnv([sample], reference, make_cfg(max_nodes=10))
    with pytest.raises(ValueError, match="segmenter"):
        PromptEnv([sample], reference, make_cfg(reward="segmentation", max_nodes=40))
    unlabelled = EpisodeSample("u", GRID, sample.target_features, sample.prompt_set, image=sample.image)
    with pytest.raises(ValueError, match="truth mask"):
        PromptEnv([unlabelled], reference, make_cfg(reward="segmentation", max_nodes=40), segmenter=DiscSegmenter())
    with pytest.raises(ValueError, match="env.start"):
        PromptEnv([sample], reference, make_cfg(start="random", max_nodes=40))


def test_step_batch_matches_single_steps_and_decodes_once_per_sample():
    samples = [scene("a", 0)[0], scene("b", 1)[0]]
    reference = scene()[1]
    cfg = make_cfg(reward="segmentation", max_nodes=40)
    batched_segmenter, single_segmenter = DiscSegmenter(), DiscSegmenter()
    base = PromptEnv(samples, reference, cfg, segmenter=batched_segmenter, seed=0)
    batched = [base] + [base.spawn(seed=i) for i in range(1, 5)]
    single = [PromptEnv(samples, reference, cfg, segmenter=single_segmenter, seed=0) for _ in range(5)]
    starts = [0, 0, 1, 1, 0]
    for env_b, env_s, start in zip(batched, single, starts):
        env_b.reset(seed=0, options={"sample": start})
        env_s.reset(seed=0, options={"sample": start})
    assert batched_segmenter.embed_calls == 2  # spawned environments share embeddings
    rng = np.random.default_rng(0)
    for step in range(6):
        actions = []
        for env in batched:
            valid = np.flatnonzero(env.action_masks()[:env.graph.num_nodes])
            actions.append(int(rng.choice(valid)))
        if step == 5:
            actions[1] = batched[1].stop_action
        calls = batched_segmenter.decode_calls
        results = step_batch(batched, actions)
        toggled_samples = {env.sample.name for env, a in zip(batched, actions) if a != env.stop_action}
        assert batched_segmenter.decode_calls - calls == len(toggled_samples)
        for env, action, result in zip(single, actions, results):
            expected = env.step(action)
            assert result[1] == pytest.approx(expected[1], abs=1e-12)
            assert result[2:4] == expected[2:4]
            assert result[4] == expected[4]
            for key in result[0]:
                np.testing.assert_array_equal(result[0][key], expected[0][key])


def test_support_columns_count_nearby_candidates_of_each_label():
    grid = PatchGrid.square(280, 14)  # 20 x 20 patches; support radius 0.1 * 396 px = 39.6 px
    rng = np.random.default_rng(0)
    target = rng.normal(size=(20, 20, 8)).astype(np.float32)
    fraction = np.zeros((20, 20))
    fraction[5:10, 5:10] = 1.0
    reference = build_reference([rng.normal(size=(20, 20, 8)).astype(np.float32)], [fraction], 0.5)
    # positives at cells (0,0), (0,2), (10,10); negatives at (1,0), (10,13). Distances: (0,0)-(0,2)
    # 28 px, (0,0)-(1,0) 14 px, (0,2)-(1,0) 31.3 px are within the radius; (10,10)-(10,13) 42 px is not.
    positives = grid.rc_to_index([0, 0, 10], [0, 2, 10])
    negatives = grid.rc_to_index([1, 10], [0, 13])
    prompt_set = PromptSet("support", (280, 280), grid, positives, negatives)
    graph = build_graph(grid, target, prompt_set, reference, GraphConfig(extra_positive=0, extra_negative=0))
    features = graph.node_features()
    # node order: positives (0,0), (0,2), (10,10), then negatives (1,0), (10,13); shares exclude the node
    np.testing.assert_allclose(features[:, NODE_FEATURES.index("positive_support")], [1 / 3, 1 / 3, 0, 2 / 3, 0])
    np.testing.assert_allclose(features[:, NODE_FEATURES.index("negative_support")], [1 / 2, 1 / 2, 0, 0, 0])


def test_match_context_is_the_share_of_foreground_like_patches_within_each_radius():
    grid = PatchGrid.square(280, 14)  # 20 x 20 patches
    rng = np.random.default_rng(3)
    margin = rng.normal(size=grid.num_patches)
    shares = match_context(grid, margin)
    assert shares.shape == (grid.num_patches, len(CONTEXT_RADII)) and shares.dtype == np.float32
    rows, cols = grid.index_to_rc(np.arange(grid.num_patches))
    for patch in rng.choice(grid.num_patches, 25, replace=False):  # brute force, edges and corners included
        for column, radius in enumerate(CONTEXT_RADII):
            within = (rows - rows[patch]) ** 2 + (cols - cols[patch]) ** 2 <= radius ** 2
            assert shares[patch, column] == pytest.approx(np.mean(margin[within] > 0), abs=1e-6)


def test_match_context_tells_an_object_from_an_isolated_lookalike():
    # the object's patches look like it and so do their neighbours; the lone distractor patch looks
    # just as much like it, but nothing around it does
    sample, reference = scene()
    cfg = GraphConfig(extra_positive=0, extra_negative=0, match_context=True)
    graph = build_graph(GRID, sample.target_features, sample.prompt_set, reference, cfg)
    features = graph.node_features()
    node = {int(patch): i for i, patch in enumerate(graph.indices)}
    object_node, distractor_node = node[int(OBJECT[5])], node[DISTRACTOR]
    near, far = (features[:, NODE_FEATURES.index(name)] for name in ("match_context_near", "match_context_far"))
    assert near[object_node] > 2 * near[distractor_node] > 0
    assert far[object_node] > far[distractor_node] > 0
    # off (the default), the two columns are zero and the rest unchanged
    cfg.match_context = False
    without = build_graph(GRID, sample.target_features, sample.prompt_set, reference, cfg).node_features()
    context = [NODE_FEATURES.index("match_context_near"), NODE_FEATURES.index("match_context_far")]
    assert not without[:, context].any()
    np.testing.assert_array_equal(np.delete(without, context, axis=1), np.delete(features, context, axis=1))


def test_negative_ring_draws_negative_candidates_near_the_positives():
    _, (target, prompt_set, reference, _) = random_graph(4, positives=3, negatives=4, extra=5)
    cfg = GraphConfig(extra_positive=0, extra_negative=5, negative_ring=1.5)
    graph = build_graph(GRID, target, prompt_set, reference, cfg)
    candidates = graph.indices[~graph.initially_active]
    assert len(candidates) == 5 and np.all(graph.category[~graph.initially_active] == 0)
    reach = GRID.pixel_distance(candidates, prompt_set.positive_indices).min(axis=1)
    assert np.all(reach <= 1.5 * GRID.patch_size)


def test_positive_spacing_spreads_the_positive_candidates():
    _, (target, prompt_set, reference, _) = random_graph(5, positives=3, negatives=4)
    match = match_prompts(reference, target, MatchingConfig())
    margin = match.foreground_similarity - match.background_similarity
    spacing = 2.5 * GRID.patch_size
    cfg = GraphConfig(extra_positive=6, extra_negative=0, positive_spacing=2.5)
    graph = build_graph(GRID, target, prompt_set, reference, cfg)
    candidates = graph.indices[~graph.initially_active]
    assert len(candidates) == 6 and np.all(graph.category[~graph.initially_active] == 1)
    # brute force: walk the free patches best first, keep one if it is far enough from every kept positive
    kept = list(prompt_set.positive_indices)
    expected = []
    free = np.setdiff1d(np.arange(GRID.num_patches), np.r_[prompt_set.positive_indices, prompt_set.negative_indices])
    for patch in free[np.argsort(-margin[free], kind="stable")]:
        if GRID.pixel_distance([patch], kept).min() >= spacing - 1e-9 and len(expected) < 6:
            expected.append(patch)
            kept.append(patch)
    np.testing.assert_array_equal(candidates, expected)
    # without spacing the same count comes from the top of the ranking, crowded together
    crowded = build_graph(GRID, target, prompt_set, reference, GraphConfig(extra_positive=6, extra_negative=0))
    top = crowded.indices[~crowded.initially_active]
    assert GRID.pixel_distance(top, top)[np.triu_indices(6, 1)].min() < spacing
    assert GRID.pixel_distance(candidates, candidates)[np.triu_indices(6, 1)].min() >= spacing - 1e-9


def test_node_features_reject_buffers_of_the_wrong_shape():
    graph, _ = random_graph(2)
    n = graph.num_nodes
    with pytest.raises(ValueError, match="out must be"):
        graph.node_features(out=np.zeros((n - 1, len(NODE_FEATURES)), dtype=np.float32))
    with pytest.raises(ValueError, match="out must be"):
        graph.node_features(out=np.zeros((n, len(NODE_FEATURES)), dtype=np.float64))
    with pytest.raises(ValueError, match="inside_mask"):
        graph.node_features(np.zeros(n + 3))


@pytest.mark.parametrize("reward", ["segmentation", "graph"])
def test_step_penalty_is_charged_on_toggles_only(reward):
    sample, reference = scene()
    plain, charged = (PromptEnv([sample], reference, make_cfg(reward=reward, max_nodes=40, step_penalty=penalty),
                                segmenter=DiscSegmenter(), seed=0) for penalty in (0.0, 0.25))
    for env in (plain, charged):
        env.reset(seed=0)
    node = node_of(plain, DISTRACTOR, 1)
    (_, base, *_), (_, cost, *_) = plain.step(node), charged.step(node)
    assert cost == pytest.approx(base - 0.25)
    assert plain.step(plain.stop_action)[1] == charged.step(charged.stop_action)[1] == 0.0

