"""Command line shared by the stage scripts: ``--config``, ``--data``, ``--set``, ``--device``.

Exit codes: 0 every image done; 1 some images failed (the rest were processed, failures listed);
2 usage or config error (one line on stderr says what and how to fix it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Callable, Optional

from gpoa.config import Config, load_config, resolve_device
from gpoa.errors import UsageError

EPILOG = """\
config:
  Settings come from the defaults, then --config FILE (YAML, e.g. configs/demo.yaml or
  configs/sam_dinov2.yaml), then each --set KEY=VALUE, e.g.
    --set segmenter.backend=sam --set segmenter.model_type=vit_h
    --set matching.mutual_nearest=true --set train.total_steps=5000
  Every field of gpoa/config.py can be set. The resolved config is saved beside the outputs.

exit codes:
  0 all images done, 1 some images failed (the others were processed), 2 usage/config error
"""


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--data", metavar="DIR", action="append",
                        help="a task: a dataset folder (reference_image/, reference_mask/, target_image/, ...), "
                             "a domain folder (image/ + mask/) or a folder of them; repeatable "
                             "(default: the config's 'data')")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one config field (repeatable), e.g. --set features.backend=dinov2")
    parser.add_argument("--device", metavar="NAME", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's 'seed')")
    parser.add_argument("--shard", metavar="I/N",
                        help="handle the I-th of N shares of the images (0-based; a Slurm array or several "
                             "processes by hand); under torchrun the share comes from RANK / WORLD_SIZE")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute outputs that exist instead of resuming an earlier run")
    return parser


def config_from_args(args: argparse.Namespace, extra_overrides: Sequence[str] = ()) -> Config:
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.shard:
        overrides.append(f"shard={args.shard}")
    cfg = load_config(args.config, overrides + list(extra_overrides))
    if args.data:
        cfg.data = list(args.data)  # paths as given: never split at commas
    return cfg


def run_stage(parser: argparse.ArgumentParser, stage: Callable, argv: Optional[Sequence[str]] = None,
              extra_overrides: Callable[[argparse.Namespace], list] = lambda args: []) -> int:
    """Parse ``argv``, build the config, run ``stage(cfg, device)`` and turn the outcome into an exit code.

    ``stage`` returns a :class:`~gpoa.runtime.StageReport` (or a tuple starting with one).
    """
    from gpoa.distributed import rank_device
    from gpoa.runtime import seed_everything

    args = parser.parse_args(argv)

    def work():
        cfg = config_from_args(args, extra_overrides(args))
        device = rank_device(resolve_device(cfg.device))  # under torchrun: cuda → cuda:<LOCAL_RANK>
        seed_everything(cfg.seed)
        return stage(cfg, device)

    return exit_code_of(parser.prog, work)


def exit_code_of(prog: str, work: Callable[[], object]) -> int:
    """Run ``work`` and turn its outcome into the exit code of the module docstring.

    ``work()`` returns a report (``summary()``, ``exit_code``) or a tuple starting with one; a
    :class:`~gpoa.errors.UsageError` is one line on stderr and exit code 2; Ctrl-C says how to resume.
    """
    try:
        result = work()
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    report = result[0] if isinstance(result, tuple) else result
    print(report.summary(), file=sys.stderr if report.exit_code else sys.stdout)
    return report.exit_code
