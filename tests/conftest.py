"""Shared fixtures: a small demo dataset and a tiny trained policy, made once per test session and
copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import Generate_initial_prompts
import train_GPOA
from gpoa.synth.demo import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def demo_master(tmp_path_factory) -> Path:
    """Both demo families with 6 training and 6 target images (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, seed=0, n_train=6, n_targets=6, families=["membrane", "objects"])
    return out


@pytest.fixture
def demo_dataset(demo_master, tmp_path) -> Path:
    """A private copy of the membrane demo dataset that a test may modify."""
    target = tmp_path / "membrane"
    shutil.copytree(demo_master / "membrane", target)
    return target


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks train several times faster on one thread than with intra-op threads, and much
    faster on a busy machine; a module opts in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: a training budget that takes seconds: enough to exercise every part of a run
FAST = ["train.total_steps=160", "dqn.learning_starts=32", "dqn.batch_size=16", "train.eval_every=80",
        "train.parallel_envs=4", "dqn.hidden=32"]


def sets(overrides: list) -> list:
    return [a for o in overrides for a in ("--set", o)]


def train(data: Path, checkpoints: Path, *extra) -> int:
    """train_GPOA.py with the FAST budget into ``checkpoints/tiny``."""
    return train_GPOA.main(["--config", str(DEMO_CONFIG), "--data", str(data), "--run", "tiny",
                            *sets(FAST + [f"train.checkpoints={checkpoints}"]), *extra])


@pytest.fixture(scope="session")
def trained_master(demo_master, tmp_path_factory):
    """The membrane demo set with its initial prompts and a tiny trained run (read-only: copy it)."""
    root = tmp_path_factory.mktemp("trained")
    data, checkpoints = root / "membrane", root / "checkpoints"
    shutil.copytree(demo_master / "membrane", data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_torch_thread
    try:
        assert Generate_initial_prompts.main(["--config", str(DEMO_CONFIG), "--data", str(data)]) == 0
        assert train(data, checkpoints) == 0
    finally:
        torch.set_num_threads(threads)
    return data, checkpoints


@pytest.fixture
def trained(trained_master, tmp_path):
    """A private copy of the trained master (files keep their times, so resuming sees them as they were)."""
    data, checkpoints = tmp_path / "membrane", tmp_path / "checkpoints"
    shutil.copytree(trained_master[0], data)
    shutil.copytree(trained_master[1], checkpoints)
    return data, checkpoints
