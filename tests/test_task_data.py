"""The domain-randomised task corpus: layout, determinism, breadth, idempotence and the command line."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from gpoa.errors import UsageError
from gpoa.io import read_image, read_mask
from gpoa.layout import DatasetLayout, resolve_tasks
from gpoa.synth.corpus import (
    MIN_OBJECT_FRACTION,
    SHAPE_KINDS,
    TASK_DATA_VERSION,
    TaskSpec,
    draw_split_image,
    draw_task_image,
    draw_task_spec,
    main,
    object_is_present,
    task_seed,
    write_task_corpus,
)

SPLIT_FOLDERS = (("reference_image", "reference_mask"), ("train_image", "train_mask"),
                 ("target_image", "target_mask"))
N_TASKS, N_TRAIN, N_TARGETS = 5, 1, 2


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _spec(task: int, seed: int = 0) -> TaskSpec:
    return draw_task_spec(np.random.default_rng(task_seed(seed, task)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """5 tasks with 1 training and 2 target pairs, seed 0 (read-only)."""
    out = tmp_path_factory.mktemp("tasks")
    lines = []
    folders = write_task_corpus(out, N_TASKS, seed=0, n_train=N_TRAIN, n_targets=N_TARGETS, report=lines.append)
    return out, folders, lines


def test_every_task_has_the_layout_and_valid_binary_masks(corpus):
    out, folders, _ = corpus
    assert folders == [out / f"task_{i:03d}" for i in range(N_TASKS)]
    for root in folders:
        name = root.name
        layout = DatasetLayout(root)
        expected = {"reference_image": ["reference"],
                    "train_image": [f"{name}_train_{i:03d}" for i in range(N_TRAIN)],
                    "target_image": [f"{name}_{i:03d}" for i in range(N_TARGETS)]}
        for image_folder, mask_folder in SPLIT_FOLDERS:
            pairs = list(layout.pairs(root / image_folder, root / mask_folder))
            assert [image.stem for image, _ in pairs] == expected[image_folder]
            for image_path, mask_path in pairs:
                assert mask_path is not None and image_path.suffix == mask_path.suffix == ".png"
                with Image.open(image_path) as im:
                    assert im.mode == "RGB"
                with Image.open(mask_path) as im:
                    assert im.mode == "L"
                    assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
                image = read_image(image_path)
                height, width = image.shape[:2]
                assert 256 <= width <= 512 and 256 <= height <= 512 and width != height
                read_mask(mask_path, expected_size=(width, height))  # raises on a size mismatch
        reference_mask = read_mask(root / "reference_mask" / "reference.png")
        assert reference_mask.mean() >= MIN_OBJECT_FRACTION

        info = json.loads((root / "dataset.json").read_text())
        assert info["generator"] == "gpoa.task_data" and info["version"] == TASK_DATA_VERSION
        assert info["seed"] == 0 and info["name"] == name and info["task"] == int(name.split("_")[1])
        assert info["counts"] == {"reference": 1, "train": N_TRAIN, "target": N_TARGETS}
        assert info["spec"] == _spec(info["task"]).to_dict() and info["spec"]["shape"] in SHAPE_KINDS
        assert isinstance(info["description"], str) and info["description"]

    corpus_info = json.loads((out / "corpus.json").read_text())
    assert corpus_info == {"generator": "gpoa.task_data", "version": TASK_DATA_VERSION, "seed": 0,
                           "tasks": N_TASKS, "train": N_TRAIN, "targets": N_TARGETS,
                           "task_names": [f"task_{i:03d}" for i in range(N_TASKS)]}


def test_the_stages_read_the_corpus_as_one_task_per_folder(corpus, tmp_path):
    out, folders, _ = corpus
    tasks = resolve_tasks([out], workspace=tmp_path)
    assert [task.name for task in tasks] == [root.name for root in folders]
    for task in tasks:
        task.require("reference", "targets", "train")
        assert len(task.targets) == N_TARGETS and len(task.train) == N_TRAIN and task.has_truth


def test_absent_objects_have_empty_masks_and_present_ones_are_visible(corpus):
    out, folders, _ = corpus
    absent_seen = 0
    for root in folders:
        info = json.loads((root / "dataset.json").read_text())
        for split, image_folder, mask_folder in (("train", "train_image", "train_mask"),
                                                 ("target", "target_image", "target_mask")):
            for index, image_path in enumerate(DatasetLayout.images(root / image_folder)):
                mask = read_mask(root / mask_folder / image_path.name)
                absent = image_path.stem in info["absent"][split]
                assert absent == (not object_is_present(0, info["task"], split, index))
                if absent:
                    absent_seen += 1
                    assert not mask.any()
                else:
                    assert mask.mean() >= MIN_OBJECT_FRACTION
    # one task in every block of 5 has its first target without the object
    assert absent_seen >= 1
    assert sum(not object_is_present(0, task, "target", 0) for task in range(N_TASKS)) >= 1


@pytest.mark.parametrize("seed", range(12))
def test_every_corpus_of_five_tasks_has_an_absent_target_and_a_present_reference(seed):
    assert any(not object_is_present(seed, task, "target", index) for task in range(5) for index in range(4))
    assert any(not object_is_present(seed, task, "target", 0) for task in range(5))  # even with one target
    assert all(object_is_present(seed, task, "reference", 0) for task in range(20))


def test_about_a_tenth_of_the_images_show_no_object():
    absent = [not object_is_present(seed, task, split, index)
              for seed in range(2) for task in range(50) for split in ("train", "target") for index in range(8)]
    assert 0.06 < np.mean(absent) < 0.15


def test_same_seed_gives_identical_bytes_and_another_seed_other_images(corpus, tmp_path):
    out, _, _ = corpus
    write_task_corpus(tmp_path / "again", N_TASKS, seed=0, n_train=N_TRAIN, n_targets=N_TARGETS)
    assert _files(tmp_path / "again") == _files(out)

    write_task_corpus(tmp_path / "other", 2, seed=1, n_train=0, n_targets=1)
    for name in ("task_000", "task_001"):
        for path in ("reference_image/reference.png", f"target_image/{name}_000.png"):
            assert (tmp_path / "other" / name / path).read_bytes() != (out / name / path).read_bytes()


def test_an_image_does_not_depend_on_how_many_are_generated(corpus, tmp_path):
    out, _, _ = corpus
    write_task_corpus(tmp_path, 2, seed=0, n_train=0, n_targets=1)
    for name in ("task_000", "task_001"):
        for path in ("reference_image/reference.png", "reference_mask/reference.png",
                     f"target_image/{name}_000.png", f"target_mask/{name}_000.png"):
            assert (tmp_path / name / path).read_bytes() == (out / name / path).read_bytes()
    assert DatasetLayout.images(tmp_path / "task_000" / "train_image") == []
    assert not (tmp_path / "task_002").exists()


def test_a_spec_draws_the_same_image_for_the_same_generator_and_another_for_another():
    spec = _spec(3)
    first_image, first_mask = draw_task_image(spec, np.random.default_rng([1, 2]))
    again_image, again_mask = draw_task_image(spec, np.random.default_rng([1, 2]))
    other_image, _ = draw_task_image(spec, np.random.default_rng([1, 3]))
    assert first_image.dtype == np.uint8 and first_image.ndim == 3 and first_image.shape[2] == 3
    assert first_mask.dtype == bool and first_mask.shape == first_image.shape[:2]
    assert np.array_equal(first_image, again_image) and np.array_equal(first_mask, again_mask)
    assert first_image.shape != other_image.shape or not np.array_equal(first_image, other_image)
    _, empty = draw_task_image(spec, np.random.default_rng([1, 2]), object_present=False)
    assert not empty.any()


def test_images_do_not_depend_on_the_opencv_thread_count():
    tasks = {}
    for task in range(40):  # one task of every shape kind
        tasks.setdefault(_spec(task).shape, task)
    assert set(tasks) == set(SHAPE_KINDS)
    previous = cv2.getNumThreads()
    try:
        drawn = []
        for threads in (1, 4):
            cv2.setNumThreads(threads)
            drawn.append([draw_split_image(_spec(task), 0, task, "train", 0) for task in tasks.values()])
    finally:
        cv2.setNumThreads(previous)
    for (image_a, mask_a), (image_b, mask_b) in zip(*drawn):
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)


def test_task_specs_are_broad():
    specs = [_spec(task) for task in range(30)]
    assert len({spec.shape for spec in specs}) >= 5
    assert len({spec.texture for spec in specs}) >= 4
    assert len({spec.background for spec in specs}) == 3
    fractions = [spec.area_fraction for spec in specs]
    assert min(fractions) < 0.03 and max(fractions) > 0.4
    assert all(0.01 <= f <= 0.8 for f in fractions)
    assert 5 <= sum(spec.instances[1] > 1 for spec in specs) <= 25
    assert all(1 <= spec.instances[0] <= spec.instances[1] <= 5 for spec in specs)
    assert 10 <= sum(spec.distractors > 0 for spec in specs) < 30
    assert 3 <= sum(spec.grey for spec in specs) <= 18
    for spec in specs:
        if spec.grey:
            assert all(len(set(colour)) == 1 for colour in (spec.colour, spec.background_colour))
    assert max(spec.contrast for spec in specs) > 4 * min(spec.contrast for spec in specs)
    assert any(spec.noise > 5 for spec in specs) and any(spec.jpeg_quality for spec in specs)
    thin = [spec for spec in specs if spec.shape == "thin"]
    assert thin and all(2 <= spec.line_width[0] <= spec.line_width[1] <= 8 for spec in thin)


def test_image_sizes_and_object_fractions_vary_across_tasks():
    sizes, fractions = set(), []
    for task in range(16):
        image, mask = draw_split_image(_spec(task), 0, task, "reference", 0)
        sizes.add(image.shape[:2])
        fractions.append(mask.mean())
    assert len(sizes) == 16
    assert min(fractions) < 0.05 and max(fractions) > 0.3


def _plain(spec: TaskSpec, **changes) -> TaskSpec:
    """A spec with a flat red object on a blue background and no clutter or degradation."""
    return dataclasses.replace(
        spec, grey=False, colour=(210.0, 40.0, 40.0), colour2=(120.0, 20.0, 20.0), texture="flat", colour_jitter=2.0,
        background="gradient", background_colour=(40.0, 150.0, 210.0), background_colour2=(60.0, 170.0, 230.0),
        background_grain=0.0, clutter=0, noise=0.0, blur=0.3, illumination=0.0, vignette=0.0, jpeg_quality=0,
        distractor_colours=((40.0, 200.0, 60.0), (20.0, 120.0, 30.0)), **changes)


def _near_object_colour(image: np.ndarray) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float64) - [210, 40, 40], axis=2) / np.sqrt(3) < 25


@pytest.mark.parametrize("task", [0, 2, 5])
def test_same_look_distractors_lie_outside_the_mask(task):
    spec = _plain(_spec(task), colour_distractors=0, texture_distractors=0)
    found = 0
    for seed in range(8):  # each image draws 0-3 fragments, where they fit
        image, mask = draw_task_image(_plain(spec, fragment_distractors=3), np.random.default_rng([seed]))
        near = _near_object_colour(image)
        assert near[mask].mean() > 0.8  # the object has its colour ...
        found += int(near[~mask].sum() > 30)  # ... and so do some shapes outside the mask
        if seed < 3:
            image, mask = draw_task_image(_plain(spec, fragment_distractors=0), np.random.default_rng([seed]))
            assert _near_object_colour(image)[~mask].sum() < 0.01 * (~mask).sum()  # edges only
            _, empty = draw_task_image(_plain(spec, fragment_distractors=3), np.random.default_rng([seed]),
                                       object_present=False)
            assert not empty.any()
    assert found >= 3


def test_a_second_run_writes_nothing(corpus, tmp_path):
    write_task_corpus(tmp_path, 2, seed=0, n_train=1, n_targets=1)
    before = _mtimes(tmp_path)
    lines = []
    write_task_corpus(tmp_path, 2, seed=0, n_train=1, n_targets=1, report=lines.append)
    assert _mtimes(tmp_path) == before
    assert len(lines) == 1 and "up to date" in lines[0]


def test_missing_or_stale_tasks_are_written_again_and_complete_ones_kept(tmp_path):
    write_task_corpus(tmp_path, 3, seed=0, n_train=2, n_targets=1)
    reference = tmp_path / "task_001" / "reference_image" / "reference.png"
    original = reference.read_bytes()
    reference.unlink()
    before = _mtimes(tmp_path)
    lines = []
    write_task_corpus(tmp_path, 3, seed=0, n_train=2, n_targets=1, report=lines.append)
    assert reference.read_bytes() == original
    after = _mtimes(tmp_path)
    for path, mtime in before.items():  # only the incomplete task (and corpus.json) were written
        if path.startswith(("task_000", "task_002")):
            assert after[path] == mtime, path
    assert [line.split(":")[0] for line in lines[:-1]] == ["task_001"]

    # other counts: stale images of the generator are removed, files it did not write stay
    (tmp_path / "task_000" / "notes.txt").write_text("mine")
    write_task_corpus(tmp_path, 3, seed=0, n_train=1, n_targets=1)
    assert [p.stem for p in DatasetLayout.images(tmp_path / "task_000" / "train_mask")] == ["task_000_train_000"]
    assert (tmp_path / "task_000" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "task_000" / "dataset.json").read_text())["counts"]["train"] == 1

    # another seed: every task is drawn again
    write_task_corpus(tmp_path, 3, seed=4, n_train=1, n_targets=1)
    assert json.loads((tmp_path / "corpus.json").read_text())["seed"] == 4
    fresh = tmp_path / "fresh"
    write_task_corpus(fresh, 3, seed=4, n_train=1, n_targets=1)
    for name in ("task_000", "task_001", "task_002"):
        assert {path: data for path, data in _files(tmp_path / name).items() if path != "notes.txt"} == _files(fresh / name)


def test_fewer_tasks_retire_the_generated_extra_folders(tmp_path):
    write_task_corpus(tmp_path, 4, seed=0, n_train=0, n_targets=1)
    (tmp_path / "task_003" / "cache").mkdir()
    (tmp_path / "task_003" / "cache" / "features.npy").write_bytes(b"x")
    lines = []
    write_task_corpus(tmp_path, 2, seed=0, n_train=0, n_targets=1, report=lines.append)
    assert not (tmp_path / "task_002").exists()
    assert (tmp_path / "task_003" / "dataset.json").is_file()  # holds outputs: left, and said so
    assert "removed the files of 1 task" in lines[-1] and "left 1 task folder(s)" in lines[-1]
    assert "task_003" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "task_000", "task_001", "task_003"]


def test_foreign_folders_and_outputs_of_other_tasks_are_refused(tmp_path):
    foreign = tmp_path / "foreign" / "task_000" / "target_image"
    foreign.mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(foreign / "mine.png")
    with pytest.raises(UsageError, match="not a generated task"):
        write_task_corpus(tmp_path / "foreign", 1, seed=0, n_train=0, n_targets=1)
    assert (foreign / "mine.png").is_file()

    write_task_corpus(tmp_path / "used", 1, seed=0, n_train=0, n_targets=1)
    (tmp_path / "used" / "task_000" / "results").mkdir()
    (tmp_path / "used" / "task_000" / "results" / "scores.csv").write_text("x")
    with pytest.raises(UsageError, match="different generated task"):
        write_task_corpus(tmp_path / "used", 1, seed=1, n_train=0, n_targets=1)
    write_task_corpus(tmp_path / "used", 1, seed=0, n_train=0, n_targets=1)  # the same task: fine


def test_command_line_writes_the_corpus_and_then_says_it_is_up_to_date(tmp_path, capsys):
    arguments = ["--out", str(tmp_path / "c"), "--tasks", "2", "--seed", "3", "--train", "1", "--targets", "1"]
    assert main(arguments) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["task_000", "task_001"] and len(lines) == 3
    info = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert (info["seed"], info["tasks"], info["train"], info["targets"]) == (3, 2, 1, 1)
    assert (tmp_path / "c" / "task_001" / "train_mask" / "task_001_train_000.png").is_file()
    assert main(arguments) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("arguments", [["--tasks", "0"], ["--tasks", "2", "--train", "-1"],
                                       ["--tasks", "2", "--targets", "-1"], ["--tasks", "x"],
                                       ["--tasks", "2", "--seed", "-3"], []])
def test_command_line_rejects_bad_arguments(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not any(tmp_path.iterdir())


def test_command_line_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "corpus.txt"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(target), "--tasks", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and str(target) in err[0]
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("arguments", [dict(n_tasks=0, seed=0), dict(n_tasks=1, seed=-1),
                                       dict(n_tasks=1, seed=0, n_train=-1), dict(n_tasks=1, seed=0, n_targets=0)])
def test_library_rejects_bad_counts(tmp_path, arguments):
    with pytest.raises(UsageError, match="need tasks >= 1"):
        write_task_corpus(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())
