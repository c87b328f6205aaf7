"""Command-line helpers that the ``gpoa`` command (:mod:`gpoa.cli`), the data generators, the
converters and the experiments share: argument types, the generators' runner and the exit codes.

Nothing here imports :mod:`gpoa.cli`, and nothing imports ``gpoa.cli`` but the scripts: the
command line depends on its parts, never the other way round.

Exit codes: 0 every image done; 1 some images failed (the rest were processed, failures listed);
2 usage or config error (one line on stderr says what and how to fix it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Callable, Optional

from gpoa.errors import UsageError


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


def run_generator(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                  write: Callable[[argparse.Namespace], object]) -> int:
    """Parse ``argv`` and run ``write(args)`` (a data generator's command line): a UsageError is one
    line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        write(args)
    except UsageError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


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
