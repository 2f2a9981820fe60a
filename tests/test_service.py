"""The /classify API: in-process through `Classifier.to_asgi()`, and once under `bentoml serve`."""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import make_tiny_model_dir

from service.launch import ServerProcess, free_port
from service.runtime import OnnxClassifier
from service.settings import Settings

with warnings.catch_warnings():
    # Not this code's: BentoML 1.4.40 uses APIs pydantic 2.11 and pathspec deprecate, and
    # starlette asks for `httpx2`, which this environment does not have (httpx works).
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

    from service.service import Classifier

# The same BentoML deprecations, raised again when a request is served.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:_bentoml_sdk.*",
    "ignore::DeprecationWarning:_bentoml_impl.*",
    "ignore::DeprecationWarning:pathspec.*",
)

MAX_TEXTS = 4
MAX_CHARS = 40
ALPHA_LABELS = ("negative", "positive")
BETA_LABELS = ("sports", "politics", "science")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    return [
        make_tiny_model_dir(root / "alpha", name="alpha", labels=ALPHA_LABELS, seed=0),
        make_tiny_model_dir(root / "beta", name="beta", labels=BETA_LABELS, seed=1),
    ]


def service_env(model_dirs: list[Path], **extra: str) -> dict[str, str]:
    return {
        "SMALLCLS_MODELS": os.pathsep.join(str(d) for d in model_dirs),
        "SMALLCLS_MAX_TEXTS": str(MAX_TEXTS),
        "SMALLCLS_MAX_CHARS": str(MAX_CHARS),
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def client(model_dirs: list[Path]) -> Iterator[TestClient]:
    """The app with both models; entering the client runs BentoML's lifespan (models load)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in service_env(model_dirs).items():
            mp.setenv(key, value)
        mp.delenv("SMALLCLS_DEFAULT_MODEL", raising=False)
        with TestClient(Classifier.to_asgi()) as test_client:
            yield test_client


def test_predictions_match_the_runtime_in_order(client: TestClient, model_dirs: list[Path]) -> None:
    texts = ["good movie", "awful boring plot", "loved it", "the actors"]
    resp = client.post("/classify", json={"texts": texts, "model": "alpha"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "alpha"
    expected = OnnxClassifier(model_dirs[0]).predict(texts)
    assert len(body["predictions"]) == len(texts)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want.label
        assert list(got["scores"]) == list(ALPHA_LABELS)
        assert got["scores"] == pytest.approx(want.scores, abs=1e-9)
        assert sum(got["scores"].values()) == pytest.approx(1.0)


def test_model_selection(client: TestClient) -> None:
    resp = client.post("/classify", json={"texts": ["good movie"], "model": "beta"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "beta"
    assert list(body["predictions"][0]["scores"]) == list(BETA_LABELS)
    assert body["predictions"][0]["label"] in BETA_LABELS


@pytest.mark.parametrize("body", [{"texts": ["fun"]}, {"texts": ["fun"], "model": None}])
def test_default_model_is_the_first_directory(client: TestClient, body: dict[str, Any]) -> None:
    resp = client.post("/classify", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "alpha"


def test_default_model_from_the_environment(
    model_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked on the class itself: a second `to_asgi()` app in one process would register
    # BentoML's Prometheus metrics twice (DuplicateTimeseries).
    for key, value in service_env(model_dirs, SMALLCLS_DEFAULT_MODEL="beta").items():
        monkeypatch.setenv(key, value)
    assert Classifier().default_model == "beta"
    monkeypatch.setenv("SMALLCLS_DEFAULT_MODEL", "gamma")
    with pytest.raises(ValueError, match=r"SMALLCLS_DEFAULT_MODEL='gamma'.*'alpha', 'beta'"):
        Classifier()


BAD_REQUESTS = [
    # (body, status, field)
    ({"texts": ["fun"], "model": "gamma"}, 404, "model"),
    ({"texts": ["fun"], "model": 3}, 400, "model"),
    ({}, 400, "texts"),
    ({"texts": None}, 400, "texts"),
    ({"texts": "just one string"}, 400, "texts"),
    ({"texts": []}, 400, "texts"),
    ({"texts": ["fun"] * (MAX_TEXTS + 1)}, 400, "texts"),
    ({"texts": ["fun", 7]}, 400, "texts[1]"),
    ({"texts": ["fun", ["nested"]]}, 400, "texts[1]"),
    ({"texts": ["fun", "ok", ""]}, 400, "texts[2]"),
    ({"texts": ["   \n"]}, 400, "texts[0]"),
    ({"texts": ["fun", "x" * (MAX_CHARS + 1)]}, 413, "texts[1]"),
    ({"texts": ["fun"], "text": "typo"}, 400, "text"),
    (["fun"], 400, "body"),
    ("fun", 400, "body"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_REQUESTS)
def test_bad_input_is_a_client_error_with_a_field(
    client: TestClient, body: Any, status: int, field: str
) -> None:
    resp = client.post("/classify", json=body)
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert set(data) == {"error", "field"}
    assert data["field"] == field
    assert data["error"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe\x00", b"null", b"42", b"[" * 100_000 + b"]" * 100_000]
)
def test_a_body_that_is_not_a_json_object(client: TestClient, raw: bytes) -> None:
    resp = client.post("/classify", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "body"


def test_a_lone_surrogate_is_a_client_error(client: TestClient) -> None:
    # Valid JSON, but not encodable as UTF-8: the tokenizer would raise (a 500).
    raw = b'{"texts": ["fun", "\\ud800 x"]}'
    resp = client.post("/classify", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "texts[1]"


def test_error_messages_say_what_to_do(client: TestClient) -> None:
    unknown = client.post("/classify", json={"texts": ["fun"], "model": "gamma"}).json()
    assert "alpha" in unknown["error"] and "beta" in unknown["error"]
    too_long = client.post("/classify", json={"texts": ["x" * (MAX_CHARS + 1)]}).json()
    assert str(MAX_CHARS) in too_long["error"]
    too_many = client.post("/classify", json={"texts": ["a"] * (MAX_TEXTS + 1)}).json()
    assert str(MAX_TEXTS) in too_many["error"]


def test_health_endpoints(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SMALLCLS_MODELS is not set"),
        ({"SMALLCLS_MODELS": ""}, "SMALLCLS_MODELS is empty"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_MAX_TEXTS": "many"}, "SMALLCLS_MAX_TEXTS.*'many'"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_THREADS": "0"}, "SMALLCLS_THREADS.*'0'"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_MAX_LATENCY_MS": "-5"}, "SMALLCLS_MAX_LATENCY_MS"),
    ],
)
def test_settings_reject_bad_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_parsing() -> None:
    settings = Settings.from_env({"SMALLCLS_MODELS": f"a{os.pathsep}{os.pathsep}b "})
    assert settings.model_dirs == (Path("a"), Path("b "))
    assert (settings.threads, settings.max_texts, settings.max_chars) == (1, 64, 2000)
    assert settings.default_model is None
    assert (settings.batching.max_batch_size, settings.batching.max_latency_ms) == (32, 1000)


@pytest.mark.integration
def test_bentoml_serve_answers_concurrent_requests(model_dirs: list[Path], tmp_path: Path) -> None:
    """The real server: two processes (API + model runner); concurrent requests all succeed
    and the runner merges them into batches (read from its shutdown summary in the log)."""
    env = service_env(model_dirs, BENTOML_HOME=str(tmp_path / "bentoml"))
    server = ServerProcess(
        model_dirs, port=free_port(), extra_env=env, log_path=tmp_path / "server.log"
    )
    n_requests = 50
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/livez").status_code == 200
        ok = http.post("/classify", json={"texts": ["good movie", "awful"], "model": "beta"})
        assert ok.status_code == 200, ok.text
        assert [p["label"] in BETA_LABELS for p in ok.json()["predictions"]] == [True, True]
        unknown = http.post("/classify", json={"texts": ["fun"], "model": "gamma"})
        assert (unknown.status_code, unknown.json()["field"]) == (404, "model")

        start = threading.Barrier(n_requests)

        def one(i: int) -> tuple[int, str, int]:
            model = ("alpha", "beta")[i % 2]
            start.wait()  # all at once, so the runner has something to batch
            resp = http.post("/classify", json={"texts": [f"good movie {i}"], "model": model})
            return resp.status_code, resp.json().get("model", ""), len(resp.json()["predictions"])

        with ThreadPoolExecutor(n_requests) as pool:
            results = list(pool.map(one, range(n_requests)))
    assert [r[0] for r in results] == [200] * n_requests
    assert [r[1] for r in results] == [("alpha", "beta")[i % 2] for i in range(n_requests)]
    assert all(r[2] == 1 for r in results)

    match = re.search(
        r"batching summary: (\d+) items in (\d+) model calls, batch sizes (\{.*\})",
        server.log_path.read_text(),
    )
    assert match, server.log_tail()
    items, calls = int(match[1]), int(match[2])
    sizes = {int(k): v for k, v in json.loads(match[3]).items()}
    assert items == 2 + n_requests  # the 404 never reached the runner
    assert max(sizes) > 1, f"no batching: {calls} calls for {items} items"


@pytest.mark.integration
def test_bentoml_serve_reports_a_model_that_fails_to_load(
    model_dirs: list[Path], tmp_path: Path
) -> None:
    tampered = make_tiny_model_dir(tmp_path / "tampered", name="tampered")
    with open(tampered / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    server = ServerProcess(
        [model_dirs[0], tampered],
        extra_env={"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"},
        log_path=tmp_path / "server.log",
        startup_timeout=60,
        stop_grace=3,
    )
    with pytest.raises(RuntimeError, match=r"failed to start(.|\n)*model\.onnx has sha256"):
        server.start()
    assert server.process is None  # stopped, not left running
