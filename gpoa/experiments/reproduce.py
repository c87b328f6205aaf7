"""The papers' tables with one command: ``python reproduce.py TABLE [TABLE ...] --root DATA --out DIR``.

Tables (``TABLES``):

- ``ppd-main`` — Point Prompt Defender's main table: mDSC and mIoU (means over images) on PASCAL
  VOC, ISIC 2018 and Kvasir-SEG, rows initial (FM: the matching's prompts), FM + DQN, FM + PPO,
  FM + PPD, top-k (the initial positives with the best match scores, as many as DQN keeps) and
  ideal (prompts sampled from the truth);
- ``ppd-ablation`` — ideal → attacked (the trained attacker) → defended, and initial → defended;
- ``ppd-runtime`` — seconds for loading the models, and per image for prompt engineering
  (stage 1 + the defender) and for segmentation;
- ``fss`` — one-shot mIoU (class-wise: intersection and union summed per class over its
  episodes, then averaged over classes; PASCAL-5i and COCO-20i: the mean over the four folds) and
  FB-IoU on FSS-1000, PASCAL-5i and COCO-20i, same rows;
- ``davis`` — semi-supervised video object segmentation on DAVIS 2016 val: J, F and J&F means
  (DAVIS's, :mod:`gpoa.metrics`: per clip over its scored frames, the first and the last frame not
  scored, then the mean over clips) of GPOA's tracker (``gpoa track``'s own code,
  :func:`gpoa.stages.track.track_clips`, as ``bench_video.py`` runs it) without the agent and with
  each policy, beside the published DAVIS 2016 rows (OSVOS, OFL, BVS, FCP, JMP).

Data: ``--root`` holds the converters' outputs (``python -m gpoa.datasets NAME --src RAW --out
DATA/NAME``); each benchmark is found by its ``dataset.json`` and evaluated on its
``episodes.json`` (``--episodes N``: only the first N episodes of each fold, said in the table).
A root that holds plain domain folders instead (``<domain>/image`` + ``<domain>/mask``, such as
real-dev) stands in for the benchmarks: every domain is a data set of its own under the one-shot
protocol of ``bench_domains.py`` (first sorted pair the reference, at most ``--targets`` queries),
and for ``fss`` the domains are the classes of one benchmark. ``davis`` reads the clips of DAVIS
2016 val as ``gpoa convert davis`` writes them (its ``dataset.json`` names the benchmark ``davis``
with the variant year 2016, split val: found as ``davis2016``; ``--episodes N``: the first N + 2
frames of every clip, so that N are scored), or a root of domain folders as stand-in clips (frames
in time order; the first ``--targets`` + 2 frames of each). ``all``: every table whose data the
root holds (the others are left out, said on stderr).

Policies: a row that needs one trains it first, once, into ``OUT/policies/<learner>/`` and reuses
it afterwards: on FSS-1000's training classes when the root has FSS-1000 (as Point Prompt
Defender does), else on ``--train`` (e.g. the generated corpus ``data/tasks``).

Episodes that share a support image form one task (its reference), so the reference is encoded
once; every task's features go to one cache keyed by image content, so an image used in many
episodes is encoded once. The stages' own code does the work (stage 1, stage 3 per learner, stage
4); the metrics read stage 4's masks with the benchmark's ignore masks
(:class:`gpoa.protocols.SegmentationCounts`).

Several processes: ``torchrun --nproc-per-node N reproduce.py ...`` or ``--shard i/N`` split the
episode groups (a deterministic round-robin over the sorted groups). Each process writes its
counts to ``OUT/tables/<table>/<data set>.part-<i>-of-<N>.json``; the one that completes the set
merges them into exactly the tables one process writes (counts are integers, so the merge is exact).
``davis`` splits the clips as ``gpoa track`` does (a clip is never split; its parts and their merge
are the track stage's, under ``OUT/work/davis/<row>/``); the process that merges a row's clips
writes them to ``OUT/tables/davis/<row>.json``, and the one that finds every row there writes the
table.
Outputs: ``OUT/<table>.csv`` (row, column, ours, published, verified) and ``OUT/<table>.md``, its
header naming the backbones that produced ours, the published numbers (``configs/paper_numbers.yaml``,
each with its source; † where nobody here could check one) beside ours
(:func:`gpoa.experiments.published.side_by_side`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.agents.policy_file import load_policy
from gpoa.backends import Backends
from gpoa.commandline import exit_code_of
from gpoa.config import Config, config_to_dict, load_config, resolve_device
from gpoa.distributed import rank_device
from gpoa.errors import InputError, UsageError
from gpoa.experiments.ablation import ABLATION_COLUMNS, load_ppd_run
from gpoa.experiments.published import (
    csv_text,
    load_paper_numbers,  # noqa: F401 - the name benchmarks import from here
    load_published,
    side_by_side,
)
from gpoa.experiments.video import headline
from gpoa.io import atomic_write_json, atomic_write_text, read_image, read_mask, read_prompt_file
from gpoa.layout import TaskLayout, is_domain, list_images
from gpoa.predictor import GPOAPredictor
from gpoa.protocols import Episode, SegmentationCounts, read_episodes
from gpoa.runtime import RunContext, StageReport, is_fresh, seed_everything, stable_seed
from gpoa.stages.initial_prompts import generate_initial_prompts
from gpoa.stages.optimize import optimize_prompts
from gpoa.stages.segmentation import segment_and_evaluate
from gpoa.stages.track import track_clips
from gpoa.stages.train import BEST, STATE, train_policy
from gpoa.tasks import Task

TABLES = ("ppd-main", "ppd-ablation", "ppd-runtime", "fss", "davis")
LEARNERS = ("dqn", "ppo", "ppd")
#: the benchmarks each table reads (as :func:`converted_benchmarks` names them), and their column titles
TABLE_BENCHMARKS = {"ppd-main": ("pascal5i", "isic2018", "kvasir"), "ppd-ablation": ("pascal5i", "isic2018", "kvasir"),
                    "ppd-runtime": ("pascal5i", "isic2018", "kvasir"), "fss": ("fss1000", "pascal5i", "coco20i"),
                    "davis": ("davis2016",)}
TITLES = {"pascal5i": "PASCAL VOC", "isic2018": "ISIC 2018", "kvasir": "Kvasir-SEG", "fss1000": "FSS-1000",
          "coco20i": "COCO-20i", "cvc": "CVC-ClinicDB"}
FSS_TITLES = {**TITLES, "pascal5i": "PASCAL-5i"}
#: prompt sets (stage 4's names) → the table's row names
ROWS = {"initial": "initial (FM)", "dqn": "FM + DQN", "ppo": "FM + PPO", "ppd": "FM + PPD", "dqn_topk": "top-k",
        "ideal": "ideal"}
#: our ablation and runtime columns, and their titles
ABLATION_TITLES = {"ideal": "ideal", "attacked": "attacked", "defended": "defended", "initial": "initial",
                   "initial_defended": "initial → defended"}
RUNTIME_COLUMNS = (("model_load_s", "model load (s)", ".2f"),
                   ("prompt_engineering_s_per_image", "prompt engineering (s/image)", ".3f"),
                   ("segmentation_s_per_image", "segmentation (s/image)", ".3f"))
#: the davis table's rows (GPOA's tracker without the agent, and with each learner's policy) and columns
TRACK_ROWS = {"none": "GPOA tracker, no agent", "dqn": "GPOA tracker + DQN", "ppo": "GPOA tracker + PPO",
              "ppd": "GPOA tracker + PPD"}
DAVIS_COLUMNS = (("j_mean", "J mean"), ("f_mean", "F mean"), ("jf_mean", "J&F mean"))
#: DAVIS 2016 val, all of it: what the published rows were measured on (clips, frames)
DAVIS_VAL = (20, 1376)


@dataclass
class DataSet:
    """One column group of a table: a benchmark (or a stand-in domain) and its episodes."""

    name: str
    title: str
    folder: Path
    episodes: list
    note: str = ""


@dataclass
class ClipSet:
    """The davis table's clips: a folder of clip folders, how many frames of each are followed (None:
    all), and whether they stand in for DAVIS 2016 val."""

    folder: Path
    frames: Optional[int]
    stand_in: bool
    note: str = ""


class NoData(UsageError):
    """``--root`` holds none of a table's data (``all`` leaves that table out)."""


# ----- finding the data -------------------------------------------------------------------------
def benchmark_name(record: dict) -> str:
    """The name a table reads a converter output by (``dataset.json``'s ``record``): its benchmark's,
    with the year of its variant where it has one and the split where that is not val (DAVIS:
    ``davis2016`` is DAVIS 2016 val, ``davis2017-train`` DAVIS 2017 train)."""
    name, variant = record.get("benchmark"), record.get("variant") or {}
    if not name:
        return ""
    year, split = variant.get("year"), variant.get("split", "val")
    return f"{name}{'' if year is None else year}{'' if split == 'val' else f'-{split}'}"


def converted_benchmarks(root: Path) -> dict:
    """benchmark name (:func:`benchmark_name`) → folder, for every converter output (``dataset.json``)
    at or under ``root``."""
    found = {}
    for record in [root / "dataset.json"] + sorted(root.glob("*/dataset.json")):
        if record.is_file():
            try:
                name = benchmark_name(json.loads(record.read_text()))
            except (OSError, ValueError, AttributeError):
                continue
            if name:
                found.setdefault(name, record.parent)
    return found


def require_root(root: Path) -> None:
    if not root.is_dir():
        raise UsageError(f"--root '{root}' is not a folder; convert the benchmarks into it with "
                         "python -m gpoa.datasets NAME --src RAW --out ROOT/NAME")


def config_digest(cfg: Config) -> int:
    """A number that changes with any setting of ``cfg`` (the fingerprints of the tables' parts)."""
    return stable_seed(json.dumps(config_to_dict(cfg), sort_keys=True, default=str))


def capped(episodes: list, per_fold: Optional[int]) -> list:
    """The first ``per_fold`` episodes of every fold (all of them with None), order kept."""
    if per_fold is None:
        return episodes
    seen, kept = {}, []
    for episode in episodes:
        seen[episode.fold] = seen.get(episode.fold, 0) + 1
        if seen[episode.fold] <= per_fold:
            kept.append(episode)
    return kept


def find_datasets(root: Path, table: str, per_fold: Optional[int], targets: int, seed: int) -> list:
    """The data sets of ``table`` under ``root`` (module docstring)."""
    require_root(root)
    converted = converted_benchmarks(root)
    wanted = TABLE_BENCHMARKS[table]
    if any(name in converted for name in wanted):
        datasets = []
        for name in wanted:
            if name not in converted:
                print(f"[reproduce] {table}: no converted '{name}' under {root}; its columns are left out "
                      f"(python -m gpoa.datasets {name} --src RAW --out {root / name})", file=sys.stderr)
                continue
            episodes = read_episodes(converted[name] / "episodes.json")
            note = f"first {per_fold} episodes per fold" if per_fold is not None else ""
            title = (FSS_TITLES if table == "fss" else TITLES).get(name, name)
            datasets.append(DataSet(name, title, converted[name], capped(episodes, per_fold), note))
        return datasets
    domains = sorted(p for p in root.iterdir() if p.is_dir() and is_domain(p))
    if not domains:
        raise NoData(f"'{root}' holds none of {', '.join(wanted)} (converter outputs with dataset.json) and no "
                     "domain folders (<domain>/image + <domain>/mask)")
    stand_in = []
    for domain in domains:
        stems = [p.stem for p in list_images(domain / "image")]  # sorted by name, as bench_domains.py sorts
        if len(stems) < 2:
            raise UsageError(f"domain '{domain}' needs a reference and at least one query image")
        stand_in.append((domain.name, [Episode(domain.name, (stems[0],), query) for query in stems[1:1 + targets]]))
    note = f"stand-in: the domains of {root.name}, first sorted pair the reference, at most {targets} queries"
    if table == "fss":  # the domains are the classes of one benchmark
        return [DataSet(root.name, root.name, root, [e for _, episodes in stand_in for e in episodes], note)]
    return [DataSet(name, name, root, episodes, note) for name, episodes in stand_in]


def find_clips(root: Path, per_clip: Optional[int], targets: int) -> ClipSet:
    """The davis table's clips under ``root`` (module docstring): converted DAVIS 2016 val, else the
    domain folders of ``root`` as stand-in clips; NoData naming the converter when there are neither."""
    require_root(root)
    converted = converted_benchmarks(root)
    wanted = TABLE_BENCHMARKS["davis"][0]
    if wanted in converted:
        if per_clip is None:
            return ClipSet(converted[wanted], None, False)
        return ClipSet(converted[wanted], per_clip + 2, False,
                       f"the first {per_clip + 2} frames of each clip ({per_clip} scored; --episodes {per_clip})")
    command = f"gpoa convert davis --src RAW/DAVIS --out {root / wanted}"
    others = sorted(name for name in converted if name.startswith("davis"))
    if others:
        raise NoData(f"'{root}' holds {', '.join(others)} (dataset.json) but not DAVIS 2016 val, which the davis table "
                     f"reads; convert it with {command}")
    if not any(p.is_dir() and is_domain(p) for p in root.iterdir()):
        raise NoData(f"'{root}' holds no converted DAVIS 2016 val ({wanted}: a dataset.json of gpoa convert davis) and "
                     f"no clip folders (<clip>/image + <clip>/mask); convert DAVIS with {command}")
    return ClipSet(root, targets + 2, True, f"stand-in: the domain folders of {root.name} as clips (frames in name "
                                            f"order), the first {targets + 2} of each ({targets} scored; --targets)")


def training_sources(root: Path, train: Sequence[str]) -> list:
    """What the policies train on: FSS-1000's training classes when ``root`` has them, else ``train``."""
    fss = converted_benchmarks(root).get("fss1000") if root.is_dir() else None
    if fss is not None and not train:
        record = json.loads((fss / "dataset.json").read_text())
        classes = record.get("splits", {}).get("train", [])
        folders = [str(fss / name) for name in classes if is_domain(fss / name)]
        if folders:
            return folders
    if not train:
        raise UsageError("the policies need training data: convert FSS-1000 into --root (its training classes are "
                         "used, as Point Prompt Defender does) or pass --train DIR (e.g. data/tasks)")
    return list(train)


# ----- policies ---------------------------------------------------------------------------------
def ensure_policies(cfg: Config, device: str, learners: Sequence[str], sources: list, out: Path) -> dict:
    """learner → its policy file, trained once into ``out/policies/<learner>/`` (resumed if interrupted)."""
    policies = {}
    for learner in learners:
        run = out / "policies" / learner
        if needs_training(run, cfg):
            resume = (run / STATE).is_file()
            train_cfg = dataclasses.replace(
                cfg, data=list(sources), overwrite=not resume, shard="",
                agent=dataclasses.replace(cfg.agent, learner=learner),
                train=dataclasses.replace(cfg.train, checkpoints=str(out / "policies"), run=learner, resume=resume))
            print(f"[reproduce] training the {learner} policy on {len(sources)} source(s) into {run}")
            report = train_policy(train_cfg, device)
            if report.exit_code and not (run / BEST).is_file():
                raise UsageError(f"training the {learner} policy failed; see the messages above")
        policies[learner] = run / BEST
    return policies


def needs_training(run: Path, cfg: Config) -> bool:
    """True unless ``run`` holds a policy whose training reached the budget (or left no state to resume)."""
    if not (run / BEST).is_file():
        return True
    if not (run / STATE).is_file():
        return False
    try:
        return int(load_policy(run / "last.pt").extra.get("step", 0)) < cfg.train.total_steps
    except UsageError:
        return True


# ----- episodes → tasks ---------------------------------------------------------------------------
@dataclass
class Group:
    """The episodes that share a support: one task (reference = the support) with their queries."""

    domain: str
    support: tuple
    queries: list
    episodes: list
    only_support: bool = False  # the only support of its domain among the episodes


def episode_groups(episodes: Sequence[Episode]) -> list:
    """Episodes grouped by (domain, support), groups sorted (the order every process agrees on)."""
    groups = {}
    for episode in episodes:
        key = (episode.domain, episode.support)
        group = groups.setdefault(key, Group(episode.domain, episode.support, [], []))
        if episode.query not in group.queries:
            group.queries.append(episode.query)
        group.episodes.append(episode)
    supports = {}
    for domain, _ in groups:
        supports[domain] = supports.get(domain, 0) + 1
    for (domain, _), group in groups.items():
        group.only_support = supports[domain] == 1
    return [groups[key] for key in sorted(groups)]


class DomainIndex:
    """Stem → file of every domain's image/, mask/ and ignore/ folder, listed once."""

    def __init__(self, folder: Path):
        self.folder, self._index = folder, {}

    def files(self, domain: str, kind: str) -> dict:
        key = (domain, kind)
        if key not in self._index:
            self._index[key] = {p.stem: p for p in list_images(self.folder / domain / kind)}
        return self._index[key]

    def pair(self, domain: str, stem: str) -> tuple:
        image, mask = self.files(domain, "image").get(stem), self.files(domain, "mask").get(stem)
        if image is None or mask is None:
            raise UsageError(f"episode image '{stem}' of '{self.folder / domain}' has no image or mask; convert the "
                             "benchmark again (python -m gpoa.datasets)")
        return image, mask

    def ignore(self, domain: str, stem: str) -> Optional[Path]:
        return self.files(domain, "ignore").get(stem)


def group_task(group: Group, index: DomainIndex, work: Path, cache: Path, backends: Backends, cfg: Config) -> Task:
    references = [index.pair(group.domain, stem) for stem in group.support]
    pairs = {stem: index.pair(group.domain, stem) for stem in group.queries}
    targets = sorted((image for image, _ in pairs.values()), key=lambda p: p.stem)
    # a domain evaluated with one reference is named by the domain alone, as bench_domains.py names it
    name = group.domain if group.only_support else f"{group.domain}/{'+'.join(group.support)}"
    layout = TaskLayout(name=name, kind="domain", source=index.folder / group.domain,
                        root=work / group.domain / "+".join(group.support), reference=references, targets=targets,
                        target_masks={stem: mask for stem, (_, mask) in pairs.items()}, shared_cache=cache,
                        ignore_masks={stem: path for stem in pairs if (path := index.ignore(group.domain, stem))})
    return Task(layout, backends, cfg)


def dataset_tasks(groups: list, dataset: DataSet, out: Path, backends: Backends, cfg: Config,
                  index: Optional[DomainIndex] = None) -> list:
    """The tasks of ``groups``, outputs under ``out/work/<data set folder>/``, one shared feature cache."""
    index = index or DomainIndex(dataset.folder)
    work, cache = out / "work" / dataset.folder.name, out / "work" / "cache"
    return [group_task(group, index, work, cache, backends, cfg) for group in groups]


@contextlib.contextmanager
def quiet():
    """The stages' per-task tables and progress bars, kept off the terminal (their reports are kept)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _move(source: Path, target: Path) -> None:
    """Rename folder ``source`` to ``target``, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    source.rename(target)


def optimize_with(learner: str, policy: Path, tasks: list, cfg: Config, device: str, report: StageReport) -> None:
    """Stage 3 with ``policy`` on every task that lacks ``<learner>_indices``; the optimised sets are
    kept as ``<learner>_indices`` (and DQN's top-k baseline as ``dqn_topk_indices``)."""
    def up_to_date(task: Task) -> bool:
        folder, initial = task.layout.prompt_folder(f"{learner}_indices"), task.layout.initial_indices
        return all(is_fresh(folder / f"{p.stem}.json", policy, initial / f"{p.stem}.json")
                   for p in task.layout.targets)

    todo = [t for t in tasks if not up_to_date(t)]
    if not todo:
        return
    run_cfg = dataclasses.replace(cfg, overwrite=True,
                                  optimize=dataclasses.replace(cfg.optimize, policy=str(policy), oracle=False))
    with quiet():
        report.merge(optimize_prompts(run_cfg, device, todo))
    for task in todo:
        layout = task.layout
        if layout.optimized_indices.is_dir():
            if learner == "dqn" and layout.prompt_folder("topk_indices").is_dir():
                _move(layout.prompt_folder("topk_indices"), layout.prompt_folder("dqn_topk_indices"))
            _move(layout.optimized_indices, layout.prompt_folder(f"{learner}_indices"))
        for folder in ("topk_indices", "random_subset_indices", "lookahead_rule_indices"):  # not table rows
            shutil.rmtree(layout.prompt_folder(folder), ignore_errors=True)


def evaluate_groups(groups: list, dataset: DataSet, policies: dict, cfg: Config, device: str, backends: Backends,
                    out: Path, report: StageReport) -> dict:
    """Stages 1, 3 (each learner) and 4 on ``groups``; → counts per (prompt set, fold)."""
    index = DomainIndex(dataset.folder)
    tasks = dataset_tasks(groups, dataset, out, backends, cfg, index)
    counts = {}
    if not tasks:
        return counts
    with quiet():
        report.merge(generate_initial_prompts(cfg, device, tasks))
    for learner, policy in policies.items():
        optimize_with(learner, policy, tasks, cfg, device, report)
    with quiet():
        report.merge(segment_and_evaluate(cfg, device, tasks)[0])
    names = [n for n in ROWS if n in ("initial", "ideal") or n in policies or n == "dqn_topk" and "dqn" in policies]
    for task, group in zip(tasks, groups):
        masks_root = task.layout.results / "masks"
        for episode in group.episodes:
            image, mask = index.pair(group.domain, episode.query)
            try:  # an unreadable truth or ignore mask: reported, and the episode cannot be scored
                truth = read_mask(mask)
                ignore_path = index.ignore(group.domain, episode.query)
                ignore = read_mask(ignore_path, expected_size=(truth.shape[1], truth.shape[0])) if ignore_path else None
            except InputError as exc:
                report.fail(f"{group.domain}/{episode.query}", str(exc))
                continue
            for name in names:
                # every row scores the same episodes: a query a stage failed on (reported) counts as empty
                prediction_path = masks_root / name / f"{episode.query}.png"
                prediction = read_mask(prediction_path) if prediction_path.is_file() else np.zeros_like(truth)
                counts.setdefault(f"{name}|{episode.fold}", SegmentationCounts()).add(episode.domain, prediction,
                                                                                     truth, ignore)
    return counts


# ----- the tables ----------------------------------------------------------------------------------
def percent(value: Optional[float]) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else 100 * value


def backbones(cfg: Config) -> str:
    """Which backbones produced our numbers, said in every table's header, so that nobody reads a
    stand-in as a reproduction."""
    features, segmenter = cfg.features.backend, cfg.segmenter.backend
    if (features, segmenter) == ("dinov2", "sam"):
        return f"ours with SAM {cfg.segmenter.model_type} + DINOv2 {cfg.features.model}, the papers' backbones"
    default = Config()
    if (features, segmenter) == (default.features.backend, default.segmenter.backend):
        return (f"ours with the embedded default ({features} features, {segmenter} segmenter): a stand-in for the "
                "papers' SAM + DINOv2, not a reproduction of their numbers")
    return f"ours with {features} features and the {segmenter} segmenter, not the papers' SAM + DINOv2"


def fold_means(counts: dict, prompt_set: str) -> dict:
    """mIoU, FB-IoU, mDSC and image mIoU of ``prompt_set``: per fold, then averaged over folds."""
    folds = [SegmentationCounts.from_dict(v) for k, v in sorted(counts.items()) if k.split("|")[0] == prompt_set]
    if not folds:
        return {}
    pooled = SegmentationCounts.merged(folds)
    return {"miou": float(np.mean([c.miou() for c in folds])), "fb_iou": float(np.mean([c.fb_iou() for c in folds])),
            "mdsc": pooled.mdsc(), "image_miou": pooled.mean_image_iou(), "episodes": len(pooled.images)}


def score_table(table: str, results: dict, datasets: list) -> tuple:
    """(CSV rows, Markdown) of ``ppd-main`` or ``fss`` from merged counts per data set, the published
    numbers beside ours."""
    metrics = (("mdsc", "mDSC"), ("image_miou", "mIoU")) if table == "ppd-main" else (("miou", "mIoU"),
                                                                                       ("fb_iou", "FB-IoU"))
    columns = [(d, key, f"{d.title} {label}") for d in datasets for key, label in metrics]
    ours = [(row, label, percent(fold_means(results[dataset.name], prompt_set).get(key)))
            for prompt_set, row in ROWS.items() for dataset, key, label in columns]
    return side_by_side(load_published(table), ours, list(ROWS.values()), [(label, label) for *_, label in columns])


def write_table(out: Path, table: str, csv_rows: list, markdown: str, header: str, cfg: Config, notes: list) -> None:
    """``out/<table>.csv`` and ``out/<table>.md`` (printed too); the header says which backbones
    produced ours."""
    atomic_write_text(out / f"{table}.csv", csv_text(csv_rows))
    note_lines = "".join(f"- {n}\n" for n in notes if n)
    text = f"# {header}; {backbones(cfg)}\n\n{markdown}\n" + (f"\n{note_lines}" if note_lines else "")
    atomic_write_text(out / f"{table}.md", text)
    print(f"\n{text}")


# ----- the runner ----------------------------------------------------------------------------------
@dataclass
class Request:
    tables: list
    root: Path
    out: Path
    train: list
    learners: list
    per_fold: Optional[int]
    targets: int
    runtime_images: int
    policies_only: bool = False
    every: bool = False  # the tables were asked for as "all": a table whose data the root lacks is left out


def find_data(request: Request, seed: int) -> dict:
    """table → its data sets (:func:`find_datasets`; ``davis``: its :class:`ClipSet`), for every
    requested table whose data ``request.root`` holds; with ``request.every`` the others are left out
    (said on stderr) unless none has any."""
    found, missing = {}, []
    for table in request.tables:
        try:
            found[table] = (find_clips(request.root, request.per_fold, request.targets) if table == "davis" else
                            find_datasets(request.root, table, request.per_fold, request.targets, seed))
        except NoData as exc:
            if not request.every:
                raise
            missing.append(exc)
            print(f"[reproduce] {table} is left out: {exc}", file=sys.stderr)
    if missing and not found:
        raise missing[0]
    return found


def run(request: Request, cfg: Config, device: str) -> StageReport:
    """Every requested table (module docstring); returns the report of everything done."""
    report = StageReport("reproduce")
    context = RunContext.from_settings(cfg.shard)
    one = dataclasses.replace(cfg, shard="0/1")  # the runner splits episodes; the stages must not split again
    backends = Backends(one, device)
    # the data first: a wrong root is refused before any training
    datasets_of = find_data(request, cfg.seed)
    learners = list(request.learners)
    if any(t in ("ppd-ablation", "ppd-runtime") for t in datasets_of) and "ppd" not in learners:
        learners.append("ppd")
    sources = training_sources(request.root, request.train) if learners else []
    missing = [name for name in learners if needs_training(request.out / "policies" / name, one)]
    if missing and context.world > 1 and not torchrun_started():
        raise UsageError(f"the {', '.join(missing)} policies are not trained yet; processes started by --shard do not "
                         "train together: train them first with the same command and --policies-only (no --shard)")
    policies = ensure_policies(one, device, learners, sources, request.out)
    if request.policies_only:
        return report
    for table, datasets in datasets_of.items():
        parts_dir = request.out / "tables" / table
        if table == "ppd-runtime":
            if context.is_main:
                runtime_table(request, datasets, policies["ppd"], one, device, report)
            continue
        if table == "davis":
            davis_table(request, datasets, policies, cfg, device, backends, len(sources), report)
            continue
        merged = {}
        # parts of an earlier run (other episodes, policies or settings) are never merged with this one's
        fingerprint = {"episodes": sum(len(d.episodes) for d in datasets), "cap": request.per_fold,
                       "learners": sorted(request.learners),
                       "policies": {k: policies[k].stat().st_mtime for k in sorted(policies)},
                       "config": config_digest(one)}
        for dataset in datasets:
            groups = context.mine(episode_groups(dataset.episodes))
            desc = f"{table} [{dataset.name}]"
            if table == "ppd-ablation":
                part = {"rows": ablation_rows(groups, dataset, policies["ppd"], one, device, backends, request.out,
                                              report, desc)}
            else:
                counts = {}
                bar = tqdm(total=len(groups), desc=desc, unit="group")
                for start in range(0, len(groups), 16):  # a few groups at a time, so progress shows
                    for key, value in evaluate_groups(groups[start:start + 16], dataset,
                                                      {k: policies[k] for k in request.learners}, one, device,
                                                      backends, request.out, report).items():
                        counts.setdefault(key, SegmentationCounts()).merge(value)
                    bar.update(len(groups[start:start + 16]))
                bar.close()
                part = {"counts": {key: value.to_dict() for key, value in counts.items()}}
            part["fingerprint"] = fingerprint
            atomic_write_json(parts_dir / context.part_name(f"{dataset.name}.json"), part)
        # after writing all of its parts, a process merges whatever is complete on disk: the one that
        # writes the last part of any data set writes the table
        for dataset in datasets:
            paths = [parts_dir / p for p in context.part_names(f"{dataset.name}.json")]
            parts = [json.loads(p.read_text()) for p in paths if p.is_file()]
            if len(parts) == len(paths) and all(p.get("fingerprint") == fingerprint for p in parts):
                merged[dataset.name] = merge_parts(parts)
        if len(merged) < len(datasets):
            print(f"[reproduce] {table}: part {context.rank}/{context.world} written to {parts_dir}; the table is "
                  "written by the process that completes the set")
            continue
        notes = sorted({d.note for d in datasets if d.note})
        if table == "ppd-ablation":
            csv_rows, markdown = ablation_table(merged, datasets)
            header = "Point Prompt Defender ablation: ideal → attacked → defended, initial → defended (mDSC %)"
        else:
            csv_rows, markdown = score_table(table, merged, datasets)
            header = ("Point Prompt Defender main table (mDSC / mIoU %, means over images)" if table == "ppd-main" else
                      "One-shot segmentation (class-wise mIoU / FB-IoU %, PASCAL-5i and COCO-20i: mean over folds)")
        episodes = sum(len(d.episodes) for d in datasets)
        notes.append(f"{episodes} episode(s); policies trained on {len(sources)} source(s) into {request.out / 'policies'}")
        write_table(request.out, table, csv_rows, markdown, header, one, notes)
    return report


def torchrun_started() -> bool:
    """True in a process that torchrun started (it sets RANK and WORLD_SIZE and the rendezvous address)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "MASTER_ADDR" in os.environ


def merge_parts(parts: list) -> dict:
    """One data set's results from every process's part: summed counts, or the ablation rows in order."""
    if "rows" in parts[0]:  # in one order whatever the split, so that the means are the same to the last bit
        return {"rows": sorted((row for part in parts for row in part["rows"]), key=lambda r: (r["domain"], r["query"]))}
    counts = {}
    for part in parts:
        for key, value in part["counts"].items():
            counts.setdefault(key, SegmentationCounts()).merge(SegmentationCounts.from_dict(value))
    return {key: value.to_dict() for key, value in sorted(counts.items())}


def ablation_rows(groups: list, dataset: DataSet, defender_path: Path, cfg: Config, device: str, backends: Backends,
                  out: Path, report: StageReport, desc: str) -> list:
    """Per query: the ablation columns (:mod:`gpoa.ablation`), in the groups' order."""
    ppd = load_ppd_run(defender_path.parent, cfg)
    rows = []
    for group, task in zip(tqdm(groups, desc=desc, unit="group"), dataset_tasks(groups, dataset, out, backends, cfg)):
        with quiet():
            report.merge(generate_initial_prompts(cfg, device, [task]))
        samples = task.prompt_file_samples(task.layout.initial_indices, report, with_images=True, with_truth=True)
        rows += [{"domain": group.domain, "query": stem, **row}
                 for stem, row in ppd.task_rows(task, samples, backends.segmenter, report)]
    return rows


def ablation_table(merged: dict, datasets: list) -> tuple:
    """(CSV rows, Markdown): the ablation's means per data set, the paper's beside them."""
    ours = []
    for dataset in datasets:
        rows = merged[dataset.name]["rows"]
        ours.append((dataset.title, "images", len(rows)))
        ours += [(dataset.title, k, percent(float(np.mean([r[k] for r in rows])) if rows else None))
                 for k in ABLATION_COLUMNS]
    return side_by_side(load_published("ppd-ablation"), ours, [d.title for d in datasets],
                        [("images", "images"), *ABLATION_TITLES.items()], corner="data set", formats={"images": "d"})


def runtime_table(request: Request, datasets: list, defender_path: Path, cfg: Config, device: str,
                  report: StageReport) -> None:
    """Seconds for the models' load and per image for prompt engineering and segmentation, measured on
    the first ``runtime_images`` queries of each data set, from scratch (an empty feature cache)."""
    ours = []
    for dataset in datasets:
        groups, chosen, total = episode_groups(dataset.episodes), [], 0
        for group in groups:
            if total >= request.runtime_images:
                break
            keep = group.queries[:request.runtime_images - total]
            chosen.append(Group(group.domain, group.support, keep, [e for e in group.episodes if e.query in keep],
                                group.only_support))
            total += len(keep)
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            backends = Backends(cfg, device)
            backends.extractor, backends.segmenter  # noqa: B018 - load both now: this is what is timed
            load = time.perf_counter() - start
            index = DomainIndex(dataset.folder)
            tasks = [group_task(g, index, Path(scratch) / "work", Path(scratch) / "cache", backends, cfg)
                     for g in chosen]
            start = time.perf_counter()
            with quiet():
                report.merge(generate_initial_prompts(cfg, device, tasks))
            optimize_with("ppd", defender_path, tasks, cfg, device, report)
            engineering = (time.perf_counter() - start) / max(total, 1)
            start = time.perf_counter()
            for task in tasks:
                for image_path in task.layout.targets:
                    prompt_file = task.layout.prompt_folder("ppd_indices") / f"{image_path.stem}.json"
                    if not prompt_file.is_file():
                        continue
                    prompts = read_prompt_file(prompt_file)
                    embedding = backends.segmenter.embed(read_image(image_path))
                    backends.segmenter.decode(embedding, [prompts.point_prompts()])
            segmentation = (time.perf_counter() - start) / max(total, 1)
        ours += [(dataset.title, "images", total), (dataset.title, "model_load_s", load),
                 (dataset.title, "prompt_engineering_s_per_image", engineering),
                 (dataset.title, "segmentation_s_per_image", segmentation)]
    csv_rows, markdown = side_by_side(
        load_published("ppd-runtime"), ours, [d.title for d in datasets],
        [("images", "images"), *((key, title) for key, title, _ in RUNTIME_COLUMNS)], corner="data set",
        formats={"images": "d", **{key: spec for key, _, spec in RUNTIME_COLUMNS}})
    notes = [f"device {device}; prompt engineering = stage 1 (features, matching, placement) + the PPD defender"]
    write_table(request.out, "ppd-runtime", csv_rows, markdown, "Runtime (seconds)", cfg, notes)


def davis_table(request: Request, clips: ClipSet, policies: dict, cfg: Config, device: str, backends: Backends,
                sources: int, report: StageReport) -> None:
    """GPOA's tracker on every clip of ``clips`` (``gpoa track``'s :func:`~gpoa.stages.track.track_clips`,
    its outputs under ``OUT/work/davis/<row>/``), without the agent and with the policy of each of
    ``--learners``; DAVIS's J, F and J&F means (%) beside the published DAVIS 2016 rows, written to
    ``OUT/davis.csv`` and ``OUT/davis.md`` by the process that finds every row's clips merged (module
    docstring). ``cfg``: the run's settings, its shard the clips' split; ``sources``: how many the
    policies were trained on (said under the table)."""
    one = dataclasses.replace(cfg, shard="0/1")
    rows = {"none": None, **{learner: policies[learner] for learner in request.learners}}
    track_cfg = dataclasses.replace(cfg, data=[str(clips.folder)])
    parts_dir = request.out / "tables" / "davis"
    # rows of an earlier run (other clips, frames, policies or settings) are never put in this one's table
    names = sorted(p.name for p in clips.folder.iterdir() if p.is_dir() and is_domain(p))
    fingerprint = {"folder": str(clips.folder.resolve()), "clips": names, "frames": clips.frames,
                   "policies": {key: path.stat().st_mtime for key, path in rows.items() if path is not None},
                   "config": config_digest(one)}
    for key, policy in rows.items():
        predictor = GPOAPredictor(track_cfg, policy, device, backends)
        row_report, clip_rows = track_clips(track_cfg, device, request.out / "work" / "davis" / key,
                                            None if policy is None else str(policy), predictor=predictor,
                                            max_frames=clips.frames)
        report.merge(row_report)
        if clip_rows:  # this process merged the row's clips (every process's part)
            atomic_write_json(parts_dir / f"{key}.json", {"fingerprint": fingerprint, "rows": clip_rows})
    merged = {}
    for key in rows:
        path = parts_dir / f"{key}.json"
        part = json.loads(path.read_text()) if path.is_file() else {}
        if part.get("fingerprint") == fingerprint:
            merged[key] = part["rows"]
    if len(merged) < len(rows):
        print(f"[reproduce] davis: rows {', '.join(k for k in rows if k not in merged)} are not complete here (clips of "
              "other processes, or clips that failed above); the table is written by the process that completes them")
        return
    ours = []
    for key, clip_rows in merged.items():
        means = headline(clip_rows, [])  # the means over clips bench_video.py reports
        ours += [(TRACK_ROWS[key], column, percent(means[column])) for column, _ in DAVIS_COLUMNS]
    csv_rows, markdown = side_by_side(load_published("davis2016"), ours, list(TRACK_ROWS.values()), DAVIS_COLUMNS)
    counted = merged["none"]
    clip_count, frames = len(counted), sum(row["frames"] for row in counted)
    scored = sum(row["scored"] for row in counted)
    what = f"{clips.folder.name} (stand-in clips, not DAVIS 2016 val)" if clips.stand_in else "DAVIS 2016 val"
    header = (f"Video object segmentation, {what}: J, F and J&F (%, per clip over its scored frames, then the mean "
              f"over clips), {clip_count} clip(s), {frames} frames ({scored} scored)")
    learners = ", ".join(request.learners)
    notes = [clips.note,
             "rows: GPOA's tracker (gpoa track) without the agent" + (
                 f" and with the policy of each of {learners}, trained on {sources} source(s) into "
                 f"{request.out / 'policies'}" if learners else " (--learners '': no policy)"),
             "the first and the last frame of each clip are not scored (DAVIS's protocol); a clip with no scored "
             "frame is left out of the means",
             "the published methods ran with their own backbones (their settings below), none of them GPOA's"]
    if (clip_count, frames) != DAVIS_VAL:
        notes.append(f"the published rows are over all of DAVIS 2016 val ({DAVIS_VAL[0]} clips, {DAVIS_VAL[1]} "
                     f"frames), ours over {clip_count} clip(s) and {frames} frames: not directly comparable")
    write_table(request.out, "davis", csv_rows, markdown, header, one, notes)


# ----- the command line ----------------------------------------------------------------------------
COMMAND = """Reproduce the papers' tables: ppd-main, ppd-ablation, ppd-runtime, fss, davis.

    reproduce.py TABLE [TABLE ...] --root DATA --out DIR [--config FILE] [--train DIR ...]
                 [--learners dqn,ppo,ppd] [--episodes N] [--targets N] [--set KEY=VALUE ...]
    torchrun --nproc-per-node 4 reproduce.py fss --root DATA --out DIR      # several GPUs / processes
"""


def main(argv=None, prog: str = "reproduce.py") -> int:
    """The command line (``reproduce.py``, ``gpoa reproduce``): the tables of the module docstring."""
    parser = argparse.ArgumentParser(prog=prog, description=COMMAND.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", metavar="TABLE", help=f"one or more of {', '.join(TABLES)}, or all")
    parser.add_argument("--root", required=True, metavar="DATA",
                        help="converted benchmarks (python -m gpoa.datasets NAME --out DATA/NAME) or a folder of "
                             "domain folders (a stand-in, e.g. a folder of small real domains)")
    parser.add_argument("--out", default="reproduce", metavar="DIR", help="tables, policies and work files")
    parser.add_argument("--config", metavar="FILE", help="YAML config (configs/demo.yaml: the embedded default)")
    parser.add_argument("--train", action="append", default=[], metavar="DIR",
                        help="training data for the policies when --root has no FSS-1000 (repeatable), e.g. data/tasks")
    parser.add_argument("--learners", default=",".join(LEARNERS),
                        help="rows with a policy (default: dqn,ppo,ppd; '': none, no training)")
    parser.add_argument("--episodes", type=int, metavar="N",
                        help="only the first N episodes of each fold (davis: N scored frames of each clip)")
    parser.add_argument("--targets", type=int, default=10, metavar="N",
                        help="queries per domain when --root holds domain folders (default 10; davis: scored frames "
                             "per clip)")
    parser.add_argument("--runtime-images", type=int, default=10, metavar="N",
                        help="images per data set timed for ppd-runtime (default 10)")
    parser.add_argument("--policies-only", action="store_true", help="train the policies, then stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--shard", default="", metavar="I/N",
                        help="handle the I-th of N shares of the episodes (torchrun: RANK / WORLD_SIZE)")
    args = parser.parse_args(argv)
    tables = list(TABLES) if args.tables == ["all"] else args.tables
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]

    def work():
        unknown = [t for t in tables if t not in TABLES] + [n for n in learners if n not in LEARNERS]
        if unknown:
            raise UsageError(f"unknown table or learner {unknown}; tables: {', '.join(TABLES)}, all; "
                             f"learners: {', '.join(LEARNERS)}")
        if args.episodes is not None and args.episodes < 1 or args.targets < 1 or args.runtime_images < 1:
            raise UsageError("--episodes, --targets and --runtime-images must be at least 1")
        cfg = load_config(args.config, args.overrides + [f"shard={args.shard}"])
        device = rank_device(resolve_device(cfg.device if args.device == "auto" else args.device))
        seed_everything(cfg.seed)
        request = Request(tables=tables, root=Path(args.root), out=Path(args.out), train=args.train,
                          learners=learners, per_fold=args.episodes, targets=args.targets,
                          runtime_images=args.runtime_images, policies_only=args.policies_only,
                          every=args.tables == ["all"])
        return run(request, cfg, device)

    return exit_code_of(parser.prog, work)
