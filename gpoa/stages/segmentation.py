"""Stage 4: decode every prompt set of every target with the segmenter, evaluate, tabulate.

Prompt sets are found automatically: ``initial_indices/`` → ``initial``, ``optimized_indices/`` →
``optimized``, any other ``DATASET/<name>_indices/`` → ``<name>``, each folder of
``segmentation.prompts`` (``--prompts DIR``) → its folder name, and, where ``target_mask/`` has the
image's mask, ``ideal`` (prompts sampled from the ground truth: the upper bound). Each target is
embedded once and all its prompt sets are decoded in one call.

Writes to ``segmentation.out`` (default ``DATASET/results``): ``masks/<set>/<stem>.png`` (0/255,
original size), ``overlays/<set>/<stem>.png``, ``metrics.csv``, ``summary.csv``, ``summary.md`` and
the resolved ``config.yaml``. A mask already written and newer than its prompt file is reused.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpoa.config import Config, save_config
from gpoa.errors import InputError, UsageError
from gpoa.io import (
    DatasetLayout,
    atomic_write_text,
    check_prompts_fit_image,
    image_size,
    read_image,
    read_mask,
    read_prompt_file,
    write_mask,
    write_png,
)
from gpoa.metrics import all_metrics
from gpoa.prompts import PromptSet, sample_ideal_prompts
from gpoa.segmenters import build_segmenter
from gpoa.stages.common import StageReport, is_fresh, settings_stamp, stable_seed, working_grid
from gpoa.viz import overlay_mask

IDEAL = "ideal"
METRICS = ("dice", "iou", "hd95")
SUMMARY_COLUMNS = ("prompt_set", "images", "dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_std")


def discover_prompt_folders(layout: DatasetLayout, extra: list) -> list:
    """(name, folder) of every prompt set to evaluate, in table order (initial, optimized, others)."""
    found = {}
    fixed = [("initial", layout.initial_indices), ("optimized", layout.optimized_indices)]
    others = sorted(p for p in layout.root.glob("*_indices") if p.is_dir() and p not in dict(fixed).values())
    for name, folder in fixed + [(p.name[: -len("_indices")], p) for p in others]:
        if folder.is_dir() and any(folder.glob("*.json")):
            found.setdefault(folder.resolve(), name)
    for folder in map(Path, extra):
        if not folder.is_dir():
            raise UsageError(f"prompt folder '{folder}' (from --prompts / segmentation.prompts) does not exist")
        name = folder.name[: -len("_indices")] if folder.name.endswith("_indices") else folder.name
        found.setdefault(folder.resolve(), name)
    names = list(found.values())
    duplicates = {n for n in names if names.count(n) > 1 or n == IDEAL}
    if duplicates:
        raise UsageError(f"several prompt folders are named {sorted(duplicates)}; rename one (the folder name "
                         "becomes the prompt-set name in the table)")
    return [(name, folder) for folder, name in found.items()]


def summarise(rows: list, order: list) -> list:
    """Per prompt set: image count, mean and (population) std of each metric."""
    summary = []
    for name in order:
        values = {m: np.array([r[m] for r in rows if r["prompt_set"] == name], dtype=np.float64) for m in METRICS}
        if len(values["dice"]) == 0:
            continue
        entry = {"prompt_set": name, "images": len(values["dice"])}
        for metric in METRICS:
            entry[f"{metric}_mean"] = float(values[metric].mean())
            entry[f"{metric}_std"] = float(values[metric].std())
        summary.append(entry)
    return summary


def _csv(rows: list, columns: tuple) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    return buffer.getvalue()


def markdown_table(summary: list) -> str:
    header = "| prompt set | images | Dice | IoU | HD95 (px) |\n| --- | ---: | ---: | ---: | ---: |\n"
    lines = [f"| {s['prompt_set']} | {s['images']} | {100 * s['dice_mean']:.1f} ± {100 * s['dice_std']:.1f} | "
             f"{100 * s['iou_mean']:.1f} ± {100 * s['iou_std']:.1f} | {s['hd95_mean']:.1f} ± {s['hd95_std']:.1f} |"
             for s in summary]
    return header + "\n".join(lines) + "\n"


def segment_and_evaluate(cfg: Config, device: str = "cpu") -> tuple:
    """Run stage 4 on ``cfg.data``. Returns (StageReport, summary rows)."""
    layout = DatasetLayout(cfg.data)
    layout.require("target_image")
    layout.check_unique_stems(layout.target_mask)
    grid = working_grid(cfg)
    folders = discover_prompt_folders(layout, cfg.segmentation.prompts)
    has_truth = layout.target_mask.is_dir()
    if not folders and not has_truth:
        raise UsageError(f"no prompt files to segment in '{layout.root}': run Generate_initial_prompts.py first "
                         "or pass a prompt folder with --prompts DIR")
    out = Path(cfg.segmentation.out) if cfg.segmentation.out else layout.results
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    stamp = settings_stamp(out / "masks" / "settings.txt", {
        "segmenter": dataclasses.asdict(cfg.segmenter), "seed": cfg.seed, "grid": grid.to_dict(),
        "ideal": [cfg.segmentation.ideal_positive, cfg.segmentation.ideal_negative]})
    order = [name for name, _ in folders] + ([IDEAL] if has_truth else [])

    segmenter = build_segmenter(cfg, device=device)
    report = StageReport("segmentation")
    rows = []
    for image_path in tqdm(layout.images(layout.target_image), desc="segmentation", unit="image"):
        stem = image_path.stem
        try:
            image = read_image(image_path)
            size = image_size(image)
            truth = None
            mask_path = layout.find_by_stem(layout.target_mask, stem) if has_truth else None
            if mask_path is not None:
                truth = read_mask(mask_path, expected_size=size)
        except InputError as exc:
            report.fail(image_path.name, str(exc))
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
                report.fail(f"{name}/{stem}", str(exc))
                continue
            prompt_sets[name] = (prompt_set, prompt_path)
        if truth is not None:
            rng = np.random.default_rng(stable_seed(cfg.seed, "ideal", stem))
            positive, negative = sample_ideal_prompts(grid, truth, cfg.segmentation.ideal_positive,
                                                      cfg.segmentation.ideal_negative, rng)
            prompt_sets[IDEAL] = (PromptSet(image_path.name, size, grid, positive, negative, source=IDEAL), None)
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
            embedding = segmenter.embed(image)
            decoded, _ = segmenter.decode(embedding, [prompt_sets[n][0].point_prompts() for n in to_decode])
            for name, mask in zip(to_decode, decoded):
                prompt_set = prompt_sets[name][0]
                masks[name] = mask
                write_mask(out / "masks" / name / f"{stem}.png", mask)
                if cfg.segmentation.overlays:
                    write_png(out / "overlays" / name / f"{stem}.png",
                              overlay_mask(image, mask, prompt_set.positive_points, prompt_set.negative_points))
        if not to_decode:
            report.skipped.append((stem, "masks exist"))
        if truth is not None:
            for name in order:
                if name in masks:
                    rows.append({"prompt_set": name, "image": stem, **all_metrics(masks[name], truth)})
        if to_decode:
            report.done.append(stem)

    summary = summarise(rows, order)
    atomic_write_text(out / "metrics.csv", _csv(rows, ("prompt_set", "image") + METRICS))
    atomic_write_text(out / "summary.csv", _csv(summary, SUMMARY_COLUMNS))
    table = markdown_table(summary)
    atomic_write_text(out / "summary.md", f"# Segmentation results: {layout.root}\n\n{table}")
    if summary:
        print(f"\nResults for {layout.root} (Dice and IoU in %, mean ± std over images):\n\n{table}")
    else:
        print(f"\nMasks written to {out / 'masks'}; no target_mask/ ground truth, so no metrics.")
    return report, summary
