#!/usr/bin/env python
"""Stage 4 (``gpoa segment``): segment every target with each prompt set found and, with target_mask/, evaluate.

Decodes initial_indices/, optimized_indices/, every other DATASET/<name>_indices/, each --prompts
folder and the 'ideal' set sampled from target_mask/; writes masks, overlays, metrics.csv,
summary.csv and summary.md to --out (default DATASET/results) and prints the table.
"""

import sys

from gpoa.cli import segment


def main(argv=None) -> int:
    return segment(argv, prog="main_seg.py")


if __name__ == "__main__":
    sys.exit(main())
