#!/usr/bin/env python
"""Which label-free signal predicts the Dice of a decoded mask (and a fitted estimator of it).

An accuracy experiment, not a speed benchmark: the work and its options are
:mod:`gpoa.experiments.signals` (``python benchmarks/bench_signals.py --help``); this script is its command line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.experiments.signals import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
