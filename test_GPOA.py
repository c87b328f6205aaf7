#!/usr/bin/env python
"""Stage 3: optimise every initial prompt file with a trained GPOA policy (greedy, deterministic).

Reads DATASET/initial_indices/ and a policy (--policy, default: the best checkpoint of the most
recent run); writes DATASET/optimized_indices/ (+ traces/) and the random_subset_indices/ and
topk_indices/ baselines that main_seg.py evaluates next to it.
"""

import sys

from gpoa.cli import run_stage, stage_parser
from gpoa.stages.optimize import optimize_prompts


def main(argv=None) -> int:
    parser = stage_parser("test_GPOA.py", __doc__.strip().splitlines()[0])
    parser.add_argument("--policy", metavar="PATH", help="policy checkpoint (default: most recent run's best.pt)")
    return run_stage(parser, optimize_prompts, argv,
                     lambda args: [f"optimize.policy={args.policy}"] if args.policy else [])


if __name__ == "__main__":
    sys.exit(main())
