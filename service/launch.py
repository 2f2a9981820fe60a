"""Start `bentoml serve` for the service: in the foreground (CLI) or in the background (tests)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import psutil

from service.settings import ENV_MODELS, ENV_MODELS_FILE, ENV_THREADS

logger = logging.getLogger(__name__)

SERVICE_TARGET = "service.service:Classifier"
STARTUP_FAILED = "Application startup failed"  # what a worker logs when a service's __init__ raises
# The directory that holds the `service` package: bentoml imports the target from there.
WORKING_DIR = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_bentoml_home() -> Path:
    # Outside the project tree: `bentoml build` would otherwise copy parts of it into the Bento.
    return Path(tempfile.gettempdir()) / "smallcls-bentoml"


def server_env(
    model_dirs: Iterable[Path | str],
    *,
    threads: int,
    extra_env: Mapping[str, str] | None,
    bento: str | None = None,
) -> dict[str, str]:
    # Directories become absolute (the server runs elsewhere); store references stay as given.
    entries = [str(Path(d).resolve()) if Path(d).exists() else str(d) for d in model_dirs]
    if not entries and bento is None:
        raise ValueError("no model directories given: pass at least one `smallcls export` dir")
    env = {**os.environ, **(extra_env or {})}
    # A marker inherited from a process that checked other settings must not skip this
    # server's start-up check (service.service.preflight).
    env.pop("SMALLCLS_PREFLIGHT_DONE", None)
    if entries:
        env[ENV_MODELS] = ",".join(entries)
    else:  # a Bento serves the models it carries, unless extra_env names others
        for key in (ENV_MODELS, ENV_MODELS_FILE):
            if key not in (extra_env or {}):
                env.pop(key, None)  # inherited by this process, not meant for the Bento
    env[ENV_THREADS] = str(threads)
    env["BENTOML_DO_NOT_TRACK"] = "true"  # otherwise the server does a DNS look-up
    env.setdefault("BENTOML_HOME", str(default_bentoml_home()))
    return env


def serve_command(
    host: str, port: int, bento: str | None = None, python: str = sys.executable
) -> list[str]:
    """`bentoml serve` of the project's service, or of a built Bento (`name:version`), which
    brings its own code. `python`: by default the caller's interpreter, so the server sees
    the same packages (another environment's, e.g. a service-only install on Python 3.12)."""
    target = [bento] if bento else [SERVICE_TARGET, "--working-dir", str(WORKING_DIR)]
    return [python, "-m", "bentoml", "serve", *target, "--host", host, "--port", str(port)]


def serve(
    model_dirs: Iterable[Path | str],
    *,
    host: str = "127.0.0.1",
    port: int = 3000,
    threads: int = 1,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run the server in the foreground until it exits, Ctrl-C or SIGTERM; return its exit
    code. Call from the main thread (it installs a SIGTERM handler while it runs)."""
    env = server_env(model_dirs, threads=threads, extra_env=extra_env)
    logger.info("serving %s on http://%s:%d", env[ENV_MODELS], host, port)
    process = subprocess.Popen(serve_command(host, port), env=env)

    def forward(signum: int, _frame: object) -> None:
        # To the workers too: after a worker was replaced, BentoML's arbiter passed SIGTERM to
        # the new worker only, and the old one kept serving (bench/reliability.py).
        signal_server(process.pid, signum)

    # A supervisor's SIGTERM would otherwise end this process and orphan the server.
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # From a terminal the server got the same SIGINT; from `kill -INT` only we did. Either
        # way ask it to stop and give it time to do so.
        process.terminate()
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


class ServerProcess:
    """`bentoml serve` in the background: ready (`/readyz` answered 200) when entered, stopped
    with every process it started (the arbiter and one worker per service) when exited.

        with ServerProcess([model_dir]) as server:
            httpx.post(f"{server.url}/classify", json={"texts": ["hi"]})

    With `bento="name:version"` it serves that built Bento: with the models it carries when
    `model_dirs` is empty, otherwise with `model_dirs` instead (SMALLCLS_MODELS wins).
    """

    def __init__(
        self,
        model_dirs: Iterable[Path | str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        threads: int = 1,
        extra_env: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        startup_timeout: float = 90.0,
        stop_grace: float = 10.0,
        bento: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self.host = host
        self.python = python
        self.port = port if port is not None else free_port(host)
        self.bento = bento
        self.env = server_env(model_dirs, threads=threads, extra_env=extra_env, bento=bento)
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="smallcls-serve-")) / "server.log"
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                serve_command(self.host, self.port, self.bento, self.python),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C meant for the caller does not hit it half-way,
                # and stop() can signal the arbiter with anything it spawned in the group.
                start_new_session=True,
            )
        logger.info("started bentoml serve (pid %d), log %s", self.process.pid, self.log_path)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bentoml serve exited with code {self.process.returncode} before it was "
                    f"ready; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if STARTUP_FAILED in self.log_tail():
                # A worker failed to start (bad model dir, bad settings); circus would keep
                # restarting it, and /readyz would never answer 200.
                raise RuntimeError(
                    f"bentoml serve failed to start a service; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the runner loads
            time.sleep(0.2)  # poll interval of the readiness check, not a synchronisation
        raise RuntimeError(
            f"bentoml serve was not ready after {self.startup_timeout:.0f} s; last lines of "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def terminate(self) -> None:
        """SIGTERM to the server and its workers, as a supervisor stopping it would (see
        `signal_server`); does not wait. Each worker stops accepting, answers the requests it
        holds, then exits; `process.wait()` returns once all have."""
        if self.process is not None:
            signal_server(self.process.pid, signal.SIGTERM)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(collections.deque(handle, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM the server, SIGKILL what is left after the grace period; return the exit
        code. Circus starts each worker in its own session, out of reach of the process group,
        so the workers are listed first: killing only the arbiter would orphan them."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        workers = _descendants(process.pid)
        deadline = time.monotonic() + self.stop_grace
        _signal_group(process.pid, signal.SIGTERM)  # the arbiter stops its workers cleanly
        for worker in workers:  # and each worker directly: see `signal_server`
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.stop_grace)
        _, alive = psutil.wait_procs(workers, timeout=max(0.0, deadline - time.monotonic()))
        if alive or process.poll() is None:
            # Look again before the arbiter dies: it may have restarted a worker meanwhile.
            alive = list({p.pid: p for p in [*alive, *_descendants(process.pid)]}.values())
            logger.warning(
                "bentoml serve did not stop within %.0f s; killing it and workers %s",
                self.stop_grace,
                [p.pid for p in alive],
            )
            _signal_group(process.pid, signal.SIGKILL)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        return process.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def signal_server(pid: int, sig: signal.Signals | int) -> None:
    """Send `sig` to the arbiter and to every worker at once. The arbiter alone should pass it
    on, but BentoML 1.4.40 (circus) did not after it had respawned a dead worker: the surviving
    worker kept accepting requests until a second SIGTERM. With both signalled, the arbiter
    is stopping (so it respawns nothing) while each worker drains its in-flight requests."""
    workers = _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(sig)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, sig)
