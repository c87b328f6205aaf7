"""``python -m gpoa.datasets NAME --src RAW_DIR --out DIR``: convert a benchmark (see gpoa.datasets)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from gpoa.commandline import exit_code_of, whole_number
from gpoa.datasets import BENCHMARKS, convert


def build_parser(prog: str = "python -m gpoa.datasets") -> argparse.ArgumentParser:
    layouts = "\n\n".join(f"{b.name} ({b.title}):\n{b.layout}" for b in BENCHMARKS.values())
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a segmentation benchmark's official download into GPOA's domain layout "
                    "(DIR/<domain>/image/, mask/, ignore/) with its fixed-seed episodes (DIR/episodes.json) "
                    "and a record (DIR/dataset.json). Reruns resume; the source is never modified.",
        epilog=f"Source layouts (--src):\n\n{layouts}")
    parser.add_argument("name", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"benchmark: {', '.join(BENCHMARKS)}")
    parser.add_argument("--src", type=Path, required=True, help="the benchmark's unpacked download (read only)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created when missing)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="episode seed (default 0)")
    parser.add_argument("--episodes", type=whole_number(1), default=None,
                        help="episodes per fold for pascal5i/coco20i (default 1000); queries per test class for "
                             "fss1000 and queries in all for isic2018/kvasir/cvc (default: every image); not for davis")
    parser.add_argument("--split-file", type=Path, default=None,
                        help="fss1000 only: the official class split (JSON {train,val,test: [classes]} or text "
                             "with [train]/[val]/[test] sections)")
    parser.add_argument("--year", type=int, choices=[2016, 2017], default=None,
                        help="davis only: DAVIS 2016 (one clip per sequence, the default) or 2017 (one clip per object)")
    parser.add_argument("--split", default=None,
                        help="davis only: the ImageSets list to convert: train, val (default) or, for 2016, trainval")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m gpoa.datasets") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    return exit_code_of(parser.prog, lambda: convert(args.name, args.src, args.out, seed=args.seed,
                                                     episodes=args.episodes, split_file=args.split_file,
                                                     year=args.year, split=args.split, progress=not args.quiet))


if __name__ == "__main__":
    sys.exit(main())
