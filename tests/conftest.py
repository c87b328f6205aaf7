"""Shared fixtures: a small demo dataset, generated once per test session and copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gpoa.demo_data import write_demo_dataset

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
