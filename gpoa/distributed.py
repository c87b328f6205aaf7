"""Training one policy with several processes (``torchrun --nproc-per-node N train_GPOA.py ...``).

Data parallel, the usual way: every process (rank) steps its own environments — decoding masks is
the cost, so that is what is split — and trains an identical copy of the network, whose gradients
:class:`torch.nn.parallel.DistributedDataParallel` averages over the ranks in every backward pass.
So the weights stay identical everywhere, and one update sees ``world`` times the transitions.

- ``train.total_steps`` counts transitions over all ranks: each rank collects ``1/world`` of them.
- The networks start identical (same seed, and DDP broadcasts rank 0's weights); environment,
  exploration and replay random generators are offset by rank, so the ranks see different episodes.
- Every rank must run the same number of updates, or a backward pass would wait forever for its
  peers. DQN and PPO update on a fixed schedule; where the schedule depends on what happened in
  the episodes (PPD's attacker and defender updates), the ranks agree on it with
  :func:`agree_min`.
- Rank 0 evaluates, writes checkpoints and logs; the others only train.

Backends: NCCL on CUDA (one GPU per rank, ``LOCAL_RANK``), Gloo on CPU. One process without
torchrun needs none of this: every function here is then a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from gpoa.runtime import RunContext


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_device(device: str) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` under torchrun."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@contextmanager
def process_group(device: str) -> Iterator[RunContext]:
    """Joins torchrun's process group when ``WORLD_SIZE`` > 1 (and leaves it at the end); yields
    this process's :class:`~gpoa.runtime.RunContext`. One process: yields rank 0 of 1, nothing else."""
    context = RunContext.from_settings("")
    if context.world == 1 or is_distributed():
        yield context
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    # rank 0 evaluates (segmenter in the loop) while the others wait in their next all-reduce
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    try:
        yield context
    finally:
        dist.destroy_process_group()


def data_parallel(network: nn.Module) -> nn.Module:
    """``network`` wrapped in DistributedDataParallel when training with several processes, else
    itself. Train through the wrapper's ``forward``; save and act with ``network``."""
    if not is_distributed():
        return network
    parameter = next(network.parameters())
    device_ids = [parameter.device] if parameter.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def agree_min(count: int) -> int:
    """The smallest ``count`` over all ranks (``count`` itself with one process)."""
    if not is_distributed():
        return count
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
