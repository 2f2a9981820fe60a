"""A Bento that carries its models: registered in a private BENTOML_HOME, packed by `smallcls
bento build` (`bentoml build --arg models=...`), served by `bentoml serve <tag>` with no
SMALLCLS_MODELS, answering as the model directories themselves do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import make_tiny_model_dir

from service import bento_models
from service.bento_image import REQUIREMENTS
from service.launch import ServerProcess
from service.runtime import OnnxClassifier
from service.settings import ENV_MODELS, ENV_MODELS_FILE, ORIGIN_BENTO, Settings

# BentoML 1.4.40 reads its bento store with a pattern class pathspec deprecates: not this code's.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec.*")
REPO = Path(__file__).resolve().parents[1]
TEXTS = ["good movie", "awful boring plot", "loved it", "the actors"]


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """A command in its own process: BentoML reads BENTOML_HOME once per process."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for key in (ENV_MODELS, ENV_MODELS_FILE):
        env.pop(key, None)
    return subprocess.run(
        [*args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _smallcls(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "smallcls.cli", *args, home=home)


def _bentoml_json(*args: str, home: Path) -> Any:
    done = _run(sys.executable, "-m", "bentoml", *args, "-o", "json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _requirements(text: str) -> set[str]:
    """The requirements of a pip requirements file, each with its options (hashes) on one line,
    comments and layout dropped."""
    joined = re.sub(r"\\\n", " ", re.sub(r"#.*", "", text))
    return {" ".join(line.split()) for line in joined.splitlines() if line.strip()}


def _register(model_dir: Path, home: Path) -> str:
    done = _smallcls("models", "register", str(model_dir), home=home)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("registered: ")[1].split()[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private BENTOML_HOME (under the system's temp dir, outside the project) holding two
    registered model directories."""
    root = tmp_path_factory.mktemp("bento")
    home = root / "bentoml"
    dirs = {
        "alpha": make_tiny_model_dir(root / "alpha", name="alpha", seed=0),
        "beta": make_tiny_model_dir(
            root / "beta", name="beta", labels=("sports", "politics", "science"), seed=1
        ),
    }
    tags = {name: _register(path, home) for name, path in dirs.items()}
    return {"root": root, "home": home, "dirs": dirs, "tags": tags}


@pytest.fixture(scope="module")
def bento(store: dict[str, Any]) -> str:
    """BentoML's own command, the models named without versions (the latest, at build time)."""
    args = ("-m", "bentoml", "build", "--arg", "models=alpha,beta", "--output", "tag", ".")
    done = _run(sys.executable, *args, home=store["home"])
    assert done.returncode == 0, done.stderr
    return done.stdout.split("__tag__:")[1].split()[0]


@pytest.mark.slow
def test_the_bento_carries_its_models_pinned(store: dict[str, Any], bento: str) -> None:
    info = _bentoml_json("get", bento, home=store["home"])
    pinned = [store["tags"]["alpha"], store["tags"]["beta"]]
    assert [m["tag"] for m in info["services"][0]["models"]] == pinned  # in the order given
    assert info["args"] == {"models": "alpha,beta"}  # kept in the Bento, set again to serve it
    listed = {row["tag"]: row for row in _bentoml_json("list", home=store["home"])}
    number, unit = listed[bento]["model_size"].split()
    assert float(number) > 0 and unit in ("B", "KiB", "MiB"), listed[bento]
    stored = sum(
        f.stat().st_size for tag in pinned for f in store["dirs"][tag.split(":")[0]].iterdir()
    )
    assert float(number) * {"B": 1, "KiB": 1024, "MiB": 1024**2}[unit] >= 0.9 * stored


@pytest.mark.slow
def test_the_bento_installs_the_service_lock_and_declares_its_settings(
    store: dict[str, Any], bento: str
) -> None:
    name, version = bento.split(":")
    path = store["home"] / "bentos" / name / version
    lock = REQUIREMENTS.read_text(encoding="utf-8")
    installed = (path / "env" / "python" / "requirements.txt").read_text(encoding="utf-8")
    # Every pin of the lock with its hashes, nothing re-resolved; BentoML adds its own pin
    # (without hashes, which uv accepts next to the hashed one).
    assert _requirements(installed) == _requirements(lock) | {"bentoml==1.4.40"}
    assert not {r.split("==")[0] for r in _requirements(installed)} & {"torch", "scikit-learn"}
    assert (path / "src" / "requirements" / "service.lock").read_text(encoding="utf-8") == lock
    info = _bentoml_json("get", bento, home=store["home"])
    assert info["image"]["python_version"] == "3.11"
    config = info["services"][0]["config"]
    assert config["resources"] == {"cpu": "1"} and config["workers"] == 1
    assert config["traffic"]["timeout"] == 60
    assert {"name": "SMALLCLS_REQUIRE_AUTH", "value": "true", "stage": "all"} in info["envs"]


@pytest.mark.slow
def test_smallcls_bento_build_pins_the_references(store: dict[str, Any]) -> None:
    done = _smallcls(
        "bento", "build", "--models", "beta", store["tags"]["alpha"], home=store["home"]
    )
    assert done.returncode == 0, done.stderr
    tag = done.stdout.split("bento: ")[1].split()[0]
    pinned = [store["tags"]["beta"], store["tags"]["alpha"]]
    assert done.stdout.split("\n")[1:3] == [f"model: {t}" for t in pinned]
    info = _bentoml_json("get", tag, home=store["home"])
    assert info["args"] == {"models": ",".join(pinned)}
    assert [m["tag"] for m in info["services"][0]["models"]] == pinned


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bentoml", "smallcls"])
def test_a_build_naming_a_model_not_in_the_store_fails_clearly(
    store: dict[str, Any], how: str
) -> None:
    before = _bentoml_json("list", home=store["home"])
    if how == "bentoml":
        args = ("-m", "bentoml", "build", "--arg", "models=alpha,gamma:v1", ".")
        done = _run(sys.executable, *args, home=store["home"])
        assert done.returncode == 1
    else:
        done = _smallcls("bento", "build", "--models", "alpha", "gamma:v1", home=store["home"])
        assert done.returncode == 1  # the command failed; 2 is for bad usage
    message = done.stdout + done.stderr
    assert "model 'gamma:v1' is not in the BentoML store" in message, message
    assert "smallcls models register" in message
    assert "Traceback" not in message
    assert _bentoml_json("list", home=store["home"]) == before  # no Bento was written


@pytest.fixture(scope="module")
def served(store: dict[str, Any], bento: str) -> Iterator[tuple[ServerProcess, str]]:
    """The Bento exported as one file and imported into a BENTOML_HOME that never saw the model
    directories, as a deployment receives it; a newer `alpha` registered there too. Served by
    `bentoml serve <tag>` with neither SMALLCLS_MODELS nor a models file."""
    archive = store["root"] / "classifier.bento"
    done = _run(sys.executable, "-m", "bentoml", "export", bento, str(archive), home=store["home"])
    assert done.returncode == 0, done.stderr
    home = store["root"] / "deployed"
    done = _run(sys.executable, "-m", "bentoml", "import", str(archive), home=home)
    assert done.returncode == 0, done.stderr
    newer = make_tiny_model_dir(store["root"] / "alpha-newer", name="alpha", seed=7)
    newer_tag = _register(newer, home)
    assert newer_tag != store["tags"]["alpha"]
    server = ServerProcess(
        [],
        bento=bento,
        extra_env={"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        log_path=store["root"] / "serve.log",
    )
    assert ENV_MODELS not in server.env and ENV_MODELS_FILE not in server.env
    with server:
        yield server, newer_tag


@pytest.mark.slow
@pytest.mark.integration
def test_the_served_bento_answers_as_its_model_directories(
    store: dict[str, Any], served: tuple[ServerProcess, str]
) -> None:
    server, newer_tag = served  # the Bento must still serve the `alpha` it carries
    with httpx.Client(base_url=server.url, timeout=30) as http:
        listed = http.get("/models").json()
        assert listed["default"] == "alpha"  # the first model named at build time
        assert [m["source"] for m in listed["models"]] == [
            store["tags"]["alpha"],
            store["tags"]["beta"],
        ]
        for name, model_dir in store["dirs"].items():
            resp = http.post("/classify", json={"texts": TEXTS, "model": name})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["version"] == store["tags"][name].split(":")[1]
            want = OnnxClassifier(model_dir).predict(TEXTS)
            for got, expected in zip(body["predictions"], want, strict=True):
                assert got["label"] == expected.label
                assert got["scores"] == pytest.approx(expected.scores, abs=1e-6)
    assert newer_tag.split(":")[1] not in server.log_tail(200)
    assert f"(from {ORIGIN_BENTO})" in server.log_tail(200)


def test_the_environment_wins_over_the_bento_and_says_so(tmp_path: Path) -> None:
    packed = ("alpha:v1", "beta:v2")
    assert Settings.from_env({}, packed=packed).models == packed
    assert Settings.from_env({}, packed=packed).models_origin == ORIGIN_BENTO
    assert Settings.from_env({ENV_MODELS: " "}, packed=packed).models == packed  # blank: unset
    chosen = Settings.from_env({ENV_MODELS: "/models/gamma"}, packed=packed)
    assert (chosen.models, chosen.models_origin) == (("/models/gamma",), ENV_MODELS)
    warning = bento_models.override_warning(chosen, packed)
    assert warning is not None
    assert "SMALLCLS_MODELS is set: serving ['/models/gamma']" in warning
    assert "['alpha:v1', 'beta:v2']" in warning
    models_file = tmp_path / "models.txt"
    models_file.write_text("delta:v3\n")
    from_file = Settings.from_env({ENV_MODELS_FILE: str(models_file)}, packed=packed)
    assert (from_file.models, from_file.models_origin) == (("delta:v3",), ENV_MODELS_FILE)
    assert "SMALLCLS_MODELS_FILE is set" in (bento_models.override_warning(from_file, packed) or "")
    assert bento_models.override_warning(Settings.from_env({}, packed=packed), packed) is None
    assert bento_models.override_warning(chosen, ()) is None  # no Bento: nothing overridden
    with pytest.raises(ValueError, match=r"SMALLCLS_MODELS is not set.*--arg models="):
        Settings.from_env({})


@pytest.mark.slow
def test_a_service_loaded_from_a_bento_serves_the_versions_recorded_in_it(
    store: dict[str, Any], bento: str
) -> None:
    from bentoml._internal.bento import BentoStore

    loaded = BentoStore(str(store["home"] / "bentos")).get(bento)
    service = types.SimpleNamespace(name="Classifier", bento=loaded, models=[])
    assert bento_models.packed_entries(service) == (store["tags"]["alpha"], store["tags"]["beta"])
    declared = types.SimpleNamespace(name="Classifier", bento=None, models=[])
    assert bento_models.packed_entries(declared) == ()


@pytest.mark.parametrize(
    ("arguments", "models", "message"),
    [
        ({}, (), None),
        ({"models": "a:v1, b"}, ("a:v1", "b"), None),
        ({"models": ["a:v1", "b"]}, ("a:v1", "b"), None),
        ({"model": "a"}, None, r"bad Bento arguments \(model: Extra inputs.*--arg models="),
    ],
)
def test_build_arguments_name_the_models(
    arguments: dict[str, Any], models: tuple[str, ...] | None, message: str | None
) -> None:
    from bentoml._internal.utils.args import set_arguments

    set_arguments(arguments)
    try:
        if message is None:
            assert bento_models.read_arguments().models == models
        else:
            with pytest.raises(bento_models.PackedModelError, match=message):
                bento_models.read_arguments()
    finally:
        set_arguments({})


@pytest.mark.slow
def test_the_gpu_bento_installs_onnxruntime_gpu_asks_for_a_gpu_and_refuses_cpu_only_hosts(
    store: dict[str, Any],
) -> None:
    from core import devices

    done = _smallcls("bento", "build", "--models", "alpha", "--device", "cuda", home=store["home"])
    assert done.returncode == 0, done.stderr
    tag = done.stdout.split("bento: ")[1].split()[0]
    name, version = tag.split(":")
    installed = store["home"] / "bentos" / name / version / "env" / "python" / "requirements.txt"
    pins = {r.split("==")[0] for r in _requirements(installed.read_text(encoding="utf-8"))}
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins  # never both
    info = _bentoml_json("get", tag, home=store["home"])
    assert info["services"][0]["config"]["resources"] == {"cpu": "1", "gpu": 1}
    assert info["args"]["device"] == "cuda"
    if devices.cuda_provider_available():
        return  # a GPU host: serving it is the GPU check's job
    # Served where onnxruntime has no CUDA: the server stops at once with what is missing.
    served = _run(sys.executable, "-m", "bentoml", "serve", tag, "--port", "0", home=store["home"])
    assert served.returncode == 1
    assert "device cuda:" in served.stderr and "Traceback" not in served.stderr
