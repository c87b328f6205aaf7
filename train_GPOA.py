#!/usr/bin/env python
"""Stage 2: train the GPOA prompt-editing policy (Double DQN on the dual-space graph).

With env.reward=segmentation (default) it learns from DATASET/train_image/ + train_mask/; with
env.reward=graph from the target prompt files alone (label-free). Writes
checkpoints/<run>/best.pt, last.pt, log.csv and reward_curve.png.
"""

import sys

from gpoa.cli import run_stage, stage_parser
from gpoa.stages.train import train_policy


def main(argv=None) -> int:
    parser = stage_parser("train_GPOA.py", __doc__.strip().splitlines()[0])
    parser.add_argument("--run", metavar="NAME", help="run name: checkpoints/NAME/ (default: a time stamp)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last checkpoint of --run (or of the most recent run)")

    def overrides(args):
        return ([f"train.run={args.run}"] if args.run else []) + (["train.resume=true"] if args.resume else [])

    return run_stage(parser, train_policy, argv, overrides)


if __name__ == "__main__":
    sys.exit(main())
