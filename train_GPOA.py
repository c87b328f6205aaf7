#!/usr/bin/env python
"""Stage 2 (``gpoa train``): train the GPOA prompt-editing policy (Double DQN on the dual-space graph).

With env.reward=segmentation (default) it learns from DATASET/train_image/ + train_mask/; with
env.reward=graph from the target prompt files alone (label-free). Writes
checkpoints/<run>/best.pt, last.pt, log.csv and reward_curve.png.
"""

import sys

from gpoa.cli import train


def main(argv=None) -> int:
    return train(argv, prog="train_GPOA.py")


if __name__ == "__main__":
    sys.exit(main())
