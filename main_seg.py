#!/usr/bin/env python
"""Stage 4: segment every target with each prompt set found and, with target_mask/, evaluate.

Decodes initial_indices/, optimized_indices/, every other DATASET/<name>_indices/, each --prompts
folder and the 'ideal' set sampled from target_mask/; writes masks, overlays, metrics.csv,
summary.csv and summary.md to --out (default DATASET/results) and prints the table.
"""

import sys

from gpoa.cli import run_stage, stage_parser
from gpoa.stages.segmentation import segment_and_evaluate


def main(argv=None) -> int:
    parser = stage_parser("main_seg.py", __doc__.strip().splitlines()[0])
    parser.add_argument("--prompts", metavar="DIR", action="append", default=[],
                        help="another folder of <stem>.json prompt files to evaluate (repeatable)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: DATASET/results)")

    def overrides(args):
        extra = [f"segmentation.prompts={','.join(args.prompts)}"] if args.prompts else []
        return extra + ([f"segmentation.out={args.out}"] if args.out else [])

    return run_stage(parser, segment_and_evaluate, argv, overrides)


if __name__ == "__main__":
    sys.exit(main())
