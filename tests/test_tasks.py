"""The feature store (keyed by image content), shared backends, and tasks: reference, proposals, samples."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from PIL import Image

from gpoa.backends import Backends, working_grid
from gpoa.config import load_config
from gpoa.errors import UsageError
from gpoa.features.store import FeatureStore
from gpoa.grid import PatchGrid
from gpoa.io import read_image
from gpoa.layout import dataset_task
from gpoa.runtime import StageReport
from gpoa.tasks import Task, load_tasks

GRID = PatchGrid.square(56, 14)  # 4 x 4 patches


class CountingExtractor:
    """Features (4, 4, 3): each patch's mean colour; counts its calls."""

    def __init__(self):
        self.calls = 0

    def extract(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        small = GRID.resize_to_working(image).astype(np.float32)
        return small.reshape(4, 14, 4, 14, 3).mean(axis=(1, 3)) / 255.0


def fake_backends() -> SimpleNamespace:
    return SimpleNamespace(feature_key="fake-key", grid=GRID, extractor=CountingExtractor())


def write_image(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, :20] = value
    Image.fromarray(image).save(path)


# ----- the feature store ---------------------------------------------------------------------------
def test_feature_store_is_keyed_by_the_image_content(tmp_path):
    backends = fake_backends()
    store = FeatureStore(tmp_path / "cache", backends)
    first, copy, other = tmp_path / "a" / "x.png", tmp_path / "b" / "y.png", tmp_path / "a" / "z.png"
    write_image(first, 200)
    copy.parent.mkdir()
    shutil.copy(first, copy)  # the same bytes under another name and folder
    write_image(other, 90)
    assert not store.is_cached(first)
    features = store.features(first)
    assert features.shape == (4, 4, 3) and features.dtype == np.float32 and backends.extractor.calls == 1
    assert store.is_cached(copy) and store.path(copy) == store.path(first)
    np.testing.assert_array_equal(store.features(copy), features)
    assert backends.extractor.calls == 1  # no second extraction for the same content
    entries = list((tmp_path / "cache" / "features" / "fake-key").rglob("*.npy"))
    assert len(entries) == 1 and np.load(entries[0]).dtype == np.float16
    # the stored fp16 precision is what every run sees, cached or not
    np.testing.assert_array_equal(features, features.astype(np.float16).astype(np.float32))
    # another image: its own entry
    assert store.path(other) != store.path(first)
    store.features(other)
    assert backends.extractor.calls == 2
    # an image edited in place (same name, new bytes) is encoded again, not served stale features
    write_image(first, 30)
    assert not store.is_cached(first)
    changed = store.features(first)
    assert backends.extractor.calls == 3 and not np.array_equal(changed, features)
    np.testing.assert_array_equal(store.features(copy), features)  # the unchanged copy keeps its entry
    assert backends.extractor.calls == 3


def test_feature_store_recomputes_a_damaged_or_misshapen_entry(tmp_path):
    backends = fake_backends()
    store = FeatureStore(tmp_path / "cache", backends)
    image = tmp_path / "x.png"
    write_image(image, 120)
    features = store.features(image)
    store.path(image).write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(store.features(image), features)
    np.save(store.path(image), np.zeros((2, 2, 3), np.float16))  # another grid's features
    np.testing.assert_array_equal(store.features(image), features)
    assert backends.extractor.calls == 3
    # a given image array is used instead of reading the file
    np.testing.assert_array_equal(store.features(image, read_image(image)), features)


def test_backends_build_their_models_once_and_only_when_used():
    cfg = load_config(DEMO_CONFIG)
    backends = Backends(cfg)
    assert backends.grid == working_grid(cfg) == PatchGrid.square(cfg.features.working_size,
                                                                   cfg.features.patch_size)
    assert "extractor" not in vars(backends) and "segmenter" not in vars(backends)  # nothing loaded yet
    assert backends.extractor is backends.extractor and backends.segmenter is backends.segmenter


# ----- tasks ---------------------------------------------------------------------------------------
@pytest.fixture
def demo_task(demo_dataset):
    cfg = load_config(DEMO_CONFIG)
    cfg.data = [str(demo_dataset)]
    (task,) = load_tasks(cfg, Backends(cfg))
    return task


def test_task_reference_and_proposals(demo_task):
    task = demo_task
    assert isinstance(task, Task) and task.name == "membrane" and "membrane" in repr(task)
    reference = task.reference
    assert reference is task.reference  # computed once
    assert reference.foreground.any() and reference.background.any() and 0 < reference.foreground_share < 1
    image_path = task.layout.targets[0]
    image = read_image(image_path)
    prompt_set = task.propose(image_path.name, image, task.store.features(image_path))
    assert prompt_set.source == {"nearest": "matching"}.get(task.cfg.matching.method, task.cfg.matching.method)
    assert len(prompt_set.positive_indices) > 0
    assert prompt_set.grid == task.grid and prompt_set.original_size == (image.shape[1], image.shape[0])
    again = task.propose(image_path.name, image, task.store.features(image_path))
    np.testing.assert_array_equal(again.positive_indices, prompt_set.positive_indices)  # deterministic
    np.testing.assert_array_equal(again.negative_indices, prompt_set.negative_indices)


def test_an_image_gets_the_same_prompts_under_another_task_and_file_name(demo_task, tmp_path):
    task = demo_task
    renamed = tmp_path / "another_name"
    for folder in ("reference_image", "reference_mask", "target_image"):
        shutil.copytree(task.layout.source / folder, renamed / folder)
    image_path = task.layout.targets[0]
    (renamed / "target_image" / image_path.name).rename(renamed / "target_image" / "renamed.png")
    other = Task(dataset_task(renamed), task.backends, task.cfg)
    assert other.name != task.name
    image = read_image(image_path)
    proposed = task.propose(image_path.name, image, task.store.features(image_path))
    renamed_path = renamed / "target_image" / "renamed.png"
    again = other.propose(renamed_path.name, read_image(renamed_path), other.store.features(renamed_path))
    np.testing.assert_array_equal(again.positive_indices, proposed.positive_indices)
    np.testing.assert_array_equal(again.negative_indices, proposed.negative_indices)


def test_training_samples_report_bad_pairs_and_load_on_demand(demo_task):
    task = demo_task
    train = sorted((task.layout.source / "train_image").iterdir())
    train[0].write_bytes(b"not an image")
    (task.layout.source / "train_mask" / train[1].name).unlink()
    task = Task(dataset_task(task.layout.source), task.backends, task.cfg)
    report = StageReport("test")
    samples = task.training_samples(report)
    assert sorted(name for name, _ in report.failed) == sorted(f"membrane/{p.stem}" for p in train[:2])
    assert [s.name for s in samples] == [p.stem for p in train[2:]] and all(s.task == "membrane" for s in samples)
    sample = samples[0].load()
    assert sample.task == "membrane" and sample.reference is task.reference
    assert sample.image is not None and sample.truth_mask is not None and sample.truth_mask.any()
    image_path = task.layout.source / "train_image" / f"{sample.name}.png"
    proposed = task.propose(image_path.name, sample.image, task.store.features(image_path))
    np.testing.assert_array_equal(sample.prompt_set.positive_indices, proposed.positive_indices)
    np.testing.assert_array_equal(sample.prompt_set.negative_indices, proposed.negative_indices)


def test_prompt_file_samples(demo_task, tmp_path):
    task = demo_task
    folder = tmp_path / "prompts"
    with pytest.raises(UsageError, match="no prompt files"):
        task.prompt_file_samples(folder, StageReport("test"), with_images=False)
    targets = task.layout.targets
    for path in targets[:3]:
        image = read_image(path)
        features = task.store.features(path, image)
        prompt_set = task.propose(path.name, image, features)
        folder.mkdir(exist_ok=True)
        (folder / f"{path.stem}.json").write_text(json.dumps(prompt_set.to_dict()))
    (folder / "stranger.json").write_text((folder / f"{targets[0].stem}.json").read_text())  # no such target
    report = StageReport("test")
    samples = task.prompt_file_samples(folder, report, with_images=False, skip=lambda stem: stem == targets[2].stem)
    assert [s.name for s in samples] == [p.stem for p in targets[:2]]
    assert report.failed and report.failed[0][0] == "membrane/stranger.json"
    bare = samples[0].load()
    assert bare.image is None and bare.truth_mask is None and bare.task == "membrane"
    full = task.prompt_file_samples(folder, StageReport("test"), with_images=True, with_truth=True)[0].load()
    assert full.image is not None and full.truth_mask is not None
