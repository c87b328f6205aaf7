"""benchmarks/bench_domains.py on tiny domain folders: the table, the headline line, read-only inputs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, ROOT

import train_GPOA

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_domains  # noqa: E402

HEADLINE = re.compile(r"^domains=(\d+) mean_gain=([+-]\d\.\d{3}) worst_gain=([+-]\d\.\d{3}) worst_domain=(\S+) "
                      r"gain_vs_topk=([+-]\d\.\d{3}) initial_mean=(\d\.\d{3}) optimized_mean=(\d\.\d{3}) "
                      r"oracle_mean=(\d\.\d{3}) rule_mean=(\d\.\d{3}) capture=(-?\d+\.\d{3}|nan)"
                      r"( absent_empty_share=(\d\.\d{3}) present_kept_share=(\d\.\d{3}))?$")


#: 2-step episodes and 3 + 3 candidate prompts, in training and in every bench run: the tests check
#: the tables, the headline and which images are scored, not how much the policy gains
CHEAP = [a for o in ("env.episode_length=2", "graph.extra_positive=3", "graph.extra_negative=3") for a in ("--set", o)]


def as_domain(dataset: Path, out: Path) -> Path:
    """A demo dataset folder rewritten in the domain layout (image/ + mask/), reference first by name."""
    for folder, prefix in (("reference", "a_"), ("target", "b_")):
        for image in sorted((dataset / f"{folder}_image").glob("*.png")):
            (out / "image").mkdir(parents=True, exist_ok=True)
            (out / "mask").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, out / "image" / f"{prefix}{image.name}")
            shutil.copy(dataset / f"{folder}_mask" / image.name, out / "mask" / f"{prefix}{image.name}")
    return out


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def benchmark_run(demo_master, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    domains = root / "domains"
    for family in ("membrane", "objects"):
        as_domain(demo_master / family, domains / family)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_GPOA.main(["--config", str(DEMO_CONFIG), *CHEAP, "--data", str(domains), "--run", "tiny",
                                "--set", f"train.checkpoints={root / 'checkpoints'}", "--set", f"workspace={root / 'ws'}",
                                "--set", "train.total_steps=96", "--set", "dqn.learning_starts=32",
                                "--set", "dqn.batch_size=16", "--set", "train.eval_every=96",
                                "--set", "train.parallel_envs=4", "--set", "dqn.hidden=32"]) == 0
    finally:
        torch.set_num_threads(threads)
    before = snapshot(domains)
    out = root / "out"
    code = bench_domains.main([str(domains), "--out", str(out), "--policy", str(root / "checkpoints" / "tiny" / "best.pt"),
                               "--targets", "2", "--config", str(DEMO_CONFIG), *CHEAP])
    return domains, out, code, before


def test_benchmark_writes_the_table_and_the_headline(benchmark_run, capsys):
    domains, out, code, _ = benchmark_run
    assert code == 0
    with open(out / "domains.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["domain", "prompt_set", "images", "dice_mean", "dice_std", "iou_mean", "hd95_mean"]
    assert [r["domain"] for r in rows][-1] == "MEAN"
    for domain in ("membrane", "objects", "MEAN"):
        sets = [r["prompt_set"] for r in rows if r["domain"] == domain]
        assert sets == ["initial", "optimized", "topk", "random_subset", "lookahead_rule", "oracle", "ideal"]
    per_domain = [r for r in rows if r["domain"] != "MEAN"]
    assert all(r["images"] == "2" for r in per_domain)  # --targets 2 (the first sorted pair is the reference)
    by = {(r["domain"], r["prompt_set"]): float(r["dice_mean"]) for r in rows}
    for name in ("initial", "oracle"):
        assert by[("MEAN", name)] == pytest.approx((by[("membrane", name)] + by[("objects", name)]) / 2, abs=1e-4)
    # the oracle starts where the policy starts and only takes toggles that raise Dice
    for domain in ("membrane", "objects"):
        assert by[(domain, "oracle")] >= by[(domain, "initial")] - 1e-4
    assert (out / "domains.md").read_text().count("| membrane |") == 1


def test_headline_line_matches_the_csv(benchmark_run):
    _, out, _, _ = benchmark_run
    with open(out / "domains.csv") as handle:
        rows = list(csv.DictReader(handle))
    by = {(r["domain"], r["prompt_set"]): float(r["dice_mean"]) for r in rows}
    match = HEADLINE.match((out / "domains.md").read_text().strip().splitlines()[-1].strip("`"))
    assert match, "the last line of domains.md is the headline"
    n, mean_gain, worst_gain, worst_domain = int(match[1]), float(match[2]), float(match[3]), match[4]
    gains = {d: by[(d, "optimized")] - by[(d, "initial")] for d in ("membrane", "objects")}
    assert n == 2
    assert mean_gain == pytest.approx(sum(gains.values()) / 2, abs=1.5e-3)
    assert worst_domain == min(gains, key=gains.get) and worst_gain == pytest.approx(min(gains.values()), abs=1.5e-3)
    assert float(match[6]) == pytest.approx(by[("MEAN", "initial")], abs=1.5e-3)
    assert float(match[9]) == pytest.approx(by[("MEAN", "lookahead_rule")], abs=1.5e-3)
    initial, optimized, oracle = (by[("MEAN", name)] for name in ("initial", "optimized", "oracle"))
    if oracle - initial > 1e-3:
        assert float(match[10]) == pytest.approx((optimized - initial) / (oracle - initial), abs=2e-2)
    assert match[11] is None  # no --absent: no presence shares
    header = next(line for line in (out / "domains.md").read_text().splitlines() if line.startswith("| domain"))
    assert header.endswith("| gain | capture |")


def test_benchmark_never_writes_into_its_inputs(benchmark_run):
    domains, _, _, before = benchmark_run
    assert snapshot(domains) == before


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert bench_domains.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert bench_domains.main([str(tmp_path), "--out", str(tmp_path / "o"), "--targets", "0"]) == 2


def test_two_shards_write_the_tables_one_process_writes(benchmark_run, capsys):
    domains, out, code, _ = benchmark_run
    sharded = out.parent / "sharded"
    args = [str(domains), "--out", str(sharded), "--policy", str(out.parent / "checkpoints" / "tiny" / "best.pt"),
            "--targets", "2", "--config", str(DEMO_CONFIG), *CHEAP]
    assert bench_domains.main(args + ["--shard", "0/2"]) == code
    assert not (sharded / "domains.csv").exists()  # the first shard alone cannot write the tables
    capsys.readouterr()
    assert bench_domains.main(args + ["--shard", "1/2"]) == code
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert HEADLINE.match(last)
    for name in ("domains.csv", "domains.md"):
        assert (sharded / name).read_text() == (out / name).read_text(), name


def test_reference_option_makes_another_pair_the_one_shot(benchmark_run, capsys):
    domains, out, _, _ = benchmark_run
    rotated = out.parent / "rotated"
    args = [str(domains), "--out", str(rotated), "--policy", str(out.parent / "checkpoints" / "tiny" / "best.pt"),
            "--targets", "1", "--config", str(DEMO_CONFIG), *CHEAP]
    assert bench_domains.main(args + ["--reference", "1"]) == 0
    # the second sorted pair is the reference, so the first (the default reference) is the one target
    for family in ("membrane", "objects"):
        first = sorted(p.stem for p in (domains / family / "image").iterdir())[0]
        assert sorted(p.stem for p in (rotated / family / "initial_indices").glob("*.json")) == [first]
    assert "reference: pair 1 of each domain" in (rotated / "domains.md").read_text()
    assert HEADLINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench_domains.main(args + ["--reference", "99"]) == 2
    assert "no reference number 99" in capsys.readouterr().err


def test_shots_take_the_first_pairs_as_references_and_score_the_same_targets(benchmark_run, capsys):
    domains, out, _, _ = benchmark_run
    policy = str(out.parent / "checkpoints" / "tiny" / "best.pt")
    stems = sorted(p.stem for p in (domains / "membrane" / "image").iterdir())  # 7 pairs: 5 in the pool, 2 targets
    targets = {}
    for shots in (1, 3):
        folder = out.parent / f"shots{shots}"
        args = [str(domains), "--out", str(folder), "--policy", policy, "--targets", "2", "--config", str(DEMO_CONFIG), *CHEAP,
                "--shots", str(shots)]
        assert bench_domains.main(args) == 0
        assert f"{shots}-shot" in (folder / "domains.md").read_text()
        assert HEADLINE.match(capsys.readouterr().out.strip().splitlines()[-1])
        targets[shots] = sorted(p.stem for p in (folder / "membrane" / "initial_indices").glob("*.json"))
    assert targets[1] == targets[3] == stems[5:]
    base = [str(domains), "--out", str(out.parent / "bad"), "--policy", policy, "--config", str(DEMO_CONFIG), *CHEAP]
    assert bench_domains.main(base + ["--shots", "6"]) == 2
    assert "--shots must be 1 to 5" in capsys.readouterr().err
    assert bench_domains.main(base + ["--shots", "2", "--reference", "1"]) == 2


def test_absent_adds_other_domains_images_and_reports_the_presence_shares(benchmark_run, capsys):
    domains, out, _, before = benchmark_run
    folder = out.parent / "absent"
    args = [str(domains), "--out", str(folder), "--policy", str(out.parent / "checkpoints" / "tiny" / "best.pt"),
            "--targets", "2", "--config", str(DEMO_CONFIG), *CHEAP, "--absent", "2", "--set", "optimize.presence=true"]
    assert bench_domains.main(args) == 0
    match = HEADLINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    assert match and match[11] is not None
    rows = {domain: json.loads((folder / domain / "results" / "metrics.json").read_text())
            for domain in ("membrane", "objects")}
    optimized = [r for domain in rows for r in rows[domain] if r["prompt_set"] == "optimized"]
    added = [r for r in optimized if r["image"].startswith("absent__")]
    own = [r for r in optimized if not r["image"].startswith("absent__")]
    assert len(added) == 4 and len(own) == 4  # 2 images of the other domain added to each domain's 2 targets
    assert all(r["image"].startswith("absent__objects__") for r in rows["membrane"] if r["image"].startswith("absent__"))
    assert float(match[12]) == pytest.approx(sum(r["prediction_area"] == 0 for r in added) / 4, abs=1e-3)
    assert float(match[13]) == pytest.approx(sum(r["prediction_area"] > 0 for r in own) / 4, abs=1e-3)
    with open(folder / "domains.csv") as handle:  # the rows are over each domain's own targets
        table = [r for r in csv.DictReader(handle) if r["domain"] != "MEAN"]
    assert all(r["images"] == "2" for r in table)
    assert snapshot(domains) == before  # the added images are links in the output folder
    threshold = torch.load(out.parent / "checkpoints" / "tiny" / "best.pt", map_location="cpu",
                           weights_only=True)["extra"]["presence_threshold"]
    for domain in ("membrane", "objects"):  # every optimised prompt file records the decision
        files = sorted((folder / domain / "optimized_indices").glob("*.json"))
        assert len(files) == 4
        for path in files:
            content = json.loads(path.read_text())
            assert content["present"] == (content["presence_score"] >= threshold)
            assert f"presence_threshold={threshold:g}" in content["source"]


def test_the_policy_carries_a_presence_threshold_fitted_on_its_training_images(benchmark_run):
    _, out, _, _ = benchmark_run
    extra = torch.load(out.parent / "checkpoints" / "tiny" / "best.pt", map_location="cpu", weights_only=True)["extra"]
    fit = extra["presence_fit"]
    # the demo families hold their object in every image: the absent examples are each image with the other
    # family's reference
    assert fit["absent"] == fit["present"] > 0
    assert 0.0 <= fit["false_absent"] <= 1.0 and isinstance(extra["presence_threshold"], float)
    for path in sorted((out / "membrane" / "optimized_indices").glob("*.json")):  # presence is off by default
        assert "present" not in json.loads(path.read_text())
