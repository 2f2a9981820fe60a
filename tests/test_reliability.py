"""Hostile input, model integrity and security against a real `bentoml serve` (the
fast part; the long part, overload and soak, is bench/reliability.py).

One server with auth on serves two tiny models for the whole module: the schema fuzzer and
the hand-made hostile requests (bench/hostile.py) run against it, then its log is searched
for the token and the texts sent. Servers that must refuse to start get their own.
"""

from __future__ import annotations

import hmac
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import make_tiny_model_dir
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

with warnings.catch_warnings():  # starlette asks for `httpx2`; httpx works (test_service.py)
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from bench import hostile
from service import gateway
from service.launch import ServerProcess

TOKEN = "tok-7f3a9c2e51d84b6f"  # distinctive, so a leak into the log is found by search
SECRET_TEXT = "zebra-quokka-4417 private note"  # a text no log line should ever hold
BODY_TIMEOUT_S = 2
FUZZ_EXAMPLES = 1000  # ~10-20 s on 2 busy cores with the tiny models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "alpha": make_tiny_model_dir(root / "alpha", name="alpha", seed=0),
        "tags": make_tiny_model_dir(
            root / "tags",
            name="tags",
            labels=("funny", "sad", "long"),
            problem_type="multi_label",
            thresholds=(0.3, 0.6, 0.9),
            seed=2,
        ),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("server")
    env = {
        "BENTOML_HOME": str(tmp / "bentoml"),
        "SMALLCLS_AUTH_TOKEN": TOKEN,
        "SMALLCLS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with ServerProcess(list(models.values()), extra_env=env, log_path=tmp / "server.log") as s:
        yield s


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# ---- hostile input -----------------------------------------------------------------------


@pytest.mark.integration
def test_schema_fuzzing_finds_no_server_error(server: ServerProcess) -> None:
    result = hostile.fuzz_schema(server.url, TOKEN, max_examples=FUZZ_EXAMPLES)
    print(f"\nschemathesis: {result}")
    assert result["cases"] >= FUZZ_EXAMPLES
    assert result["server_errors"] == 0, result["failures"]
    # Valid bodies reached the models, not only the request checks.
    assert result["statuses"].get("200", 0) > FUZZ_EXAMPLES // 10
    assert httpx.get(f"{server.url}/readyz").status_code == 200


@pytest.mark.integration
def test_hostile_inputs_get_client_errors_and_memory_returns(server: ServerProcess) -> None:
    assert server.process is not None
    rows = hostile.hostile_inputs(server.url, TOKEN, server.process.pid, slow_seconds=5)
    print("\n" + hostile.format_table(None, rows))
    assert [r for r in rows if not r["ok"]] == []
    by_case = {r["case"]: r for r in rows}
    assert by_case["10,000 texts in one call"]["status"] == 400
    assert by_case["10 MB body (Content-Length)"]["status"] == 413
    slow = next(r for r in rows if r["case"].startswith("slow body"))
    assert slow["status"] == 408, slow  # cut off at SMALLCLS_BODY_TIMEOUT_S
    assert "memory back to baseline" in by_case


@pytest.mark.integration
def test_no_model_is_loaded_from_a_request(server: ServerProcess, models: dict[str, Path]) -> None:
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as http:
        before = http.get("/models").json()
        for name in ("../../etc/passwd", str(models["alpha"]), str(models["alpha"]) + "/"):
            resp = http.post("/classify", json={"texts": ["fun"], "model": name})
            assert (resp.status_code, resp.json()["field"]) == (404, "model")
        assert http.get("/models").json() == before


# ---- model integrity ---------------------------------------------------------------------


def tampered_copy(root: Path, name: str = "tampered") -> Path:
    model = make_tiny_model_dir(root / name, name=name)
    with open(model / "model.onnx", "ab") as handle:
        handle.write(b"\0")  # one byte more: the manifest's sha256 no longer matches
    return model


def refused_start(models: list[Path], tmp_path: Path, **env: str) -> tuple[str, float]:
    """Start a server that must refuse; returns (its error, seconds until it exited)."""
    server = ServerProcess(
        models,
        extra_env={"BENTOML_HOME": str(tmp_path / "bentoml"), **env},
        log_path=tmp_path / "server.log",
        startup_timeout=60,
        stop_grace=3,
    )
    started = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        server.start()
    seconds = time.perf_counter() - started
    assert server.process is None  # stopped, nothing left running
    return str(info.value), seconds


@pytest.mark.integration
def test_a_tampered_model_is_refused_at_start_quickly(
    models: dict[str, Path], tmp_path: Path
) -> None:
    error, seconds = refused_start([models["alpha"], tampered_copy(tmp_path)], tmp_path)
    print(f"\ntampered model refused at start in {seconds:.1f} s")
    assert "exited with code 1" in error  # the server exits; no worker restart loop
    assert "model.onnx has sha256" in error and "re-export it" in error
    assert seconds < 30


@pytest.mark.integration
def test_a_missing_model_dir_fails_fast_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "minilm-int8"
    error, seconds = refused_start([missing], tmp_path)
    print(f"\nmissing model dir refused at start in {seconds:.1f} s")
    assert "exited with code 1" in error
    assert f"model directory {missing} not found" in error
    assert "smallcls export" in error  # what to do
    assert seconds < 30


@pytest.mark.integration
def test_required_auth_without_a_token_refuses_to_start(
    models: dict[str, Path], tmp_path: Path
) -> None:
    error, _ = refused_start([models["alpha"]], tmp_path, SMALLCLS_REQUIRE_AUTH="true")
    assert "SMALLCLS_REQUIRE_AUTH=true but no token is set" in error


@pytest.mark.integration
def test_a_tampered_model_is_refused_at_reload_and_the_old_ones_keep_serving(
    server: ServerProcess, models: dict[str, Path], tmp_path: Path
) -> None:
    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as http:
        before = http.get("/models").json()
        started = time.perf_counter()
        resp = http.post(
            "/admin/models", json={"models": [str(models["alpha"]), str(tampered_copy(tmp_path))]}
        )
        print(f"\ntampered model refused at reload in {time.perf_counter() - started:.2f} s")
        assert resp.status_code == 422, resp.text
        assert "sha256" in resp.json()["error"]
        assert http.get("/models").json() == before
        ok = http.post("/classify", json={"texts": ["fun"], "model": "tags"})
        assert ok.status_code == 200, ok.text


# ---- security ----------------------------------------------------------------------------


def gateway_client(token: bytes) -> TestClient:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    gateway.CONFIG.auth_token = token
    return TestClient(gateway.Gateway(Starlette(routes=[Route("/x", hello)])))


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(gateway.hmac, "compare_digest", spy)
    monkeypatch.setattr(gateway.CONFIG, "auth_token", None)
    client = gateway_client(b"right-token")
    same_length = client.get("/x", headers={"Authorization": "Bearer wrong-token"})
    other_length = client.get("/x", headers={"Authorization": "Bearer w"})
    assert (same_length.status_code, other_length.status_code) == (401, 401)
    assert client.get("/x", headers={"Authorization": "Bearer right-token"}).status_code == 200
    # Every check went through compare_digest, the short token included.
    assert calls == [
        (b"wrong-token", b"right-token"),
        (b"w", b"right-token"),
        (b"right-token", b"right-token"),
    ]
    assert client.get("/x").status_code == 401  # no header: refused without comparing


@pytest.mark.integration
def test_logs_hold_neither_the_token_nor_request_texts(server: ServerProcess) -> None:
    """After every request above (fuzzing included) and a few more that fail in each way,
    the server's whole log (stdout and stderr) holds neither the token nor a text sent."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/classify", json={"texts": [SECRET_TEXT]}, headers=auth()).is_success
        for body, headers in [
            ({"texts": [SECRET_TEXT]}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}),  # wrong
            ({"texts": [SECRET_TEXT]}, {}),  # no token
            ({"texts": [SECRET_TEXT], "top_k": "many"}, auth()),  # 400
            ({"texts": [SECRET_TEXT], "model": SECRET_TEXT}, auth()),  # 404
            ({"texts": [SECRET_TEXT * 100]}, auth()),  # 413
        ]:
            assert 400 <= http.post("/classify", json=body, headers=headers).status_code < 500
        bad_json = b'{"texts": ["' + SECRET_TEXT.encode() + b'"'  # cut short
        assert http.post("/classify", content=bad_json, headers=auth()).status_code == 400
        resp = http.post("/admin/models", json={"models": [SECRET_TEXT]}, headers=auth())
        assert resp.status_code == 422
    time.sleep(0.5)  # let the log lines reach the file
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "auth on" in log  # the startup line says so
    assert TOKEN not in log
    assert TOKEN[:-1] not in log
    assert SECRET_TEXT not in log
    assert "Traceback" not in log, log[-3000:]


def test_security_settings_are_validated() -> None:
    from service.settings import Settings

    base = {"SMALLCLS_MODELS": "m"}
    with pytest.raises(ValueError, match="SMALLCLS_REQUIRE_AUTH=true but no token is set"):
        Settings.from_env({**base, "SMALLCLS_REQUIRE_AUTH": "true"})
    closed = Settings.from_env({**base, "SMALLCLS_REQUIRE_AUTH": "1", "SMALLCLS_AUTH_TOKEN": "t"})
    assert closed.require_auth and closed.auth_token == "t"
    assert "'t'" not in repr(closed)  # the token stays out of any log of the settings
    assert Settings.from_env(base).body_timeout_s == 10.0
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        Settings.from_env({**base, "SMALLCLS_BODY_TIMEOUT_S": "0"})


def test_the_bento_requires_auth() -> None:
    import yaml

    bentofile = yaml.safe_load((Path(__file__).resolve().parents[1] / "bentofile.yaml").read_text())
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs["SMALLCLS_REQUIRE_AUTH"] == "true"
    assert bentofile["envs"][0].get("stage", "all") != "runtime"  # runtime-only: not in the image


def test_the_bento_carries_the_measured_production_settings() -> None:
    import yaml

    from bench.reliability import PRODUCTION_ENV

    bentofile = yaml.safe_load((Path(__file__).resolve().parents[1] / "bentofile.yaml").read_text())
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert {k: envs.get(k) for k in PRODUCTION_ENV} == PRODUCTION_ENV
