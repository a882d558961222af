"""Multi-process training with torchrun: process group, ranks, gathering results.

``torchrun --nproc_per_node N train.py ...`` starts N copies of train.py with
RANK/WORLD_SIZE/LOCAL_RANK in the environment. Each rank trains a
DistributedDataParallel replica on a disjoint shard of every epoch's patch
plan; PyTorch's own engine (NCCL on CUDA, gloo on the CPU) averages the
gradients. Without torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from hyperiqa.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder and the log."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun set up; a single process gets DistInfo()."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {info.local_rank} has no GPU: only {torch.cuda.device_count()} "
                "visible; use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            # A rank that dies leaves the others waiting; fail instead of hanging for hours.
            timeout=datetime.timedelta(minutes=30),
        )
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_arrays(info: DistInfo, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Concatenate each array over all ranks (rank order), on every rank.

    Used once per epoch for predictions and image indices, so a pickle-based
    gather is cheap enough and handles shards of different lengths.
    """
    if not info.enabled:
        return arrays
    gathered: list[tuple[np.ndarray, ...] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, arrays)
    return tuple(np.concatenate([g[i] for g in gathered]) for i in range(len(arrays)))


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a stop signal)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def run_on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (writing the demo data, checking every image)
    and hand its result, or the ``UserError`` it raised, to every rank, so all
    ranks fail together with the same message instead of waiting forever."""
    if not info.enabled:
        return fn()
    payload: list[tuple[str, object] | None] = [None]
    failure: Exception | None = None
    if info.is_main:
        try:
            payload = [("ok", fn())]
        except UserError as e:
            payload = [("error", str(e))]
        except Exception as e:  # a bug: let every rank stop instead of waiting, keep its traceback
            payload, failure = [("error", f"rank 0 failed: {type(e).__name__}: {e}")], e
    dist.broadcast_object_list(payload, src=0)
    if failure is not None:
        raise failure
    kind, value = payload[0]
    if kind == "error":
        raise UserError(str(value))
    return value  # type: ignore[return-value]


def fail_on_main(info: DistInfo, message: str) -> None:
    """Rank 0 only, in place of its next ``run_on_main``: the other ranks, waiting in
    theirs, raise ``UserError(message)`` instead of waiting for rank 0 forever."""
    dist.broadcast_object_list([("error", message)], src=0)


def on_all_ranks(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank (loading a checkpoint each rank needs); when it raises
    a UserError on any rank, every rank raises it, so none waits forever for the
    others at their next collective call."""
    if not info.enabled:
        return fn()
    value: T | None = None
    error: str | None = None
    failure: Exception | None = None
    try:
        value = fn()
    except UserError as e:
        error = str(e)
    except Exception as e:  # a bug: let every rank stop, keep this rank's traceback
        error, failure = f"rank {info.rank} failed: {type(e).__name__}: {e}", e
    errors: list[str | None] = [None] * info.world_size
    dist.all_gather_object(errors, error)
    if failure is not None:
        raise failure
    first = next((e for e in errors if e), None)
    if first is not None:
        raise UserError(first)
    return value  # type: ignore[return-value]
