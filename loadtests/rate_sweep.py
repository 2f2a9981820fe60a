"""The rate search against a live server: a closed-loop probe, then open-loop points.

1. Probe: `probe_users` users back to back for a short while. Its throughput is the server's
   capacity with the generator beside it, an upper bound for the open loop; its p95 scales the
   first guess (loadtests/search.py).
2. Points: one headless Locust run per rate, users paced by Poisson arrivals (`--rate` per
   user, loadtests/locustfile.py) so the offered load does not drop when the server slows. A
   point passes when p95 <= SLO and failures <= the limit; the search brackets and bisects.

Every point records the server's CPU-seconds over the run (`server_cpu_s_per_text`), so the
figure can be priced from the server's own CPU where the generator must share its cores
(reports/cost.py). Where the machine has a core to spare, the server and Locust are pinned
apart (loadtests/cores.py) for the whole search and the throughput prices the instance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtests.cores import CorePlan, available_cores, pinned_tree, plan_cores
from loadtests.process import LiveStats
from loadtests.run import LoadSummary, run_loadtest
from loadtests.search import SearchResult, first_guess, open_loop_users, search_rate

logger = logging.getLogger(__name__)

RATE_ENV = "SMALLCLS_LOADTEST_RATE"  # requests/s per user (loadtests/options.py)
BASIS_DEDICATED = "dedicated_cores"  # throughput measured with the server alone on its cores
BASIS_CPU = "server_cpu_seconds"  # CPU-seconds per text x price per vCPU-second
# The closed-loop probe saturates on purpose: more failed than this and the model is broken
# (or the token wrong), not just full, and no rate is searched.
PROBE_MAX_FAILURE_RATE = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateSearch:
    probe: LoadSummary
    points: list[tuple[str, float, LoadSummary]]  # (dir name, offered rate, summary)
    result: SearchResult | None  # None when the probe already failed
    cores: CorePlan | None
    stop_reason: str

    @property
    def cost_basis(self) -> str:
        return BASIS_DEDICATED if self.cores is not None else BASIS_CPU


@contextlib.contextmanager
def _maybe_pinned(server_pid: int | None, server_cores: int) -> Iterator[CorePlan | None]:
    plan = plan_cores(available_cores(), server_cores) if server_pid is not None else None
    if plan is None:
        yield None
        return
    with pinned_tree(server_pid, plan.server):  # type: ignore[arg-type]
        yield plan


def run_rate_search(
    *,
    common: Mapping[str, Any],
    out_dir: Path,
    probe_users: int,
    probe_seconds: int,
    point_seconds: int,
    points: int,
    slo_p95_ms: float,
    max_failure_rate: float,
    server_cores: int,
    rel_tol: float,
    echo: Callable[[str], None] | None,
    progress: Callable[[str], None] | None,
    also_targets: Sequence[float] = (),
) -> RateSearch:
    """`common`: run_loadtest's keyword arguments shared by every run (host, model, texts,
    batch, server_pid, extra_env, ...). `also_targets`: tighter p95 targets that get a search
    of their own after the SLO's, `points` more each: the SLO's search measures only rates
    near its own threshold, so a tighter target would find no point that meets it, and a
    report pricing each target would call a model that meets it at a lighter load unpriced.
    The result is the SLO's search; every point is in `points`."""
    extra_env = dict(common.get("extra_env") or {})
    server_pid = common.get("server_pid")
    tighter = sorted({t for t in also_targets if t < slo_p95_ms}, reverse=True)
    total = 1 + points * (1 + len(tighter))

    def live(mark: str) -> Callable[[LiveStats], None] | None:
        return None if progress is None else (lambda s: progress(f"{mark} {s.line()}"))

    def say(line: str) -> None:
        if echo is not None:
            echo(line)

    with _maybe_pinned(server_pid, server_cores) as cores:
        gen = None if cores is None else cores.generator
        if cores is not None:
            say(f"  server pinned to cores {list(cores.server)}, Locust to {list(cores.generator)}")
        mark = f"  [probe 1/{total}]"
        probe = run_loadtest(
            **{**common, "extra_env": extra_env},
            out_dir=out_dir / f"probe-users-{probe_users:03d}",
            users=probe_users, spawn_rate=probe_users, run_time_s=probe_seconds,
            progress=live(mark), generator_cores=gen,
        )  # fmt: skip
        say(f"{mark} closed loop: {probe.line()}")
        # A saturated probe may see a few refusals (a slow model's queue timeout): what it
        # answered still bounds the capacity, and lighter rates may meet the SLO. Only a
        # probe that answered almost nothing (a model that fails, a wrong token) stops here.
        answered_rps = probe.rps * (1.0 - probe.failure_rate)
        if answered_rps <= 0 or probe.failure_rate > PROBE_MAX_FAILURE_RATE:
            reason = (f"the closed-loop probe failed ({probe.failure_rate:.1%} failed, "
                      f"{probe.rps:.1f} req/s)")  # fmt: skip
            return RateSearch(probe=probe, points=[], result=None, cores=cores, stop_reason=reason)

        done: list[tuple[str, float, LoadSummary]] = []
        used_users: set[int] = set()

        def passes(rate: float, target: float = slo_p95_ms) -> bool:
            users = open_loop_users(rate, target)
            while users in used_users:  # one directory and one user count per point
                users += 1
            used_users.add(users)
            name = f"rate-{rate:08.2f}"
            while any(name == d for d, _, _ in done):  # the same rate, for another target
                name += "-again"
            mark = f"  [point {len(done) + 2}/{total}]"
            summary = run_loadtest(
                **{**common, "extra_env": {**extra_env, RATE_ENV: f"{rate / users:.6g}"}},
                out_dir=out_dir / name, users=users, spawn_rate=users,
                run_time_s=point_seconds, progress=live(mark), generator_cores=gen,
            )  # fmt: skip
            done.append((name, rate, summary))
            ok = (
                summary.requests > 0 and summary.p95_ms is not None
                and summary.p95_ms <= target and summary.failure_rate <= max_failure_rate
            )  # fmt: skip
            verdict = "meets" if ok else "misses"
            slo = "the SLO" if target == slo_p95_ms else f"p95 <= {target:g} ms"
            say(f"{mark} offered {rate:.1f} req/s: {summary.line()} -> {verdict} {slo}")
            return ok

        guess = first_guess(answered_rps, probe.p95_ms, slo_p95_ms)
        result = search_rate(passes, guess=guess, points=points, rel_tol=rel_tol)
        for target in tighter:
            say(f"  the highest rate with p95 <= {target:g} ms:")
            search_rate(
                lambda rate, t=target: passes(rate, t),
                guess=first_guess(answered_rps, probe.p95_ms, target),
                points=points,
                rel_tol=rel_tol,
            )
    return RateSearch(
        probe=probe, points=done, result=result, cores=cores, stop_reason=result.stop_reason
    )


def rate_fields(
    found: RateSearch, slo_p95_ms: float, max_failure_rate: float, point_seconds: int
) -> dict[str, Any]:
    """What a rate search adds to sweep.json, the method sentence included."""
    cores = found.cores
    bracket = list(found.result.bracket) if found.result is not None else [None, None]
    width = found.result.resolution if found.result is not None else None
    where = (
        f"the server pinned alone to cores {list(cores.server)} and Locust to "
        f"{list(cores.generator)}; priced from throughput"
        if cores is not None
        else "the load generator shared the server's cores; priced from the server's own "
        "CPU-seconds per text x the instance's price per vCPU-second"
    )
    method = (
        f"open loop: the highest Poisson arrival rate with p95 <= {slo_p95_ms:g} ms and "
        f"failures <= {max_failure_rate:.0%}, bracketed and bisected over "
        f"{len(found.points)} points of {point_seconds} s"
        + ("" if width is None else f" (to within {width:.0%})")
        + f"; {where}"
    )
    return {
        "probe": dataclasses.asdict(found.probe),
        "bracket": bracket,
        "cost_basis": found.cost_basis,
        "server_cores": None if cores is None else list(cores.server),
        "generator_cores": None if cores is None else list(cores.generator),
        "method": method,
    }
