"""Tests for the Locust load test: a stub /classify server on 127.0.0.1, a real locust run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
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
# helpers and Locust's parser with our options are exercised in a child interpreter.
_LOCUSTFILE_CHECKS = r"""
import contextlib, io, json, sys
import loadtests.locustfile  # registers the options on Locust's parser
from locust.argument_parser import get_parser, ui_extra_args_dict
from loadtests.locustfile import check_response
from loadtests.options import settings_from
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
       "SMALLCLS_LOADTEST_BATCH": "4", "SMALLCLS_LOADTEST_RATE": "2.5"}

def parse(args, environ):
    s = settings_from(get_parser().parse_args(args, env_vars=environ))
    return [str(s.texts_path), s.model, s.batch, s.timeout_s, s.rate, s.shed]

out["env"] = parse([], env)
out["cli_wins"] = parse(["--batch", "2", "--model", "cli", "--shed", "count"], env)
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
    get_parser().parse_args(["--batch", "0"], env_vars=env)
out["bad_batch"] = err.getvalue()
try:
    settings_from(get_parser().parse_args([], env_vars={"SMALLCLS_LOADTEST_MODEL": "m"}))
except ValueError as exc:
    out["no_texts"] = str(exc)
sys.argv = ["locust", "--model", "ui-model", "--texts", "t.jsonl", "--token", "s3cret"]
ui = ui_extra_args_dict()
out["ui"] = {k: [v["default_value"], v["is_secret"]] for k, v in ui.items()}
print(json.dumps(out))
"""


def test_locustfile_checks_bodies_and_reads_options_from_cli_and_env() -> None:
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
    # SMALLCLS_LOADTEST_* variables still work; the command line wins over them.
    assert out["env"] == ["t.jsonl", "m", 4, 60.0, 2.5, "fail"]
    assert out["cli_wins"] == ["t.jsonl", "cli", 2, 60.0, 2.5, "count"]
    assert "argument --batch: must be > 0" in out["bad_batch"]
    assert "--texts" in out["no_texts"] and "SMALLCLS_LOADTEST_TEXTS" in out["no_texts"]
    # The web UI's form lists our options with their values; the token is masked and the
    # request log (opened once at start) is not offered.
    ui = out["ui"]
    assert ui["model"] == ["ui-model", False] and ui["texts"] == ["t.jsonl", False]
    assert ui["batch"] == [1, False] and ui["token"] == ["s3cret", True]
    assert "request_log" not in ui


def test_help_lists_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.locustfile", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    options = "--texts --model --batch --request-timeout --token --rate --shed --request-log"
    for option in [*options.split(), "--shape", "--shape-scale", "--shape-stages"]:
        assert f"  {option} " in proc.stdout, option
    assert "--processes" in proc.stdout  # Locust's own options are there too


@pytest.mark.slow
@pytest.mark.integration
def test_tool_locust_supplies_defaults_and_explicit_options_win(
    good_host: str, texts_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's project: [tool.locust] in the directory they run from.
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.locust]\nusers = 5\nrun-time = "2s"\nbatch = 3\nrequest-timeout = 7\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(project)
    monkeypatch.setenv("SMALLCLS_LOADTEST_TIMEOUT_S", "9")  # the environment beats the file
    out = tmp_path / "lt"
    live: list = []
    summary = run_loadtest(
        host=good_host, model=MODEL, texts_path=texts_path, out_dir=out, users=2,
        progress=live.append,
    )  # fmt: skip
    ran = json.loads((out / "locust_options.json").read_text())
    assert (summary.users, summary.run_time_s, summary.batch) == (2, 2, 3)
    assert (ran["users"], ran["run_time_s"], ran["batch"], ran["timeout_s"]) == (2, 2, 3, 9.0)
    assert summary.requests > 0 and summary.texts_per_s == pytest.approx(3 * summary.rps)
    # Live figures arrived while the test ran, from the master's own statistics.
    assert live and all(line.run_time_s == 2 for line in live)
    assert any(line.requests > 0 and line.rps > 0 and line.p95_ms is not None for line in live)
    assert "2 users" in live[-1].line() and "req/s" in live[-1].line()


@pytest.mark.slow
@pytest.mark.integration
def test_processes_run_writes_one_summary_from_the_master(
    good_host: str, texts_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lt-processes"
    summary = run_loadtest(
        host=good_host, model=MODEL, texts_path=texts_path, out_dir=out,
        users=2, run_time_s=3, workers=2, config_dir=tmp_path,
    )  # fmt: skip
    assert summary.workers == 2 and summary.requests > 0 and summary.failures == 0
    log = (out / "locust.log").read_text()
    assert "2 workers connected" in log  # Locust's --processes forked them
    assert json.loads((out / "locust_options.json").read_text())["processes"] == 2
    assert log.count("final statistics written") == 1  # by the master only
    final_rows = (out / "locust_final_stats.csv").read_text().splitlines()
    assert final_rows[-1].split(",")[2] == str(summary.requests)  # the Aggregated row
    assert LoadSummary.read(out) == summary


def _template_args(html: str) -> dict:
    """The settings Locust's UI page is rendered with (`window.templateArgs = {...}`)."""
    start = html.index("window.templateArgs = ") + len("window.templateArgs = ")
    return json.JSONDecoder().raw_decode(html[start:])[0]


@pytest.mark.slow
@pytest.mark.integration
def test_web_ui_shows_our_options_and_starts_with_its_form(
    bad_host: str, texts_path: Path, tmp_path: Path
) -> None:
    from loadtests.run import free_port
    from loadtests.web import WebUI

    port = free_port()
    ui = WebUI(
        host=bad_host, model=MODEL, texts_path=texts_path, out_dir=tmp_path / "web",
        users=3, web_port=port, config_dir=tmp_path,
    )  # fmt: skip
    with ui:
        assert ui.url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(ui.url + "/", timeout=10) as response:
            assert response.status == 200
            args = _template_args(response.read().decode())
        extra = args["extra_options"]
        assert extra["model"]["default_value"] == MODEL
        assert extra["texts"]["default_value"].endswith("texts.jsonl")
        assert (
            extra["batch"]["default_value"] == 1
            and "texts per request" in (extra["batch"]["help_text"])
        )
        assert args["num_users"] == 3
        # Start from the form with batch 2: the users send what the form said. The stub drops
        # one prediction per answer, so every failure names the batch size it expected.
        form = urllib.parse.urlencode(
            {"user_count": 1, "spawn_rate": 1, "host": bad_host, "batch": "2"}
        ).encode()
        with urllib.request.urlopen(ui.url + "/swarm", data=form, timeout=10) as response:
            assert json.loads(response.read())["success"] is True
        deadline = time.monotonic() + 20
        failures = ""
        while "expected 2 predictions, got 1" not in failures and time.monotonic() < deadline:
            time.sleep(0.5)
            with urllib.request.urlopen(ui.url + "/stats/failures/csv", timeout=10) as response:
                failures = response.read().decode()
        assert "expected 2 predictions, got 1" in failures
    assert ui.proc is not None and ui.proc.returncode is not None  # stopped on exit


def test_progress_follower_reads_whole_lines_and_survives_a_rewritten_file(
    tmp_path: Path,
) -> None:
    from loadtests.process import ProgressFollower

    path = tmp_path / "locust_progress.jsonl"
    line = json.dumps({
        "elapsed_s": 1.0, "run_time_s": 2, "users": 1, "requests": 3, "failures": 0,
        "rps": 3.0, "texts_per_s": 6.0, "failures_per_s": 0.0, "p95_ms": 4,
    })  # fmt: skip
    follower = ProgressFollower(path)
    assert follower.new() == []  # not written yet
    path.write_text(f"{line}\n{line[:20]}", encoding="utf-8")  # the second line half-written
    first = follower.new()
    assert (
        len(first) == 1
        and first[0].line() == "1/2 s: 1 users, 3.0 req/s, 6.0 texts/s, p95 4 ms, 0 failed (0.00%)"
    )
    path.write_text(f"{line[20:]}\n", encoding="utf-8")  # a new run rewrote it, shorter
    assert follower.new() == []  # the broken line is skipped, not raised
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    assert len(follower.new()) == 1
