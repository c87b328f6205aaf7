"""Seeds come from the run seed and the images' content, never from a name: renaming a task, an image
or a folder moves no number (the training split, the random-subset and ideal baselines, the ideal start)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from conftest import DEMO_CONFIG
from synthetic import scene

import Generate_initial_prompts
import main_seg
import test_GPOA
from gpoa.config import Config, EnvConfig
from gpoa.envs.bank import build_record
from gpoa.samples import LazySample
from gpoa.stages.train import split_samples


def test_the_training_split_follows_the_images_content_not_their_names_or_order():
    contents = [f"{i:024x}" for i in range(12)]
    samples = [LazySample(f"image_{i}", "cells", lambda: None, content=c) for i, c in enumerate(contents)]
    renamed = [LazySample(f"other_{i}", "renamed", lambda: None, content=c) for i, c in enumerate(contents)]
    renamed = renamed[::-1]
    train, held = split_samples(samples, 0.25, seed=3)
    train_renamed, held_renamed = split_samples(renamed, 0.25, seed=3)
    assert len(held) == 3 and len(train) == 9
    assert {s.content for s in held} == {s.content for s in held_renamed}
    assert {s.content for s in train} == {s.content for s in train_renamed}
    # another run seed draws another split
    assert any({s.content for s in split_samples(samples, 0.25, seed=s)[1]} != {s.content for s in held}
               for s in range(4, 8))


def test_the_ideal_start_is_drawn_from_the_truth_not_the_name():
    cfg = Config()
    cfg.env = EnvConfig(**{**cfg.env.__dict__, "start": "ideal"})
    sample, renamed = scene("a", seed=0, task="cells"), scene("b", seed=0, task="another task")
    first, second = build_record(sample, cfg, seed=0), build_record(renamed, cfg, seed=0)
    np.testing.assert_array_equal(first.graph.indices, second.graph.indices)
    np.testing.assert_array_equal(first.graph.active, second.graph.active)


def metrics(results: Path) -> dict:
    """(prompt set, image stem) → Dice, from a stage-4 metrics.csv."""
    with open(results / "metrics.csv") as handle:
        return {(row["prompt_set"], row["image"]): float(row["dice"]) for row in csv.DictReader(handle)}


def test_renaming_the_dataset_and_its_images_moves_no_number(trained, tmp_path):
    data, checkpoints = trained
    policy = checkpoints / "tiny" / "best.pt"
    # 3 of the 6 targets are enough to reverse their order by renaming; the others are left out of both runs
    for image in sorted((data / "target_image").iterdir())[3:]:
        for path in (image, data / "target_mask" / f"{image.stem}.png", *(data / "initial_indices").glob(f"{image.stem}.*")):
            path.unlink()
    renamed = tmp_path / "another_name"
    shutil.copytree(data, renamed, ignore=shutil.ignore_patterns("initial_indices", "optimized_indices", "results",
                                                                 "cache"))
    names = {}
    for index, image in enumerate(sorted((renamed / "target_image").iterdir())):
        new = f"z{9 - index}_{index}"
        names[image.stem] = new
        image.rename(image.with_name(new + image.suffix))
        mask = renamed / "target_mask" / f"{image.stem}.png"
        mask.rename(mask.with_name(new + ".png"))
    args = ["--config", str(DEMO_CONFIG)]
    for folder in (data, renamed):
        assert Generate_initial_prompts.main(args + ["--data", str(folder)]) == 0
        assert test_GPOA.main(args + ["--data", str(folder), "--policy", str(policy)]) == 0
        assert main_seg.main(args + ["--data", str(folder)]) == 0
    before, after = metrics(data / "results"), metrics(renamed / "results")
    assert {name for name, _ in before} >= {"initial", "optimized", "random_subset", "topk", "ideal"}
    old_name = {new: old for old, new in names.items()}
    assert before == {(name, old_name[stem]): value for (name, stem), value in after.items()}
