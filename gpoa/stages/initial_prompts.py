"""Stage 1: match each task's reference onto every target image → ``initial_indices/<stem>.json``.

Runs over every task of ``cfg.data`` with the models loaded once. Also caches the target patch
features (fp16) for the later stages and draws the prompts on each target
(``initial_indices/overlays/<stem>.png``, at most :data:`gpoa.viz.OVERLAY_MAX_SIDE` pixels long).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from tqdm import tqdm

from gpoa.backends import Backends
from gpoa.config import Config, save_config
from gpoa.errors import InputError
from gpoa.inference import TAUGHT_REFERENCE, policy_reference, taught_reference_digest
from gpoa.io import read_image, write_png, write_prompt_file
from gpoa.runtime import ONE_PROCESS, RunContext, StageReport, is_fresh, settings_stamp
from gpoa.tasks import Task, load_tasks
from gpoa.viz import MaskOverlays

INITIAL_FOLDER = "initial_indices"


def generate_initial_prompts(cfg: Config, device: str = "cpu", tasks: Optional[list] = None) -> StageReport:
    """Stage 1 over ``tasks`` (default: the tasks of ``cfg.data``, matched against the references of
    the taught policy ``optimize.policy`` names, if it is one: gpoa.teach)."""
    tasks = tasks if tasks is not None else load_tasks(cfg, Backends(cfg, device),
                                                       taught_reference=policy_reference(cfg))
    report = StageReport("initial prompts")
    context = RunContext.from_settings(cfg.shard)
    for task in tasks:
        initial_prompts_of(task, report, context)
    return report


def initial_prompts_of(task: Task, report: StageReport, context: RunContext = ONE_PROCESS) -> None:
    """Stage 1 for one task (this process's share of its targets); outcomes go to ``report`` as
    ``<task>/<stem>``."""
    cfg, layout = task.cfg, task.layout
    layout.require("reference", "targets")
    task.reference  # noqa: B018 - a bad reference stops the task before any target is read
    out = layout.prompt_folder(INITIAL_FOLDER)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    taught = None if task.taught_reference is None else taught_reference_digest(task.taught_reference)
    references = ([{"file": str(p), "bytes": p.stat().st_size, "modified": p.stat().st_mtime}
                   for pair in layout.reference for p in pair] if taught is None else [{TAUGHT_REFERENCE: taught}])
    stamp = settings_stamp(out / "settings.txt", {"matching": dataclasses.asdict(cfg.matching),
                                                    "placement": dataclasses.asdict(cfg.placement), "seed": cfg.seed,
                                                    "features": task.store.key, "reference": references})
    for image_path in tqdm(context.mine(layout.targets), desc=f"initial prompts [{task.name}]", unit="image"):
        stem = image_path.stem
        name = f"{task.name}/{stem}"
        prompt_path = out / f"{stem}.json"
        if not cfg.overwrite and is_fresh(prompt_path, stamp, image_path) and task.store.is_cached(image_path):
            report.skipped.append((name, "exists"))
            continue
        try:
            image = read_image(image_path)
            features = task.store.features(image_path, image)
        except InputError as exc:
            report.fail(name, str(exc))
            continue
        prompt_set = task.propose(image_path.name, image, features)
        if taught is not None:  # stage 3 checks that a taught policy edits prompts of its own references
            prompt_set.extra[TAUGHT_REFERENCE] = taught
        if len(prompt_set.positive_indices) == 0:
            report.fail(name, "no reference foreground patch matched this image (with "
                              f"matching.mutual_nearest={cfg.matching.mutual_nearest}); skipped")
            continue
        write_prompt_file(prompt_path, prompt_set)
        write_png(out / "overlays" / f"{stem}.png",
                  MaskOverlays(image).points(prompt_set.positive_points, prompt_set.negative_points), photo=True)
        report.done.append(name)
