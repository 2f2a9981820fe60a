"""The Locust process: its command line, following its live progress, and stopping it.

Never imports locust (see loadtests/run.py). Locust reads its settings in its working
directory: `cwd` is the directory the user runs from, so their `pyproject.toml` `[tool.locust]`
or `locust.conf` supplies defaults; every path passed here is absolute for that reason.
Values the caller did not give travel as `SMALLCLS_LOADTEST_LOCUST_DEFAULTS`, which ranks below
those files (loadtests/options.py), so explicit options > config files > the project's defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from loadtests.options import DEFAULTS_ENV

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SHAPES_FILE = Path(__file__).with_name("shapes.py")
# Locust needs a few seconds to import and to stop; beyond this the subprocess is hung.
STARTUP_SLACK_S = 60
POLL_S = 0.5  # how often the progress file is read and the process checked
STOP_GRACE_S = 15  # after SIGTERM, Locust writes its reports and stops its workers


class LoadTestError(RuntimeError):
    """A load test that could not run or whose results cannot be read; names the file."""


@dataclasses.dataclass(frozen=True)
class LiveStats:
    """One line of `locust_progress.jsonl` (loadtests/recorders.py): rates and p95 cover the
    last few seconds, requests and failures the whole run so far."""

    elapsed_s: float
    run_time_s: float | None
    users: int
    requests: int
    failures: int
    rps: float
    texts_per_s: float
    failures_per_s: float
    p95_ms: float | None

    @classmethod
    def from_json(cls, line: str) -> LiveStats:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"not a progress line: {line[:80]!r}")
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    def line(self) -> str:
        of = "" if self.run_time_s is None else f"/{self.run_time_s:.0f}"
        p95 = "n/a" if self.p95_ms is None else f"{self.p95_ms:.0f} ms"
        rate = self.failures / self.requests if self.requests else 0.0
        return (
            f"{self.elapsed_s:.0f}{of} s: {self.users} users, {self.rps:.1f} req/s, "
            f"{self.texts_per_s:.1f} texts/s, p95 {p95}, {self.failures} failed ({rate:.2%})"
        )


def locust_command(
    *,
    host: str,
    options: Mapping[str, str | int | float | None],
    headless: bool = True,
    shape: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """`python -m locust` with our locustfile (and shapes.py) and the given long options;
    an option whose value is None is left to the config files and defaults."""
    locustfiles = str(LOCUSTFILE) + (f",{SHAPES_FILE}" if shape else "")
    cmd = [sys.executable, "-m", "locust", "-f", locustfiles, "--host", host]
    if headless:
        cmd += ["--headless", "--only-summary"]  # progress comes from our own lines
    for name, value in options.items():
        if value is not None:
            cmd += [f"--{name}", str(value)]
    return [*cmd, *extra]


def locust_env(
    base: Mapping[str, str], *, defaults: Mapping[str, Any], extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """The child's environment: the repo importable (the locustfile imports loadtests.*),
    whatever directory Locust runs in, and the project's defaults for what nobody set."""
    env = {**base, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    env[DEFAULTS_ENV] = json.dumps(dict(defaults))
    return env


def read_options(path: Path) -> dict[str, Any] | None:
    """The settings the locustfile recorded at start (`locust_options.json`), when written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):  # not yet, or being written
        return None
    return data if isinstance(data, dict) else None


class ProgressFollower:
    """Reads the complete lines added to a progress file since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def new(self) -> list[LiveStats]:
        try:
            with open(self._path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._offset:  # rewritten: start over
                    self._offset = 0
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for next time
        self._offset += len(complete)
        out = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                out.append(LiveStats.from_json(line))
            except (ValueError, TypeError):  # progress is for display: never fail a test on it
                continue
        return out


def run_locust(
    cmd: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: IO[str],
    options_path: Path,
    progress_path: Path,
    bound_s: Callable[[dict[str, Any] | None], float],
    on_progress: Callable[[LiveStats], None] | None = None,
) -> int:
    """Run Locust to its end and return its exit code, passing each progress line on.

    `bound_s(options)` is how long the test may run once started, given the recorded
    options (None until the locustfile wrote them); past it plus STARTUP_SLACK_S, the process
    group is stopped and TimeoutError raised. Locust forks `--processes` workers: it runs in a
    session of its own so that a stop reaches them all.
    """
    follower = ProgressFollower(progress_path)

    def pass_on() -> None:
        for live in follower.new():
            if on_progress is not None:
                on_progress(live)

    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
    )
    try:
        with terminate_interrupts():
            while proc.poll() is None:
                limit = bound_s(read_options(options_path)) + STARTUP_SLACK_S
                if time.monotonic() - start > limit:
                    raise TimeoutError(f"locust ran past {limit:.0f} s")
                pass_on()
                time.sleep(POLL_S)
    except BaseException:  # Ctrl-C, SIGTERM or the bound: no orphaned workers
        stop(proc)
        raise
    pass_on()  # the lines written in the last half second
    return proc.returncode


@contextlib.contextmanager
def terminate_interrupts() -> Iterator[None]:
    """While Locust runs, SIGTERM to this process acts as Ctrl-C, so the `except` that stops
    Locust runs: Locust sits in a session of its own and would outlive a plain SIGTERM. Only
    the main thread may set handlers; elsewhere (a load test in a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to Locust's process group (Locust then writes its reports), SIGKILL if it
    lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
