"""PASCAL VOC 2012 as PASCAL-5i (Shaban et al., BMVC 2017): 20 classes in 4 folds of 5.

Source layout (``VOCdevkit/VOC2012``, optionally with SBD's augmented labels)::

    <src>/JPEGImages/<stem>.jpg
    <src>/SegmentationClass/<stem>.png          palette PNGs: 0 background, 1-20 classes, 255 boundary
    <src>/SegmentationClassAug/<stem>.png       SBD-augmented labels, plain index PNGs (used when present)
    <src>/ImageSets/Segmentation/train.txt      image lists (used when present)
    <src>/ImageSets/Segmentation/val.txt

Images and splits: with ``SegmentationClassAug/``, every labelled image is converted, split ``val``
when ``val.txt`` lists it and ``train`` otherwise (the usual 10,582 train-aug / 1,449 val of PASCAL-5i).
Without it, the images of ``train.txt`` and ``val.txt``; with neither list, every labelled image, split
``all``. Images a list names but the source lacks are reported and skipped.

Each label PNG is read once to find its classes and again when its masks are written (a rerun
reads them again to resume). Output: one domain per class (``OUT/aeroplane/``, ...) holding every image that contains the class;
mask = the class's pixels, ``ignore/<stem>.png`` = the label-255 pixels (left out of the metrics).
Folds: fold ``i`` = classes ``5i+1 .. 5i+5``. Episodes: :func:`gpoa.protocols.pascal5i_episodes`,
1,000 per fold over the ``val`` images (``all`` without lists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.datasets.common import (
    Benchmark,
    Index,
    Item,
    Options,
    fold_episodes,
    read_label_png,
    require_folder,
)
from gpoa.errors import InputError, UsageError
from gpoa.layout import list_images
from gpoa.protocols import (
    EPISODES_PER_FOLD,
    PASCAL_CLASSES,
    PASCAL_FOLDS,
    pascal5i_episodes,
    pascal5i_fold_classes,
)

NAME = "pascal5i"
IGNORE_LABEL = 255
LAYOUT = """  <src>/JPEGImages/<stem>.jpg
  <src>/SegmentationClass/<stem>.png         palette PNGs (0 background, 1-20 classes, 255 boundary)
  <src>/SegmentationClassAug/<stem>.png      optional: SBD-augmented index PNGs, used when present
  <src>/ImageSets/Segmentation/{train,val}.txt   optional image lists
(<src> is the VOC2012 folder, e.g. VOCdevkit/VOC2012)"""


def read_labels(path: Path) -> np.ndarray:
    """The label indices (H, W) uint8 of a palette or 8-bit gray PNG (values 0-20 and 255)."""
    labels = read_label_png(path, "use the VOC SegmentationClass / SegmentationClassAug PNGs")
    unknown = sorted(set(np.unique(labels).tolist()) - set(range(len(PASCAL_CLASSES) + 1)) - {IGNORE_LABEL})
    if unknown:
        raise InputError(path, f"holds label values {unknown[:10]} outside 0-20 and 255",
                         "use the VOC class-index PNGs, not the colour-rendered ones")
    return labels


def read_list(path: Path) -> Optional[list]:
    """Stems of an ImageSets list, None when it does not exist."""
    if not path.is_file():
        return None
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def label_folder(src: Path) -> Path:
    augmented = src / "SegmentationClassAug"
    if augmented.is_dir():
        return augmented
    if not (src / "SegmentationClass").is_dir():
        hint = next((f" (did you mean --src '{p}'?)" for p in (src / "VOC2012", src / "VOCdevkit" / "VOC2012")
                     if p.is_dir()), "")
        raise UsageError(f"'{src}' has neither 'SegmentationClass/' nor 'SegmentationClassAug/'{hint}. "
                         f"Expected layout:\n{LAYOUT}")
    return src / "SegmentationClass"


def choose_splits(src: Path, labels: dict, augmented: bool) -> tuple:
    """({stem: split} of the images to convert, [stems a list names that have no label], notes)."""
    lists = src / "ImageSets" / "Segmentation"
    train, val = read_list(lists / "train.txt"), read_list(lists / "val.txt")
    notes = []
    if val is None and train is None:
        notes.append(f"no image lists in '{lists}': every labelled image is converted, split 'all'")
        return {stem: "all" for stem in labels}, [], notes
    val = val or []
    if val == []:
        notes.append(f"no '{lists / 'val.txt'}': no val images, episodes are drawn from the train images")
    if augmented:
        split = {stem: "train" for stem in labels}
        notes.append("SBD-augmented labels: every labelled image not in val.txt is split 'train'")
    else:
        split = {stem: "train" for stem in (train or [])}
    split.update({stem: "val" for stem in val})
    listed_without_label = sorted(stem for stem in split if stem not in labels)
    return {stem: s for stem, s in split.items() if stem in labels}, listed_without_label, notes


def present_classes(labels: np.ndarray) -> list:
    return [PASCAL_CLASSES[value - 1] for value in np.unique(labels).tolist() if 1 <= value <= len(PASCAL_CLASSES)]


def class_labels(path: Path, domains: tuple, size: tuple) -> dict:
    """{class: (mask, ignore)} of one label PNG for the classes ``domains``."""
    labels = read_labels(path)
    if (labels.shape[1], labels.shape[0]) != tuple(size):
        raise InputError(path, f"is {labels.shape[1]}x{labels.shape[0]} pixels but its image is {size[0]}x{size[1]}",
                         "a label must have exactly the size of its image")
    ignore = labels == IGNORE_LABEL
    return {name: (labels == PASCAL_CLASSES.index(name) + 1, ignore) for name in domains}


def index(src: Path, options: Options) -> Index:
    images_folder = require_folder(src / "JPEGImages", "the VOC images", LAYOUT)
    folder = label_folder(src)
    labels = {p.stem: p for p in list_images(folder) if p.suffix.lower() == ".png"}
    if not labels:
        raise UsageError(f"'{folder}' holds no label PNGs. Expected layout:\n{LAYOUT}")
    split, unlabelled, notes = choose_splits(src, labels, folder.name == "SegmentationClassAug")
    notes.insert(0, f"labels from '{folder.name}/'")
    images = {p.stem: p for p in list_images(images_folder)}
    failures = [f"{folder / (stem + '.png')}: listed in ImageSets/Segmentation but the label file does not exist"
                for stem in unlabelled]
    items = []
    for stem in tqdm(sorted(split), desc=f"{NAME} (reading labels)", unit="img", disable=not options.progress):
        if stem not in images:
            failures.append(f"{images_folder / (stem + '.jpg')}: the image of label '{labels[stem]}' does not exist")
            continue
        try:
            domains = tuple(present_classes(read_labels(labels[stem])))
        except InputError as exc:
            failures.append(str(exc))
            continue
        if domains:
            items.append(Item(stem=stem, image=images[stem], split=split[stem], domains=domains,
                              load=lambda size, path=labels[stem], d=domains: class_labels(path, d, size)))
    n = options.episodes or EPISODES_PER_FOLD
    folds = {fold: pascal5i_fold_classes(fold) for fold in range(PASCAL_FOLDS)}

    def episodes(members: dict) -> list:
        pool = members.get("val") or members.get("all") or members.get("train", {})
        return fold_episodes(folds, pool, pascal5i_episodes, n, options.seed)

    protocol = (f"PASCAL-5i (HSNet): {n} episodes per fold over the val images; queries cycle through a seeded "
                "permutation of the fold's (image, class) pairs, one support drawn from the class's other images")
    return Index(items=items, episodes=episodes, protocol=protocol, folds=folds, notes=notes, failures=failures)


BENCHMARK = Benchmark(name=NAME, title="PASCAL-5i (PASCAL VOC 2012)", layout=LAYOUT, index=index)
