"""train_GPOA.py → test_GPOA.py → main_seg.py end to end on a tiny demo set, and their errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, sets, train

import Generate_initial_prompts
import main_seg
import test_GPOA
from gpoa.agents.network import NodeSetNetwork
from gpoa.agents.policy_file import POLICY_FORMAT, load_policy, save_policy
from gpoa.envs import GLOBAL_FEATURES
from gpoa.graph import NODE_FEATURES


def optimize(data: Path, checkpoints: Path, *extra) -> int:
    return test_GPOA.main(["--config", str(DEMO_CONFIG), "--data", str(data),
                           *sets([f"train.checkpoints={checkpoints}"]), *extra])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_then_optimize_then_segment(trained, capsys):
    data, checkpoints = trained
    run = checkpoints / "tiny"
    for name in ("best.pt", "last.pt", "train_state.pt", "log.csv", "reward_curve.png", "config.yaml"):
        assert (run / name).is_file(), name
    # policies load with weights_only=True and carry their config
    payload = torch.load(run / "best.pt", weights_only=True)
    assert payload["format"] == POLICY_FORMAT and payload["learner"] == "dqn"
    assert payload["node_features"] == list(NODE_FEATURES) and payload["global_features"] == list(GLOBAL_FEATURES)
    assert payload["settings"]["hidden"] == 32 and payload["extra"]["tasks"] == ["membrane"]
    assert payload["extra"]["config"]["env"]["reward"] == "segmentation"
    assert payload["extra"]["grid"] == {"rows": 40, "cols": 40, "patch_size": 14, "working_size": [560, 560]}
    with open(run / "log.csv") as handle:
        keys = {row["key"] for row in csv.DictReader(handle)}
    assert {"charts/episodic_return", "charts/dice", "eval/dice", "eval/membrane/dice", "eval/gain"} <= keys

    capsys.readouterr()
    assert optimize(data, checkpoints) == 0
    optimized = sorted((data / "optimized_indices").glob("*.json"))
    assert len(optimized) == 6
    first = json.loads(optimized[0].read_text())
    assert str(run / "best.pt") in first["source"]
    trace = json.loads((data / "optimized_indices" / "traces" / optimized[0].name).read_text())
    assert trace["actions"] and trace["actions"][-1]["step"] == len(trace["actions"]) - 1
    for baseline in ("random_subset_indices", "topk_indices"):
        files = sorted((data / baseline).glob("*.json"))
        assert len(files) == 6
        data_b = json.loads(files[0].read_text())
        assert len(data_b["positive_indices"]) <= len(first["positive_indices"])

    # greedy inference is deterministic
    before = {p.name: p.read_text() for p in optimized}
    assert optimize(data, checkpoints, "--overwrite") == 0
    assert before == {p.name: p.read_text() for p in (data / "optimized_indices").glob("*.json")}

    assert main_seg.main(["--config", str(DEMO_CONFIG), "--data", str(data)]) == 0
    with open(data / "results" / "summary.csv") as handle:
        names = [row["prompt_set"] for row in csv.DictReader(handle)]
    assert names == ["initial", "optimized", "lookahead_rule", "random_subset", "topk", "ideal"]


def test_stop_margin_gate_and_oracle_yardstick(trained, capsys):
    data, checkpoints = trained
    for path in sorted((data / "initial_indices").glob("*.json"))[2:]:  # two targets are enough here
        path.unlink()
    # a margin no toggle can beat: the policy stops at once and leaves the start state as it is
    assert optimize(data, checkpoints, "--set", "optimize.stop_margin=1000") == 0
    start = torch.load(checkpoints / "tiny" / "best.pt", weights_only=True)["extra"]["config"]["env"]["start"]
    optimized = sorted((data / "optimized_indices").glob("*.json"))
    assert len(optimized) == 2
    for path in optimized:
        trace = json.loads((data / "optimized_indices" / "traces" / path.name).read_text())
        assert [a["action"] for a in trace["actions"]] == ["stop"]
        initial = json.loads((data / "initial_indices" / path.name).read_text())
        result = json.loads(path.read_text())
        for key in ("positive_indices", "negative_indices"):  # an "ideal" start begins from the prompts too
            assert sorted(result[key]) == ([] if start == "empty" else sorted(initial[key]))
    assert not (data / "oracle_indices").exists()  # only when asked for
    # the oracle reads target_mask/: its prompts never do worse than the start, and stage 4 evaluates them
    assert optimize(data, checkpoints, "--overwrite", "--set", "optimize.oracle=true") == 0
    oracle = sorted((data / "oracle_indices").glob("*.json"))
    assert len(oracle) == 2 and all(json.loads(p.read_text())["source"] == "oracle" for p in oracle)
    assert (data / "oracle_indices" / "traces" / oracle[0].name).is_file()
    assert main_seg.main(["--config", str(DEMO_CONFIG), "--data", str(data)]) == 0
    with open(data / "results" / "summary.csv") as handle:
        summary = {row["prompt_set"]: row for row in csv.DictReader(handle)}
    assert list(summary) == ["initial", "optimized", "lookahead_rule", "oracle", "random_subset", "topk", "ideal"]
    assert int(summary["oracle"]["images"]) == 2
    assert float(summary["oracle"]["dice_mean"]) > 0.5


def test_confidence_gate_keeps_the_start_set_and_names_itself(trained):
    data, checkpoints = trained
    for path in sorted((data / "initial_indices").glob("*.json"))[2:]:  # two targets are enough here
        path.unlink()
    # no region is trusted above a confidence of 1: every target keeps its initial prompts, and the
    # hand-made rule, compared with the policy on the same targets, obeys the same gate
    assert optimize(data, checkpoints, "--set", "optimize.min_region_confidence=2") == 0
    optimized = sorted((data / "optimized_indices").glob("*.json"))
    assert len(optimized) == 2
    for path in optimized:
        initial = json.loads((data / "initial_indices" / path.name).read_text())
        assert "[min_region_confidence=2]" in json.loads(path.read_text())["source"]
        for folder in ("optimized_indices", "lookahead_rule_indices"):
            trace = json.loads((data / folder / "traces" / path.name).read_text())
            assert [a["action"] for a in trace["actions"]] == ["stop"]
            result = json.loads((data / folder / path.name).read_text())
            for key in ("positive_indices", "negative_indices"):
                assert sorted(result[key]) == sorted(initial[key])
    # another gate is another run: the outputs are redone, not kept as up to date
    assert optimize(data, checkpoints, "--set", "optimize.min_region_confidence=0") == 0
    sources = [json.loads(p.read_text())["source"] for p in sorted((data / "optimized_indices").glob("*.json"))]
    assert len(sources) == 2 and not any("min_region_confidence" in s for s in sources)


def test_resume_continues_the_run(trained, capsys):
    data, checkpoints = trained
    state = torch.load(checkpoints / "tiny" / "train_state.pt", weights_only=True)
    assert state["agent"]["global_step"] >= 160
    capsys.readouterr()
    assert train(data, checkpoints, "--resume", "--set", "train.total_steps=240") == 0
    assert "resuming" in capsys.readouterr().out
    again = torch.load(checkpoints / "tiny" / "train_state.pt", weights_only=True)
    assert again["agent"]["global_step"] >= 240
    # starting the same run anew without --resume or --overwrite is refused
    assert train(data, checkpoints) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_keeps_the_best_policy_on_disk(trained, capsys):
    """A run stopped after writing best.pt but before train_state.pt resumes with the state's older
    best score: the better policy file on disk must not be replaced by a worse evaluation."""
    data, checkpoints = trained
    run = checkpoints / "tiny"
    best = torch.load(run / "best.pt", weights_only=True)
    best["extra"]["eval/dice"] = 0.99  # a score no evaluation of this tiny run reaches
    torch.save(best, run / "best.pt")
    state = torch.load(run / "train_state.pt", weights_only=True)
    state["best"] = 0.0  # the state written before that best.pt
    torch.save(state, run / "train_state.pt")
    assert train(data, checkpoints, "--resume", "--set", "train.total_steps=240") == 0
    kept = torch.load(run / "best.pt", weights_only=True)["extra"]
    assert kept["eval/dice"] == 0.99 and kept["step"] == best["extra"]["step"]
    assert torch.load(run / "last.pt", weights_only=True)["extra"]["step"] >= 240
    assert "best eval/dice=0.9900" in capsys.readouterr().out


def test_graph_reward_trains_label_free_from_prompt_files(demo_dataset, tmp_path):
    assert Generate_initial_prompts.main(["--config", str(DEMO_CONFIG), "--data", str(demo_dataset)]) == 0
    for folder in ("train_image", "train_mask", "target_mask"):
        for path in (demo_dataset / folder).iterdir():
            path.unlink()
    checkpoints = tmp_path / "checkpoints"
    assert train(demo_dataset, checkpoints, "--set", "env.reward=graph") == 0
    payload = torch.load(checkpoints / "tiny" / "best.pt", weights_only=True)
    assert payload["extra"]["reward"] == "graph" and "eval/score" in payload["extra"]
    assert optimize(demo_dataset, checkpoints) == 0
    assert len(list((demo_dataset / "optimized_indices").glob("*.json"))) == 6


def test_missing_and_corrupt_policy_give_clear_errors(trained, tmp_path, capsys):
    data, checkpoints = trained
    missing = tmp_path / "nope.pt"
    capsys.readouterr()
    assert optimize(data, checkpoints, "--policy", str(missing)) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    assert optimize(data, checkpoints, "--policy", str(corrupt)) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and "cannot be read" in err
    assert optimize(data, tmp_path / "empty_checkpoints") == 2
    assert "train_GPOA.py" in capsys.readouterr().err
    # a policy of another observation layout (an older version's, with fewer node columns)
    policy = load_policy(checkpoints / "tiny" / "best.pt")
    older = tmp_path / "older.pt"
    network = policy.network
    save_policy(older, NodeSetNetwork(**{**network.architecture, "node_dim": network.node_dim - 2}), policy.learner,
                policy.settings, policy.node_features[:-2], policy.global_features, policy.extra)
    assert optimize(data, checkpoints, "--policy", str(older)) == 2
    err = capsys.readouterr().err
    assert str(older) in err and "other node features" in err and "retrain" in err
    # a policy file of the previous format
    payload = torch.load(checkpoints / "tiny" / "best.pt", weights_only=True)
    previous = tmp_path / "previous.pt"
    torch.save({**payload, "format": "gpoa-node-set-q-network/1"}, previous)
    assert optimize(data, checkpoints, "--policy", str(previous)) == 2
    err = capsys.readouterr().err
    assert str(previous) in err and "not a GPOA policy checkpoint of this version" in err
    assert not (data / "optimized_indices").exists()


def test_prompt_file_from_another_grid_is_reported_and_the_rest_optimised(trained, capsys):
    data, checkpoints = trained
    path = sorted((data / "initial_indices").glob("*.json"))[0]
    content = json.loads(path.read_text())
    content["grid"] = {"rows": 20, "cols": 20, "patch_size": 14, "working_size": [280, 280]}
    path.write_text(json.dumps(content))
    capsys.readouterr()
    assert optimize(data, checkpoints) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "20x20 grid" in err and f"FAILED membrane/{path.name}" in err
    assert len(list((data / "optimized_indices").glob("*.json"))) == 5


def test_baselines_have_the_optimised_counts_and_come_from_the_initial_prompts():
    import numpy as np

    from gpoa.grid import PatchGrid
    from gpoa.inference import baselines
    from gpoa.prompts import PromptSet

    grid = PatchGrid.square(140, 14)
    initial = PromptSet("a.png", (100, 80), grid, [1, 2, 3, 4, 5], [50, 60, 70])
    optimized = PromptSet("a.png", (100, 80), grid, [2, 3, 99], [60, 61, 62, 63])
    margin = np.zeros(grid.num_patches, dtype=np.float32)
    margin[[1, 2, 3, 4, 5]] = [0.1, 0.5, 0.3, 0.9, 0.2]  # fg - bg: high for good positives
    margin[[50, 60, 70]] = [-0.2, 0.4, -0.9]  # low for good negatives
    sets = baselines(initial, optimized, margin, np.random.default_rng(0))
    random_subset, topk = sets["random_subset"], sets["topk"]
    # counts: the optimised set's, capped at what the initial set has (3 positives, 3 negatives)
    assert len(random_subset.positive_indices) == 3 and len(random_subset.negative_indices) == 3
    assert set(random_subset.positive_indices) <= {1, 2, 3, 4, 5}
    assert sorted(topk.positive_indices) == [2, 3, 4]
    assert sorted(topk.negative_indices) == [50, 60, 70]
    assert random_subset.source == "random_subset" and topk.source == "topk"


def test_regenerated_initial_prompts_are_optimised_again(trained, capsys):
    data, checkpoints = trained
    assert optimize(data, checkpoints) == 0
    assert optimize(data, checkpoints) == 0
    assert "0 done, 6 kept" in capsys.readouterr().out
    assert Generate_initial_prompts.main(["--config", str(DEMO_CONFIG), "--data", str(data), "--overwrite",
                                          "--set", "matching.max_positive=3"]) == 0
    capsys.readouterr()
    assert optimize(data, checkpoints) == 0
    assert "6 done, 0 kept" in capsys.readouterr().out
    initial = json.loads(sorted((data / "initial_indices").glob("*.json"))[0].read_text())
    topk = json.loads(sorted((data / "topk_indices").glob("*.json"))[0].read_text())
    assert set(topk["positive_indices"]) <= set(initial["positive_indices"])


def test_one_policy_trains_and_optimises_over_several_tasks(demo_master, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    families = ("membrane", "objects")
    for family in families:
        shutil.copytree(demo_master / family, corpus / family)
        for folder, keep in (("target", 2), ("train", 3)):
            for path in sorted((corpus / family / f"{folder}_image").iterdir())[keep:]:
                path.unlink()
    assert Generate_initial_prompts.main(["--config", str(DEMO_CONFIG), "--data", str(corpus)]) == 0
    checkpoints = tmp_path / "checkpoints"
    # records of at most 2 samples kept at once: the others are rebuilt when drawn again
    assert train(corpus, checkpoints, "--set", "train.bank_capacity=2") == 0
    assert "2 task(s)" in capsys.readouterr().out
    payload = torch.load(checkpoints / "tiny" / "best.pt", weights_only=True)
    assert payload["extra"]["tasks"] == list(families)
    last = torch.load(checkpoints / "tiny" / "last.pt", weights_only=True)["extra"]
    # held-out images of each task are evaluated; eval/dice is the mean of the per-task means
    assert last["eval/dice"] == pytest.approx((last["eval/membrane/dice"] + last["eval/objects/dice"]) / 2)
    assert optimize(corpus, checkpoints) == 0
    assert "4 done" in capsys.readouterr().out
    for family in families:
        assert len(list((corpus / family / "optimized_indices").glob("*.json"))) == 2
