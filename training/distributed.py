"""Training with several processes (`torchrun`, `accelerate launch`): who writes the run.

The Trainer already trains data-parallel when a launcher has set `RANK` / `WORLD_SIZE` (DDP
over gloo on CPU, NCCL on CUDA, through accelerate). What it does not own is the run
directory: here global rank 0 alone creates, writes, renames and completes it, and the other
processes wait for it at a barrier. The process group is started here, before the Trainer
would start it, for two reasons: rank 0 must prepare the `.partial` directory (fresh, or kept
to resume) before any process trains, and the wait needs a longer timeout than the Trainer's
30 minutes, since rank 0 evaluates validation and test and saves the model alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")

# Rank 0's evaluation and save of a large model on a large test split (SmolLM2 on IMDb's
# 25,000 reviews, CPU) can take hours; a launcher that sees one process fail stops the others,
# so a long wait never outlives a crash.
WAIT_FOR_RANK_0 = timedelta(hours=6)
_TORCH_DEVICE = "ACCELERATE_TORCH_DEVICE"  # the device accelerate gives this process


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among the training processes a launcher started."""

    rank: int = 0  # global rank; 0 writes the run directory
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Processes:
    """This process's rank and the number of processes, once `joined` has joined them."""
    if dist.is_available() and dist.is_initialized():
        return Processes(rank=dist.get_rank(), world_size=dist.get_world_size())
    return Processes()


@contextlib.contextmanager
def joined(device: str) -> Iterator[Processes]:
    """This process joined to the others when a launcher started several (torchrun and
    accelerate launch both set WORLD_SIZE); nothing to join for one. accelerate's PartialState
    starts the group as the Trainer would (gloo on CPU, NCCL on each process's own GPU), so
    the Trainer finds it running and uses it. A group started here is ended here: left to the
    interpreter's exit, gloo's threads were destroyed still running and aborted the process
    ("terminate called without an active exception") once in a dozen runs."""
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    on_cpu = started and device != "cuda"
    saved_device = os.environ.get(_TORCH_DEVICE)
    if on_cpu:
        # accelerate gives CPU process k the device "cpu:k", and the Trainer loads a
        # checkpoint's optimizer state with map_location="cpu:k", which torch.load refuses
        # ("don't know how to restore data location ... cpu:0"): resuming would fail.
        os.environ[_TORCH_DEVICE] = "cpu"
    if started:
        from accelerate import PartialState

        # gloo named on CPU: left to itself accelerate would take MPI where torch has it.
        backend = "gloo" if on_cpu else None
        PartialState(cpu=on_cpu, backend=backend, timeout=WAIT_FOR_RANK_0)
    try:
        yield current()
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
        if on_cpu:
            if saved_device is None:
                os.environ.pop(_TORCH_DEVICE, None)
            else:
                os.environ[_TORCH_DEVICE] = saved_device


def wait_for_all() -> None:
    """A barrier across the training processes; nothing to wait for in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def from_rank_0(value: T) -> T:
    """Rank 0's `value` on every process: one decision (e.g. resume or start afresh) taken
    where the run directory is written, not N times racing on it."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def per_process_batch(batch_size: int, world_size: int) -> int:
    """The config's `batch_size` is the global batch (what one optimizer step sees), so a run
    takes the same steps and schedule with any number of processes; each process gets its
    share."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        choices = f"{lower} or {lower + world_size}" if lower else str(world_size)
        raise ValueError(
            f"batch_size {batch_size} is the global batch, split over {world_size} processes; "
            f"it must be a multiple of {world_size}: set batch_size to {choices}"
        )
    return batch_size // world_size


def ddp_backend(device: str, world_size: int) -> str | None:
    """The Trainer's `ddp_backend`: gloo for several CPU processes, the Trainer's own choice
    otherwise (NCCL on CUDA; naming a backend for one process would make it look for a group)."""
    return "gloo" if device != "cuda" and world_size > 1 else None
