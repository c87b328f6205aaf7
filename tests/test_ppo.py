"""PPO with invalid-action masking: GAE by hand, masking, the planted task, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import PlantedOutlierEnv

from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.agents.ppo import MASKED_LOGIT, PPOAgent, compute_gae, masked_distribution, train
from gpoa.config import PPOConfig
from gpoa.envs import SerialVecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(**overrides) -> PPOConfig:
    values = dict(learning_rate=3e-3, num_steps=32, num_minibatches=4, update_epochs=4, gamma=0.9, gae_lambda=0.95,
                  ent_coef=0.01, hidden=64)
    values.update(overrides)
    return PPOConfig(**values)


def test_gae_equals_a_hand_computed_example_with_an_episode_end_inside():
    gamma, lam = 0.9, 0.8
    rewards = np.array([[1.0], [0.0], [2.0], [0.5]])
    values = np.array([[0.5], [0.4], [1.0], [0.2]])
    dones = np.array([[0.0], [1.0], [0.0], [0.0]])  # the first episode ends at step 1
    next_value = np.array([0.7])
    # by hand: deltas, then A_t = delta_t + gamma * lam * A_{t+1} within an episode
    d3 = 0.5 + gamma * 0.7 - 0.2
    d2 = 2.0 + gamma * 0.2 - 1.0
    d1 = 0.0 - 0.4  # episode end: no bootstrap from step 2
    d0 = 1.0 + gamma * 0.4 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1
    a0 = d0 + gamma * lam * a1
    advantages, returns = compute_gae(rewards, values, dones, next_value, gamma, lam)
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2, a3], rtol=1e-6)
    np.testing.assert_allclose(returns, advantages + values, atol=1e-6)


def test_masked_actions_get_no_probability_and_no_entropy():
    scores = torch.tensor([[3.0, 1.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    masks = torch.tensor([[True, False, False, True], [True, True, True, True]])
    distribution = masked_distribution(scores, masks)
    probs = distribution.probs
    assert probs[0, 1] == 0 and probs[0, 2] == 0 and torch.isfinite(distribution.entropy()).all()
    two = torch.softmax(torch.tensor([3.0, 0.0]), 0)
    torch.testing.assert_close(distribution.entropy()[0], -(two * two.log()).sum())
    torch.testing.assert_close(distribution.entropy()[1], torch.log(torch.tensor(4.0)))
    assert MASKED_LOGIT > -1e30  # finite: no NaN from inf - inf


def test_sampling_never_picks_a_masked_action():
    env = SerialVecEnv([PlantedOutlierEnv() for _ in range(6)])
    agent = PPOAgent.for_env(env, small_config(), seed=0)
    observations = env.reset(seed=0)
    for _ in range(40):
        masks = env.action_masks()
        actions, logprobs, _ = agent.act(observations, masks)
        assert masks[np.arange(len(actions)), actions].all() and np.isfinite(logprobs).all()
        results = env.step(actions)
        observations = [env.reset_one(k) if term or trunc else obs
                        for k, (obs, _, term, trunc, _) in enumerate(results)]


def test_ppo_solves_the_planted_outlier_task_and_logs_its_diagnostics():
    logs = []
    env = SerialVecEnv([PlantedOutlierEnv() for _ in range(8)])
    agent = train(env, small_config(), total_steps=12000, seed=0, callback=lambda step, entry: logs.append(entry))
    keys = set().union(*logs)
    assert {"losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "losses/entropy",
            "charts/learning_rate", "charts/episodic_return"} <= keys
    rates = [entry["charts/learning_rate"] for entry in logs if "charts/learning_rate" in entry]
    assert rates[0] > rates[-1] and np.all(np.diff(rates) <= 0)  # linear anneal
    policy, single = GreedyPolicy(agent.network), PlantedOutlierEnv()
    successes = [run_greedy(policy, single, seed=10_000 + i)[1]["success"] for i in range(50)]
    assert np.mean(successes) >= 0.9


def test_agent_state_round_trips():
    env = SerialVecEnv([PlantedOutlierEnv() for _ in range(2)])
    agent = train(env, small_config(num_steps=8), total_steps=64, seed=0)
    state = agent.state_dict()
    restored = PPOAgent.for_env(env, small_config(num_steps=8), seed=5)
    restored.load_state_dict(state)
    assert (restored.global_step, restored.updates) == (agent.global_step, agent.updates) == (64, 4)
    for name, value in agent.network.state_dict().items():
        torch.testing.assert_close(restored.network.state_dict()[name], value)
    with pytest.raises(ValueError, match="agent state"):
        PPOAgent.for_env(env, small_config(hidden=16)).load_state_dict(state)
