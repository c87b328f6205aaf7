"""``python -m gpoa.demo_data``: the demo families' generator, :mod:`gpoa.synth.demo` (also ``gpoa demo-data``)."""

import sys

from gpoa.synth.demo import main

if __name__ == "__main__":
    sys.exit(main())
