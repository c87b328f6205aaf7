"""Stage 1 → stage 4 end to end on the embedded default, and how bad inputs are handled."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG
from PIL import Image

import Generate_initial_prompts
import main_seg
from gpoa.backends import Backends, working_grid
from gpoa.config import load_config
from gpoa.evaluation import MEAN_TASK
from gpoa.features.store import FeatureStore
from gpoa.io import read_image, read_mask
from gpoa.layout import DatasetLayout
from gpoa.metrics import dice
from gpoa.prompts import PromptSet, sample_ideal_prompts
from gpoa.segmenters import build_segmenter
from gpoa.stages.segmentation import segment_and_evaluate

ARGS = ["--config", str(DEMO_CONFIG)]


def run_stage1(data: Path, *extra) -> int:
    return Generate_initial_prompts.main(ARGS + ["--data", str(data), *extra])


def run_stage4(data: Path, *extra) -> int:
    return main_seg.main(ARGS + ["--data", str(data), *extra])


def read_summary(path: Path) -> dict:
    with open(path) as handle:
        return {row["prompt_set"]: row for row in csv.DictReader(handle)}


def test_stage1_then_stage4_end_to_end(demo_dataset, capsys):
    assert run_stage1(demo_dataset) == 0
    layout = DatasetLayout(demo_dataset)
    prompt_files = sorted(layout.initial_indices.glob("*.json"))
    assert [p.stem for p in prompt_files] == [p.stem for p in layout.images(layout.target_image)]
    data = json.loads(prompt_files[0].read_text())
    assert set(data) >= {"image", "original_size", "grid", "positive_indices", "negative_indices",
                         "positive_points", "negative_points", "source"}
    assert data["grid"] == {"rows": 40, "cols": 40, "patch_size": 14, "working_size": [560, 560]}
    assert data["positive_indices"] and not set(data["positive_indices"]) & set(data["negative_indices"])
    width, height = data["original_size"]
    assert all(0 <= x < width and 0 <= y < height for x, y in data["positive_points"] + data["negative_points"])
    assert (layout.initial_indices / "overlays" / f"{prompt_files[0].stem}.png").is_file()
    assert (layout.initial_indices / "config.yaml").is_file()
    # features are cached by image content: one entry per target and one for the reference
    store = FeatureStore(layout.cache, Backends(load_config(DEMO_CONFIG)))
    assert all(store.is_cached(p) for p in layout.images(layout.target_image) + layout.images(layout.reference_image))
    cached = list((layout.cache / "features").rglob("*.npy"))
    assert len(cached) == len(prompt_files) + 1 and np.load(cached[0]).dtype == np.float16

    assert run_stage4(demo_dataset) == 0
    printed = capsys.readouterr().out
    assert "| initial |" in printed and "| ideal |" in printed
    results = demo_dataset / "results"
    summary = read_summary(results / "summary.csv")
    assert list(summary) == ["initial", "ideal"]
    assert list(next(iter(summary.values()))) == ["task", "prompt_set", "images", "dice_mean", "dice_std",
                                                  "iou_mean", "iou_std", "hd95_mean", "hd95_std"]
    assert {row["task"] for row in summary.values()} == {"membrane"}
    assert int(summary["initial"]["images"]) == len(prompt_files)
    # the ideal set (prompts from the ground truth) is the upper bound the matcher falls short of
    assert float(summary["ideal"]["dice_mean"]) > float(summary["initial"]["dice_mean"])
    with open(results / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(prompt_files)
    assert list(rows[0]) == ["task", "prompt_set", "image", "dice", "iou", "hd95", "intersection", "union",
                             "prediction_area", "truth_area"]
    assert {r["task"] for r in rows} == {"membrane"}
    stem = prompt_files[0].stem
    mask = np.asarray(Image.open(results / "masks" / "initial" / f"{stem}.png"))
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    truth = read_mask(layout.target_mask / f"{stem}.png")
    row = next(r for r in rows if r["prompt_set"] == "initial" and r["image"] == stem)
    assert float(row["dice"]) == pytest.approx(dice(mask > 0, truth), abs=1e-4)
    predicted = mask > 0
    assert int(row["intersection"]) == np.count_nonzero(predicted & truth)
    assert int(row["union"]) == np.count_nonzero(predicted | truth)
    assert int(row["prediction_area"]) == np.count_nonzero(predicted)
    assert int(row["truth_area"]) == np.count_nonzero(truth)
    assert (results / "overlays" / "ideal" / f"{stem}.png").is_file()
    assert "| prompt set |" in (results / "summary.md").read_text()
    assert (results / "config.yaml").is_file()


def test_rerun_resumes_and_extra_prompt_folders_are_evaluated(demo_dataset, tmp_path, capsys):
    assert run_stage1(demo_dataset) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (demo_dataset / "initial_indices").glob("*.json")}
    assert run_stage1(demo_dataset) == 0
    assert "6 kept from an earlier run" in capsys.readouterr().out
    assert first == {p.name: p.stat().st_mtime_ns for p in (demo_dataset / "initial_indices").glob("*.json")}

    # a prompt folder from another source: the initial prompts without their first positive
    other = tmp_path / "manual"
    other.mkdir()
    for path in (demo_dataset / "initial_indices").glob("*.json"):
        data = json.loads(path.read_text())
        data["positive_indices"] = data["positive_indices"][1:] or data["positive_indices"]
        data["positive_points"] = data["positive_points"][1:] or data["positive_points"]
        data["source"] = "person"
        (other / path.name).write_text(json.dumps(data))
    out = tmp_path / "results"
    assert run_stage4(demo_dataset, "--prompts", str(other), "--out", str(out)) == 0
    assert list(read_summary(out / "summary.csv")) == ["initial", "manual", "ideal"]
    assert len(list((out / "masks" / "manual").glob("*.png"))) == 6


def test_embedded_segmenter_ideal_prompts_are_good_and_planted_wrong_positives_hurt(demo_master):
    cfg = load_config(DEMO_CONFIG)
    grid = working_grid(cfg)
    segmenter = build_segmenter(cfg)
    ideal_scores, planted_scores = [], []
    for family in ("membrane", "objects"):
        layout = DatasetLayout(demo_master / family)
        for image_path, mask_path in layout.pairs(layout.target_image, layout.target_mask):
            image, truth = read_image(image_path), read_mask(mask_path)
            rng = np.random.default_rng(0)
            positive, negative = sample_ideal_prompts(grid, truth, 8, 8, rng)
            ideal = PromptSet(image_path.name, (image.shape[1], image.shape[0]), grid, positive, negative)
            # plant three positives on patches far from the object
            fraction = grid.mask_fraction(truth).reshape(-1)
            background = np.flatnonzero(fraction == 0)
            far = background[grid.normalised_distance(background, positive).min(axis=1) > 0.25]
            wrong = rng.choice(far, size=3, replace=False)
            planted = PromptSet(image_path.name, ideal.original_size, grid, np.concatenate([positive, wrong]),
                                np.setdiff1d(negative, wrong))
            masks, _ = segmenter.decode(segmenter.embed(image), [ideal.point_prompts(), planted.point_prompts()])
            ideal_scores.append(dice(masks[0], truth))
            planted_scores.append(dice(masks[1], truth))
    assert np.mean(ideal_scores) >= 0.85
    assert np.mean(planted_scores) < np.mean(ideal_scores) - 0.05


def test_empty_reference_mask_is_a_usage_error(demo_dataset, capsys):
    mask_path = next((demo_dataset / "reference_mask").iterdir())
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask_path)))).save(mask_path)
    assert run_stage1(demo_dataset) == 2
    err = capsys.readouterr().err
    assert str(mask_path) in err and "no foreground" in err


def test_bad_targets_are_reported_and_the_rest_processed(demo_dataset, capsys):
    targets = sorted((demo_dataset / "target_image").iterdir())
    corrupt, resized = targets[0], targets[1]
    corrupt.write_bytes(b"this is not a png")
    before = {p.name: p.read_bytes() for p in targets}
    # stage 1: the unreadable image fails, every other target gets prompts
    assert run_stage1(demo_dataset) == 1
    err = capsys.readouterr().err
    assert corrupt.name in err and "cannot be read" in err and f"membrane/{corrupt.stem}" in err
    written = {p.stem for p in (demo_dataset / "initial_indices").glob("*.json")}
    assert written == {p.stem for p in targets[1:]}
    # stage 4: a ground-truth mask of the wrong size fails its image only
    mask_path = demo_dataset / "target_mask" / f"{resized.stem}.png"
    mask = Image.open(mask_path)
    mask.resize((mask.width + 10, mask.height)).save(mask_path)
    assert run_stage4(demo_dataset) == 1
    err = capsys.readouterr().err
    assert str(mask_path) in err and "size of the image" in err and f"FAILED membrane/{resized.stem}" in err
    summary = read_summary(demo_dataset / "results" / "summary.csv")
    assert int(summary["initial"]["images"]) == len(targets) - 2
    # inputs are never modified
    assert before == {p.name: p.read_bytes() for p in targets}


def test_prompt_file_from_another_grid_fails_that_set_only(demo_dataset, capsys):
    assert run_stage1(demo_dataset) == 0
    path = sorted((demo_dataset / "initial_indices").glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["grid"] = {"rows": 16, "cols": 16, "patch_size": 14, "working_size": [224, 224]}
    path.write_text(json.dumps(data))
    assert run_stage4(demo_dataset) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "16x16 grid" in err
    summary = read_summary(demo_dataset / "results" / "summary.csv")
    assert int(summary["initial"]["images"]) == 5 and int(summary["ideal"]["images"]) == 6


@pytest.mark.parametrize("script,key,expected", [
    (run_stage4, "segmenter", "sam_vit_l_0b3195.pth"),
    (run_stage1, "features", "dinov2_vitl14_pretrain.pth"),
])
def test_missing_checkpoint_is_a_usage_error(demo_dataset, tmp_path, capsys, script, key, expected):
    missing = tmp_path / "nowhere" / "weights.pth"
    overrides = {"segmenter": ["segmenter.backend=sam", "segmenter.model_type=vit_l"],
                 "features": ["features.backend=dinov2", "features.model=vit_large_patch14_dinov2"]}[key]
    if script is run_stage4:
        assert run_stage1(demo_dataset) == 0
        capsys.readouterr()
    args = [a for o in overrides + [f"{key}.checkpoint={missing}"] for a in ("--set", o)]
    assert script(demo_dataset, *args) == 2
    # the models load when first needed, the segmenter inside the progress loop: leave out its bar
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(err) == 1 and str(missing) in err[0] and expected in err[0] and f"{key}.checkpoint" in err[0]
    assert err[0].startswith(("Generate_initial_prompts.py: error: ", "main_seg.py: error: "))


def test_usage_errors_exit_2(tmp_path, capsys):
    assert run_stage1(tmp_path / "no_such_dataset") == 2
    assert "does not exist" in capsys.readouterr().err
    assert Generate_initial_prompts.main(["--set", "matching.no_such_key=1"]) == 2
    assert "unknown config key 'matching.no_such_key'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main_seg.main(["--help"])
    assert exc.value.code == 0
    assert "--prompts" in capsys.readouterr().out


def test_device_auto_picks_cpu_here():
    from gpoa.config import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert os.path.exists(DEMO_CONFIG)


def test_changed_settings_redo_outputs_instead_of_resuming_stale_ones(demo_dataset, capsys):
    assert run_stage1(demo_dataset) == 0
    assert run_stage1(demo_dataset, "--set", "matching.method=nearest", "--set", "matching.max_positive=3") == 0
    assert "6 done, 0 kept" in capsys.readouterr().out
    data = json.loads(next((demo_dataset / "initial_indices").glob("*.json")).read_text())
    assert len(data["positive_indices"]) == 3

    assert run_stage4(demo_dataset) == 0
    first = read_summary(demo_dataset / "results" / "summary.csv")["ideal"]["dice_mean"]
    assert run_stage4(demo_dataset) == 0
    assert "0 done, 6 kept" in capsys.readouterr().out
    # another segmenter setting: every mask is decoded again
    assert run_stage4(demo_dataset, "--set", "segmentation.ideal_positive=1",
                      "--set", "segmentation.ideal_negative=0") == 0
    assert "6 done, 0 kept" in capsys.readouterr().out
    assert read_summary(demo_dataset / "results" / "summary.csv")["ideal"]["dice_mean"] != first


def test_two_images_with_one_stem_are_a_usage_error(demo_dataset, capsys):
    source = sorted((demo_dataset / "target_image").iterdir())[0]
    Image.open(source).save(source.with_suffix(".tif"))
    assert run_stage1(demo_dataset) == 2
    err = capsys.readouterr().err
    assert source.name in err and source.with_suffix(".tif").name in err and "same name" in err


def test_out_of_range_settings_are_usage_errors(capsys):
    assert Generate_initial_prompts.main(["--set", "train.eval_every=0"]) == 2
    assert "'train.eval_every' must be at least 1" in capsys.readouterr().err
    assert Generate_initial_prompts.main(["--set", "env.graph_weights=a,b,c,d,e"]) == 2
    assert "env.graph_weights" in capsys.readouterr().err


def test_stage4_over_a_folder_of_two_tasks_writes_each_and_returns_their_mean(demo_master, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    families = ("membrane", "objects")
    for family in families:
        shutil.copytree(demo_master / family, corpus / family, ignore=shutil.ignore_patterns("train_*"))
        for path in sorted((corpus / family / "target_image").iterdir())[2:]:
            path.unlink()
    stems = {family: [p.stem for p in sorted((corpus / family / "target_image").iterdir())] for family in families}
    assert run_stage1(corpus) == 0
    assert "4 done" in capsys.readouterr().out
    for family in families:
        assert sorted(p.stem for p in (corpus / family / "initial_indices").glob("*.json")) == stems[family]

    cfg = load_config(DEMO_CONFIG)
    cfg.data = [str(corpus)]
    report, summary = segment_and_evaluate(cfg, "cpu")
    assert report.exit_code == 0
    assert sorted(report.done) == sorted(f"{family}/{stem}" for family in families for stem in stems[family])
    assert [(s["task"], s["prompt_set"]) for s in summary] == [
        (task, name) for task in (*families, MEAN_TASK) for name in ("initial", "ideal")]
    assert "Mean over 2 tasks" in capsys.readouterr().out
    per_task = {}
    for family in families:  # each task's results in its own folder, rows of that task only
        results = corpus / family / "results"
        with open(results / "summary.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["task"], r["prompt_set"], r["images"]) for r in rows] == [(family, "initial", "2"),
                                                                             (family, "ideal", "2")]
        with open(results / "metrics.csv") as handle:
            metrics = list(csv.DictReader(handle))
        assert len(metrics) == 4 and {r["task"] for r in metrics} == {family}
        assert {r["image"] for r in metrics} == set(stems[family])
        per_task[family] = {r["prompt_set"]: float(r["dice_mean"]) for r in rows}
    means = {s["prompt_set"]: s for s in summary if s["task"] == MEAN_TASK}
    for name in ("initial", "ideal"):
        assert means[name]["images"] == 4
        assert means[name]["dice_mean"] == pytest.approx(np.mean([per_task[f][name] for f in families]), abs=1e-4)

    # with several tasks, --out OUT writes OUT/<task>/ and --prompts DIR reads DIR/<task>/
    manual = tmp_path / "manual"
    for family in families:
        shutil.copytree(corpus / family / "initial_indices", manual / family, ignore=shutil.ignore_patterns("*.png"))
    out = tmp_path / "out"
    assert run_stage4(corpus, "--out", str(out), "--prompts", str(manual)) == 0
    for family in families:
        assert list(read_summary(out / family / "summary.csv")) == ["initial", "manual", "ideal"]
        assert len(list((out / family / "masks" / "manual").glob("*.png"))) == 2
