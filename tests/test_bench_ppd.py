"""benchmarks/bench_ppd.py on tiny domain folders: the ablation table, ignore masks, a bad ignore mask."""

from __future__ import annotations

import csv
import shutil
import sys

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT
from PIL import Image
from test_bench_domains import as_domain, snapshot

import train_GPOA

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_ppd  # noqa: E402

COLUMNS = ("ideal", "attacked", "defended", "initial", "initial_defended")


def sub_domain(source, out, stems):
    """A domain folder with ``source``'s reference pair and the pairs of ``stems``."""
    reference = sorted((source / "image").glob("*.png"))[0].stem
    for stem in (reference, *stems):
        for kind in ("image", "mask"):
            (out / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / kind / f"{stem}.png", out / kind / f"{stem}.png")
    (out / "ignore").mkdir()
    return out


def test_ablation_table_leaves_ignored_pixels_out_and_reports_a_bad_ignore_mask(demo_master, tmp_path, capsys):
    source = as_domain(demo_master / "membrane", tmp_path / "source")
    stems = [p.stem for p in sorted((source / "image").glob("b_*.png"))[:3]]
    width, height = Image.open(source / "image" / f"{stems[0]}.png").size
    root = tmp_path / "domains"
    ignored = sub_domain(source, root / "ignored", stems[:1])
    Image.new("L", (width, height), 255).save(ignored / "ignore" / f"{stems[0]}.png")  # every pixel left out
    bad = sub_domain(source, root / "bad", stems[1:])
    Image.new("L", (width + 1, height), 0).save(bad / "ignore" / f"{stems[1]}.png")  # the wrong size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_GPOA.main(["--config", str(DEMO_CONFIG), "--data", str(source), "--run", "ppd",
                                "--set", f"train.checkpoints={tmp_path / 'checkpoints'}",
                                "--set", f"workspace={tmp_path / 'ws'}", "--set", "agent.learner=ppd",
                                "--set", "train.total_steps=64", "--set", "dqn.learning_starts=16",
                                "--set", "dqn.batch_size=8", "--set", "train.eval_every=64",
                                "--set", "train.parallel_envs=2", "--set", "dqn.hidden=16",
                                "--set", "ppd.attack_steps=[1,2]"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    before, out = snapshot(root), tmp_path / "out"
    code = bench_ppd.main([str(root), "--run", str(tmp_path / "checkpoints" / "ppd"), "--out", str(out),
                           "--targets", "3", "--config", str(DEMO_CONFIG)])
    captured = capsys.readouterr()
    assert code == 1  # the bad ignore mask is reported; the other targets are measured
    assert f"bad/{stems[1]}" in captured.err and "FAILED" in captured.err
    assert snapshot(root) == before  # inputs are never modified
    with open(out / "ppd_ablation.csv") as handle:
        rows = {r["domain"]: r for r in csv.DictReader(handle)}
    assert list(rows) == ["bad", "ignored", "MEAN"]
    assert rows["bad"]["images"] == rows["ignored"]["images"] == "1" and rows["MEAN"]["images"] == "2"
    # with every pixel ignored, each column compares two empty masks
    assert all(float(rows["ignored"][k]) == 1.0 for k in COLUMNS)
    assert all(0.0 <= float(rows["bad"][k]) < 1.0 for k in COLUMNS)
    for k in COLUMNS:
        assert float(rows["MEAN"][k]) == pytest.approx((float(rows["bad"][k]) + 1.0) / 2, abs=1e-4)  # the CSV rounds
    headline = captured.out.strip().splitlines()[-1]
    pairs = [item.split("=") for item in headline.split()]
    assert [k for k, _ in pairs] == list(COLUMNS)
    assert all(float(v) == pytest.approx(float(rows["MEAN"][k]), abs=6e-4) for k, v in pairs)
