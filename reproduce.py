#!/usr/bin/env python
"""Reproduce the papers' tables (``gpoa reproduce``): ppd-main, ppd-ablation, ppd-runtime, fss,
davis.

    python reproduce.py TABLE [TABLE ...] --root DATA --out DIR [--config FILE] [--train DIR ...]
    torchrun --nproc-per-node 4 reproduce.py fss --root DATA --out DIR      # several GPUs / processes

The work is :mod:`gpoa.experiments.reproduce`; this script is its command line.
"""

import sys

from gpoa.experiments.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
