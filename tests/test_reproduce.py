"""reproduce.py end to end on fake benchmark trees: every table, and 2 shards == 1 process."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from PIL import Image
from test_datasets import coco_tree, davis_tree, fss_src, isic_src, kvasir_src, pascal_src  # noqa: F401 - fixtures

import reproduce
from gpoa.backends import Backends
from gpoa.cli import main as gpoa_main
from gpoa.config import Config, load_config
from gpoa.datasets import convert
from gpoa.experiments.reproduce import DomainIndex, Group, group_task
from gpoa.features.store import file_digest
from gpoa.stages.track import track_clips

#: small grid, few candidate prompts, 2-step episodes and tiny budgets: the fake images are 40 x 32
#: pixels, and every assertion here is about which rows and files the tables get, not their values
FAST = ["features.working_size=112", "segmenter.n_segments=100", "train.total_steps=48", "train.eval_every=48",
        "dqn.learning_starts=16", "dqn.batch_size=8", "train.parallel_envs=2", "dqn.hidden=16", "ppo.hidden=16",
        "ppo.num_steps=8", "ppd.attack_steps=[1,2]", "env.episode_length=2", "graph.extra_positive=3",
        "graph.extra_negative=3"]


def sets(overrides: list) -> list:
    return [a for o in overrides for a in ("--set", o)]


def read_csv(path) -> list:
    with open(path) as handle:
        return list(csv.DictReader(handle))


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


def test_every_table_from_fake_trees_and_two_shards_match(fss_src, pascal_src, isic_src, kvasir_src,  # noqa: F811
                                                          tmp_path, capsys):
    root = tmp_path / "data"
    coco_tree(tmp_path / "coco")
    for name, src in (("fss1000", fss_src), ("pascal5i", pascal_src), ("coco20i", tmp_path / "coco"),
                      ("isic2018", isic_src), ("kvasir", kvasir_src)):
        assert convert(name, src, root / name, episodes=2, progress=False).exit_code == 0
    out = tmp_path / "out"
    # the domains' feature caches go to the workspace: a temporary one, never the repository's outputs/
    args = ["--root", str(root), "--config", str(DEMO_CONFIG), "--episodes", "1", "--runtime-images", "1", *sets(FAST),
            "--set", f"workspace={tmp_path / 'workspace'}"]
    assert reproduce.main(["all", "--out", str(out), *args]) == 0
    printed, err = capsys.readouterr()
    # all: the tables whose data the root holds; davis's clips are not there, and the message says how to add them
    assert "[reproduce] davis is left out" in err and f"gpoa convert davis --src RAW/DAVIS --out {root / 'davis2016'}" in err
    # the policies were trained once, on FSS-1000's training classes, and are reused
    for learner in ("dqn", "ppo", "ppd"):
        assert (out / "policies" / learner / "best.pt").is_file()
    assert (out / "policies" / "ppd" / "attacker.pt").is_file()
    for table in ("ppd-main", "ppd-ablation", "ppd-runtime", "fss"):
        assert (out / f"{table}.csv").is_file() and (out / f"{table}.md").is_file(), table

    main = read_csv(out / "ppd-main.csv")
    assert {r["column"] for r in main} == {f"{t} {m}" for t in ("PASCAL VOC", "ISIC 2018", "Kvasir-SEG")
                                            for m in ("mDSC", "mIoU")}
    assert {r["row"] for r in main} == {"initial (FM)", "FM + DQN", "FM + PPO", "FM + PPD", "top-k", "ideal"}
    assert all(0.0 <= float(r["ours"]) <= 100.0 for r in main)
    fss = read_csv(out / "fss.csv")
    assert {r["column"] for r in fss if r["ours"]} == {f"{t} {m}" for t in ("FSS-1000", "PASCAL-5i", "COCO-20i")
                                                        for m in ("mIoU", "FB-IoU")}
    assert {(r["row"], r["column"], r["published"]) for r in fss if r["published"]} == {
        ("Matcher", "COCO-20i mIoU", "52.7"), ("Matcher", "LVIS-92i mIoU", "33.0"),
        ("GF-SAM", "COCO-20i mIoU", "58.7"), ("GF-SAM", "LVIS-92i mIoU", "35.2")}
    ablation = read_csv(out / "ppd-ablation.csv")
    assert {r["row"] for r in ablation} == {"PASCAL VOC", "ISIC 2018", "Kvasir-SEG"}
    # the paper's PASCAL VOC row beside ours, its figures marked unchecked
    assert [(float(r["published"]), r["verified"]) for r in ablation if r["published"]] == [
        (78.5, "no"), (34.2, "no"), (83.5, "no"), (41.3, "no"), (73.0, "no")]
    runtime = read_csv(out / "ppd-runtime.csv")
    assert all(float(r["ours"]) >= 0 for r in runtime if r["ours"]) and sum(bool(r["ours"]) for r in runtime) == 12
    assert {r["row"]: float(r["published"]) for r in runtime if r["published"]} == {
        "FM-PPD": 1.249, "FM-PPO": 2.768, "Matcher": 8.723}

    # every table: the published rows beside ours, unchecked ones marked, the backbones in the header
    assert "not recorded" not in printed
    tables = {name: (out / f"{name}.md").read_text() for name in ("ppd-main", "ppd-ablation", "ppd-runtime", "fss")}
    for name, text in tables.items():
        assert text.splitlines()[0].endswith("a stand-in for the papers' SAM + DINOv2, not a reproduction of their "
                                             "numbers"), name
        assert text in printed, name
    assert "| FM + PPD |" in tables["ppd-main"]
    assert "| FM + PPD (paper) | 73.0† | — | 76.3† | — | 64.1† | — |" in tables["ppd-main"]
    assert "| PASCAL VOC (paper) | — | 78.5† | 34.2† | 83.5† | 41.3† | 73.0† |" in tables["ppd-ablation"]
    assert "| Matcher (paper) | — | — | — | — | 52.7 | — |" in tables["fss"]  # checked: plain
    assert "| GF-SAM | 58.7 | 35.2 |" in tables["fss"]  # LVIS-92i, which ours lacks: the paper's own layout
    assert "| FM-PPD | 1.249† |" in tables["ppd-runtime"]  # methods as rows: the paper's own layout
    for name in ("ppd-main", "ppd-ablation", "ppd-runtime"):
        assert "† not checked against the paper here: as read by the project's maintainers from arXiv " \
               "2509.18891." in tables[name], name
    assert "†" not in tables["fss"]

    # two processes (the policies exist: --shard processes do not train) write the same tables
    sharded = tmp_path / "sharded"
    shutil.copytree(out / "policies", sharded / "policies")
    tables = ["ppd-main", "ppd-ablation", "fss"]
    assert reproduce.main([*tables, "--out", str(sharded), "--shard", "0/2", *args]) == 0
    assert not (sharded / "fss.csv").exists()
    assert reproduce.main([*tables, "--out", str(sharded), "--shard", "1/2", *args]) == 0
    for table in tables:
        assert (sharded / f"{table}.csv").read_text() == (out / f"{table}.csv").read_text(), table

    # an unreadable ignore mask is reported and its query left out; the tables are still written
    broken = sorted((root / "pascal5i").rglob("ignore/*.png"))
    assert broken
    for path in broken:
        Image.new("L", (3, 3)).save(path)
    capsys.readouterr()
    again = tmp_path / "again"
    shutil.copytree(out / "policies", again / "policies")
    assert reproduce.main(["ppd-main", "ppd-ablation", "--out", str(again), *args]) == 1
    err = capsys.readouterr().err
    main_part, _, ablation_part = err.partition("ppd-ablation [")
    for part in (main_part, ablation_part):  # each table names the bad file, and goes on
        assert "FAILED" in part and "is 3x3 pixels" in part and any(str(p.parent) in part for p in broken)
    assert (again / "ppd-main.csv").is_file() and (again / "ppd-ablation.csv").is_file()


def test_missing_data_and_untrained_shards_are_usage_errors(tmp_path, capsys):
    assert reproduce.main(["fss", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert reproduce.main(["fss", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                           "--train", str(tmp_path)]) == 2
    assert "no domain folders" in capsys.readouterr().err
    assert reproduce.main(["tables", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown table" in capsys.readouterr().err
    domains = tmp_path / "domains"
    for stem in ("a", "b"):
        for folder in ("image", "mask"):
            (domains / "d" / folder).mkdir(parents=True, exist_ok=True)
            (domains / "d" / folder / f"{stem}.png").write_bytes(b"")
    assert reproduce.main(["fss", "--root", str(domains), "--out", str(tmp_path / "o")]) == 2
    assert "need training data" in capsys.readouterr().err
    assert reproduce.main(["fss", "--root", str(domains), "--out", str(tmp_path / "o"), "--train", str(tmp_path),
                           "--shard", "0/2"]) == 2
    assert "--policies-only" in capsys.readouterr().err
    # davis: no clips, or DAVIS converted with another year or split, names the converter command
    assert reproduce.main(["davis", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no converted DAVIS 2016 val" in err and "gpoa convert davis --src RAW/DAVIS --out" in err
    davis_tree(tmp_path / "DAVIS", 2016)
    assert convert("davis", tmp_path / "DAVIS", tmp_path / "other" / "train", split="train", progress=False).exit_code == 0
    assert reproduce.main(["davis", "--root", str(tmp_path / "other"), "--out", str(tmp_path / "o")]) == 2
    assert "holds davis2016-train (dataset.json) but not DAVIS 2016 val" in capsys.readouterr().err


def test_a_group_task_carries_its_domains_ignore_masks(tmp_path):
    """The ablation (and stage 4) leave a benchmark's void pixels out: the task of a group knows them."""
    for kind in ("image", "mask", "ignore"):
        (tmp_path / "dom" / kind).mkdir(parents=True)
    for stem in ("a", "b", "c"):
        Image.new("RGB", (40, 32)).save(tmp_path / "dom" / "image" / f"{stem}.png")
        Image.new("L", (40, 32)).save(tmp_path / "dom" / "mask" / f"{stem}.png")
    Image.new("L", (40, 32)).save(tmp_path / "dom" / "ignore" / "b.png")
    cfg = Config()
    task = group_task(Group("dom", ("a",), ["b", "c"], []), DomainIndex(tmp_path), tmp_path / "work",
                      tmp_path / "cache", Backends(cfg, "cpu"), cfg)
    assert task.layout.ignore_masks == {"b": tmp_path / "dom" / "ignore" / "b.png"}


DAVIS_COLUMNS = ("j_mean", "f_mean", "jf_mean")


def test_davis_table_is_gpoa_tracks_numbers_beside_the_published_rows(tmp_path, capsys):
    """gpoa reproduce davis on a converted fake DAVIS 2016 val (2 clips of 4 and 3 frames): one row per
    policy, each the mean over clips of what gpoa track computes with that policy; 2 shards == 1
    process; a folder of clips stands in."""
    src, root, train = tmp_path / "DAVIS", tmp_path / "data", tmp_path / "train"
    davis_tree(src, 2016)
    assert convert("davis", src, root / "davis2016", progress=False).exit_code == 0
    assert convert("davis", src, train, split="train", progress=False).exit_code == 0  # the policy's training clip
    settings = sets(FAST + ["track.overlay=none", f"workspace={tmp_path / 'workspace'}"])
    args = ["--root", str(root), "--config", str(DEMO_CONFIG), "--learners", "dqn", "--train", str(train), *settings]
    out = tmp_path / "out"
    assert gpoa_main(["reproduce", "davis", "--out", str(out), *args]) == 0
    table = (out / "davis.md").read_text()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].startswith("# Video object segmentation, DAVIS 2016 val: J, F and J&F") and \
        "2 clip(s), 7 frames (3 scored); ours with the embedded default" in lines[0]
    assert "ours over 2 clip(s) and 7 frames: not directly comparable" in table
    rows = read_csv(out / "davis.csv")
    ours = {(r["row"], r["column"]): float(r["ours"]) for r in rows if r["ours"]}
    assert {row for row, _ in ours} == {"GPOA tracker, no agent", "GPOA tracker + DQN"}
    policy = out / "policies" / "dqn" / "best.pt"
    stamp = json.loads((out / "work" / "davis" / "dqn" / "bear.json").read_text())
    assert stamp["fingerprint"]["settings"]["policy"] == file_digest(policy)  # the run's policy, tracked with
    for row, extra in (("GPOA tracker, no agent", []), ("GPOA tracker + DQN", ["--policy", str(policy)])):
        alone = tmp_path / row
        assert gpoa_main(["track", "--config", str(DEMO_CONFIG), "--data", str(root / "davis2016"), "--out", str(alone),
                          *extra, *settings]) == 0
        clips = [json.loads((alone / f"{clip}.json").read_text())["row"] for clip in ("bear", "car")]
        for column in DAVIS_COLUMNS:  # the mean over clips of each clip's mean, in %
            assert ours[(row, column)] == pytest.approx(100 * np.mean([c[column] for c in clips]), abs=1e-4)
    # the published rows beside ours, checked (plain): J and F; J&F not published
    assert {(r["row"], r["column"], float(r["published"]), r["verified"]) for r in rows if r["published"]} == {
        (method, column, value, "yes") for method, j, f in (("OSVOS", 79.8, 80.6), ("OFL", 68.0, 63.4),
                                                             ("BVS", 60.0, 58.8), ("FCP", 58.4, 49.2),
                                                             ("JMP", 57.0, 53.1))
        for column, value in (("j_mean", j), ("f_mean", f))}
    assert "| OSVOS (paper) | 79.8 | 80.6 | — |" in table and "†" not in table

    # two processes (the policy exists), each its clip: the table one process writes
    sharded = tmp_path / "sharded"
    shutil.copytree(out / "policies", sharded / "policies")
    assert reproduce.main(["davis", "--out", str(sharded), "--shard", "0/2", *args]) == 0
    assert not (sharded / "davis.csv").exists()
    assert reproduce.main(["davis", "--out", str(sharded), "--shard", "1/2", *args]) == 0
    assert (sharded / "davis.csv").read_text() == (out / "davis.csv").read_text()
    # the track stage never merges a part of another frame limit: shard 0 alone, 3 frames, finds shard 1's stale
    cfg = load_config(str(DEMO_CONFIG), FAST + ["track.overlay=none", "shard=0/2"])
    cfg.data = [str(root / "davis2016")]
    assert track_clips(cfg, "cpu", sharded / "work" / "davis" / "none", max_frames=3)[1] == []

    # a folder of clips stands in: --targets 1 follows the first 3 frames of each, frame 1 scored
    shutil.copytree(root / "davis2016" / "bear", tmp_path / "clips" / "bear")
    stand_in = tmp_path / "stand-in"
    assert reproduce.main(["davis", "--root", str(tmp_path / "clips"), "--out", str(stand_in), "--learners", "",
                           "--targets", "1", "--config", str(DEMO_CONFIG), *settings]) == 0
    text = (stand_in / "davis.md").read_text()
    assert "clips (stand-in clips, not DAVIS 2016 val)" in text and "1 clip(s), 3 frames (1 scored)" in text
    frames = read_csv(tmp_path / "GPOA tracker, no agent" / "bear.csv")
    j = float(next(r["j"] for r in frames if r["frame"] == "00001"))  # the tracker is causal: frame 1 as before
    assert {r["column"]: float(r["ours"]) for r in read_csv(stand_in / "davis.csv") if r["ours"]}["j_mean"] == \
        pytest.approx(100 * j, abs=1e-2)
