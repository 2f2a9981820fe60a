"""Finding the highest arrival rate that meets a latency target: the search, free of Locust.

The server's throughput at an SLO is found as the highest open-loop arrival rate (Poisson
arrivals at a set rate, as independent clients send) whose p95 stays under the target with
few enough failures. A closed loop of N users cannot measure that: its users wait for their
answers, so the load drops exactly when the server slows, and a few coarse user counts put
the answer anywhere between two steps (the price moved by a quarter between runs).

The search is plain bracketing and bisection on the rate: start from a guess, grow (or shrink)
by `growth` until one rate passes and a higher one fails, then halve the bracket until it is
narrower than `rel_tol` or the points run out. Passing is assumed monotone in the rate; noise
near the threshold can make it otherwise, and the answer is then still a rate that passed.
The measuring function is a parameter, so the logic is tested on synthetic latency curves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from loadtests.run import LoadSummary

# Grow or shrink the rate by this much until a bracket is found: large enough to find it in a
# few points from a fair guess, small enough that the bracket starts narrow.
DEFAULT_GROWTH = 1.25
# Stop when the highest pass and the lowest fail are within this fraction of each other.
DEFAULT_REL_TOL = 0.04
# Open-loop users: enough that a user is rarely still waiting for its last answer when its
# next request is due (in flight on average: rate x latency). Each user then sends rate/users
# requests per second; users for four times the SLO of arrivals keep pacing open even when
# answers take that long. The latency counted is at most a quarter second and the users at
# most 256: a generous SLO (a saturation test's) must not ask Locust for thousands of users.
OPEN_LOOP_SLO_MULTIPLE = 4.0
OPEN_LOOP_MAX_LATENCY_S = 0.25
MIN_OPEN_LOOP_USERS = 8
MAX_OPEN_LOOP_USERS = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trial:
    rate: float  # offered requests per second
    passed: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    trials: list[Trial]  # in the order measured
    best_rate: float | None  # the highest rate that passed; None if none did
    bracket: tuple[float | None, float | None]  # (highest pass, lowest fail above it)
    stop_reason: str

    @property
    def resolution(self) -> float | None:
        """How far above the answer the true threshold may lie, as a fraction of it."""
        low, high = self.bracket
        if low is None or high is None:
            return None
        return high / low - 1


def first_guess(capacity_rps: float, probe_p95_ms: float | None, slo_p95_ms: float) -> float:
    """Where to start, from a closed-loop probe at saturation: its throughput is an upper
    bound for an open loop meeting the SLO (queueing under random arrivals costs headroom), and
    when the probe's own p95 is over the SLO, the rate shrinks in proportion (Little's law: at
    the same throughput, latency scales with the number in flight)."""
    if capacity_rps <= 0:
        raise ValueError(f"capacity must be > 0 requests/s, got {capacity_rps}")
    ratio = 1.0 if probe_p95_ms is None or probe_p95_ms <= 0 else slo_p95_ms / probe_p95_ms
    return 0.85 * capacity_rps * min(1.0, ratio)


def search_rate(
    passes: Callable[[float], bool],
    *,
    guess: float,
    points: int,
    rel_tol: float = DEFAULT_REL_TOL,
    growth: float = DEFAULT_GROWTH,
    min_rate: float = 0.5,
) -> SearchResult:
    """Bracket then bisect the rate with at most `points` calls of `passes(rate)`."""
    if guess <= 0 or points < 1 or growth <= 1 or rel_tol <= 0:
        raise ValueError(
            f"need guess > 0, points >= 1, growth > 1, rel_tol > 0; got {guess}, {points}, "
            f"{growth}, {rel_tol}"
        )
    low: float | None = None  # highest rate that passed
    high: float | None = None  # lowest rate that failed, above low
    trials: list[Trial] = []
    rate = guess
    reason = f"used all {points} points"
    for _ in range(points):
        ok = passes(rate)
        trials.append(Trial(rate=rate, passed=ok))
        if ok:
            low = rate if low is None else max(low, rate)
        else:
            high = rate if high is None else min(high, rate)
        if low is not None and high is not None:
            if high / low - 1 <= rel_tol:
                reason = f"bracket within {rel_tol:.0%}"
                break
            rate = (low + high) / 2
        elif low is not None:
            rate = low * growth
        else:
            assert high is not None
            rate = high / growth
            if rate < min_rate:
                reason = f"no rate down to {min_rate:g} requests/s passed"
                break
    return SearchResult(trials=trials, best_rate=low, bracket=(low, high), stop_reason=reason)


def open_loop_users(rate: float, slo_p95_ms: float) -> int:
    """Users that offer `rate` requests/s as an open loop (see OPEN_LOOP_SLO_MULTIPLE)."""
    latency_s = min(slo_p95_ms / 1000, OPEN_LOOP_MAX_LATENCY_S)
    in_flight_bound = math.ceil(rate * OPEN_LOOP_SLO_MULTIPLE * latency_s)
    return min(MAX_OPEN_LOOP_USERS, max(MIN_OPEN_LOOP_USERS, in_flight_bound))


def meets_slo(step: LoadSummary, slo_p95_ms: float, max_failure_rate: float) -> bool:
    return (
        step.requests > 0
        and step.p95_ms is not None
        and step.p95_ms <= slo_p95_ms
        and step.failure_rate <= max_failure_rate
    )


def best_at_slo(
    steps: Sequence[LoadSummary], slo_p95_ms: float, max_failure_rate: float
) -> LoadSummary | None:
    """The step with the most texts per second among those meeting the SLO; None if none do.
    Ties go to fewer users (the same work with less queueing)."""
    ok = [s for s in steps if meets_slo(s, slo_p95_ms, max_failure_rate)]
    if not ok:
        return None
    return max(ok, key=lambda s: (s.texts_per_s, -s.users))
