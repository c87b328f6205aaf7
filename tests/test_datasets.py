"""Benchmark converters (gpoa.datasets) on tiny fake copies of each benchmark's official layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from gpoa.datasets import BENCHMARKS, convert
from gpoa.datasets.fss1000 import default_split
from gpoa.errors import UsageError
from gpoa.layout import resolve_tasks
from gpoa.protocols import PASCAL_CLASSES, read_episodes

ROOT = Path(__file__).resolve().parents[1]
# pycocotools' mask decoding under NumPy 2 warns about the copy keyword; the masks are right
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
H, W = 32, 40  # every fake image is 40 pixels wide and 32 high


# ----- helpers ---------------------------------------------------------------------------------------
def photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def rect(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top:bottom, left:right] = True
    return mask


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_png(path: Path) -> np.ndarray:
    assert path.suffix == ".png" and path.is_file(), path
    return np.asarray(Image.open(path))


def assert_binary_mask(path: Path, expected: np.ndarray) -> None:
    stored = read_png(path)
    assert stored.dtype == np.uint8 and stored.shape == (H, W)
    assert set(np.unique(stored).tolist()) <= {0, 255}
    np.testing.assert_array_equal(stored == 255, expected)


def run_converter(name: str, src: Path, out: Path, **kwargs):
    """Convert, checking the source is not modified."""
    before = snapshot(src)
    report = convert(name, src, out, progress=False, **kwargs)
    assert snapshot(src) == before
    return report


def dataset_record(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def domain_stems(out: Path, domain: str, folder: str = "mask") -> list:
    return sorted(p.stem for p in (out / domain / folder).iterdir())


# ----- FSS-1000 --------------------------------------------------------------------------------------
FSS_CLASSES = ("abacus", "apple", "bee", "cat")


def fss_mask(n: int) -> np.ndarray:
    """Gray mask with an anti-aliased edge: 200 is object, 100 is not (HSNet: >= 128)."""
    gray = np.where(rect(4 + n, 5, 20 + n, 30), 255, 0).astype(np.uint8)
    gray[3 + n, 5:30] = 100
    gray[20 + n, 5:30] = 200
    return gray


@pytest.fixture
def fss_src(tmp_path) -> Path:
    src = tmp_path / "fewshot_data"
    for k, name in enumerate(FSS_CLASSES):
        for n in range(1, 4):
            save(src / name / f"{n}.jpg", photo(10 * k + n), quality=90)
            save(src / name / f"{n}.png", fss_mask(n))
    return src


def test_fss1000_domains_masks_split_and_episodes(fss_src, tmp_path):
    out = tmp_path / "out"
    report = run_converter("fss1000", fss_src, out, seed=3)
    assert report.exit_code == 0 and report.images == 12 and report.domains == 4
    for name in FSS_CLASSES:
        assert domain_stems(out, name) == ["1", "2", "3"]
        assert (out / name / "image" / "2.jpg").read_bytes() == (fss_src / name / "2.jpg").read_bytes()
        assert_binary_mask(out / name / "mask" / "2.png", fss_mask(2) >= 128)
    record = dataset_record(out)
    assert record["benchmark"] == "fss1000" and record["images"] == 12
    split = default_split(list(FSS_CLASSES))
    assert sorted(split.values()) == ["test", "train", "train", "val"]
    assert record["splits"] == {s: sorted(c for c in FSS_CLASSES if split[c] == s) for s in ("test", "train", "val")}
    (test_class,) = record["splits"]["test"]
    episodes = read_episodes(out / "episodes.json")
    assert [(e.domain, e.query) for e in episodes] == [(test_class, q) for q in ("1", "2", "3")]
    assert all(len(e.support) == 1 and e.query not in e.support for e in episodes)
    assert json.loads((out / "episodes.json").read_text())["seed"] == 3
    assert [task.name for task in resolve_tasks([out], tmp_path / "ws")] == sorted(FSS_CLASSES)


def test_fss1000_default_split_is_520_240_240_for_1000_classes():
    names = [f"class{i:04d}" for i in range(1000)]
    split = default_split(names)
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [520, 240, 240]
    assert default_split(list(reversed(names))) == split


@pytest.mark.parametrize("kind", ["text", "json"])
def test_fss1000_split_file(fss_src, tmp_path, kind):
    path = tmp_path / f"split.{'txt' if kind == 'text' else 'json'}"
    if kind == "text":
        path.write_text("# the official lists\n[trn]\nabacus\napple\n\n[val]\nbee\n[test]\ncat\nzebra\n")
    else:
        path.write_text(json.dumps({"train": ["abacus", "apple"], "val": ["bee"], "test": ["cat", "zebra"]}))
    out = tmp_path / "out"
    run_converter("fss1000", fss_src, out, split_file=path, episodes=2)
    record = dataset_record(out)
    assert record["splits"] == {"test": ["cat"], "train": ["abacus", "apple"], "val": ["bee"]}
    assert any("zebra" in note for note in record["notes"])
    episodes = read_episodes(out / "episodes.json")
    assert len(episodes) == 2 and {e.domain for e in episodes} == {"cat"}  # --episodes 2: queries per class


def test_fss1000_missing_mask_is_reported_and_the_rest_converted(fss_src, tmp_path):
    (fss_src / "bee" / "2.png").unlink()
    report = run_converter("fss1000", fss_src, tmp_path / "out")
    assert report.exit_code == 1 and report.images == 11
    assert len(report.failures) == 1 and str(fss_src / "bee" / "2.jpg") in report.failures[0]
    assert "2.png" in report.failures[0]
    assert domain_stems(tmp_path / "out", "bee") == ["1", "3"]
    assert dataset_record(tmp_path / "out")["failures"] == report.failures


def test_rerun_resumes_and_keeps_written_files(fss_src, tmp_path):
    out = tmp_path / "out"
    run_converter("fss1000", fss_src, out)
    first = snapshot(out)
    mtime = (out / "abacus" / "mask" / "1.png").stat().st_mtime_ns
    (out / "apple" / "mask" / "3.png").unlink()
    report = run_converter("fss1000", fss_src, out)
    assert (report.written, report.skipped) == (1, 11)
    assert snapshot(out) == first
    assert (out / "abacus" / "mask" / "1.png").stat().st_mtime_ns == mtime


# ----- PASCAL-5i -------------------------------------------------------------------------------------
#: stem → class labels; 000001-000004 are val, 000005-000006 train
PASCAL_IMAGES = {"2007_000001": (1, 6), "2007_000002": (1, 12, 19), "2007_000003": (6, 12, 19),
                 "2007_000004": (1, 6, 12, 19), "2007_000005": (1, 15), "2007_000006": (15,)}
PASCAL_SLOTS = {1: (2, 2), 6: (2, 22), 12: (17, 2), 19: (17, 22), 15: (17, 22), 8: (2, 22)}  # disjoint per image


def pascal_object(label: int) -> np.ndarray:
    top, left = PASCAL_SLOTS[label]
    return rect(top, left, top + 12, left + 14)


def pascal_boundary(label: int) -> np.ndarray:
    top, left = PASCAL_SLOTS[label]
    outer = rect(top - 1, left - 1, top + 13, left + 15)
    return outer & ~pascal_object(label)


def pascal_labels(labels: tuple) -> np.ndarray:
    values = np.zeros((H, W), np.uint8)
    for label in labels:
        values[pascal_boundary(label)] = 255
    for label in labels:
        values[pascal_object(label)] = label
    return values


def voc_palette() -> list:
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


@pytest.fixture
def pascal_src(tmp_path) -> Path:
    src = tmp_path / "VOCdevkit" / "VOC2012"
    for k, (stem, labels) in enumerate(PASCAL_IMAGES.items()):
        save(src / "JPEGImages" / f"{stem}.jpg", photo(100 + k))
        im = Image.fromarray(pascal_labels(labels), "P")
        im.putpalette(voc_palette())
        (src / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        im.save(src / "SegmentationClass" / f"{stem}.png")
    lists = src / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("".join(f"2007_00000{i}\n" for i in range(1, 5)))
    (lists / "train.txt").write_text("2007_000005\n2007_000006\n")
    return src


def test_pascal5i_class_domains_masks_ignore_and_folds(pascal_src, tmp_path):
    assert Image.open(pascal_src / "SegmentationClass" / "2007_000001.png").mode == "P"
    out = tmp_path / "out"
    report = run_converter("pascal5i", pascal_src, out)
    assert report.exit_code == 0 and report.images == 6
    by_class: dict = {}
    for stem, labels in PASCAL_IMAGES.items():
        for label in labels:
            by_class.setdefault(PASCAL_CLASSES[label - 1], []).append(stem)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(by_class)
    for name, stems in by_class.items():
        assert domain_stems(out, name) == sorted(stems) == domain_stems(out, name, "image")
        assert domain_stems(out, name, "ignore") == sorted(stems)
    stem, labels = "2007_000004", PASCAL_IMAGES["2007_000004"]
    boundary = np.logical_or.reduce([pascal_boundary(label) for label in labels])
    for label in labels:
        name = PASCAL_CLASSES[label - 1]
        assert_binary_mask(out / name / "mask" / f"{stem}.png", pascal_object(label))
        assert_binary_mask(out / name / "ignore" / f"{stem}.png", boundary & ~np.logical_or.reduce(
            [pascal_object(other) for other in labels]))
    record = dataset_record(out)
    assert record["folds"]["0"] == list(PASCAL_CLASSES[:5]) and record["folds"]["3"] == list(PASCAL_CLASSES[15:])
    assert record["splits"]["train"] == ["aeroplane", "person"]
    assert record["split_images"] == {"train": 2, "val": 4}
    episodes = read_episodes(out / "episodes.json")
    assert len(episodes) == 4000
    val = {stem for stem in PASCAL_IMAGES if stem <= "2007_000004"}
    for fold in range(4):
        of_fold = [e for e in episodes if e.fold == fold]
        assert len(of_fold) == 1000
        assert {e.domain for e in of_fold} <= set(PASCAL_CLASSES[5 * fold:5 * fold + 5])
    for e in episodes:
        label = PASCAL_CLASSES.index(e.domain) + 1
        assert e.query in val and set(e.support) <= val and e.query not in e.support
        assert label in PASCAL_IMAGES[e.query] and all(label in PASCAL_IMAGES[s] for s in e.support)


def test_pascal5i_prefers_sbd_augmented_labels(pascal_src, tmp_path):
    aug = pascal_src / "SegmentationClassAug"
    aug.mkdir()
    for stem, labels in PASCAL_IMAGES.items():
        labels = (8,) if stem == "2007_000006" else labels  # the augmented label says "cat"
        Image.fromarray(pascal_labels(labels), "L").save(aug / f"{stem}.png")
    save(pascal_src / "JPEGImages" / "2007_000007.jpg", photo(7))
    Image.fromarray(pascal_labels((15,)), "L").save(aug / "2007_000007.png")  # in no list: train-aug
    out = tmp_path / "out"
    run_converter("pascal5i", pascal_src, out)
    assert domain_stems(out, "cat") == ["2007_000006"]
    assert domain_stems(out, "person") == ["2007_000005", "2007_000007"]
    assert_binary_mask(out / "cat" / "mask" / "2007_000006.png", pascal_object(8))
    assert dataset_record(out)["split_images"] == {"train": 3, "val": 4}


# ----- COCO-20i -------------------------------------------------------------------------------------
#: (id, name) in a shuffled order; sorted by id: person, bicycle, car, airplane, traffic light, ...
COCO_CATEGORIES = [(10, "traffic light"), (1, "person"), (3, "car"), (2, "bicycle"), (5, "airplane"),
                   (14, "parking meter"), (11, "fire hydrant"), (13, "stop sign")]


def polygon(top: int, left: int, bottom: int, right: int) -> list:
    return [[left, top, right, top, right, bottom, left, bottom]]


def crowd_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [H, W]}


COCO_CROWD = rect(20, 0, 32, 12)


def coco_tree(src: Path) -> dict:
    """val2014: 4 images with person, bicycle, car, airplane polygons (one has a crowd of people and
    one a crowd-only stop sign); train2014: 2 images with a traffic light."""
    annotations = {"train": [], "val": []}
    images = {"train": [], "val": []}
    boxes = {1: (2, 2, 12, 14), 2: (2, 22, 12, 36), 3: (16, 22, 28, 36), 5: (16, 14, 22, 20)}
    for split, count, categories in (("val", 4, (1, 2, 3, 5)), ("train", 2, (10,))):
        for k in range(count):
            image_id = 100 * (split == "train") + k + 1
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            save(src / f"{split}2014" / name, photo(image_id))
            images[split].append({"id": image_id, "file_name": name, "width": W, "height": H})
            for category in categories:
                top, left, bottom, right = boxes.get(category, (4, 4, 20, 30))
                annotations[split].append({"image_id": image_id, "category_id": category, "iscrowd": 0,
                                           "segmentation": polygon(top, left, bottom, right)})
            if split == "val" and k == 0:
                annotations[split].append({"image_id": image_id, "category_id": 1, "iscrowd": 1,
                                           "segmentation": crowd_rle(COCO_CROWD)})
            if split == "val" and k == 1:
                annotations[split].append({"image_id": image_id, "category_id": 13, "iscrowd": 1,
                                           "segmentation": crowd_rle(COCO_CROWD)})
    (src / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        for n, annotation in enumerate(annotations[split]):
            annotation.update(id=1000 * (split == "train") + n + 1, area=1.0, bbox=[0, 0, 1, 1])
        data = {"images": images[split], "annotations": annotations[split],
                "categories": [{"id": i, "name": name, "supercategory": "x"} for i, name in COCO_CATEGORIES]}
        (src / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return annotations


def polygon_mask(segmentation: list) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, H, W))).astype(bool)


def test_coco20i_category_domains_crowd_ignore_and_interleaved_folds(tmp_path):
    src = tmp_path / "coco"
    coco_tree(src)
    out = tmp_path / "out"
    report = run_converter("coco20i", src, out, seed=1, episodes=50)
    assert report.exit_code == 0 and report.images == 6
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["airplane", "bicycle", "car", "person",
                                                                 "traffic_light"]
    val_stems = [f"COCO_val2014_{k:012d}" for k in range(1, 5)]
    assert domain_stems(out, "person") == val_stems
    assert domain_stems(out, "traffic_light") == ["COCO_train2014_000000000101", "COCO_train2014_000000000102"]
    assert not (out / "stop_sign").exists()  # a crowd alone does not put an image in a domain
    person = polygon_mask(polygon(2, 2, 12, 14))
    assert person[3:11, 3:13].all() and not person[14:].any() and not person[:, 16:].any()
    assert_binary_mask(out / "person" / "mask" / f"{val_stems[0]}.png", person)
    assert_binary_mask(out / "person" / "ignore" / f"{val_stems[0]}.png", COCO_CROWD & ~person)
    assert domain_stems(out, "person", "ignore") == [val_stems[0]]
    assert not (out / "car" / "ignore").exists()
    record = dataset_record(out)
    assert record["folds"] == {"0": ["person", "traffic_light"], "1": ["bicycle", "fire_hydrant"],
                               "2": ["car", "stop_sign"], "3": ["airplane", "parking_meter"]}
    episodes = read_episodes(out / "episodes.json")
    assert [sum(e.fold == fold for e in episodes) for fold in range(4)] == [50] * 4
    assert {e.domain for e in episodes} == {"person", "bicycle", "car", "airplane"}  # val classes only
    assert all(e.query in val_stems and e.query not in e.support for e in episodes)


def test_coco20i_has_1000_episodes_per_fold_by_default(tmp_path):
    src = tmp_path / "coco"
    coco_tree(src)
    run_converter("coco20i", src, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "episodes.json").read_text())
    assert data["count"] == 4000 and data["benchmark"] == "coco20i"


# ----- ISIC 2018 -------------------------------------------------------------------------------------
ISIC_SPLITS = {"Training": ("train", ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002")),
               "Validation": ("val", ("ISIC_0012255", "ISIC_0012346")),
               "Test": ("test", ("ISIC_0036309", "ISIC_0036310"))}


def isic_mask(k: int) -> np.ndarray:
    return rect(4 + k, 6, 24, 30 - k)


@pytest.fixture
def isic_src(tmp_path) -> Path:
    src = tmp_path / "isic"
    for part, (_, stems) in ISIC_SPLITS.items():
        inputs = src / f"ISIC2018_Task1-2_{part}_Input"
        for k, stem in enumerate(stems):
            save(inputs / f"{stem}.jpg", photo(k))
            save(src / f"ISIC2018_Task1_{part}_GroundTruth" / f"{stem}_segmentation.png",
                 np.where(isic_mask(k), 255, 0).astype(np.uint8))
        (inputs / "ATTRIBUTION.txt").write_text("credits")
        (inputs / "LICENSE.txt").write_text("license")
    return src


def test_isic2018_one_domain_with_splits(isic_src, tmp_path):
    out = tmp_path / "out"
    report = run_converter("isic2018", isic_src, out)
    assert report.exit_code == 0 and report.images == 7
    stems = [stem for _, group in ISIC_SPLITS.values() for stem in group]
    assert domain_stems(out, "isic2018") == sorted(stems)
    assert (out / "isic2018" / "image" / "ISIC_0012346.jpg").is_file()
    assert_binary_mask(out / "isic2018" / "mask" / "ISIC_0012346.png", isic_mask(1))
    splits = json.loads((out / "splits.json").read_text())
    assert {split: group["isic2018"] for split, group in splits.items()} == {
        split: sorted(group) for split, group in ISIC_SPLITS.values()}
    assert dataset_record(out)["splits"] == {"test": ["isic2018"], "train": ["isic2018"], "val": ["isic2018"]}
    episodes = read_episodes(out / "episodes.json")
    assert [e.query for e in episodes] == list(ISIC_SPLITS["Test"][1])
    assert len({e.support for e in episodes}) == 1 and episodes[0].support[0] in ISIC_SPLITS["Training"][1]


# ----- Kvasir-SEG and CVC-ClinicDB -------------------------------------------------------------------
KVASIR_STEMS = ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0qx73cjw570799j4n5cjze",
                "cju0roawvklrq0799vmjorwfv")


def kvasir_mask(k: int) -> np.ndarray:
    return rect(5 + k, 7, 25, 33)


@pytest.fixture
def kvasir_src(tmp_path) -> Path:
    src = tmp_path / "Kvasir-SEG"
    for k, stem in enumerate(KVASIR_STEMS):
        save(src / "images" / f"{stem}.jpg", photo(k))
        save(src / "masks" / f"{stem}.jpg", np.where(kvasir_mask(k), 255, 0).astype(np.uint8), quality=40)
    return src


def test_kvasir_jpeg_masks_are_thresholded_not_grown(kvasir_src, tmp_path):
    noisy = np.asarray(Image.open(kvasir_src / "masks" / f"{KVASIR_STEMS[1]}.jpg"))
    assert np.count_nonzero(noisy[~kvasir_mask(1)]) > 0  # compression noise outside the object
    out = tmp_path / "out"
    report = run_converter("kvasir", kvasir_src, out)
    assert report.exit_code == 0 and report.images == 4
    for k, stem in enumerate(KVASIR_STEMS):
        assert_binary_mask(out / "kvasir" / "mask" / f"{stem}.png", kvasir_mask(k))
        assert (out / "kvasir" / "image" / f"{stem}.jpg").is_file()
    episodes = read_episodes(out / "episodes.json")
    (reference,) = {e.support for e in episodes}
    assert sorted(e.query for e in episodes) == sorted(set(KVASIR_STEMS) - set(reference))


def test_unreadable_image_is_reported_and_skipped(kvasir_src, tmp_path):
    (kvasir_src / "images" / f"{KVASIR_STEMS[2]}.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    report = run_converter("kvasir", kvasir_src, out)
    assert report.exit_code == 1 and report.images == 3
    assert len(report.failures) == 1 and KVASIR_STEMS[2] in report.failures[0]
    assert KVASIR_STEMS[2] not in domain_stems(out, "kvasir")
    assert all(KVASIR_STEMS[2] not in (e.query, *e.support) for e in read_episodes(out / "episodes.json"))


def test_cvc_tiff_pairs(tmp_path):
    src = tmp_path / "CVC-ClinicDB"
    for n in range(1, 5):
        (src / "Original").mkdir(parents=True, exist_ok=True)
        (src / "Ground Truth").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(src / "Original" / f"{n}.tif", photo(n), photometric="rgb")
        tifffile.imwrite(src / "Ground Truth" / f"{n}.tif", np.where(isic_mask(n), 255, 0).astype(np.uint8))
    out = tmp_path / "out"
    report = run_converter("cvc", src, out, seed=5, episodes=2)
    assert report.exit_code == 0
    assert domain_stems(out, "cvc") == ["1", "2", "3", "4"]
    assert (out / "cvc" / "image" / "3.tif").read_bytes() == (src / "Original" / "3.tif").read_bytes()
    assert_binary_mask(out / "cvc" / "mask" / "3.png", isic_mask(3))
    assert len(read_episodes(out / "episodes.json")) == 2


# ----- DAVIS 2016 and 2017 ----------------------------------------------------------------------------
VOID = 255  # DAVIS 2017's void label


def moving(frame: int, left: int = 4) -> np.ndarray:
    """An object that moves right by 3 pixels a frame."""
    return rect(6, left + 3 * frame, 20, left + 12 + 3 * frame)


def davis_tree(src: Path, year: int) -> dict:
    """A fake DAVIS tree (3-4 frames a sequence) → {sequence: [frame names]}. 2016: binary masks (one
    written as 0/1: any nonzero pixel is the object) and image/mask path-pair lists; 2017: palette
    masks of object ids (object 2 of 'dogs' first appears in frame 1, object 1 is hidden in frame 2,
    void 255 pixels in frame 1) and lists of sequence names."""
    sequences = {"bear": 4, "car": 3} if year == 2016 else {"dogs": 4, "kite": 3}
    for k, (sequence, count) in enumerate(sequences.items()):
        for frame in range(count):
            name = f"{frame:05d}"
            save(src / "JPEGImages" / "480p" / sequence / f"{name}.jpg", photo(40 * year + 10 * k + frame), quality=90)
            path = src / "Annotations" / "480p" / sequence / f"{name}.png"
            if year == 2016:
                save(path, np.where(moving(frame), 1 if (sequence, frame) == ("car", 1) else 255, 0).astype(np.uint8))
            else:
                labels = np.zeros((H, W), np.uint8)
                if sequence == "kite" or frame != 2:
                    labels[moving(frame)] = 1
                if sequence == "dogs" and frame >= 1:
                    labels[24:30, 2 + 5 * frame:12 + 5 * frame] = 2
                if sequence == "dogs" and frame == 1:
                    labels[0:2, :] = VOID
                im = Image.fromarray(labels, "P")
                im.putpalette(voc_palette())
                path.parent.mkdir(parents=True, exist_ok=True)
                im.save(path)
    folder = src / "ImageSets" / ("480p" if year == 2016 else "2017")
    folder.mkdir(parents=True)
    first, second = sequences
    if year == 2016:
        def pairs(sequence: str) -> str:
            return "".join(f"/JPEGImages/480p/{sequence}/{f:05d}.jpg /Annotations/480p/{sequence}/{f:05d}.png\n"
                           for f in range(sequences[sequence]))

        (folder / "val.txt").write_text(pairs(first) + pairs(second))
        (folder / "train.txt").write_text(pairs(second))
    else:
        (folder / "val.txt").write_text(f"{first}\n{second}\n")
        (folder / "train.txt").write_text(f"{second}\n")
    return {sequence: [f"{f:05d}" for f in range(count)] for sequence, count in sequences.items()}


def davis_episodes(out: Path) -> dict:
    """{clip: (reference, [queries])} of a converted DAVIS."""
    clips: dict = {}
    for episode in read_episodes(out / "episodes.json"):
        clips.setdefault(episode.domain, (episode.support, []))[1].append(episode.query)
    return clips


def test_davis_2016_one_clip_per_sequence(tmp_path):
    src = tmp_path / "DAVIS"
    frames = davis_tree(src, 2016)
    out = tmp_path / "out"
    report = run_converter("davis", src, out)  # 2016 val by default
    assert report.exit_code == 0 and report.images == 7 and report.domains == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bear", "car"]
    for sequence, names in frames.items():
        assert domain_stems(out, sequence) == names == domain_stems(out, sequence, "image")
        assert not (out / sequence / "ignore").exists()
        for frame, name in enumerate(names):
            assert ((out / sequence / "image" / f"{name}.jpg").read_bytes()
                    == (src / "JPEGImages" / "480p" / sequence / f"{name}.jpg").read_bytes())
            assert_binary_mask(out / sequence / "mask" / f"{name}.png", moving(frame))
    # the first frame is each clip's reference, every later frame a query, in time order
    assert davis_episodes(out) == {s: ((names[0],), names[1:]) for s, names in frames.items()}
    record = dataset_record(out)
    assert record["variant"] == {"year": 2016, "split": "val"} and record["splits"] == {"val": ["bear", "car"]}
    assert [task.name for task in resolve_tasks([out], tmp_path / "ws")] == ["bear", "car"]
    # the train list holds car alone
    train = run_converter("davis", src, tmp_path / "train", split="train")
    assert train.images == 3 and sorted(p.name for p in (tmp_path / "train").iterdir() if p.is_dir()) == ["car"]


def test_davis_2017_one_clip_per_object_from_its_first_frame(tmp_path):
    src = tmp_path / "DAVIS"
    davis_tree(src, 2017)
    out = tmp_path / "out"
    report = run_converter("davis", src, out, year=2017)
    assert report.exit_code == 0 and report.images == 7 and report.domains == 3
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dogs_1", "dogs_2", "kite_1"]
    assert domain_stems(out, "dogs_1") == ["00000", "00001", "00002", "00003"]
    assert domain_stems(out, "dogs_2") == ["00001", "00002", "00003"]  # starts where the object appears
    assert domain_stems(out, "kite_1") == ["00000", "00001", "00002"]
    # mask = the pixels of the clip's id; the hidden object's frame stays with an empty mask
    assert_binary_mask(out / "dogs_1" / "mask" / "00001.png", moving(1))
    assert_binary_mask(out / "dogs_1" / "mask" / "00002.png", np.zeros((H, W), bool))
    assert_binary_mask(out / "dogs_2" / "mask" / "00003.png", rect(24, 17, 30, 27))
    # void pixels are left out of the metrics, for every object of that frame
    for clip in ("dogs_1", "dogs_2"):
        assert domain_stems(out, clip, "ignore") == ["00001"]
        assert_binary_mask(out / clip / "ignore" / "00001.png", rect(0, 0, 2, W))
    assert ((out / "dogs_2" / "image" / "00001.jpg").read_bytes()
            == (src / "JPEGImages" / "480p" / "dogs" / "00001.jpg").read_bytes())
    assert davis_episodes(out)["dogs_2"] == (("00001",), ["00002", "00003"])
    record = dataset_record(out)
    assert record["variant"] == {"year": 2017, "split": "val"}
    assert any("dogs_2 starts at frame 00001" in note for note in record["notes"])


def test_davis_bad_frame_is_reported_and_a_rerun_resumes(tmp_path):
    src = tmp_path / "DAVIS"
    davis_tree(src, 2017)
    broken = src / "JPEGImages" / "480p" / "kite" / "00001.jpg"
    good = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")
    (src / "Annotations" / "480p" / "dogs" / "00003.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    report = run_converter("davis", src, out, year=2017)
    assert report.exit_code == 1 and len(report.failures) == 2
    assert str(broken) in " ".join(report.failures) and "dogs/00003.png" in " ".join(report.failures)
    assert domain_stems(out, "kite_1") == ["00000", "00002"] and domain_stems(out, "dogs_1")[-1] == "00002"
    assert len(dataset_record(out)["failures"]) == 2
    broken.write_bytes(good)
    again = run_converter("davis", src, out, year=2017)
    assert again.written == 1 and again.skipped == 5 and len(again.failures) == 1
    assert domain_stems(out, "kite_1") == ["00000", "00001", "00002"]


def test_davis_errors_name_what_is_missing(tmp_path):
    src = tmp_path / "DAVIS"
    davis_tree(src, 2016)
    out = tmp_path / "out"
    with pytest.raises(UsageError) as info:
        convert("davis", src, out, year=2017, progress=False)
    assert (f"'{src / 'ImageSets' / '2017' / 'val.txt'}' is missing: the list of DAVIS 2017's val split"
            in str(info.value)) and "for DAVIS 2016 pass --year 2016" in str(info.value)
    with pytest.raises(UsageError, match="DAVIS 2017 has no split 'trainval'; use --split train, val"):
        convert("davis", src, out, year=2017, split="trainval", progress=False)
    (src / "ImageSets" / "480p" / "trainval.txt").write_text("bear\n")
    with pytest.raises(UsageError, match=r"trainval.txt' line 1 is 'bear', not a DAVIS 2016 pair .*--year 2017"):
        convert("davis", src, out, split="trainval", progress=False)
    with pytest.raises(UsageError, match="--year and --split are for davis only"):
        convert("kvasir", src, out, split="val", progress=False)
    with pytest.raises(UsageError, match="--episodes is not for davis"):
        convert("davis", src, out, episodes=3, progress=False)
    shutil.move(src / "Annotations", tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="Annotations.480p' is missing: DAVIS's Annotations at 480p"):
        convert("davis", src, out, progress=False)
    shutil.move(tmp_path / "elsewhere", src / "Annotations")
    assert not out.exists()
    run_converter("davis", src, out)
    with pytest.raises(UsageError, match="already holds davis converted with year 2016, split val .* convert year "
                                         "2016, split train into another folder"):
        convert("davis", src, out, split="train", progress=False)


def test_davis_command_line(tmp_path):
    from gpoa.datasets.__main__ import main

    src = tmp_path / "DAVIS"
    davis_tree(src, 2017)
    assert main(["davis", "--src", str(src), "--out", str(tmp_path / "out"), "--year", "2017", "--split", "train",
                 "--quiet"], prog="gpoa convert") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["kite_1"]
    with pytest.raises(SystemExit):
        main(["davis", "--src", str(src), "--out", str(tmp_path / "x"), "--year", "2018"])


# ----- command line and errors ---------------------------------------------------------------------
def test_command_line(kvasir_src, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "gpoa.datasets", "kvasir", "--src", str(kvasir_src),
                             "--out", str(out), "--seed", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kvasir: 4 images" in result.stdout
    assert "JPEG masks are thresholded" in result.stderr
    assert dataset_record(out)["seed"] == 2 and len(read_episodes(out / "episodes.json")) == 3
    bad = subprocess.run([sys.executable, "-m", "gpoa.datasets", "cvc", "--src", str(kvasir_src), "--out",
                          str(tmp_path / "cvc")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Original" in bad.stderr and "Ground Truth" in bad.stderr


def test_every_benchmark_is_registered():
    assert list(BENCHMARKS) == ["fss1000", "pascal5i", "coco20i", "isic2018", "kvasir", "cvc", "davis"]


@pytest.mark.parametrize("name, make, missing", [
    ("fss1000", lambda src: (src / "abacus").mkdir(parents=True), "no FSS-1000 class folders"),
    ("pascal5i", lambda src: (src / "SegmentationClass").mkdir(parents=True), "JPEGImages"),
    ("pascal5i", lambda src: (src / "JPEGImages").mkdir(parents=True), "SegmentationClass"),
    ("coco20i", lambda src: (src / "annotations").mkdir(parents=True)
     or (src / "annotations" / "instances_val2014.json").write_text("{}"), "val2014"),
    ("isic2018", lambda src: (src / "ISIC2018_Task1-2_Training_Input").mkdir(parents=True),
     "ISIC2018_Task1_Training_GroundTruth"),
    ("kvasir", lambda src: (src / "images").mkdir(parents=True), "masks"),
    ("cvc", lambda src: (src / "Original").mkdir(parents=True), "Ground Truth"),
])
def test_partial_source_names_what_is_missing(tmp_path, name, make, missing):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    with pytest.raises(UsageError) as info:
        convert(name, src, tmp_path / "out", progress=False)
    assert missing in str(info.value) and "Expected layout" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_empty_image_folder_names_it(kvasir_src, tmp_path):
    for path in (kvasir_src / "images").iterdir():
        path.unlink()
    with pytest.raises(UsageError, match="images") as info:
        convert("kvasir", kvasir_src, tmp_path / "out", progress=False)
    assert str(kvasir_src / "images") in str(info.value)


def test_fss1000_suggests_the_nested_folder(fss_src, tmp_path):
    download = tmp_path / "download"
    shutil.copytree(fss_src, download / "fewshot_data")
    with pytest.raises(UsageError, match="did you mean") as info:
        convert("fss1000", download, tmp_path / "out", progress=False)
    assert str(download / "fewshot_data") in str(info.value)


def test_bad_folders_are_usage_errors(fss_src, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        convert("fss1000", tmp_path / "nope", tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="overlap"):
        convert("fss1000", fss_src, fss_src / "converted", progress=False)
    with pytest.raises(UsageError, match="unknown benchmark"):
        convert("voc", fss_src, tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="fss1000 only"):
        convert("kvasir", fss_src, tmp_path / "out", split_file=tmp_path / "s.txt", progress=False)
    out = tmp_path / "out"
    run_converter("fss1000", fss_src, out)
    with pytest.raises(UsageError, match="already holds a converted benchmark 'fss1000'"):
        convert("kvasir", fss_src, out, progress=False)
