"""Hostile input against a running service: a schema fuzzer and hand-made attacks.

Two drivers, used by tests/test_reliability.py (CI) and bench/reliability.py (the long run):

- `fuzz_schema`: schemathesis generates requests from the service's own OpenAPI schema
  (`/docs.json`), valid ones and ones that break the schema, and counts 5xx and dropped
  connections.
- `hostile_inputs`: each hand-made hostile request once (megabyte texts and bodies, deep JSON,
  invalid UTF-8, 10,000 texts, wrong content types, a slow body, a huge header, model names
  that look like paths), checking after each that /readyz still answers, plus the memory of
  the server's process tree before, at its peak and after.

Run alone, it starts `bentoml serve` on the given model directories (or uses --host):

    python -m bench.hostile models/minilm-int8 --max-examples 1000 --out bench_out/hostile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

READY_TIMEOUT_S = 10.0
SETTLE_S = 2.0  # after the last case, before the "after" memory reading
MB = 1 << 20


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# ---- schemathesis ------------------------------------------------------------------------


def fuzz_schema(
    base_url: str, token: str | None, max_examples: int = 1000, seed: int | None = 0
) -> dict[str, Any]:
    """schemathesis against the service's own OpenAPI schema (GET {base_url}/docs.json).

    `max_examples` generated requests go to each API method (`/classify`), half of them
    valid for the schema and half breaking it (wrong types, missing or extra fields, values
    out of range); the GET infrastructure routes get a few each. A case fails when the
    answer is a 5xx or the connection breaks (a crashed worker). `seed` makes a run
    repeatable (None: a new random run). Returns {"cases", "server_errors", "failures"
    (the first few, short), "statuses" (count by status code), "seconds"}."""
    import schemathesis
    from schemathesis import GenerationMode

    headers = _headers(token)
    schema = schemathesis.openapi.from_url(f"{base_url}/docs.json", headers=headers, timeout=30)
    tally = _Tally()
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() in ("POST", "PUT", "PATCH"):
            runs = [
                (GenerationMode.POSITIVE, (max_examples + 1) // 2),
                (GenerationMode.NEGATIVE, max_examples // 2),
            ]
        else:  # the GET infrastructure routes take no input: a few calls each
            runs = [(GenerationMode.POSITIVE, 5)]
        for mode, examples in runs:
            if examples > 0:
                _fuzz_operation(operation, mode, examples, base_url, headers, seed, tally)
    return {
        "cases": tally.cases,
        "server_errors": tally.server_errors,
        "failures": tally.failures,
        "statuses": dict(sorted(tally.statuses.items())),
        "seconds": round(time.perf_counter() - started, 1),
    }


@dataclass
class _Tally:
    cases: int = 0
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def _fuzz_operation(
    operation: Any,
    mode: Any,
    examples: int,
    base_url: str,
    headers: dict[str, str],
    seed: int | None,
    tally: _Tally,
) -> None:
    import hypothesis
    from hypothesis import HealthCheck, Phase

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis folder in the working directory
        phases=[Phase.generate],  # nothing to shrink: cases are recorded, not raised
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.seed(seed if seed is not None else time.time_ns() % 2**32)
    def one(case: Any) -> None:
        tally.cases += 1
        try:
            status = str(case.call(base_url=base_url, headers=headers, timeout=30).status_code)
        except Exception as exc:  # a dropped connection (a crashed worker) is a finding
            status = f"error:{type(exc).__name__}"
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if not status.isdigit() or int(status) >= 500:
            tally.server_errors += 1
            if len(tally.failures) < 10:
                body = repr(getattr(case, "body", None))
                body = body if len(body) <= 160 else body[:160] + "..."
                tally.failures.append(
                    f"{status} {case.method} {case.path} ({mode.value}) body={body}"
                )

    one()


# ---- hand-made hostile requests ----------------------------------------------------------


def process_tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and every descendant (arbiter + workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


class PeakSampler:
    """Samples the process tree's RSS every 50 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, process_tree_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process_tree_rss(self.pid))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: the server closed the connection without an answer
    detail: str


def _raw_request(url: str, head: str, body: bytes = b"", timeout: float = 30.0) -> Answer:
    """One request over a plain socket, for what HTTP clients refuse to send."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(head.encode("latin-1") + body)
        return _read_status(sock)


def _read_status(sock: socket.socket) -> Answer:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        with contextlib.suppress(OSError):  # the JSON error body, when there is one
            sock.settimeout(1.0)
            data += sock.recv(65536)
    if not data.startswith(b"HTTP/"):
        return Answer(None, "connection closed without an answer")
    status = int(data.split(b" ", 2)[1])
    body = data.partition(b"\r\n\r\n")[2][:200].decode("utf-8", "replace")
    return Answer(status, body)


def _post(http: httpx.Client, path: str, *, content: bytes | None = None, **kwargs: Any) -> Answer:
    try:
        resp = http.post(path, content=content, **kwargs)
    except httpx.RemoteProtocolError as exc:
        return Answer(None, f"connection closed: {exc}")
    return Answer(resp.status_code, resp.text[:200])


def _slow_body(base_url: str, token: str | None, seconds: float) -> Answer:
    """Slowloris: a JSON body of 10,000 announced bytes sent one byte every 0.5 s from a
    raw socket. The server must cut it off (408) or keep it from blocking anyone else; the
    caller measures a normal request meanwhile."""
    parts = urlsplit(base_url)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /classify HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    )
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=seconds + 30)
    with sock:
        sock.sendall(head.encode())
        deadline = time.monotonic() + seconds
        sent = 0
        payload = b'{"texts": ["' + b"a" * 20000
        try:
            while time.monotonic() < deadline:
                sock.sendall(payload[sent : sent + 1])
                sent += 1
                # An answer already (the server cut the body off)? Peek without blocking.
                sock.setblocking(False)
                try:
                    early = sock.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    early = None
                finally:
                    sock.setblocking(True)
                    sock.settimeout(seconds + 30)
                if early is not None:
                    break
                time.sleep(0.5)
        except OSError:
            pass  # reset by the server: it gave up on us
        answer = _read_status(sock)
        return Answer(answer.status, f"after {sent} bytes: {answer.detail}")


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[], Answer]
    success_ok: bool = False  # a 2xx is right (the input is legitimate); otherwise 4xx only
    closed_ok: bool = False  # the server may also drop the connection (oversized headers)


def _cases(base_url: str, token: str | None, http: httpx.Client) -> Iterator[Case]:
    def post_json(data: Any) -> Callable[[], Answer]:
        return lambda: _post(http, "/classify", json=data)

    def post_raw(raw: bytes, content_type: str | None = "application/json") -> Callable[[], Answer]:
        headers = {"content-type": content_type} if content_type else {}
        return lambda: _post(http, "/classify", content=raw, headers=headers)

    def chunked(total: int) -> Callable[[], Answer]:
        def gen() -> Iterator[bytes]:
            yield b'{"texts": ["'
            for _ in range(total // MB):
                yield b"a" * MB
            yield b'"]}'

        return lambda: _post(
            http, "/classify", content=gen(), headers={"content-type": "application/json"}
        )

    yield Case("1 MB text", post_json({"texts": ["a " * (MB // 2 - 32)]}))
    ten_mb = json.dumps({"texts": ["a" * (10 * MB)]}).encode()
    yield Case("10 MB body (Content-Length)", post_raw(ten_mb))
    yield Case("10 MB body (chunked, no length)", chunked(10 * MB))
    yield Case("JSON nested 100,000 levels", post_raw(b"[" * 100_000 + b"]" * 100_000))
    yield Case(
        "JSON object nested 100,000 levels",
        post_raw(b'{"texts": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"),
    )
    yield Case("invalid UTF-8 bytes in a text", post_raw(b'{"texts": ["caf\xe9 \xff\xfe ok"]}'))
    yield Case("invalid UTF-8 outside strings", post_raw(b"\xff\xfe\xfd{"))
    yield Case("lone surrogate escape", post_raw(b'{"texts": ["a \\ud800 b"]}'))
    yield Case("NUL bytes inside a text", post_json({"texts": ["good\x00 movie\x00"]}), True)
    yield Case("10,000 texts in one call", post_json({"texts": ["good movie"] * 10_000}))
    yield Case("content-type text/plain", post_raw(b"good movie", "text/plain"))
    yield Case(
        "content-type form",
        lambda: _post(http, "/classify", data={"texts": "good movie"}),
    )
    yield Case(
        "content-type multipart",
        lambda: _post(http, "/classify", files={"texts": ("a.txt", b"good movie")}),
    )
    yield Case("no content-type, JSON body", post_raw(b'{"texts": ["fun"]}', None), True)
    yield Case("empty body", post_raw(b""))
    yield Case("JSON null, number, string", post_raw(b'"just a string"'))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    host = urlsplit(base_url).netloc
    big_header = "X-Padding: " + "a" * (1 * MB) + "\r\n"
    yield Case(
        "1 MB header",
        lambda: _raw_request(
            base_url,
            f"POST /classify HTTP/1.1\r\nHost: {host}\r\n{auth}{big_header}"
            "Content-Type: application/json\r\nContent-Length: 17\r\n\r\n",
            b'{"texts": ["ok"]}',
        ),
        closed_ok=True,
    )
    many_headers = "".join(f"X-H{i}: v\r\n" for i in range(10_000))
    yield Case(
        "10,000 headers",
        lambda: _raw_request(
            base_url,
            f"POST /classify HTTP/1.1\r\nHost: {host}\r\n{auth}{many_headers}"
            "Content-Type: application/json\r\nContent-Length: 17\r\n\r\n",
            b'{"texts": ["ok"]}',
        ),
        success_ok=True,  # harmless to answer: ~100 KB of headers, under the body limit
        closed_ok=True,
    )
    yield Case(
        "Content-Length not a number",
        lambda: _raw_request(
            base_url,
            f"POST /classify HTTP/1.1\r\nHost: {host}\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: -5\r\n\r\n",
            b'{"texts": ["ok"]}',
        ),
        closed_ok=True,
    )
    yield Case("unknown model name", post_json({"texts": ["fun"], "model": "no-such-model"}))
    yield Case("1 MB model name", post_json({"texts": ["fun"], "model": "m" * (MB - 64)}))


def _path_cases(http: httpx.Client, model_paths: list[str]) -> Iterator[Case]:
    """Model names that look like paths: nothing may be loaded from a request. Then bad
    reload bodies from an authenticated admin (403 where auth is off): refused, and the
    models served stay the same (checked by the row after these)."""
    for name in ["../../etc/passwd", "/etc/passwd", "..", *model_paths]:
        yield Case(
            f"model name is a path: {name}",
            lambda name=name: _post(http, "/classify", json={"texts": ["fun"], "model": name}),
        )
    for label, body in [
        ("admin reload of /etc", {"models": ["/etc"]}),
        ("admin reload of ../../etc/passwd", {"models": ["../../etc/passwd"]}),
        ("admin reload, 100 KB name", {"models": ["m" * 100_000]}),
        ("admin reload, NUL in a name", {"models": ["a\x00b"]}),
        ("admin reload, models not a list", {"models": "minilm"}),
    ]:
        yield Case(label, lambda body=body: _post(http, "/admin/models", json=body))
    yield Case(
        "admin reload, JSON nested 100,000 levels",
        lambda: _post(
            http,
            "/admin/models",
            content=b"[" * 100_000 + b"]" * 100_000,
            headers={"content-type": "application/json"},
        ),
    )


def _ready(http: httpx.Client) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if http.get("/readyz", timeout=5).status_code == 200:
                return True
        time.sleep(0.2)
    return False


def _verdict(case: Case, answer: Answer) -> bool:
    if answer.status is None:
        return case.closed_ok
    if 400 <= answer.status < 500:
        return True
    return case.success_ok and 200 <= answer.status < 300


def hostile_inputs(
    base_url: str,
    token: str | None,
    server_pid: int,
    *,
    slow_seconds: float = 6.0,
    memory_tolerance: float = 0.10,
) -> list[dict[str, Any]]:
    """Each hand-made hostile request once. One dict per case: {"case", "status", "ok",
    "detail"}; `ok` means a 4xx (a 2xx where the input is legitimate), never a 5xx, and
    /readyz answered afterwards. Then the slow-body case (measured against a normal request
    sent meanwhile), the path-like model names (with /models unchanged) and a last row
    {"case": "memory back to baseline", "ok", "detail"}: RSS of the server's process tree
    before, at its peak and after a short settle, within `memory_tolerance` (or 20 MB)."""
    rows: list[dict[str, Any]] = []
    headers = _headers(token)
    with (
        httpx.Client(base_url=base_url, headers=headers, timeout=60) as http,
        httpx.Client(base_url=base_url, headers=headers, timeout=60) as probe,
    ):
        if not _ready(http):
            raise RuntimeError(f"{base_url}/readyz does not answer 200: is the service up?")
        http.post("/classify", json={"texts": ["warm up"]})  # steady state before measuring
        time.sleep(SETTLE_S)
        before = process_tree_rss(server_pid)
        models_before = http.get("/models").json()
        model_paths = [m["source"] for m in models_before.get("models", [])]

        def record(case: Case, answer: Answer, extra: str = "") -> None:
            ready = _ready(probe)
            ok = _verdict(case, answer) and ready
            detail = answer.detail.replace("\n", " ")[:160]
            if not ready:
                detail = "/readyz did not answer 200 afterwards; " + detail
            rows.append(
                {"case": case.name, "status": answer.status, "ok": ok, "detail": extra + detail}
            )

        with PeakSampler(server_pid) as sampler:
            for case in [*_cases(base_url, token, http), *_path_cases(http, model_paths)]:
                try:
                    answer = case.send()
                except (OSError, httpx.HTTPError) as exc:
                    answer = Answer(None, f"{type(exc).__name__}: {exc}")
                record(case, answer)
            rows.append(_models_unchanged(http, models_before))  # after the path-like names
            rows.append(_slowloris_row(base_url, token, probe, slow_seconds))
            rows.append(_admin_without_token(base_url, model_paths, token))
        time.sleep(SETTLE_S)
        after = process_tree_rss(server_pid)
    slack = max(memory_tolerance * before, 20 * MB)
    rows.append(
        {
            "case": "memory back to baseline",
            "status": None,
            "ok": after <= before + slack,
            "detail": f"RSS before {before / MB:.0f} MB, peak {sampler.peak / MB:.0f}, "
            f"after {after / MB:.0f} (allowed up to {(before + slack) / MB:.0f})",
        }
    )
    return rows


def _models_unchanged(http: httpx.Client, before: dict[str, Any]) -> dict[str, Any]:
    after = http.get("/models")
    same = after.status_code == 200 and after.json() == before
    names = [m["name"] for m in before.get("models", [])]
    return {
        "case": "/models unchanged after path-like names and bad reloads",
        "status": after.status_code,
        "ok": same,
        "detail": f"still {names}" if same else f"changed: {after.text[:160]}",
    }


def _slowloris_row(
    base_url: str, token: str | None, probe: httpx.Client, seconds: float
) -> dict[str, Any]:
    """A slow body in a thread while a normal request is timed: the normal one must not
    wait for the slow one, and the slow one must end in a 4xx or a dropped connection."""
    result: list[Answer] = []
    thread = threading.Thread(target=lambda: result.append(_slow_body(base_url, token, seconds)))
    thread.start()
    time.sleep(min(1.0, seconds / 3))  # the slow request is in the server by now
    started = time.perf_counter()
    normal = probe.post("/classify", json={"texts": ["a normal request meanwhile"]})
    normal_ms = (time.perf_counter() - started) * 1000
    thread.join()
    slow = result[0] if result else Answer(None, "no answer")
    ready = _ready(probe)
    ok = (
        normal.status_code == 200
        and normal_ms < 1000
        and (slow.status is None or 400 <= slow.status < 500)
        and ready
    )
    return {
        "case": f"slow body (1 byte / 0.5 s for up to {seconds:.0f} s)",
        "status": slow.status,
        "ok": ok,
        "detail": f"normal request meanwhile: {normal.status_code} in {normal_ms:.0f} ms; "
        f"slow one: {slow.detail[:120]}",
    }


def _admin_without_token(base_url: str, model_paths: list[str], token: str | None) -> dict:
    """An unauthenticated reload naming a real model directory: refused (401, or 403 when
    auth is off and admin is closed)."""
    body = {"models": model_paths[:1] or ["/etc"]}
    resp = httpx.post(f"{base_url}/admin/models", json=body, timeout=30)
    return {
        "case": "admin reload without a token",
        "status": resp.status_code,
        "ok": resp.status_code in (401, 403),
        "detail": resp.text[:160],
    }


# ---- command line ------------------------------------------------------------------------


def format_table(fuzz: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    lines = ["| case | status | ok | detail |", "|---|---|---|---|"]
    if fuzz is not None:
        lines.append(
            f"| schemathesis ({fuzz['cases']} cases, {fuzz['seconds']} s) | "
            f"{fuzz['statuses']} | {'yes' if fuzz['server_errors'] == 0 else 'NO'} | "
            f"{fuzz['server_errors']} server errors {fuzz['failures'][:2]} |"
        )
    for row in rows:
        detail = str(row["detail"]).replace("|", "/")
        status = "-" if row["status"] is None else row["status"]
        lines.append(f"| {row['case']} | {status} | {'yes' if row['ok'] else 'NO'} | {detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="*", type=Path, help="serve these (else --host)")
    parser.add_argument("--host", help="a running service, e.g. http://127.0.0.1:3000")
    parser.add_argument("--server-pid", type=int, help="its root process (with --host)")
    parser.add_argument("--token", help="bearer token of the service (with --host)")
    parser.add_argument("--max-examples", type=int, default=1000, help="fuzz cases per API")
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=12.0,
        help="how long the slow body trickles (past SMALLCLS_BODY_TIMEOUT_S, 10 s by default)",
    )
    parser.add_argument("--out", type=Path, help="write hostile.json and hostile.md here")
    args = parser.parse_args(argv)
    if bool(args.model_dirs) == bool(args.host):
        parser.error("give model directories to serve, or --host and --server-pid")
    if args.host and args.server_pid is None:
        parser.error("--host needs --server-pid (the memory check reads its RSS)")

    with contextlib.ExitStack() as stack:
        if args.host:
            base_url, pid, token = args.host.rstrip("/"), args.server_pid, args.token
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
            from service.launch import ServerProcess

            token = "hostile-bench-token"
            env = {"SMALLCLS_AUTH_TOKEN": token}  # the production defaults otherwise
            server = stack.enter_context(ServerProcess(args.model_dirs, extra_env=env))
            assert server.process is not None
            base_url, pid = server.url, server.process.pid
            print(f"serving {[str(d) for d in args.model_dirs]} at {base_url}", flush=True)
        print(f"fuzzing {base_url}/docs.json with {args.max_examples} cases per API...")
        fuzz = fuzz_schema(base_url, token, max_examples=args.max_examples)
        print(f"hostile inputs against {base_url}...", flush=True)
        rows = hostile_inputs(base_url, token, pid, slow_seconds=args.slow_seconds)
    table = format_table(fuzz, rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "hostile.json").write_text(json.dumps({"fuzz": fuzz, "cases": rows}, indent=2))
        (args.out / "hostile.md").write_text(table + "\n")
    failed = fuzz["server_errors"] > 0 or not all(r["ok"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
