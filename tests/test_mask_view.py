"""What the agent sees of the mask: the lookahead columns, the shield, and the label-free rule."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import GRID, DiscSegmenter, make_cfg, scene

from gpoa.agents.greedy import LookaheadRule, run_greedy
from gpoa.envs import GLOBAL_FEATURES, PromptEnv
from gpoa.envs.mask_view import LOOKAHEAD_SCALE
from gpoa.envs.oracle import run_oracle
from gpoa.graph import MASK_COLUMNS, NODE_FEATURES

COLUMN = {name: NODE_FEATURES.index(name) for name in MASK_COLUMNS}


def block_shares(mask: np.ndarray) -> np.ndarray:
    """Per-patch mask share on the 10 x 10 test grid of 14 x 14 pixel patches (independent of mask_cells)."""
    return mask.reshape(GRID.rows, 14, GRID.cols, 14).mean(axis=(1, 3)).reshape(-1)


def soft_dice(shares: np.ndarray, region: np.ndarray) -> float:
    return 2 * float(shares @ region) / (shares.sum() + region.sum())


def lookahead_env(**env) -> PromptEnv:
    cfg = make_cfg(reward="segmentation", max_nodes=40, **env)
    return PromptEnv([scene()], cfg, segmenter=DiscSegmenter(), seed=0)


def test_lookahead_columns_describe_what_each_toggle_would_do():
    env = lookahead_env()
    obs, _ = env.reset(seed=0)
    graph, record = env.graph, env.record
    region, share = record.view.region, record.view.reference_share
    now = block_shares(env.mask)
    toggles = np.flatnonzero(env.action_masks(shielded=False)[:graph.num_nodes])
    assert len(toggles) > 5
    for node in toggles:
        active = graph.active.copy()
        active[node] = not active[node]
        masks, _ = env.segmenter.decode(record.embedding, [record.prompts_of(active, graph.is_positive)])
        after = block_shares(masks[0])
        row = obs["nodes"][node]
        expected_agreement = np.clip((soft_dice(after, region) - soft_dice(now, region)) * LOOKAHEAD_SCALE, -1, 1)
        assert row[COLUMN["lookahead_region_agreement"]] == pytest.approx(expected_agreement, abs=1e-5)
        expected_area = np.clip((after.mean() - now.mean()) / max(share, 0.02), -1, 1)
        assert row[COLUMN["lookahead_area"]] == pytest.approx(expected_area, abs=1e-5)
        changed = np.abs(after - now).sum() / max(now.sum(), region.sum(), 1.0)
        assert row[COLUMN["lookahead_changed"]] == pytest.approx(min(changed, 1.0), abs=1e-5)
    others = np.setdiff1d(np.arange(graph.num_nodes), toggles)
    lookahead = [COLUMN[name] for name in MASK_COLUMNS[2:]]
    assert not obs["nodes"][np.ix_(others, lookahead)].any()
    # the globals: agreement of the current mask with the region, and the region's confidence
    globals_ = dict(zip(GLOBAL_FEATURES, obs["globals"]))
    assert globals_["region_agreement"] == pytest.approx(soft_dice(now, region), abs=1e-5)
    assert globals_["region_confidence"] == pytest.approx(record.view.confidence)


def test_lookahead_off_leaves_the_columns_zero_and_decodes_once_per_step():
    env = lookahead_env(lookahead=False)
    obs, _ = env.reset(seed=0)
    assert not obs["nodes"][:, [COLUMN[name] for name in MASK_COLUMNS[2:]]].any()
    calls = env.segmenter.decode_calls
    env.step(int(np.flatnonzero(env.action_masks()[:env.graph.num_nodes])[0]))
    assert env.segmenter.decode_calls == calls + 1


def test_the_shield_refuses_toggles_that_move_the_mask_off_the_region():
    env = lookahead_env(shield=0.0)
    obs, _ = env.reset(seed=0)
    n = env.graph.num_nodes
    agreement = obs["nodes"][:n, COLUMN["lookahead_region_agreement"]]
    unshielded, shielded = env.action_masks(shielded=False)[:n], env.action_masks()[:n]
    refused = np.flatnonzero(unshielded & ~shielded)
    assert len(refused) > 0 and (agreement[refused] < 0).all()
    assert (agreement[shielded] >= 0).all()
    with pytest.raises(ValueError, match="shield"):
        env.step(int(refused[0]))
    # switched off, the same toggles are allowed
    off = lookahead_env(shield=-1.0)
    off.reset(seed=0)
    np.testing.assert_array_equal(off.action_masks(), off.action_masks(shielded=False))


def test_the_oracle_is_not_bound_by_the_shield():
    shielded, free = lookahead_env(shield=0.0), lookahead_env(shield=-1.0)
    assert run_oracle(shielded, options={"sample": 0})[0] == run_oracle(free, options={"sample": 0})[0]


def test_the_lookahead_rule_follows_the_region_agreement_and_stops():
    env = lookahead_env()
    rule = LookaheadRule(NODE_FEATURES)
    obs, _ = env.reset(seed=0)
    column = COLUMN["lookahead_region_agreement"]
    valid = env.action_masks()
    first = rule(obs, valid)
    assert first == int(np.argmax(np.where(valid[:-1] & (obs["valid"] > 0), obs["nodes"][:, column], -np.inf)))
    region = env.record.view.region
    assert region.sum() > 0
    start = soft_dice(block_shares(env.mask), region)
    actions, _, _ = run_greedy(rule, env, options={"sample": 0})
    assert len(actions) > 1 and (actions[-1] == env.stop_action or len(actions) == env.cfg.env.episode_length)
    assert soft_dice(block_shares(env.mask), region) > start  # every toggle it took raised the agreement


def test_the_lookahead_rule_obeys_a_confidence_gate():
    env = lookahead_env()
    obs, _ = env.reset(seed=0)
    index = GLOBAL_FEATURES.index("region_confidence")
    confidence, valid = float(obs["globals"][index]), env.action_masks()
    free = LookaheadRule(NODE_FEATURES)(obs, valid)
    assert free != env.stop_action
    assert LookaheadRule(NODE_FEATURES, min_confidence=confidence + 0.01, confidence_index=index)(obs, valid) \
        == env.stop_action
    assert confidence > 0
    assert LookaheadRule(NODE_FEATURES, min_confidence=confidence / 2, confidence_index=index)(obs, valid) == free
    with pytest.raises(ValueError, match="confidence_index"):
        LookaheadRule(NODE_FEATURES, min_confidence=0.5)
