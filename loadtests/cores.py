"""Keeping the load generator off the server's cores, where the machine has cores to spare.

A price per million is a claim about a server with the priced instance's vCPUs to itself.
Locust on the same cores takes part of them (a quarter to a half of a core at a few hundred
requests per second), so the server is measured on less than it is priced as. With at least
one core more than the instance's vCPUs, the server's process tree (every thread: Linux
affinity is per thread) is pinned to exactly that many cores and Locust to the rest, and the
measured throughput prices the instance directly. With fewer cores, nothing is pinned and the
figure is priced from the server's own CPU-seconds per classification instead
(reports/cost.py), which Locust's share does not inflate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence

import psutil

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CorePlan:
    server: tuple[int, ...]
    generator: tuple[int, ...]


def plan_cores(available: Sequence[int], server_cores: int) -> CorePlan | None:
    """The server's and the generator's cores, or None when fewer than server_cores + 1.

    The server takes the lowest-numbered cores: on most x86 Linux machines cores 0..n-1 are
    distinct physical cores before their hyperthread siblings, so the generator lands on
    siblings or other cores rather than sharing the server's."""
    if server_cores < 1:
        raise ValueError(f"server_cores must be >= 1, got {server_cores}")
    cores = sorted(set(available))
    if len(cores) < server_cores + 1:
        return None
    return CorePlan(server=tuple(cores[:server_cores]), generator=tuple(cores[server_cores:]))


def _threads(pid: int) -> list[int]:
    """Thread ids of a process tree."""
    root = psutil.Process(pid)
    tids: list[int] = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            tids += [t.id for t in proc.threads()]
    return tids


@contextlib.contextmanager
def pinned_tree(pid: int, cores: Sequence[int]) -> Iterator[int]:
    """Pin every thread of `pid`'s process tree to `cores` while the block runs, then give each
    thread back the affinity it had; yields the number of threads pinned."""
    before: dict[int, set[int]] = {}
    for tid in _threads(pid):
        with contextlib.suppress(OSError):  # a thread that ended in between
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, set(cores))
    logger.info("pinned %d threads of process %d to cores %s", len(before), pid, list(cores))
    try:
        yield len(before)
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))
