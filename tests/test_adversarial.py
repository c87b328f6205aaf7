"""Point Prompt Defender: roles, the alternation of attacker and defender, and the defender alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import DISTRACTOR, OBJECT, OUTLIER, DiscSegmenter, make_cfg, node_of, scene, truth_mask

from gpoa.agents.adversarial import (
    ATTACKER,
    DEFENDER,
    AttackDefendAgent,
    inference_config,
    train,
    training_config,
)
from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.config import DQNConfig
from gpoa.envs import GLOBAL_FEATURES, EpisodeBank, PromptEnv, VecPromptEnv
from gpoa.experiments.ablation import ABLATION_COLUMNS, PPDRun, ablation_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ppd_cfg(**dqn):
    cfg = make_cfg(reward="segmentation", max_nodes=40, episode_length=6, lookahead=False)
    cfg.dqn = DQNConfig(**{"learning_rate": 1e-3, "batch_size": 32, "learning_starts": 64, "train_frequency": 1,
                           "hidden": 32, "target_update": 50, **dqn})
    cfg.ppd.attack_steps = [1, 3]
    return cfg


def test_edit_modes_restrict_the_toggles():
    env = PromptEnv([scene()], make_cfg(reward="segmentation", max_nodes=40), segmenter=DiscSegmenter(), seed=0)
    env.reset(seed=0)
    n = env.graph.num_nodes
    env.set_edits("activate", shield=False)
    assert not (env.action_masks()[:n] & env.graph.active).any() and env.action_masks()[:n].any()
    env.set_edits("deactivate", shield=False)
    assert not (env.action_masks()[:n] & ~env.graph.active).any() and env.action_masks()[:n].any()
    with pytest.raises(ValueError, match="edits"):
        env.set_edits("shuffle")


def test_the_defender_can_undo_the_attackers_toggle():
    env = PromptEnv([scene()], make_cfg(reward="segmentation", max_nodes=40), segmenter=DiscSegmenter(), seed=0)
    env.reset(seed=0)
    env.set_edits("activate", shield=False)
    candidate = int(np.flatnonzero(env.action_masks()[:env.graph.num_nodes])[0])
    env.step(candidate)
    assert env.graph.active[candidate] and not env.action_masks()[candidate]
    env.set_edits("deactivate", shield=False)
    assert env.action_masks()[candidate]  # toggled once already, but by the other role
    env.step(candidate)
    assert not env.graph.active[candidate]


def test_attacker_acts_first_then_the_defender_until_stop():
    cfg = training_config(ppd_cfg())
    vec = VecPromptEnv(EpisodeBank([scene("a", 0), scene("b", 1)], cfg, segmenter=DiscSegmenter()), cfg, num_envs=2)
    phases = []

    class Recorder(AttackDefendAgent):
        def role(self, name):
            phases.append(name)
            return super().role(name)

    agent = Recorder.for_env(vec, cfg, seed=0)
    logs = []
    train(vec, cfg, total_steps=400, seed=0, agent=agent, callback=lambda step, entry: logs.append(entry))
    episodes = [entry for entry in logs if "charts/attack_steps" in entry]
    assert episodes and all(0 <= e["charts/attack_steps"] <= 3 for e in episodes)  # 0: the attacker STOPped at once
    assert agent.attacker.global_step > 0 and agent.defender.global_step > 0
    assert agent.attacker.global_step + agent.defender.global_step == agent.global_step
    # an attacker transition is stored as terminal only when it hands over
    stored = agent.attacker.buffer.size
    assert 0 < agent.attacker.buffer.dones[:stored].sum() <= stored
    assert {ATTACKER, DEFENDER} <= set(phases)


def test_defender_learns_to_remove_a_planted_wrong_positive_without_the_truth():
    cfg = training_config(ppd_cfg())
    bank = EpisodeBank([scene(str(i), i) for i in range(3)], cfg, segmenter=DiscSegmenter())
    vec = VecPromptEnv(bank, cfg, num_envs=4)
    agent = train(vec, cfg, total_steps=3000, seed=0)
    run_cfg = inference_config(cfg)
    blind = dataclasses.replace(run_cfg, env=dataclasses.replace(run_cfg.env, reward="graph"))
    successes = []
    for seed in range(3):
        sample = scene(str(seed), seed)
        sample.truth_mask = None  # inference never reads the truth
        env = PromptEnv([sample], blind, segmenter=DiscSegmenter(), seed=0)
        actions, info, _ = run_greedy(GreedyPolicy(agent.network), env, options={"sample": 0})
        # the known answer: the two wrong positives (the lookalike far from the object and the
        # background-like one) are the only prompts worth removing
        wrong = {node_of(env, DISTRACTOR, 1), node_of(env, OUTLIER, 1)}
        kept = [node_of(env, patch, 1) for patch in (OBJECT[5], OBJECT[6], OBJECT[9], OBJECT[10])]
        removed = {a for a in actions if a < env.graph.num_nodes}
        successes.append(bool(removed) and removed <= wrong and env.graph.active[kept].all())
        assert all(env.graph.initially_active[a] for a in removed)  # removals only
    assert np.mean(successes) >= 2 / 3


def test_agent_state_round_trips_with_weights_only(tmp_path):
    cfg = training_config(ppd_cfg())
    vec = VecPromptEnv(EpisodeBank([scene("a", 0)], cfg, segmenter=DiscSegmenter()), cfg, num_envs=2)
    agent = train(vec, cfg, total_steps=160, seed=0)
    torch.save(agent.state_dict(), tmp_path / "state.pt")
    copy = AttackDefendAgent.for_env(vec, cfg, seed=5)
    copy.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert copy.global_step == agent.global_step == 160
    for role in (ATTACKER, DEFENDER):
        for ours, theirs in zip(agent.role(role).q_network.parameters(), copy.role(role).q_network.parameters()):
            torch.testing.assert_close(ours, theirs)
        assert copy.role(role).gradient_steps == agent.role(role).gradient_steps


def test_ablation_row_leaves_ignored_pixels_out_and_gates_only_the_initial_defender(tmp_path):
    cfg = ppd_cfg()
    train_cfg, run_cfg = training_config(cfg), inference_config(cfg)
    vec = VecPromptEnv(EpisodeBank([scene("a", 0)], train_cfg, segmenter=DiscSegmenter()), train_cfg, num_envs=1)
    agent = AttackDefendAgent.for_env(vec, train_cfg, seed=0)
    attacker, defender = (GreedyPolicy(agent.role(role).q_network) for role in (ATTACKER, DEFENDER))

    def row(**options):
        return ablation_row(scene("a", 0), train_cfg, run_cfg, attacker, defender, DiscSegmenter(), 3, **options)

    plain = row()
    assert set(plain) == set(ABLATION_COLUMNS)
    assert row(ignore=np.zeros_like(truth_mask())) == plain
    # leaving out every background pixel leaves no false positive: no column can fall, and the
    # discs that spill over the object's edge make at least one rise
    ignored = row(ignore=~truth_mask())
    assert all(ignored[k] >= plain[k] - 1e-12 for k in ABLATION_COLUMNS)
    assert any(ignored[k] > plain[k] + 1e-6 for k in ABLATION_COLUMNS)
    with pytest.raises(ValueError, match="ignore mask"):
        row(ignore=np.zeros((3, 3), bool))
    # a confidence gate nothing passes keeps stage 1's prompts; the attacked → defended step is ungated
    gated = GreedyPolicy(agent.role(DEFENDER).q_network, min_confidence=2.0,
                         confidence_index=GLOBAL_FEATURES.index("region_confidence"))
    assert plain["initial_defended"] != plain["initial"]  # ungated, this defender edits stage 1's prompts
    closed = row(initial_defender=gated)
    assert closed["initial_defended"] == closed["initial"] == plain["initial"]
    assert {k: closed[k] for k in ("ideal", "attacked", "defended")} == \
        {k: plain[k] for k in ("ideal", "attacked", "defended")}
    # a PPD run reads the ignore mask from its file and gives stage 1's prompts to its gated defender
    Image.fromarray((~truth_mask()).astype(np.uint8) * 255).save(tmp_path / "ignore.png")
    run = PPDRun(attacker, defender, gated, train_cfg, run_cfg, 3)
    assert run.row(scene("a", 0), DiscSegmenter(), tmp_path / "ignore.png") == \
        row(ignore=~truth_mask(), initial_defender=gated)
    with pytest.raises(ValueError, match="segmenter"):
        run.row(scene("a", 0), None)
