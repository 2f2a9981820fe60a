"""What the load generator records besides Locust's own statistics, inside the Locust process.

`RequestLog`: one CSV line per request, for timelines finer than Locust's history.
`Progress`: one JSON line of live figures per second while a test runs, for the caller to
print (loadtests/run.py follows the file). It reads the stats the runner already keeps (in a
master, the sum of its workers' reports), so following a test sends nothing to the server.
Locust's own live outputs do not fit: the console table has no percentiles, the history CSV
is flushed every few seconds and its percentiles cover the whole run, and its "current"
percentiles need a 10 s window, longer than a short sweep step.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import gevent
from locust.runners import STATE_RUNNING, STATE_SPAWNING
from locust.stats import calculate_response_time_percentile, diff_response_time_dicts

REQUEST_LOG_HEADER = "start,ms,status,outcome,error\n"
PROGRESS_INTERVAL_S = 1.0
# Rates and p95 cover the last few seconds: a master hears from its workers every 3 s
# (locust.runners.WORKER_REPORT_INTERVAL), so a shorter window would jump between 0 and 2x.
PROGRESS_WINDOW_S = 4.0
RUNNING_STATES = (STATE_SPAWNING, STATE_RUNNING)


class RequestLog:
    """One CSV line per request: start (epoch s), latency (ms), HTTP status (0: no answer),
    outcome (ok, shed, fail) and the error. Lets a caller cut a run into seconds or minutes
    around an event (a worker killed, load dropped), which locust's cumulative stats cannot."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "w", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._handle.write(REQUEST_LOG_HEADER)
        self._flushed = time.monotonic()

    def attach(self, environment: Any) -> None:
        environment.events.request.add_listener(self.on_request)
        environment.events.quit.add_listener(lambda **_kw: self._handle.close())

    def on_request(
        self,
        name: str,
        response_time: float,
        start_time: float | None = None,
        response: Any = None,
        exception: Any = None,
        **_kwargs: Any,
    ) -> None:
        if self._handle.closed:
            return
        status = getattr(response, "status_code", 0) or 0
        if exception is not None:
            outcome = "fail"
        elif name.startswith("shed:"):
            outcome = "shed"
        else:
            outcome = "ok"
        error = "" if exception is None else " ".join(str(exception)[:80].replace(",", ";").split())
        start = start_time or 0.0
        self._handle.write(f"{start:.4f},{response_time:.2f},{status},{outcome},{error}\n")
        if time.monotonic() - self._flushed > 1:  # readers follow the run (about once a second)
            self._handle.flush()
            self._flushed = time.monotonic()


class Progress:
    """Appends to `path`, every PROGRESS_INTERVAL_S from each test start, a JSON object:
    elapsed_s, run_time_s (None: no limit), users, requests and failures so far, and over the
    last PROGRESS_WINDOW_S: rps, texts_per_s (rps x batch), failures_per_s, p95_ms (None when
    no request finished in the window)."""

    def __init__(self, environment: Any, path: Path, *, batch: int) -> None:
        self._env = environment
        self._path = Path(path)
        self._batch = batch
        self._t0 = time.monotonic()
        self._greenlet: gevent.Greenlet | None = None
        # (time, requests, failures, requests with a response time, response-time histogram)
        self._snaps: collections.deque[tuple[float, int, int, int, dict[int, int]]] = (
            collections.deque()
        )
        self._path.write_text("", encoding="utf-8")

    def attach(self) -> None:
        self._env.events.test_start.add_listener(self._start)
        self._env.events.quit.add_listener(self._stop)

    def _start(self, **_kwargs: Any) -> None:
        self._t0 = time.monotonic()
        self._snaps.clear()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)

    def _stop(self, **_kwargs: Any) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _loop(self) -> None:
        self._snaps.append(self._snapshot())
        while True:
            gevent.sleep(PROGRESS_INTERVAL_S)
            if self._env.runner.state not in RUNNING_STATES:  # stopped: the summary follows
                continue
            with open(self._path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.sample()) + "\n")

    def _snapshot(self) -> tuple[float, int, int, int, dict[int, int]]:
        total = self._env.runner.stats.total
        timed = total.num_requests - total.num_none_requests
        return (time.monotonic(), total.num_requests, total.num_failures, timed,
                dict(total.response_times))  # fmt: skip

    def sample(self) -> dict[str, Any]:
        now = self._snapshot()
        self._snaps.append(now)
        while len(self._snaps) > 2 and now[0] - self._snaps[1][0] >= PROGRESS_WINDOW_S:
            self._snaps.popleft()
        old = self._snaps[0]
        dt = max(now[0] - old[0], 1e-9)
        rps = (now[1] - old[1]) / dt
        timed = now[3] - old[3]
        window = diff_response_time_dicts(now[4], old[4])
        p95 = calculate_response_time_percentile(window, timed, 0.95) if timed > 0 else None
        run_time = getattr(self._env.parsed_options, "run_time", None)
        return {
            "elapsed_s": round(now[0] - self._t0, 1),
            "run_time_s": run_time or None,
            "users": self._env.runner.user_count,
            "requests": now[1],
            "failures": now[2],
            "rps": round(rps, 2),
            "texts_per_s": round(rps * self._batch, 2),
            "failures_per_s": round((now[2] - old[2]) / dt, 2),
            "p95_ms": p95,
        }
