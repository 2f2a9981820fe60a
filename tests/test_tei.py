"""Text Embeddings Inference's API (`/predict`, `/`, `/info`, `/health`): in-process through
`Classifier.to_asgi()`, and once under `bentoml serve` with huggingface_hub's InferenceClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from conftest import app_client
from fakes import make_tiny_model_dir

from service import gateway
from service.launch import ServerProcess, free_port
from service.service import ACTIVE

with warnings.catch_warnings():
    # starlette asks for `httpx2`, which this environment does not have (httpx works).
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:_bentoml_sdk.*",
    "ignore::DeprecationWarning:_bentoml_impl.*",
    "ignore::DeprecationWarning:pathspec.*",
)

MAX_TEXTS = 8
MAX_CHARS = 200
ALPHA = ("negative", "positive")
BETA = ("sports", "politics", "science")
TAGS = ("funny", "sad", "long")
INTENTS = ("balance", "oos", "transfer")
LONG = "good " * 10 + "bad " * 10  # 20 tokens: over max_length 16, under MAX_CHARS
TEXTS = [
    "good movie",
    "awful boring plot",
    "the actors",
    "a",
    "loved it",
    "this film was terrible",
    "fun story",
    LONG,
]
MODELS = ("alpha", "beta", "tags", "intents", "tailed", "both")
TEI_INFO_KEYS = {  # TEI's Info (router/src/lib.rs), every field
    "model_id",
    "model_sha",
    "model_dtype",
    "served_model_name",
    "model_type",
    "max_concurrent_requests",
    "max_input_length",
    "max_batch_tokens",
    "max_batch_requests",
    "max_client_batch_size",
    "auto_truncate",
    "tokenization_workers",
    "version",
    "sha",
    "docker_label",
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("tei-models")
    # Seeds picked so the decisions cover the cases where the served answer is not simply
    # the highest score: multi-label texts with no label, or with a chosen label below an
    # unchosen one (seed 11); out-of-scope rejections of texts whose top label is in scope.
    return [
        make_tiny_model_dir(root / "alpha", name="alpha", labels=ALPHA, seed=0),
        make_tiny_model_dir(root / "beta", name="beta", labels=BETA, seed=1),
        make_tiny_model_dir(
            root / "tags",
            name="tags",
            labels=TAGS,
            seed=11,
            problem_type="multi_label",
            thresholds=(0.3, 0.6, 0.9),
        ),
        make_tiny_model_dir(
            root / "intents",
            name="intents",
            labels=INTENTS,
            seed=3,
            oos_label="oos",
            rejection_threshold=0.8,
        ),
        make_tiny_model_dir(
            root / "tailed", name="tailed", labels=ALPHA, seed=4, truncation="tail"
        ),
        make_tiny_model_dir(
            root / "both", name="both", labels=ALPHA, seed=5, truncation="head_tail"
        ),
    ]


def service_env(model_dirs: list[Path], **extra: str) -> dict[str, str]:
    return {
        "SMALLCLS_MODELS": ",".join(str(d) for d in model_dirs),
        "SMALLCLS_MAX_TEXTS": str(MAX_TEXTS),
        "SMALLCLS_MAX_CHARS": str(MAX_CHARS),
        "SMALLCLS_MAX_BODY_BYTES": "4000",
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def client(model_dirs: list[Path], service_app: Any) -> Iterator[TestClient]:
    with app_client(service_app, service_env(model_dirs)) as test_client:
        yield test_client


@pytest.fixture
def token(client: TestClient) -> Iterator[str]:
    """Auth switched on in the running app."""
    previous = gateway.CONFIG.auth_token
    gateway.CONFIG.auth_token = b"tei-token"
    try:
        yield "tei-token"
    finally:
        gateway.CONFIG.auth_token = previous


def classify(client: TestClient, texts: list[str], model: str, **extra: Any) -> list[dict]:
    resp = client.post("/classify", json={"texts": texts, "model": model, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()["predictions"]


def predict(client: TestClient, body: Any, model: str | None = None, path: str = "/predict"):
    return client.post(path, json=body, params={"model": model} if model else None)


def check_agrees(got: list[dict[str, Any]], want: dict[str, Any], multi: bool = False) -> None:
    """One TEI answer against /classify's answer for the same text (`multi`: a multi-label
    model, whose answer is `labels`; its `label` is only the most probable one)."""
    served = [e["label"] for e in got if e["selected"]]
    # The served labels, highest first, lead; the others follow, highest first.
    assert served == sorted(want["labels"], key=lambda label: -want["scores"][label])
    assert [e["label"] for e in got[: len(served)]] == served
    rest = [e["score"] for e in got[len(served) :]]
    assert rest == sorted(rest, reverse=True)
    assert {e["label"]: e["score"] for e in got} == want["scores"]  # every label, same numbers
    if not multi:  # single-label (argmax, or out-of-scope when rejected): element 0 is it
        assert want["labels"] == [want["label"]]
        assert got[0]["label"] == want["label"]


@pytest.mark.parametrize("path", ["/predict", "/"])
@pytest.mark.parametrize("model", MODELS)
def test_every_answer_agrees_with_classify(client: TestClient, model: str, path: str) -> None:
    resp = predict(client, {"inputs": [[t] for t in TEXTS]}, model, path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-model-name"] == model
    answers = resp.json()
    wanted = classify(client, TEXTS, model)
    assert len(answers) == len(TEXTS)
    for got, want in zip(answers, wanted, strict=True):
        check_agrees(got, want, multi=model == "tags")
    if model == "tags":  # the cases where the order alone would not carry the decision
        assert any(not w["labels"] for w in wanted)
        assert any(
            w["labels"] and max(w["scores"], key=w["scores"].get) not in w["labels"] for w in wanted
        )
    if model == "intents":
        assert any(w["rejected"] and max(w["scores"], key=w["scores"].get) != "oos" for w in wanted)


def test_one_input_answers_one_list(client: TestClient) -> None:
    want = classify(client, ["good movie"], "beta")[0]
    for inputs in ("good movie", ["good movie"]):  # TEI: [text] is one input, not a batch
        resp = predict(client, {"inputs": inputs}, "beta")
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert [set(e) for e in got] == [{"label", "score", "selected"}] * len(BETA)
        check_agrees(got, want)


def test_the_default_model_answers_without_a_choice(client: TestClient) -> None:
    got = client.post("/predict", json={"inputs": "fun story"}).json()
    check_agrees(got, classify(client, ["fun story"], "alpha")[0])


def test_raw_scores_and_function_to_apply(client: TestClient) -> None:
    import numpy as np

    want = classify(client, ["awful boring plot"], "beta", return_logits=True)[0]
    logits = np.array([want["logits"][label] for label in BETA])
    order = [e["label"] for e in predict(client, {"inputs": "awful boring plot"}, "beta").json()]

    def scores(body: dict[str, Any]) -> dict[str, float]:
        resp = predict(client, {"inputs": "awful boring plot", **body}, "beta")
        assert resp.status_code == 200, resp.text
        assert [e["label"] for e in resp.json()] == order  # scores change, never the order
        return {e["label"]: e["score"] for e in resp.json()}

    assert scores({"raw_scores": True}) == want["logits"]
    assert scores({"parameters": {"function_to_apply": "none"}}) == want["logits"]
    assert scores({"parameters": {"function_to_apply": "softmax"}}) == want["scores"]
    sigmoid = dict(zip(BETA, 1 / (1 + np.exp(-logits)), strict=True))
    got = scores({"parameters": {"function_to_apply": "sigmoid"}})
    assert got == pytest.approx(sigmoid, abs=1e-12)
    top = predict(client, {"inputs": "awful boring plot", "parameters": {"top_k": 2}}, "beta")
    assert [e["label"] for e in top.json()] == order[:2]


def test_truncation_as_with_auto_truncate(client: TestClient) -> None:
    want = classify(client, [LONG], "alpha")[0]
    assert want["truncated"] is True
    for body in ({}, {"truncate": True}, {"truncate": None}, {"truncation_direction": "Right"}):
        resp = predict(client, {"inputs": LONG, **body}, "alpha")
        assert resp.status_code == 200, (body, resp.text)
        check_agrees(resp.json(), want)
    refused = predict(client, {"inputs": [["fun"], [LONG]], "truncate": False}, "alpha")
    assert refused.status_code == 422
    assert refused.json()["error_type"] == "Validation"
    assert "inputs[1]" in refused.json()["error"] and "16" in refused.json()["error"]
    # Each model's own side is accepted; another side is refused, unless nothing is cut.
    assert predict(client, {"inputs": LONG, "truncation_direction": "left"}, "tailed").is_success
    assert not predict(client, {"inputs": LONG, "truncation_direction": "left"}, "alpha").is_success
    short = {"inputs": "fun", "truncate": False, "truncation_direction": "left"}
    assert predict(client, short, "alpha").status_code == 200


BAD_REQUESTS = [
    # (body, model, status, error_type, words in the message)
    ({"inputs": ["good", "movie"]}, None, 422, "Validation", "pair"),
    ({"inputs": [["good", "movie"]]}, None, 422, "Validation", "inputs[0] is a pair"),
    ({"inputs": ["a", "b", "c"]}, None, 422, "Validation", '[["first text"]'),
    ({"inputs": [["a"], "b"]}, None, 422, "Validation", "inputs[1]"),
    ({"inputs": [["a"], [3]]}, None, 422, "Validation", "inputs[1]"),
    ({"inputs": []}, None, 400, "Empty", "empty"),
    ({"inputs": 7}, None, 422, "Validation", "got int"),
    ({}, None, 422, "Validation", "inputs is required"),
    ({"inputs": "   "}, None, 422, "Validation", "whitespace"),
    ({"inputs": "x" * (MAX_CHARS + 1)}, None, 422, "Validation", str(MAX_CHARS)),
    ({"inputs": [["a"]] * (MAX_TEXTS + 1)}, None, 422, "Validation", str(MAX_TEXTS)),
    ({"inputs": "a", "model": "beta"}, None, 422, "Validation", "?model="),
    ({"inputs": "a", "normalize": True}, None, 422, "Validation", "'normalize'"),
    ({"inputs": "a", "truncate": "yes"}, None, 422, "Validation", "truncate"),
    ({"inputs": "a", "raw_scores": 1}, None, 422, "Validation", "raw_scores"),
    ({"inputs": "a", "truncation_direction": "up"}, None, 422, "Validation", "'left'"),
    ({"inputs": LONG, "truncation_direction": "right"}, "tailed", 422, "Validation", "'left'"),
    ({"inputs": LONG, "truncation_direction": "left"}, "both", 422, "Validation", "omit it"),
    ({"inputs": "a", "parameters": {"top_k": 0}}, None, 422, "Validation", "1..2"),
    ({"inputs": "a", "parameters": {"top_k": 3}}, None, 422, "Validation", "1..2"),
    ({"inputs": "a", "parameters": {"temperature": 1}}, None, 422, "Validation", "temperature"),
    ({"inputs": "a", "parameters": {"function_to_apply": "tanh"}}, None, 422, "Validation", "tanh"),
    (
        {"inputs": "a", "raw_scores": True, "parameters": {"function_to_apply": "softmax"}},
        None,
        422,
        "Validation",
        "one of the two",
    ),
    ({"inputs": "a", "parameters": 3}, None, 422, "Validation", "parameters"),
    ({"inputs": "a"}, "gamma", 422, "Validation", "'alpha'"),
    (["a"], None, 422, "Validation", "JSON object"),
]


@pytest.mark.parametrize(("body", "model", "status", "error_type", "words"), BAD_REQUESTS)
def test_bad_input_gets_tei_errors(
    client: TestClient, body: Any, model: str | None, status: int, error_type: str, words: str
) -> None:
    resp = predict(client, body, model)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error", "error_type"}
    assert resp.json()["error_type"] == error_type
    assert words in resp.json()["error"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\xff\xfe", b"", b'{"inputs": ["caf\xe9 \xff"]}', b"[" * 1000]
)
def test_a_body_that_cannot_be_read(client: TestClient, raw: bytes) -> None:
    resp = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error_type"] == "Validation"


def test_a_body_over_the_limit_is_413_in_tei_terms(client: TestClient) -> None:
    big = json.dumps({"inputs": "x" * 5000}).encode()
    resp = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error_type"] == "Validation"


def test_overload_is_429_and_a_failing_model_424(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.batching import Overloaded

    loaded = ACTIVE[-1].models["beta"]

    async def overloaded(texts: Any, longest: int = 0) -> Any:
        raise Overloaded("queue_full", "model 'beta' has 256 texts queued: retry shortly")

    monkeypatch.setattr(loaded.batcher, "submit", overloaded)
    resp = predict(client, {"inputs": "fun"}, "beta")
    assert (resp.status_code, resp.json()["error_type"]) == (429, "Overloaded")
    assert resp.headers["retry-after"] == "1"
    assert client.post("/classify", json={"texts": "fun", "model": "beta"}).status_code == 503
    monkeypatch.undo()

    def broken(texts: Any, slack: float = 1.15) -> Any:
        raise RuntimeError("onnxruntime said no")

    # The real batcher runs the broken model and fails that batch's requests.
    monkeypatch.setattr(loaded.batcher, "_run", broken)
    resp = predict(client, {"inputs": "fun"}, "beta")
    assert (resp.status_code, resp.json()["error_type"]) == (424, "Backend")
    assert "onnxruntime said no" in resp.json()["error"]
    failed = client.post("/classify", json={"texts": "fun", "model": "beta"})
    assert (failed.status_code, failed.json()["field"]) == (500, "model")


def test_info_has_tei_fields_for_the_chosen_model(client: TestClient) -> None:
    info = client.get("/info").json()
    assert set(info) == TEI_INFO_KEYS
    assert info["model_id"] == info["served_model_name"] == "alpha"
    assert info["model_type"] == {
        "classifier": {
            "id2label": {"0": "negative", "1": "positive"},
            "label2id": {"negative": 0, "positive": 1},
        }
    }
    assert (info["max_input_length"], info["max_client_batch_size"]) == (16, MAX_TEXTS)
    assert info["auto_truncate"] is True
    assert info["model_dtype"] == "float32"
    models = client.get("/models").json()["models"]
    assert info["model_sha"][:12] == next(m for m in models if m["name"] == "alpha")["version"]
    beta = client.get("/info", params={"model": "beta"}).json()
    assert beta["model_type"]["classifier"]["id2label"] == {
        "0": "sports",
        "1": "politics",
        "2": "science",
    }
    unknown = client.get("/info", params={"model": "gamma"})
    assert (unknown.status_code, unknown.json()["error_type"]) == (422, "Validation")


def test_health_is_open_and_empty(client: TestClient, token: str) -> None:
    resp = client.get("/health")
    assert (resp.status_code, resp.content) == (200, b"")


def test_auth_applies_to_the_tei_routes(client: TestClient, token: str) -> None:
    for path in ("/predict", "/"):
        refused = client.post(path, json={"inputs": "fun"})
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
            "error_type": "Unauthorized",
        }
        wrong = client.post(path, json={"inputs": "fun"}, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        ok = client.post(path, json={"inputs": "fun"}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
    assert client.get("/info").status_code == 401
    assert client.get("/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_tei_requests_are_counted_like_classify(client: TestClient) -> None:
    def sample(name: str, **labels: str) -> float:
        return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "ok": sample("smallcls_requests_total", model="beta", route="/predict", status="200"),
        "root": sample("smallcls_requests_total", model="beta", route="/", status="200"),
        "bad": sample("smallcls_requests_total", model="-", route="/predict", status="422"),
        "texts": sample("smallcls_texts_total", model="beta"),
        "batches": sample("smallcls_batch_size_texts_count", model="beta"),
        "latency": sample("smallcls_request_duration_seconds_count", model="beta"),
    }
    assert predict(client, {"inputs": [["fun"], ["good movie"]]}, "beta").status_code == 200
    assert predict(client, {"inputs": "fun"}, "beta", path="/").status_code == 200
    assert predict(client, {"inputs": ["a", "b"]}, "beta").status_code == 422
    after = {
        "ok": sample("smallcls_requests_total", model="beta", route="/predict", status="200"),
        "root": sample("smallcls_requests_total", model="beta", route="/", status="200"),
        "bad": sample("smallcls_requests_total", model="-", route="/predict", status="422"),
        "texts": sample("smallcls_texts_total", model="beta"),
        "batches": sample("smallcls_batch_size_texts_count", model="beta"),
        "latency": sample("smallcls_request_duration_seconds_count", model="beta"),
    }
    assert {k: after[k] - before[k] for k in before} == {
        "ok": 1,
        "root": 1,
        "bad": 1,
        "texts": 3,
        "batches": 2,
        "latency": 2,
    }


CLIENT_SCRIPT = """
import json, sys
from huggingface_hub import InferenceClient
from requests import HTTPError

url, token = sys.argv[1], sys.argv[2]
out = {}
client = InferenceClient(base_url=url, token=token)
def one(result):
    # huggingface_hub 0.36 returns element 0 of TEI's list for one text (it indexes a list of
    # lists); a later version may return the whole list.
    top = result[0] if isinstance(result, list) else result
    return [top.label, top.score]
out["texts"] = [one(client.text_classification(t)) for t in json.loads(sys.argv[3])]
out["top_k"] = one(client.text_classification("fun story", top_k=1, function_to_apply="none"))
chosen = InferenceClient(base_url=url + "/predict?model=intents", token=token)
out["intents"] = one(chosen.text_classification("fun story"))
try:
    InferenceClient(base_url=url).text_classification("fun story")
    out["no_token"] = None
except HTTPError as exc:
    out["no_token"] = exc.response.status_code
print(json.dumps(out))
"""


@pytest.mark.integration
def test_inference_client_against_bentoml_serve(model_dirs: list[Path], tmp_path: Path) -> None:
    """The real client, the real server (auth on, two workers): the client's answers are
    /classify's, and the server's multiprocess metrics carry the TEI requests and gauges."""
    token = "integration-token"
    env = service_env(
        model_dirs[:4],
        BENTOML_HOME=str(tmp_path / "bentoml"),
        SMALLCLS_AUTH_TOKEN=token,
        SMALLCLS_WORKERS="2",
    )
    server = ServerProcess(
        model_dirs[:4], port=free_port(), extra_env=env, log_path=tmp_path / "server.log"
    )
    texts = TEXTS[:4]
    # The client refuses every URL, 127.0.0.1 included, in offline mode: this process's
    # environment only.
    client_env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    client_env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    headers = {"Authorization": f"Bearer {token}"}
    with server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as http:
        run = subprocess.run(
            [sys.executable, "-c", CLIENT_SCRIPT, server.url, token, json.dumps(texts)],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(run.stdout)
        want = http.post("/classify", json={"texts": texts}).json()["predictions"]
        assert [label for label, _ in got["texts"]] == [p["label"] for p in want]
        assert [score for _, score in got["texts"]] == pytest.approx(
            [p["scores"][p["label"]] for p in want], abs=1e-6
        )
        raw = http.post("/classify", json={"texts": "fun story", "return_logits": True}).json()
        best = raw["predictions"][0]["label"]
        assert got["top_k"] == [best, pytest.approx(raw["predictions"][0]["logits"][best])]
        intents = http.post("/classify", json={"texts": "fun story", "model": "intents"}).json()
        assert got["intents"][0] == intents["predictions"][0]["label"]
        assert got["no_token"] == 401

        batch = http.post("/predict", json={"inputs": [[t] for t in texts]})
        assert batch.status_code == 200, batch.text
        assert [answer[0]["label"] for answer in batch.json()] == [p["label"] for p in want]
        assert httpx.get(f"{server.url}/health").status_code == 200  # open, for probes
        assert http.get("/info").json()["model_id"] == "alpha"

        metrics = http.get("/metrics").text
    lines = metrics.splitlines()
    assert any(
        line.startswith('smallcls_requests_total{model="alpha",route="/",status="200"}')
        for line in lines
    )
    for model in ("alpha", "beta", "tags", "intents"):
        assert f'smallcls_queue_depth_texts{{model="{model}"}} 0.0' in lines
        assert any(
            line.startswith('smallcls_model_info{base_model="tests/fakes"')
            and f'model="{model}"' in line
            and line.endswith(" 1.0")
            for line in lines
        )
