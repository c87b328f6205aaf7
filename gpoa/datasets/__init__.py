"""Converters of few-shot and one-shot segmentation benchmarks into GPOA's domain layout.

``python -m gpoa.datasets NAME --src RAW_DIR --out DIR [--seed S] [--episodes N] [--split-file FILE]
[--year Y] [--split S]`` reads a benchmark's official on-disk layout and writes
``DIR/<domain>/image|mask|ignore/``, ``DIR/episodes.json``, ``DIR/splits.json`` and
``DIR/dataset.json`` (:mod:`gpoa.datasets.common`). One module per benchmark says what it reads:
:mod:`~gpoa.datasets.fss1000`, :mod:`~gpoa.datasets.pascal`, :mod:`~gpoa.datasets.coco`,
:mod:`~gpoa.datasets.isic`, :mod:`~gpoa.datasets.polyps` (Kvasir-SEG and CVC-ClinicDB) and
:mod:`~gpoa.datasets.davis` (DAVIS 2016 and 2017: one clip folder per sequence or object, frames in
time order). Episodes and metrics: :mod:`gpoa.protocols`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from gpoa.datasets import coco, davis, fss1000, isic, pascal, polyps
from gpoa.datasets.common import Benchmark, Options, Report, convert_benchmark
from gpoa.errors import UsageError

#: name → benchmark, in the order the command line lists them
BENCHMARKS = {benchmark.name: benchmark for benchmark in (
    fss1000.BENCHMARK, pascal.BENCHMARK, coco.BENCHMARK, isic.BENCHMARK, polyps.KVASIR, polyps.CVC,
    davis.BENCHMARK)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark '{name}'; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def convert(name: str, src: Union[str, Path], out: Union[str, Path], seed: int = 0, episodes: Optional[int] = None,
            split_file: Union[str, Path, None] = None, year: Optional[int] = None, split: Optional[str] = None,
            progress: bool = True) -> Report:
    """Convert benchmark ``name`` from its download at ``src`` into ``out``; see the module docstring.
    ``year`` and ``split`` are DAVIS's (None: 2016 and val)."""
    benchmark = get_benchmark(name)
    if split_file is not None and name != "fss1000":
        raise UsageError("--split-file is for fss1000 only (the other benchmarks' splits are in their layout)")
    if (year is not None or split is not None) and name != "davis":
        raise UsageError("--year and --split are for davis only (the other benchmarks convert every split they hold)")
    if episodes is not None and name == "davis":
        raise UsageError("--episodes is not for davis: every frame of a clip after the first is a query")
    if seed < 0 or (episodes is not None and episodes < 1):
        raise UsageError(f"need seed >= 0 and episodes >= 1 (got {seed}, {episodes})")
    options = Options(seed=seed, episodes=episodes, split_file=None if split_file is None else Path(split_file),
                      year=year, split=split, progress=progress)
    return convert_benchmark(benchmark, src, out, options)


__all__ = ["BENCHMARKS", "Benchmark", "Options", "Report", "convert", "get_benchmark"]
