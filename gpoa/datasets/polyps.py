"""Colonoscopy polyp benchmarks: Kvasir-SEG (Jha et al., MMM 2020) and CVC-ClinicDB (Bernal et al. 2015).

Source layouts (the official downloads)::

    Kvasir-SEG:    <src>/images/<id>.jpg              <src>/masks/<id>.jpg         (JPEG masks)
    CVC-ClinicDB:  <src>/Original/<n>.tif             <src>/Ground Truth/<n>.tif

Output: one domain, ``OUT/kvasir/`` or ``OUT/cvc/``, split ``all`` (neither ships an official split).
Masks: foreground above half the range (:func:`gpoa.datasets.common.read_binary_mask`); Kvasir's
JPEG masks carry compression noise that a nonzero rule would turn into foreground.
Episodes: Point Prompt Defender's one-shot setting (:func:`gpoa.protocols.one_shot_episodes`): one
reference drawn with the seed, every other image a query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from gpoa.datasets.common import (
    Benchmark,
    Index,
    Options,
    binary_item,
    pair_by_stem,
    require_folder,
    require_images,
)
from gpoa.protocols import one_shot_episodes

KVASIR_LAYOUT = """  <src>/images/<id>.jpg
  <src>/masks/<id>.jpg      (JPEG masks, same name as the image)
(<src> is the unzipped Kvasir-SEG/ folder)"""
CVC_LAYOUT = """  <src>/Original/<n>.tif
  <src>/Ground Truth/<n>.tif   (same name as the image)
(<src> is the unzipped CVC-ClinicDB folder)"""


def pair_folders(domain: str, image_folder: Path, mask_folder: Path, layout: str, seed: int,
                 limit: Optional[int] = None) -> Index:
    """The index of a one-domain benchmark whose images and masks pair by stem in two folders."""
    for folder, what in ((image_folder, "images"), (mask_folder, "masks")):
        require_folder(folder, f"the {domain} {what}", layout)
    images = require_images(image_folder, f"the {domain} images", layout)
    masks = {p.stem: p for p in require_images(mask_folder, f"the {domain} masks", layout)}
    suffix = {p.suffix for p in masks.values()}
    pairs, failures = pair_by_stem(images, masks, mask_folder,
                                   lambda stem: f"{stem}{next(iter(suffix)) if len(suffix) == 1 else '.*'}")
    items = [binary_item(image.stem, image, mask, "all", domain) for image, mask in pairs]

    def episodes(members: dict) -> list:
        stems = members.get("all", {}).get(domain, [])
        return one_shot_episodes(domain, stems, stems, seed, limit)

    protocol = ("one-shot (Point Prompt Defender): one reference drawn with the seed, every other image a query"
                + (f" (a seeded {limit})" if limit else ""))
    return Index(items=items, episodes=episodes, protocol=protocol, failures=failures)


def kvasir_index(src: Path, options: Options) -> Index:
    return pair_folders("kvasir", src / "images", src / "masks", KVASIR_LAYOUT, options.seed, options.episodes)


def cvc_index(src: Path, options: Options) -> Index:
    return pair_folders("cvc", src / "Original", src / "Ground Truth", CVC_LAYOUT, options.seed, options.episodes)


KVASIR = Benchmark(name="kvasir", title="Kvasir-SEG", layout=KVASIR_LAYOUT, index=kvasir_index)
CVC = Benchmark(name="cvc", title="CVC-ClinicDB", layout=CVC_LAYOUT, index=cvc_index)
