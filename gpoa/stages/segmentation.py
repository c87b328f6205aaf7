"""Stage 4: decode every prompt set of every target with the segmenter, evaluate, tabulate.

Runs over every task of ``cfg.data`` with the segmenter loaded once. Prompt sets are found per
task: ``initial_indices/`` → ``initial``, ``optimized_indices/`` → ``optimized``, any other
``<task root>/<name>_indices/`` → ``<name>``, each folder of ``segmentation.prompts``
(``--prompts DIR``; with several tasks ``DIR/<task>/``) → its folder name, and, where the target has
a mask, ``ideal`` (prompts sampled from the ground truth). Each target is embedded once and all
its prompt sets are decoded in one call. A prompt file that says ``"present": false`` (stage 3's
presence decision, :mod:`gpoa.presence`) gets an empty mask.

Writes to ``segmentation.out`` (default: the task's ``results/``; with several tasks
``OUT/<task>/``): ``masks/<set>/<stem>.png`` (0/255, original size), ``overlays/<set>/<stem>.png``
(long side at most :data:`gpoa.viz.OVERLAY_MAX_SIDE`),
``metrics.csv`` (one row per image and prompt set, with raw pixel counts; ``metrics.json`` the same
rows at full precision), ``summary.csv``,
``summary.md`` and the resolved ``config.yaml``. A mask already written and newer than its prompt
file is reused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.backends import Backends
from gpoa.config import Config, save_config
from gpoa.errors import InputError, UsageError
from gpoa.evaluation import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    image_rows,
    markdown_table,
    mean_over_tasks,
    summarise,
    to_csv,
)
from gpoa.inference import decode_masks, ideal_prompts
from gpoa.io import (
    atomic_write_json,
    atomic_write_text,
    check_prompts_fit_image,
    image_size,
    read_image,
    read_mask,
    read_prompt_file,
    write_mask,
    write_png,
)
from gpoa.layout import TaskLayout
from gpoa.runtime import ONE_PROCESS, RunContext, StageReport, is_fresh, settings_stamp
from gpoa.tasks import Task, load_tasks
from gpoa.viz import MaskOverlays

IDEAL = "ideal"


def prompt_set_name(folder: Path) -> str:
    """The prompt-set name of a prompt folder: its name without a trailing ``_indices``."""
    return folder.name[: -len("_indices")] if folder.name.endswith("_indices") else folder.name


def discover_prompt_folders(layout: TaskLayout, extra: list) -> list:
    """(name, folder) of every prompt set to evaluate, in table order (initial, optimized, others).

    ``extra``: more prompt folders, each named by :func:`prompt_set_name`, or (name, folder) pairs.
    """
    found = {}
    fixed = [("initial", layout.initial_indices), ("optimized", layout.optimized_indices)]
    others = sorted(p for p in layout.root.glob("*_indices") if p.is_dir() and p not in dict(fixed).values())
    for name, folder in fixed + [(p.name[: -len("_indices")], p) for p in others]:
        if folder.is_dir() and any(folder.glob("*.json")):
            found.setdefault(folder.resolve(), name)
    for entry in extra:
        name, folder = (entry[0], Path(entry[1])) if isinstance(entry, tuple) else (None, Path(entry))
        if not folder.is_dir():
            raise UsageError(f"prompt folder '{folder}' (from --prompts / segmentation.prompts) does not exist")
        found.setdefault(folder.resolve(), name or prompt_set_name(folder))
    names = list(found.values())
    duplicates = {n for n in names if names.count(n) > 1 or n == IDEAL}
    if duplicates:
        raise UsageError(f"several prompt folders are named {sorted(duplicates)}; rename one (the folder name "
                         "becomes the prompt-set name in the table)")
    return [(name, folder) for folder, name in found.items()]


def merge_parts(parts: list, fingerprint: dict) -> Optional[list]:
    """The rows of every shard's part, in the order one process would have made them (targets in
    order, then prompt sets in table order); None while some part is from another run (other
    targets or settings: it is rewritten when its process runs again)."""
    data = [json.loads(part.read_text()) for part in parts]
    if any(d.get("fingerprint") != fingerprint for d in data):
        return None
    rows = [row for d in data for row in d["rows"]]
    order = list(dict.fromkeys(name for d in data for name in d["order"]))  # a set some part lacks sorts last
    order = [n for n in order if n not in (IDEAL,)] + ([IDEAL] if IDEAL in order else [])
    position = {stem: i for i, stem in enumerate(fingerprint["targets"])}
    return sorted(rows, key=lambda row: (position[row["image"]], order.index(row["prompt_set"])))


def segment_and_evaluate(cfg: Config, device: str = "cpu", tasks: Optional[list] = None) -> tuple:
    """Stage 4 over ``tasks`` (default: the tasks of ``cfg.data``) → (StageReport, summary rows).

    Summary rows carry a ``task`` column; with several tasks, rows of task ``MEAN`` follow.
    """
    backends = tasks[0].backends if tasks else Backends(cfg, device)  # the tasks' models: loaded once
    tasks = tasks if tasks is not None else load_tasks(cfg, backends)
    report, summary = StageReport("segmentation"), []
    context = RunContext.from_settings(cfg.shard)
    several = len(tasks) > 1
    for task in tasks:
        # with several tasks, --prompts DIR reads DIR/<task>/; the set keeps DIR's name in every task
        extra = ([(prompt_set_name(Path(p)), Path(p) / task.name) for p in cfg.segmentation.prompts] if several
                 else cfg.segmentation.prompts)
        out = Path(cfg.segmentation.out) / task.name if several and cfg.segmentation.out else (
            Path(cfg.segmentation.out) if cfg.segmentation.out else task.layout.results)
        summary += segment_task(task, backends, extra, out, report, context)
    if several and summary and len({s["task"] for s in summary}) == len(tasks):
        order = list(dict.fromkeys(s["prompt_set"] for s in summary))
        means = mean_over_tasks(summary, order)
        print(f"\nMean over {len(tasks)} tasks (Dice and IoU in %):\n\n{markdown_table(means)}")
        summary += means
    return report, summary


def segment_task(task: Task, backends: Backends, extra_prompts: list, out: Path, report: StageReport,
                 context: RunContext = ONE_PROCESS) -> list:
    """Stage 4 for one task, written to ``out``; returns its summary rows.

    With several processes (``context``) each segments its share of the targets and writes its
    rows to ``metrics.part-<rank>-of-<world>.json``; the process that completes the set of parts
    merges them into exactly the tables one process writes, and returns the summary (the others
    return [])."""
    cfg, layout, grid = task.cfg, task.layout, task.grid
    layout.require("targets")
    folders = discover_prompt_folders(layout, extra_prompts)
    has_truth = layout.has_truth
    if not folders and not has_truth:
        raise UsageError(f"no prompt files to segment in '{layout.root}': run Generate_initial_prompts.py first "
                         "or pass a prompt folder with --prompts DIR")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    stamp = settings_stamp(out / "masks" / "settings.txt", {
        "segmenter": dataclasses.asdict(cfg.segmenter), "seed": cfg.seed, "grid": grid.to_dict(),
        "ideal": [cfg.segmentation.ideal_positive, cfg.segmentation.ideal_negative]})
    order = [name for name, _ in folders] + ([IDEAL] if has_truth else [])
    segmenter = backends.segmenter  # loaded (or its checkpoint refused) before any image is read

    rows = []
    for image_path in tqdm(context.mine(layout.targets), desc=f"segmentation [{task.name}]", unit="image"):
        stem = image_path.stem
        label = f"{task.name}/{stem}"
        try:
            image = read_image(image_path)
            size = image_size(image)
            mask_path = layout.target_mask(stem)
            truth = read_mask(mask_path, expected_size=size) if mask_path is not None else None
            ignore_path = layout.ignore_masks.get(stem)
            ignore = read_mask(ignore_path, expected_size=size) if ignore_path is not None else None
        except InputError as exc:
            report.fail(label, str(exc))
            continue

        prompt_sets = {}  # name → (PromptSet, prompt file or None)
        for name, folder in folders:
            prompt_path = folder / f"{stem}.json"
            if not prompt_path.is_file():
                continue
            try:
                prompt_set = read_prompt_file(prompt_path, expected_grid=grid)
                check_prompts_fit_image(prompt_path, prompt_set, image_path, size)
            except InputError as exc:
                report.fail(f"{task.name}/{name}/{stem}", str(exc))
                continue
            prompt_sets[name] = (prompt_set, prompt_path)
        if truth is not None:
            prompt_sets[IDEAL] = (ideal_prompts(truth, grid, cfg, image_path.name), None)
        if not prompt_sets:
            continue

        masks, to_decode = {}, []
        for name, (_, prompt_path) in prompt_sets.items():
            mask_file = out / "masks" / name / f"{stem}.png"
            if not cfg.overwrite and is_fresh(mask_file, stamp, prompt_path, image_path):
                try:
                    masks[name] = read_mask(mask_file, expected_size=size)
                    continue
                except InputError:
                    # a damaged output is decoded again
                    pass
            to_decode.append(name)
        if to_decode:
            # a prompt file that calls the object absent (stage 3's presence decision) gets an empty mask
            absent = [n for n in to_decode if prompt_sets[n][0].extra.get("present") is False]
            present = [n for n in to_decode if n not in absent]
            decoded = list(decode_masks(segmenter, image, [prompt_sets[n][0] for n in present])) if present else []
            decoded += [np.zeros(image.shape[:2], dtype=bool) for _ in absent]
            overlays = MaskOverlays(image) if cfg.segmentation.overlays else None  # the image shrunk once
            for name, mask in zip(present + absent, decoded):
                prompt_set = prompt_sets[name][0]
                masks[name] = mask
                write_mask(out / "masks" / name / f"{stem}.png", mask)
                if overlays is not None:
                    write_png(out / "overlays" / name / f"{stem}.png",
                              overlays(mask, prompt_set.positive_points, prompt_set.negative_points), photo=True)
            report.done.append(label)
        else:
            report.skipped.append((label, "masks exist"))
        if truth is not None:
            rows += image_rows(task.name, stem, {name: masks[name] for name in order if name in masks}, truth, ignore)

    if context.world > 1:
        fingerprint = {"targets": [p.stem for p in layout.targets], "settings": stamp.read_text()}
        atomic_write_json(out / context.part_name("metrics.json"),
                          {"fingerprint": fingerprint, "order": order, "rows": rows})
        parts = [out / name for name in context.part_names("metrics.json")]
        merged = merge_parts(parts, fingerprint) if all(part.is_file() for part in parts) else None
        if merged is None:
            print(f"\n[{task.name}] rows of shard {context.rank}/{context.world} written to {parts[context.rank]}; "
                  "the tables are merged when every shard's part of this run is there")
            return []
        rows = merged
    summary = summarise(rows, order)
    atomic_write_text(out / "metrics.csv", to_csv(rows, ROW_COLUMNS))
    atomic_write_json(out / "metrics.json", rows)  # the same rows at full precision, for tables built on top
    atomic_write_text(out / "summary.csv", to_csv(summary, SUMMARY_COLUMNS))
    atomic_write_json(out / "summary.json", summary)  # full precision, for tables built on top
    table = markdown_table(summary)
    atomic_write_text(out / "summary.md", f"# Segmentation results: {task.name} ({layout.source})\n\n{table}")
    if summary:
        print(f"\nResults for {task.name} ({layout.source}; Dice and IoU in %, mean ± std over images):\n\n{table}")
    else:
        print(f"\nMasks written to {out / 'masks'}; no target masks, so no metrics.")
    return summary
