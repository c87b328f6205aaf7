"""FSS-1000 (Li et al., CVPR 2020): 1,000 object classes of 10 images each, one mask per image.

Source layout (the official ``fewshot_data`` folder)::

    <src>/<class>/<n>.jpg    the image
    <src>/<class>/<n>.png    its mask, white = object

Output: one domain per class, ``OUT/<class>/`` (stems ``1`` .. ``10``); each class's split is in
dataset.json (``splits``) and episodes.json holds the test classes' episodes
(:func:`gpoa.protocols.fss1000_episodes`: every test image a query once, one support).

Class split. The official split is 520 train / 240 val / 240 test classes (the lists HSNet ships as
``data/splits/fss/{trn,val,test}.txt``). They are not available offline, so give them with
``--split-file FILE``: a JSON object ``{"train": [...], "val": [...], "test": [...]}`` or a text file
of class names one per line under the section lines ``[train]``, ``[val]`` and ``[test]``
(``trn`` is accepted for ``train``; blank lines and ``#`` comments are skipped). Without it the split
is deterministic: class names sorted, permuted by ``numpy.random.default_rng(SPLIT_SEED)``, the
first ``round(n * 240 / 1000)`` (at least one) are test, the next ``round(n * 240 / 1000)`` val and
the rest train: exactly 520/240/240 for the 1,000 classes. ``--seed`` changes the episodes, never the
split. Masks are read as HSNet reads them: foreground is gray >= 128.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from gpoa.datasets.common import Benchmark, Index, Options, binary_item, pair_by_stem
from gpoa.errors import UsageError
from gpoa.layout import list_images
from gpoa.protocols import fss1000_episodes

NAME = "fss1000"
SPLIT_SEED = 1000
SPLITS = ("train", "val", "test")
PROPORTIONS = {"test": 240 / 1000, "val": 240 / 1000}  # train: the rest (520 / 1000)
LAYOUT = """  <src>/<class>/<n>.jpg   image (e.g. <src>/abacus/1.jpg)
  <src>/<class>/<n>.png   its mask, white = object (e.g. <src>/abacus/1.png)"""


def class_folders(src: Path) -> list:
    """Subfolders of ``src`` holding at least one .jpg image, sorted by name."""
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(f.suffix.lower() == ".jpg" for f in list_images(p)))


def no_classes_error(src: Path) -> UsageError:
    hint = ""
    nested = [p for p in src.iterdir() if p.is_dir() and class_folders(p)]
    if nested:
        hint = f" (did you mean --src '{nested[0]}'? It holds class folders)"
    return UsageError(f"'{src}' holds no FSS-1000 class folders{hint}. Expected layout:\n{LAYOUT}")


def default_split(classes: list) -> dict:
    """{class: split} of the deterministic split of the module docstring."""
    names = sorted(classes)
    order = [names[int(i)] for i in np.random.default_rng(SPLIT_SEED).permutation(len(names))]
    n_test = max(1, round(len(names) * PROPORTIONS["test"])) if names else 0
    n_val = min(round(len(names) * PROPORTIONS["val"]), len(names) - n_test)
    split = {name: "test" for name in order[:n_test]}
    split.update({name: "val" for name in order[n_test:n_test + n_val]})
    split.update({name: "train" for name in order[n_test + n_val:]})
    return split


def parse_split_text(text: str, path: Path) -> dict:
    """{split: [classes]} of the ``[split]``-sectioned text format."""
    lists: dict = {}
    current: Optional[str] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip().lower()
            lists.setdefault(current, [])
        elif current is None:
            raise UsageError(f"split file '{path}' line {number}: class '{line}' comes before any "
                             "[train] / [val] / [test] section line")
        else:
            lists[current].append(line)
    return lists


def read_split_file(path: Path) -> dict:
    """{class: split} from a split file (JSON or sectioned text, see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read split file '{path}' ({exc})") from None
    if text.lstrip().startswith("{"):
        try:
            lists = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"split file '{path}' is not valid JSON ({exc})") from None
    else:
        lists = parse_split_text(text, path)
    lists = {("train" if str(key).lower() == "trn" else str(key).lower()): value for key, value in lists.items()}
    unknown = sorted(set(lists) - set(SPLITS))
    if unknown or not all(isinstance(v, list) for v in lists.values()):
        raise UsageError(f"split file '{path}' must list class names under train, val and test only "
                         f"(found {sorted(lists)})")
    split: dict = {}
    for name, classes in lists.items():
        for cls in map(str, classes):
            if split.setdefault(cls, name) != name:
                raise UsageError(f"split file '{path}' lists class '{cls}' under both {split[cls]} and {name}")
    return split


def index(src: Path, options: Options) -> Index:
    folders = class_folders(src)
    if not folders:
        raise no_classes_error(src)
    names = [folder.name for folder in folders]
    notes = []
    if options.split_file is not None:
        listed = read_split_file(Path(options.split_file))
        split = {name: listed.get(name, "unlisted") for name in names}
        absent = sorted(set(listed) - set(names))
        unlisted = sorted(name for name, s in split.items() if s == "unlisted")
        notes.append(f"class split from '{options.split_file}'")
        if absent:
            notes.append(f"{len(absent)} class(es) of the split file are not in the source: {absent[:10]}")
        if unlisted:
            notes.append(f"{len(unlisted)} class(es) are in no list of the split file (split 'unlisted'): "
                         f"{unlisted[:10]}")
    else:
        split = default_split(names)
        notes.append(f"deterministic class split (no --split-file): sorted names permuted with seed {SPLIT_SEED}, "
                     "240/1000 test, 240/1000 val, the rest train")
    items, failures = [], []
    for folder in folders:
        images = [p for p in list_images(folder) if p.suffix.lower() == ".jpg"]
        masks = {p.stem: p for p in list_images(folder) if p.suffix.lower() == ".png"}
        pairs, missing = pair_by_stem(images, masks, folder, lambda stem: f"{stem}.png")
        failures += missing
        items += [binary_item(image.stem, image, mask, split[folder.name], folder.name) for image, mask in pairs]
    queries = options.episodes

    def episodes(members: dict) -> list:
        return fss1000_episodes(members.get("test", {}), seed=options.seed, queries_per_class=queries)

    protocol = ("FSS-1000 test classes (HSNet/Matcher): "
                + ("every image of a test class is a query once" if queries is None
                   else f"{queries} seeded queries per test class")
                + ", one support drawn from the class's other images")
    counts = {s: sum(v == s for v in split.values()) for s in (*SPLITS, "unlisted") if s in split.values()}
    return Index(items=items, episodes=episodes, protocol=protocol, notes=notes, failures=failures,
                 extra={"class_split": counts})


BENCHMARK = Benchmark(name=NAME, title="FSS-1000", layout=LAYOUT, index=index)
