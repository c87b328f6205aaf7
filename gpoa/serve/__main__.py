"""``gpoa serve`` (also ``python -m gpoa.serve``): the local web page (:mod:`gpoa.serve`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from gpoa.commandline import run_generator


def build_parser(prog: str = "python -m gpoa.serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="A local web page over GPOAPredictor: a reference pair (upload or paint its mask; "
                               "several for k-shot), many targets, their masks and prompts, one zip to download. "
                               "Settings: serve.* in gpoa/config.py (max_pixels, max_upload_mb).")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--policy", metavar="PATH",
                        help="a trained policy file (e.g. checkpoints/demo/best.pt); without one the initial "
                             "prompts are segmented")
    parser.add_argument("--host", metavar="ADDRESS",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, metavar="N", help="port (default 7860; 0: any free port)")
    parser.add_argument("--device", metavar="NAME", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config field (repeatable), e.g. --set serve.max_pixels=20000000")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m gpoa.serve") -> int:
    from gpoa.config import load_config
    from gpoa.serve import serve

    def run(args: argparse.Namespace) -> None:
        overrides = list(args.overrides)
        for key, value in (("host", args.host), ("port", args.port)):
            if value is not None:
                overrides.append(f"serve.{key}={value}")
        if args.device is not None:
            overrides.append(f"device={args.device}")
        cfg = load_config(args.config, overrides)
        serve(cfg, args.policy, cfg.device)

    return run_generator(build_parser(prog), argv, run)


if __name__ == "__main__":
    sys.exit(main())
