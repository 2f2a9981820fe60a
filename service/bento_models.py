"""The store models a Bento carries: named when it is built, declared as `BentoModel`s.

BentoML 1.4 packs into a Bento the models its service class declares as
`bentoml.models.BentoModel` attributes. Which models those are is a build argument, so no code
changes between Bentos:

    bentoml build --arg models=minilm-int8:abc123,minilm-fp32     # or smallcls bento build

BentoML keeps the build arguments in the Bento (`bento.yaml`, `args`) and sets them again
before it imports the service from it (`bentoml serve <tag>`, a container, BentoCloud), so the
served Bento declares the same models and serves them with no SMALLCLS_MODELS set. When
SMALLCLS_MODELS or SMALLCLS_MODELS_FILE is set it wins over the Bento's models, and the
service logs a warning naming both lists (`override_warning`).

A reference is pinned to its exact store version when the service is imported, and a service
loaded from a built Bento serves the versions recorded in it (`packed_entries`): a model
registered under the same name after the build does not replace the one the Bento carries.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from core.manifest import MANIFEST_NAME
from service.settings import ENV_MODELS, ENV_MODELS_FILE, Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent  # where bentofile.yaml lies
ARGUMENT = "models"  # bentoml build --arg models=REF[,REF...]
# dir() lists class attributes sorted by name and BentoML collects models in that order:
# zero-padded numbers keep the order the user gave (the first model is the default one).
ATTRIBUTE_PREFIX = "packed_model_"
T = TypeVar("T")


class PackedModelError(InvalidArgument, ValueError):
    """A model named by the build arguments cannot be packed. A BentoMLException, so `bentoml
    build` and `bentoml serve` print its message as one line instead of a traceback, and a
    ValueError, as the project's own commands expect of bad input."""


class BentoArguments(BaseModel):
    """The arguments `bentoml build --arg KEY=VALUE` (or bentofile.yaml `args:`) may give."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # BentoML store references `name:version` (or `name`: the latest, pinned at build time).
    models: tuple[str, ...] = ()
    # Where the Bento's models run (core/devices.py). `cuda` (and `auto`) install
    # requirements/gpu.lock, onnxruntime-gpu instead of onnxruntime; `cuda` also asks the
    # scheduler for one GPU. SMALLCLS_DEVICE, when set, still wins when serving.
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    @field_validator(ARGUMENT, mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # From the command line the value is one string: `--arg models=a:v1,b:v2`.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


def read_arguments() -> BentoArguments:
    try:
        return bentoml.use_arguments(BentoArguments)
    except InvalidArgument as exc:
        cause = exc.__cause__
        detail = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in cause.errors())
            if isinstance(cause, ValidationError)
            else str(exc)
        )
        raise PackedModelError(
            f"bad Bento arguments ({detail}): the service takes "
            f"--arg {ARGUMENT}=NAME:VERSION[,NAME:VERSION...] (see `smallcls models list`) "
            "and --arg device=cpu|cuda|auto"
        ) from None


def resources(cpu_resources: dict[str, Any], device: str) -> dict[str, Any]:
    """What the service asks a scheduler for: its CPU share, and one GPU when built for CUDA."""
    return {**cpu_resources, "gpu": 1} if device == "cuda" else dict(cpu_resources)


def store_location() -> str:
    return os.environ.get("BENTOML_HOME", str(Path.home() / "bentoml"))


def pin(refs: Sequence[str]) -> tuple[str, ...]:
    """Each reference as the exact `name:version` of a smallcls model in the BentoML store.
    Raises PackedModelError naming the reference and what to do."""
    pinned: dict[str, str] = {}  # model name -> exact tag
    for ref in refs:
        try:
            stored = bentoml.models.get(ref)
        except NotFound:
            raise PackedModelError(
                f"model {ref!r} is not in the BentoML store "
                f"(BENTOML_HOME={store_location()}): register its directory with `smallcls models "
                "register DIR`, or pick one from `smallcls models list`"
            ) from None
        except (BentoMLException, ValueError) as exc:  # a malformed tag, e.g. "a:b:c"
            raise PackedModelError(
                f"model reference {ref!r} is not NAME or NAME:VERSION ({exc})"
            ) from None
        if not (Path(stored.path) / MANIFEST_NAME).is_file():
            raise PackedModelError(
                f"store model {stored.tag} has no {MANIFEST_NAME}, so it is no smallcls "
                "model: register a directory written by `smallcls export`"
            )
        name = stored.tag.name
        if name in pinned and pinned[name] != str(stored.tag):
            raise PackedModelError(
                f"two versions of {name!r} named ({pinned[name]} and {stored.tag}): a "
                "service serves one model per name"
            )
        pinned[name] = str(stored.tag)
    return tuple(pinned.values())


def declared_models() -> tuple[bentoml.models.BentoModel, ...]:
    """The models the build arguments name, pinned; () when none are named (a plain `bentoml
    serve service.service:Classifier`, tests importing the service)."""
    return tuple(bentoml.models.BentoModel(tag) for tag in pin(read_arguments().models))


def attach(models: Sequence[bentoml.models.BentoModel]) -> Callable[[type[T]], type[T]]:
    """Class decorator, under `@bentoml.service`: one class attribute per model, which is
    where BentoML looks for the models a service needs."""

    def decorate(cls: type[T]) -> type[T]:
        for index, model in enumerate(models):
            setattr(cls, f"{ATTRIBUTE_PREFIX}{index:03d}", model)
        return cls

    return decorate


def entries(models: Sequence[bentoml.models.BentoModel]) -> tuple[str, ...]:
    return tuple(str(model.tag) for model in models)


def packed_entries(service: Any) -> tuple[str, ...]:
    """The `name:version` of every model the service carries: as recorded in the Bento it was
    loaded from (BentoML sets `service.bento` before any worker starts the class), otherwise
    as declared at import."""
    bento = getattr(service, "bento", None)
    if bento is not None:
        for info in bento.info.services:
            if info.name == service.name:
                return tuple(str(model.tag) for model in info.models)
    return tuple(str(model.tag) for model in service.models)


def override_warning(settings: Settings, packed: Sequence[str]) -> str | None:
    """What to log when the environment names the models although the Bento carries some."""
    if not packed or settings.models_origin not in (ENV_MODELS, ENV_MODELS_FILE):
        return None
    return (
        f"{settings.models_origin} is set: serving {list(settings.models)} instead of the "
        f"models this Bento carries {list(packed)}; unset it to serve the Bento's models"
    )


def build_bento(
    refs: Sequence[str], *, device: str = "cpu", project_dir: Path = PROJECT_DIR
) -> str:
    """`bentoml build --arg models=...` of the project with the references pinned first (so a
    missing model is named before BentoML starts); returns the new Bento's tag. A subprocess:
    BentoML imports the service to build it, and an earlier import in this process would
    still hold the previous arguments' models."""
    if not refs:
        raise ValueError("name at least one store model to pack (see `smallcls models list`)")
    pinned = pin(refs)
    command = [
        *(sys.executable, "-m", "bentoml", "build", "."),
        *("--arg", f"{ARGUMENT}={','.join(pinned)}", "--output", "tag"),
        *(("--arg", f"device={device}") if device != "cpu" else ()),
    ]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    # BentoML reads the bentofile only inside the working directory.
    done = subprocess.run(
        command, cwd=project_dir, capture_output=True, text=True, env=env, check=False
    )
    # With `--output tag` BentoML prints one line `__tag__:name:version`.
    lines = done.stdout.splitlines()
    tags = [line.split("__tag__:", 1)[1].strip() for line in lines if "__tag__:" in line]
    if done.returncode != 0 or not tags:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"bentoml build failed (exit code {done.returncode}):\n{tail}")
    return tags[-1]
