"""The service's Prometheus metrics: names by Prometheus' conventions, the queue-depth and
model-info gauges, and the scrape config and alert rules in deploy/prometheus/."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import prometheus_client
import pytest
import yaml
from fakes import make_tiny_model_dir

from service import metrics as m
from service.batching import Batcher
from service.settings import BatchingSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "prometheus"
KINDS = {  # name -> the type Prometheus is told
    m.REQUESTS: "counter",
    m.REQUEST_DURATION: "histogram",
    m.BATCH_SIZE: "histogram",
    m.QUEUE_WAIT: "histogram",
    m.QUEUE_DEPTH: "gauge",
    m.REJECTED: "counter",
    m.SERVER_ERRORS: "counter",
    m.TEXTS: "counter",
    m.MODEL_INFO: "gauge",
    m.GC_PAUSE: "histogram",
    m.LOOP_LAG: "histogram",
    m.BATCH_DURATION: "histogram",
    m.MODEL_CPU: "counter",
}


def sample(name: str, **labels: str) -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(name, labels)


def exported_names() -> set[str]:
    """Every sample name the service's metrics write (histograms' series included)."""
    names = set()
    for name, kind in KINDS.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_names_follow_prometheus_conventions() -> None:
    m.get_metrics()
    text = prometheus_client.generate_latest().decode()
    for name, kind in KINDS.items():
        assert f"# TYPE {name} {kind}" in text, name
        assert re.fullmatch(r"smallcls_[a-z_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        elif name != m.MODEL_INFO:  # base units: seconds, or texts counted
            assert name.endswith(("_seconds", "_texts")), name
    assert m.MODEL_INFO.endswith("_info")


def test_queue_depth_gauge_follows_the_queue() -> None:
    """Texts waiting while a batch runs raise the gauge; once served it is back at 0."""

    async def main() -> list[float | None]:
        release = threading.Event()

        def slow(texts: list[str]) -> np.ndarray:
            release.wait(10)
            return np.zeros((len(texts), 2), dtype=np.float32)

        batcher = Batcher("depth-test", slow, BatchingSettings(), m.get_metrics())
        seen = []
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.05)  # the first batch is running (out of the queue)
        seen.append(sample(m.QUEUE_DEPTH, model="depth-test"))
        waiting = [asyncio.ensure_future(batcher.submit(t)) for t in (["b", "c"], ["d"])]
        await asyncio.sleep(0.05)
        seen.append(sample(m.QUEUE_DEPTH, model="depth-test"))
        release.set()
        await asyncio.gather(first, *waiting)
        seen.append(sample(m.QUEUE_DEPTH, model="depth-test"))
        batcher.close()
        return seen

    assert asyncio.run(main()) == [0.0, 3.0, 0.0]


def test_batch_time_and_model_cpu_tell_waiting_from_working() -> None:
    """A batch that waits (a model thread without a core, here a sleep) adds its seconds to
    the duration histogram but not to the model CPU; one that computes adds to both."""
    import time

    def waits(texts: list[str]) -> np.ndarray:
        time.sleep(0.2)
        return np.zeros((len(texts), 2), dtype=np.float32)

    def works(texts: list[str]) -> np.ndarray:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        return np.zeros((len(texts), 2), dtype=np.float32)

    async def main(name: str, run) -> None:
        batcher = Batcher(name, run, BatchingSettings(), m.get_metrics())
        await asyncio.gather(batcher.submit(["a", "b"]))
        batcher.close()

    for name, run in (("waits", waits), ("works", works)):
        asyncio.run(main(name, run))
        assert sample(f"{m.BATCH_DURATION}_count", model=name) == 1
        assert sample(f"{m.BATCH_DURATION}_sum", model=name) >= 0.2
    assert sample(m.MODEL_CPU, model="waits") < 0.1
    assert sample(m.MODEL_CPU, model="works") >= 0.2


def test_model_info_follows_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.service import Classifier

    old = make_tiny_model_dir(tmp_path / "old", name="info-model", seed=0)
    new = make_tiny_model_dir(tmp_path / "new", name="info-model", seed=1)
    monkeypatch.setenv("SMALLCLS_MODELS", str(old))
    for key in ("SMALLCLS_DEFAULT_MODEL", "SMALLCLS_MODELS_FILE"):
        monkeypatch.delenv(key, raising=False)
    service = Classifier()
    try:
        before = service.models["info-model"].info_labels()
        assert before["model"] == "info-model"
        assert (before["family"], before["precision"], before["variant"]) == (
            "encoder",
            "fp32",
            "fp32",
        )
        assert before["base_model"] == "tests/fakes"
        assert sample(m.MODEL_INFO, **before) == 1.0
        assert sample(m.QUEUE_DEPTH, model="info-model") == 0.0  # exists before any request
        asyncio.run(service.reload((str(new),), None))
        after = service.models["info-model"].info_labels()
        assert after["version"] != before["version"]
        assert (sample(m.MODEL_INFO, **before), sample(m.MODEL_INFO, **after)) == (0.0, 1.0)
    finally:
        service.close()


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_scrape_config_reads_the_rules_and_the_metrics_route() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"  # /metrics needs the token when auth is on


def test_alert_rules_use_only_metrics_the_service_exports() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {"SmallclsLatencyAboveSlo", "SmallclsRequestsRefused", "SmallclsQueueBacklog"} <= names
    used: set[str] = set()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["for"]
        used |= set(re.findall(r"\bsmallcls_[a-z_]+", rule["expr"]))
    assert used and used <= exported_names(), used - exported_names()
    assert {m.REQUEST_DURATION + "_bucket", m.REJECTED, m.QUEUE_DEPTH} <= used


def test_the_docs_table_lists_every_metric() -> None:
    doc = (REPO / "docs" / "prometheus.md").read_text()
    for name in KINDS:
        assert f"`{name}" in doc, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_config_and_rules() -> None:
    # --syntax-only: the token file it names exists only where Prometheus runs.
    config = str(DEPLOY / "prometheus.yml")
    subprocess.run(["promtool", "check", "config", "--syntax-only", config], check=True)
    subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], check=True)
