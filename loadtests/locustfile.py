"""Locust user that sends real test-split texts to `POST /classify` and checks every answer.

Run it with Locust's own command line, in its own process: locust monkey-patches the stdlib
with gevent on import, so it must never be imported next to requests or transformers.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --model NAME --texts F.jsonl
    locust -f loadtests/locustfile.py --help   # the options below, in "smallcls ..." group

Its settings are Locust options (loadtests/options.py): --texts, --model, --batch,
--request-timeout, --token, --rate, --shed, --request-log, each also read from a
SMALLCLS_LOADTEST_* environment variable and from `[tool.locust]` in pyproject.toml or
locust.conf in the working directory; the command line wins. loadtests/run.py drives it for
`smallcls loadtest` (headless, `--processes N` for local workers); without --headless it
serves Locust's web UI with these options shown and editable.

With `--csv PREFIX`, the master (or the single process) also writes `PREFIX_options.json`
(the settings the run used), `PREFIX_progress.jsonl` (live figures each second, see
loadtests/recorders.py) and, when locust quits, `PREFIX_final_stats.csv` and
`PREFIX_final_failures.csv`.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from loadtests.options import Settings, add_arguments, settings_from
from loadtests.recorders import Progress, RequestLog

logger = logging.getLogger(__name__)

SHED_STATUSES = (429, 503)  # BentoML's concurrency limit; the model queue full or too slow
# Failure messages end up as keys in locust's failure table: keep them short and free of
# per-request values so identical problems group into one row.
MAX_ERROR_CHARS = 200
# Next to locust's own `<prefix>_stats.csv` and `<prefix>_failures.csv`, same columns.
FINAL_STATS_SUFFIX = "_final_stats.csv"
FINAL_FAILURES_SUFFIX = "_final_failures.csv"
OPTIONS_SUFFIX = "_options.json"
PROGRESS_SUFFIX = "_progress.jsonl"


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser)


def read_texts(path: Path) -> list[str]:
    """Non-empty "text" fields of a JSON Lines file; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (--texts, SMALLCLS_LOADTEST_TEXTS)")
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
def _texts(path: Path) -> tuple[str, ...]:
    # Read once per process and file: every simulated user shares one copy of the texts.
    return tuple(read_texts(path))


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
    options = environment.parsed_options
    settings = settings_from(options)
    _texts(settings.texts_path)
    prefix = getattr(options, "csv_prefix", None)
    # Locust's forked `--processes` workers run with csv_prefix cleared: only the master (or a
    # single process) writes the run's files, from the statistics of all workers.
    if prefix and not getattr(options, "worker", False):
        _write_options(environment, settings, Path(f"{prefix}{OPTIONS_SUFFIX}"))
        Progress(environment, Path(f"{prefix}{PROGRESS_SUFFIX}"), batch=settings.batch).attach()
        environment.events.quit.add_listener(functools.partial(_write_final, environment, prefix))
    # Only where requests are made: a master's users live in its workers.
    if settings.request_log is not None and not getattr(options, "master", False):
        RequestLog(settings.request_log).attach(environment)


def _write_options(environment: Any, settings: Settings, path: Path) -> None:
    """The settings this run resolved from its command line, environment and config files."""
    options = environment.parsed_options
    shape = environment.shape_class
    record = {
        "users": options.num_users,
        "spawn_rate": options.spawn_rate,
        "run_time_s": options.run_time,
        "processes": options.processes or 0,
        "host": environment.host,
        "shape": None if shape is None else type(shape).__name__,
        **settings.record(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


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
    logger.info("final statistics written to %s%s", prefix, FINAL_STATS_SUFFIX)


def _wait_time(user: Any) -> float:
    """No wait, or with --rate a Poisson schedule per user: paced users offer a
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
    server), or paced at --rate requests per second per user. Settings are read when a user
    starts, so a test started from the web UI uses the values its form sent."""

    wait_time = _wait_time

    def __init__(self, environment: Any) -> None:
        self.settings = settings_from(environment.parsed_options)
        texts = _texts(self.settings.texts_path)
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

    def on_start(self) -> None:
        # Paced users start at a random point of their schedule (an exponential wait, as the
        # first arrival of a Poisson process): users spawned together would otherwise send
        # their first requests in one burst, which no stream of independent clients makes and
        # which a short test at a set rate would count in its p95.
        rate = self.settings.rate
        if rate is not None:
            self._due = time.monotonic() + random.expovariate(rate)
            gevent.sleep(max(0.0, self._due - time.monotonic()))

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


if __name__ == "__main__":
    # `python -m loadtests.locustfile --help`: Locust answers `locust -f ... --help` before it
    # imports any locustfile, so its own help cannot list these options; this prints that help
    # as it reads once they are registered (with the shape options of shapes.py).
    from locust.argument_parser import get_parser

    import loadtests.shapes  # noqa: F401  (registers its options on import)

    get_parser().print_help()
