"""The /classify API: in-process through `Classifier.to_asgi()`, and once under `bentoml serve`."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import prometheus_client
import pytest
from conftest import app_client
from fakes import make_tiny_model_dir

from service import gateway
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
MAX_BODY_BYTES = 4000
ALPHA_LABELS = ("negative", "positive")
BETA_LABELS = ("sports", "politics", "science")
TAGS_LABELS = ("funny", "sad", "long")
TAGS_THRESHOLDS = (0.3, 0.6, 0.9)
INTENT_LABELS = ("balance", "oos", "transfer")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    return [
        make_tiny_model_dir(root / "alpha", name="alpha", labels=ALPHA_LABELS, seed=0),
        make_tiny_model_dir(root / "beta", name="beta", labels=BETA_LABELS, seed=1),
        make_tiny_model_dir(
            root / "tags",
            name="tags",
            labels=TAGS_LABELS,
            seed=2,
            problem_type="multi_label",
            thresholds=TAGS_THRESHOLDS,
        ),
        make_tiny_model_dir(
            root / "intents",
            name="intents",
            labels=INTENT_LABELS,
            seed=3,
            oos_label="oos",
            rejection_threshold=0.45,
        ),
    ]


def service_env(model_dirs: list[Path], **extra: str) -> dict[str, str]:
    return {
        "SMALLCLS_MODELS": ",".join(str(d) for d in model_dirs),
        "SMALLCLS_MAX_TEXTS": str(MAX_TEXTS),
        "SMALLCLS_MAX_CHARS": str(MAX_CHARS),
        "SMALLCLS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def client(model_dirs: list[Path], service_app: Any) -> Iterator[TestClient]:
    """The app with all models; entering the client runs BentoML's lifespan (models load)."""
    with app_client(service_app, service_env(model_dirs)) as test_client:
        yield test_client


@pytest.fixture
def auth_on(client: TestClient) -> Iterator[str]:
    """Auth switched on in the running app (one app per process: see the module fixture)."""
    token = "s3cret-token"
    previous = gateway.CONFIG.auth_token
    gateway.CONFIG.auth_token = token.encode()
    try:
        yield token
    finally:
        gateway.CONFIG.auth_token = previous


def test_predictions_match_the_runtime_in_order(client: TestClient, model_dirs: list[Path]) -> None:
    texts = ["good movie", "awful boring plot", "loved it", "the actors"]
    resp = client.post("/classify", json={"texts": texts, "model": "alpha"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "alpha"
    runtime = OnnxClassifier(model_dirs[0])
    assert body["version"] == runtime.manifest.files["model.onnx"][:12]
    expected = runtime.predict(texts)
    assert len(body["predictions"]) == len(texts)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want.label
        assert got["labels"] == [want.label]
        assert got["truncated"] is False
        assert "logits" not in got
        assert list(got["scores"]) == list(ALPHA_LABELS)
        assert got["scores"] == pytest.approx(want.scores, abs=1e-6)
        assert sum(got["scores"].values()) == pytest.approx(1.0)


def test_one_text_as_a_string(client: TestClient) -> None:
    resp = client.post("/classify", json={"texts": "good movie"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 1


def test_model_selection(client: TestClient) -> None:
    resp = client.post("/classify", json={"texts": ["good movie"], "model": "beta"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "beta"
    assert list(body["predictions"][0]["scores"]) == list(BETA_LABELS)
    assert body["predictions"][0]["label"] in BETA_LABELS


def test_top_k_and_logits(client: TestClient, model_dirs: list[Path]) -> None:
    resp = client.post(
        "/classify",
        json={"texts": ["great story"], "model": "beta", "top_k": 2, "return_logits": True},
    )
    assert resp.status_code == 200, resp.text
    got = resp.json()["predictions"][0]
    logits = OnnxClassifier(model_dirs[1]).logits(["great story"])[0]
    best_two = [BETA_LABELS[i] for i in logits.argsort()[::-1][:2]]
    assert list(got["scores"]) == best_two  # best first
    assert got["label"] == best_two[0]
    assert list(got["logits"]) == best_two
    assert got["logits"][best_two[0]] == pytest.approx(float(logits.max()), abs=1e-5)


def test_multi_label_uses_sigmoid_and_thresholds(
    client: TestClient, model_dirs: list[Path]
) -> None:
    texts = ["good movie", "awful boring plot", "the actors"]
    resp = client.post("/classify", json={"texts": texts, "model": "tags"})
    assert resp.status_code == 200, resp.text
    logits = OnnxClassifier(model_dirs[2]).logits(texts).astype(float)
    probs = 1 / (1 + np.exp(-logits))
    for got, row in zip(resp.json()["predictions"], probs, strict=True):
        assert list(got["scores"].values()) == pytest.approx(list(row), abs=1e-6)
        want = [lab for lab, p, t in zip(TAGS_LABELS, row, TAGS_THRESHOLDS, strict=True) if p >= t]
        assert got["labels"] == want
    # Per-call override: one threshold for all labels, or per label.
    low = client.post("/classify", json={"texts": texts, "model": "tags", "threshold": 0.001})
    assert all(p["labels"] == list(TAGS_LABELS) for p in low.json()["predictions"])
    per_label = client.post(
        "/classify",
        json={"texts": texts, "model": "tags", "threshold": {"funny": 0.999, "sad": 0.001}},
    )
    for got, row in zip(per_label.json()["predictions"], probs, strict=True):
        assert "sad" in got["labels"]
        assert ("funny" in got["labels"]) == (row[0] >= 0.999)
        assert ("long" in got["labels"]) == (row[2] >= TAGS_THRESHOLDS[2])


def test_out_of_scope_models_reject_below_their_threshold(
    client: TestClient, model_dirs: list[Path]
) -> None:
    texts = ["good movie", "awful boring plot", "the actors", "a"]
    logits = OnnxClassifier(model_dirs[3]).logits(texts).astype(float)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # The manifest's threshold, then a per-call override that rejects nothing or everything.
    for threshold in (None, 0.0, 0.999):
        body: dict[str, Any] = {"texts": texts, "model": "intents"}
        if threshold is not None:
            body["threshold"] = threshold
        resp = client.post("/classify", json=body)
        assert resp.status_code == 200, resp.text
        cut = 0.45 if threshold is None else threshold
        for got, row in zip(resp.json()["predictions"], probs, strict=True):
            rejected = bool(row.max() < cut)
            assert got["rejected"] is rejected
            want = "oos" if rejected else INTENT_LABELS[int(row.argmax())]
            assert got["label"] == want and got["labels"] == [want]
            assert list(got["scores"].values()) == pytest.approx(list(row), abs=1e-6)
    assert any(
        p["rejected"]
        for p in client.post(
            "/classify", json={"texts": texts, "model": "intents", "threshold": 0.999}
        ).json()["predictions"]
    )
    bad = client.post("/classify", json={"texts": texts, "model": "intents", "threshold": 1.0})
    assert bad.status_code == 400 and "rejection threshold" in bad.json()["error"]


def test_truncation_by_default_or_refused(client: TestClient) -> None:
    fits = "good " * 6 + "bad"  # 7 tokens, 33 characters: fits max_length 16
    resp = client.post("/classify", json={"texts": [fits], "truncate": False})
    assert resp.json()["predictions"][0]["truncated"] is False
    too_long = "a " * 19  # 19 tokens, 38 characters: under MAX_CHARS, over max_length 16
    resp = client.post("/classify", json={"texts": ["fun", too_long]})
    assert resp.status_code == 200, resp.text
    assert [p["truncated"] for p in resp.json()["predictions"]] == [False, True]
    refused = client.post("/classify", json={"texts": ["fun", too_long], "truncate": False})
    assert refused.status_code == 413, refused.text
    assert refused.json()["field"] == "texts[1]"
    assert "16" in refused.json()["error"]
    lone = client.post("/classify", json={"texts": too_long, "truncate": False})
    assert (lone.status_code, lone.json()["field"]) == (413, "texts")


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
    service = Classifier()
    assert service.default_model == "beta"
    service.close()
    monkeypatch.setenv("SMALLCLS_DEFAULT_MODEL", "gamma")
    with pytest.raises(ValueError, match=r"SMALLCLS_DEFAULT_MODEL='gamma'.*'alpha', 'beta'"):
        Classifier()


BAD_REQUESTS = [
    # (body, status, field)
    ({"texts": ["fun"], "model": "gamma"}, 404, "model"),
    ({"texts": ["fun"], "model": 3}, 400, "model"),
    ({}, 400, "texts"),
    ({"texts": None}, 400, "texts"),
    ({"texts": {"a": "b"}}, 400, "texts"),
    ({"texts": 12}, 400, "texts"),
    ({"texts": ""}, 400, "texts"),
    ({"texts": []}, 400, "texts"),
    ({"texts": ["fun"] * (MAX_TEXTS + 1)}, 400, "texts"),
    ({"texts": ["fun", 7]}, 400, "texts[1]"),
    ({"texts": ["fun", ["nested"]]}, 400, "texts[1]"),
    ({"texts": ["fun", "ok", ""]}, 400, "texts[2]"),
    ({"texts": ["   \n"]}, 400, "texts[0]"),
    ({"texts": ["fun", "x" * (MAX_CHARS + 1)]}, 413, "texts[1]"),
    ({"texts": ["fun"], "text": "typo"}, 400, "text"),
    ({"texts": ["fun"], "top_k": 0}, 400, "top_k"),
    ({"texts": ["fun"], "top_k": 3}, 400, "top_k"),  # alpha has 2 labels
    ({"texts": ["fun"], "top_k": "1"}, 400, "top_k"),
    ({"texts": ["fun"], "top_k": True}, 400, "top_k"),
    ({"texts": ["fun"], "return_logits": "yes"}, 400, "return_logits"),
    ({"texts": ["fun"], "truncate": 0}, 400, "truncate"),
    ({"texts": ["fun"], "threshold": 0.5}, 400, "threshold"),  # alpha is single-label
    ({"texts": ["fun"], "model": "tags", "threshold": 1.5}, 400, "threshold"),
    ({"texts": ["fun"], "model": "tags", "threshold": "high"}, 400, "threshold"),
    ({"texts": ["fun"], "model": "tags", "threshold": {"sad": 0}}, 400, "threshold.sad"),
    ({"texts": ["fun"], "model": "tags", "threshold": {"happy": 0.5}}, 400, "threshold.happy"),
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
    "raw", [b"{not json", b"\xff\xfe\x00", b"null", b"42", b"[" * 1000 + b"]" * 1000]
)
def test_a_body_that_is_not_a_json_object(client: TestClient, raw: bytes) -> None:
    resp = client.post("/classify", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "body"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"texts": ["fun", "\\ud800 x"]}',  # valid JSON, a lone surrogate escape
        b'{"texts": ["fun", "caf\xe9 \xff"]}',  # invalid UTF-8 bytes inside a string
    ],
)
def test_invalid_unicode_names_the_text(client: TestClient, raw: bytes) -> None:
    # The tokenizer would raise on these (a 500): refused with the text's position.
    resp = client.post("/classify", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == "texts[1]"


def test_oversized_body_is_refused_before_reading(client: TestClient) -> None:
    big = json.dumps({"texts": ["fun"], "model": "x" * MAX_BODY_BYTES}).encode()
    resp = client.post("/classify", content=big, headers={"content-type": "application/json"})
    assert (resp.status_code, resp.json()["field"]) == (413, "body")

    def chunks() -> Iterator[bytes]:  # no content-length: counted while it streams
        yield b'{"texts": ["fun"], "model": "'
        for _ in range(MAX_BODY_BYTES // 100 + 1):
            yield b"x" * 100
        yield b'"}'

    resp = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert (resp.status_code, resp.json()["field"]) == (413, "body")


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


def test_models_route_lists_manifest_facts(client: TestClient, model_dirs: list[Path]) -> None:
    resp = client.get("/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["default"] == "alpha"
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["alpha", "beta", "tags", "intents"]
    assert by_name["tags"]["problem_type"] == "multi_label"
    assert by_name["intents"]["oos_label"] == "oos"
    assert by_name["intents"]["rejection_threshold"] == 0.45
    assert by_name["tags"]["thresholds"] == list(TAGS_THRESHOLDS)
    assert by_name["beta"]["labels"] == list(BETA_LABELS)
    assert (
        by_name["alpha"]["version"]
        == OnnxClassifier(model_dirs[0]).manifest.files["model.onnx"][:12]
    )
    assert by_name["alpha"]["source"] == str(model_dirs[0])


def test_metrics_count_requests_batches_and_errors(client: TestClient) -> None:
    client.post("/classify", json={"texts": ["fun", "good"], "model": "beta"})
    client.post("/classify", json={"texts": ["fun"], "model": "nope"})
    # Read from the process's registry: BentoML's /metrics does not answer under to_asgi()
    # (no multiprocess directory); the integration test reads it from `bentoml serve`.
    text = prometheus_client.generate_latest().decode()
    assert 'smallcls_requests_total{model="beta",route="/classify",status="200"}' in text
    assert 'smallcls_requests_total{model="-",route="/classify",status="404"}' in text
    assert 'smallcls_batch_size_texts_count{model="beta"}' in text
    assert 'smallcls_queue_wait_seconds_bucket{le="0.001",model="beta"}' in text
    assert 'smallcls_request_duration_seconds_bucket{le="0.01",model="beta"}' in text


def test_auth_on_refuses_without_the_token(client: TestClient, auth_on: str) -> None:
    body = {"texts": ["fun"]}
    assert client.post("/classify", json=body).status_code == 401
    wrong = client.post("/classify", json=body, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["field"]) == (401, "authorization")
    assert client.get("/models").status_code == 401
    assert client.get("/metrics").status_code == 401
    basic = client.post("/classify", json=body, headers={"Authorization": f"Basic {auth_on}"})
    assert basic.status_code == 401
    ok = client.post("/classify", json=body, headers={"Authorization": f"Bearer {auth_on}"})
    assert ok.status_code == 200, ok.text
    # Health stays open for probes.
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_auth_off_admin_is_refused(client: TestClient, model_dirs: list[Path]) -> None:
    resp = client.post("/admin/models", json={"models": [str(model_dirs[0])]})
    assert (resp.status_code, resp.json()["field"]) == (403, "authorization")


def test_auth_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"SMALLCLS_MODELS": "m", "SMALLCLS_AUTH_TOKEN_FILE": str(token_file)}
    assert Settings.from_env(env).auth_token == "from-file"
    with pytest.raises(ValueError, match="not both"):
        Settings.from_env({**env, "SMALLCLS_AUTH_TOKEN": "x"})
    with pytest.raises(ValueError, match="cannot read"):
        Settings.from_env({**env, "SMALLCLS_AUTH_TOKEN_FILE": str(tmp_path / "missing")})


def test_reload_under_concurrent_requests_drops_nothing(
    client: TestClient, auth_on: str, model_dirs: list[Path], tmp_path: Path
) -> None:
    """Swap alpha for a new version (other weights, same name) and add a model while
    requests keep coming: every request succeeds, and answers come from one version or the
    other."""
    old_version = client.get("/models", headers={"Authorization": f"Bearer {auth_on}"}).json()
    old_version = {m["name"]: m["version"] for m in old_version["models"]}["alpha"]
    alpha_v2 = make_tiny_model_dir(tmp_path / "alpha-v2", name="alpha", labels=ALPHA_LABELS, seed=7)
    extra = make_tiny_model_dir(tmp_path / "extra", name="extra", seed=8)
    headers = {"Authorization": f"Bearer {auth_on}"}
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def hammer() -> None:
        while not stop.is_set():
            resp = client.post("/classify", json={"texts": ["good movie"]}, headers=headers)
            results.append((resp.status_code, resp.json().get("version", resp.text)))

    new_list = [str(alpha_v2), str(model_dirs[1]), str(model_dirs[2]), str(extra)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer) for _ in range(4)]
        while len(results) < 20:
            time.sleep(0.01)
        reload = client.post("/admin/models", json={"models": new_list}, headers=headers)
        seen = len(results)
        while len(results) < seen + 20:
            time.sleep(0.01)
        stop.set()
        for future in futures:
            future.result()
    assert reload.status_code == 200, reload.text
    new_version = {m["name"]: m["version"] for m in reload.json()["models"]}["alpha"]
    assert new_version != old_version
    assert [s for s, _ in results if s != 200] == []
    versions = [v for _, v in results]
    assert set(versions) == {old_version, new_version}
    assert set(versions[seen + 4 :]) == {new_version}  # only the 4 in flight could be old
    extra_resp = client.post(
        "/classify", json={"texts": ["fun"], "model": "extra"}, headers=headers
    )
    assert extra_resp.status_code == 200
    # A model that fails its sha256 is refused with the reason; the old list keeps serving.
    tampered = make_tiny_model_dir(tmp_path / "tampered", name="tampered")
    with open(tampered / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    bad = client.post(
        "/admin/models", json={"models": [str(alpha_v2), str(tampered)]}, headers=headers
    )
    assert bad.status_code == 422
    assert "sha256" in bad.json()["error"]
    assert (
        client.post(
            "/classify", json={"texts": ["fun"], "model": "extra"}, headers=headers
        ).status_code
        == 200
    )
    # Back to the module's list for the other tests.
    restore = client.post(
        "/admin/models", json={"models": [str(d) for d in model_dirs]}, headers=headers
    )
    assert restore.status_code == 200, restore.text


def test_store_reference_resolves_to_its_directory(
    model_dirs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    store = ModelStore(tmp_path / "models")
    with bentoml.models.create("store-alpha", _model_store=store) as model:
        for f in model_dirs[0].iterdir():
            shutil.copy(f, Path(model.path) / f.name)
    monkeypatch.setattr(BentoMLContainer.model_store, "get", lambda: store)
    from service.models import resolve

    source = resolve(f"store-alpha:{model.tag.version}")
    assert source.path == Path(store.get(model.tag).path)
    assert (source.path / "manifest.json").is_file()
    assert source.store_version == str(model.tag.version)
    assert resolve("store-alpha").store_version == str(model.tag.version)  # latest
    with pytest.raises(ValueError, match="neither a model directory nor a model in the BentoML"):
        resolve("missing-model:v1")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SMALLCLS_MODELS is not set"),
        ({"SMALLCLS_MODELS": ""}, "SMALLCLS_MODELS is empty"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_MAX_TEXTS": "many"}, "SMALLCLS_MAX_TEXTS.*'many'"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_THREADS": "0"}, "SMALLCLS_THREADS.*'0'"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_MAX_LATENCY_MS": "-5"}, "SMALLCLS_MAX_LATENCY_MS"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_BATCH_WAIT_MS": "soon"}, "SMALLCLS_BATCH_WAIT_MS"),
        ({"SMALLCLS_MODELS": "m", "SMALLCLS_MODEL_BATCHING": "{"}, "not valid JSON"),
        (
            {"SMALLCLS_MODELS": "m", "SMALLCLS_MODEL_BATCHING": '{"m": {"size": 3}}'},
            "unknown keys",
        ),
    ],
)
def test_settings_reject_bad_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_parsing(tmp_path: Path) -> None:
    settings = Settings.from_env({"SMALLCLS_MODELS": "a,, b:v1 "})
    assert settings.models == ("a", "b:v1")
    assert (settings.threads, settings.max_texts, settings.max_chars) == (1, 64, 2000)
    assert settings.default_model is None
    assert settings.auth_token is None
    assert (settings.batching.max_batch_size, settings.batching.max_latency_ms) == (32, 1000)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    legacy = Settings.from_env({"SMALLCLS_MODELS": f"{tmp_path / 'x'}{os.pathsep}{tmp_path / 'y'}"})
    assert legacy.models == (str(tmp_path / "x"), str(tmp_path / "y"))
    per_model = Settings.from_env(
        {"SMALLCLS_MODELS": "a", "SMALLCLS_MODEL_BATCHING": '{"a": {"max_batch_size": 8}}'}
    )
    assert per_model.batching_for("a").max_batch_size == 8
    assert per_model.batching_for("b").max_batch_size == 32


def test_keep_alive_connections_are_recycled_after_n_requests(client: TestClient) -> None:
    """Every Nth answer on one connection says `Connection: close`, so clients reconnect and
    spread over the workers; off (0), no answer does."""
    previous = gateway.CONFIG.max_requests_per_connection
    gateway._CONNECTION_REQUESTS.clear()
    try:
        gateway.CONFIG.max_requests_per_connection = 3
        closes = [
            client.post("/classify", json={"texts": ["fine"]}).headers.get("connection")
            for _ in range(7)
        ]
        assert closes == [None, None, "close", None, None, "close", None]
        gateway.CONFIG.max_requests_per_connection = 0
        answers = [client.post("/classify", json={"texts": ["fine"]}) for _ in range(4)]
        assert all(a.status_code == 200 and "connection" not in a.headers for a in answers)
    finally:
        gateway.CONFIG.max_requests_per_connection = previous
        gateway._CONNECTION_REQUESTS.clear()


def test_connection_recycling_setting() -> None:
    base = {"SMALLCLS_MODELS": "a"}
    assert Settings.from_env(base).max_requests_per_connection == 0
    parsed = Settings.from_env({**base, "SMALLCLS_MAX_REQUESTS_PER_CONNECTION": "32"})
    assert parsed.max_requests_per_connection == 32
    with pytest.raises(ValueError, match="SMALLCLS_MAX_REQUESTS_PER_CONNECTION"):
        Settings.from_env({**base, "SMALLCLS_MAX_REQUESTS_PER_CONNECTION": "-1"})


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples with these labels (across worker processes)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
def test_bentoml_serve_answers_concurrent_requests(model_dirs: list[Path], tmp_path: Path) -> None:
    """The real server with two workers, auth on, one model from the BentoML store: concurrent
    requests all succeed and are batched; a model added through the admin route reaches both
    workers through the models file."""
    import bentoml
    from bentoml._internal.models.model import ModelStore

    home = tmp_path / "bentoml"
    with bentoml.models.create("store-beta", _model_store=ModelStore(home / "models")) as stored:
        for f in model_dirs[1].iterdir():
            shutil.copy(f, Path(stored.path) / f.name)
    models_file = tmp_path / "models.txt"
    models_file.write_text(f"{model_dirs[0]}\nstore-beta:{stored.tag.version}\n")
    token = "integration-token"
    env = service_env(
        model_dirs,
        BENTOML_HOME=str(home),
        SMALLCLS_WORKERS="2",
        SMALLCLS_AUTH_TOKEN=token,
        SMALLCLS_MODELS_FILE=str(models_file),
        SMALLCLS_RELOAD_POLL_S="0.3",
    )
    server = ServerProcess(
        model_dirs, port=free_port(), extra_env=env, log_path=tmp_path / "server.log"
    )
    n_requests = 50
    headers = {"Authorization": f"Bearer {token}"}
    with server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as http:
        assert httpx.get(f"{server.url}/livez").status_code == 200  # no token needed
        refused = httpx.post(f"{server.url}/classify", json={"texts": ["fun"]})
        assert refused.status_code == 401
        ok = http.post("/classify", json={"texts": ["good movie", "awful"], "model": "beta"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["version"] == str(stored.tag.version)
        assert [p["label"] in BETA_LABELS for p in ok.json()["predictions"]] == [True, True]
        unknown = http.post("/classify", json={"texts": ["fun"], "model": "gamma"})
        assert (unknown.status_code, unknown.json()["field"]) == (404, "model")

        start = threading.Barrier(n_requests)

        def one(i: int, model: str | None = None) -> tuple[int, str, int]:
            model = model or ("alpha", "beta")[i % 2]
            start.wait()  # all at once, so the batcher has something to merge
            resp = http.post("/classify", json={"texts": [f"good movie {i}"], "model": model})
            body = resp.json()  # an error body has no predictions (404 before a reload)
            return resp.status_code, body.get("model", ""), len(body.get("predictions", []))

        with ThreadPoolExecutor(n_requests) as pool:
            results = list(pool.map(one, range(n_requests)))
        assert [r[0] for r in results] == [200] * n_requests
        assert [r[1] for r in results] == [("alpha", "beta")[i % 2] for i in range(n_requests)]
        assert all(r[2] == 1 for r in results)

        metrics = http.get("/metrics").text
        texts = metric_value(metrics, "smallcls_batch_size_texts_sum")
        batches = metric_value(metrics, "smallcls_batch_size_texts_count")
        assert texts == 2 + n_requests  # the 404 never reached a model
        assert batches < texts, f"no batching: {batches} batches for {texts} texts"
        assert metric_value(metrics, "smallcls_requests_total", model="-", status="404") == 1

        added = http.post(
            "/admin/models",
            json={
                "models": [
                    str(model_dirs[0]),
                    f"store-beta:{stored.tag.version}",
                    str(model_dirs[2]),
                ]
            },
        )
        assert added.status_code == 200, added.text
        assert models_file.read_text().count("\n") == 3
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until both workers serve the new model
            start = threading.Barrier(20)
            with ThreadPoolExecutor(20) as pool:
                statuses = [r[0] for r in pool.map(lambda i: one(i, "tags"), range(20))]
            if statuses == [200] * 20:
                break
            time.sleep(0.3)
        assert statuses == [200] * 20, server.log_tail()


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
    # Refused before any worker starts (service.service.preflight): the server exits.
    with pytest.raises(RuntimeError, match=r"exited with code 1(.|\n)*model\.onnx has sha256"):
        server.start()
    assert server.process is None  # stopped, not left running


def _active_service() -> Any:
    from service.service import ACTIVE

    return ACTIVE[-1]


def _active_models() -> dict[str, Any]:
    return _active_service().models


def test_a_text_the_model_cannot_take_fails_its_request_by_position(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _active_models()["beta"]
    real = loaded.batcher._run

    def poisoned(texts: list[str]) -> Any:
        if "poison" in texts:
            raise ValueError("cannot take this text")
        return real(texts)

    monkeypatch.setattr(loaded.batcher, "_run", poisoned)
    failed = client.post("/classify", json={"texts": ["fun", "poison"], "model": "beta"})
    assert failed.status_code == 500 and failed.json()["field"] == "texts[1]", failed.text
    assert "failed on text 1 of the request: ValueError" in failed.json()["error"]
    ok = client.post("/classify", json={"texts": ["fun", "boring plot"], "model": "beta"})
    assert ok.status_code == 200, ok.text  # the model goes on serving every other text
    tei = client.post("/predict?model=beta", json={"inputs": [["fun"], ["poison"]]})
    assert (tei.status_code, tei.json()["error_type"]) == (424, "Backend")


def test_a_model_retired_while_a_request_reached_it_hands_over_or_is_a_404(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.batching import Retired

    models = _active_models()
    successor = models["alpha"]
    retired = type(successor)(
        successor.classifier, successor.source, "old-version", successor.batcher
    )

    class ClosedBatcher:
        settings = successor.batcher.settings

        async def submit(self, texts: Any, longest: int = 0) -> Any:
            raise Retired("alpha")

    retired.batcher = ClosedBatcher()  # type: ignore[assignment]
    monkeypatch.setattr(_active_service(), "_resolve", lambda model: retired)
    handed_over = client.post("/classify", json={"texts": ["fun"], "model": "alpha"})
    assert handed_over.status_code == 200, handed_over.text
    assert handed_over.json()["version"] == successor.version  # the successor answered
    monkeypatch.delitem(models, "alpha")  # the reload removed the model altogether
    removed = client.post("/classify", json={"texts": ["fun"], "model": "alpha"})
    assert removed.status_code == 404 and removed.json()["field"] == "model", removed.text
    assert "was removed by a reload while this request waited" in removed.json()["error"]


def test_a_failure_of_our_own_code_is_an_answer_logged_and_counted(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import service.service as service_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    metrics = _active_service().metrics
    counter = metrics.server_errors.labels(model="alpha", reason="internal")
    before = counter._value.get()
    monkeypatch.setattr(service_module, "render", broken)
    with caplog.at_level("ERROR", logger="service.service"):
        failed = client.post("/classify", json={"texts": ["fun"], "model": "alpha"})
    assert failed.status_code == 500 and failed.json()["field"] == "service", failed.text
    assert "KeyError" in failed.json()["error"] and "a bug" not in failed.json()["error"]
    assert counter._value.get() == before + 1
    assert any("internal error answering /classify" in r.message for r in caplog.records)


def test_max_batch_tokens_counts_each_request_and_keeps_the_answers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    loaded = _active_models()["alpha"]
    texts = ["good movie", "awful boring plot, a lot of words"]
    plain = client.post("/classify", json={"texts": texts, "model": "alpha"}).json()
    seen: list[int] = []
    real_submit = loaded.batcher.submit

    async def spy(batch_texts: Any, longest: int = 0) -> Any:
        seen.append(longest)
        return await real_submit(batch_texts, longest)

    bounded = dataclasses.replace(loaded.batcher.settings, max_batch_tokens=64)
    monkeypatch.setattr(loaded.batcher, "settings", bounded)
    monkeypatch.setattr(loaded.batcher, "submit", spy)
    response = client.post("/classify", json={"texts": texts, "model": "alpha"})
    assert response.status_code == 200, response.text
    answer = response.json()
    counts = loaded.classifier.count_tokens(texts)
    assert seen == [min(max(counts), loaded.classifier.manifest.max_length)] and seen[0] > 0
    assert answer["predictions"] == plain["predictions"]
