"""Where a task's inputs are read and its outputs written. Nothing else in GPOA builds these paths.

A *task* is one one-shot problem: its reference pair(s), the target images to segment (with masks
when they can be evaluated) and, optionally, training pairs. Two folder layouts hold a task:

- a **dataset folder** (``data/README.md``): ``reference_image/`` + ``reference_mask/``,
  ``target_image/`` (+ ``target_mask/``), ``train_image/`` + ``train_mask/``. Outputs
  (``initial_indices/``, ``optimized_indices/``, ``results/``, ``cache/``) go into the folder.
- a **domain folder**: ``image/<stem>.*`` + ``mask/<stem>.png`` (the layout of benchmark
  collections). One-shot protocol: the stems are sorted, the first pair is the reference and the
  others are the targets (at most ``max_targets``) and, for training, the training pairs. A
  domain folder is never written to: its outputs go to ``WORKSPACE/<domain>/``. An optional
  ``ignore/<stem>.png`` (written by :mod:`gpoa.datasets` for void labels and crowds) marks pixels
  that the metrics leave out.
- a **clip** is a domain folder whose frames, sorted by name, are in time order (``clip=True``):
  only the first frame needs its mask (the annotation given); frames without one are segmented
  and not scored. Names must sort in time order, so numbers in them are zero-padded
  (``00009.jpg`` before ``00010.jpg``); a clip whose names would sort otherwise is refused.

:func:`resolve_tasks` turns ``--data`` arguments into tasks: each is a dataset folder, a domain
folder, or a folder whose subfolders are tasks (a corpus such as ``data/tasks``). Every folder is
listed once, when its task is made (the stem index).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from gpoa.errors import UsageError
from gpoa.io import IMAGE_EXTENSIONS

PathLike = Union[str, Path]
DATASET_FOLDERS = ("reference_image", "target_image", "train_image")


def list_images(folder: PathLike) -> list:
    """Image files of ``folder`` (not hidden), sorted by name; [] when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def check_unique_stems(folder: PathLike, images: Sequence[Path]) -> None:
    """Images pair with masks and prompt files by stem: two files with one stem are ambiguous."""
    stems: dict = {}
    for path in images:
        stems.setdefault(path.stem, []).append(path.name)
    clashes = {stem: names for stem, names in stems.items() if len(names) > 1}
    if clashes:
        listed = "; ".join(", ".join(names) for names in clashes.values())
        raise UsageError(f"'{folder}' has several images with the same name but another extension ({listed}); "
                         "outputs are named by file stem, so rename or remove all but one")


class DatasetLayout:
    """Folder names of one dataset folder (``layout.target_image`` is ``root / "target_image"``)."""

    FOLDERS = ("reference_image", "reference_mask", "target_image", "target_mask", "train_image",
               "train_mask", "initial_indices", "optimized_indices", "cache", "results")

    def __init__(self, root: PathLike):
        self.root = Path(root)
        for name in self.FOLDERS:
            setattr(self, name, self.root / name)

    images = staticmethod(list_images)

    def pairs(self, image_folder: PathLike, mask_folder: PathLike) -> Iterator[tuple]:
        """(image path, mask path or None) for every image of ``image_folder``, masks paired by stem."""
        masks = {p.stem: p for p in list_images(mask_folder)}
        for image in list_images(image_folder):
            yield image, masks.get(image.stem)


@dataclass
class TaskLayout:
    """The files of one task (see the module docstring); build it with :func:`dataset_task`,
    :func:`domain_task` or :func:`resolve_tasks`.

    ``reference`` [(image, mask)], ``targets`` [image] sorted by stem, ``target_masks`` {stem: mask},
    ``train`` [(image, mask or None)]. ``root`` receives the outputs; ``source`` is the folder given.
    """

    name: str
    kind: str  # "dataset" or "domain"
    source: Path
    root: Path
    reference: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    target_masks: dict = field(default_factory=dict)
    train: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)  # part → message, raised by require()
    shared_cache: Optional[Path] = None  # a feature cache shared by many tasks (default: root/cache)
    ignore_masks: dict = field(default_factory=dict)  # {stem: mask of pixels the metrics leave out}

    def __post_init__(self):
        self._targets_by_stem = {p.stem: p for p in self.targets}

    # ----- outputs ---------------------------------------------------------------------------
    def prompt_folder(self, name: str) -> Path:
        return self.root / name

    @property
    def initial_indices(self) -> Path:
        return self.root / "initial_indices"

    @property
    def optimized_indices(self) -> Path:
        return self.root / "optimized_indices"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def cache(self) -> Path:
        return self.shared_cache or self.root / "cache"

    # ----- inputs ----------------------------------------------------------------------------
    def target(self, stem: str) -> Optional[Path]:
        """The target image of ``stem``, None if there is none."""
        return self._targets_by_stem.get(stem)

    def target_mask(self, stem: str) -> Optional[Path]:
        return self.target_masks.get(stem)

    @property
    def has_truth(self) -> bool:
        return bool(self.target_masks)

    def require(self, *parts: str) -> None:
        """Raise UsageError unless the task has every part: ``reference``, ``targets``, ``train``."""
        for part in parts:
            if part in self.problems:
                raise UsageError(self.problems[part])


def _dataset_problems(root: Path, folders: dict) -> dict:
    def missing(name: str) -> str:
        return f"dataset folder '{root}' has no '{name}/' subfolder; see data/README.md for the layout"

    def empty(name: str) -> str:
        return f"'{root / name}' holds no images ({', '.join(IMAGE_EXTENSIONS)})"

    problems = {}
    for part, (image_folder, mask_folder) in {"reference": ("reference_image", "reference_mask"),
                                              "targets": ("target_image", None),
                                              "train": ("train_image", "train_mask")}.items():
        if not (root / image_folder).is_dir():
            problems[part] = missing(image_folder)
        elif not folders[image_folder]:
            problems[part] = empty(image_folder)
        elif mask_folder is not None and not (root / mask_folder).is_dir():
            problems[part] = missing(mask_folder)
    return problems


def dataset_task(root: PathLike, name: Optional[str] = None) -> TaskLayout:
    """The task of a dataset folder; parts it lacks are reported when a stage requires them."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"dataset folder '{root}' does not exist; pass an existing folder to --data "
                         f"(create one with: python -m gpoa.demo_data --out data/demo)")
    layout = DatasetLayout(root)
    folders = {}
    for folder in ("reference_image", "reference_mask", "target_image", "target_mask", "train_image", "train_mask"):
        folders[folder] = list_images(root / folder)
        check_unique_stems(root / folder, folders[folder])
    problems = _dataset_problems(root, folders)
    reference = list(layout.pairs(layout.reference_image, layout.reference_mask))
    lonely = [str(image) for image, mask in reference if mask is None]
    if lonely and "reference" not in problems:
        problems["reference"] = (f"reference image(s) {lonely} have no mask with the same stem in "
                                 f"'{layout.reference_mask}'")
    masks = {p.stem: p for p in folders["target_mask"]}
    return TaskLayout(name=name or root.name, kind="dataset", source=root, root=root, reference=reference,
                      targets=folders["target_image"],
                      target_masks={p.stem: masks[p.stem] for p in folders["target_image"] if p.stem in masks},
                      train=list(layout.pairs(layout.train_image, layout.train_mask)), problems=problems)


def is_domain(folder: Path) -> bool:
    return (folder / "image").is_dir() and (folder / "mask").is_dir()


def is_dataset(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in DATASET_FOLDERS)


def check_time_order(folder: PathLike, images: Sequence[Path]) -> None:
    """Raise UsageError unless sorting ``images`` (sorted by name) by the numbers in their names
    changes nothing: a clip's frames are taken in name order, which is time order only when the
    numbers are zero-padded (``frame_10`` sorts before ``frame_2``)."""
    def natural(path: Path) -> list:
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.stem)]

    by_number = sorted(images, key=natural)
    for by_name, in_time in zip(images, by_number):
        if by_name != in_time:
            raise UsageError(f"clip '{folder}': frame names do not sort in time order ('{by_name.name}' sorts before "
                             f"'{in_time.name}'); name the frames with zero-padded numbers (e.g. 00002.jpg, "
                             "00010.jpg) so that sorting by name is time order")


def domain_task(folder: PathLike, workspace: PathLike, max_targets: Optional[int] = None,
                name: Optional[str] = None, reference_index: int = 0, clip: bool = False) -> TaskLayout:
    """The task of a domain folder (one-shot protocol of the module docstring); outputs in
    ``workspace/<name>``. Every image needs its mask: the reference and the evaluation need them.
    ``reference_index`` K picks the K-th image (stems sorted) as the reference instead of the
    first; the others, in order, are the targets (a check of how much results depend on the
    reference). ``clip``: the folder is a clip (module docstring): its frames in time order, the
    first one the reference; only it needs a mask, and ``target_masks`` holds the frames that have
    one."""
    folder = Path(folder)
    images = list_images(folder / "image")
    check_unique_stems(folder / "image", images)
    masks = {p.stem: p for p in list_images(folder / "mask")}
    if clip:
        check_time_order(folder / "image", images)
        if reference_index:
            raise UsageError(f"clip '{folder}': the reference of a clip is its first frame; use reference 0")
    lonely = [p.name for p in images[:1 if clip else None] if p.stem not in masks]
    if lonely:
        if clip:
            raise UsageError(f"clip '{folder}': its first frame '{lonely[0]}' has no mask with the same stem in "
                             f"'{folder / 'mask'}'; the first frame's mask says which object to follow")
        raise UsageError(f"domain '{folder}': image(s) {lonely[:5]} have no mask with the same stem in "
                         f"'{folder / 'mask'}'; every image of a domain folder needs its mask")
    if len(images) < 2:
        raise UsageError(f"domain '{folder}' has {len(images)} image(s); the one-shot protocol needs a reference "
                         "and at least one target")
    if not 0 <= reference_index < len(images):
        raise UsageError(f"domain '{folder}' has {len(images)} images, so there is no reference number "
                         f"{reference_index}; pick one from 0 to {len(images) - 1}")
    name = name or folder.name
    reference, others = images[reference_index], images[:reference_index] + images[reference_index + 1:]
    targets = others if max_targets is None else others[:max_targets]
    ignore = {p.stem: p for p in list_images(folder / "ignore")} if (folder / "ignore").is_dir() else {}
    return TaskLayout(name=name, kind="domain", source=folder, root=Path(workspace) / name,
                      reference=[(reference, masks[reference.stem])], targets=targets,
                      target_masks={p.stem: masks[p.stem] for p in targets if p.stem in masks},
                      train=[(p, masks[p.stem]) for p in others if p.stem in masks],
                      ignore_masks={p.stem: ignore[p.stem] for p in targets if p.stem in ignore})


def resolve_tasks(paths: Sequence[PathLike], workspace: PathLike, max_targets: Optional[int] = None,
                  reference_index: int = 0, clips: bool = False) -> list:
    """Tasks of the ``--data`` arguments, in order: each path is a dataset folder, a domain folder or a
    folder of such folders (its subfolders sorted by name). Task names must be unique.
    ``reference_index`` (domain folders only: a dataset folder names its own reference) is passed to
    :func:`domain_task`, and so is ``clips`` (every domain folder is a clip; dataset folders are
    refused then)."""
    if not paths:
        raise UsageError("no data given; pass a dataset folder (or a folder of them) with --data DIR")
    tasks = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UsageError(f"data folder '{path}' does not exist; pass an existing dataset folder, domain folder "
                             "or folder of them to --data (create the demo's with: make demo)")
        if is_dataset(path):
            tasks.append(dataset_task(path))
        elif is_domain(path):
            tasks.append(domain_task(path, workspace, max_targets, reference_index=reference_index, clip=clips))
        else:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            found = [dataset_task(p) if is_dataset(p) else
                     domain_task(p, workspace, max_targets, reference_index=reference_index, clip=clips)
                     for p in children if is_dataset(p) or is_domain(p)]
            if not found:
                raise UsageError(f"'{path}' is neither a dataset folder (reference_image/, target_image/, ...), nor "
                                 "a domain folder (image/ + mask/), nor a folder of them; see data/README.md")
            tasks += found
    datasets = [str(task.source) for task in tasks if task.kind != "domain"]
    if clips and datasets:
        raise UsageError(f"{datasets} are dataset folders (reference_image/, target_image/, ...), not clips; a clip is "
                         "a folder of frames in time order, image/ + mask/ (the first frame's mask at least)")
    if reference_index and datasets:
        raise UsageError(f"a reference number ({reference_index}) picks the reference of a domain folder (image/ + "
                         f"mask/), but {datasets} are dataset folders with their own reference_image/; leave them "
                         "out or use reference 0")
    names = [task.name for task in tasks]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise UsageError(f"several tasks are named {clashes} (tasks are named by their folder); rename one of the "
                         "folders so that every task name is unique")
    return tasks
