"""Every learner of the registry, on many random graphs: no masked action is ever chosen."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_cfg, random_sample

from gpoa.agents import LEARNERS
from gpoa.agents.adversarial import ATTACKER, DEFENDER
from gpoa.agents.greedy import GreedyPolicy
from gpoa.envs import EpisodeBank, VecPromptEnv
from gpoa.envs.mask_view import LOOKAHEAD_SCALE
from gpoa.graph import NODE_FEATURES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_graph_envs(seed: int, count: int = 6) -> VecPromptEnv:
    """``count`` environments over random graphs of different sizes (label-free graph reward)."""
    cfg = make_cfg(max_nodes=48, episode_length=8)
    cfg.dqn.hidden = cfg.ppo.hidden = 16
    bank = EpisodeBank([random_sample(seed * 100 + k) for k in range(count)], cfg)
    return VecPromptEnv(bank, cfg, num_envs=count, seed=seed), cfg


def acting(name: str, agent, vec_env: VecPromptEnv, step: int):
    """The learner's own way of choosing actions during training (and a mode change for PPD's roles)."""
    if name == "dqn":
        return lambda obs, masks: agent.act(obs, masks, epsilon=[0.0, 0.5, 1.0][step % 3])
    if name == "ppo":
        return lambda obs, masks: agent.act(obs, masks)[0]
    role = ATTACKER if step % 2 == 0 else DEFENDER
    for env in vec_env.envs:  # the attacker only activates, the defender only deactivates
        env.set_edits("activate" if role == ATTACKER else "deactivate", shield=False)
    return lambda obs, masks: agent.role(role).act(obs, masks, epsilon=0.3)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_no_learner_ever_chooses_a_masked_action(name):
    for seed in range(3):
        vec_env, cfg = random_graph_envs(seed)
        agent = LEARNERS[name].make_agent(vec_env, cfg, seed, "cpu")
        greedy = GreedyPolicy(agent.network)
        observations = vec_env.reset(seed=seed)
        for step in range(24):
            choose = acting(name, agent, vec_env, step)
            observations = [env.observation() for env in vec_env.envs] if name == "ppd" else observations
            masks = vec_env.action_masks()
            actions = np.asarray(choose(observations, masks))
            assert masks[np.arange(len(actions)), actions].all(), (name, seed, step)
            assert all(masks[k, greedy(obs, masks[k])] for k, obs in enumerate(observations))
            results = vec_env.step(actions)
            observations = [vec_env.reset_one(k) if terminated or truncated else obs
                            for k, (obs, _, terminated, truncated, _) in enumerate(results)]


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_the_agreement_prior_reaches_the_kept_network_in_dice_units(name):
    vec_env, cfg = random_graph_envs(0, count=2)
    cfg.agent.agreement_prior = 2.0
    agent = LEARNERS[name].make_agent(vec_env, cfg, 0, "cpu")
    assert NODE_FEATURES[agent.network.prior_column] == "lookahead_region_agreement"
    # the column is the change of agreement × LOOKAHEAD_SCALE; the prior is 2 × that change
    assert agent.network.prior_weight == pytest.approx(2.0 / LOOKAHEAD_SCALE)
    if name == "ppd":  # the attacker's aim is the opposite of the prior's
        assert agent.role(ATTACKER).q_network.prior_weight == 0.0
    cfg.agent.agreement_prior = 0.0
    assert LEARNERS[name].make_agent(vec_env, cfg, 0, "cpu").network.prior_weight == 0.0
