"""The event-loop lag probe: a loop held up by a blocking callback is seen late by as long."""

from __future__ import annotations

import asyncio
import time

from service import loop_lag


class Recorded:
    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)


def test_a_blocked_loop_is_recorded_as_late_by_the_time_it_was_blocked() -> None:
    async def main() -> list[float]:
        lag = Recorded()
        probe = asyncio.ensure_future(loop_lag.watch(lag, tick_s=0.01))
        await asyncio.sleep(0.05)
        before = len(lag.values)
        time.sleep(0.3)  # a callback that holds the loop
        await asyncio.sleep(0.05)
        probe.cancel()
        assert before >= 1 and len(lag.values) > before
        return lag.values[before:]

    late = asyncio.run(main())
    assert max(late) >= 0.25  # the tick due during the block woke that much later
    assert min(late) >= 0.0  # never negative, however the clock rounds
