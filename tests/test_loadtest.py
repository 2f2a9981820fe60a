"""Tests for the Locust load test: a stub /classify server on 127.0.0.1, a real locust run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests.run import LoadSummary, LoadTestError, run_loadtest, wait_ready

MODEL = "stub-fp32"
LABELS = ("negative", "positive")


class StubHandler(BaseHTTPRequestHandler):
    """The /classify contract; `server.mode == "short"` drops one prediction per response."""

    server: StubServer

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._send(200, {"status": "ready"})
        else:
            self._send(404, {"error": "not found", "field": None})

    def do_POST(self) -> None:
        if self.path != "/classify":
            self._send(404, {"error": "not found", "field": None})
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            body = json.loads(self.rfile.read(length))
        except json.JSONDecodeError:
            self._send(400, {"error": "body is not JSON", "field": None})
            return
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts:
            self._send(422, {"error": "texts must be a non-empty list", "field": "texts"})
            return
        predictions = [
            {"label": LABELS[len(t) % 2], "scores": {LABELS[len(t) % 2]: 0.9, "other": 0.1}}
            for t in texts
        ]
        if self.server.mode == "short":
            predictions = predictions[:-1]
        if self.server.mode == "slow":  # a latency no SLO test can round down to 0 ms
            time.sleep(0.005)
        self._send(200, {"model": body.get("model"), "predictions": predictions})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # silence per-request logs
        pass


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    mode = "good"


def _serve(mode: str) -> Iterator[str]:
    server = StubServer(("127.0.0.1", 0), StubHandler)  # port 0: the OS picks a free port
    server.mode = mode
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def good_host() -> Iterator[str]:
    yield from _serve("good")


@pytest.fixture
def bad_host() -> Iterator[str]:
    yield from _serve("short")


@pytest.fixture
def texts_path(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    rows = [{"text": f"sample text number {i}", "label": LABELS[i % 2]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_good_server_has_no_failures(good_host: str, texts_path: Path, tmp_path: Path) -> None:
    wait_ready(good_host, timeout_s=5)
    out = tmp_path / "lt-good"
    summary = run_loadtest(
        host=good_host, model=MODEL, texts_path=texts_path, out_dir=out,
        users=2, spawn_rate=2, run_time_s=3, batch=3,
    )  # fmt: skip
    assert summary.requests > 0
    assert summary.failures == 0 and summary.failure_rate == 0.0
    assert summary.rps > 0 and summary.texts_per_s == pytest.approx(3 * summary.rps)
    assert summary.p50_ms is not None and summary.p95_ms is not None
    assert summary.p50_ms <= summary.p95_ms <= summary.p99_ms  # type: ignore[operator]
    assert (summary.model, summary.users, summary.batch) == (MODEL, 2, 3)
    # The summary must hold the end-of-run count, which locust also prints when it quits.
    assert f"classify:{MODEL}" in (out / "locust.log").read_text()
    final_rows = (out / "locust_final_stats.csv").read_text().splitlines()
    assert final_rows[1].split(",")[2] == str(summary.requests)
    for name in ("locust_stats.csv", "locust_failures.csv", "locust_stats_history.csv"):
        assert (out / name).is_file(), name
    assert (out / "locust.log").is_file() and (out / "locust.html").is_file()
    assert f"classify:{MODEL}" in (out / "locust_stats.csv").read_text()
    assert LoadSummary.read(out) == summary


@pytest.mark.slow
@pytest.mark.integration
def test_wrong_prediction_count_counts_as_failure(
    bad_host: str, texts_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lt-bad"
    summary = run_loadtest(
        host=bad_host, model=MODEL, texts_path=texts_path, out_dir=out,
        users=2, spawn_rate=2, run_time_s=3, batch=2,
    )  # fmt: skip
    assert summary.requests > 0
    assert summary.failures == summary.requests and summary.failure_rate == 1.0
    assert "expected 2 predictions, got 1" in (out / "locust_final_failures.csv").read_text()
    assert LoadSummary.read(out) == summary


def test_locust_that_cannot_start_raises(texts_path: Path, tmp_path: Path) -> None:
    # An empty model name passes the runner but fails the locustfile's own settings check.
    with pytest.raises(
        LoadTestError,
        match=r"(?s)wrote no statistics to .*locust_stats\.csv.*non-empty model name",
    ):
        run_loadtest(
            host="http://127.0.0.1:9", model="", texts_path=texts_path,
            out_dir=tmp_path / "lt", users=1, run_time_s=1,
        )  # fmt: skip


def test_bad_texts_file_names_the_line(tmp_path: Path) -> None:
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON"):
        run_loadtest(
            host="http://127.0.0.1:9", model=MODEL, texts_path=bad_jsonl,
            out_dir=tmp_path / "lt", users=1, run_time_s=1,
        )  # fmt: skip


def test_missing_texts_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        run_loadtest(
            host="http://127.0.0.1:9", model=MODEL, texts_path=tmp_path / "nope.jsonl",
            out_dir=tmp_path / "lt",
        )  # fmt: skip


def test_wait_ready_times_out_on_closed_port() -> None:
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    with pytest.raises(TimeoutError, match="/readyz"):
        wait_ready("http://127.0.0.1:9", timeout_s=0.5, interval_s=0.1)


def test_summary_read_rejects_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text('{"model": "x", "extra": 1}', encoding="utf-8")
    with pytest.raises(LoadTestError, match=r"summary\.json"):
        LoadSummary.read(tmp_path)


# The locustfile imports locust, which monkey-patches the stdlib with gevent on import: its
# pure helpers are therefore exercised in a child interpreter, never imported here.
_LOCUSTFILE_CHECKS = r"""
import json, sys
from loadtests.locustfile import check_response, load_settings
MODEL = sys.argv[1]
ok = {"model": MODEL, "predictions": [{"label": "a", "scores": {"a": 1.0}}]}
cases = {
    "ok": ok,
    "model": {"model": "other", "predictions": []},
    "count": {"model": MODEL, "predictions": []},
    "label_type": {"model": MODEL, "predictions": [{"label": 3, "scores": {}}]},
    "label_missing": {"model": MODEL, "predictions": [{"label": "a", "scores": {"b": 1}}]},
    "score_type": {"model": MODEL, "predictions": [{"label": "a", "scores": {"a": "x"}}]},
    "score_bool": {"model": MODEL, "predictions": [{"label": "a", "scores": {"a": True}}]},
    "not_object": [],
}
out = {k: check_response(v, model=MODEL, n_texts=1) for k, v in cases.items()}
env = {"SMALLCLS_LOADTEST_TEXTS": "t.jsonl", "SMALLCLS_LOADTEST_MODEL": "m",
       "SMALLCLS_LOADTEST_BATCH": "4"}
s = load_settings(env)
out["settings"] = [s.model, s.batch, s.timeout_s]
for key, bad in {"bad_batch": {**env, "SMALLCLS_LOADTEST_BATCH": "0"},
                 "no_texts": {"SMALLCLS_LOADTEST_MODEL": "m"}}.items():
    try:
        load_settings(bad)
        out[key] = None
    except ValueError as exc:
        out[key] = str(exc)
print(json.dumps(out))
"""


def test_locustfile_checks_bodies_and_settings() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LOCUSTFILE_CHECKS, MODEL],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is None
    assert "model not echoed" in out["model"]
    assert "expected 1 predictions, got 0" in out["count"]
    assert "not a string" in out["label_type"]
    assert "among its scores" in out["label_missing"]
    assert "not a number" in out["score_type"] and "not a number" in out["score_bool"]
    assert "not a JSON object" in out["not_object"]
    assert out["settings"] == ["m", 4, 60.0]
    assert "BATCH" in out["bad_batch"]
    assert "TEXTS" in out["no_texts"]
