"""Which URLs the service leaves out of OpenTelemetry tracing, read by opentelemetry itself."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from fakes import make_tiny_model_dir
from opentelemetry.util.http import ExcludeList

from service import door, tracing
from service.settings import ENV_TRACE_CLASSIFY, ServerSettings


def excluded(trace_classify: bool) -> ExcludeList:
    config = tracing.service_config(trace_classify, door.CLASSIFY_PATHS)
    return ExcludeList(config.get("tracing", {}).get("excluded_urls", []))


@pytest.mark.parametrize("path", ["/classify", "/predict", "/"])
def test_classify_urls_are_untraced_by_default(path: str) -> None:
    # The middleware matches the full URL: scheme, Host header, path (no query string).
    assert excluded(False).url_disabled(f"http://127.0.0.1:3000{path}")
    assert excluded(False).url_disabled(f"https://classify.example.com{path}")


@pytest.mark.parametrize(
    "path", ["/classify/x", "/classifyx", "/x/classify", "/metrics", "/models", "/livez", "/info"]
)
def test_every_other_url_stays_traced(path: str) -> None:
    assert not excluded(False).url_disabled(f"http://127.0.0.1:3000{path}")


def test_the_setting_traces_the_classify_urls_again() -> None:
    assert tracing.service_config(True, door.CLASSIFY_PATHS) == {}
    assert not excluded(True).url_disabled("http://127.0.0.1:3000/classify")
    assert ServerSettings.from_env({ENV_TRACE_CLASSIFY: "true"}).trace_classify
    assert not ServerSettings.from_env({}).trace_classify
    with pytest.raises(ValueError, match=ENV_TRACE_CLASSIFY):
        ServerSettings.from_env({ENV_TRACE_CLASSIFY: "sometimes"})


def test_an_exporter_with_untraced_classify_routes_says_what_to_set(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="service.tracing"):
        tracing.warn_if_exporter_untraced(False, "otlp")
        tracing.warn_if_exporter_untraced(True, "otlp")
        tracing.warn_if_exporter_untraced(False, None)
    assert len(caplog.records) == 1 and f"{ENV_TRACE_CLASSIFY}=true" in caplog.text


SPAN_COUNT = """
import json, sys
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient
from bentoml._internal.configuration.containers import BentoMLContainer
from service.service import Classifier

app = Classifier.to_asgi()
spans = InMemorySpanExporter()
BentoMLContainer.tracer_provider.get().add_span_processor(SimpleSpanProcessor(spans))
with TestClient(app) as client:
    assert client.post("/classify", json={"texts": ["fun"]}).status_code == 200
    assert client.post("/predict", json={"inputs": "fun"}).status_code == 200
    assert client.get("/models").status_code == 200
print(json.dumps(sorted({s.name for s in spans.get_finished_spans() if s.parent is None})))
"""


@pytest.mark.parametrize("trace_classify", [False, True])
def test_spans_recorded_by_a_sampling_service(trace_classify: bool, tmp_path) -> None:
    """With every request sampled, the classify routes make spans only when asked to, and
    the other routes always do."""
    model = make_tiny_model_dir(tmp_path / "m", name="m", labels=("a", "b"), seed=0)
    env = {
        **os.environ,
        "SMALLCLS_MODELS": str(model),
        ENV_TRACE_CLASSIFY: str(trace_classify).lower(),
        "BENTOML_CONFIG_OPTIONS": "services.Classifier.tracing.sample_rate=1.0",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SPAN_COUNT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = json.loads(done.stdout.strip().splitlines()[-1])
    assert "GET /models" in names
    assert ("POST /classify" in names) is trace_classify, names
    assert ("POST /predict" in names) is trace_classify, names
