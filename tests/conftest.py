"""Shared fixtures: a small demo dataset, generated once per test session and copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
