"""gpoa teach: one domain's labelled pairs → one policy file (references, agent, gates) that every entry point uses.

Tiny generated domains and tiny budgets (:data:`TINY`): the tests check what teaching does and what
reaches it, not how well it learns (that is measured in docs/results.md).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, ROOT, sets

import Generate_initial_prompts
import test_GPOA
from gpoa import GPOAPredictor
from gpoa.agents.greedy import GreedyPolicy
from gpoa.agents.policy_file import load_policy, save_policy
from gpoa.backends import Backends
from gpoa.cli import main as gpoa
from gpoa.config import load_config
from gpoa.envs import EpisodeBank, PromptEnv
from gpoa.errors import UsageError
from gpoa.features.store import FeatureStore
from gpoa.inference import load_optimizer
from gpoa.io import read_image, read_mask
from gpoa.layout import dataset_task
from gpoa.runtime import array_digest
from gpoa.teach import LEARNER, labelled_samples, read_labelled_pairs, starting_network

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_domains  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: a budget of seconds: every part of teaching runs, on few states
TINY = ["teach.reference_counts=[1,0]", "teach.rounds=1", "teach.epochs=[1,2]", "teach.folds=2", "teach.hidden=16",
        "teach.feature_axes=2", "teach.stop_margins=[0,0.01]", "teach.min_region_confidences=[0,0.5]",
        "env.episode_length=2", "graph.extra_positive=3", "graph.extra_negative=3"]


@pytest.fixture(scope="module")
def taught_master(demo_master, tmp_path_factory):
    """The membrane demo set (a reference, 6 training and 6 target pairs) and the policy ``gpoa teach``
    writes from its reference and first 3 training pairs (read-only)."""
    root = tmp_path_factory.mktemp("teach")
    data = root / "membrane"
    shutil.copytree(demo_master / "membrane", data)
    policy = root / "taught.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert gpoa(["teach", "--config", str(DEMO_CONFIG), "--data", str(data), "--labelled", "3", "--out",
                     str(policy), *sets(TINY)]) == 0
    finally:
        torch.set_num_threads(threads)
    return data, policy


def pairs_of(data: Path, count: int) -> list:
    layout = dataset_task(data)
    return layout.reference + layout.train[:count]


def test_the_policy_file_holds_what_was_taught_and_only_the_labelled_pairs(taught_master):
    data, path = taught_master
    policy = load_policy(path)
    assert policy.learner == LEARNER
    taught = policy.extra["teach"]
    labelled = pairs_of(data, 3)
    assert [p["content"] for p in taught["labelled"]] == [array_digest(read_image(image)) for image, _ in labelled]
    assert {p["content"] for p in taught["reference_pairs"]} <= {p["content"] for p in taught["labelled"]}
    # the references are kept as patch features and masks at grid resolution, not as images
    references = policy.extra["references"]
    assert references["features"].dtype == torch.float16 and references["features"].ndim == 4
    assert len(references["features"]) == len(taught["reference_pairs"]) == len(references["instances"])
    assert set(policy.extra["gates"]) == {"stop_margin", "min_region_confidence"}
    axes = len(policy.extra["domain"]["scale"])  # the domain columns follow the usual ones (gpoa.domain)
    assert policy.node_features[-axes - 3:] == ["domain_classifier", "domain_classifier_rank"] + [
        f"domain_feature_{i}" for i in range(axes)] + ["domain_lookahead_agreement"]
    assert taught["train_seconds"] > 0


def test_prompts_and_optimize_use_the_taught_references_and_gates(taught_master, tmp_path, capsys):
    data, policy = taught_master
    copy = tmp_path / "membrane"
    shutil.copytree(data, copy)
    args = ["--config", str(DEMO_CONFIG), "--data", str(copy)]
    assert Generate_initial_prompts.main(args + ["--policy", str(policy)]) == 0
    assert test_GPOA.main(args + ["--policy", str(policy)]) == 0
    gates = load_policy(policy).extra["gates"]
    optimized = sorted((copy / "optimized_indices").glob("*.json"))
    assert len(optimized) == 6
    source = json.loads(optimized[0].read_text())["source"]
    assert source.startswith(f"gpoa-{LEARNER}:")
    assert f"[min_region_confidence={gates['min_region_confidence']:g}]" in source or not gates["min_region_confidence"]

    # the predictor with the same policy matches every target against the same references
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, policy=policy, device="cpu", seed=0)
    target = sorted((copy / "target_image").glob("*.png"))[0]
    result = predictor.predict(target)
    written = json.loads((copy / "initial_indices" / f"{target.stem}.json").read_text())
    assert result.prompts.initial.positive_indices.tolist() == written["positive_indices"]
    assert result.prompts.optimized.positive_indices.tolist() == \
        json.loads((copy / "optimized_indices" / f"{target.stem}.json").read_text())["positive_indices"]


def test_the_predictor_teaches_the_file_the_command_writes(taught_master, tmp_path):
    data, path = taught_master
    labelled = pairs_of(data, 3)
    predictor = GPOAPredictor.from_config(DEMO_CONFIG, device="cpu", overrides=TINY)
    out = predictor.teach([image for image, _ in labelled], [mask for _, mask in labelled], tmp_path / "p.pt")
    assert out == tmp_path / "p.pt" and predictor.optimizer is not None and predictor.optimizer.reference is not None
    mine, theirs = load_policy(out), load_policy(path)
    assert mine.extra["gates"] == theirs.extra["gates"]
    assert [p["content"] for p in mine.extra["teach"]["labelled"]] == \
        [p["content"] for p in theirs.extra["teach"]["labelled"]]
    for name, value in theirs.network.state_dict().items():
        assert torch.equal(mine.network.state_dict()[name], value), name
    assert torch.equal(mine.extra["references"]["features"], theirs.extra["references"]["features"])
    with pytest.raises(UsageError, match="two lists"):
        predictor.teach(read_image(labelled[0][0]), read_mask(labelled[0][1]), tmp_path / "q.pt")


def test_calibrated_gates_replace_the_defaults_and_a_setting_still_wins(taught_master, tmp_path):
    _, path = taught_master
    policy = load_policy(path)
    calibrated = tmp_path / "calibrated.pt"
    save_policy(calibrated, policy.network, policy.learner, policy.settings, policy.node_features,
                policy.global_features, {**policy.extra, "gates": {"stop_margin": 0.3, "min_region_confidence": 0.9}})
    backends = Backends(load_config(DEMO_CONFIG), "cpu")

    def gates(*overrides):
        optimizer = load_optimizer(calibrated, load_config(DEMO_CONFIG, list(overrides)), backends.feature_key,
                                   backends.grid)
        return optimizer.greedy.stop_margin, optimizer.greedy.min_confidence, optimizer.rule.min_confidence

    assert gates() == pytest.approx((0.3, 0.9, 0.9))  # the file's values, for the agent and its rule
    assert gates("optimize.stop_margin=0.05") == pytest.approx((0.05, 0.9, 0.9))
    # an explicit value wins even where it equals the built-in default
    assert gates("optimize.min_region_confidence=0.5") == pytest.approx((0.3, 0.5, 0.5))
    assert gates("optimize.stop_margin=0", "optimize.min_region_confidence=0") == pytest.approx((0.0, 0.0, 0.0))


def test_init_acts_exactly_as_the_policy_it_starts_from(trained_master, tmp_path):
    data, checkpoints = trained_master
    shipped = checkpoints / "tiny" / "best.pt"
    cfg = load_config(DEMO_CONFIG, TINY + [f"teach.init={shipped}", "teach.feature_axes=9"])
    network, run_cfg = starting_network(cfg, 12)  # 2 classifier, 9 feature and 1 lookahead columns
    assert network.node_dim == load_policy(shipped).network.node_dim + 12 and run_cfg.env.domain_inputs == 12
    backends = Backends(cfg, "cpu")
    pairs, _ = read_labelled_pairs(pairs_of(data, 2), FeatureStore(tmp_path / "cache", backends))
    samples = labelled_samples(pairs, [0, 1], [0, 1, 2], backends.grid, run_cfg, True)
    env = PromptEnv(EpisodeBank(samples, run_cfg, backends.segmenter), run_cfg)
    before, after = GreedyPolicy(load_policy(shipped).network), GreedyPolicy(network)
    width = network.node_dim - 12
    for index in range(len(samples)):
        obs, _ = env.reset(options={"sample": index})
        assert np.abs(obs["nodes"][:, width:]).sum() > 0  # the domain columns are there and not zero
        base = {**obs, "nodes": obs["nodes"][:, :width]}
        np.testing.assert_allclose(after.scores(obs), before.scores(base), rtol=1e-5, atol=1e-6)
        assert after(obs, env.action_masks()) == before(base, env.action_masks())


def test_bench_train_keeps_every_test_target_out_of_teaching(taught_master, trained_master, tmp_path, monkeypatch,
                                                              capsys):
    data, _ = taught_master
    policy = trained_master[1] / "tiny" / "best.pt"
    import gpoa.experiments.taught as protocol

    taught_images = []

    def recording_teach(pairs, cfg, backends):
        taught_images.extend(pair.content for pair in pairs)
        return real_teach(pairs, cfg, backends)

    real_teach = protocol.teach
    monkeypatch.setattr(protocol, "teach", recording_teach)
    out = tmp_path / "out"
    code = bench_domains.main([str(data), "--out", str(out), "--policy", str(policy), "--train", "2", "--targets", "2",
                               "--config", str(DEMO_CONFIG), *sets(TINY)])
    assert code == 0
    layout = dataset_task(data)
    labelled = [array_digest(read_image(image)) for image, _ in layout.reference + layout.train[:2]]
    tests = {array_digest(read_image(image)) for image in layout.targets}
    assert taught_images == labelled  # exactly the reference and the first 2 labelled pairs, nothing else
    assert not tests & set(taught_images)
    taught = load_policy(out / "membrane" / "taught.pt")
    assert not tests & {p["content"] for p in taught.extra["teach"]["labelled"]}
    # no reference of the taught policy is a test target's features
    store = FeatureStore(out / "membrane" / "cache", Backends(load_config(DEMO_CONFIG), "cpu"))
    features = taught.extra["references"]["features"].float().numpy()
    for image in layout.targets[:2]:
        target = store.features(image)
        assert not any(np.array_equal(target, reference) for reference in features)
    rows = list(csv_rows(out / "domains.csv"))
    sets_ = [r["prompt_set"] for r in rows if r["domain"] == "membrane"]
    for name in ("initial", "optimized", "oracle", "ideal", "initial_kshot", "policy_kshot", "rule_kshot",
                 "oracle_kshot", "initial_taught", "taught", "taught_rule"):
        assert name in sets_, name
    assert {r["images"] for r in rows if r["domain"] == "membrane"} == {"2"}  # the test set's size, every row
    last = capsys.readouterr().out.strip().splitlines()[-1]
    for field in ("taught_mean=", "taught_rule_mean=", "rule_kshot_mean=", "plugplay_mean=", "initial_kshot_mean=",
                  "oracle_kshot_mean=", "taught_capture=", "train_seconds="):
        assert field in last, field


def csv_rows(path: Path):
    import csv

    with open(path) as handle:
        yield from csv.DictReader(handle)


@pytest.mark.parametrize("extra", [["--shots", "2"], ["--absent", "1"]])
def test_train_with_shots_or_absent_is_a_usage_error(tmp_path, extra, capsys):
    assert bench_domains.main([str(tmp_path), "--out", str(tmp_path / "o"), "--train", "3", *extra]) == 2
    assert "--train" in capsys.readouterr().err


def test_teach_refuses_what_cannot_teach(demo_master, tmp_path, capsys):
    data = demo_master / "membrane"
    assert gpoa(["teach", "--config", str(DEMO_CONFIG), "--data", str(data), "--labelled", "50", "--out",
                 str(tmp_path / "p.pt")]) == 2
    assert "fewer than --labelled 50" in capsys.readouterr().err
    existing = tmp_path / "there.pt"
    existing.write_bytes(b"")
    assert gpoa(["teach", "--config", str(DEMO_CONFIG), "--data", str(data), "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(UsageError, match="teach.folds"):
        load_config(overrides=["teach.folds=1"])
    with pytest.raises(UsageError, match="teach.min_region_confidences"):
        load_config(overrides=["teach.min_region_confidences=[0.5,2]"])
