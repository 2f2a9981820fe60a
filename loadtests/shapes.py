"""Load shapes as small tables: pass with the locustfile (`-f locustfile.py,shapes.py`).

Each stage holds until `until_s` seconds from the start with `users` users, reached at
`spawn_rate` users per second. `--shape` (SMALLCLS_LOADTEST_SHAPE) picks a table (ramp, steps,
spike); `--shape-scale` (SMALLCLS_LOADTEST_SHAPE_SCALE) stretches the time axis (0.5 halves
every stage), so a CI run and a real test use the same table. The test ends after the last
stage. `--shape-stages '[[60, 150, 150], [90, 25, 150]]'` (SMALLCLS_LOADTEST_STAGES) plays a
table given as JSON (until_s, users, spawn_rate) instead, for a caller that computes its stages
(bench/reliability.py). Like the locustfile's, these are Locust options: `[tool.locust]` in
pyproject.toml may set them too.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from locust import LoadTestShape, events


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


# "stages": the table given by --shape-stages (bench/reliability.py names it so).
SHAPE_CHOICES = (*SHAPES, "stages")


def _add(group: Any, *args: Any, **kwargs: Any) -> Any:
    # As loadtests/options.py's add_ui_argument (not imported: Locust loads this file alone):
    # an argument group's add_argument lacks the attributes that put an option in the web UI.
    action = group.add_argument(*args, **kwargs)
    action.include_in_web_ui, action.is_secret = True, False
    action.is_required, action.is_multiple = False, False
    return action


@events.init_command_line_parser.add_listener
def add_shape_arguments(parser: Any, **_kwargs: Any) -> None:
    group = parser.add_argument_group("smallcls load shapes (loadtests/shapes.py)")
    _add(
        group,
        "--shape",
        choices=SHAPE_CHOICES,
        default="steps",
        env_var="SMALLCLS_LOADTEST_SHAPE",
        help="the stage table to play: ramp, steps (default) or spike; stages: --shape-stages",
    )
    _add(
        group,
        "--shape-scale",
        type=float,
        default=1.0,
        metavar="<factor>",
        env_var="SMALLCLS_LOADTEST_SHAPE_SCALE",
        help="stretch the table's time axis (0.5 halves every stage; default 1)",
    )
    _add(
        group,
        "--shape-stages",
        metavar="<json>",
        env_var="SMALLCLS_LOADTEST_STAGES",
        help="a stage table as JSON [[until_s, users, spawn_rate], ...]; wins over --shape",
    )


def stages_from(options: Any) -> tuple[Stage, ...]:
    """The stage table Locust's parsed options ask for (strings, when sent by the web UI)."""
    custom = str(getattr(options, "shape_stages", None) or "").strip()
    if custom:
        return parse_stages(custom)
    name = str(getattr(options, "shape", None) or "steps")
    if name == "stages":
        raise ValueError("--shape stages needs a table: pass --shape-stages (or STAGES)")
    if name not in SHAPES:
        raise ValueError(f"--shape (SMALLCLS_LOADTEST_SHAPE) must be one of {SHAPE_CHOICES}: "
                         f"{name!r}")  # fmt: skip
    try:
        scale = float(getattr(options, "shape_scale", None) or 1.0)
    except ValueError:
        scale = math.nan
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"--shape-scale (SMALLCLS_LOADTEST_SHAPE_SCALE) must be > 0, got {scale}")
    return tuple(Stage(s.until_s * scale, s.users, s.spawn_rate) for s in SHAPES[name])


def parse_stages(raw: str) -> tuple[Stage, ...]:
    """A stage table from JSON `[[until_s, users, spawn_rate], ...]`, checked."""
    try:
        rows = json.loads(raw)
        stages = tuple(Stage(float(u), int(n), float(r)) for u, n, r in rows)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            "--shape-stages (SMALLCLS_LOADTEST_STAGES) must be JSON "
            f"[[until_s, users, spawn_rate], ...]: {exc}"
        ) from None
    ends = [s.until_s for s in stages]
    if not stages or ends != sorted(ends) or any(s.users < 0 or s.spawn_rate <= 0 for s in stages):
        raise ValueError(f"--shape-stages: need increasing until_s, users >= 0: {raw}")
    return stages


class TableShape(LoadTestShape):
    """Plays the table its options name; reads them when the test starts (Locust creates the
    shape before it parses the command line)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: tuple[Stage, ...] | None = None

    def reset_time(self) -> None:
        super().reset_time()
        assert self.runner is not None
        self.stages = stages_from(self.runner.environment.parsed_options)

    def tick(self) -> tuple[int, float] | None:
        if self.stages is None:
            self.reset_time()
        assert self.stages is not None
        run_time = self.get_run_time()
        for stage in self.stages:
            if run_time < stage.until_s:
                return stage.users, stage.spawn_rate
        return None  # past the last stage: stop the test


@events.init.add_listener
def _check_table(environment: Any, **_kwargs: Any) -> None:
    # A bad table fails before the test starts, with the option's name, not in the shape's tick.
    if isinstance(environment.shape_class, TableShape):
        stages_from(environment.parsed_options)
