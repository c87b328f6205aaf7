"""Environments: the episode bank, the prompt-editing environment, its vectorised form and the oracle."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from synthetic import (
    DISTRACTOR,
    GRID,
    OBJECT,
    OUTLIER,
    DiscSegmenter,
    make_cfg,
    node_of,
    random_sample,
    scene,
)

from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv, SerialVecEnv, VecPromptEnv
from gpoa.envs.oracle import run_oracle
from gpoa.graph import MASK_COLUMNS, NODE_FEATURES
from gpoa.metrics import dice
from gpoa.samples import EpisodeSample, LazySample


# ----- the prompt-editing environment ------------------------------------------------------------
def test_action_masks_honour_bounds():
    sample = scene()
    cfg = make_cfg(min_positive=5, max_positive=7, min_negative=7, max_negative=8, max_nodes=40)
    env = PromptEnv([sample], cfg, seed=0)
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
    samples = [scene("a", 0), scene("b", 1)]
    n = len(samples[0].prompt_set.positive_indices) + len(samples[0].prompt_set.negative_indices) + 8
    cfg = make_cfg(reward=reward, min_positive=0, min_negative=0, max_nodes=n)
    segmenter = DiscSegmenter() if reward == "segmentation" else None
    env = PromptEnv(samples, cfg, segmenter=segmenter, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports most problems as warnings
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=5)
    assert obs in env.observation_space


def test_observation_layout():
    sample = scene()
    cfg = make_cfg(max_nodes=30, max_positive=12, max_negative=16)
    env = PromptEnv([sample], cfg, segmenter=DiscSegmenter(), seed=0)
    obs, info = env.reset(seed=0)
    n = env.graph.num_nodes
    assert obs["nodes"].shape == (30, len(NODE_FEATURES)) and not obs["nodes"][n:].any()
    np.testing.assert_array_equal(obs["valid"], np.arange(30) < n)
    inside = obs["nodes"][:n, NODE_FEATURES.index("inside_mask")]
    object_positives = np.isin(env.graph.indices, OBJECT) & (env.graph.category == 1) & env.graph.active
    assert object_positives.sum() == 4 and inside[object_positives].all()
    np.testing.assert_array_equal(inside, env.mask[env.record.node_pixels])
    # the other columns are the graph's own node features
    plain = env.graph.node_features()
    other = [i for i, name in enumerate(NODE_FEATURES) if name not in MASK_COLUMNS]
    np.testing.assert_array_equal(obs["nodes"][:n, other], plain[:, other])
    assert obs["globals"].shape == (len(GLOBAL_FEATURES),) and obs in env.observation_space
    globals_ = dict(zip(GLOBAL_FEATURES, obs["globals"].tolist()))
    reference_share = sample.reference.foreground_share
    assert reference_share == pytest.approx(len(OBJECT) / GRID.num_patches)
    expected = {"active_positive_fraction": 6 / 12, "active_negative_fraction": 8 / 16, "step_fraction": 0.0,
                "segmenter_in_loop": 1.0, "mask_area_fraction": env.mask.mean(),
                "reference_area_fraction": reference_share, "reference_instances": 1 / 5}
    assert {key: globals_[key] for key in expected} == pytest.approx(expected, rel=1e-6)
    # without a segmenter no mask is observed
    blind = PromptEnv([sample], cfg, seed=0)
    obs, _ = blind.reset(seed=0)
    assert blind.mask is None and not obs["nodes"][:n, NODE_FEATURES.index("inside_mask")].any()
    assert dict(zip(GLOBAL_FEATURES, obs["globals"].tolist()))["segmenter_in_loop"] == 0.0
    assert info["positives"] == 6 and info["negatives"] == 8 and info["sample"] == "scene"
    assert info["task"] == "scenes"
    assert set(info) == {"score", "positives", "negatives", "sample", "task", "dice"}


def test_segmentation_reward_for_removing_a_wrong_positive():
    sample = scene()
    cfg = make_cfg(reward="segmentation", max_nodes=40)
    env = PromptEnv([sample], cfg, segmenter=DiscSegmenter(), seed=0)
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
    env = PromptEnv([scene()], make_cfg(reward="graph", max_nodes=40), seed=0)
    _, info = env.reset(seed=0)
    _, reward, _, _, after = env.step(node_of(env, OUTLIER, 1))
    assert reward > 0
    assert after["score"] == pytest.approx(info["score"] + reward)
    assert "dice" not in after


def test_stop_and_truncation():
    env = PromptEnv([scene()], make_cfg(episode_length=3, max_nodes=40), seed=0)
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
    samples = [scene(f"s{i}", i) for i in range(5)]
    env = PromptEnv(samples, make_cfg(max_nodes=40), seed=0)
    names = [env.reset(seed=s)[1]["sample"] for s in range(12)]
    again = [env.reset(seed=s)[1]["sample"] for s in range(12)]
    assert names == again and len(set(names)) > 1
    first, _ = env.reset(seed=3)
    second, _ = env.reset(seed=3)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert env.reset(options={"sample": 4})[1]["sample"] == "s4"
    with pytest.raises(ValueError, match="5 samples"):
        env.reset(options={"sample": 5})


def test_start_modes():
    sample = scene()
    initial = PromptEnv([sample], make_cfg(start="initial", max_nodes=40), seed=0)
    initial.reset(seed=0)
    np.testing.assert_array_equal(initial.graph.positive_indices(), sample.prompt_set.positive_indices)
    np.testing.assert_array_equal(initial.graph.negative_indices(), sample.prompt_set.negative_indices)

    cfg = make_cfg(start="ideal", max_nodes=60)
    ideal = PromptEnv([sample], cfg, seed=0)
    ideal.reset(seed=0)
    fraction = GRID.mask_fraction(sample.truth_mask).reshape(-1)
    positives, negatives = ideal.graph.positive_indices(), ideal.graph.negative_indices()
    assert len(positives) == cfg.segmentation.ideal_positive and len(negatives) == cfg.segmentation.ideal_negative
    assert np.all(fraction[positives] >= 0.999) and np.all(fraction[negatives] == 0)
    assert set(sample.prompt_set.negative_indices) - set(positives) <= set(ideal.graph.indices)

    empty = PromptEnv([sample], make_cfg(start="empty", max_nodes=40), seed=0)
    obs, info = empty.reset(seed=0)
    assert not empty.graph.active.any() and info["positives"] == info["negatives"] == 0
    # below env.min_positive=1 is allowed at the start; additions are, and the count cannot drop below again
    assert empty.action_masks()[:empty.graph.num_nodes].all()
    first_positive = int(np.flatnonzero(empty.graph.category == 1)[0])
    empty.step(first_positive)
    assert empty.graph.num_positive == 1 and not empty.action_masks()[first_positive]


def test_construction_errors():
    sample = scene()
    # settings are checked when the environment is made ...
    with pytest.raises(ValueError, match="env.start"):
        PromptEnv([sample], make_cfg(start="random", max_nodes=40))
    with pytest.raises(ValueError, match="env.reward"):
        PromptEnv([sample], make_cfg(reward="dice", max_nodes=40))
    with pytest.raises(ValueError, match="at least one sample"):
        PromptEnv([], make_cfg(max_nodes=40))
    # ... a sample when an episode first draws it (records are built lazily)
    too_small = PromptEnv([sample], make_cfg(max_nodes=10))
    with pytest.raises(ValueError, match=r"'scene'.*env\.max_nodes"):
        too_small.reset(seed=0)
    with pytest.raises(ValueError, match="segmenter"):
        PromptEnv([sample], make_cfg(reward="segmentation", max_nodes=40)).reset(seed=0)
    unlabelled = EpisodeSample("u", GRID, sample.target_features, sample.prompt_set, sample.reference,
                               image=sample.image)
    with pytest.raises(ValueError, match="truth mask"):
        PromptEnv([unlabelled], make_cfg(reward="segmentation", max_nodes=40), segmenter=DiscSegmenter()).reset()
    # the segmenter of an environment over a bank is the bank's
    bank = EpisodeBank([sample], make_cfg(max_nodes=40))
    with pytest.raises(ValueError, match="bank"):
        PromptEnv(bank, make_cfg(max_nodes=40), segmenter=DiscSegmenter())


@pytest.mark.parametrize("reward", ["segmentation", "graph"])
def test_step_penalty_is_charged_on_toggles_only(reward):
    sample = scene()
    plain, charged = (PromptEnv([sample], make_cfg(reward=reward, max_nodes=40, step_penalty=penalty),
                                segmenter=DiscSegmenter(), seed=0) for penalty in (0.0, 0.25))
    for env in (plain, charged):
        env.reset(seed=0)
    node = node_of(plain, DISTRACTOR, 1)
    (_, base, *_), (_, cost, *_) = plain.step(node), charged.step(node)
    assert cost == pytest.approx(base - 0.25)
    assert plain.step(plain.stop_action)[1] == charged.step(charged.stop_action)[1] == 0.0


def test_harm_weight_scales_losses_of_dice_only():
    sample = scene()
    plain, averse = (PromptEnv([sample], make_cfg(reward="segmentation", max_nodes=40, harm_weight=weight),
                               segmenter=DiscSegmenter(), seed=0) for weight in (1.0, 3.0))
    for env in (plain, averse):
        env.reset(seed=0)
    harmful = node_of(plain, DISTRACTOR, 1)  # switching the distractor off raises Dice
    loss = node_of(plain, OBJECT[5], 1)  # switching an object positive off lowers it
    (_, gain, *_), (_, same, *_) = plain.step(harmful), averse.step(harmful)
    assert gain > 0 and same == pytest.approx(gain)
    (_, lost, *_), (_, tripled, *_) = plain.step(loss), averse.step(loss)
    assert lost < 0 and tripled == pytest.approx(3 * lost)


def test_step_equals_its_public_phases():
    sample = scene()
    cfg = make_cfg(reward="segmentation", max_nodes=40)
    whole, phased = (PromptEnv([sample], cfg, segmenter=DiscSegmenter(), seed=0) for _ in range(2))
    whole.reset(seed=0)
    phased.reset(seed=0)
    node = node_of(whole, DISTRACTOR, 1)
    expected = whole.step(node)
    before = phased.dice
    assert phased.apply(node) is True
    masks, scores = phased.bank.decode(phased.record, [phased.graph])
    phased.observe_mask(masks[0], float(scores[0]))
    result = phased.finish(node, before)
    assert result[1:] == expected[1:]
    for key in expected[0]:
        np.testing.assert_array_equal(result[0][key], expected[0][key])
    assert phased.apply(phased.stop_action) is False  # STOP changes no prompt: no decode due
    with pytest.raises(ValueError, match="at most once"):
        phased.check_action(node)


# ----- the episode bank ----------------------------------------------------------------------------
class CountingSource:
    """A lazy sample (name, task, load()) that counts how often it is read."""

    def __init__(self, sample: EpisodeSample):
        self.name, self.task, self.sample, self.loads = sample.name, sample.task, sample, 0

    def load(self) -> EpisodeSample:
        self.loads += 1
        return self.sample


def test_bank_builds_records_lazily_and_keeps_at_most_capacity():
    sources = [CountingSource(random_sample(i, task="t")) for i in range(3)]
    segmenter = DiscSegmenter()
    bank = EpisodeBank(sources, make_cfg(reward="segmentation", max_nodes=40), segmenter=segmenter, capacity=2)
    assert len(bank) == 3 and [s.loads for s in sources] == [0, 0, 0]  # nothing read up front
    first = bank.record(0)
    assert bank.record(0) is first and sources[0].loads == 1  # kept: not read again
    bank.record(1)
    bank.record(0)  # 0 is now the most recently used, 1 the least
    bank.record(2)  # evicts 1
    assert len(bank._records) == 2
    assert [s.loads for s in sources] == [1, 1, 1]
    assert bank.record(0) is first and bank.record(2) is not None and sources[0].loads == 1
    bank.record(1)  # rebuilt: read again
    assert [s.loads for s in sources] == [1, 2, 1] and len(bank._records) == 2
    # a cycle over three samples with room for two rereads every sample every time (LRU)
    for index in (0, 2, 1, 0, 2, 1):
        bank.record(index)
    assert [s.loads for s in sources] == [3, 4, 3]
    # the segmenter embeds a record's image once, however often it decodes it
    record = bank.record(1)
    calls = segmenter.embed_calls
    for _ in range(3):
        bank.decode(record, [record.graph, record.graph])
    assert segmenter.embed_calls - calls <= 1


@pytest.mark.parametrize("start", ["ideal", "initial", "empty"])
def test_an_evicted_sample_is_rebuilt_identically(start):
    samples = [random_sample(i) for i in range(3)]
    cfg = make_cfg(reward="segmentation", start=start, max_nodes=60)
    bank = EpisodeBank(samples, cfg, segmenter=DiscSegmenter(), seed=5, capacity=1)
    first = bank.record(0)
    mask, first_dice = bank.start_mask(first)
    bank.record(1)  # evicts 0
    again = bank.record(0)
    assert again is not first
    for name in ("indices", "category", "active", "initially_active", "match_score"):
        np.testing.assert_array_equal(getattr(again.graph, name), getattr(first.graph, name))
    np.testing.assert_array_equal(again.graph.node_features(), first.graph.node_features())
    np.testing.assert_array_equal(again.node_xy, first.node_xy)
    again_mask, again_dice = bank.start_mask(again)
    np.testing.assert_array_equal(again_mask, mask)
    assert again_dice == first_dice
    # another bank seed draws other ideal prompts (the draw is seeded, not fixed)
    if start == "ideal":
        other = EpisodeBank(samples, cfg, segmenter=DiscSegmenter(), seed=6).record(0)
        assert not np.array_equal(other.graph.indices, first.graph.indices)


def test_bank_indices_of_task_and_environments_sharing_a_bank():
    samples = [random_sample(0, "b"), random_sample(1, "a"), random_sample(2, "b"), random_sample(3, "c")]
    bank = EpisodeBank(samples, make_cfg(max_nodes=40))
    assert bank.tasks == ["a", "b", "c"]
    assert bank.indices_of("b") == [0, 2] and bank.indices_of("a") == [1] and bank.indices_of("none") == []
    # environments over one bank share its records, each steps its own copy of the graph
    one, two = PromptEnv(bank, make_cfg(max_nodes=40), seed=0), PromptEnv(bank, make_cfg(max_nodes=40), seed=1)
    one.reset(options={"sample": 2})
    two.reset(options={"sample": 2})
    assert one.record is two.record and one.graph is not two.graph
    start = one.record.graph.active.copy()
    one.step(int(np.flatnonzero(one.action_masks()[:one.graph.num_nodes])[0]))
    np.testing.assert_array_equal(one.record.graph.active, start)
    np.testing.assert_array_equal(two.graph.active, start)


def test_lazy_samples_load_through_their_loader():
    sample = scene()
    calls = []

    def loader():
        calls.append(1)
        return sample

    lazy = LazySample("scene", "scenes", loader)
    bank = EpisodeBank([lazy], make_cfg(max_nodes=40))
    assert calls == [] and bank.indices_of("scenes") == [0]
    env = PromptEnv(bank, make_cfg(max_nodes=40), seed=0)
    assert env.reset(seed=0)[1]["sample"] == "scene" and calls == [1]


# ----- the vectorised environment ----------------------------------------------------------------
def test_vec_env_matches_single_steps_and_decodes_once_per_sample():
    samples = [scene("a", 0), scene("b", 1)]
    cfg = make_cfg(reward="segmentation", max_nodes=40, lookahead=False)  # the lookahead decodes more
    batched_segmenter, single_segmenter = DiscSegmenter(), DiscSegmenter()
    vec = VecPromptEnv(EpisodeBank(samples, cfg, segmenter=batched_segmenter), cfg, num_envs=5, seed=0)
    single = [PromptEnv(samples, cfg, segmenter=single_segmenter, seed=0) for _ in range(5)]
    assert vec.num_envs == len(vec) == 5 and vec.observation_space == single[0].observation_space
    starts = [0, 0, 1, 1, 0]
    for k, (env_s, start) in enumerate(zip(single, starts)):
        vec.reset_one(k, options={"sample": start})
        env_s.reset(seed=0, options={"sample": start})
    assert batched_segmenter.embed_calls == 2  # the environments share the bank's embeddings
    np.testing.assert_array_equal(vec.action_masks(), np.stack([env.action_masks() for env in single]))
    rng = np.random.default_rng(0)
    for step in range(6):
        actions = []
        for env in vec.envs:
            valid = np.flatnonzero(env.action_masks()[:env.graph.num_nodes])
            actions.append(int(rng.choice(valid)))
        if step == 5:
            actions[1] = vec[1].stop_action
        calls = batched_segmenter.decode_calls
        results = vec.step(actions)
        toggled_samples = {env.sample.name for env, a in zip(vec.envs, actions) if a != env.stop_action}
        assert batched_segmenter.decode_calls - calls == len(toggled_samples)
        for env, action, result in zip(single, actions, results):
            expected = env.step(action)
            assert result[1] == pytest.approx(expected[1], abs=1e-12)
            assert result[2:4] == expected[2:4]
            assert result[4] == expected[4]
            for key in result[0]:
                np.testing.assert_array_equal(result[0][key], expected[0][key])


def test_vec_env_checks_every_action_before_applying_any():
    cfg = make_cfg(max_nodes=40)
    vec = VecPromptEnv(EpisodeBank([scene()], cfg), cfg, num_envs=2, seed=0)
    vec.reset(seed=0)
    before = [env.graph.active.copy() for env in vec.envs]
    good = int(np.flatnonzero(vec.action_masks()[0, :vec[0].graph.num_nodes])[0])
    with pytest.raises(ValueError, match="padding"):
        vec.step([good, vec[1].graph.num_nodes])
    for env, active in zip(vec.envs, before):
        np.testing.assert_array_equal(env.graph.active, active)
    with pytest.raises(ValueError, match="2 environments but 1 actions"):
        vec.step([good])
    with pytest.raises(ValueError, match="at least 1"):
        VecPromptEnv(EpisodeBank([scene()], cfg), cfg, num_envs=0)


def test_serial_vec_env_steps_each_environment():
    cfg = make_cfg(max_nodes=40)
    envs = [PromptEnv([scene()], cfg, seed=k) for k in range(2)]
    alone = [PromptEnv([scene()], cfg, seed=k) for k in range(2)]
    serial = SerialVecEnv(envs)
    observations = serial.reset(seed=3)
    for k, env in enumerate(alone):
        np.testing.assert_array_equal(observations[k]["nodes"], env.reset(seed=3 + k)[0]["nodes"])
    actions = [int(np.flatnonzero(mask)[0]) for mask in serial.action_masks()]
    for result, env, action in zip(serial.step(actions), alone, actions):
        assert result[1:] == env.step(action)[1:]


# ----- the oracle ----------------------------------------------------------------------------------
@pytest.mark.parametrize("start", ["initial", "empty"])
def test_oracle_never_ends_below_its_start_and_stops_when_no_toggle_helps(start):
    cfg = make_cfg(reward="segmentation", start=start, max_nodes=60, episode_length=40, min_positive=0,
                   max_positive=12)
    for seed in range(12):
        sample = random_sample(seed)
        segmenter = DiscSegmenter()
        env = PromptEnv([sample], cfg, segmenter=segmenter, seed=0)
        _, start_info = env.reset(seed=0)
        actions, info = run_oracle(env, seed=0)
        assert info["dice"] >= start_info["dice"] - 1e-12
        assert info["dice"] == pytest.approx(dice(env.mask, sample.truth_mask))
        # every step but a final STOP raised Dice; then no valid toggle raises it any more
        assert all(a != env.stop_action for a in actions[:-1])
        if actions[-1] == env.stop_action:
            toggles = np.flatnonzero(env.action_masks()[:env.graph.num_nodes])
            for node in toggles:
                trial = env.graph.clone()
                trial.toggle(int(node))
                masks, scores = env.bank.decode(env.record, [trial])
                assert scores[0] <= info["dice"] + 1e-9
        else:
            assert len(actions) == cfg.env.episode_length
        # replayed in a fresh environment, every toggle raised Dice (the reward, without step penalty)
        replay = PromptEnv([sample], cfg, segmenter=DiscSegmenter(), seed=0)
        replay.reset(seed=0)
        for action in actions:
            _, reward, terminated, _, after = replay.step(action)
            assert terminated or reward > 0
        assert after["dice"] == pytest.approx(info["dice"])
        # the oracle's trial toggles leave the graph statistics as a fresh computation gives them
        fresh = env.graph.clone()
        fresh.recompute()
        np.testing.assert_allclose(env.graph.node_features(), fresh.node_features(), atol=1e-6)


def test_oracle_removes_a_wrong_positive():
    env = PromptEnv([scene()], make_cfg(reward="segmentation", max_nodes=40), segmenter=DiscSegmenter(), seed=0)
    _, start = env.reset(seed=0)
    actions, info = run_oracle(env, seed=0)
    assert node_of(env, DISTRACTOR, 1) in actions and info["dice"] > start["dice"]
    assert actions[-1] == env.stop_action and env.done


def test_oracle_needs_a_segmenter_and_a_truth_mask():
    sample = scene()
    with pytest.raises(ValueError, match="segmenter"):
        run_oracle(PromptEnv([sample], make_cfg(max_nodes=40), seed=0))
    unlabelled = EpisodeSample("u", GRID, sample.target_features, sample.prompt_set, sample.reference,
                               image=sample.image)
    env = PromptEnv([unlabelled], make_cfg(max_nodes=40), segmenter=DiscSegmenter(), seed=0)
    with pytest.raises(ValueError, match="truth mask"):
        run_oracle(env)


def test_oracle_ends_at_truncation():
    cfg = make_cfg(reward="segmentation", max_nodes=40, episode_length=1)
    env = PromptEnv([scene()], cfg, segmenter=DiscSegmenter(), seed=0)
    _, start = env.reset(seed=0)
    actions, info = run_oracle(env, seed=0)
    assert len(actions) == 1 and actions[0] != env.stop_action and env.done
    assert info["dice"] > start["dice"]
