"""The load test's own settings, as Locust command-line options.

Registered on Locust's parser (`events.init_command_line_parser`, see locustfile.py), so they
come from where every Locust option comes from, highest first: the command line, an
environment variable (`env_var=`, the SMALLCLS_LOADTEST_* names), a config file (`--config`,
then `pyproject.toml` `[tool.locust]`, `locust.conf` and `~/.locust.conf` in the working
directory), and the defaults here. The web UI shows every option not marked
`include_in_web_ui=False`, filled with its value, and sends edits back in
`environment.parsed_options`; `settings_from` therefore accepts strings for every field.

Stdlib only: loadtests/run.py and the tests import it without importing locust.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 60.0
SHED_MODES = ("fail", "count")
# Set by loadtests/run.py: JSON {option dest: value}, defaults that rank below the config files
# (the project's 8 users for 20 s instead of Locust's 1 user for ever), so that a user's
# `[tool.locust]` still supplies what the command line leaves out.
DEFAULTS_ENV = "SMALLCLS_LOADTEST_LOCUST_DEFAULTS"
DEFAULTABLE = ("num_users", "spawn_rate", "run_time")

# option, env var: named together in every error, so a message says where to fix it.
OPTION_NAMES = {
    "texts_path": ("--texts", "SMALLCLS_LOADTEST_TEXTS"),
    "model": ("--model", "SMALLCLS_LOADTEST_MODEL"),
    "batch": ("--batch", "SMALLCLS_LOADTEST_BATCH"),
    "timeout_s": ("--request-timeout", "SMALLCLS_LOADTEST_TIMEOUT_S"),
    "token": ("--token", "SMALLCLS_LOADTEST_TOKEN"),
    "rate": ("--rate", "SMALLCLS_LOADTEST_RATE"),
    "shed": ("--shed", "SMALLCLS_LOADTEST_SHED"),
    "request_log": ("--request-log", "SMALLCLS_LOADTEST_REQUEST_LOG"),
}


def _name(field: str) -> str:
    option, env = OPTION_NAMES[field]
    return f"{option} ({env})"


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
            raise ValueError(f"{_name('model')} must be a non-empty model name")
        if self.batch < 1:
            raise ValueError(f"{_name('batch')} must be >= 1, got {self.batch}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"{_name('timeout_s')} must be > 0 seconds, got {self.timeout_s}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"{_name('rate')} must be > 0 requests/s, got {self.rate}")
        if self.shed not in SHED_MODES:
            raise ValueError(f"{_name('shed')} must be one of {SHED_MODES}, got {self.shed!r}")

    def record(self) -> dict[str, Any]:
        """What a run used, for its output directory: everything but the token."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "token"}
        out["texts_path"] = str(self.texts_path)
        out["request_log"] = None if self.request_log is None else str(self.request_log)
        out["token_set"] = self.token is not None
        return out


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def settings_from(options: Any) -> Settings:
    """Settings from Locust's parsed options (argparse types, or strings from the web UI)."""
    # argparse stores --request-timeout as request_timeout, and so on.
    raw = {f: getattr(options, o[2:].replace("-", "_"), None) for f, (o, _) in OPTION_NAMES.items()}
    texts, rate, log = _text(raw["texts_path"]), _text(raw["rate"]), _text(raw["request_log"])
    if not texts:
        raise ValueError(f"{_name('texts_path')} must name a JSON Lines file of texts")
    try:
        return Settings(
            texts_path=Path(texts),
            model=_text(raw["model"]),
            batch=int(_text(raw["batch"]) or 1),
            timeout_s=float(_text(raw["timeout_s"]) or DEFAULT_TIMEOUT_S),
            token=_text(raw["token"]) or None,
            rate=float(rate) if rate else None,
            shed=_text(raw["shed"]) or "fail",
            request_log=Path(log) if log else None,
        )
    except ValueError as exc:
        raise ValueError(f"bad load-test setting: {exc}") from exc


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_ui_argument(
    group: Any,
    *args: Any,
    include_in_web_ui: bool = True,
    is_secret: bool = False,
    is_required: bool = False,
    **kwargs: Any,
) -> Any:
    """`group.add_argument` with the web-UI keywords of Locust's own parser.

    Only `LocustArgumentParser.add_argument` takes them, not an argument group's; this sets
    the same attributes on the action (the UI lists the parser's actions that carry them), so
    the options can sit in their own `--help` section and still show in the UI.
    """
    action = group.add_argument(*args, **kwargs)
    action.include_in_web_ui = include_in_web_ui
    action.is_secret = is_secret
    action.is_required = is_required
    action.is_multiple = False
    return action


def add_arguments(parser: Any) -> None:
    """Register the settings on Locust's parser, in their own `--help` section."""
    group = parser.add_argument_group(
        "smallcls /classify load test",
        "Also set by SMALLCLS_LOADTEST_* environment variables or by [tool.locust] in "
        "pyproject.toml (keys: the option names without --, e.g. batch = 4).",
    )
    add_ui_argument(
        group,
        "--texts",
        metavar="<file>",
        env_var="SMALLCLS_LOADTEST_TEXTS",
        is_required=True,
        help='JSON Lines file with a "text" field per row: the texts sent (required)',
    )
    add_ui_argument(
        group,
        "--model",
        metavar="<name>",
        env_var="SMALLCLS_LOADTEST_MODEL",
        is_required=True,
        help="model name sent in every request and expected back in every answer (required)",
    )
    add_ui_argument(
        group,
        "--batch",
        type=_positive(int),
        default=1,
        metavar="<int>",
        env_var="SMALLCLS_LOADTEST_BATCH",
        help="texts per request (default 1)",
    )
    add_ui_argument(
        group,
        "--request-timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT_S,
        metavar="<seconds>",
        env_var="SMALLCLS_LOADTEST_TIMEOUT_S",
        help="per-request network timeout; a slower answer is a failure (default 60)",
    )
    add_ui_argument(
        group,
        "--token",
        metavar="<token>",
        env_var="SMALLCLS_LOADTEST_TOKEN",
        is_secret=True,
        help="bearer token sent with every request, when the service requires one",
    )
    add_ui_argument(
        group,
        "--rate",
        type=_positive(float),
        default=None,
        metavar="<req/s>",
        env_var="SMALLCLS_LOADTEST_RATE",
        help="requests per second per user, Poisson arrivals (default: back to back)",
    )
    add_ui_argument(
        group,
        "--shed",
        choices=SHED_MODES,
        default="fail",
        env_var="SMALLCLS_LOADTEST_SHED",
        help="fail: HTTP 429/503 are failures (default, as a sweep needs); count: they are "
        "load shedding, counted apart as shed:<model>",
    )
    add_ui_argument(
        group,
        "--request-log",
        metavar="<file>",
        env_var="SMALLCLS_LOADTEST_REQUEST_LOG",
        include_in_web_ui=False,  # opened once at start: an edit in the UI could not apply
        help="CSV file with one line per request (start, latency, status, outcome)",
    )
    apply_defaults(parser)


def apply_defaults(parser: Any, raw: str | None = None) -> None:
    """Lower Locust's own defaults to the ones loadtests/run.py passes in DEFAULTS_ENV; they
    still rank below the config files (configargparse fills only what nothing else set)."""
    raw = os.environ.get(DEFAULTS_ENV, "") if raw is None else raw
    if not raw.strip():
        return
    try:
        defaults = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{DEFAULTS_ENV} is not JSON: {exc}") from None
    if not isinstance(defaults, dict) or set(defaults) - set(DEFAULTABLE):
        raise ValueError(f"{DEFAULTS_ENV} must be a JSON object with keys from {DEFAULTABLE}")
    parser.set_defaults(**defaults)
