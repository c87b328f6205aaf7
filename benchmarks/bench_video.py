#!/usr/bin/env python
"""Video benchmark: GPOA's tracker on clips (J and F per clip) beside the per-frame predictor, the ideal
prompts and the published DAVIS 2016 rows.

An accuracy experiment with the timing and memory of the tracker on its last line: the work and its
options are :mod:`gpoa.experiments.video` (``python benchmarks/bench_video.py --help``); this script
is its command line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.experiments.video import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
