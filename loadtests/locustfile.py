"""Locust user that sends real test-split texts to `POST /classify` and checks every answer.

Run it through `loadtests.run.run_loadtest` (a subprocess), never import it next to requests
or transformers: locust monkey-patches the stdlib with gevent on import. It imports only the
stdlib and locust so that the subprocess stays light and independent of the project.

Settings come from the environment (read in `load_settings` only):
  SMALLCLS_LOADTEST_TEXTS      JSON Lines file with a "text" field per row (required)
  SMALLCLS_LOADTEST_MODEL      model name sent in every request and expected back (required)
  SMALLCLS_LOADTEST_BATCH      texts per request (default 1)
  SMALLCLS_LOADTEST_TIMEOUT_S  per-request network timeout in seconds (default 60)
  SMALLCLS_LOADTEST_TOKEN      bearer token sent with every request (when auth is on)
  SMALLCLS_LOADTEST_RATE       requests per second per user (Poisson arrivals); default: back
                               to back, no think time
  SMALLCLS_LOADTEST_SHED       "fail" (default): 429/503 are failures, as a sweep needs; "count":
                               they are load shedding, recorded as successes under the name
                               `shed:<model>`, so `classify:<model>` holds accepted requests only
  SMALLCLS_LOADTEST_REQUEST_LOG  CSV file with one line per request (start time, latency,
                               status, outcome), for timelines finer than locust's history
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

DEFAULT_TIMEOUT_S = 60.0
SHED_STATUSES = (429, 503)  # BentoML's concurrency limit; the model queue full or too slow
SHED_MODES = ("fail", "count")
REQUEST_LOG_HEADER = "start,ms,status,outcome,error\n"
# Failure messages end up as keys in locust's failure table: keep them short and free of
# per-request values so identical problems group into one row.
MAX_ERROR_CHARS = 200
# Next to locust's own `<prefix>_stats.csv` and `<prefix>_failures.csv`, same columns.
FINAL_STATS_SUFFIX = "_final_stats.csv"
FINAL_FAILURES_SUFFIX = "_final_failures.csv"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    texts_path: Path
    model: str
    batch: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    token: str | None = dataclasses.field(default=None, repr=False)
    rate: float | None = None  # requests per second per user; None: back to back
    shed: str = "fail"
    request_log: Path | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("SMALLCLS_LOADTEST_MODEL must be a non-empty model name")
        if self.batch < 1:
            raise ValueError(f"SMALLCLS_LOADTEST_BATCH must be >= 1, got {self.batch}")
        if not self.timeout_s > 0:
            raise ValueError(f"SMALLCLS_LOADTEST_TIMEOUT_S must be > 0, got {self.timeout_s}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"SMALLCLS_LOADTEST_RATE must be > 0, got {self.rate}")
        if self.shed not in SHED_MODES:
            raise ValueError(f"SMALLCLS_LOADTEST_SHED must be one of {SHED_MODES}: {self.shed!r}")


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The one place that reads environment variables."""
    texts = environ.get("SMALLCLS_LOADTEST_TEXTS", "")
    model = environ.get("SMALLCLS_LOADTEST_MODEL", "")
    batch = environ.get("SMALLCLS_LOADTEST_BATCH", "1")
    timeout_s = environ.get("SMALLCLS_LOADTEST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    rate = environ.get("SMALLCLS_LOADTEST_RATE", "").strip()
    request_log = environ.get("SMALLCLS_LOADTEST_REQUEST_LOG", "").strip()
    if not texts:
        raise ValueError("SMALLCLS_LOADTEST_TEXTS must name a JSON Lines file of texts")
    try:
        return Settings(
            texts_path=Path(texts),
            model=model,
            batch=int(batch),
            timeout_s=float(timeout_s),
            token=environ.get("SMALLCLS_LOADTEST_TOKEN", "").strip() or None,
            rate=float(rate) if rate else None,
            shed=environ.get("SMALLCLS_LOADTEST_SHED", "fail").strip() or "fail",
            request_log=Path(request_log) if request_log else None,
        )
    except ValueError as exc:
        raise ValueError(f"bad load-test setting: {exc}") from exc


def read_texts(path: Path) -> list[str]:
    """Non-empty "text" fields of a JSON Lines file; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (SMALLCLS_LOADTEST_TEXTS)")
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc}") from exc
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f'{path}:{lineno}: expected an object with a string "text"')
            if text.strip():
                texts.append(text)
    if not texts:
        raise ValueError(f"{path}: no texts found")
    return texts


@functools.cache
def _shared() -> tuple[Settings, tuple[str, ...]]:
    # Read once per process: every simulated user shares one copy of the texts.
    settings = load_settings()
    return settings, tuple(read_texts(settings.texts_path))


def check_response(body: Any, *, model: str, n_texts: int) -> str | None:
    """Why a 200 body breaks the /classify contract, or None when it is fine."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if body.get("model") != model:
        return f"model not echoed: expected {model!r}"
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return "predictions is not a list"
    if len(predictions) != n_texts:
        return f"expected {n_texts} predictions, got {len(predictions)}"
    for prediction in predictions:
        if not isinstance(prediction, dict):
            return "a prediction is not an object"
        label, scores = prediction.get("label"), prediction.get("scores")
        if not isinstance(label, str):
            return "a prediction's label is not a string"
        if not isinstance(scores, dict) or label not in scores:
            return "a prediction's label is not among its scores"
        for score in scores.values():
            # bool is an int subclass; a true/false score is a bug, not a probability.
            if isinstance(score, bool) or not isinstance(score, int | float):
                return "a score is not a number"
            if not math.isfinite(score):
                return "a score is not finite"
    return None


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    # Fail before any user spawns: a bad path would otherwise surface as one crash per user.
    _shared()
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        environment.events.quit.add_listener(functools.partial(_write_final, environment, prefix))
    settings, _ = _shared()
    # Only where requests are made: a master's users live in its workers.
    if settings.request_log is not None and not _is_master(environment):
        RequestLog(settings.request_log).attach(environment)


def _is_master(environment: Any) -> bool:
    return bool(getattr(environment.parsed_options, "master", False))


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


def _write_final(environment: Any, prefix: str, **_kwargs: Any) -> None:
    """Write the end-of-run stats and failures in locust's own CSV formats.

    Locust rewrites `<prefix>_stats.csv` and `_failures.csv` once a second and not again at
    shutdown, so they miss up to the last second of the run (a third of a 3 s test). `quit`
    fires after the runner has stopped, so these numbers are final.
    """
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    with open(f"{prefix}{FINAL_STATS_SUFFIX}", "w", encoding="utf-8", newline="") as handle:
        writer.requests_csv(csv.writer(handle))
    with open(f"{prefix}{FINAL_FAILURES_SUFFIX}", "w", encoding="utf-8", newline="") as handle:
        writer.failures_csv(csv.writer(handle))


def _wait_time(user: Any) -> float:
    """No wait, or with SMALLCLS_LOADTEST_RATE a Poisson schedule per user: paced users offer a
    known load however fast the server answers (a shed request returns at once, so
    back-to-back users would multiply their rate), and random gaps keep users from marching in
    step (a batch answers many users at once; fixed pacing would keep them together)."""
    rate = user.settings.rate
    if rate is None:
        return 0.0
    now = time.monotonic()
    due = getattr(user, "_due", None)
    if due is None or now - due > 1.0:  # behind schedule: restart it rather than burst
        due = now
    user._due = due + random.expovariate(rate)
    return max(0.0, user._due - now)


class ClassifyUser(FastHttpUser):
    """Sends batches of real texts back to back (no think time, so users saturate the
    server), or paced at SMALLCLS_LOADTEST_RATE requests per second per user."""

    wait_time = _wait_time

    def __init__(self, environment: Any) -> None:
        self.settings, texts = _shared()
        # FastHttpUser reads its timeouts in __init__, so they must be set before super().
        self.network_timeout = self.settings.timeout_s
        self.connection_timeout = self.settings.timeout_s
        super().__init__(environment)
        # A random start per user, so concurrent users do not send identical batches.
        start = random.randrange(len(texts))
        self._texts: Iterator[str] = itertools.cycle(texts[start:] + texts[:start])
        self._request_name = f"classify:{self.settings.model}"
        self._shed_name = f"shed:{self.settings.model}"
        self._headers = (
            {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else None
        )

    @task
    def classify(self) -> None:
        batch = [next(self._texts) for _ in range(self.settings.batch)]
        payload = {"texts": batch, "model": self.settings.model}
        with self.client.post(
            "/classify",
            json=payload,
            name=self._request_name,
            headers=self._headers,
            catch_response=True,
        ) as response:
            error = getattr(response, "error", None)
            if response.status_code == 0 and error is not None:  # refused, reset, timed out
                response.failure(f"connection error: {error!r}"[:MAX_ERROR_CHARS])
                return
            if response.status_code in SHED_STATUSES and self.settings.shed == "count":
                # Load shedding is the service working as designed: its own row, not a failure.
                response.request_meta["name"] = self._shed_name
                response.success()
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_of(response.text)}")
                return
            try:
                body = json.loads(response.text or "")
            except json.JSONDecodeError:
                response.failure("body is not JSON")
                return
            problem = check_response(body, model=self.settings.model, n_texts=len(batch))
            if problem is None:
                response.success()
            else:
                response.failure(problem)


def _error_of(text: str | None) -> str:
    """The service's `error` field when the body is the documented error JSON, else raw text."""
    try:
        body = json.loads(text or "")
    except json.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "error" in body:
        field = body.get("field")
        message = f"{body['error']} (field {field})" if field else str(body["error"])
    else:
        message = text or "<empty body>"
    return message[:MAX_ERROR_CHARS]
