"""benchmarks/bench_signals.py on a tiny generated corpus: the tables, the estimator file, the headline,
a bad target (reported, the rest measured) and usage errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys

import numpy as np
import pytest
from conftest import DEMO_CONFIG, ROOT
from PIL import Image
from test_bench_domains import snapshot

from gpoa.quality import QUALITY_STATISTICS, QualityEstimator
from gpoa.synth.corpus import write_task_corpus

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_signals  # noqa: E402

HEADLINE = re.compile(r"^domains=(\d+) best_statistic=(\w+) best_correlation=(-?\d\.\d\d) "
                      r"region_agreement_gain=([+-]\d+\.\d\d) estimator_gain=([+-]\d+\.\d\d|nan) "
                      r"oracle_gain=([+-]\d+\.\d\d)$")
SIGNALS = [*QUALITY_STATISTICS, "estimator", "oracle"]


@pytest.fixture(scope="module")
def signals_run(tmp_path_factory):
    """Two measured tasks (seed 7) with two targets each, one of whose truth masks has the wrong
    size, and an estimator fitted on another task (seed 0)."""
    root = tmp_path_factory.mktemp("signals")
    held, corpus = root / "held", root / "corpus"
    write_task_corpus(held, n_tasks=2, seed=7, n_train=0, n_targets=2)
    write_task_corpus(corpus, n_tasks=1, seed=0, n_train=0, n_targets=2)
    bad = sorted((held / "task_001" / "target_mask").glob("*.png"))[0]
    width, height = Image.open(bad).size
    Image.new("L", (width + 3, height), 0).save(bad)
    before = {name: snapshot(root / name) for name in ("held", "corpus")}
    out, err = root / "out", io.StringIO()
    with contextlib.redirect_stderr(err):
        code = bench_signals.main([str(held), "--fit", str(corpus), "--out", str(out), "--targets", "2",
                                   "--config", str(DEMO_CONFIG)])
    return root, out, code, before, (bad.stem, err.getvalue())


def rows_of(path) -> list:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_a_bad_target_is_reported_and_the_others_are_measured(signals_run):
    root, out, code, before, (bad, err) = signals_run
    assert code == 1
    assert f"FAILED task_001/{bad}" in err
    rows = rows_of(out / "signals.csv")
    images = {(r["domain"], r["signal"]): int(r["images"]) for r in rows}
    assert images[("task_000", "oracle")] == 2 and images[("task_001", "oracle")] == 1
    assert images[("MEAN", "oracle")] == 3
    assert all(snapshot(root / name) == files for name, files in before.items())  # inputs are never written


def test_tables_estimator_and_headline(signals_run):
    _, out, _, _, _ = signals_run
    rows = rows_of(out / "signals.csv")
    assert list(rows[0]) == ["domain", "signal", "images", "correlated_images", "correlation", "selection_gain"]
    for domain in ("task_000", "task_001", "MEAN"):
        assert [r["signal"] for r in rows if r["domain"] == domain] == SIGNALS
    by = {(r["domain"], r["signal"]): r for r in rows}
    for signal in SIGNALS:  # MEAN is the mean over domains
        gains = [float(by[(d, signal)]["selection_gain"]) for d in ("task_000", "task_001")]
        assert float(by[("MEAN", signal)]["selection_gain"]) == pytest.approx(np.mean(gains), abs=1e-3)
    # no signal beats the oracle, which never loses
    oracle = {d: float(by[(d, "oracle")]["selection_gain"]) for d in ("task_000", "task_001", "MEAN")}
    assert all(v >= 0.0 for v in oracle.values())
    for (domain, _), row in by.items():
        assert float(row["selection_gain"]) <= oracle[domain] + 1e-3
    estimator = json.loads((out / "estimator.json").read_text())
    assert estimator["fit"] and estimator["rows"] > 2
    QualityEstimator.from_dict(estimator)  # it loads: the inputs are this code's
    table = (out / "signals.md").read_text()
    assert "| region_agreement |" in table and "| signal | task_000 (2) | task_001 (1) | MEAN (3) |" in table
    match = HEADLINE.match(table.strip().splitlines()[-1].strip("`"))
    assert match, "the last line of signals.md is the headline"
    assert int(match[1]) == 2 and match[2] in QUALITY_STATISTICS
    assert float(match[4]) == pytest.approx(float(by[("MEAN", "region_agreement")]["selection_gain"]), abs=6e-3)
    assert float(match[5]) == pytest.approx(float(by[("MEAN", "estimator")]["selection_gain"]), abs=6e-3)
    assert float(match[6]) == pytest.approx(oracle["MEAN"], abs=6e-3)


def test_without_a_corpus_there_is_no_estimator(signals_run, capsys):
    root, out, _, _, _ = signals_run
    clean = out.parent / "clean"
    code = bench_signals.main([str(root / "held" / "task_000"), "--out", str(clean), "--targets", "2",
                               "--config", str(DEMO_CONFIG)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = HEADLINE.match(last)
    assert match and int(match[1]) == 1 and match[5] == "nan"
    assert not (clean / "estimator.json").exists()
    assert [r["signal"] for r in rows_of(clean / "signals.csv") if r["domain"] == "MEAN"] == [
        *QUALITY_STATISTICS, "oracle"]
    # the same images as in the run with the corpus: the same numbers
    with_fit = {(r["domain"], r["signal"]): r for r in rows_of(out / "signals.csv")}
    for row in rows_of(clean / "signals.csv"):
        if row["domain"] == "task_000":
            assert row["selection_gain"] == with_fit[("task_000", row["signal"])]["selection_gain"]


def test_usage_errors(signals_run, tmp_path, capsys):
    root, _, _, _, _ = signals_run
    held = str(root / "held")
    assert bench_signals.main([held, "--fit", held, "--out", str(tmp_path / "o")]) == 2
    assert "not fitted on" in capsys.readouterr().err
    assert bench_signals.main([held, "--out", str(tmp_path / "o"), "--targets", "0"]) == 2
    assert bench_signals.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "signals.csv").exists()
