"""Stages 1, 3 and 4 in one process, as their scripts run them: ``torchrun ... tests/torchrun_stages.py
--config FILE --data DIR --policy FILE`` (test_sharding.py). One torchrun launch instead of one per
script: each stage's ``main`` reads RANK / WORLD_SIZE as its script does, and each rank's share of the
targets is the same in every stage, so a rank needs no other rank's outputs until the tables, which
the process that completes the set writes."""

from __future__ import annotations

import sys

import Generate_initial_prompts
import main_seg
import test_GPOA


def main(argv: list) -> int:
    policy = argv.index("--policy")
    common = argv[:policy] + argv[policy + 2:]
    for stage, args in ((Generate_initial_prompts.main, common), (test_GPOA.main, argv), (main_seg.main, common)):
        code = stage(args)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
