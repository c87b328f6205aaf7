#!/usr/bin/env python
"""Point Prompt Defender's ablation, our numbers: ideal → attacked → defended, and initial → defended.

An accuracy experiment, not a speed benchmark: the work and its options are
:mod:`gpoa.experiments.ppd` (``python benchmarks/bench_ppd.py --help``); this script is its command line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.experiments.ppd import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
