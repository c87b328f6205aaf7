#!/usr/bin/env python
"""Stage 1 (``gpoa prompts``): match the reference pair onto every target image and write initial point prompts.

Reads DATASET/reference_image/, reference_mask/ and target_image/; writes
DATASET/initial_indices/<stem>.json (+ overlays/) and caches patch features in DATASET/cache/.
"""

import sys

from gpoa.cli import prompts


def main(argv=None) -> int:
    return prompts(argv, prog="Generate_initial_prompts.py")


if __name__ == "__main__":
    sys.exit(main())
