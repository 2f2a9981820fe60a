"""The server side of a load test, seen from this machine: is it ready, which process is it,
and how much CPU did its process tree use. No locust here (see loadtests/run.py).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import psutil

from loadtests.process import LoadTestError


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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

    def seconds(self) -> tuple[float, float]:
        """(CPU-seconds used by the tree, wall seconds) since construction."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        used = 0.0
        for proc in self._procs:
            start, end = self._start.get(proc.pid), self._cpu(proc)
            if start is not None and end is not None:
                used += end - start
        return used, elapsed

    def percent(self) -> float:
        used, elapsed = self.seconds()
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
