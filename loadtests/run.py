"""Run a bounded headless Locust load test against the /classify service and summarise it.

Locust runs in a subprocess of the same interpreter: importing it here would monkey-patch the
stdlib with gevent, which breaks requests/transformers already imported by the caller. This
module therefore never imports locust; it only reads the files locust writes. Locust runs in
the caller's directory, so a `[tool.locust]` section of its pyproject.toml (or a locust.conf)
supplies what the call leaves out (loadtests/process.py); `workers` is Locust's `--processes`.

An output directory holds: `locust.log` (locust's stdout/stderr), `locust_stats.csv`,
`locust_stats_history.csv`, `locust_failures.csv`, `locust_exceptions.csv`, `locust.html`,
`locust_final_stats.csv` and `locust_final_failures.csv` (the end-of-run numbers in the same
columns as locust's files, which lag up to a second), `locust_options.json` (the settings the
run resolved), `locust_progress.jsonl` (live figures, one line a second) and `summary.json`
(a `LoadSummary`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.fields import read_json_object as _read_json_object
from loadtests.process import (
    LiveStats,
    LoadTestError,
    locust_command,
    locust_env,
    read_options,
    run_locust,
)

# Re-exported: callers and tests import them from here.
from loadtests.server import ServerCpu, find_server_pid, free_port, wait_ready  # noqa: F401
from loadtests.texts import mean_words, read_texts, select_texts, write_texts

logger = logging.getLogger(__name__)

SHAPE_MAX_S = 60  # the longest table in shapes.py, before scaling: bounds a shape's run
CSV_PREFIX = "locust"
STATS_CSV = f"{CSV_PREFIX}_stats.csv"  # locust's own, rewritten once a second during the run
# Same format, written by the locustfile when locust quits: the only file with the final numbers.
FINAL_STATS_CSV = f"{CSV_PREFIX}_final_stats.csv"
OPTIONS_JSON = f"{CSV_PREFIX}_options.json"  # written by the locustfile when it starts
PROGRESS_JSONL = f"{CSV_PREFIX}_progress.jsonl"
SUMMARY_NAME = "summary.json"
LOG_NAME = "locust.log"
HTML_NAME = "locust.html"
TEXTS_NAME = "texts.jsonl"  # exactly the texts this test sent
# The project's defaults, below the user's [tool.locust]: a short saturating test.
DEFAULT_USERS = 8
DEFAULT_RUN_TIME_S = 20
LOG_TAIL_CHARS = 2000


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
    # The same CPU in CPU-seconds over the whole Locust run (start-up and stop included), and
    # per text answered in it: what a classification costs the server, whatever else ran.
    server_cpu_s: float | None = None
    server_cpu_s_per_text: float | None = None
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
        for name in (*numbers, "mean_words", "server_cpu_percent", "server_cpu_s",
                     "server_cpu_s_per_text"):  # fmt: skip
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


def run_loadtest(
    *,
    host: str,
    model: str,
    texts_path: Path,
    out_dir: Path,
    text_column: str = "text",
    users: int | None = None,
    spawn_rate: float | None = None,
    run_time_s: int | None = None,
    batch: int | None = None,
    timeout_s: float | None = None,
    length: str = "all",
    max_length: int = 64,
    workers: int = 0,
    server_pid: int | None = None,
    shape: str | None = None,
    shape_scale: float = 1.0,
    extra_env: Mapping[str, str] | None = None,
    config_dir: Path | None = None,
    progress: Callable[[LiveStats], None] | None = None,
    generator_cores: Sequence[int] | None = None,
) -> LoadSummary:
    """Load-test `POST {host}/classify` for `run_time_s` seconds and write `summary.json`.

    `users`, `spawn_rate` (default: all users at once), `run_time_s`, `batch` and `timeout_s`
    (the per-request network timeout) left as None come from `[tool.locust]` in
    `config_dir`'s pyproject.toml or its locust.conf (default: the current directory), else
    from the defaults: 8 users for 20 s, batch 1, 60 s. Failed requests are results, not
    errors: this raises LoadTestError only when locust produced no statistics at all.

    `length` picks a length bucket of the texts (`loadtests.texts`; `max_length` is the model's
    maximum in tokens, for `near_max`); the texts sent are saved as `texts.jsonl`. `workers` > 0
    runs that many local worker processes under a master (Locust's `--processes`), for loads
    one process cannot generate. `server_pid` names the server's root process: the CPU its
    process tree used during the test is recorded (`server_cpu_percent`, 100 = one core).
    `shape` plays a load-shape table (loadtests/shapes.py: ramp, steps, spike, or stages with
    SMALLCLS_LOADTEST_STAGES; `shape_scale` stretches its time axis) instead of a fixed number
    of users; `users` and `run_time_s` then only record the peak and bound the run.
    `extra_env` passes more SMALLCLS_LOADTEST_* settings to the locustfile (token, pacing, shed
    mode, request log; see loadtests/options.py). `progress` receives the live figures about
    once a second while the test runs. `generator_cores`: run Locust (and its workers) on
    these cores only (loadtests/cores.py), off the server's.
    """
    explicit = {"users": users, "spawn_rate": spawn_rate, "run_time_s": run_time_s}
    _check_counts(batch=batch, timeout_s=timeout_s, workers=workers, **explicit)
    texts_path = Path(texts_path).resolve()
    if not texts_path.is_file():
        raise FileNotFoundError(
            f"{texts_path} not found: pass a CSV, TSV or JSON Lines file of texts"
        )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stats file left by an earlier run would hide a locust that failed to start.
    # Nor may an earlier run's options or live lines pass for this one's.
    for stale in [*out_dir.glob(f"{CSV_PREFIX}_*.csv"), out_dir / OPTIONS_JSON,
                  out_dir / PROGRESS_JSONL]:  # fmt: skip
        stale.unlink(missing_ok=True)
    (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    texts = read_texts(texts_path, text_column=text_column)
    sent = select_texts(texts, length, max_length=max_length)
    sent_path = write_texts(sent, out_dir / TEXTS_NAME)

    options: dict[str, str | int | float | None] = {
        "texts": str(sent_path),
        "model": model,
        "users": users,
        "spawn-rate": spawn_rate if spawn_rate is not None else users,
        "run-time": None if run_time_s is None else f"{run_time_s}s",
        "batch": batch,
        "request-timeout": timeout_s,
        "processes": workers or None,
        "csv": str(out_dir / CSV_PREFIX),
        "html": str(out_dir / HTML_NAME),
    }
    if shape:
        options.update({"shape": shape, "shape-scale": shape_scale})
    cmd = locust_command(host=host, options=options, shape=bool(shape))
    if generator_cores:
        # taskset execs Locust, so the process group, its signals and its exit code stay
        # Locust's own; forked workers inherit the mask.
        cmd = ["taskset", "-c", ",".join(map(str, generator_cores)), *cmd]
    # Below the config files: what nobody set (loadtests/options.py).
    defaults = {"num_users": DEFAULT_USERS, "spawn_rate": users or DEFAULT_USERS,
                "run_time": DEFAULT_RUN_TIME_S}  # fmt: skip
    env = locust_env(os.environ, defaults=defaults, extra=extra_env or {})
    config_dir = Path(config_dir).resolve() if config_dir is not None else Path.cwd()

    log_path = out_dir / LOG_NAME
    given = ", ".join(
        f"{name} {value}"
        for name, value in (("users", users), ("batch", batch), ("seconds", run_time_s))
        if value is not None
    )
    logger.info(
        "load test %s at %s (%s; the rest from [tool.locust] or defaults), %s texts, "
        "%d workers -> %s", model, host, given or "nothing given", length, workers, out_dir,
    )  # fmt: skip
    cpu = ServerCpu(server_pid) if server_pid is not None else None
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            code = run_locust(
                cmd, env=env, cwd=config_dir, log=log, options_path=out_dir / OPTIONS_JSON,
                progress_path=out_dir / PROGRESS_JSONL, on_progress=progress,
                bound_s=lambda recorded: _bound_s(recorded, run_time_s, shape, shape_scale, env),
            )  # fmt: skip
        except TimeoutError as exc:
            raise LoadTestError(f"{exc}; see {log_path}") from exc
    cpu_s, wall_s = cpu.seconds() if cpu is not None else (None, None)
    # Exit code 1 means some requests failed; the summary records that. Locust opens its CSV
    # files before it loads the locustfile, so a crash at start leaves an empty stats file.
    stats_csv = _nonempty(out_dir / FINAL_STATS_CSV) or _nonempty(out_dir / STATS_CSV)
    if stats_csv is None:
        raise LoadTestError(
            f"locust exited with code {code} and wrote no statistics to "
            f"{out_dir / STATS_CSV}; end of {log_path}:\n{_tail(log_path)}"
        )
    if stats_csv.name != FINAL_STATS_CSV:
        logger.warning("%s missing; %s may miss the last second of the run",
                       FINAL_STATS_CSV, stats_csv)  # fmt: skip
    if code not in (0, 1):
        logger.warning("locust exited with code %d; see %s", code, log_path)

    # What ran, as Locust resolved it from the call, the config files and the defaults.
    ran = read_options(out_dir / OPTIONS_JSON) or {}
    summary = summarize_stats(
        stats_csv,
        model=model,
        users=int(ran.get("users") or users or DEFAULT_USERS),
        run_time_s=int(ran.get("run_time_s") or run_time_s or DEFAULT_RUN_TIME_S),
        batch=int(ran.get("batch") or batch or 1),
    )
    summary = dataclasses.replace(
        summary,
        length=length,
        mean_words=round(mean_words(sent), 2),
        workers=workers,
        server_cpu_percent=None if cpu_s is None or not wall_s else round(100 * cpu_s / wall_s, 1),
        server_cpu_s=None if cpu_s is None else round(cpu_s, 3),
        server_cpu_s_per_text=_per_text(cpu_s, summary.requests * summary.batch),
        texts_source=str(texts_path),
    )
    summary.write(out_dir)
    logger.info("%s", summary.line())
    return summary


def _per_text(cpu_s: float | None, texts: int) -> float | None:
    """CPU-seconds per text sent; failed requests count too (the server did their work)."""
    if cpu_s is None or texts <= 0:
        return None
    return float(f"{cpu_s / texts:.4g}")


def _check_counts(
    *,
    users: int | None,
    spawn_rate: float | None,
    run_time_s: int | None,
    batch: int | None,
    timeout_s: float | None,
    workers: int,
) -> None:
    """Explicit values must make sense; None is left to the config files and defaults."""
    bad = [
        f"{name}={value}"
        for name, value, ok in (
            ("users", users, users is None or users >= 1),
            ("batch", batch, batch is None or batch >= 1),
            ("run_time_s", run_time_s, run_time_s is None or run_time_s >= 1),
            ("spawn_rate", spawn_rate, spawn_rate is None or spawn_rate > 0),
            ("timeout_s", timeout_s, timeout_s is None or timeout_s > 0),
            ("workers", workers, workers >= 0),
        )
        if not ok
    ]
    if bad:
        raise ValueError(
            "need users >= 1, batch >= 1, run_time_s >= 1, spawn_rate > 0, timeout_s > 0, "
            f"workers >= 0; got {', '.join(bad)}"
        )


def _bound_s(
    recorded: dict[str, Any] | None,
    run_time_s: int | None,
    shape: str | None,
    shape_scale: float,
    env: Mapping[str, str],
) -> float:
    """How long the test may run: its run time (known once Locust has resolved it), or a
    shape's table, whichever is longer."""
    run_time = run_time_s or (recorded or {}).get("run_time_s")
    if run_time is None and recorded is None:
        run_time = 0.0  # not started yet: only the start-up slack applies
    bound = float(run_time or math.inf)
    if shape:
        bound = max(bound if math.isfinite(bound) else 0.0, SHAPE_MAX_S * shape_scale)
        if env.get("SMALLCLS_LOADTEST_STAGES"):
            bound = max(bound, stages_length_s(env["SMALLCLS_LOADTEST_STAGES"]))
    return bound


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
