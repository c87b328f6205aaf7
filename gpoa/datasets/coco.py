"""COCO 2014 as COCO-20i (Nguyen & Todorovic, ICCV 2019): 80 categories in 4 folds of 20.

Source layout (the official downloads, unpacked side by side)::

    <src>/train2014/COCO_train2014_<id>.jpg
    <src>/val2014/COCO_val2014_<id>.jpg
    <src>/annotations/instances_train2014.json
    <src>/annotations/instances_val2014.json

Either split may be absent, not both; an annotation file needs its image folder. The annotations are
read with pycocotools.

Output: one domain per category, named by the category with spaces as underscores
(``OUT/traffic_light/``), holding every image with at least one non-crowd instance of it (stem = the
file's stem); mask = the union of those instances, ``ignore/<stem>.png`` = the category's crowd
regions outside that union (left out of the metrics).

Folds: the interleaved convention of HSNet and Matcher: the 80 categories sorted by id, fold ``i`` =
those whose index is ``i`` modulo 4 (fold 0: person, airplane, boat, ...). (Some works use
consecutive blocks of 20 instead, as PASCAL-5i does; this is not that split.) Episodes:
:func:`gpoa.protocols.coco20i_episodes`, 1,000 per fold over the val2014 images.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from gpoa.datasets.common import Benchmark, Index, Item, Options, fold_episodes
from gpoa.errors import InputError, UsageError
from gpoa.protocols import EPISODES_PER_FOLD, coco20i_episodes, coco20i_folds

NAME = "coco20i"
SPLITS = {"train": "train2014", "val": "val2014"}
LAYOUT = """  <src>/train2014/*.jpg   and/or   <src>/val2014/*.jpg
  <src>/annotations/instances_train2014.json   and/or   <src>/annotations/instances_val2014.json"""


def domain_name(category: str) -> str:
    return category.strip().replace(" ", "_")


def load_coco(path: Path):
    """A pycocotools COCO index of ``path`` (its progress prints silenced)."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise UsageError("converting COCO-20i needs pycocotools: pip install 'pycocotools>=2.0.7'") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the annotation file '{path}' ({exc.__class__.__name__}: {exc})") from None


def available_splits(src: Path) -> dict:
    """{split: (image folder, annotation file)} of the splits present; UsageError when none or half."""
    found = {}
    for split, folder in SPLITS.items():
        images, annotations = src / folder, src / "annotations" / f"instances_{folder}.json"
        if annotations.is_file() and not images.is_dir():
            raise UsageError(f"'{annotations}' is there but its image folder '{images}' is missing. "
                             f"Expected layout:\n{LAYOUT}")
        if images.is_dir() and not annotations.is_file():
            raise UsageError(f"'{images}' is there but its annotation file '{annotations}' is missing. "
                             f"Expected layout:\n{LAYOUT}")
        if images.is_dir():
            found[split] = (images, annotations)
    if not found:
        raise UsageError(f"'{src}' holds neither train2014/ + annotations/instances_train2014.json nor "
                         f"val2014/ + annotations/instances_val2014.json. Expected layout:\n{LAYOUT}")
    return found


def category_labels(coco, image_id: int, names: dict, domains: tuple, size: tuple, path: Path) -> dict:
    """{domain: (union of its instances, its crowd regions outside that union)} for one image."""
    info = coco.imgs[image_id]
    if (info["width"], info["height"]) != tuple(size):
        raise InputError(path, f"is {size[0]}x{size[1]} pixels but its annotations say "
                               f"{info['width']}x{info['height']}", "use the official COCO 2014 image")
    shape = (info["height"], info["width"])
    labels = {domain: (np.zeros(shape, bool), np.zeros(shape, bool)) for domain in domains}
    for annotation in coco.imgToAnns.get(image_id, []):
        domain = names.get(annotation["category_id"])
        if domain in labels:
            try:
                region = coco.annToMask(annotation).astype(bool)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise InputError(path, f"annotation {annotation.get('id')} has an unreadable segmentation "
                                       f"({exc.__class__.__name__}: {exc})") from None
            labels[domain][1 if annotation.get("iscrowd") else 0][...] |= region
    return {domain: (mask, crowd & ~mask) for domain, (mask, crowd) in labels.items()}


def split_items(coco, folder: Path, split: str, names: dict) -> tuple:
    """(items, failures) of one split: every image with a non-crowd instance."""
    items, failures = [], []
    for image_id in sorted(coco.imgs):
        domains = sorted({names[a["category_id"]] for a in coco.imgToAnns.get(image_id, [])
                          if not a.get("iscrowd") and a["category_id"] in names})
        if not domains:
            continue
        path = folder / coco.imgs[image_id]["file_name"]
        if not path.is_file():
            failures.append(f"{path}: listed in the {split} annotations but the image file does not exist")
            continue
        items.append(Item(stem=path.stem, image=path, split=split, domains=tuple(domains),
                          load=lambda size, i=image_id, d=tuple(domains), p=path:
                          category_labels(coco, i, names, d, size, p)))
    return items, failures


def index(src: Path, options: Options) -> Index:
    items, failures, categories = [], [], None
    splits = available_splits(src)
    for split, (folder, annotation_file) in splits.items():
        coco = load_coco(annotation_file)
        ordered = [coco.cats[k]["name"] for k in sorted(coco.cats)]
        if categories is not None and ordered != categories:
            raise UsageError(f"'{annotation_file}' lists other categories than the other split's annotation file")
        categories = ordered
        names = {k: domain_name(coco.cats[k]["name"]) for k in coco.cats}
        split_found, split_failures = split_items(coco, folder, split, names)
        items += split_found
        failures += split_failures
    folds = {fold: [domain_name(c) for c in names] for fold, names in coco20i_folds(categories).items()}
    notes = [f"{len(categories)} categories; folds: category index (sorted by id) modulo 4 (HSNet/Matcher)"]
    if len(categories) != 80:
        notes.append(f"the annotations list {len(categories)} categories, not COCO's 80: folds are not COCO-20i's")
    if "val" not in splits:
        notes.append("no val2014: the episodes are drawn from the train2014 images")
    n = options.episodes or EPISODES_PER_FOLD

    def episodes(members: dict) -> list:
        pool = members.get("val") or members.get("train", {})
        return fold_episodes(folds, pool, coco20i_episodes, n, options.seed)

    protocol = (f"COCO-20i (HSNet): {n} episodes per fold over the val2014 images; each draws a class of the "
                "fold, a query image of it and a support among its other images")
    return Index(items=items, episodes=episodes, protocol=protocol, folds=folds, notes=notes, failures=failures)


BENCHMARK = Benchmark(name=NAME, title="COCO-20i (COCO 2014)", layout=LAYOUT, index=index)
