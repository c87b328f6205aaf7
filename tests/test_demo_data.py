"""The synthetic demo datasets: layout, determinism, plausible masks and the command line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from gpoa.errors import UsageError
from gpoa.io import read_image, read_mask
from gpoa.layout import DatasetLayout, dataset_task
from gpoa.synth.demo import FAMILIES, image_seed, main, write_demo_dataset

SPLIT_FOLDERS = (("reference_image", "reference_mask"), ("train_image", "train_mask"),
                 ("target_image", "target_mask"))


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Both families with 2 training and 3 target pairs, seed 0."""
    out = tmp_path_factory.mktemp("demo")
    folders = write_demo_dataset(out, seed=0, n_train=2, n_targets=3)
    return out, folders


def test_layout_has_the_requested_counts_and_paired_stems(small):
    out, folders = small
    assert folders == [out / name for name in FAMILIES]
    for root in folders:
        layout = DatasetLayout(root)
        expected = {"reference_image": 1, "train_image": 2, "target_image": 3}
        for image_folder, mask_folder in SPLIT_FOLDERS:
            images = layout.images(root / image_folder)
            masks = layout.images(root / mask_folder)
            assert len(images) == expected[image_folder]
            assert [p.stem for p in images] == [p.stem for p in masks]
            assert all(p.suffix == ".png" for p in images + masks)
        assert [p.stem for p in layout.images(layout.reference_image)] == ["reference"]
        assert [p.stem for p in layout.images(layout.target_image)] == [f"{root.name}_{i:03d}" for i in range(3)]
        assert [p.stem for p in layout.images(layout.train_image)] == [f"{root.name}_train_{i:03d}" for i in range(2)]
        task = dataset_task(root)
        task.require("reference", "targets", "train")  # a complete task of the dataset layout
        assert [(image.name, mask.name) for image, mask in task.reference] == [("reference.png",) * 2]
        info = json.loads((root / "dataset.json").read_text())
        assert info["family"] == root.name and info["seed"] == 0
        assert info["counts"] == {"reference": 1, "train": 2, "target": 3}
        assert isinstance(info["description"], str) and info["description"]


def test_images_and_masks_are_readable_non_square_and_plausible(small):
    _, folders = small
    for root in folders:
        layout = DatasetLayout(root)
        for image_folder, mask_folder in SPLIT_FOLDERS:
            for image_path, mask_path in layout.pairs(root / image_folder, root / mask_folder):
                with Image.open(image_path) as im:
                    assert im.mode == "RGB"
                with Image.open(mask_path) as im:
                    assert im.mode == "L"
                    assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}
                image = read_image(image_path)
                height, width = image.shape[:2]
                mask = read_mask(mask_path, expected_size=(width, height))
                assert abs(width - height) >= 40
                assert 400 <= width <= 560 and 300 <= height <= 420
                assert 0.04 <= mask.mean() <= 0.35, f"{mask_path}: object covers {mask.mean():.1%}"


def test_same_seed_gives_identical_bytes_and_another_seed_other_images(small, tmp_path):
    out, _ = small
    write_demo_dataset(tmp_path / "again", seed=0, n_train=2, n_targets=3)
    assert _files(tmp_path / "again") == _files(out)

    write_demo_dataset(tmp_path / "other", seed=1, n_train=2, n_targets=3)
    for family in FAMILIES:
        for stem in (f"{family}_000", f"{family}_001"):
            first = (out / family / "target_image" / f"{stem}.png").read_bytes()
            second = (tmp_path / "other" / family / "target_image" / f"{stem}.png").read_bytes()
            assert first != second


def test_an_image_does_not_depend_on_how_many_are_generated(small, tmp_path):
    out, _ = small
    write_demo_dataset(tmp_path, seed=0, n_train=0, n_targets=1, families=["objects"])
    assert [p.name for p in DatasetLayout.images(tmp_path / "objects" / "target_image")] == ["objects_000.png"]
    for folder in ("target_image/objects_000.png", "target_mask/objects_000.png", "reference_image/reference.png"):
        assert (tmp_path / "objects" / folder).read_bytes() == (out / "objects" / folder).read_bytes()
    assert not (tmp_path / "membrane").exists()


def test_images_do_not_depend_on_the_opencv_thread_count():
    # with OpenCV's parallel precise distance transform this image differed between 1 and 4 threads
    seed = image_seed(0, "membrane", "target", 17)
    previous = cv2.getNumThreads()
    try:
        drawn = []
        for threads in (1, 4):
            cv2.setNumThreads(threads)
            drawn.append([FAMILIES[family](np.random.default_rng(seed)) for family in FAMILIES])
    finally:
        cv2.setNumThreads(previous)
    for (image_a, mask_a), (image_b, mask_b) in zip(*drawn):
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generators_draw_distractors_outside_the_mask(family):
    for seed in range(4):
        image, mask = FAMILIES[family](np.random.default_rng([seed]))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        # colours (in 32-level bins) that are common inside the object, and where else they occur
        bins = (image // 32).astype(np.int64)
        colour = bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]
        common = np.bincount(colour[mask], minlength=512) / mask.sum() >= 0.02
        lookalike = common[colour]
        assert lookalike[mask].mean() > 0.7
        assert 0.02 < lookalike[~mask].mean() < 0.4, f"{family} seed {seed}: distractors missing or everywhere"


def test_regenerating_removes_leftovers_and_refuses_foreign_or_stale_folders(tmp_path):
    write_demo_dataset(tmp_path, seed=0, n_train=1, n_targets=3, families=["membrane"])
    write_demo_dataset(tmp_path, seed=0, n_train=0, n_targets=2, families=["membrane"])
    root = tmp_path / "membrane"
    assert [p.stem for p in DatasetLayout.images(root / "target_mask")] == ["membrane_000", "membrane_001"]
    assert DatasetLayout.images(root / "train_image") == []

    (root / "cache").mkdir()
    (root / "cache" / "features.npy").write_bytes(b"x")
    with pytest.raises(UsageError, match="different demo dataset"):
        write_demo_dataset(tmp_path, seed=1, n_train=0, n_targets=2, families=["membrane"])
    write_demo_dataset(tmp_path, seed=0, n_train=0, n_targets=2, families=["membrane"])  # same dataset: fine

    foreign = tmp_path / "foreign"
    (foreign / "objects" / "target_image").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(foreign / "objects" / "target_image" / "mine.png")
    with pytest.raises(UsageError, match="not a demo dataset"):
        write_demo_dataset(foreign, seed=0, n_train=0, n_targets=1, families=["objects"])


def test_command_line_writes_the_dataset_and_prints_a_summary(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--seed", "3", "--train", "1", "--targets", "1",
                 "--families", "objects"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("objects:")
    assert (tmp_path / "objects" / "target_mask" / "objects_000.png").is_file()
    assert json.loads((tmp_path / "objects" / "dataset.json").read_text())["seed"] == 3


@pytest.mark.parametrize("arguments", [["--families", "membrane,cells"], ["--families", ","],
                                       ["--targets", "0"], ["--train", "-1"], ["--seed", "x"]])
def test_command_line_rejects_bad_arguments(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_command_line_names_the_unknown_family(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--families", "cells"])
    err = capsys.readouterr().err
    assert "unknown family cells" in err and "membrane, objects" in err


def test_library_rejects_unknown_families_and_bad_counts(tmp_path):
    with pytest.raises(UsageError, match="cells"):
        write_demo_dataset(tmp_path, seed=0, families=["cells"])
    with pytest.raises(UsageError):
        write_demo_dataset(tmp_path, seed=0, n_targets=0)
