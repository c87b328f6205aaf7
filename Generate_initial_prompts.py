#!/usr/bin/env python
"""Stage 1: match the reference pair onto every target image and write initial point prompts.

Reads DATASET/reference_image/, reference_mask/ and target_image/; writes
DATASET/initial_indices/<stem>.json (+ overlays/) and caches patch features in DATASET/cache/.
"""

import sys

from gpoa.cli import run_stage, stage_parser
from gpoa.stages.initial_prompts import generate_initial_prompts


def main(argv=None) -> int:
    parser = stage_parser("Generate_initial_prompts.py", __doc__.strip().splitlines()[0])
    return run_stage(parser, generate_initial_prompts, argv)


if __name__ == "__main__":
    sys.exit(main())
