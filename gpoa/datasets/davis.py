"""DAVIS 2016 (Perazzi et al., CVPR 2016) and DAVIS 2017 (Pont-Tuset et al., 2017): one-shot video
object segmentation, the object's mask given in the first frame of a clip.

Source layout (the unpacked DAVIS folder, 480p)::

    <src>/JPEGImages/480p/<sequence>/00000.jpg, 00001.jpg, ...   the frames
    <src>/Annotations/480p/<sequence>/00000.png, ...              their masks
    <src>/ImageSets/480p/{train,val,trainval}.txt                 DAVIS 2016 lists
    <src>/ImageSets/2017/{train,val}.txt                          DAVIS 2017 lists

``--year 2016`` (the default): the list's lines are path pairs
``/JPEGImages/480p/<sequence>/00000.jpg /Annotations/480p/<sequence>/00000.png``; the masks are
binary (object = every nonzero pixel). One clip per sequence: ``OUT/<sequence>/``.

``--year 2017``: the list holds sequence names; the masks are palette PNGs of object ids (0
background, 1, 2, ... the objects, 255 void). One clip per object: ``OUT/<sequence>_<id>/`` with
mask = the pixels of that id; void pixels go to ``ignore/`` (left out of the metrics). The objects
of a sequence are the ids its annotations hold. As in DAVIS 2017's semi-supervised task, where an
object's mask is given in the first frame it appears in, an object's clip starts at that frame:
the frames before it are not in its clip, so its first frame is always its annotated reference
(in train and val every object is in frame 0; dataset.json notes every clip that starts later).
Frames where an object is hidden later on stay in its clip with an empty mask.

Frames keep their DAVIS frame number, zero-padded to five digits (more when a sequence is longer),
so their names sort in time order; images are copied byte for byte, masks written as 0/255 PNGs.
``--split``: train, val (the default) or, for 2016, trainval. Episodes: each clip's first frame is
the reference, every later frame a query (:func:`gpoa.protocols.one_shot_episodes` with that one
reference). A frame whose image or mask is missing or unreadable is reported and left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpoa.datasets.common import (
    Benchmark,
    Index,
    Item,
    Options,
    check_size,
    read_label_png,
    require_folder,
)
from gpoa.errors import InputError, UsageError
from gpoa.io import read_mask
from gpoa.layout import list_images
from gpoa.protocols import one_shot_episodes

NAME = "davis"
#: year → its splits (the ImageSets lists) and the folder of its lists under ImageSets/
SPLITS = {2016: ("train", "val", "trainval"), 2017: ("train", "val")}
LISTS = {2016: "480p", 2017: "2017"}
DEFAULT_YEAR, DEFAULT_SPLIT = 2016, "val"
VOID_LABEL = 255
FRAME_DIGITS = 5
LAYOUT = """  <src>/JPEGImages/480p/<sequence>/00000.jpg, ...   frames
  <src>/Annotations/480p/<sequence>/00000.png, ...  masks (2016: binary; 2017: palette PNGs of object ids)
  <src>/ImageSets/480p/{train,val,trainval}.txt     DAVIS 2016: lines of image/mask path pairs
  <src>/ImageSets/2017/{train,val}.txt              DAVIS 2017: lines of sequence names
(<src> is the unpacked DAVIS folder)"""
PAIR = re.compile(r"/?JPEGImages/480p/(?P<sequence>[^/\s]+)/(?P<frame>\d+)\.jpg\s+"
                  r"/?Annotations/480p/(?P=sequence)/(?P=frame)\.png")
PALETTE_FIX = "use DAVIS 2017's Annotations/480p PNGs (palette images of object ids)"


@dataclass(frozen=True)
class Frame:
    """One frame of a sequence: its DAVIS number, image and mask files."""

    number: int
    image: Path
    mask: Path


def list_path(src: Path, year: int, split: str) -> Path:
    """The ImageSets list of ``year`` and ``split``; UsageError for an unknown split or a missing list."""
    if year not in SPLITS:
        raise UsageError(f"DAVIS has no year {year}; use --year {' or '.join(map(str, SPLITS))}")
    if split not in SPLITS[year]:
        raise UsageError(f"DAVIS {year} has no split '{split}'; use --split {', '.join(SPLITS[year])}")
    path = src / "ImageSets" / LISTS[year] / f"{split}.txt"
    if not path.is_file():
        other = next(y for y in SPLITS if y != year)
        found = src / "ImageSets" / LISTS[other] / f"{split}.txt"
        hint = f" ('{found}' is there: for DAVIS {other} pass --year {other})" if found.is_file() else ""
        raise UsageError(f"'{path}' is missing: the list of DAVIS {year}'s {split} split{hint}. "
                         f"Expected layout:\n{LAYOUT}")
    return path


def frame_names(frames: list) -> dict:
    """{frame number: name} zero-padded to one width for a sequence (at least FRAME_DIGITS)."""
    width = max([FRAME_DIGITS] + [len(str(frame.number)) for frame in frames])
    return {frame.number: f"{frame.number:0{width}d}" for frame in frames}


def sequences_2016(src: Path, path: Path) -> dict:
    """{sequence: [Frame] in time order} of a DAVIS 2016 list; UsageError naming a line that is not
    an image/mask pair of one frame."""
    sequences: dict = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = PAIR.fullmatch(line.strip())
        if match is None:
            hint = " (a list of sequence names is DAVIS 2017's: pass --year 2017)" if len(line.split()) == 1 else ""
            raise UsageError(f"'{path}' line {number} is '{line.strip()}', not a DAVIS 2016 pair "
                             f"'/JPEGImages/480p/<sequence>/<n>.jpg /Annotations/480p/<sequence>/<n>.png'{hint}")
        sequence, name = match["sequence"], match["frame"]
        frames = sequences.setdefault(sequence, {})
        frames[int(name)] = Frame(int(name), src / "JPEGImages" / "480p" / sequence / f"{name}.jpg",
                                  src / "Annotations" / "480p" / sequence / f"{name}.png")
    return {sequence: [frames[n] for n in sorted(frames)] for sequence, frames in sequences.items()}


def sequence_frames(src: Path, sequence: str, path: Path) -> tuple:
    """([Frame] in time order, [failures]) of a sequence a DAVIS 2017 list names: its .jpg frames
    and their masks (a frame without one, or a missing sequence folder, is a failure)."""
    images_folder = src / "JPEGImages" / "480p" / sequence
    masks_folder = src / "Annotations" / "480p" / sequence
    for folder in (images_folder, masks_folder):
        if not folder.is_dir():
            return [], [f"{folder}: sequence '{sequence}' is listed in '{path}' but this folder does not exist"]
    frames, failures = [], []
    for image in list_images(images_folder):
        if image.suffix.lower() != ".jpg":
            continue
        mask = masks_folder / f"{image.stem}.png"
        if not image.stem.isdigit():
            failures.append(f"{image}: not a DAVIS frame name (digits, e.g. 00000.jpg); left out")
        elif not mask.is_file():
            failures.append(f"{image}: has no mask (expected '{mask}')")
        else:
            frames.append(Frame(int(image.stem), image, mask))
    if not frames and not failures:
        failures.append(f"{images_folder}: sequence '{sequence}' holds no .jpg frames")
    return sorted(frames, key=lambda frame: frame.number), failures


def binary_labels(mask: Path, domain: str, size: tuple) -> dict:
    """{clip: (mask, None)} of a DAVIS 2016 mask file at the image's ``size`` (width, height)."""
    return {domain: (read_mask(mask, size), None)}


def object_labels(mask: Path, objects: dict, size: tuple) -> dict:
    """{clip: (mask, void)} of a DAVIS 2017 palette mask for ``objects`` {clip: object id}."""
    labels = read_label_png(mask, PALETTE_FIX)
    check_size(mask, labels, size)
    void = labels == VOID_LABEL
    return {clip: (labels == object_id, void) for clip, object_id in objects.items()}


def items_2016(src: Path, path: Path, split: str) -> tuple:
    """(items, failures, notes) of a DAVIS 2016 list: one clip per sequence."""
    items = []
    for sequence, frames in sequences_2016(src, path).items():
        names = frame_names(frames)
        items += [Item(stem=names[frame.number], image=frame.image, split=split, domains=(sequence,),
                       load=partial(binary_labels, frame.mask, sequence)) for frame in frames]
    return items, [], []


def items_2017(src: Path, path: Path, split: str, progress: bool) -> tuple:
    """(items, failures, notes) of a DAVIS 2017 list: one clip per object, from its first frame."""
    sequences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = next((name for name in sequences if len(name.split()) > 1 or "/" in name), None)
    if bad is not None:
        raise UsageError(f"'{path}' lists '{bad}', not a sequence name (a list of image/mask path pairs is "
                         "DAVIS 2016's: pass --year 2016)")
    items, failures, notes = [], [], []
    for sequence in tqdm(sequences, desc=f"{NAME} (reading annotations)", unit="seq", disable=not progress):
        frames, missing = sequence_frames(src, sequence, path)
        failures += missing
        present = {}  # frame number → the object ids in its mask
        for frame in frames:
            try:
                ids = np.unique(read_label_png(frame.mask, PALETTE_FIX))
            except InputError as exc:
                failures.append(str(exc))
                continue
            present[frame.number] = [int(i) for i in ids if i not in (0, VOID_LABEL)]
        frames = [frame for frame in frames if frame.number in present]
        starts: dict = {}  # object id → the first frame it is in
        for frame in frames:
            for object_id in present[frame.number]:
                starts.setdefault(object_id, frame.number)
        if frames and not starts:
            failures.append(f"{frames[0].mask.parent}: no object in any mask of sequence '{sequence}'")
        names = frame_names(frames)
        clips = {object_id: f"{sequence}_{object_id}" for object_id in sorted(starts)}
        notes += [f"{clips[object_id]} starts at frame {names[start]} (the object is not in the frames before)"
                  for object_id, start in starts.items() if start != frames[0].number]
        for frame in frames:
            objects = {clips[i]: i for i in clips if starts[i] <= frame.number}
            if objects:
                items.append(Item(stem=names[frame.number], image=frame.image, split=split, domains=tuple(objects),
                                  load=partial(object_labels, frame.mask, objects)))
    return items, failures, notes


def index(src: Path, options: Options) -> Index:
    year = DEFAULT_YEAR if options.year is None else options.year
    split = options.split or DEFAULT_SPLIT
    path = list_path(src, year, split)
    for kind in ("JPEGImages", "Annotations"):
        require_folder(src / kind / "480p", f"DAVIS's {kind} at 480p", LAYOUT)
    if year == 2016:
        items, failures, notes = items_2016(src, path, split)
    else:
        items, failures, notes = items_2017(src, path, split, options.progress)
    if not items and not failures:
        raise UsageError(f"'{path}' lists no frames. Expected layout:\n{LAYOUT}")

    def episodes(members: dict) -> list:
        clips = members.get(split, {})
        return [episode for clip, stems in clips.items()
                for episode in one_shot_episodes(clip, [min(stems)], stems, options.seed)]

    protocol = ("one-shot video object segmentation (DAVIS semi-supervised): each clip's first frame and its "
                "mask are the reference, every later frame a query")
    clip_kind = "sequence" if year == 2016 else "object"
    notes.insert(0, f"DAVIS {year} {split} ({path.relative_to(src)}): one clip per {clip_kind}, frames in time order")
    return Index(items=items, episodes=episodes, protocol=protocol, notes=notes, failures=failures,
                 variant={"year": year, "split": split})


BENCHMARK = Benchmark(name=NAME, title="DAVIS 2016 / 2017, one-shot video object segmentation", layout=LAYOUT,
                      index=index)
