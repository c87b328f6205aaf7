"""Stage 1: match the reference onto every target image → ``initial_indices/<stem>.json``.

Also caches the target patch features (fp16) for the later stages and draws the prompts on each
target (``initial_indices/overlays/<stem>.png``).
"""

from __future__ import annotations

import dataclasses

from tqdm import tqdm

from gpoa.config import Config, save_config
from gpoa.errors import InputError
from gpoa.io import DatasetLayout, image_size, read_image, write_png, write_prompt_file
from gpoa.matching import match_prompts
from gpoa.prompts import PromptSet
from gpoa.stages.common import FeatureStore, StageReport, is_fresh, load_reference, settings_stamp
from gpoa.viz import draw_points

INITIAL_FOLDER = "initial_indices"


def generate_initial_prompts(cfg: Config, device: str = "cpu") -> StageReport:
    layout = DatasetLayout(cfg.data)
    layout.require("reference_image", "reference_mask", "target_image")
    store = FeatureStore(cfg, layout, device)
    reference = load_reference(cfg, layout, store)
    out = layout.prompt_folder(INITIAL_FOLDER)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    references = [{"file": str(p), "bytes": p.stat().st_size, "modified": p.stat().st_mtime}
                  for pair in layout.reference_pairs() for p in pair]
    stamp = settings_stamp(out / "settings.txt", {"matching": dataclasses.asdict(cfg.matching),
                                                    "features": store.key, "reference": references})

    report = StageReport("initial prompts")
    targets = layout.images(layout.target_image)
    for image_path in tqdm(targets, desc="initial prompts", unit="image"):
        stem = image_path.stem
        prompt_path = out / f"{stem}.json"
        if not cfg.overwrite and is_fresh(prompt_path, stamp, image_path) and is_fresh(store.path("target", stem),
                                                                                     image_path):
            report.skipped.append((stem, "exists"))
            continue
        try:
            image = read_image(image_path)
            features = store.features("target", image_path, image)
        except InputError as exc:
            report.fail(image_path.name, str(exc))
            continue
        match = match_prompts(reference, features, cfg.matching)
        if len(match.positive_indices) == 0:
            report.fail(image_path.name, "no reference foreground patch matched this image (with "
                                         f"matching.mutual_nearest={cfg.matching.mutual_nearest}); skipped")
            continue
        prompt_set = PromptSet(image=image_path.name, original_size=image_size(image), grid=store.grid,
                               positive_indices=match.positive_indices, negative_indices=match.negative_indices,
                               source="matching")
        write_prompt_file(prompt_path, prompt_set)
        write_png(out / "overlays" / f"{stem}.png",
                  draw_points(image, prompt_set.positive_points, prompt_set.negative_points))
        report.done.append(stem)
    return report
