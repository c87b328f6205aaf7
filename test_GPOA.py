#!/usr/bin/env python
"""Stage 3 (``gpoa optimize``): optimise every initial prompt file with a trained GPOA policy (greedy, deterministic).

Reads DATASET/initial_indices/ and a policy (--policy, default: the best checkpoint of the most
recent run); writes DATASET/optimized_indices/ (+ traces/) and the random_subset_indices/ and
topk_indices/ baselines that main_seg.py evaluates next to it.
"""

import sys

from gpoa.cli import optimize


def main(argv=None) -> int:
    return optimize(argv, prog="test_GPOA.py")


if __name__ == "__main__":
    sys.exit(main())
