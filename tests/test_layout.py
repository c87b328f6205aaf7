"""Task layouts: dataset folders, domain folders, folders of tasks, and where outputs go."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from PIL import Image

import Generate_initial_prompts
import main_seg
from gpoa.backends import Backends
from gpoa.config import load_config
from gpoa.errors import UsageError
from gpoa.layout import DatasetLayout, dataset_task, domain_task, list_images, resolve_tasks
from gpoa.stages.initial_prompts import generate_initial_prompts
from gpoa.tasks import load_tasks


def touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), 77, np.uint8)).save(path)


def make_dataset(root: Path, targets=("t1", "t2"), train=("s1",)) -> Path:
    for folder, stems in (("reference", ("ref",)), ("target", targets), ("train", train)):
        for stem in stems:
            touch_image(root / f"{folder}_image" / f"{stem}.png")
            touch_image(root / f"{folder}_mask" / f"{stem}.png")
    return root


def make_domain(root: Path, stems=("b", "a", "d", "c")) -> Path:
    for stem in stems:
        touch_image(root / "image" / f"{stem}.png")
        touch_image(root / "mask" / f"{stem}.png")
    return root


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- dataset folders -----------------------------------------------------------------------------
def test_pairs_by_stem(tmp_path):
    layout = DatasetLayout(tmp_path)
    for name in ("a.png", "b.JPG", "c.tif"):
        touch_image(layout.target_image / name)
    touch_image(layout.target_mask / "a.png")
    touch_image(layout.target_mask / "c.png")  # a mask may have another extension than its image
    touch_image(layout.target_mask / "z.png")  # a mask without an image is ignored
    (layout.target_image / "notes.txt").write_text("not an image")
    touch_image(layout.target_image / ".hidden.png")
    pairs = [(image.name, mask.name if mask else None)
             for image, mask in layout.pairs(layout.target_image, layout.target_mask)]
    assert pairs == [("a.png", "a.png"), ("b.JPG", None), ("c.tif", "c.png")]
    assert [p.name for p in list_images(layout.target_image)] == ["a.png", "b.JPG", "c.tif"]
    assert list_images(tmp_path / "nowhere") == []
    task = dataset_task(tmp_path)
    assert task.target("c") == layout.target_image / "c.tif" and task.target("z") is None
    assert task.target_mask("c") == layout.target_mask / "c.png" and task.target_mask("b") is None
    assert task.has_truth and sorted(task.target_masks) == ["a", "c"]


def test_dataset_task_reads_every_part_and_writes_into_the_folder(tmp_path):
    root = make_dataset(tmp_path / "cells")
    task = dataset_task(root)
    assert (task.name, task.kind, task.source, task.root) == ("cells", "dataset", root, root)
    assert [(i.name, m.name) for i, m in task.reference] == [("ref.png", "ref.png")]
    assert [p.stem for p in task.targets] == ["t1", "t2"]
    assert [(i.stem, m.stem) for i, m in task.train] == [("s1", "s1")]
    assert task.initial_indices == root / "initial_indices" and task.optimized_indices == root / "optimized_indices"
    assert task.results == root / "results" and task.cache == root / "cache"
    assert task.prompt_folder("topk_indices") == root / "topk_indices"
    task.require("reference", "targets", "train")


def test_missing_dataset_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        dataset_task(tmp_path / "nowhere")


def test_missing_parts_are_usage_errors_when_required(tmp_path):
    touch_image(tmp_path / "reference_image" / "r1.png")
    touch_image(tmp_path / "target_image" / "t.png")
    task = dataset_task(tmp_path)  # what is missing is reported when a stage needs it
    task.require("targets")
    with pytest.raises(UsageError, match="no 'reference_mask/' subfolder"):
        task.require("reference")
    with pytest.raises(UsageError, match="no 'train_image/' subfolder"):
        task.require("train")
    assert not task.has_truth


def test_empty_image_folder_is_a_usage_error(tmp_path):
    (tmp_path / "target_image").mkdir()
    (tmp_path / "target_image" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError, match="holds no images"):
        dataset_task(tmp_path).require("targets")
    touch_image(tmp_path / "target_image" / "a.png")
    dataset_task(tmp_path).require("targets")  # now fine


def test_reference_pairs(tmp_path):
    for stem in ("r2", "r1"):
        touch_image(tmp_path / "reference_image" / f"{stem}.png")
        touch_image(tmp_path / "reference_mask" / f"{stem}.png")
    task = dataset_task(tmp_path)
    task.require("reference")
    assert [(i.name, m.name) for i, m in task.reference] == [("r1.png", "r1.png"), ("r2.png", "r2.png")]


def test_reference_image_without_mask_is_a_usage_error(tmp_path):
    touch_image(tmp_path / "reference_image" / "r1.png")
    touch_image(tmp_path / "reference_image" / "r2.png")
    touch_image(tmp_path / "reference_mask" / "r1.png")
    with pytest.raises(UsageError, match="r2.png"):
        dataset_task(tmp_path).require("reference")


def test_two_images_with_one_stem_are_a_usage_error(tmp_path):
    make_dataset(tmp_path)
    touch_image(tmp_path / "target_image" / "t1.tif")
    with pytest.raises(UsageError, match=r"same name.*t1\.png, t1\.tif"):
        dataset_task(tmp_path)


# ----- domain folders and resolve_tasks --------------------------------------------------------------
def test_domain_folder_first_sorted_pair_is_the_reference(tmp_path):
    folder = make_domain(tmp_path / "polyps")
    workspace = tmp_path / "work"
    task = domain_task(folder, workspace)
    assert (task.name, task.kind, task.source, task.root) == ("polyps", "domain", folder, workspace / "polyps")
    assert [(i.stem, m.stem) for i, m in task.reference] == [("a", "a")]
    assert [p.stem for p in task.targets] == ["b", "c", "d"] and sorted(task.target_masks) == ["b", "c", "d"]
    assert [(i.stem, m.stem) for i, m in task.train] == [("b", "b"), ("c", "c"), ("d", "d")]
    assert task.initial_indices == workspace / "polyps" / "initial_indices"
    assert task.cache == workspace / "polyps" / "cache" and task.results == workspace / "polyps" / "results"
    task.require("reference", "targets", "train")
    # at most max_targets targets, in stem order
    (limited,) = resolve_tasks([folder], workspace, max_targets=2)
    assert [p.stem for p in limited.targets] == ["b", "c"] and sorted(limited.target_masks) == ["b", "c"]
    assert limited.reference == task.reference and limited.target("d") is None


def test_domain_reference_index_picks_another_pair_as_the_one_shot(tmp_path):
    folder = make_domain(tmp_path / "polyps")
    (task,) = resolve_tasks([folder], tmp_path / "work", max_targets=2, reference_index=2)
    assert [(i.stem, m.stem) for i, m in task.reference] == [("c", "c")]
    assert [p.stem for p in task.targets] == ["a", "b"] and sorted(task.target_masks) == ["a", "b"]
    assert [i.stem for i, _ in task.train] == ["a", "b", "d"]
    with pytest.raises(UsageError, match="no reference number 4; pick one from 0 to 3"):
        domain_task(folder, tmp_path / "work", reference_index=4)
    # a dataset folder names its own reference: a reference number for it is refused
    with pytest.raises(UsageError, match="dataset folders with their own reference_image"):
        resolve_tasks([folder, make_dataset(tmp_path / "cells")], tmp_path / "work", reference_index=1)
    assert len(resolve_tasks([folder, make_dataset(tmp_path / "cells")], tmp_path / "work")) == 2


def test_domain_image_without_mask_is_a_usage_error(tmp_path):
    folder = make_domain(tmp_path / "skin")
    touch_image(folder / "image" / "e.png")
    with pytest.raises(UsageError, match=r"e\.png.*needs its mask"):
        resolve_tasks([folder], tmp_path / "work")


def test_domain_with_a_single_image_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="at least one target"):
        resolve_tasks([make_domain(tmp_path / "one", stems=("a",))], tmp_path / "work")


def test_resolve_a_dataset_folder(tmp_path):
    root = make_dataset(tmp_path / "cells")
    (task,) = resolve_tasks([root], tmp_path / "work")
    assert (task.name, task.kind, task.root) == ("cells", "dataset", root)
    assert not (tmp_path / "work").exists()


def test_resolve_a_folder_of_mixed_tasks(tmp_path):
    corpus = tmp_path / "corpus"
    make_dataset(corpus / "zebra")
    make_domain(corpus / "alpha")
    (corpus / "notes").mkdir()  # neither kind: ignored
    make_dataset(corpus / ".hidden")  # hidden: ignored
    (corpus / "readme.txt").write_text("a file, not a task")
    extra = make_dataset(tmp_path / "extra")
    tasks = resolve_tasks([corpus, extra], tmp_path / "work", max_targets=1)
    assert [(t.name, t.kind) for t in tasks] == [("alpha", "domain"), ("zebra", "dataset"), ("extra", "dataset")]
    assert [p.stem for p in tasks[0].targets] == ["b"]  # max_targets applies to domains
    assert [p.stem for p in tasks[1].targets] == ["t1", "t2"]  # not to dataset folders
    assert tasks[0].root == tmp_path / "work" / "alpha"


def test_resolve_errors(tmp_path):
    with pytest.raises(UsageError, match="no data"):
        resolve_tasks([], tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_tasks([tmp_path / "nowhere"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a dataset folder"):
        resolve_tasks([tmp_path / "empty"], tmp_path)
    # task names come from folder names and must be unique
    first, second = make_dataset(tmp_path / "one" / "cells"), make_domain(tmp_path / "two" / "cells")
    with pytest.raises(UsageError, match=r"several tasks are named \['cells'\]"):
        resolve_tasks([first, second], tmp_path / "work")
    with pytest.raises(UsageError, match="several tasks"):
        resolve_tasks([first, first], tmp_path / "work")


def test_domain_outputs_go_to_the_workspace_and_the_domain_folder_is_never_written(demo_master, tmp_path):
    source = demo_master / "membrane"
    domain = tmp_path / "domains" / "membrane"
    (domain / "image").mkdir(parents=True)
    (domain / "mask").mkdir()
    shutil.copy(source / "reference_image" / "reference.png", domain / "image" / "000_reference.png")
    shutil.copy(source / "reference_mask" / "reference.png", domain / "mask" / "000_reference.png")
    for path in sorted((source / "target_image").iterdir())[:3]:
        shutil.copy(path, domain / "image" / path.name)
        shutil.copy(source / "target_mask" / path.name, domain / "mask" / path.name)
    before = snapshot(domain)
    workspace = tmp_path / "work"

    # stage 1 through the API with max_targets, then stages 1 and 4 through the scripts
    cfg = load_config(DEMO_CONFIG, [f"workspace={workspace}"])
    cfg.data = [str(domain)]
    tasks = load_tasks(cfg, Backends(cfg), max_targets=2)
    report = generate_initial_prompts(cfg, tasks=tasks)
    assert report.exit_code == 0 and len(report.done) == 2
    assert all(name.startswith("membrane/") for name in report.done)
    assert len(list((workspace / "membrane" / "initial_indices").glob("*.json"))) == 2
    args = ["--config", str(DEMO_CONFIG), "--data", str(domain), "--set", f"workspace={workspace}"]
    assert Generate_initial_prompts.main(args) == 0
    assert main_seg.main(args) == 0
    out = workspace / "membrane"
    assert sorted(p.stem for p in (out / "initial_indices").glob("*.json")) == sorted(
        p.stem for p in sorted((source / "target_image").iterdir())[:3])
    assert (out / "results" / "summary.csv").is_file() and any((out / "cache").rglob("*.npy"))
    assert "000_reference" not in (out / "results" / "metrics.csv").read_text()  # the reference is no target
    assert snapshot(domain) == before  # nothing written, changed or removed in the domain folder


def test_domain_ignore_masks_are_paired_with_the_targets(tmp_path):
    domain = make_domain(tmp_path / "voc_cat")
    touch_image(domain / "ignore" / "c.png")
    touch_image(domain / "ignore" / "a.png")  # the reference's: not a target
    layout = domain_task(domain, tmp_path / "ws")
    assert layout.ignore_masks == {"c": domain / "ignore" / "c.png"}
    assert domain_task(make_domain(tmp_path / "plain"), tmp_path / "ws").ignore_masks == {}


# ----- clips -------------------------------------------------------------------------------------------
def make_clip(root: Path, frames: int = 5, masked=(0, 2)) -> Path:
    """A clip of ``frames`` frames named 00000.png, ...; only the frames ``masked`` have a mask."""
    for index in range(frames):
        touch_image(root / "image" / f"{index:05d}.png")
        if index in masked:
            touch_image(root / "mask" / f"{index:05d}.png")
    return root


def test_a_clip_needs_only_its_first_frames_mask(tmp_path):
    folder = make_clip(tmp_path / "clips" / "swan")
    with pytest.raises(UsageError, match="needs its mask"):  # as a plain domain, every image needs one
        resolve_tasks([folder], tmp_path / "work")
    (task,) = resolve_tasks([tmp_path / "clips"], tmp_path / "work", clips=True)
    assert [i.stem for i, _ in task.reference] == ["00000"]
    assert [p.stem for p in task.targets] == ["00001", "00002", "00003", "00004"]
    assert sorted(task.target_masks) == ["00002"]  # the frames that are scored
    (folder / "mask" / "00000.png").unlink()
    with pytest.raises(UsageError, match=r"first frame '00000\.png' has no mask"):
        domain_task(folder, tmp_path / "work", clip=True)


def test_a_clip_whose_names_do_not_sort_in_time_order_is_refused(tmp_path):
    folder = tmp_path / "cart"
    for number in (1, 2, 10):
        touch_image(folder / "image" / f"frame_{number}.png")
    touch_image(folder / "mask" / "frame_1.png")
    with pytest.raises(UsageError, match=r"'frame_10\.png' sorts before 'frame_2\.png'.*zero-padded"):
        domain_task(folder, tmp_path / "work", clip=True)
    with pytest.raises(UsageError, match="not clips"):
        resolve_tasks([make_clip(tmp_path / "ok"), make_dataset(tmp_path / "cells")], tmp_path / "work", clips=True)
