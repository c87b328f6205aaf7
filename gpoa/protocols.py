"""Few-shot segmentation benchmarks: their fixed-seed episodes and their metrics, as the anchors
(HSNet, Matcher, PerSAM, Point Prompt Defender) compute them.

Episodes
--------
An :class:`Episode` is one problem: segment the object of ``domain`` in the ``query`` image given the
``support`` image(s) and their masks. Stems name files of a converted benchmark
(``python -m gpoa.datasets``): ``DIR/<domain>/image/<stem>.*``, ``DIR/<domain>/mask/<stem>.png`` and,
where some pixels are left out of the metrics, ``DIR/<domain>/ignore/<stem>.png``.

- **PASCAL-5i** (:func:`pascal5i_episodes`): 1,000 episodes per fold; fold ``i`` holds the classes
  ``5i+1 .. 5i+5`` of the VOC order (:data:`PASCAL_CLASSES`). As in HSNet's loader, the fold's
  (validation image, class) pairs are the queries, visited in turn and cycled up to 1,000; HSNet visits
  them in its list file's order, here in a seeded permutation of the sorted pairs (so every pair is a
  query at least once when there are fewer than 1,000, and which ones repeat is drawn by the seed).
  The support is drawn from the class's other images.
- **COCO-20i** (:func:`coco20i_episodes`): 1,000 episodes per fold, each a class of the fold, a query
  image of that class and a support among the class's other images, all drawn with the seeded RNG
  (HSNet's COCO loader). Folds: the interleaved split of HSNet and Matcher, fold ``i`` = the categories
  whose index in the 80 categories sorted by id is ``i`` modulo 4 (:func:`coco20i_folds`).
- **FSS-1000** (:func:`fss1000_episodes`): HSNet's and Matcher's test protocol: every image of every
  test class is a query once (10 per class, 2,400 episodes for the 240 test classes), with one support
  drawn from the class's other images; ``queries_per_class`` keeps a seeded subset (e.g. 5 per class).
- **ISIC 2018, Kvasir-SEG, CVC-ClinicDB** (:func:`one_shot_episodes`, Point Prompt Defender's
  one-shot setting): one reference drawn with the seed from the training images, every test image a
  query with that reference.

A class needs ``shots + 1`` images to give an episode; classes with fewer are left out. Episodes are a
plain list, deterministic for a seed and independent of how many processes run them: process ``rank``
of ``world`` runs ``shard(episodes, rank, world)``. The random streams are
``numpy.random.default_rng((seed, fold))`` per fold and ``default_rng((seed, crc32(class name)))`` per
class, so one fold's or class's episodes do not depend on the others.

Metrics
-------
:class:`SegmentationCounts` accumulates integer pixel counts per class and per image, from which:

- ``miou()``: class-wise mIoU (HSNet, Matcher): per class, the intersections and the unions of the
  foreground are **summed** over all its episodes, IoU = sum / sum; then the mean over classes.
- ``fb_iou()``: FB-IoU: the mean of the foreground IoU and the background IoU, each from the
  intersections and unions summed over every episode of every class.
- ``mdsc()`` and ``mean_image_iou()``: the medical sets' mDSC and mIoU: the mean over images of the
  per-image Dice and IoU.

Pixels marked ignore (PASCAL's boundary label 255, COCO's crowd regions) are left out of every count.
Empty unions follow :mod:`gpoa.metrics`: both masks empty counts as a perfect 1.0. Counts are
integers and means are taken with ``math.fsum``, so merging per-process partial counts
(:meth:`SegmentationCounts.merge`) gives exactly the one-process result.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from gpoa.errors import InputError
from gpoa.io import atomic_write_json

PathLike = Union[str, Path]
EPISODES_FORMAT = "gpoa-episodes/1"
EPISODES_PER_FOLD = 1000

#: the 20 PASCAL VOC classes in label order (label index = position + 1)
PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                  "train", "tvmonitor")
PASCAL_FOLDS = 4
COCO_FOLDS = 4


# ----- episodes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    """Segment ``domain``'s object in ``query`` given ``support`` (stems within ``domain``)."""

    domain: str
    support: tuple
    query: str
    fold: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "support", tuple(str(s) for s in self.support))
        if not self.support:
            raise ValueError(f"episode of '{self.domain}' has no support image")
        if self.query in self.support:
            raise ValueError(f"episode of '{self.domain}': query '{self.query}' is also a support image")

    def to_dict(self) -> dict:
        return {"fold": self.fold, "domain": self.domain, "support": list(self.support), "query": self.query}

    @classmethod
    def from_dict(cls, data: Mapping) -> Episode:
        fold = data.get("fold")
        return cls(domain=str(data["domain"]), support=tuple(data["support"]), query=str(data["query"]),
                   fold=None if fold is None else int(fold))


def natural_key(stem: str) -> list:
    """Sort key that orders '2' before '10' (digit runs compare as numbers)."""
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", stem))]


def shard(episodes: Sequence[Episode], rank: int, world: int) -> list:
    """The episodes process ``rank`` of ``world`` runs: ``episodes[rank::world]``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank} and world {world}")
    return list(episodes[rank::world])


def _eligible(members: Mapping[str, Sequence[str]], shots: int) -> dict:
    """Classes with at least ``shots + 1`` images, stems sorted naturally (input order never matters)."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    sorted_members = {name: sorted(set(stems), key=natural_key) for name, stems in members.items()}
    return {name: stems for name, stems in sorted(sorted_members.items()) if len(stems) > shots}


def _support(rng: np.random.Generator, stems: Sequence[str], query: str, shots: int) -> tuple:
    others = [stem for stem in stems if stem != query]
    picks = rng.choice(len(others), size=shots, replace=False)
    return tuple(others[int(i)] for i in picks)


def _class_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng((seed, zlib.crc32(name.encode("utf-8"))))


def pascal5i_fold_classes(fold: int) -> list:
    """Class names of PASCAL-5i fold ``fold`` (0-3): labels 5*fold+1 .. 5*fold+5."""
    if not 0 <= fold < PASCAL_FOLDS:
        raise ValueError(f"PASCAL-5i has folds 0-{PASCAL_FOLDS - 1}, got {fold}")
    return list(PASCAL_CLASSES[5 * fold:5 * fold + 5])


def coco20i_folds(categories: Sequence[str]) -> dict:
    """{fold: category names} of COCO-20i for ``categories`` sorted by category id: the category of
    index ``k`` is in fold ``k % 4`` (the interleaved split of HSNet and Matcher)."""
    return {fold: [name for k, name in enumerate(categories) if k % COCO_FOLDS == fold] for fold in range(COCO_FOLDS)}


def pascal5i_episodes(members: Mapping[str, Sequence[str]], fold: int, n: int = EPISODES_PER_FOLD,
                      seed: int = 0, shots: int = 1) -> list:
    """``n`` episodes of one fold; ``members`` maps each of the fold's classes to its validation stems.
    Queries cycle through a seeded permutation of the sorted (class, image) pairs."""
    classes = _eligible(members, shots)
    pairs = [(name, stem) for name, stems in classes.items() for stem in stems]
    if not pairs or n < 1:
        return []
    rng = np.random.default_rng((seed, fold))
    order = rng.permutation(len(pairs))
    episodes = []
    for k in range(n):
        name, query = pairs[int(order[k % len(pairs)])]
        episodes.append(Episode(name, _support(rng, classes[name], query, shots), query, fold))
    return episodes


def coco20i_episodes(members: Mapping[str, Sequence[str]], fold: int, n: int = EPISODES_PER_FOLD,
                     seed: int = 0, shots: int = 1) -> list:
    """``n`` episodes of one fold; ``members`` maps each of the fold's classes to its validation stems.
    Each episode draws a class, then a query image of it, then the support."""
    classes = _eligible(members, shots)
    names = list(classes)
    if not names or n < 1:
        return []
    rng = np.random.default_rng((seed, fold))
    episodes = []
    for _ in range(n):
        name = names[int(rng.integers(len(names)))]
        stems = classes[name]
        query = stems[int(rng.integers(len(stems)))]
        episodes.append(Episode(name, _support(rng, stems, query, shots), query, fold))
    return episodes


def fss1000_episodes(members: Mapping[str, Sequence[str]], seed: int = 0,
                     queries_per_class: Optional[int] = None, shots: int = 1) -> list:
    """Episodes of the FSS-1000 test classes (``members``: class → stems): every image a query once,
    or a seeded subset of ``queries_per_class``, classes and queries in sorted order."""
    episodes = []
    for name, stems in _eligible(members, shots).items():
        rng = _class_rng(seed, name)
        queries = stems
        if queries_per_class is not None and queries_per_class < len(stems):
            picks = sorted(int(i) for i in rng.choice(len(stems), size=queries_per_class, replace=False))
            queries = [stems[i] for i in picks]
        episodes += [Episode(name, _support(rng, stems, query, shots), query) for query in queries]
    return episodes


def one_shot_episodes(domain: str, references: Sequence[str], queries: Sequence[str], seed: int = 0,
                      limit: Optional[int] = None) -> list:
    """One reference drawn from ``references``; every stem of ``queries`` (but the reference) a query
    with it, in sorted order; ``limit`` keeps a seeded subset of the queries."""
    references = sorted(set(references), key=natural_key)
    if not references:
        return []
    rng = _class_rng(seed, domain)
    reference = references[int(rng.integers(len(references)))]
    targets = sorted({stem for stem in queries if stem != reference}, key=natural_key)
    if limit is not None and limit < len(targets):
        targets = [targets[int(i)] for i in sorted(rng.choice(len(targets), size=limit, replace=False))]
    return [Episode(domain, (reference,), query) for query in targets]


def episodes_to_json(episodes: Sequence[Episode], **meta) -> dict:
    """The content of ``episodes.json``: ``meta`` (benchmark, seed, protocol, ...) and the episodes."""
    return {"format": EPISODES_FORMAT, **meta, "count": len(episodes),
            "episodes": [episode.to_dict() for episode in episodes]}


def episodes_from_json(data: Mapping) -> list:
    return [Episode.from_dict(item) for item in data["episodes"]]


def write_episodes(path: PathLike, episodes: Sequence[Episode], **meta) -> None:
    atomic_write_json(path, episodes_to_json(episodes, **meta))


def read_episodes(path: PathLike) -> list:
    """The episodes of an ``episodes.json``; a missing or malformed file is an InputError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != EPISODES_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {EPISODES_FORMAT!r}")
        return episodes_from_json(data)
    except FileNotFoundError:
        raise InputError(path, "episode file does not exist",
                         "write it with: python -m gpoa.datasets NAME --src RAW --out DIR") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"is not a valid episode file ({exc.__class__.__name__}: {exc})",
                         "write it again with python -m gpoa.datasets") from None


# ----- metrics ---------------------------------------------------------------------------------
def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 1.0 for an empty union (both masks empty: perfect agreement)."""
    return 1.0 if denominator == 0 else numerator / denominator


class SegmentationCounts:
    """Mergeable pixel counts of binary segmentations (see the module docstring for the metrics).

    ``classes[name]`` = [background intersection, background union, foreground intersection,
    foreground union, episodes]; ``images`` = one (class, intersection, prediction, truth) per
    :meth:`add`, foreground pixel counts without the ignored pixels.
    """

    FIELDS = ("bg_intersection", "bg_union", "fg_intersection", "fg_union", "episodes")

    def __init__(self) -> None:
        self.classes: dict = {}
        self.images: list = []

    def add(self, name: str, prediction: np.ndarray, truth: np.ndarray,
            ignore: Optional[np.ndarray] = None) -> float:
        """Count one episode of class ``name`` (boolean (H, W) masks); returns its foreground IoU."""
        prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
        if prediction.shape != truth.shape or (ignore is not None and np.shape(ignore) != truth.shape):
            shapes = [prediction.shape, truth.shape] + ([np.shape(ignore)] if ignore is not None else [])
            raise ValueError(f"prediction, truth and ignore masks differ in shape: {shapes}")
        valid = np.ones(truth.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
        fg_intersection = int(np.count_nonzero(prediction & truth & valid))
        fg_union = int(np.count_nonzero((prediction | truth) & valid))
        bg_intersection = int(np.count_nonzero(~prediction & ~truth & valid))
        bg_union = int(np.count_nonzero((~prediction | ~truth) & valid))
        row = self.classes.setdefault(str(name), [0] * len(self.FIELDS))
        for index, value in enumerate((bg_intersection, bg_union, fg_intersection, fg_union, 1)):
            row[index] += value
        self.images.append((str(name), fg_intersection, int(np.count_nonzero(prediction & valid)),
                            int(np.count_nonzero(truth & valid))))
        return _ratio(fg_intersection, fg_union)

    def merge(self, other: SegmentationCounts) -> SegmentationCounts:
        """Add ``other``'s counts to these (e.g. another process's share); returns self."""
        for name, counts in other.classes.items():
            row = self.classes.setdefault(name, [0] * len(self.FIELDS))
            for index, value in enumerate(counts):
                row[index] += int(value)
        self.images += [tuple(image) for image in other.images]
        return self

    @classmethod
    def merged(cls, parts: Sequence[SegmentationCounts]) -> SegmentationCounts:
        total = cls()
        for part in parts:
            total.merge(part)
        return total

    # ----- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"classes": {name: dict(zip(self.FIELDS, counts)) for name, counts in sorted(self.classes.items())},
                "images": [list(image) for image in self.images]}

    @classmethod
    def from_dict(cls, data: Mapping) -> SegmentationCounts:
        counts = cls()
        counts.classes = {str(name): [int(row[key]) for key in cls.FIELDS] for name, row in data["classes"].items()}
        counts.images = [(str(name), int(i), int(p), int(t)) for name, i, p, t in data["images"]]
        return counts

    # ----- metrics ---------------------------------------------------------------------------
    def class_iou(self) -> dict:
        """{class: foreground IoU from the intersections and unions summed over its episodes}."""
        return {name: _ratio(row[2], row[3]) for name, row in sorted(self.classes.items())}

    def miou(self, classes: Optional[Sequence[str]] = None) -> float:
        """Class-wise mIoU over ``classes`` (default: every class counted)."""
        ious = self.class_iou()
        names = sorted(ious) if classes is None else list(classes)
        missing = [name for name in names if name not in ious]
        if missing or not names:
            raise ValueError(f"no episodes counted for the classes {missing or names}")
        return math.fsum(ious[name] for name in names) / len(names)

    def fb_iou(self) -> float:
        """Mean of the background and foreground IoU, each summed over every episode."""
        totals = [sum(row[index] for row in self.classes.values()) for index in range(4)]
        if not self.classes:
            raise ValueError("no episodes counted")
        return (_ratio(totals[0], totals[1]) + _ratio(totals[2], totals[3])) / 2.0

    def _image_mean(self, score) -> float:
        if not self.images:
            raise ValueError("no images counted")
        return math.fsum(score(i, p, t) for _, i, p, t in self.images) / len(self.images)

    def mdsc(self) -> float:
        """Mean over images of the per-image Dice."""
        return self._image_mean(lambda i, p, t: _ratio(2 * i, p + t))

    def mean_image_iou(self) -> float:
        """Mean over images of the per-image IoU (the medical sets' mIoU)."""
        return self._image_mean(lambda i, p, t: _ratio(i, p + t - i))

    def summary(self) -> dict:
        """Every metric, for a results file."""
        return {"miou": self.miou(), "fb_iou": self.fb_iou(), "mdsc": self.mdsc(),
                "mean_image_iou": self.mean_image_iou(), "class_iou": self.class_iou(),
                "episodes": len(self.images)}
