"""The dual-space graph: incremental statistics, candidates, node features and the graph score."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import DISTRACTOR, GRID, OBJECT, OUTLIER, SIZE, random_graph, scene

from gpoa.config import GraphConfig, MatchingConfig
from gpoa.graph import CONTEXT_RADII, NODE_FEATURES, build_graph, match_context
from gpoa.grid import PatchGrid
from gpoa.matching import build_reference, l2_normalise, match_prompts, reference_similarity
from gpoa.prompts import PromptSet


def brute_force_features(graph) -> np.ndarray:
    """The eight distance columns of node_features straight from the dense matrices (the feature
    ones relative to twice the mean feature distance between two nodes, at most 1)."""
    n = graph.num_nodes
    scale = 0.5 / (graph.feature_distance.astype(np.float64).sum() / (n * (n - 1)))
    columns = np.zeros((n, len(NODE_FEATURES)))
    for i in range(n):
        for space, distance, factor in (("relative_feature", graph.feature_distance, scale),
                                        ("physical", graph.physical_distance, 1.0)):
            for side, category in (("positive", 1), ("negative", 0)):
                others = graph.active & (graph.category == category)
                others[i] = False
                values = distance[i, others].astype(np.float64) * factor
                mean, minimum = (min(values.mean(), 1.0), min(values.min(), 1.0)) if len(values) else (1.0, 1.0)
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
    graph, (target, prompt_set, reference, _) = random_graph(1)
    n = graph.num_nodes
    assert graph.feature_distance.shape == graph.physical_distance.shape == (n, n)
    assert graph.feature_distance.dtype == np.float32
    np.testing.assert_allclose(graph.feature_distance, graph.feature_distance.T, atol=1e-6)
    assert np.all(np.diag(graph.feature_distance) == 0) and np.all(np.diag(graph.physical_distance) == 0)
    assert graph.feature_distance.min() >= 0 and graph.feature_distance.max() <= 1
    np.testing.assert_allclose(graph.physical_distance, GRID.normalised_distance(graph.indices, graph.indices),
                               rtol=1e-6)
    features = graph.node_features()
    assert features.shape == (n, len(NODE_FEATURES)) and features.dtype == np.float32
    np.testing.assert_array_equal(features[:, NODE_FEATURES.index("category")], graph.category)
    np.testing.assert_array_equal(features[:, NODE_FEATURES.index("active")], graph.active)
    # scale-free columns: ranks among the nodes and among the image's patches, a robust z-score
    fg_rank = features[:, NODE_FEATURES.index("foreground_similarity_rank")]
    assert np.argmax(fg_rank) == np.argmax(graph.foreground_similarity) and fg_rank.min() == 0 and fg_rank.max() == 1
    _, fg, bg = reference_similarity(reference, l2_normalise(target.reshape(GRID.num_patches, -1)))
    margin = (fg - bg).astype(np.float64)
    brute = np.array([((margin < m).sum() + 0.5 * ((margin == m).sum() - 1)) / (len(margin) - 1) for m in margin])
    np.testing.assert_allclose(graph.patch_rank, brute, atol=1e-6)
    np.testing.assert_allclose(features[:, NODE_FEATURES.index("match_rank")], brute[graph.indices], atol=1e-6)
    low, median, high = np.percentile(margin, [25, 50, 75])
    np.testing.assert_allclose(features[:, NODE_FEATURES.index("match_zscore")],
                               np.clip((margin[graph.indices] - median) / (high - low) / 4, -1, 1), atol=1e-5)
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
    sample = scene()
    reference = sample.reference
    graph = build_graph(GRID, sample.target_features, sample.prompt_set, reference, GraphConfig(0, 0))
    before = graph.graph_score()
    graph.toggle(int(np.flatnonzero(graph.indices == OUTLIER)[0]))
    assert graph.graph_score() > before


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
    sample = scene()
    reference = sample.reference
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
    crowded = build_graph(GRID, target, prompt_set, reference,
                          GraphConfig(extra_positive=6, extra_negative=0, positive_spacing=0.0))
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
    with pytest.raises(ValueError, match=f"must have shape \\({n},"):  # the mask column(s) of every node
        graph.node_features(np.zeros(n + 3))
