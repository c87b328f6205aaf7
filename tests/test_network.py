"""The node-set network, its greedy policy (with the do-no-harm gate), masked argmax and policy files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpoa.agents.greedy import GreedyPolicy, run_greedy
from gpoa.agents.network import NodeSetNetwork, masked_argmax
from gpoa.agents.policy_file import POLICY_FORMAT, PolicyFile, check_observation, load_policy, save_policy
from gpoa.envs import GLOBAL_FEATURES
from gpoa.errors import UsageError
from gpoa.graph import NODE_FEATURES


def random_inputs(batch: int, nodes: int, node_dim: int = 6, global_dim: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, nodes, node_dim, generator=generator), torch.ones(batch, nodes, dtype=torch.bool),
            torch.randn(batch, global_dim, generator=generator))


@pytest.fixture(params=[1, 2, "prior"], ids=["one-layer", "two-layer", "with-prior"])
def network(request) -> NodeSetNetwork:
    torch.manual_seed(0)
    if request.param == "prior":
        return NodeSetNetwork(node_dim=6, global_dim=3, hidden=32, prior_column=4, prior_weight=0.5).eval()
    return NodeSetNetwork(node_dim=6, global_dim=3, hidden=32, node_layers=request.param).eval()


def test_the_prior_adds_its_weight_times_its_column_to_every_node_score():
    torch.manual_seed(4)
    plain = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32).eval()
    with_prior = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32, prior_column=4, prior_weight=0.25).eval()
    with_prior.load_state_dict(plain.state_dict())  # the prior has no weights of its own
    nodes, valid, globals_ = random_inputs(batch=3, nodes=8)
    with torch.no_grad():
        difference = with_prior(nodes, valid, globals_) - plain(nodes, valid, globals_)
    torch.testing.assert_close(difference[:, :-1], 0.25 * nodes[..., 4])
    torch.testing.assert_close(difference[:, -1], torch.zeros(3))  # STOP has no prior
    assert NodeSetNetwork(**with_prior.architecture).prior_weight == 0.25
    with pytest.raises(ValueError, match="prior_column"):
        NodeSetNetwork(node_dim=6, global_dim=3, prior_column=6, prior_weight=1.0)


# ----- the network ---------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 7, 60])
def test_network_gives_one_score_per_node_and_stop(network, count):
    scores = network(*random_inputs(batch=3, nodes=count))
    assert scores.shape == (3, count + 1)
    assert torch.isfinite(scores).all()


def test_permuting_nodes_permutes_their_scores(network):
    nodes, valid, globals_ = random_inputs(batch=2, nodes=11)
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = network(nodes, valid, globals_)
        permuted = network(nodes[:, permutation], valid[:, permutation], globals_)
    torch.testing.assert_close(permuted[:, :-1], scores[:, permutation])
    torch.testing.assert_close(permuted[:, -1], scores[:, -1])


def test_padded_nodes_change_nothing(network):
    nodes, valid, globals_ = random_inputs(batch=2, nodes=9)
    garbage = 5.0 * torch.randn(2, 20, 6, generator=torch.Generator().manual_seed(2))
    padded_nodes = torch.cat([nodes, garbage], dim=1)
    padded_valid = torch.cat([valid, torch.zeros(2, 20, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        scores = network(nodes, valid, globals_)
        padded = network(padded_nodes, padded_valid, globals_)
    torch.testing.assert_close(padded[:, :9], scores[:, :9])
    torch.testing.assert_close(padded[:, -1], scores[:, -1])


def test_action_scores_are_the_scores_of_the_chosen_columns(network):
    nodes, valid, globals_ = random_inputs(batch=4, nodes=9)
    valid[1, 5:] = False
    actions = torch.tensor([0, 4, 9, 9])  # two node toggles, two STOPs
    with torch.no_grad():
        expected = network(nodes, valid, globals_).gather(1, actions[:, None])[:, 0]
        torch.testing.assert_close(network.action_scores(nodes, valid, globals_, actions), expected)
        # the same through forward (what DistributedDataParallel calls)
        torch.testing.assert_close(network(nodes, valid, globals_, actions=actions), expected)


def test_architecture_rebuilds_the_network(network):
    assert network.architecture == {"node_dim": 6, "global_dim": 3, "hidden": 32,
                                    "node_layers": network.node_layers, "value_head": False,
                                    "prior_column": network.prior_column, "prior_weight": network.prior_weight}
    assert isinstance(NodeSetNetwork(**network.architecture), NodeSetNetwork)
    with pytest.raises(ValueError, match="no value head"):
        network.scores_and_value(*random_inputs(batch=1, nodes=3))


def test_the_value_head_leaves_the_scores_alone():
    torch.manual_seed(0)
    critic = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32, value_head=True).eval()
    plain = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32).eval()
    plain.load_state_dict({k: v for k, v in critic.state_dict().items() if not k.startswith("value_out")})
    inputs = random_inputs(batch=4, nodes=7)
    scores, value = critic.scores_and_value(*inputs)
    torch.testing.assert_close(scores, critic(*inputs))
    torch.testing.assert_close(critic(*inputs, with_value=True)[1], value)
    torch.testing.assert_close(scores, plain(*inputs))
    assert value.shape == (4,) and NodeSetNetwork(**critic.architecture).value_out is not None
    with pytest.raises(ValueError, match="node_layers"):
        NodeSetNetwork(node_dim=6, global_dim=3, node_layers=3)


def test_masked_argmax_picks_the_best_valid_action():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(500, 9, generator=generator)
    mask = torch.rand(500, 9, generator=generator) < 0.3
    mask[:, -1] = True
    chosen = masked_argmax(scores, mask)
    assert mask.gather(1, chosen[:, None]).all()
    torch.testing.assert_close(scores.gather(1, chosen[:, None]).squeeze(1),
                               scores.masked_fill(~mask, -np.inf).amax(1))
    with pytest.raises(ValueError, match="no valid action"):
        masked_argmax(scores[:2], torch.zeros(2, 9, dtype=torch.bool))


# ----- the greedy policy ---------------------------------------------------------------------------
@pytest.mark.parametrize("node_layers,prior_weight", [(1, 0.0), (2, 0.0), (1, 0.7)])
def test_greedy_policy_matches_the_network(node_layers, prior_weight):
    torch.manual_seed(3)
    network = NodeSetNetwork(node_dim=15, global_dim=5, hidden=128, node_layers=node_layers,
                             prior_column=9, prior_weight=prior_weight).eval()
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
        scores = policy.scores(obs)
        real = np.append(valid == 1, True)
        np.testing.assert_allclose(scores[real], expected[real], rtol=1e-5, atol=1e-5)
        assert np.all(scores[~real] == -np.inf)
        mask = real & (rng.random(321) < 0.5)
        mask[-1] = True
        best = masked_argmax(torch.from_numpy(expected), torch.from_numpy(mask)).item()
        assert policy(obs, mask) == best
    # the real nodes first, as the environments pad: read in place, same scores
    valid = (np.arange(320) < 50).astype(np.int8)
    nodes = np.where(valid[:, None] == 1, rng.normal(size=(320, 15)), 0.0).astype(np.float32)
    obs = {"nodes": nodes, "valid": valid, "globals": rng.normal(size=5).astype(np.float32)}
    with torch.no_grad():
        expected = network(torch.from_numpy(nodes[:50])[None], torch.ones(1, 50, dtype=torch.bool),
                           torch.from_numpy(obs["globals"])[None])[0].numpy()
    scores = policy.scores(obs)
    np.testing.assert_allclose(np.r_[scores[:50], scores[-1]], expected, rtol=1e-5, atol=1e-5)


def test_stop_margin_keeps_stop_unless_a_node_beats_it_by_the_margin():
    torch.manual_seed(5)
    network = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32).eval()
    rng = np.random.default_rng(5)
    obs = {"nodes": rng.normal(size=(12, 6)).astype(np.float32), "valid": np.ones(12, dtype=np.int8),
           "globals": rng.normal(size=3).astype(np.float32)}
    scores = GreedyPolicy(network).scores(obs)
    first, second = np.argsort(-scores[:-1])[:2]
    # move STOP's score (the last output's bias shifts it alone) to 0.3 below the best node's
    with torch.no_grad():
        network.context_out.bias[-1] += float(scores[first] - 0.3 - scores[-1])
    scores = GreedyPolicy(network).scores(obs)
    assert scores[first] - scores[-1] == pytest.approx(0.3, abs=1e-5)
    stop, mask = len(scores) - 1, np.ones(13, dtype=bool)
    assert GreedyPolicy(network)(obs, mask) == first  # no gate: the best node beats STOP
    assert GreedyPolicy(network, stop_margin=0.2)(obs, mask) == first  # 0.3 ahead: beats a margin of 0.2
    assert GreedyPolicy(network, stop_margin=0.4)(obs, mask) == stop  # not a margin of 0.4
    # the gate compares the best VALID node: with the best one masked, the runner-up must clear it
    lead = float(scores[second] - scores[-1])
    mask[first] = False
    assert GreedyPolicy(network, stop_margin=lead - 0.01)(obs, mask) == second
    assert GreedyPolicy(network, stop_margin=lead + 0.01)(obs, mask) == stop
    # scores() itself is not gated
    np.testing.assert_array_equal(GreedyPolicy(network, stop_margin=0.4).scores(obs), scores)


def test_confidence_gate_stops_at_once_on_an_untrustworthy_region():
    torch.manual_seed(6)
    network = NodeSetNetwork(node_dim=6, global_dim=3, hidden=32).eval()
    rng = np.random.default_rng(6)
    obs = {"nodes": rng.normal(size=(12, 6)).astype(np.float32), "valid": np.ones(12, dtype=np.int8),
           "globals": np.array([0.1, 0.2, 0.6], dtype=np.float32)}  # the confidence is globals[2]
    scores = GreedyPolicy(network).scores(obs)
    with torch.no_grad():  # STOP 0.3 below the best node: an ungated policy edits
        network.context_out.bias[-1] += float(scores[:-1].max() - 0.3 - scores[-1])
    mask, stop = np.ones(13, dtype=bool), 12
    edit = GreedyPolicy(network)(obs, mask)
    assert edit != stop
    assert GreedyPolicy(network, min_confidence=0.5, confidence_index=2)(obs, mask) == edit  # 0.6: trusted
    assert GreedyPolicy(network, min_confidence=0.7, confidence_index=2)(obs, mask) == stop  # 0.6: not
    obs["globals"][2] = 0.4
    assert GreedyPolicy(network, min_confidence=0.5, confidence_index=2)(obs, mask) == stop
    assert GreedyPolicy(network)(obs, mask) == edit  # off by default
    with pytest.raises(ValueError, match="confidence_index"):
        GreedyPolicy(network, min_confidence=0.5)


def test_run_greedy_accepts_a_network_or_a_policy():
    from synthetic import make_cfg, scene

    from gpoa.envs import PromptEnv

    cfg = make_cfg(max_nodes=40)
    env = PromptEnv([scene()], cfg, seed=0)
    space = env.observation_space
    torch.manual_seed(0)
    network = NodeSetNetwork(space["nodes"].shape[1], space["globals"].shape[0], hidden=16).eval()
    actions, info, total = run_greedy(network, env, seed=0)
    again = run_greedy(GreedyPolicy(network), env, seed=0)
    assert (actions, info, total) == again
    assert env.done and info["positives"] == env.graph.num_positive


# ----- policy files --------------------------------------------------------------------------------
def test_policy_file_round_trips(tmp_path, network):
    path = tmp_path / "run" / "policy.pt"
    settings = {"gamma": 0.8, "hidden": 32}
    extra = {"dice": np.float64(0.81), "steps": np.int64(300), "images": ["a", "b"], "path": tmp_path,
             "pair": (1, 2), "array": np.arange(3)}
    save_policy(path, network, learner="dqn", settings=settings, node_features=NODE_FEATURES,
                global_features=GLOBAL_FEATURES, extra=extra)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == POLICY_FORMAT == "gpoa-policy/2"
    assert payload["architecture"] == network.architecture
    policy = load_policy(path)
    assert isinstance(policy, PolicyFile) and policy.learner == "dqn" and policy.settings == settings
    assert policy.node_features == list(NODE_FEATURES) and policy.global_features == list(GLOBAL_FEATURES)
    assert policy.extra == {"dice": 0.81, "steps": 300, "images": ["a", "b"], "path": str(tmp_path),
                            "pair": [1, 2], "array": [0, 1, 2]}
    assert not policy.network.training
    inputs = random_inputs(batch=2, nodes=5)
    with torch.no_grad():
        torch.testing.assert_close(policy.network(*inputs), network(*inputs))
    check_observation(policy, path, NODE_FEATURES, GLOBAL_FEATURES)  # the same names: accepted
    with pytest.raises(TypeError, match=r"extra\.bad"):
        save_policy(tmp_path / "bad.pt", network, learner="dqn", extra={"bad": object()})


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a torch file", "cannot be read"),
    ("truncated", "cannot be read"),
    ({"weights": torch.zeros(2)}, "not a GPOA policy"),
    ({"format": "gpoa-node-set-q-network/1", "architecture": {"node_dim": 6}}, "not a GPOA policy"),
    ({"format": POLICY_FORMAT, "learner": "dqn", "architecture": {"node_dim": 6}}, "damaged"),
    ("wrong-weights", "damaged"),
])
def test_unusable_policy_files_raise_usage_errors(tmp_path, network, content, message):
    path = tmp_path / "policy.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        save_policy(path, network, learner="dqn")
        path.write_bytes(path.read_bytes()[:200])
    elif content == "wrong-weights":  # the architecture says one size, the weights are of another
        save_policy(path, network, learner="dqn")
        payload = torch.load(path, weights_only=True)
        payload["architecture"]["hidden"] = 16
        torch.save(payload, path)
    elif isinstance(content, dict):
        torch.save(content, path)
    with pytest.raises(UsageError, match=message) as error:
        load_policy(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind, change, words", [
    ("node", lambda names: names[1:] + names[:1], "same names in another order"),
    ("node", lambda names: [names[0] + "_old"] + names[1:], "lacks"),
    ("graph", lambda names: names[::-1], "same names in another order"),
    ("graph", lambda names: names[:-1], f"lacks [{GLOBAL_FEATURES[-1]!r}]"),
])
def test_check_observation_refuses_other_feature_names(tmp_path, network, kind, change, words):
    node_names, global_names = list(NODE_FEATURES), list(GLOBAL_FEATURES)
    if kind == "node":
        node_names = change(node_names)
    else:
        global_names = change(global_names)
    path = tmp_path / "older.pt"
    save_policy(path, network, learner="dqn", node_features=node_names, global_features=global_names)
    policy = load_policy(path)
    with pytest.raises(UsageError, match=f"other {kind} features") as error:
        check_observation(policy, path, NODE_FEATURES, GLOBAL_FEATURES)
    message = str(error.value)
    assert str(path) in message and words in message and "retrain" in message
