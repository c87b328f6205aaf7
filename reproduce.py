#!/usr/bin/env python
"""Reproduce the papers' tables: ppd-main, ppd-ablation, ppd-runtime, fss (see gpoa/reproduce.py).

    python reproduce.py TABLE [TABLE ...] --root DATA --out DIR [--config FILE] [--train DIR ...]
                        [--learners dqn,ppo,ppd] [--episodes N] [--targets N] [--set KEY=VALUE ...]
    torchrun --nproc-per-node 4 reproduce.py fss --root DATA --out DIR      # several GPUs / processes
"""

import argparse
import sys
from pathlib import Path

from gpoa.cli import exit_code_of
from gpoa.config import load_config, resolve_device
from gpoa.distributed import rank_device
from gpoa.errors import UsageError
from gpoa.reproduce import LEARNERS, TABLES, Request, run
from gpoa.runtime import seed_everything


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", metavar="TABLE", help=f"one or more of {', '.join(TABLES)}, or all")
    parser.add_argument("--root", required=True, metavar="DATA",
                        help="converted benchmarks (python -m gpoa.datasets NAME --out DATA/NAME) or a folder of "
                             "domain folders (a stand-in, e.g. ../shared/data/real-dev)")
    parser.add_argument("--out", default="reproduce", metavar="DIR", help="tables, policies and work files")
    parser.add_argument("--config", metavar="FILE", help="YAML config (configs/demo.yaml: the embedded default)")
    parser.add_argument("--train", action="append", default=[], metavar="DIR",
                        help="training data for the policies when --root has no FSS-1000 (repeatable), e.g. data/tasks")
    parser.add_argument("--learners", default=",".join(LEARNERS), help="rows with a policy (default: dqn,ppo,ppd)")
    parser.add_argument("--episodes", type=int, metavar="N", help="only the first N episodes of each fold")
    parser.add_argument("--targets", type=int, default=10, metavar="N",
                        help="queries per domain when --root holds domain folders (default 10)")
    parser.add_argument("--runtime-images", type=int, default=10, metavar="N",
                        help="images per data set timed for ppd-runtime (default 10)")
    parser.add_argument("--policies-only", action="store_true", help="train the policies, then stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--shard", default="", metavar="I/N",
                        help="handle the I-th of N shares of the episodes (torchrun: RANK / WORLD_SIZE)")
    args = parser.parse_args(argv)
    tables = list(TABLES) if args.tables == ["all"] else args.tables
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]

    def work():
        unknown = [t for t in tables if t not in TABLES] + [n for n in learners if n not in LEARNERS]
        if unknown:
            raise UsageError(f"unknown table or learner {unknown}; tables: {', '.join(TABLES)}, all; "
                             f"learners: {', '.join(LEARNERS)}")
        if args.episodes is not None and args.episodes < 1 or args.targets < 1 or args.runtime_images < 1:
            raise UsageError("--episodes, --targets and --runtime-images must be at least 1")
        cfg = load_config(args.config, args.overrides + [f"shard={args.shard}"])
        device = rank_device(resolve_device(cfg.device if args.device == "auto" else args.device))
        seed_everything(cfg.seed)
        request = Request(tables=tables, root=Path(args.root), out=Path(args.out), train=args.train,
                          learners=learners, per_fold=args.episodes, targets=args.targets,
                          runtime_images=args.runtime_images, policies_only=args.policies_only)
        return run(request, cfg, device)

    return exit_code_of(parser.prog, work)

if __name__ == "__main__":
    sys.exit(main())
