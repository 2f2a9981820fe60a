"""Load shapes as small tables: pass with the locustfile (`-f locustfile.py,shapes.py`).

Each stage holds until `until_s` seconds from the start with `users` users, reached at
`spawn_rate` users per second. The shape is chosen by SMALLCLS_LOADTEST_SHAPE (ramp, steps,
spike); `SMALLCLS_LOADTEST_SHAPE_SCALE` stretches the time axis (0.5 halves every stage), so
a CI run and a real test use the same table. The test ends after the last stage.
SMALLCLS_LOADTEST_STAGES='[[60, 150, 150], [90, 25, 150]]' plays a table given as JSON
(until_s, users, spawn_rate) instead, for a caller that computes its stages (bench/reliability.py).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from locust import LoadTestShape


class Stage(NamedTuple):
    until_s: float
    users: int
    spawn_rate: float


SHAPES: dict[str, tuple[Stage, ...]] = {
    # Grow steadily: where does latency start to climb?
    "ramp": (
        Stage(20, 4, 0.2),
        Stage(40, 8, 0.2),
        Stage(60, 16, 0.4),
    ),
    # Hold each level long enough for stable percentiles.
    "steps": (
        Stage(15, 1, 1),
        Stage(30, 2, 2),
        Stage(45, 4, 4),
        Stage(60, 8, 8),
    ),
    # A sudden burst and the recovery after it: does the server shed load or queue it?
    "spike": (
        Stage(15, 2, 2),
        Stage(25, 24, 24),
        Stage(45, 2, 24),
    ),
}


def parse_stages(raw: str) -> tuple[Stage, ...]:
    """A stage table from JSON `[[until_s, users, spawn_rate], ...]`, checked."""
    try:
        rows = json.loads(raw)
        stages = tuple(Stage(float(u), int(n), float(r)) for u, n, r in rows)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"SMALLCLS_LOADTEST_STAGES must be JSON [[until_s, users, spawn_rate], ...]: {exc}"
        ) from None
    ends = [s.until_s for s in stages]
    if not stages or ends != sorted(ends) or any(s.users < 0 or s.spawn_rate <= 0 for s in stages):
        raise ValueError(f"SMALLCLS_LOADTEST_STAGES: need increasing until_s, users >= 0: {raw}")
    return stages


class TableShape(LoadTestShape):
    """Plays one of SHAPES; reads its settings once, when locust creates it."""

    def __init__(self) -> None:
        super().__init__()
        if custom := os.environ.get("SMALLCLS_LOADTEST_STAGES", "").strip():
            self.stages = parse_stages(custom)
            return
        name = os.environ.get("SMALLCLS_LOADTEST_SHAPE", "steps")
        if name not in SHAPES:
            raise ValueError(f"SMALLCLS_LOADTEST_SHAPE must be one of {sorted(SHAPES)}: {name!r}")
        scale = float(os.environ.get("SMALLCLS_LOADTEST_SHAPE_SCALE", "1"))
        if not scale > 0:
            raise ValueError(f"SMALLCLS_LOADTEST_SHAPE_SCALE must be > 0, got {scale}")
        self.stages = tuple(Stage(s.until_s * scale, s.users, s.spawn_rate) for s in SHAPES[name])

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        for stage in self.stages:
            if run_time < stage.until_s:
                return stage.users, stage.spawn_rate
        return None  # past the last stage: stop the test
