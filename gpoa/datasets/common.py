"""What every benchmark converter shares: the output layout, resumable atomic writing, the records.

A converter module reads a benchmark's own layout and returns an :class:`Index`: one :class:`Item`
per source image (its stem, split and the domains it belongs to, plus a function that turns it into
a mask and optional ignore mask per domain) and the episode protocol. :func:`convert` writes it:

```
OUT/
├── <domain>/
│   ├── image/<stem>.<ext>   the source image, copied byte for byte
│   ├── mask/<stem>.png      binary 0/255 PNG at the image's size
│   └── ignore/<stem>.png    only where some pixels are left out of the metrics (255 = ignore)
├── episodes.json            the benchmark's fixed-seed episodes (gpoa.protocols)
├── splits.json              {split: {domain: [stems]}} of every converted image
└── dataset.json             benchmark, source, splits/folds → domains, counts, notes, failures
```

Every file is written atomically, an item's image last; an item whose image and masks are all there
is skipped, so a rerun resumes. An unreadable item is reported and skipped, the others converted.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from gpoa.errors import InputError, UsageError
from gpoa.io import (
    JPEG_EXTENSIONS,
    atomic_write_bytes,
    atomic_write_json,
    read_image,
    read_mask,
    write_mask,
)
from gpoa.layout import list_images
from gpoa.protocols import write_episodes

PathLike = Union[str, Path]
#: (mask, ignore or None): boolean (H, W) arrays at the image's size
Labels = tuple
DATASET_FORMAT = "gpoa-benchmark/1"


@dataclass(frozen=True)
class Options:
    """Settings of a conversion: the episodes' seed, how many (None: the benchmark's default),
    for FSS-1000 a file with the official class split, for DAVIS the year and the split (None:
    its defaults), and whether to show progress bars."""

    seed: int = 0
    episodes: Optional[int] = None
    split_file: Optional[Path] = None
    year: Optional[int] = None
    split: Optional[str] = None
    progress: bool = True


@dataclass
class Item:
    """One source image: copied to every domain of ``domains`` under ``stem`` with the mask
    ``load(size)[domain]`` (``size`` = the image's (width, height))."""

    stem: str
    image: Path
    split: str
    domains: tuple
    load: Callable[[tuple], Mapping[str, Labels]]


@dataclass
class Index:
    """A benchmark's source, read: the items to write and what dataset.json records about them.

    ``episodes(members)`` makes the episode list from ``members`` = {split: {domain: [stems]}} of
    the items that were converted; ``folds`` {fold: [domains]} for the fold-based benchmarks;
    ``failures`` are messages about source files that cannot be used (reported, skipped);
    ``variant`` the settings that choose what is converted (DAVIS's year and split): a folder
    converted with one variant is not added to with another."""

    items: list
    episodes: Callable[[dict], list]
    protocol: str
    folds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    variant: dict = field(default_factory=dict)


@dataclass
class Report:
    """What one conversion did; ``exit_code`` is 1 when any item failed."""

    benchmark: str
    out: Path
    images: int
    pairs: int
    domains: int
    episodes: int
    written: int
    skipped: int
    failures: list

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def summary(self) -> str:
        text = (f"{self.benchmark}: {self.images} images -> {self.pairs} pairs in {self.domains} domains "
                f"({self.written} written, {self.skipped} already there), {self.episodes} episodes -> {self.out}")
        if self.failures:
            shown = "\n  ".join(self.failures[:20])
            more = f"\n  ... and {len(self.failures) - 20} more (all in dataset.json)" if len(self.failures) > 20 else ""
            text += f"\n{len(self.failures)} source file(s) could not be converted and were skipped:\n  {shown}{more}"
        return text


# ----- reading sources ---------------------------------------------------------------------------
def require_folder(folder: Path, what: str, layout: str) -> Path:
    """``folder`` if it is a directory, else a UsageError saying what it should hold and the layout."""
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is missing: {what}. Expected layout:\n{layout}")
    return folder


def require_images(folder: Path, what: str, layout: str, suffixes: Optional[Sequence[str]] = None) -> list:
    """The image files of an existing ``folder`` (only ``suffixes`` when given), never none."""
    images = list_images(require_folder(folder, what, layout))
    if suffixes is not None:
        images = [p for p in images if p.suffix.lower() in suffixes]
    if not images:
        kinds = ", ".join(suffixes) if suffixes else "image"
        raise UsageError(f"'{folder}' holds no {kinds} files ({what}). Expected layout:\n{layout}")
    return images


def read_binary_mask(path: Path, size: tuple) -> np.ndarray:
    """A benchmark's binary mask file as bool (H, W) at ``size`` (width, height).

    Foreground is every pixel above half the range, the anchors' rule for 0/255 masks (HSNet reads
    FSS-1000 masks as >= 128; polyp loaders divide by the maximum and cut at 0.5): anti-aliased or
    JPEG-compressed edges do not grow the object. JPEG masks go through :func:`gpoa.io.read_mask`,
    which applies the same rule. A 0/1 mask (maximum 1) keeps its ones.
    """
    if path.suffix.lower() in JPEG_EXTENSIONS:
        return read_mask(path, size)
    gray = read_image(path).max(axis=2)
    check_size(path, gray, size)
    return gray > 127 if gray.max() > 1 else gray > 0


def read_label_png(path: Path, fix: str) -> np.ndarray:
    """The label indices (H, W) uint8 of a palette or 8-bit gray PNG (class or object ids); an
    InputError naming ``path`` when it is missing, unreadable or of another mode (``fix``: which
    files to use instead)."""
    if not path.is_file():
        raise InputError(path, "label file does not exist")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(path, f"is a {im.mode} image, not a palette or 8-bit index PNG", fix)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"cannot be read as a label PNG ({exc.__class__.__name__}: {exc})") from None


def check_size(path: Path, array: np.ndarray, size: tuple) -> None:
    """InputError naming ``path`` unless the (H, W) ``array`` is ``size`` (width, height)."""
    if (array.shape[1], array.shape[0]) != tuple(size):
        raise InputError(path, f"is {array.shape[1]}x{array.shape[0]} pixels but its image is {size[0]}x{size[1]}",
                         "a mask must have exactly the size of its image")


def pair_by_stem(images: Sequence[Path], masks: Mapping[str, Path], mask_folder: Path,
                 mask_name: Callable[[str], str]) -> tuple:
    """([(image, mask)], [failure messages]) for images paired with ``masks`` {image stem: path};
    ``mask_name(stem)`` is the file name a missing mask should have (for the message)."""
    pairs, failures = [], []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            failures.append(f"{image}: has no mask (expected '{mask_folder / mask_name(image.stem)}')")
        else:
            pairs.append((image, mask))
    return pairs, failures


def binary_item(stem: str, image: Path, mask: Path, split: str, domain: str) -> Item:
    """An item of a one-domain benchmark whose masks are binary files (read_binary_mask)."""
    def load(size: tuple) -> dict:
        return {domain: (read_binary_mask(mask, size), None)}

    return Item(stem=stem, image=image, split=split, domains=(domain,), load=load)


# ----- writing ---------------------------------------------------------------------------------
def output_paths(out: Path, domain: str, item: Item) -> dict:
    folder = out / domain
    return {"image": folder / "image" / f"{item.stem}{item.image.suffix}",
            "mask": folder / "mask" / f"{item.stem}.png",
            "ignore": folder / "ignore" / f"{item.stem}.png"}


def is_written(out: Path, item: Item) -> bool:
    """Every domain of ``item`` has its image and mask (the image is written last)."""
    return all(paths["image"].is_file() and paths["mask"].is_file()
               for paths in (output_paths(out, domain, item) for domain in item.domains))


def write_item(out: Path, item: Item) -> None:
    """Read, check and write one item: ignore and mask PNGs first, then the image copy."""
    image = read_image(item.image)  # fails early on an unreadable image and gives its size
    size = (image.shape[1], image.shape[0])
    labels = item.load(size)
    data = item.image.read_bytes()
    for domain in item.domains:
        mask, ignore = labels[domain]
        if np.shape(mask) != image.shape[:2] or (ignore is not None and np.shape(ignore) != image.shape[:2]):
            raise InputError(item.image, f"its labels for '{domain}' are {np.shape(mask)[::-1]} pixels, the image "
                                         f"{size[0]}x{size[1]}", "a mask must have exactly the size of its image")
        paths = output_paths(out, domain, item)
        if ignore is not None and np.any(ignore):
            write_mask(paths["ignore"], ignore)
        write_mask(paths["mask"], mask)
        atomic_write_bytes(paths["image"], data)


def write_items(out: Path, items: Sequence[Item], desc: str, progress: bool = True) -> tuple:
    """Write every item not written yet: (converted items, written count, skipped count, failures)."""
    converted, failures = [], []
    written = skipped = 0
    for item in tqdm(items, desc=desc, unit="img", disable=not progress, file=sys.stderr):
        if is_written(out, item):
            skipped += 1
        else:
            try:
                write_item(out, item)
            except InputError as exc:
                failures.append(str(exc))
                continue
            written += 1
        converted.append(item)
    return converted, written, skipped, failures


def check_stems(items: Sequence[Item]) -> None:
    """Two items with one stem in one domain would overwrite each other: a UsageError."""
    seen: dict = {}
    for item in items:
        for domain in item.domains:
            other = seen.setdefault((domain, item.stem), item.image)
            if other != item.image:
                raise UsageError(f"'{other}' and '{item.image}' would both become '{domain}/image/{item.stem}'; "
                                 "the source holds two images with one name")


def fold_episodes(folds: dict, pool: dict, draw: Callable, n: int, seed: int) -> list:
    """Every fold's episodes: ``draw(members, fold, n, seed)`` over the classes of the fold found in
    ``pool`` ({class: [stems]})."""
    return [episode for fold, names in folds.items()
            for episode in draw({c: pool[c] for c in names if c in pool}, fold, n, seed)]


def members_of(items: Sequence[Item]) -> dict:
    """{split: {domain: [stems]}} of ``items``, sorted."""
    members: dict = {}
    for item in items:
        for domain in item.domains:
            members.setdefault(item.split, {}).setdefault(domain, []).append(item.stem)
    return {split: {domain: sorted(stems) for domain, stems in sorted(domains.items())}
            for split, domains in sorted(members.items())}


def check_folders(src: Path, out: Path, benchmark: str) -> None:
    """The source exists; the output is neither inside the source nor around it, nor another benchmark's."""
    if not src.is_dir():
        raise UsageError(f"source folder '{src}' does not exist or is not a folder; pass the unpacked "
                         f"{benchmark} download to --src")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder (it is created when missing)")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise UsageError(f"--out '{out}' and --src '{src}' overlap; write the converted benchmark to a folder "
                         "outside the source (the source is never modified)")
    record = out / "dataset.json"
    if record.is_file():
        previous = previous_record(out).get("benchmark")
        if previous != benchmark:
            raise UsageError(f"'{out}' already holds a converted benchmark '{previous}' (see {record}); "
                             f"convert {benchmark} into another folder")


def previous_record(out: Path) -> dict:
    """The dataset.json of an earlier conversion into ``out`` ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_variant(out: Path, benchmark: str, variant: dict) -> None:
    """A UsageError when ``out`` holds ``benchmark`` converted with another variant (see :class:`Index`)."""
    previous = previous_record(out)
    if previous and previous.get("variant", {}) != variant:
        def say(settings: dict) -> str:
            return ", ".join(f"{key} {value}" for key, value in settings.items()) or "the default settings"

        raise UsageError(f"'{out}' already holds {benchmark} converted with {say(previous.get('variant', {}))} "
                         f"(see {out / 'dataset.json'}); convert {say(variant)} into another folder")


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: ``index(src, options)`` reads its layout (described by ``layout``)."""

    name: str
    title: str
    layout: str
    index: Callable[[Path, Options], Index]


def convert_benchmark(benchmark: Benchmark, src: PathLike, out: PathLike, options: Optional[Options] = None) -> Report:
    """Convert the benchmark at ``src`` into ``out`` (layout of the module docstring)."""
    src, out, options = Path(src), Path(out), options or Options()
    name = benchmark.name
    check_folders(src, out, name)
    index = benchmark.index(src, options)
    check_variant(out, name, index.variant)
    check_stems(index.items)
    converted, written, skipped, write_failures = write_items(out, index.items, name, options.progress)
    failures = index.failures + write_failures
    members = members_of(converted)
    episodes = index.episodes(members)
    write_episodes(out / "episodes.json", episodes, benchmark=name, seed=options.seed, protocol=index.protocol)
    atomic_write_json(out / "splits.json", members)
    domains = sorted({domain for item in converted for domain in item.domains})
    pairs = sum(len(item.domains) for item in converted)
    record = {
        "format": DATASET_FORMAT, "benchmark": name, "title": benchmark.title, "source": str(src.resolve()),
        "seed": options.seed, "images": len(converted), "pairs": pairs,
        "domains": dict(sorted(Counter(domain for item in converted for domain in item.domains).items())),
        "splits": {split: sorted(by_domain) for split, by_domain in members.items()},
        "split_images": {split: len({stem for stems in by_domain.values() for stem in stems})
                         for split, by_domain in members.items()},
        **({"folds": {str(fold): names for fold, names in index.folds.items()}} if index.folds else {}),
        "episodes": {"file": "episodes.json", "count": len(episodes), "protocol": index.protocol},
        "stems": "splits.json",
        **({"variant": index.variant} if index.variant else {}),
        **index.extra,
        "notes": index.notes,
        "failures": failures,
    }
    atomic_write_json(out / "dataset.json", record)
    return Report(benchmark=name, out=out, images=len(converted), pairs=pairs, domains=len(domains),
                  episodes=len(episodes), written=written, skipped=skipped, failures=failures)
