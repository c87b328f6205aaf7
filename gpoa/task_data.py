"""``python -m gpoa.task_data``: the task corpus generator, :mod:`gpoa.synth.corpus` (also ``gpoa corpus``)."""

import sys

from gpoa.synth.corpus import main

if __name__ == "__main__":
    sys.exit(main())
