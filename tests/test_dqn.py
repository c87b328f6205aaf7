"""Double DQN: replay, resumable agent state, the training loop over a vectorised env, a planted task."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from gymnasium import spaces
from planted import PlantedOutlierEnv

from gpoa.agents.dqn import DQNAgent, ReplayBuffer, linear_schedule, train
from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.config import DQNConfig
from gpoa.envs import SerialVecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(**overrides) -> DQNConfig:
    values = dict(learning_rate=1e-3, batch_size=64, buffer_size=20000, gamma=0.9, target_update=100,
                  epsilon_start=1.0, epsilon_end=0.05, epsilon_fraction=0.4, learning_starts=200,
                  train_frequency=2, hidden=64)
    values.update(overrides)
    return DQNConfig(**values)


def test_agent_state_round_trips_with_weights_only(tmp_path):
    env = PlantedOutlierEnv()
    agent = train(SerialVecEnv([env]), small_config(learning_starts=64), total_steps=200, seed=0)
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    restored = DQNAgent.for_env(env, small_config(learning_starts=64), seed=99)
    restored.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))
    assert (restored.global_step, restored.gradient_steps) == (agent.global_step, agent.gradient_steps)
    for name, value in agent.q_network.state_dict().items():
        torch.testing.assert_close(restored.q_network.state_dict()[name], value)
    assert restored.optimizer.state_dict()["state"].keys() == agent.optimizer.state_dict()["state"].keys()


def test_agent_state_of_another_network_is_refused():
    env = PlantedOutlierEnv()
    state = DQNAgent.for_env(env, small_config(hidden=64)).state_dict()
    with pytest.raises(ValueError, match="agent state is for network"):
        DQNAgent.for_env(env, small_config(hidden=32)).load_state_dict(state)


def test_agent_is_sized_from_the_env_and_checks_its_action_space():
    env = PlantedOutlierEnv()
    agent = DQNAgent.for_env(env, small_config())
    assert agent.network is agent.q_network and agent.learner == "dqn"
    assert agent.q_network.architecture == {"node_dim": 4, "global_dim": 2, "hidden": 64, "node_layers": 1,
                                            "value_head": False, "prior_column": -1, "prior_weight": 0.0}
    env.action_space = spaces.Discrete(PlantedOutlierEnv.max_nodes)  # no STOP column
    with pytest.raises(ValueError, match="max_nodes \\+ 1"):
        DQNAgent.for_env(env, small_config())


def test_replay_buffer_is_a_ring_and_linear_schedule_decays_then_holds():
    buffer = ReplayBuffer(capacity=3, max_nodes=2, node_dim=1, global_dim=1)
    for step in range(5):
        obs = {"nodes": np.full((2, 1), step, np.float32), "valid": np.ones(2, np.int8),
               "globals": np.zeros(1, np.float32)}
        buffer.add(obs, step % 3, float(step), obs, np.ones(3, bool), terminated=step == 4)
    assert len(buffer) == 3 and sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]
    batch = buffer.sample(50, np.random.default_rng(0))
    assert set(batch["rewards"].tolist()) == {2.0, 3.0, 4.0}
    np.testing.assert_array_equal(batch["dones"], batch["rewards"] == 4.0)
    np.testing.assert_array_equal(batch["nodes"][:, 0, 0], batch["rewards"])
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 500) == pytest.approx(0.1)


def test_trains_on_the_batched_prompt_env():
    from synthetic import DiscSegmenter, make_cfg, scene

    from gpoa.envs import EpisodeBank, VecPromptEnv

    cfg = make_cfg(reward="segmentation", max_nodes=40, episode_length=6)
    segmenter = DiscSegmenter()
    bank = EpisodeBank([scene("a", 0), scene("b", 1)], cfg, segmenter=segmenter)
    logs = []
    agent = train(VecPromptEnv(bank, cfg, num_envs=3), small_config(learning_starts=32, batch_size=16, hidden=16),
                  total_steps=120, seed=0, callback=lambda step, entry: logs.append(entry))
    assert agent.global_step == 120 and agent.gradient_steps > 0
    episodes = [entry for entry in logs if "charts/episodic_return" in entry]
    assert episodes and all("charts/dice" in entry and "charts/positives" in entry for entry in episodes)
    assert segmenter.embed_calls == 2  # one embedding per sample over the whole run


def test_same_seed_gives_same_weights():
    def weights(seed):
        envs = SerialVecEnv([PlantedOutlierEnv(), PlantedOutlierEnv()])
        agent = train(envs, small_config(learning_starts=64), total_steps=300, seed=seed)
        return torch.cat([p.detach().flatten() for p in agent.q_network.parameters()])

    first = weights(7)
    assert torch.equal(first, weights(7))
    assert not torch.equal(first, weights(8))


def test_training_logs_stops_and_resumes():
    calls, logs = [], []

    class CountingVecEnv(SerialVecEnv):
        def step(self, actions):
            calls.append(len(actions))
            return super().step(actions)

    envs = CountingVecEnv([PlantedOutlierEnv() for _ in range(3)])

    def callback(step, entry):
        logs.append(entry)
        return "losses/td_loss" in entry  # stop at the first loss report

    cfg = small_config(learning_starts=64, train_frequency=1)
    agent = train(envs, cfg, total_steps=5000, seed=0, callback=callback)
    assert set(calls) == {3}
    episode = next(entry for entry in logs if "charts/episodic_return" in entry)
    assert {"charts/episode_length", "charts/epsilon", "charts/success"} <= episode.keys()
    assert "charts/label" not in episode  # only numbers are logged
    assert {"losses/q_values", "charts/epsilon", "charts/SPS"} <= logs[-1].keys()
    assert 100 <= agent.gradient_steps < 103 and agent.global_step == 3 * len(calls) < 5000

    before = agent.global_step
    resumed = train(envs, cfg, total_steps=before + 30, seed=0, agent=agent)
    assert resumed is agent and before + 30 <= agent.global_step < before + 33
    # truncated episodes bootstrap: only STOP (terminated) transitions are stored as done
    stored = agent.buffer.size
    is_stop = agent.buffer.actions[:stored] == PlantedOutlierEnv.max_nodes
    assert np.array_equal(agent.buffer.dones[:stored] == 1.0, is_stop)


def test_dqn_solves_the_planted_outlier_task():
    envs = SerialVecEnv([PlantedOutlierEnv() for _ in range(4)])
    start = time.perf_counter()
    agent = train(envs, small_config(), total_steps=4000, seed=0)
    training_seconds = time.perf_counter() - start
    policy, env = GreedyPolicy(agent.q_network), PlantedOutlierEnv()
    successes = [run_greedy(policy, env, seed=10_000 + i)[1]["success"] for i in range(50)]
    rate = float(np.mean(successes))
    print(f"planted task: success {rate:.2f} on 50 fresh episodes after {training_seconds:.1f} s of training")
    assert rate >= 0.9
