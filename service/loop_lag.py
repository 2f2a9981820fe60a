"""How late a worker's event loop runs: the delay that every request it holds shares.

A worker's event loop reads each request, admits or refuses it, hands it to its batch and
writes its answer. When the loop is behind, every request in the worker is late by the same
amount, whatever its queue and its model do, and neither the queue-wait nor the batch
metrics see it. A ticker asks to be woken every TICK_S and records how much later it woke,
into `smallcls_event_loop_lag_seconds`: the probe of Node.js's `monitorEventLoopDelay` and
of aiomonitor. A stall (a long callback, a garbage collection, a loop starved of CPU by
other threads) shows as one late tick; a loop that is behind for a while, as many.

Written here rather than taken from a library: the probe is a dozen lines, and it must
write into the service's own Prometheus registry in BentoML's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

TICK_S = 0.02  # 50 observations a second per worker: a few microseconds each


async def watch(
    histogram: Any, tick_s: float = TICK_S, clock: Callable[[], float] = time.perf_counter
) -> None:
    """Forever: sleep `tick_s`, observe how much longer than that the sleep took."""
    while True:
        start = clock()
        await asyncio.sleep(tick_s)
        histogram.observe(max(0.0, clock() - start - tick_s))
