"""What every run shares: the batch report and its exit code, seeding, resume bookkeeping, and the
run context (which share of the work this process does when several split it)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from gpoa.errors import UsageError
from gpoa.io import atomic_write_text


@dataclass
class StageReport:
    """Outcome of one stage over a batch of images: exit code 0 when nothing failed, else 1.

    Names are ``<task>/<stem>`` when a stage runs over several tasks.
    """

    stage: str
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (name, reason): kept from an earlier run
    failed: list = field(default_factory=list)  # (name, message)

    def fail(self, name: str, message: str) -> None:
        self.failed.append((name, message))
        print(f"[{self.stage}] FAILED {name}: {message}", file=sys.stderr)

    def merge(self, other: StageReport) -> None:
        """Add ``other``'s outcomes (another task of the same stage) to this report."""
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        lines = [f"[{self.stage}] {len(self.done)} done, {len(self.skipped)} kept from an earlier run, "
                 f"{len(self.failed)} failed"]
        lines += [f"  failed: {name}: {message}" for name, message in self.failed]
        return "\n".join(lines)


def settings_stamp(path: Path, settings: dict) -> Path:
    """The file recording the settings an output folder was made with.

    Rewritten (so its modification time moves forward) only when ``settings`` differ from what it
    holds: outputs older than the stamp were made with other settings and are redone on resume.
    """
    text = json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def is_fresh(output: Path, *inputs: Optional[Path]) -> bool:
    """``output`` exists and is at least as new as every existing input (resume without stale results)."""
    if not output.is_file():
        return False
    made = output.stat().st_mtime
    return all(p is None or not p.exists() or p.stat().st_mtime <= made for p in inputs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds legacy global-RNG users too
    import torch

    torch.manual_seed(seed)


def stable_seed(*parts) -> int:
    """A 32-bit seed derived from ``parts`` (e.g. the run seed and an image stem), stable across runs."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def array_digest(array: np.ndarray) -> str:
    """A digest of an array's CONTENT (dtype, shape and values), 24 hex characters."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()[:24]


def content_seed(seed: int, purpose: str, image: np.ndarray) -> int:
    """A 32-bit seed from the run ``seed``, a ``purpose`` and the CONTENT of ``image`` (its shape and
    values), never from a file or folder name: the same image gets the same draws under any name,
    in any task, read from a file or given as an array."""
    return stable_seed(seed, purpose, array_digest(image))


@dataclass(frozen=True)
class RunContext:
    """Which share of the images this process handles: ``rank`` of ``world`` processes.

    Processes are started by ``torchrun --nproc-per-node N`` (``RANK`` / ``WORLD_SIZE`` in the
    environment) or by hand / a Slurm array with ``--shard i/N``. The split is deterministic and
    needs no communication: each task's targets, sorted, are dealt round-robin
    (:meth:`mine`); every process writes only its own per-image outputs, and tables are merged
    from per-process parts by the process that completes the set (:func:`gpoa.evaluation`).
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def from_settings(cls, shard: str = "", environ: Optional[dict] = None) -> RunContext:
        """``shard`` "i/N" (config key ``shard``, ``--shard``), else torchrun's RANK / WORLD_SIZE, else 0 of 1."""
        environ = os.environ if environ is None else environ
        if shard:
            try:
                rank, world = (int(part) for part in shard.split("/"))
            except ValueError:
                raise UsageError(f"--shard expects i/N with whole numbers, e.g. 0/4, got '{shard}'") from None
        else:
            rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"shard {rank}/{world} is out of range: the shard index must be in 0..{world - 1}")
        return cls(rank, world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, items: Sequence) -> list:
        """This process's share of ``items`` (in the given order): every ``world``-th from ``rank``."""
        return list(items)[self.rank::self.world]

    def part_name(self, name: str) -> str:
        """``metrics.csv`` → ``metrics.part-1-of-4.csv``: this process's part of a table."""
        stem, dot, suffix = name.partition(".")
        return f"{stem}.part-{self.rank}-of-{self.world}{dot}{suffix}"

    def part_names(self, name: str) -> list:
        return [RunContext(rank, self.world).part_name(name) for rank in range(self.world)]


#: The context of a run that is not split: this process does everything.
ONE_PROCESS = RunContext()
