"""examples/quickstart.py: the Python API on demo data, end to end, and its message without the demo."""

from __future__ import annotations

import importlib.util

import numpy as np
from conftest import ROOT

from gpoa.io import read_image

SPEC = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
quickstart = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quickstart)


def test_quickstart_segments_the_targets_and_writes_an_overlay(trained, tmp_path, capsys):
    data, checkpoints = trained
    out = tmp_path / "overlay.png"
    assert quickstart.main(["--data", str(data), "--policy", str(checkpoints / "tiny" / "best.pt"),
                            "--targets", "2", "--out", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    first = sorted((data / "target_image").iterdir())[0]
    assert len(lines) == 3 and lines[0].startswith(f"{first.name}: Dice ") and "confidence" in lines[0]
    dice = float(lines[0].split("Dice ")[1].split(",")[0])
    assert 0.5 < dice <= 1.0  # the membrane is found
    overlay, image = read_image(out), read_image(first)
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


def test_quickstart_without_the_demo_says_to_run_make_demo(tmp_path, capsys):
    assert quickstart.main(["--data", str(tmp_path / "none"), "--policy", str(tmp_path / "none.pt")]) == 2
    assert "run `make demo` first" in capsys.readouterr().err
