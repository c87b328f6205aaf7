#!/usr/bin/env python
"""Cross-domain benchmark: one policy, many one-shot domains, every prompt set side by side.

An accuracy experiment, not a speed benchmark: the work and its options are
:mod:`gpoa.experiments.domains` (``python benchmarks/bench_domains.py --help``); this script is its command line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.experiments.domains import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
