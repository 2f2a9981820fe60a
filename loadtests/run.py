"""Run a bounded headless Locust load test against the /classify service and summarise it.

Locust runs in a subprocess of the same interpreter: importing it here would monkey-patch the
stdlib with gevent, which breaks requests/transformers already imported by the caller. This
module therefore never imports locust; it only reads the CSV files locust writes.

An output directory holds: `locust.log` (locust's stdout/stderr), `locust_stats.csv`,
`locust_stats_history.csv`, `locust_failures.csv`, `locust_exceptions.csv`, `locust.html`,
`locust_final_stats.csv` and `locust_final_failures.csv` (the end-of-run numbers in the same
columns as locust's files, which lag up to a second) and `summary.json` (a `LoadSummary`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from core.fields import read_json_object as _read_json_object
from loadtests.texts import mean_words, read_texts, select_texts, write_texts

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SHAPES_FILE = Path(__file__).with_name("shapes.py")
SHAPE_MAX_S = 60  # the longest table in shapes.py, before scaling: bounds a shape's run
CSV_PREFIX = "locust"
STATS_CSV = f"{CSV_PREFIX}_stats.csv"  # locust's own, rewritten once a second during the run
# Same format, written by the locustfile when locust quits: the only file with the final numbers.
FINAL_STATS_CSV = f"{CSV_PREFIX}_final_stats.csv"
SUMMARY_NAME = "summary.json"
LOG_NAME = "locust.log"
HTML_NAME = "locust.html"
TEXTS_NAME = "texts.jsonl"  # exactly the texts this test sent
# Locust needs a few seconds to import and to stop; beyond this the subprocess is hung.
STARTUP_SLACK_S = 60
LOG_TAIL_CHARS = 2000


class LoadTestError(RuntimeError):
    """A load test that could not run or whose results cannot be read; names the file."""


def read_json_object(path: Path, *, written_by: str) -> dict[str, Any]:
    """A JSON object saved by a load test or sweep; errors say which file and what to pass."""
    missing = f"{path} not found: pass a directory written by {written_by}"
    return _read_json_object(path, LoadTestError, missing=missing)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadSummary:
    model: str
    users: int
    run_time_s: int
    batch: int  # texts per request
    requests: int
    failures: int
    failure_rate: float  # failures / requests, 0..1
    rps: float  # requests per second, failed ones included (locust's "Requests/s")
    texts_per_s: float  # rps * batch
    # Locust's percentiles are whole milliseconds (rounded into buckets above 100 ms);
    # None when no request completed.
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    # Optional, with defaults, so summaries written before they existed still load.
    length: str = "all"  # length bucket of the texts sent (loadtests/texts.py)
    mean_words: float | None = None  # of the texts sent
    workers: int = 0  # local locust worker processes (0: one process)
    # CPU used by the server's process tree during the test; 100 = one core busy.
    server_cpu_percent: float | None = None
    # The file the texts were drawn from (a model's test split, as its manifest names it).
    texts_source: str | None = None

    def __post_init__(self) -> None:
        counts = (self.users, self.run_time_s, self.batch, self.requests, self.failures)
        if not all(isinstance(n, int) and n >= 0 for n in counts):
            raise LoadTestError(
                f"users, run_time_s, batch, requests, failures must be counts: {self}"
            )
        if self.failures > self.requests:
            raise LoadTestError(f"{self.failures} failures out of {self.requests} requests")
        numbers = ("failure_rate", "rps", "texts_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_ms")
        for name in (*numbers, "mean_words", "server_cpu_percent"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, int | float):
                raise LoadTestError(f"LoadSummary.{name} must be a number, got {value!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / SUMMARY_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def line(self) -> str:
        """One human-readable line for logs."""

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.0f}"

        return (
            f"{self.model}: {self.requests} requests, {self.failures} failed "
            f"({self.failure_rate:.2%}), {self.rps:.1f} req/s, {self.texts_per_s:.1f} texts/s, "
            f"p50 {ms(self.p50_ms)} ms, p95 {ms(self.p95_ms)} ms, p99 {ms(self.p99_ms)} ms "
            f"({self.users} users, batch {self.batch}, {self.length} texts, {self.run_time_s} s"
            + (
                ""
                if self.server_cpu_percent is None
                else f", server CPU {self.server_cpu_percent:.0f}%"
            )
            + ")"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "summary") -> LoadSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        if unknown or missing:
            raise LoadTestError(f"{source}: unknown keys {unknown}, missing keys {missing}")
        try:
            return cls(**data)
        except LoadTestError as exc:
            raise LoadTestError(f"{source}: {exc}") from exc

    @classmethod
    def read(cls, out_dir: Path) -> LoadSummary:
        path = Path(out_dir) / SUMMARY_NAME
        data = read_json_object(path, written_by="run_loadtest")
        return cls.from_dict(data, source=str(path))


def wait_ready(host: str, timeout_s: float = 60.0, *, interval_s: float = 0.25) -> None:
    """Poll `GET {host}/readyz` until it answers 200; TimeoutError with the last problem."""
    url = host.rstrip("/") + "/readyz"
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(interval_s, 1.0)) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # 503 while the model loads
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:  # not listening yet
            last = str(exc)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s:g} s (last: {last})")
        time.sleep(interval_s)


def run_loadtest(
    *,
    host: str,
    model: str,
    texts_path: Path,
    out_dir: Path,
    text_column: str = "text",
    users: int = 8,
    spawn_rate: float = 8,
    run_time_s: int = 20,
    batch: int = 1,
    timeout_s: float | None = None,
    length: str = "all",
    max_length: int = 64,
    workers: int = 0,
    server_pid: int | None = None,
    shape: str | None = None,
    shape_scale: float = 1.0,
    extra_env: Mapping[str, str] | None = None,
) -> LoadSummary:
    """Load-test `POST {host}/classify` for `run_time_s` seconds and write `summary.json`.

    `timeout_s` is the per-request network timeout (locust's default, 60 s, when None); a
    request that exceeds it counts as a failure. Failed requests are results, not errors:
    this raises LoadTestError only when locust produced no statistics at all.

    `length` picks a length bucket of the texts (`loadtests.texts`; `max_length` is the model's
    maximum in tokens, for `near_max`); the texts sent are saved as `texts.jsonl`. `workers` > 0
    runs locust as a master on 127.0.0.1 with that many local `--worker` processes, for loads
    one process cannot generate. `server_pid` names the server's root process: the CPU its
    process tree used during the test is recorded (`server_cpu_percent`, 100 = one core).
    `shape` plays a load-shape table (loadtests/shapes.py: ramp, steps, spike; `shape_scale`
    stretches its time axis) instead of a fixed number of users; `users` and `run_time_s`
    then only record the peak and bound the run. `extra_env` passes more SMALLCLS_LOADTEST_*
    settings to the locustfile (token, pacing, shed mode, request log; see its docstring).
    """
    if users < 1 or batch < 1 or run_time_s < 1 or spawn_rate <= 0:
        raise ValueError(
            f"need users >= 1, batch >= 1, run_time_s >= 1, spawn_rate > 0; got users={users}, "
            f"batch={batch}, run_time_s={run_time_s}, spawn_rate={spawn_rate}"
        )
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    texts_path = Path(texts_path).resolve()
    if not texts_path.is_file():
        raise FileNotFoundError(
            f"{texts_path} not found: pass a CSV, TSV or JSON Lines file of texts"
        )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stats file left by an earlier run would hide a locust that failed to start.
    for stale in out_dir.glob(f"{CSV_PREFIX}_*.csv"):
        stale.unlink()
    (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    texts = read_texts(texts_path, text_column=text_column)
    sent = select_texts(texts, length, max_length=max_length)
    sent_path = write_texts(sent, out_dir / TEXTS_NAME)

    locustfiles = str(LOCUSTFILE) + (f",{SHAPES_FILE}" if shape else "")
    cmd = [
        sys.executable, "-m", "locust",
        "-f", locustfiles,
        "--headless",
        "--host", host,
        "--users", str(users),
        "--spawn-rate", str(spawn_rate),
        "--run-time", f"{run_time_s}s",
        "--csv", str(out_dir / CSV_PREFIX),
        "--html", str(out_dir / HTML_NAME),
        "--only-summary",
    ]  # fmt: skip
    master_port = free_port() if workers else None
    if master_port is not None:
        cmd += [
            "--master", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(master_port), "--expect-workers", str(workers),
        ]  # fmt: skip
    env = dict(os.environ)
    env.update(
        SMALLCLS_LOADTEST_TEXTS=str(sent_path),
        SMALLCLS_LOADTEST_MODEL=model,
        SMALLCLS_LOADTEST_BATCH=str(batch),
    )
    env.update(extra_env or {})
    if shape:
        env.update(SMALLCLS_LOADTEST_SHAPE=shape, SMALLCLS_LOADTEST_SHAPE_SCALE=str(shape_scale))
    if timeout_s is not None:
        env["SMALLCLS_LOADTEST_TIMEOUT_S"] = str(timeout_s)
    else:
        env.pop("SMALLCLS_LOADTEST_TIMEOUT_S", None)

    log_path = out_dir / LOG_NAME
    logger.info(
        "load test %s at %s: %d users, batch %d, %s texts, %d s, %d workers -> %s",
        model, host, users, batch, length, run_time_s, workers, out_dir,
    )  # fmt: skip
    # A shape runs for its table's length, whatever --run-time says.
    bound_s = max(run_time_s, SHAPE_MAX_S * shape_scale) if shape else run_time_s
    if env.get("SMALLCLS_LOADTEST_STAGES"):
        bound_s = max(bound_s, stages_length_s(env["SMALLCLS_LOADTEST_STAGES"]))
    cpu = ServerCpu(server_pid) if server_pid is not None else None
    with open(log_path, "w", encoding="utf-8") as log:
        worker_cmd = [sys.executable, "-m", "locust", "-f", locustfiles, "--worker"]
        worker_cmd += ["--master-host", "127.0.0.1", "--master-port", str(master_port)]
        worker_procs = [
            subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out_dir)
            for _ in range(workers)
        ]
        try:
            proc = subprocess.run(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=out_dir,  # keep a stray locust.conf in the caller's cwd out of the run
                timeout=bound_s + STARTUP_SLACK_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadTestError(
                f"locust did not finish within {bound_s + STARTUP_SLACK_S} s; see {log_path}"
            ) from exc
        finally:
            _stop(worker_procs)
    server_cpu = cpu.percent() if cpu is not None else None
    # Exit code 1 means some requests failed; the summary records that. Locust opens its CSV
    # files before it loads the locustfile, so a crash at start leaves an empty stats file.
    stats_csv = _nonempty(out_dir / FINAL_STATS_CSV) or _nonempty(out_dir / STATS_CSV)
    if stats_csv is None:
        raise LoadTestError(
            f"locust exited with code {proc.returncode} and wrote no statistics to "
            f"{out_dir / STATS_CSV}; end of {log_path}:\n{_tail(log_path)}"
        )
    if stats_csv.name != FINAL_STATS_CSV:
        logger.warning("%s missing; %s may miss the last second of the run",
                       FINAL_STATS_CSV, stats_csv)  # fmt: skip
    if proc.returncode not in (0, 1):
        logger.warning("locust exited with code %d; see %s", proc.returncode, log_path)

    summary = summarize_stats(
        stats_csv, model=model, users=users, run_time_s=run_time_s, batch=batch
    )
    summary = dataclasses.replace(
        summary,
        length=length,
        mean_words=round(mean_words(sent), 2),
        workers=workers,
        server_cpu_percent=None if server_cpu is None else round(server_cpu, 1),
        texts_source=str(texts_path),
    )
    summary.write(out_dir)
    logger.info("%s", summary.line())
    return summary


def stages_length_s(stages_json: str) -> float:
    """The end of the last stage of a SMALLCLS_LOADTEST_STAGES table (loadtests/shapes.py,
    which checks it; not imported here because it imports locust)."""
    try:
        return max(float(row[0]) for row in json.loads(stages_json))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"SMALLCLS_LOADTEST_STAGES is not a stage table: {exc}") from None


def summarize_stats(
    stats_csv: Path, *, model: str, users: int, run_time_s: int, batch: int
) -> LoadSummary:
    """A LoadSummary from locust's `<prefix>_stats.csv` (the model's row and the total)."""
    rows = _read_stats_rows(stats_csv)
    total = rows.get("Aggregated")
    if total is None:
        raise LoadTestError(f"{stats_csv} has no Aggregated row")
    name = f"classify:{model}"
    row = rows.get(name)
    # Requests the server shed (429/503), when the locustfile counts them apart.
    shed = rows.get(f"shed:{model}")
    shed_count = _int(shed, "Request Count", stats_csv) if shed is not None else 0
    if row is None:
        # No request finished at all: locust writes only the (empty) total.
        row = total
    elif _int(row, "Request Count", stats_csv) + shed_count != _int(
        total, "Request Count", stats_csv
    ):
        logger.warning("%s: requests other than %s were made; summarising %s only",
                       stats_csv, name, name)  # fmt: skip

    requests = _int(row, "Request Count", stats_csv)
    failures = _int(row, "Failure Count", stats_csv)
    rps = _float(row, "Requests/s", stats_csv) or 0.0
    return LoadSummary(
        model=model,
        users=users,
        run_time_s=run_time_s,
        batch=batch,
        requests=requests,
        failures=failures,
        failure_rate=failures / requests if requests else 0.0,
        rps=rps,
        texts_per_s=rps * batch,
        p50_ms=_float(row, "50%", stats_csv),
        p95_ms=_float(row, "95%", stats_csv),
        p99_ms=_float(row, "99%", stats_csv),
        mean_ms=_float(row, "Average Response Time", stats_csv) if requests else None,
    )


def _read_stats_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise LoadTestError(f"{path}: missing columns {sorted(missing)}; is it locust's?")
        return {row["Name"]: row for row in reader}


def _int(row: dict[str, str], column: str, path: Path) -> int:
    try:
        return int(row[column])
    except (KeyError, ValueError) as exc:
        raise LoadTestError(f"{path}: column {column!r} is not an integer: {exc}") from exc


def _float(row: dict[str, str], column: str, path: Path) -> float | None:
    value = row.get(column, "")
    if value in ("", "N/A"):  # locust writes N/A for percentiles of an empty entry
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise LoadTestError(f"{path}: column {column!r} is not a number: {value!r}") from exc


def _nonempty(path: Path) -> Path | None:
    return path if path.is_file() and path.stat().st_size > 0 else None


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return text[-LOG_TAIL_CHARS:]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    # Workers quit when the master tells them to; this only catches one that did not.
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerCpu:
    """CPU time used by a process and its descendants between construction and `percent()`.

    Sums user + system time over the tree. BentoML's workers live for the whole server, so the
    tree is listed once at the start; a process that exits in between loses its last slice.
    """

    def __init__(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            self._procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess as exc:
            raise LoadTestError(f"server process {pid} not found") from exc
        self._start = {p.pid: self._cpu(p) for p in self._procs}
        self._t0 = time.monotonic()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return times.user + times.system

    def percent(self) -> float:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        used = 0.0
        for proc in self._procs:
            start, end = self._start.get(proc.pid), self._cpu(proc)
            if start is not None and end is not None:
                used += end - start
        return 100.0 * used / elapsed


def find_server_pid(host: str) -> int | None:
    """The process listening on the host's port when it is this machine; None otherwise.

    For `--host` runs against a server this process did not start; needs the right to list
    sockets (root, or the same user on most systems).
    """
    parsed = urllib.parse.urlsplit(host)
    if parsed.hostname not in ("127.0.0.1", "localhost", "0.0.0.0") or parsed.port is None:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    pids = sorted(
        c.pid for c in conns
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == parsed.port and c.pid
    )  # fmt: skip
    if not pids:
        return None
    # BentoML's arbiter holds the socket and its workers inherit it: the lowest pid is the
    # arbiter, whose tree holds every worker.
    return pids[0]
