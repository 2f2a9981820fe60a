"""Locust's web UI for an interactive load test of one model, with our user class and options.

The same locustfile and options as a headless run, without `--headless`: Locust serves its UI
on `web_host:web_port` (127.0.0.1:8089 by default) and its "Start" form shows the settings
(model, texts, batch, ...) filled with the values given here, from `[tool.locust]` or the
environment, editable before each start. Locust's CSVs, `locust_final_stats.csv` and
`locust_options.json` go to the output directory (the HTML report is the UI's download); there
is no summary.json, since the run's length is the user's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from loadtests.process import (
    LoadTestError,
    locust_command,
    locust_env,
    stop,
    terminate_interrupts,
)
from loadtests.texts import read_texts, select_texts, write_texts

logger = logging.getLogger(__name__)

DEFAULT_WEB_HOST = "127.0.0.1"  # the UI starts load tests: not for other machines by default
DEFAULT_WEB_PORT = 8089  # Locust's own default
UI_READY_S = 60


class WebUI:
    """A running Locust web UI; `with WebUI(...) as ui:` stops it (and its workers) on exit."""

    def __init__(
        self,
        *,
        host: str,
        model: str,
        texts_path: Path,
        out_dir: Path,
        text_column: str = "text",
        length: str = "all",
        max_length: int = 64,
        users: int | None = None,
        batch: int | None = None,
        workers: int = 0,
        web_host: str = DEFAULT_WEB_HOST,
        web_port: int = DEFAULT_WEB_PORT,
        config_dir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        texts = select_texts(read_texts(Path(texts_path), text_column), length,
                             max_length=max_length)  # fmt: skip
        sent = write_texts(texts, self.out_dir / "texts.jsonl")
        options = {
            "texts": str(sent), "model": model, "users": users, "batch": batch,
            "processes": workers or None, "web-host": web_host, "web-port": web_port,
            "csv": str(self.out_dir / "locust"), "html": str(self.out_dir / "locust.html"),
        }  # fmt: skip
        self.cmd = locust_command(host=host, options=options, headless=False)
        self.env = locust_env(os.environ, defaults={}, extra=extra_env or {})
        self.cwd = Path(config_dir).resolve() if config_dir is not None else Path.cwd()
        self.url = f"http://{web_host}:{web_port}"
        self.log_path = self.out_dir / "locust.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WebUI:
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            stop(self.proc)
            raise
        logger.info("Locust web UI at %s (log %s)", self.url, self.log_path)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            stop(self.proc)  # SIGTERM: Locust writes its final CSVs, stops its workers, exits

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + UI_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise LoadTestError(
                    f"locust exited with code {self.proc.returncode} before its web UI "
                    f"answered; end of {self.log_path}:\n{tail}"
                )
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise LoadTestError(f"Locust's web UI at {self.url} did not answer in {UI_READY_S} s")

    def wait(self) -> int:
        """Block until Locust exits (the UI's stop does not end it; Ctrl-C or SIGTERM do)."""
        assert self.proc is not None
        with terminate_interrupts():
            return self.proc.wait()
