"""ISIC 2018 Task 1, lesion boundary segmentation (Codella et al. 2019; Tschandl et al. 2018).

Source layout (the official zips, unpacked side by side; Validation and Test where present)::

    <src>/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
    <src>/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
    <src>/ISIC2018_Task1-2_Validation_Input/...     + ISIC2018_Task1_Validation_GroundTruth/...
    <src>/ISIC2018_Task1-2_Test_Input/...           + ISIC2018_Task1_Test_GroundTruth/...

An input folder needs its ground-truth folder and the other way round (a half-downloaded split is an
error naming the missing folder); the input folders' ATTRIBUTION.txt and LICENSE.txt are skipped.

Output: one domain ``OUT/isic2018/`` (stem ``ISIC_0000000``: the mask's ``_segmentation`` suffix
dropped), each image's split (train / val / test) in splits.json. Episodes: Point Prompt Defender's
one-shot setting (:func:`gpoa.protocols.one_shot_episodes`): one reference drawn with the seed from
the training images, every test image a query (val when there is no test split, the other training
images when there is neither).
"""

from __future__ import annotations

from pathlib import Path

from gpoa.datasets.common import Benchmark, Index, Options, binary_item, pair_by_stem
from gpoa.errors import UsageError
from gpoa.layout import list_images
from gpoa.protocols import one_shot_episodes

NAME = "isic2018"
DOMAIN = "isic2018"
MASK_SUFFIX = "_segmentation"
#: split → (input folder, ground-truth folder)
FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
LAYOUT = """  <src>/ISIC2018_Task1-2_Training_Input/ISIC_xxxxxxx.jpg
  <src>/ISIC2018_Task1_Training_GroundTruth/ISIC_xxxxxxx_segmentation.png
  and, where present, the same pair for Validation and Test
  (ISIC2018_Task1-2_Validation_Input + ISIC2018_Task1_Validation_GroundTruth, ..._Test_...)"""


def present_splits(src: Path) -> dict:
    """{split: (input folder, ground-truth folder)} of the complete splits; UsageError for half ones."""
    found = {}
    for split, (inputs, truth) in FOLDERS.items():
        has_inputs, has_truth = (src / inputs).is_dir(), (src / truth).is_dir()
        if has_inputs != has_truth:
            missing = truth if has_inputs else inputs
            raise UsageError(f"'{src / missing}' is missing: the {split} split needs both '{inputs}/' and "
                             f"'{truth}/' (unzip both, or move the other away). Expected layout:\n{LAYOUT}")
        if has_inputs:
            found[split] = (src / inputs, src / truth)
    if not found:
        raise UsageError(f"'{src}' holds no ISIC 2018 Task 1 folders. Expected layout:\n{LAYOUT}")
    return found


def index(src: Path, options: Options) -> Index:
    items, failures = [], []
    splits = present_splits(src)
    for split, (inputs, truth) in splits.items():
        images = [p for p in list_images(inputs) if p.suffix.lower() == ".jpg"]
        if not images:
            raise UsageError(f"'{inputs}' holds no .jpg images. Expected layout:\n{LAYOUT}")
        masks = {p.stem[:-len(MASK_SUFFIX)]: p for p in list_images(truth) if p.stem.endswith(MASK_SUFFIX)}
        pairs, missing = pair_by_stem(images, masks, truth, lambda stem: f"{stem}{MASK_SUFFIX}.png")
        failures += missing
        items += [binary_item(image.stem, image, mask, split, DOMAIN) for image, mask in pairs]
    reference_split = next(s for s in ("train", "val", "test") if s in splits)
    query_split = next(s for s in ("test", "val", "train") if s in splits)

    def episodes(members: dict) -> list:
        references = members.get(reference_split, {}).get(DOMAIN, [])
        queries = members.get(query_split, {}).get(DOMAIN, [])
        return one_shot_episodes(DOMAIN, references, queries, options.seed, options.episodes)

    protocol = (f"one-shot (Point Prompt Defender): one reference drawn from the {reference_split} images, "
                f"every {query_split} image a query" + (f" (a seeded {options.episodes})" if options.episodes else ""))
    return Index(items=items, episodes=episodes, protocol=protocol, failures=failures,
                 notes=[f"splits present: {', '.join(splits)}"])


BENCHMARK = Benchmark(name=NAME, title="ISIC 2018 Task 1", layout=LAYOUT, index=index)
