"""Splitting the work over processes: ``--shard i/N`` and torchrun give exactly one process's outputs,
and training under torchrun (2 processes, Gloo) finishes with a checkpoint that loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT

import Generate_initial_prompts
import main_seg
import test_GPOA
import train_GPOA
from gpoa.agents.policy_file import load_policy
from gpoa.errors import UsageError
from gpoa.runtime import RunContext

TINY = ["train.total_steps=96", "dqn.learning_starts=32", "dqn.batch_size=16", "train.eval_every=96",
        "train.parallel_envs=2", "dqn.hidden=32", "ppo.hidden=32", "ppo.num_steps=16"]


def sets(overrides: list) -> list:
    return [a for o in overrides for a in ("--set", o)]


def outputs(data: Path) -> dict:
    """Every per-image output and table the stages write, by path (settings files, which record the
    shard, left out; the dataset's own path, which titles some tables, replaced)."""
    folders = ["initial_indices", "optimized_indices", "random_subset_indices", "topk_indices",
               "lookahead_rule_indices", "results"]
    found = {}
    for folder in folders:
        for path in sorted((data / folder).rglob("*")):
            if path.is_file() and path.suffix in (".json", ".csv", ".md", ".png") and "part-" not in path.name:
                found[str(path.relative_to(data))] = path.read_bytes().replace(str(data).encode(), b"DATA")
    return found


def run_stages(data: Path, checkpoints: Path, *extra) -> None:
    common = ["--config", str(DEMO_CONFIG), "--data", str(data), *extra]
    assert Generate_initial_prompts.main(common) == 0
    assert test_GPOA.main(common + ["--policy", str(checkpoints / "tiny" / "best.pt")]) == 0
    assert main_seg.main(common) == 0


@pytest.fixture(scope="module")
def policy(demo_master, tmp_path_factory):
    """A tiny policy trained on the membrane training images (module-wide, read-only)."""
    root = tmp_path_factory.mktemp("policy")
    data = root / "membrane"  # training writes a feature cache into its dataset: never into the master
    shutil.copytree(demo_master / "membrane", data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_GPOA.main(["--config", str(DEMO_CONFIG), "--data", str(data), "--run", "tiny",
                                *sets(TINY + [f"train.checkpoints={root}"])]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def one_process(demo_master, policy, tmp_path_factory) -> dict:
    """The outputs of stages 1, 3 and 4 run by one process on the membrane targets."""
    data = tmp_path_factory.mktemp("one") / "membrane"
    shutil.copytree(demo_master / "membrane", data)
    run_stages(data, policy)
    return outputs(data)


def test_run_context_reads_the_shard_or_torchrun():
    assert RunContext.from_settings("1/3", environ={}) == RunContext(1, 3)
    assert RunContext.from_settings("", environ={"RANK": "2", "WORLD_SIZE": "4"}) == RunContext(2, 4)
    assert RunContext.from_settings("", environ={}) == RunContext(0, 1)
    # --shard wins over the environment (a Slurm array inside a torchrun job is the user's choice)
    assert RunContext.from_settings("0/2", environ={"RANK": "1", "WORLD_SIZE": "2"}) == RunContext(0, 2)
    for bad in ("2/2", "-1/2", "a/2", "1", "0/0"):
        with pytest.raises(UsageError):
            RunContext.from_settings(bad, environ={})


def test_shares_cover_every_item_once_in_a_fixed_order():
    items = [f"img{i:02d}" for i in range(11)]
    shares = [RunContext(rank, 3).mine(items) for rank in range(3)]
    assert sorted(sum(shares, [])) == items and all(shares)
    assert shares[1] == ["img01", "img04", "img07", "img10"]
    assert RunContext(1, 4).part_name("metrics.json") == "metrics.part-1-of-4.json"


def test_two_shards_write_what_one_process_writes(demo_master, policy, one_process, tmp_path):
    two = tmp_path / "membrane"
    shutil.copytree(demo_master / "membrane", two)
    # a part left by an earlier run over other targets is never merged with this run's
    stale = two / "results" / "metrics.part-1-of-2.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"fingerprint": {"targets": ["gone"], "settings": ""}, "order": ["initial"],
                                 "rows": [{"task": "membrane", "prompt_set": "initial", "image": "gone"}]}))
    run_stages(two, policy, "--shard", "0/2")
    # until every shard's part of this run is there, no table is written
    assert not (two / "results" / "metrics.csv").exists()
    assert (two / "results" / "metrics.part-0-of-2.json").is_file()
    run_stages(two, policy, "--shard", "1/2")
    expected, got = one_process, outputs(two)
    assert {"results/metrics.csv", "results/summary.csv", "results/summary.md"} <= set(expected)
    assert sum(name.startswith("optimized_indices/") for name in expected) >= 6
    assert got.keys() == expected.keys()
    assert [name for name in expected if got[name] != expected[name]] == []


def torchrun(script: str, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", str(ROOT / script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_stages_match_one_process(demo_master, policy, one_process, tmp_path):
    two = tmp_path / "membrane"
    shutil.copytree(demo_master / "membrane", two)
    # one launch runs the three scripts' mains in turn (tests/torchrun_stages.py): a torchrun launch
    # and its two interpreters cost more than the stages on these 6 targets
    result = torchrun("tests/torchrun_stages.py", "--config", str(DEMO_CONFIG), "--data", str(two),
                      "--policy", str(policy / "tiny" / "best.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    # each rank wrote its own part, and the tables are merged from both
    assert sorted(p.name for p in (two / "results").glob("metrics.part-*")) == [
        "metrics.part-0-of-2.json", "metrics.part-1-of-2.json"]
    expected, got = one_process, outputs(two)
    assert got.keys() == expected.keys()
    assert [name for name in expected if got[name] != expected[name]] == []


def test_training_under_torchrun_writes_a_policy_that_loads(demo_master, tmp_path):
    """PPD: two DQN learners, both data-parallel, whose update counts the ranks agree on."""
    learner = "ppd"
    checkpoints, data = tmp_path / "checkpoints", tmp_path / "membrane"
    shutil.copytree(demo_master / "membrane", data)
    result = torchrun("train_GPOA.py", "--config", str(DEMO_CONFIG), "--data", str(data),
                      # train.run, not --run: torchrun's own parser takes --run for its --run-path
                      *sets(TINY + [f"train.checkpoints={checkpoints}", "train.run=ddp", f"agent.learner={learner}",
                                    "ppd.attack_steps=[1,2]", "train.total_steps=48", "train.eval_every=48",
                                    "dqn.learning_starts=8", "dqn.batch_size=8"]))
    assert result.returncode == 0, result.stderr[-3000:]
    run = checkpoints / "ddp"
    policy_file = load_policy(run / "best.pt")
    assert policy_file.learner == learner
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["world"] == 2
    # each rank collected half of the 48 transitions, and the defender's updates ran (DDP-synchronised)
    assert state["agent"]["global_step"] == 24
    assert state["agent"]["defender"]["gradient_steps"] > 0
    assert (run / "log.csv").is_file() and "2 processes" in result.stdout
    # a resume with another number of processes is refused with a clear message
    code = train_GPOA.main(["--config", str(DEMO_CONFIG), "--data", str(data), "--run", "ddp",
                            "--resume", *sets([f"train.checkpoints={checkpoints}", f"agent.learner={learner}"])])
    assert code == 2
