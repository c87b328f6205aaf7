"""The node-set Q-network, its greedy policy, checkpoints, and Double DQN on a planted task."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from gpoa.agents.dqn import (
    DQNAgent,
    GreedyPolicy,
    NodeSetQNetwork,
    load_policy,
    masked_argmax,
    run_greedy,
    save_policy,
    train,
)
from gpoa.config import DQNConfig
from gpoa.errors import UsageError


class PlantedOutlierEnv(gym.Env):
    """8–12 prompt nodes, 1–3 of them planted outliers; switch every outlier off, keep the rest, STOP.

    Node features: [active, pattern_a, pattern_b, noise]; outliers sit near (2, 2) in the pattern
    plane, good nodes around the origin. Only active nodes can be toggled (off); reward +1 per
    outlier switched off, −1 per good node switched off. STOP terminates; ``max_steps`` truncates.
    Globals: [share of steps used, share of nodes still active].
    """

    max_nodes, max_steps = 12, 5

    def __init__(self):
        self.observation_space = spaces.Dict({
            "nodes": spaces.Box(-np.inf, np.inf, (self.max_nodes, 4), np.float32),
            "valid": spaces.Box(0, 1, (self.max_nodes,), np.int8),
            "globals": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        })
        self.action_space = spaces.Discrete(self.max_nodes + 1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        rng = self.np_random
        self.count = int(rng.integers(8, self.max_nodes + 1))
        self.outlier = np.zeros(self.count, dtype=bool)
        self.outlier[rng.choice(self.count, size=int(rng.integers(1, 4)), replace=False)] = True
        self.pattern = rng.normal(0.0, 0.5, size=(self.count, 2))
        self.pattern[self.outlier] = rng.normal(2.0, 0.3, size=(int(self.outlier.sum()), 2))
        self.noise = rng.normal(size=self.count)
        self.active = np.ones(self.count, dtype=bool)
        self.steps = 0
        return self._observation(), {}

    def _observation(self) -> dict:
        nodes = np.zeros((self.max_nodes, 4), dtype=np.float32)
        nodes[: self.count] = np.column_stack([self.active, self.pattern, self.noise])
        valid = np.zeros(self.max_nodes, dtype=np.int8)
        valid[: self.count] = 1
        globals_ = np.array([self.steps / self.max_steps, self.active.mean()], dtype=np.float32)
        return {"nodes": nodes, "valid": valid, "globals": globals_}

    def action_masks(self) -> np.ndarray:
        mask = np.zeros(self.max_nodes + 1, dtype=bool)
        mask[: self.count] = self.active
        mask[-1] = True
        return mask

    def step(self, action):
        assert self.action_masks()[action], f"invalid action {action}"
        self.steps += 1
        reward, terminated = 0.0, action == self.max_nodes
        if not terminated:
            reward = 1.0 if self.outlier[action] else -1.0
            self.active[action] = False
        truncated = not terminated and self.steps >= self.max_steps
        success = bool(np.all(self.active != self.outlier))
        return self._observation(), reward, terminated, truncated, {"success": success, "label": "planted"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tiny networks train several times faster on one thread than with intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides) -> DQNConfig:
    values = dict(learning_rate=1e-3, batch_size=64, buffer_size=20000, gamma=0.9, target_update=100,
                  epsilon_start=1.0, epsilon_end=0.05, epsilon_fraction=0.4, learning_starts=200,
                  train_frequency=2, hidden=64)
    values.update(overrides)
    return DQNConfig(**values)


def random_inputs(batch: int, nodes: int, node_dim: int = 6, global_dim: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, nodes, node_dim, generator=generator), torch.ones(batch, nodes, dtype=torch.bool),
            torch.randn(batch, global_dim, generator=generator))


@pytest.fixture(params=[1, 2], ids=["one-layer", "two-layer"])
def network(request) -> NodeSetQNetwork:
    torch.manual_seed(0)
    return NodeSetQNetwork(node_dim=6, global_dim=3, hidden=32, node_layers=request.param).eval()


@pytest.mark.parametrize("count", [1, 7, 60])
def test_network_gives_one_q_per_node_and_stop(network, count):
    q = network(*random_inputs(batch=3, nodes=count))
    assert q.shape == (3, count + 1)
    assert torch.isfinite(q).all()


def test_permuting_nodes_permutes_their_q_values(network):
    nodes, valid, globals_ = random_inputs(batch=2, nodes=11)
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q = network(nodes, valid, globals_)
        q_permuted = network(nodes[:, permutation], valid[:, permutation], globals_)
    torch.testing.assert_close(q_permuted[:, :-1], q[:, permutation])
    torch.testing.assert_close(q_permuted[:, -1], q[:, -1])


def test_padded_nodes_change_nothing(network):
    nodes, valid, globals_ = random_inputs(batch=2, nodes=9)
    garbage = 5.0 * torch.randn(2, 20, 6, generator=torch.Generator().manual_seed(2))
    padded_nodes = torch.cat([nodes, garbage], dim=1)
    padded_valid = torch.cat([valid, torch.zeros(2, 20, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        q = network(nodes, valid, globals_)
        q_padded = network(padded_nodes, padded_valid, globals_)
    torch.testing.assert_close(q_padded[:, :9], q[:, :9])
    torch.testing.assert_close(q_padded[:, -1], q[:, -1])


def test_action_q_is_the_q_of_the_chosen_column(network):
    nodes, valid, globals_ = random_inputs(batch=4, nodes=9)
    valid[1, 5:] = False
    actions = torch.tensor([0, 4, 9, 9])  # two node toggles, two STOPs
    with torch.no_grad():
        expected = network(nodes, valid, globals_).gather(1, actions[:, None])[:, 0]
        torch.testing.assert_close(network.action_q(nodes, valid, globals_, actions), expected)


@pytest.mark.parametrize("node_layers", [1, 2])
def test_greedy_policy_matches_the_network(node_layers):
    torch.manual_seed(3)
    network = NodeSetQNetwork(node_dim=15, global_dim=5, hidden=128, node_layers=node_layers).eval()
    rng = np.random.default_rng(3)
    policy = GreedyPolicy(network)
    for count in (1, 40, 300):
        valid = np.zeros(320, dtype=np.int8)
        valid[rng.choice(320, size=count, replace=False)] = 1  # real nodes anywhere, not only first
        nodes = np.where(valid[:, None] == 1, rng.normal(size=(320, 15)), 0.0).astype(np.float32)
        obs = {"nodes": nodes, "valid": valid, "globals": rng.normal(size=5).astype(np.float32)}
        with torch.no_grad():
            expected = network(torch.from_numpy(nodes)[None], torch.from_numpy(valid == 1)[None],
                               torch.from_numpy(obs["globals"])[None])[0].numpy()
        q = policy.q_values(obs)
        real = np.append(valid == 1, True)
        np.testing.assert_allclose(q[real], expected[real], rtol=1e-5, atol=1e-5)
        assert np.all(q[~real] == -np.inf)
        mask = real & (rng.random(321) < 0.5)
        mask[-1] = True
        best = masked_argmax(torch.from_numpy(expected), torch.from_numpy(mask)).item()
        assert policy(obs, mask) == best


def test_masked_argmax_picks_the_best_valid_action():
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(500, 9, generator=generator)
    mask = torch.rand(500, 9, generator=generator) < 0.3
    mask[:, -1] = True
    chosen = masked_argmax(q, mask)
    assert mask.gather(1, chosen[:, None]).all()
    torch.testing.assert_close(q.gather(1, chosen[:, None]).squeeze(1), q.masked_fill(~mask, -np.inf).amax(1))
    with pytest.raises(ValueError, match="no valid action"):
        masked_argmax(q[:2], torch.zeros(2, 9, dtype=torch.bool))


def test_policy_checkpoint_round_trips(tmp_path, network):
    path = tmp_path / "run" / "policy.pt"
    save_policy(path, network, extra={"dice": np.float64(0.81), "steps": np.int64(300), "images": ["a", "b"]})
    assert torch.load(path, weights_only=True)["architecture"] == network.architecture
    loaded, meta = load_policy(path)
    assert meta == {"dice": 0.81, "steps": 300, "images": ["a", "b"]}
    inputs = random_inputs(batch=2, nodes=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), network(*inputs))


def test_agent_state_round_trips_with_weights_only(tmp_path):
    env = PlantedOutlierEnv()
    agent = train([env], small_config(learning_starts=64), total_steps=200, seed=0)
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    restored = DQNAgent.for_env(env, small_config(learning_starts=64), seed=99)
    restored.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))
    assert (restored.global_step, restored.gradient_steps) == (agent.global_step, agent.gradient_steps)
    for name, value in agent.q_network.state_dict().items():
        torch.testing.assert_close(restored.q_network.state_dict()[name], value)
    assert restored.optimizer.state_dict()["state"].keys() == agent.optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a torch file", "cannot be read"),
    ("truncated", "cannot be read"),
    ({"weights": torch.zeros(2)}, "not a GPOA policy"),
    ({"format": "gpoa-node-set-q-network/1", "architecture": {"node_dim": 6}}, "damaged"),
])
def test_unusable_policy_files_raise_usage_errors(tmp_path, network, content, message):
    path = tmp_path / "policy.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        save_policy(path, network)
        path.write_bytes(path.read_bytes()[:200])
    elif isinstance(content, dict):
        torch.save(content, path)
    with pytest.raises(UsageError, match=message) as error:
        load_policy(path)
    assert str(path) in str(error.value)


def test_same_seed_gives_same_weights():
    def weights(seed):
        envs = [PlantedOutlierEnv(), PlantedOutlierEnv()]
        agent = train(envs, small_config(learning_starts=64), total_steps=300, seed=seed)
        return torch.cat([p.detach().flatten() for p in agent.q_network.parameters()])

    first = weights(7)
    assert torch.equal(first, weights(7))
    assert not torch.equal(first, weights(8))


def test_training_logs_stops_and_resumes():
    envs = [PlantedOutlierEnv() for _ in range(3)]
    calls, logs = [], []

    def step_fn(envs_, actions):
        calls.append(len(actions))
        return [env.step(int(action)) for env, action in zip(envs_, actions)]

    def callback(step, entry):
        logs.append(entry)
        return "losses/td_loss" in entry  # stop at the first loss report

    cfg = small_config(learning_starts=64, train_frequency=1)
    agent = train(envs, cfg, total_steps=5000, seed=0, step_fn=step_fn, callback=callback)
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
    envs = [PlantedOutlierEnv() for _ in range(4)]
    start = time.perf_counter()
    agent = train(envs, small_config(), total_steps=4000, seed=0)
    training_seconds = time.perf_counter() - start
    policy, env = GreedyPolicy(agent.q_network), PlantedOutlierEnv()
    successes = [run_greedy(policy, env, seed=10_000 + i)[1]["success"] for i in range(50)]
    rate = float(np.mean(successes))
    print(f"planted task: success {rate:.2f} on 50 fresh episodes after {training_seconds:.1f} s of training")
    assert rate >= 0.9
