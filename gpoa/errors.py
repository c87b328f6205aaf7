"""Exceptions that carry a message a user can act on.

Stage functions raise these; the command-line layer turns :class:`UsageError` into exit code 2
and per-image :class:`InputError` into a failure list (exit code 1 once the batch is done).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class GPOAError(Exception):
    """Base class for every error GPOA raises on purpose."""


class UsageError(GPOAError):
    """Wrong command line, config, folder layout or missing checkpoint: nothing can run (exit 2)."""


class InputError(GPOAError):
    """One input is unusable. Names the file (or, for an image or mask given in memory, the argument it
    came from), the problem and what to do about it."""

    def __init__(self, path: Union[str, Path, None], problem: str, fix: Optional[str] = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}" + (f"; {fix}" if fix else ""))
