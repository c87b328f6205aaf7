#!/usr/bin/env python
"""Leave-one-domain-out: what real training data adds to the generated corpus.

An accuracy experiment, not a speed benchmark: the work and its options are
:mod:`gpoa.experiments.lodo` (``python benchmarks/bench_lodo.py --help``); this script is its command line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.experiments.lodo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
