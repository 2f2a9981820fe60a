"""The closed-loop sweep: steps of concurrent users, each a Locust run of its own.

Kept for `search="users"` (loadtests/sweep.py): a few user counts in order until one misses
the SLO, fails, or adds too little throughput. Coarse: the answer is one of the steps, so the
throughput at the SLO lands anywhere between two of them; the rate search is the default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.process import LiveStats
from loadtests.run import LoadSummary, run_loadtest
from loadtests.search import best_at_slo


def live_printer(progress: Callable[[str], None], mark: str) -> Callable[[LiveStats], None]:
    return lambda live: progress(f"{mark} {live.line()}")


def user_steps(
    common: dict[str, Any],
    out_dir: Path,
    steps: list[int],
    step_seconds: int | None,
    slo_p95_ms: float,
    max_failure_rate: float,
    min_gain: float,
    echo: Callable[[str], None] | None,
    progress: Callable[[str], None] | None,
) -> tuple[list[tuple[str, LoadSummary]], str]:
    """The closed-loop sweep: steps of users in order until one misses the SLO, fails, or
    adds < `min_gain` throughput."""
    done: list[tuple[str, LoadSummary]] = []
    stop_reason = f"all {len(steps)} steps ran"
    for i, users in enumerate(steps, 1):
        step_dir = out_dir / f"users-{users:03d}"
        mark = f"  [step {i}/{len(steps)}]"
        summary = run_loadtest(
            **common,
            out_dir=step_dir,
            users=users,
            spawn_rate=users,  # all at once: a step is short, ramping would eat into it
            run_time_s=step_seconds,
            progress=None if progress is None else live_printer(progress, mark),
        )
        if echo is not None:
            echo(f"{mark} {summary.line()}")
        best_before = best_at_slo([s for _, s in done], slo_p95_ms, max_failure_rate)
        done.append((step_dir.name, summary))
        if summary.failure_rate > max_failure_rate:
            stop_reason = (
                f"{summary.failure_rate:.1%} of requests failed at {users} users "
                f"(limit {max_failure_rate:.1%})"
            )
            break
        if summary.p95_ms is None or summary.p95_ms > slo_p95_ms:
            p95 = "n/a" if summary.p95_ms is None else f"{summary.p95_ms:.0f} ms"
            stop_reason = f"p95 {p95} > SLO {slo_p95_ms:g} ms at {users} users"
            break
        if best_before is not None and summary.texts_per_s < best_before.texts_per_s * (
            1 + min_gain
        ):
            stop_reason = (
                f"throughput stopped growing at {users} users ({summary.texts_per_s:.1f} vs "
                f"{best_before.texts_per_s:.1f} texts/s, < +{min_gain:.0%})"
            )
            break
    return done, stop_reason
