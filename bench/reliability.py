"""Reliability under overload, faults and time, against a real `bentoml serve`: one command,
one table.

    python bench/reliability.py [MODEL_DIR] --out bench_out/reliability [--quick]

One server (the production settings in PRODUCTION_ENV, auth on, 2 workers) goes through, in
order:
  1 saturation  a short Locust sweep (loadtests/sweep.py): the most req/s with <= 1% refused
  2 overload    paced Locust users offering 3x saturation for 60 s, then 50% for 30 s: the
                service must keep answering, shed the excess with 429/503 (counted apart by
                the locustfile, not as failures), keep p99 of accepted requests <= 2x SLO, and
                recover (no shedding, p95 <= SLO) once the load drops
  3 soak        70% of saturation for 10 minutes: errors, RSS of the server's process tree
                (first- vs last-minute median) and latency per minute
  4 hostile     bench/hostile.py (schemathesis fuzzing and hand-made hostile inputs), with
                the tree's RSS before and after
  5 worker kill 50% of saturation, one worker SIGKILLed: failed requests, time until a new
                worker runs and is ready, time until traffic is back to its rate without errors
  6 SIGTERM     16 clients in flight, SIGTERM to the server: every request in flight must get
                its 200, the server must exit 0 within the grace period

`--quick` shrinks every duration (about 2 minutes; CI runs it on a tiny model and asserts
behaviour, not timings). Writes `reliability.md` and `reliability.json` (rows: check, what was
tried, figure, target, pass/fail) and each phase's Locust files and per-request logs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu_share import (  # noqa: E402
    CpuSampler,
    describe,
    latency_histogram,
    main_thread_cpu_s,
    objective_bucket,
    period_share,
)
from bench.hostile import fuzz_schema, hostile_inputs, process_tree_rss  # noqa: E402
from core.manifest import Manifest  # noqa: E402
from loadtests.run import LoadSummary, run_loadtest  # noqa: E402
from loadtests.sweep import machine_label, run_sweep  # noqa: E402
from service.launch import ServerProcess  # noqa: E402

DEFAULT_MODEL = ROOT / "demo_output" / "models" / "minilm-int8"  # written by `make demo`
TEXTS = ROOT / "data" / "sst2" / "test.jsonl"
WORKER_MODULE = "_bentoml_impl.worker.service"  # what BentoML's worker processes run
READY_LINE = "serving models"  # logged by each worker once its models are loaded and warmed

# Production settings for a 2-core machine and the demo's SLO (p95 <= 50 ms), measured with
# this script (see README "Reliability"). Overload is refused at the door by the admission
# control (service/admission.py), which lets bursts queue; the fixed limits are backstops only.
PRODUCTION_ENV = {
    "SMALLCLS_WORKERS": "2",  # one per core: a worker that dies leaves the other serving
    "SMALLCLS_THREADS": "1",  # onnxruntime threads per worker: 2 workers x 1 = the 2 cores
    "SMALLCLS_MAX_BATCH_SIZE": "16",  # texts per model call
    # A queue delay standing above 10 ms for 100 ms is overload: the door then keeps about
    # 10 ms of work queued per worker and refuses the rest before reading it, and a text
    # that waited 50 ms (the SLO) is refused rather than answered late. Measured at 3x
    # saturation: target 20 ms without the 50 ms timeout put accepted p99 at 110-134 ms,
    # with it at 98 ms; target 10 ms with it, at 56 ms.
    "SMALLCLS_QUEUE_TARGET_MS": "10",
    "SMALLCLS_QUEUE_INTERVAL_MS": "100",
    "SMALLCLS_OVERLOAD_MAX_WAIT_MS": "50",
    # Backstops: a text that waited this long for its batch is answered 503 rather than late
    # (requests with many texts), and a queue this long refuses at once.
    "SMALLCLS_MAX_LATENCY_MS": "200",
    "SMALLCLS_MAX_QUEUE": "256",  # texts queued per model and worker
    # Clients reconnect every 32 requests (about 6 s for a paced user): connections, which
    # BentoML's workers otherwise keep for good, spread again over the workers, and reach a
    # worker that replaced a killed one.
    "SMALLCLS_MAX_REQUESTS_PER_CONNECTION": "32",
    # The model threads yield the CPU to the event loops, which admit and refuse requests.
    "SMALLCLS_MODEL_THREAD_NICE": "10",
}
REFUSAL_P99_MS = 20.0  # a refusal must be cheap for the client too


@dataclasses.dataclass(frozen=True, kw_only=True)
class Durations:
    sweep_steps: tuple[int, ...]
    step_s: int
    overload_s: int
    recover_s: int
    soak_s: int
    period_s: int  # soak statistics per period ("per minute" in full mode)
    rss_every_s: float
    kill_run_s: int
    kill_at_s: float  # after the first request of the kill phase
    drain_warm_s: float
    fuzz_examples: int
    min_tail_s: int  # a recovery must hold for at least this long to count


FULL = Durations(
    sweep_steps=(1, 2, 4, 8, 16, 32),
    step_s=10,
    overload_s=60,
    recover_s=30,
    soak_s=600,
    period_s=60,
    rss_every_s=5,
    kill_run_s=45,
    kill_at_s=10,
    drain_warm_s=3,
    fuzz_examples=1000,
    min_tail_s=10,
)
QUICK = Durations(
    sweep_steps=(1, 4, 16),
    step_s=2,
    overload_s=8,
    recover_s=10,
    soak_s=8,
    period_s=4,
    rss_every_s=1,
    kill_run_s=26,  # BentoML notices a dead worker within 10 s, then it loads its models
    kill_at_s=3,
    drain_warm_s=1.5,
    fuzz_examples=50,
    min_tail_s=3,
)


@dataclasses.dataclass(kw_only=True)
class Row:
    check: str
    tried: str
    figure: str
    target: str
    ok: bool | None  # None: skipped or informational
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def result(self) -> str:
        return "skip" if self.ok is None else ("pass" if self.ok else "FAIL")


def say(message: str) -> None:
    print(message, flush=True)


# ---- request logs (written by loadtests/locustfile.py) ----------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    start: float  # epoch seconds
    ms: float
    status: int
    outcome: str  # ok, shed, fail
    error: str

    @property
    def end(self) -> float:
        return self.start + self.ms / 1000


def read_requests(path: Path) -> list[Request]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        next(handle, None)  # header
        for line in handle:
            start, ms, status, outcome, error = line.rstrip("\n").split(",", 4)
            rows.append(Request(float(start), float(ms), int(status), outcome, error))
    return sorted(rows, key=lambda r: r.start)


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def latency(requests: Iterable[Request]) -> dict[str, float | None]:
    ms = [r.ms for r in requests]
    return {"p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99)}


def per_second(requests: Sequence[Request], t0: float, t1: float) -> list[list[Request]]:
    bins: list[list[Request]] = [[] for _ in range(max(0, math.ceil(t1 - t0)))]
    for r in requests:
        i = int(r.start - t0)
        if 0 <= i < len(bins):
            bins[i].append(r)
    return bins


# ---- the server's processes --------------------------------------------------------------


def worker_pids(arbiter: int) -> set[int]:
    try:
        children = psutil.Process(arbiter).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    pids = set()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if WORKER_MODULE in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


def tree_rss_mb(root: int) -> float:
    return process_tree_rss(root) / 2**20


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    total = 0.0
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops")


def listen_counters() -> dict[str, int]:
    """The kernel's count of connections dropped because a listening socket's accept queue
    was full (/proc/net/netstat, TcpExt): each such drop costs the client a SYN retransmit,
    one second on Linux. {} where the file is not readable."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in LISTEN_COUNTERS if k in table}
    return {}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k in before}


def locust_cpu_s() -> float:
    """CPU seconds used so far by this process's Locust subprocesses (the load generator)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if "locust" in " ".join(child.cmdline()):
                times = child.cpu_times()
                total += times.user + times.system
    return total


def count_ready_lines(log_path: Path) -> int:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace").count(READY_LINE)
    except FileNotFoundError:
        return 0


# ---- Locust in a thread (it runs as a subprocess; this only waits for it) ----------------


class Load:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.summary: LoadSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = run_loadtest(**self.kwargs)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self) -> LoadSummary:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def wait_first_request(self, log: Path, timeout_s: float = 60) -> float:
        """Block until the request log shows a request (it is flushed every second)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.thread.is_alive():
            with (
                contextlib.suppress(FileNotFoundError, StopIteration, ValueError),
                open(log, encoding="utf-8") as handle,
            ):
                next(handle)
                return float(next(handle).split(",", 1)[0])
            time.sleep(0.1)
        raise RuntimeError(f"no request logged in {log} after {timeout_s:.0f} s")


# ---- what a refusal costs ---------------------------------------------------------------


def refusal_cpu(
    samples: Sequence[tuple[float, float, float]],
    reqs: Sequence[Request],
    t0: float,
    drop: float,
    end: float,
    cpu_per_answer_s: float | None,
) -> dict[str, float | None] | None:
    """CPU per refused request during the overload, estimated two ways from samples of
    (epoch s, server tree CPU s, workers' event-loop CPU s) over [t0, end], the load
    dropping to 50% at `drop`. Both take the overload's middle (its first and last second
    left out) and subtract what its answers cost: (CPU - answers x CPU per answer) / refusals.

    - The whole server tree, with an answer priced at saturation (`cpu_per_answer_s`). The
      model's CPU per answer depends on the batch sizes, which differ between saturation
      and overload, so this one carries that difference into every refusal.
    - The event loops alone (the model threads left out), with an answer's loop CPU
      measured after the drop, from the last refusal or error on (a calm span of at least
      5 s): None where the run has no such span. An answer likely costs the loop more at
      50% load than under overload, where more requests share each turn of the loop (this
      estimate has come out at 0.00 ms), so it leans low.
    Beside them, the loops' CPU over every request of the overload's middle, answers and
    refusals together: a bound from above, since a refusal does less in the loop than an
    answer (no body read, no JSON, no batch, no response body).
    None where the overload's middle has no refusal or too few samples."""
    inside = [s for s in samples if t0 + 1 <= s[0] <= drop - 1]
    if len(inside) < 2:
        return None
    (ta, tree_a, loop_a), (tb, tree_b, loop_b) = inside[0], inside[-1]
    window = [r for r in reqs if ta <= r.start < tb]
    answers = sum(r.outcome == "ok" for r in window)
    refusals = sum(r.outcome == "shed" for r in window)
    if not refusals:
        return None
    out: dict[str, float | None] = {
        "window_s": tb - ta, "answers": answers, "refusals": refusals,
        "server_cpu_s": tree_b - tree_a, "cpu_per_answer_ms": None, "cpu_per_refusal_ms": None,
        "loop_cpu_s": loop_b - loop_a, "calm_window_s": None,
        "loop_cpu_per_request_ms": 1000 * (loop_b - loop_a) / (answers + refusals),
        "loop_cpu_per_answer_ms": None, "loop_cpu_per_refusal_ms": None,
    }  # fmt: skip
    if cpu_per_answer_s:
        out["cpu_per_answer_ms"] = 1000 * cpu_per_answer_s
        spent = tree_b - tree_a - answers * cpu_per_answer_s
        out["cpu_per_refusal_ms"] = 1000 * spent / refusals
    unsettled = [r.start for r in reqs if drop <= r.start < end and r.outcome != "ok"]
    calm_from = max([drop, *unsettled]) + 1
    calm = [s for s in samples if calm_from <= s[0] <= end - 1]
    if len(calm) < 2 or calm[-1][0] - calm[0][0] < 5:
        return out
    (tc, _, loop_c), (td, _, loop_d) = calm[0], calm[-1]
    calm_answers = sum(r.outcome == "ok" for r in reqs if tc <= r.start < td)
    if not calm_answers:
        return out
    loop_per_answer = (loop_d - loop_c) / calm_answers
    out["calm_window_s"] = td - tc
    out["loop_cpu_per_answer_ms"] = 1000 * loop_per_answer
    out["loop_cpu_per_refusal_ms"] = 1000 * (loop_b - loop_a - answers * loop_per_answer) / refusals
    return out


# ---- the bench ---------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    model_dir: Path
    out: Path
    d: Durations
    quick: bool
    slo_ms: float
    rate: float  # requests per second per paced Locust user
    max_users: int
    grace_s: float
    env: dict[str, str]
    only: frozenset[str] = frozenset()  # phases to run (saturation always runs); empty: all
    given_saturation: float | None = None  # req/s: the sweep is skipped (A/B runs)
    rows: list[Row] = dataclasses.field(default_factory=list)
    token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24))

    def __post_init__(self) -> None:
        manifest = Manifest.read(self.model_dir)
        self.model, self.max_length = manifest.name, manifest.max_length
        self.server: ServerProcess | None = None
        self.cpu_per_answer_s: float | None = None

    # -- plumbing

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.process is not None
        return self.server.process.pid

    def locust_env(self, **extra: str) -> dict[str, str]:
        return {"SMALLCLS_LOADTEST_TOKEN": self.token, **extra}

    def paced(self, target_rps: float) -> tuple[int, float]:
        """(users, rate per user) that offer `target_rps` with at most max_users users."""
        rate = max(self.rate, target_rps / self.max_users)
        return max(1, math.ceil(target_rps / rate)), rate

    def load(self, name: str, *, users: int, rate: float, seconds: int, **kw: Any) -> Load:
        out = self.out / name
        env = kw.pop("env", {})
        return Load(
            host=self.url,
            model=self.model,
            texts_path=TEXTS,
            out_dir=out,
            users=users,
            spawn_rate=max(users, 1),
            run_time_s=seconds,
            max_length=self.max_length,
            timeout_s=10,  # a request this slow counts as failed, not as a hang
            server_pid=self.pid,
            extra_env=self.locust_env(
                SMALLCLS_LOADTEST_RATE=f"{rate:g}",
                SMALLCLS_LOADTEST_SHED="count",
                SMALLCLS_LOADTEST_REQUEST_LOG=str(out / "requests.csv"),
                **env,
            ),
            **kw,
        )

    def metrics(self) -> str:
        assert self.server is not None
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {self.token}"})
            return conn.getresponse().read().decode("utf-8", "replace")
        finally:
            conn.close()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        mark = {"pass": "ok", "FAIL": "FAIL", "skip": "skip"}[row.result]
        say(f"  -> [{mark}] {row.check}: {row.figure} (target: {row.target})")
        return row

    # -- phases

    def run(self) -> list[Row]:
        self.out.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "SMALLCLS_AUTH_TOKEN": self.token}
        say(f"[serve] {self.model_dir} with {sorted(self.env.items())}")
        self.server = ServerProcess(
            [self.model_dir],
            threads=int(env.get("SMALLCLS_THREADS", "1")),
            extra_env=env,
            log_path=self.out / "server.log",
            startup_timeout=180,
            stop_grace=self.grace_s,
        )
        phases: list[tuple[str, Callable[[], None]]] = [
            ("overload", self.overload),
            ("soak", self.soak),
            ("hostile", self.hostile),
            ("worker kill", self.worker_kill),
            ("sigterm", self.sigterm),
        ]
        with self.server:
            say(f"[serve] ready at {self.url}, server pid {self.pid}, workers "
                f"{sorted(worker_pids(self.pid))}")  # fmt: skip
            sat = self.saturation()
            self.sat_rps = sat
            for name, phase in phases:
                if self.only and name not in self.only:
                    continue
                if sat <= 0 and name != "sigterm":
                    self.add(Row(check=name, tried="-", figure="no saturation figure",
                                 target="-", ok=None))  # fmt: skip
                    continue
                try:
                    phase()
                except Exception as exc:  # one broken phase must not hide the others' rows
                    self.add(Row(check=name, tried="-", figure=f"error: {exc}"[:300],
                                 target="runs", ok=False))  # fmt: skip
        return self.rows

    def saturation(self) -> float:
        d = self.d
        if self.given_saturation is not None:
            say(f"[1 saturation] given: {self.given_saturation:g} req/s, no sweep")
            self.add(Row(check="saturation", tried="--saturation (not measured)",
                         figure=f"{self.given_saturation:g} req/s, given",
                         target="a figure", ok=None))  # fmt: skip
            return self.given_saturation
        say(f"[1 saturation] sweep {list(d.sweep_steps)} users, {d.step_s} s per step")
        sweep = run_sweep(
            host=self.url,
            model=self.model,
            texts_path=TEXTS,
            out_dir=self.out / "saturation",
            steps=d.sweep_steps,
            step_seconds=d.step_s,
            slo_p95_ms=1e9,  # no latency limit: saturation is the most throughput served
            max_length=self.max_length,
            server_pid=self.pid,
            extra_env=self.locust_env(),
            echo=say,
            search="users",  # closed-loop saturation: the most a set of users can be served
            # Every step runs: a step that happens to add under 5% (seen: 8 users at +2.5%,
            # then 16 and 32 users at +16% and +13%) must not end the search at 70% of the
            # saturation, and with it the overload and soak phases at too light a load.
            min_gain=-1.0,
        )
        best = sweep.at_slo
        if best is None:
            self.add(Row(check="saturation", tried=f"sweep {list(d.sweep_steps)} users",
                         figure=f"no step served <= 1% refused ({sweep.stop_reason})",
                         target="a figure", ok=False))  # fmt: skip
            return 0.0
        self.add(
            Row(
                check="saturation",
                tried=f"Locust sweep {list(d.sweep_steps)} users, {d.step_s} s/step, 1 text/req",
                figure=f"{best['rps']:.1f} req/s at {best['users']} users (p95 "
                f"{fmt_ms(best['p95_ms'])} ms, {best['failure_rate']:.2%} refused); "
                f"stopped: {sweep.stop_reason}",
                target="a figure (<= 1% refused)",
                ok=True,
                data={"rps": best["rps"], "users": best["users"], "p95_ms": best["p95_ms"],
                      "server_cpu_percent": best.get("server_cpu_percent")},
            )
        )  # fmt: skip
        cpu = best.get("server_cpu_percent")
        # Server CPU seconds per answered request at saturation: what an answer costs, to
        # tell the refusals' share of the CPU under overload.
        self.cpu_per_answer_s = cpu / 100 / best["rps"] if cpu and best["rps"] else None
        return float(best["rps"])

    def overload(self) -> None:
        d, sat = self.d, self.sat_rps
        users, rate = self.paced(3 * sat)
        calm_users = max(1, round(0.5 * sat / rate))  # same pace per user, fewer users
        total = d.overload_s + d.recover_s
        say(f"[2 overload] {users} users x {rate:g} req/s (3x {sat:.0f}) for {d.overload_s} s, "
            f"then {calm_users} users (50%) for {d.recover_s} s")  # fmt: skip
        stages = [[d.overload_s, users, users], [total, calm_users, users]]
        (self.out / "overload").mkdir(parents=True, exist_ok=True)
        text = self.metrics()
        (self.out / "overload" / "metrics-before.txt").write_text(text)
        hist_before = latency_histogram(text, self.model)
        load = self.load(
            "overload", users=users, rate=rate, seconds=total, shape="stages",
            env={"SMALLCLS_LOADTEST_STAGES": json.dumps(stages)},
        ).start()  # fmt: skip
        # The load generator shares the cores: its CPU explains client-side latency that the
        # server's own histogram does not show.
        locust_s, started = 0.0, time.monotonic()
        kernel_before = listen_counters()
        t_first = load.wait_first_request(self.out / "overload" / "requests.csv")
        hist: dict[str, float] | None = None
        kernel_at_drop: dict[str, int] = {}
        workers = worker_pids(self.pid)
        # (epoch s, server tree CPU s, the workers' event-loop CPU s)
        cpu_samples: list[tuple[float, float, float]] = []
        while load.thread.is_alive():
            locust_s = max(locust_s, locust_cpu_s())
            cpu_samples.append((time.time(), tree_cpu_s(self.pid), main_thread_cpu_s(workers)))
            if hist is None and time.time() >= t_first + d.overload_s:  # the load drops now
                text = self.metrics()
                (self.out / "overload" / "metrics-at-drop.txt").write_text(text)
                hist = latency_histogram(text, self.model)
                kernel_at_drop = listen_counters()
            load.thread.join(timeout=0.5)
        summary = load.join()
        kernel_after = listen_counters()
        locust_percent = 100 * locust_s / (time.monotonic() - started)
        if hist is None:
            hist = latency_histogram(self.metrics(), self.model)
        # Server side (parsed -> answered, 200s and 503s) during the overload: the share
        # within 2x the SLO, from the first histogram bucket at or above it.
        edge = objective_bucket(hist, 2 * self.slo_ms / 1000)
        answered = hist.get("+Inf", 0) - hist_before.get("+Inf", 0)
        within = hist.get(edge, 0) - hist_before.get(edge, 0)
        server_share = within / answered if answered else None
        reqs = read_requests(self.out / "overload" / "requests.csv")
        t0 = reqs[0].start
        drop = t0 + d.overload_s
        over = [r for r in reqs if r.start < drop]
        ok = [r for r in over if r.outcome == "ok"]
        shed = [r for r in over if r.outcome == "shed"]
        fail = [r for r in over if r.outcome == "fail"]
        silent = sum(1 for b in per_second(over, t0, drop) if not any(r.outcome == "ok" for r in b))
        acc = latency(ok)
        shed_p99 = pct([r.ms for r in shed], 99)
        statuses = sorted({r.status for r in shed})
        limit = 2 * self.slo_ms
        ok_over = (
            not fail
            and shed
            and silent == 0
            and acc["p99_ms"] is not None
            and acc["p99_ms"] <= limit
            and shed_p99 is not None
            and shed_p99 <= REFUSAL_P99_MS
        )
        refusal = refusal_cpu(
            cpu_samples, reqs, t0, drop, drop + d.recover_s, self.cpu_per_answer_s
        )
        offered = len(over) / d.overload_s
        self.add(
            Row(
                check="overload 3x",
                tried=f"{users} paced users offering {3 * sat:.0f} req/s (3x saturation) "
                f"for {d.overload_s} s",
                figure=f"offered {offered:.0f} req/s ({offered / sat:.1f}x); accepted "
                f"{len(ok) / d.overload_s:.0f} req/s, p50/p95/p99 {fmt_ms(acc['p50_ms'])}/"
                f"{fmt_ms(acc['p95_ms'])}/{fmt_ms(acc['p99_ms'])} ms; shed {len(shed)} "
                f"({len(shed) / max(len(over), 1):.1%}, HTTP {statuses}, p99 "
                f"{fmt_ms(shed_p99)} ms); other errors {len(fail)}; seconds with no answer "
                f"{silent}; server side {'n/a' if server_share is None else f'{server_share:.1%}'}"
                f" of /classify answers within {float(edge) * 1000:g} ms; CPU: server "
                f"{summary.server_cpu_percent or 0:.0f}%, Locust {locust_percent:.0f}% "
                f"(100% = one core); CPU per refusal {fmt_refusal_cpu(refusal)}; kernel "
                f"accept-queue drops {counter_delta(kernel_before, kernel_at_drop) or 'n/a'}",
                target=f"sheds with 429/503 (p99 <= {REFUSAL_P99_MS:g} ms), accepted p99 <= "
                f"{limit:g} ms, 0 other errors, answers every second",
                ok=bool(ok_over),
                data={"offered_rps": offered, "accepted": len(ok), "shed": len(shed),
                      "other_errors": len(fail), "shed_statuses": statuses,
                      "accepted_latency": acc, "shed_p99_ms": shed_p99,
                      "server_share_within_2x_slo": server_share,
                      "server_cpu_percent": summary.server_cpu_percent,
                      "locust_cpu_percent": locust_percent,
                      "refusal_cpu": refusal,
                      "kernel_drops_overload": counter_delta(kernel_before, kernel_at_drop),
                      "kernel_drops_recovery": counter_delta(kernel_at_drop, kernel_after),
                      "errors": sorted({r.error for r in fail})[:5]},
            )
        )  # fmt: skip
        # Recovery: the first second after the drop from which on nothing is shed or fails and
        # p95 of the rest is within the SLO (a tail of at least min_tail_s seconds).
        after = [r for r in reqs if r.start >= drop]
        recovery: float | None = None
        for s in range(0, max(0, d.recover_s - d.min_tail_s) + 1):
            tail = [r for r in after if r.start >= drop + s]
            if tail and all(r.outcome == "ok" for r in tail):
                p95 = pct([r.ms for r in tail], 95)
                if p95 is not None and p95 <= self.slo_ms:
                    recovery = float(s)
                    break
        tail_lat = latency(
            [r for r in after if recovery is not None and r.start >= drop + recovery]
        )
        # Seconds after the drop with a refusal, an error or an answer over the SLO: where a
        # stall shows, with the kernel's accept-queue drops over the same phase.
        bad_seconds = [
            i for i, b in enumerate(per_second(after, drop, drop + d.recover_s))
            if any(r.outcome != "ok" or r.ms > self.slo_ms for r in b)
        ]  # fmt: skip
        self.add(
            Row(
                check="overload recovery",
                tried=f"load dropped to 50% of saturation ({calm_users} users) for {d.recover_s} s",
                figure=(
                    "did not recover: shedding, errors or p95 > SLO until the end"
                    if recovery is None
                    else f"recovered {recovery:.0f} s after the drop; then p95 "
                    f"{fmt_ms(tail_lat['p95_ms'])} ms, 0 shed, 0 errors"
                )
                + f"; seconds with a refusal, error or answer over the SLO: {bad_seconds[:12]}; "
                f"kernel accept-queue drops {counter_delta(kernel_at_drop, kernel_after) or 'n/a'}",
                target=f"no shedding and p95 <= {self.slo_ms:g} ms within 10 s",
                ok=recovery is not None and recovery <= 10,
                data={
                    "recovery_s": recovery,
                    "latency_after": tail_lat,
                    "bad_seconds": bad_seconds,
                },
            )
        )

    def soak(self) -> None:
        d, sat = self.d, self.sat_rps
        users, rate = self.paced(0.7 * sat)
        say(f"[3 soak] {users} users x {rate:g} req/s (70% of {sat:.0f}) for {d.soak_s} s, "
            f"RSS every {d.rss_every_s:g} s")  # fmt: skip
        load = self.load("soak", users=users, rate=rate, seconds=d.soak_s).start()
        rss: list[tuple[float, float]] = []
        cpu = CpuSampler(
            lambda: tree_cpu_s(self.pid), locust_cpu_s, self.scrape, self.model, self.slo_ms / 1000
        )
        while load.thread.is_alive():
            rss.append((time.time(), tree_rss_mb(self.pid)))
            cpu.sample()
            load.thread.join(timeout=d.rss_every_s)
        load.join()
        # Batch sizes, queue waits and GC pauses of the whole soak, for the slow minutes.
        if (text := self.scrape()) is not None:
            (self.out / "soak" / "metrics-end.txt").write_text(text)
        reqs = read_requests(self.out / "soak" / "requests.csv")
        t0, t1 = reqs[0].start, reqs[0].start + d.soak_s
        periods = []
        for i in range(max(1, int(d.soak_s // d.period_s))):
            lo, hi = t0 + i * d.period_s, t0 + (i + 1) * d.period_s
            part = [r for r in reqs if lo <= r.start < hi]
            mem = [m for t, m in rss if lo <= t < hi]
            periods.append({
                "period": i + 1, "requests": len(part),
                "errors": sum(r.outcome != "ok" for r in part),
                **latency([r for r in part if r.outcome == "ok"]),
                "rss_mb": statistics.median(mem) if mem else None,
                "cpu": period_share(cpu.samples, lo, hi),
            })  # fmt: skip
        errors = [r for r in reqs if r.start < t1 and r.outcome != "ok"]
        first, last = periods[0], periods[-1]
        growth = None
        if first["rss_mb"] and last["rss_mb"]:
            growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
        unit = "minute" if d.period_s == 60 else f"{d.period_s} s period"
        (self.out / "soak" / "periods.json").write_text(json.dumps(periods, indent=2) + "\n")
        self.add(
            Row(
                check="soak errors",
                tried=f"{users} paced users at {0.7 * sat:.0f} req/s (70%) for {d.soak_s} s",
                figure=f"{len(reqs)} requests, {len(errors)} errors "
                f"({sorted({r.error or f'HTTP {r.status}' for r in errors})[:3]})",
                target="0 errors",
                ok=not errors,
                data={"requests": len(reqs), "errors": len(errors)},
            )
        )
        self.add(
            Row(
                check="soak memory",
                tried=f"RSS of the server's process tree every {d.rss_every_s:g} s",
                figure="n/a" if growth is None else f"{first['rss_mb']:.0f} MB -> "
                f"{last['rss_mb']:.0f} MB (median of first vs last {unit}): {growth:+.1%}",
                target="growth < 5%",
                ok=growth is not None and growth < 0.05,
                data={"growth": growth, "samples": rss},
            )
        )  # fmt: skip
        p95s = [p["p95_ms"] for p in periods if p["p95_ms"] is not None]
        drift = {
            q: (last[q] / first[q] - 1) if first[q] and last[q] else None
            for q in ("p50_ms", "p95_ms", "p99_ms")
        }
        per = "; ".join(
            f"{p['period']}: {fmt_ms(p['p50_ms'])}/{fmt_ms(p['p95_ms'])}/{fmt_ms(p['p99_ms'])}"
            for p in periods
        )
        self.add(
            Row(
                check="soak latency",
                tried=f"p50/p95/p99 (ms) per {unit}",
                figure=f"{per}; drift last vs first: "
                + ", ".join(
                    f"{q[:3]} {'n/a' if v is None else f'{v:+.0%}'}" for q, v in drift.items()
                ),
                target=f"every {unit}'s p95 <= {self.slo_ms:g} ms; drift reported",
                ok=bool(p95s) and max(p95s) <= self.slo_ms,
                data={"periods": periods, "drift": drift},
            )
        )

        self.add(
            Row(
                check="soak CPU",
                tried=f"cores per {unit}: the server's tree, Locust, the rest of the host "
                "(steal apart); the server's own share of answers within the SLO, texts per model "
                "call and mean queue wait",
                figure="; ".join(
                    f"{p['period']}: p95 {fmt_ms(p['p95_ms'])} ms, "
                    + describe(p["cpu"], self.slo_ms)
                    for p in periods
                ),
                target="measured: tells a slow server from a busy host or client",
                ok=None,
                data={"periods": [{"period": p["period"], **p["cpu"]} for p in periods]},
            )
        )

    def scrape(self) -> str | None:
        """The server's /metrics text, or None where it did not answer."""
        try:
            return self.metrics()
        except (OSError, http.client.HTTPException):
            return None

    def hostile(self) -> None:
        workers = worker_pids(self.pid)
        before = tree_rss_mb(self.pid)
        say(f"[4 hostile] schemathesis, {self.d.fuzz_examples} examples; RSS {before:.0f} MB")
        fuzz = fuzz_schema(self.url, self.token, max_examples=self.d.fuzz_examples)
        need = self.d.fuzz_examples if not self.quick else 1
        self.add(
            Row(
                check="fuzz (schemathesis)",
                tried=f"generated cases from /docs.json (max_examples {self.d.fuzz_examples})",
                figure=f"{fuzz['cases']} cases, {fuzz['server_errors']} server errors, "
                f"{len(fuzz['failures'])} failures {list(fuzz['failures'])[:3]}",
                target=f">= {need} cases, 0 5xx, 0 failures",
                ok=fuzz["cases"] >= need and not fuzz["server_errors"] and not fuzz["failures"],
                data=fuzz,
            )
        )
        say("[4 hostile] hand-made hostile inputs")
        results = hostile_inputs(self.url, self.token, self.pid)
        bad = [r for r in results if not r["ok"]]
        failed = [(r["case"], r["status"], r["detail"]) for r in bad]
        self.add(
            Row(
                check="hostile inputs",
                tried=", ".join(r["case"] for r in results),
                figure=f"{len(results) - len(bad)}/{len(results)} ok"
                + (f"; failed: {failed}" if bad else ""),
                target="all ok (no 5xx, clear 4xx)",
                ok=bool(results) and not bad,
                data={"results": results},
            )
        )  # fmt: skip
        time.sleep(2)  # let freed buffers go back before measuring
        after = tree_rss_mb(self.pid)
        lost = workers - worker_pids(self.pid)
        growth = (after - before) / before if before else None
        self.add(
            Row(
                check="hostile: memory and workers",
                tried="RSS of the server tree before fuzzing and after the hostile inputs",
                figure=f"{before:.0f} MB -> {after:.0f} MB ({growth:+.1%}); workers lost "
                f"{len(lost)}",
                target="growth < 5%, no worker lost",
                ok=growth is not None and growth < 0.05 and not lost,
                data={"before_mb": before, "after_mb": after, "workers_lost": sorted(lost)},
            )
        )  # fmt: skip

    def worker_kill(self) -> None:
        d, sat = self.d, self.sat_rps
        assert self.server is not None
        workers = sorted(worker_pids(self.pid))
        if len(workers) < 2:
            self.add(Row(check="worker SIGKILL", tried="-", figure=f"workers {workers}",
                         target="2 workers", ok=False))  # fmt: skip
            return
        users, rate = self.paced(0.5 * sat)
        log = self.out / "worker-kill" / "requests.csv"
        say(f"[5 worker kill] {users} users x {rate:g} req/s (50%), SIGKILL worker "
            f"{workers[0]} of {workers} after {d.kill_at_s:g} s")  # fmt: skip
        ready_before = count_ready_lines(self.server.log_path)
        load = self.load("worker-kill", users=users, rate=rate, seconds=d.kill_run_s).start()
        load.wait_first_request(log)
        time.sleep(d.kill_at_s)
        t_kill = time.time()
        os.kill(workers[0], signal.SIGKILL)
        t_spawn = t_ready = None
        while load.thread.is_alive():
            now = worker_pids(self.pid)
            if t_spawn is None and now - set(workers):
                t_spawn = time.time()
            if t_ready is None and count_ready_lines(self.server.log_path) > ready_before:
                t_ready = time.time()
            time.sleep(0.1)
        load.join()
        if t_ready is None:  # it may come after the load ended
            deadline = time.monotonic() + 30
            while t_ready is None and time.monotonic() < deadline:
                if count_ready_lines(self.server.log_path) > ready_before:
                    t_ready = time.time()
                time.sleep(0.2)
        reqs = read_requests(log)
        before = [r for r in reqs if r.end < t_kill]
        t_first = reqs[0].start
        base_rps = len([r for r in before if r.outcome == "ok" and r.start >= t_first + 1]) / max(
            t_kill - t_first - 1, 1
        )
        failed = [r for r in reqs if r.outcome != "ok"]
        # Sporadic shedding happens at steady load too: "recovered" means the error rate is
        # back to what it was before the kill (at most 1%) and every second serves at least
        # 70% of the pre-kill rate, from that second to the end of the run.
        base_errors = sum(r.outcome != "ok" for r in before) / max(len(before), 1)
        allowed = max(0.01, base_errors)
        t_end = t_first + d.kill_run_s - 1  # the last whole second of the run
        recovery = None
        bins = per_second(reqs, t_kill, t_end)
        for s, _ in enumerate(bins):
            rest = [r for b in bins[s:] for r in b]
            bad = sum(r.outcome != "ok" for r in rest)
            if bad <= allowed * len(rest) and all(
                sum(r.outcome == "ok" for r in b) >= 0.7 * base_rps for b in bins[s:]
            ):
                recovery = float(s)
                break
        spawn_s = None if t_spawn is None else t_spawn - t_kill
        ready_s = None if t_ready is None else t_ready - t_kill
        kinds = sorted({r.error or f"HTTP {r.status}" for r in failed})
        self.add(
            Row(
                check="worker SIGKILL",
                tried=f"2 workers, {users} users at 50% of saturation; SIGKILL one worker",
                figure=f"{len(failed)} failed requests of {len(reqs)} ({kinds[:3]}); traffic "
                f"back to its rate without errors after "
                f"{'never' if recovery is None else f'{recovery:.0f} s'} (errors before the "
                f"kill {base_errors:.1%}); new worker started "
                f"after {'never' if spawn_s is None else f'{spawn_s:.1f} s'}, ready after "
                f"{'never' if ready_s is None else f'{ready_s:.1f} s'}",
                target="replaced; traffic back (rate, errors <= max(1%, before)) within 10 s",
                ok=recovery is not None and recovery <= 10 and ready_s is not None,
                data={"failed": len(failed), "requests": len(reqs), "errors": kinds,
                      "traffic_recovery_s": recovery, "spawn_s": spawn_s, "ready_s": ready_s,
                      "baseline_rps": base_rps, "errors_before_kill": base_errors},
            )
        )  # fmt: skip

    def sigterm(self) -> None:
        assert self.server is not None and self.server.process is not None
        process = self.server.process
        host, port = self.server.host, self.server.port
        # Far below saturation, so nothing in flight is shed.
        clients, texts = 6, 2
        say(f"[6 sigterm] {clients} clients, {texts} texts per request; SIGTERM to pid "
            f"{process.pid} after {self.d.drain_warm_s:g} s, grace {self.grace_s:g} s")  # fmt: skip
        sample = [json.loads(line)["text"] for line in TEXTS.read_text().splitlines()[:64]]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        done: list[tuple[float, float, int, str]] = []
        stop = threading.Event()

        def client(i: int) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=self.grace_s + 10)
            n = 0
            while not stop.is_set():
                body = json.dumps({"texts": [sample[(i * 7 + n + k) % len(sample)]
                                             for k in range(texts)]})  # fmt: skip
                n += 1
                start = time.time()
                try:
                    conn.request("POST", "/classify", body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    done.append((start, time.time(), resp.status, ""))
                    if resp.will_close:
                        conn.close()
                except Exception as exc:  # refused, reset, closed: recorded, then retried
                    done.append((start, time.time(), 0, type(exc).__name__))
                    conn.close()
                    time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(self.d.drain_warm_s)
        t_term = time.time()
        self.server.terminate()  # SIGTERM to the arbiter and its workers (service/launch.py)
        try:
            code: int | None = process.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            code = None
        t_exit = time.time()
        time.sleep(0.3)  # a few attempts against the closed port
        stop.set()
        for t in threads:
            t.join(timeout=self.grace_s + 15)
        self.server.stop()  # kills whatever is left (nothing, when the drain worked)
        in_flight = [r for r in done if r[0] < t_term < r[1]]
        # 429/503 are refusals (the request was never accepted), not losses; anything else
        # that is not a 200 (reset, closed, 5xx) is a request the shutdown dropped.
        refused = [r for r in in_flight if r[2] in (429, 503)]
        lost = [r for r in in_flight if r[2] not in (200, 429, 503)]
        accepted = len(in_flight) - len(refused)
        shed_before = sum(1 for r in done if r[1] <= t_term and r[2] in (429, 503))
        after = [r for r in done if r[0] >= t_term]
        outcomes: dict[str, int] = {}
        for r in after:
            key = "200" if r[2] == 200 else (r[3] or f"HTTP {r[2]}")
            outcomes[key] = outcomes.get(key, 0) + 1
        exit_s = t_exit - t_term
        kinds = sorted({r[3] or f"HTTP {r[2]}" for r in lost})[:3]
        # A worker that drains stops accepting within a moment; 200s to requests sent a second
        # or more after SIGTERM mean some worker went on serving as if it had none.
        late_200 = sum(1 for r in after if r[2] == 200 and r[0] >= t_term + 1)
        self.add(
            Row(
                check="SIGTERM drain",
                tried=f"{clients} clients sending {texts}-text requests back to back; SIGTERM "
                "to the server and its workers",
                figure=f"{len(in_flight)} in flight at SIGTERM ({len(refused)} of them shed "
                f"429/503), {accepted - len(lost)} of {accepted} accepted answered 200, "
                f"{len(lost)} lost {kinds}; exit code {code} after {exit_s:.1f} s; requests "
                f"sent after SIGTERM: {outcomes} ({late_200} answered 200 >= 1 s after it)",
                target=f"every accepted in-flight request answered 200; exit 0 within "
                f"{self.grace_s:g} s",
                ok=accepted > 0 and not lost and code == 0,
                data={"in_flight": len(in_flight), "accepted": accepted, "lost": len(lost),
                      "refused_in_flight": len(refused), "exit_code": code, "exit_s": exit_s,
                      "after_sigterm": outcomes, "shed_before_sigterm": shed_before,
                      "late_200": late_200},
            )
        )  # fmt: skip


# ---- the table ---------------------------------------------------------------------------


def write_table(rows: list[Row], out: Path, meta: dict[str, Any]) -> Path:
    lines = [
        "# Reliability",
        "",
        f"`{meta['command']}`",
        "",
        f"Model `{meta['model']}`, {meta['machine']}, {meta['date']}, mode {meta['mode']}, "
        f"SLO p95 {meta['slo_p95_ms']:g} ms. Server settings: "
        + ", ".join(f"`{k}={v}`" for k, v in sorted(meta["server_env"].items())),
        "",
        "| check | what was tried | figure | target | result |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.check, row.tried, row.figure, row.target, row.result]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    md = out / "reliability.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {**meta, "rows": [{**dataclasses.asdict(r), "result": r.result} for r in rows]}
    (out / "reliability.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return md


def fmt_refusal_cpu(data: dict[str, float | None] | None) -> str:
    """`0.78 ms (answer 6.43 ms at saturation; ...); event loops alone 0.18 ms (answer
    1.67 ms over 27 calm s after the drop), at most 0.55 ms (their CPU per request)`."""
    if data is None:
        return "n/a"

    def ms(key: str) -> str:
        return "n/a" if data[key] is None else f"{data[key]:.2f} ms"

    text = (
        f"{ms('cpu_per_refusal_ms')} (answer {ms('cpu_per_answer_ms')} at saturation; "
        f"{data['server_cpu_s']:.1f} CPU s over {data['window_s']:.0f} s for "
        f"{data['answers']} answers + {data['refusals']} refusals); event loops alone "
    )
    if data["loop_cpu_per_refusal_ms"] is None:
        text += "n/a (no calm span after the drop)"
    else:
        text += (
            f"{ms('loop_cpu_per_refusal_ms')} (answer {ms('loop_cpu_per_answer_ms')} over "
            f"{data['calm_window_s']:.0f} calm s after the drop)"
        )
    return text + f", at most {ms('loop_cpu_per_request_ms')} (their CPU per request)"


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = dict(PRODUCTION_ENV)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("SMALLCLS_"):
            raise SystemExit(f"--env takes SMALLCLS_NAME=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_MODEL,
        help="an exported model directory (default: the demo's minilm-int8)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/reliability"))
    parser.add_argument("--quick", action="store_true", help="short durations (about 2 min)")
    parser.add_argument("--slo-p95-ms", type=float, default=50.0)
    parser.add_argument(
        "--rate", type=float, default=5.0, help="requests per second per paced Locust user"
    )
    parser.add_argument(
        "--max-users",
        type=int,
        default=150,
        help="more load is offered by raising each user's rate",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="SIGTERM grace period (Kubernetes' default is 30 s)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="SMALLCLS_X=V",
        help="override a server setting of PRODUCTION_ENV (repeatable)",
    )
    parser.add_argument(
        "--saturation",
        type=float,
        default=None,
        metavar="RPS",
        help="skip the sweep and load against this saturation (req/s): runs that compare "
        "settings then offer the same load",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="PHASES",
        help="comma-separated phases to run after the saturation sweep (overload, soak, "
        "hostile, worker kill, sigterm); default: all",
    )
    args = parser.parse_args(argv)  # fmt: skip
    only = frozenset(p.strip() for p in args.only.split(",") if p.strip())
    if unknown := only - {"overload", "soak", "hostile", "worker kill", "sigterm"}:
        parser.error(f"--only: unknown phases {sorted(unknown)}")
    if args.saturation is not None and not args.saturation > 0:
        parser.error(f"--saturation must be a positive rate in req/s, got {args.saturation:g}")
    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"{args.model_dir} is not a model directory (no manifest.json)")
    env = parse_env(args.env)
    bench = Bench(
        model_dir=args.model_dir.resolve(), out=args.out.resolve(),
        d=QUICK if args.quick else FULL, quick=args.quick, slo_ms=args.slo_p95_ms,
        rate=args.rate, max_users=args.max_users, grace_s=args.grace_s, env=env, only=only,
        given_saturation=args.saturation,
    )  # fmt: skip
    # A SIGTERM (pkill, a CI timeout) must unwind through the server's context manager:
    # the default handler would leave `bentoml serve` and Locust running as orphans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    rows = bench.run()
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
        else "bench/reliability.py " + " ".join(argv),
        "model": bench.model, "model_dir": str(args.model_dir), "machine": machine_label(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "slo_p95_ms": args.slo_p95_ms,
        "server_env": env, "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    md = write_table(rows, bench.out, meta)
    say("")
    say(md.read_text(encoding="utf-8"))
    failed = [r.check for r in rows if r.ok is False]
    say(f"{len(rows)} checks in {meta['seconds']:.0f} s; "
        + (f"FAILED: {failed}" if failed else "all passed or skipped"))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
