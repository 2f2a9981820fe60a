"""The service's settings, read from environment variables in this one place and validated."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from core import devices
from service.admission import AdmissionSettings

ENV_MODELS = "SMALLCLS_MODELS"
ENV_MODELS_FILE = "SMALLCLS_MODELS_FILE"
ENV_DEFAULT_MODEL = "SMALLCLS_DEFAULT_MODEL"
ENV_THREADS = "SMALLCLS_THREADS"
ENV_DEVICE = "SMALLCLS_DEVICE"  # cpu, cuda or auto (core/devices.py)
ENV_MAX_TEXTS = "SMALLCLS_MAX_TEXTS"
ENV_MAX_CHARS = "SMALLCLS_MAX_CHARS"
ENV_MAX_BODY_BYTES = "SMALLCLS_MAX_BODY_BYTES"
ENV_BODY_TIMEOUT_S = "SMALLCLS_BODY_TIMEOUT_S"
ENV_MAX_BATCH_SIZE = "SMALLCLS_MAX_BATCH_SIZE"
ENV_MAX_LATENCY_MS = "SMALLCLS_MAX_LATENCY_MS"
ENV_BATCH_WAIT_MS = "SMALLCLS_BATCH_WAIT_MS"
ENV_MAX_QUEUE = "SMALLCLS_MAX_QUEUE"
ENV_MODEL_THREAD_NICE = "SMALLCLS_MODEL_THREAD_NICE"
ENV_MODEL_LANES = "SMALLCLS_MODEL_LANES"
ENV_MAX_BATCH_TOKENS = "SMALLCLS_MAX_BATCH_TOKENS"
ENV_MAX_BATCH_MS = "SMALLCLS_MAX_BATCH_MS"
ENV_MODEL_BATCHING = "SMALLCLS_MODEL_BATCHING"
ENV_AUTH_TOKEN = "SMALLCLS_AUTH_TOKEN"
ENV_AUTH_TOKEN_FILE = "SMALLCLS_AUTH_TOKEN_FILE"
ENV_REQUIRE_AUTH = "SMALLCLS_REQUIRE_AUTH"
ENV_MAX_REQUESTS_PER_CONNECTION = "SMALLCLS_MAX_REQUESTS_PER_CONNECTION"
ENV_WORKERS = "SMALLCLS_WORKERS"
ENV_MAX_CONCURRENCY = "SMALLCLS_MAX_CONCURRENCY"
ENV_TIMEOUT_S = "SMALLCLS_TIMEOUT_S"
ENV_RELOAD_POLL_S = "SMALLCLS_RELOAD_POLL_S"
ENV_ACCESS_LOG = "SMALLCLS_ACCESS_LOG"
ENV_TRACE_CLASSIFY = "SMALLCLS_TRACE_CLASSIFY"
ENV_ORT_SPINNING = "SMALLCLS_ORT_SPINNING"
ENV_ADMISSION = "SMALLCLS_ADMISSION"
ENV_QUEUE_TARGET_MS = "SMALLCLS_QUEUE_TARGET_MS"
ENV_QUEUE_INTERVAL_MS = "SMALLCLS_QUEUE_INTERVAL_MS"
ENV_OVERLOAD_MAX_WAIT_MS = "SMALLCLS_OVERLOAD_MAX_WAIT_MS"
# Read when the service module is imported, before uvicorn starts (service/http_protocol.py).
ENV_HTTP_PARSER = "SMALLCLS_HTTP_PARSER"
# Settings.models_origin when the models are the store models a Bento carries, named by
# `bentoml build --arg models=...` (or `bentoml serve service.service:Classifier --arg ...`).
ORIGIN_BENTO = "--arg models"


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false"):
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true")


def _non_negative_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number >= 0, got {raw!r}") from None
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def split_model_entries(raw: str) -> tuple[str, ...]:
    """Model entries separated by ',' (or by os.pathsep, the older form): each a model
    directory or a BentoML store reference `name:version`. A ':' is kept inside an entry when
    the entry is not a list of existing directories, so `minilm:abc123` stays one reference."""
    entries: list[str] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        pieces = [p for p in part.split(os.pathsep) if p.strip()]
        if len(pieces) > 1 and all(Path(p).is_dir() or "/" in p for p in pieces):
            entries.extend(pieces)
        else:
            entries.append(part)
    return tuple(entries)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingSettings:
    """How texts from concurrent requests are merged into one onnxruntime call, per model."""

    max_batch_size: int = 32  # texts per model call; more queued texts wait for the next call
    # Padded tokens per batch (texts x the longest one's tokens), as Text Embeddings
    # Inference's max_batch_tokens; 0: no bound. Counting costs ~40 us per text on the event
    # loop, so it is done only when this is set. A request over it alone still runs alone.
    max_batch_tokens: int = 0
    # Model time per batch: no more texts than the measured time per text lets finish within
    # it (service/batching.py BatchTimeLimit); 0: no bound. Every request that arrives while
    # a batch runs waits for all of it, so this bounds that wait on any CPU.
    max_batch_ms: float = 0.0
    # A text that waited longer than this in the queue before its batch started is answered
    # 503 (overloaded) instead of making every later request slower still.
    max_latency_ms: int = 1000
    # Extra wait to fill a batch once the first text arrived. 0: a batch starts as soon as
    # the model is free, and texts that arrive while it runs form the next batch (batches
    # grow with load by themselves, and a lone request pays no wait).
    batch_wait_ms: float = 0.0
    max_queue: int = 256  # texts waiting per model; beyond it requests get 503 at once
    # Niceness (0-19) of the thread that runs the model, relative to the event loop's 0: a
    # loaded worker's model thread would otherwise take the CPU the event loop needs to read,
    # admit and refuse requests, and every answer and refusal would wait for it.
    thread_nice: int = 0
    # Batches of one model that may run at once, each in its own thread, all taking from the
    # one queue. 1: a batch at a time. More lanes turn a worker's single server into a pool
    # (a request waits only while every lane is busy, not behind one long batch), at the
    # price of batches sharing the cores; each ORT call keeps its own intra-op threads.
    lanes: int = 1

    def __post_init__(self) -> None:
        for field in ("max_batch_size", "max_latency_ms", "max_queue", "lanes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        for field in ("batch_wait_ms", "max_batch_ms"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens must be >= 0, got {self.max_batch_tokens}")
        if not 0 <= self.thread_nice <= 19:
            raise ValueError(f"thread_nice must be in 0..19, got {self.thread_nice}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BatchingSettings:
        env = os.environ if environ is None else environ
        return cls(
            max_batch_size=_positive_int(env, ENV_MAX_BATCH_SIZE, cls.max_batch_size),
            max_latency_ms=_positive_int(env, ENV_MAX_LATENCY_MS, cls.max_latency_ms),
            batch_wait_ms=_non_negative_float(env, ENV_BATCH_WAIT_MS, cls.batch_wait_ms),
            max_queue=_positive_int(env, ENV_MAX_QUEUE, cls.max_queue),
            thread_nice=_int(env, ENV_MODEL_THREAD_NICE, cls.thread_nice),
            lanes=_positive_int(env, ENV_MODEL_LANES, cls.lanes),
            max_batch_tokens=_int(env, ENV_MAX_BATCH_TOKENS, cls.max_batch_tokens),
            max_batch_ms=_non_negative_float(env, ENV_MAX_BATCH_MS, cls.max_batch_ms),
        )


def per_model_batching(
    environ: Mapping[str, str], default: BatchingSettings
) -> dict[str, BatchingSettings]:
    """SMALLCLS_MODEL_BATCHING='{"minilm-int8": {"max_batch_size": 16}}': per-model overrides
    of the defaults, since the best batch size differs between a 22M and a 135M model."""
    raw = environ.get(ENV_MODEL_BATCHING, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_MODEL_BATCHING} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        example = '{"<model>": {"max_batch_size": 16}}'
        raise ValueError(f"{ENV_MODEL_BATCHING} must look like {example}")
    known = {f.name for f in dataclasses.fields(BatchingSettings)}
    out = {}
    for name, overrides in data.items():
        if unknown := sorted(set(overrides) - known):
            raise ValueError(
                f"{ENV_MODEL_BATCHING}[{name!r}] has unknown keys {unknown}; known: {sorted(known)}"
            )
        out[name] = dataclasses.replace(default, **overrides)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """What BentoML reads when the service class is defined (at import, also during `bentoml
    build`), where no model directories need to be configured."""

    workers: int = 1  # processes serving the API; each loads every model and batches alone
    threads: int = 1  # onnxruntime intra-op threads per model (Settings.threads, same variable)
    max_concurrency: int | None = None  # requests in flight per service; beyond: 429 at once
    timeout_s: int = 60
    # One log line per request costs CPU the model could use; the metrics count requests.
    access_log: bool = False
    # An OpenTelemetry span per classify request costs CPU too, recorded or not
    # (service/tracing.py); on when a tracing exporter is configured.
    trace_classify: bool = False

    @property
    def resources(self) -> dict[str, str]:
        """What the service asks a scheduler for (BentoCloud picks the instance by it): one
        core per onnxruntime thread in each worker, the cores a loaded worker keeps busy."""
        return {"cpu": str(self.workers * self.threads)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        concurrency = env.get(ENV_MAX_CONCURRENCY, "").strip()
        return cls(
            access_log=_flag(env, ENV_ACCESS_LOG, cls.access_log),
            trace_classify=_flag(env, ENV_TRACE_CLASSIFY, cls.trace_classify),
            workers=_positive_int(env, ENV_WORKERS, cls.workers),
            threads=_positive_int(env, ENV_THREADS, cls.threads),
            max_concurrency=_positive_int(env, ENV_MAX_CONCURRENCY, 1) if concurrency else None,
            timeout_s=_positive_int(env, ENV_TIMEOUT_S, cls.timeout_s),
        )


def read_auth_token(environ: Mapping[str, str]) -> str | None:
    token = environ.get(ENV_AUTH_TOKEN, "").strip()
    token_file = environ.get(ENV_AUTH_TOKEN_FILE, "").strip()
    if token and token_file:
        raise ValueError(f"set {ENV_AUTH_TOKEN} or {ENV_AUTH_TOKEN_FILE}, not both")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{ENV_AUTH_TOKEN_FILE}: cannot read {token_file}: {exc}") from None
        if not token:
            raise ValueError(f"{ENV_AUTH_TOKEN_FILE}: {token_file} is empty")
    return token or None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    # Directories or BentoML store references (`name:version`); see `split_model_entries`.
    models: tuple[str, ...]
    # Where `models` came from: ENV_MODELS_FILE, ENV_MODELS, or ORIGIN_BENTO (the store models
    # a built Bento carries, used only when neither variable is set; service/bento_models.py).
    models_origin: str = ENV_MODELS
    # When set, the model list is read from this file (one entry per line) instead of
    # SMALLCLS_MODELS, and every worker reloads when it changes: the way to swap models in a
    # service with several workers.
    models_file: Path | None = None
    default_model: str | None = None  # None: the first model's manifest name
    threads: int = 1  # onnxruntime intra-op threads per model
    # Where every model runs: cpu, cuda, or auto (CUDA when this onnxruntime can use it).
    # A CUDA request that cannot be met stops the server at start (core/devices.py).
    device: str = "cpu"
    ort_spinning: bool = False  # let idle ORT threads spin (see service/runtime.py)
    max_texts: int = 64  # per request
    max_chars: int = 2000  # per text, counted in characters before tokenization
    max_body_bytes: int = 1 << 20  # per request body, refused before it is read
    # The whole body must arrive within this (408 otherwise): a client trickling bytes
    # (slowloris) would otherwise hold a connection and a request slot indefinitely. 1 MiB
    # at 1 Mbit/s takes 8 s.
    body_timeout_s: float = 10.0
    # After this many requests on one keep-alive connection the answer says `Connection:
    # close` and the client reconnects (0: never). Workers accept connections from a shared
    # socket and keep them for good, so without it one worker can hold most clients while the
    # other idles, and a worker that replaced a killed one gets no traffic (bench/reliability.py).
    max_requests_per_connection: int = 0
    auth_token: str | None = dataclasses.field(default=None, repr=False)
    # Production sets this (the Bento does, in bentofile.yaml): a service that should be
    # closed but was started without a token refuses to start instead of serving openly.
    require_auth: bool = False
    reload_poll_s: float = 2.0  # how often each worker looks at models_file
    batching: BatchingSettings = dataclasses.field(default_factory=BatchingSettings)
    model_batching: dict[str, BatchingSettings] = dataclasses.field(default_factory=dict)
    # When to refuse requests at the door (service/admission.py): a queue delay standing
    # above target for an interval.
    admission: AdmissionSettings = dataclasses.field(default_factory=AdmissionSettings)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model directory or store reference")
        for field in ("threads", "max_texts", "max_chars", "max_body_bytes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        devices.check_device(self.device)
        if self.require_auth and not self.auth_token:
            raise ValueError(
                f"{ENV_REQUIRE_AUTH}=true but no token is set: set {ENV_AUTH_TOKEN} or "
                f"{ENV_AUTH_TOKEN_FILE} (a mounted secret), or {ENV_REQUIRE_AUTH}=false for "
                "an open service on a trusted network"
            )
        if self.max_requests_per_connection < 0:
            raise ValueError(
                f"max_requests_per_connection must be >= 0, got {self.max_requests_per_connection}"
            )
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        """The entries as paths (older callers; store references are not resolved here)."""
        return tuple(Path(m) for m in self.models)

    def batching_for(self, model: str) -> BatchingSettings:
        return self.model_batching.get(model, self.batching)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        packed: Sequence[str] = (),
        device: str | None = None,
    ) -> Settings:
        """`packed`: the models a built Bento carries, served when neither SMALLCLS_MODELS_FILE
        nor SMALLCLS_MODELS is set (the environment wins: one Bento, other models on a volume).
        `device`: the Bento's device, used when SMALLCLS_DEVICE is not set."""
        env = os.environ if environ is None else environ
        models_file = env.get(ENV_MODELS_FILE, "").strip()
        if models_file:
            models, origin = read_models_file(Path(models_file)), ENV_MODELS_FILE
        elif env.get(ENV_MODELS, "").strip() or not packed:
            models, origin = split_model_entries(env.get(ENV_MODELS, "")), ENV_MODELS
        else:
            models, origin = tuple(packed), ORIGIN_BENTO
        if not models:
            where = (
                models_file
                if models_file
                else f"{ENV_MODELS} is {'empty' if ENV_MODELS in env else 'not set'}"
            )
            raise ValueError(
                f"{where}: set {ENV_MODELS} to one or more model directories written by "
                "`smallcls export` or BentoML store references (name:version), separated by ',', "
                "or serve a Bento built with them (`bentoml build --arg models=NAME:VERSION`)"
            )
        batching = BatchingSettings.from_env(env)
        return cls(
            models=models,
            models_origin=origin,
            models_file=Path(models_file) if models_file else None,
            default_model=env.get(ENV_DEFAULT_MODEL, "").strip() or None,
            threads=_positive_int(env, ENV_THREADS, cls.threads),
            device=env.get(ENV_DEVICE, "").strip() or device or cls.device,
            ort_spinning=_flag(env, ENV_ORT_SPINNING, cls.ort_spinning),
            max_texts=_positive_int(env, ENV_MAX_TEXTS, cls.max_texts),
            max_chars=_positive_int(env, ENV_MAX_CHARS, cls.max_chars),
            max_body_bytes=_positive_int(env, ENV_MAX_BODY_BYTES, cls.max_body_bytes),
            body_timeout_s=_non_negative_float(env, ENV_BODY_TIMEOUT_S, cls.body_timeout_s),
            max_requests_per_connection=(
                _positive_int(env, ENV_MAX_REQUESTS_PER_CONNECTION, 1)
                if env.get(ENV_MAX_REQUESTS_PER_CONNECTION, "").strip() not in ("", "0")
                else 0
            ),
            auth_token=read_auth_token(env),
            require_auth=_flag(env, ENV_REQUIRE_AUTH, cls.require_auth),
            reload_poll_s=_non_negative_float(env, ENV_RELOAD_POLL_S, cls.reload_poll_s),
            batching=batching,
            model_batching=per_model_batching(env, batching),
            admission=admission_from_env(env),
        )


def admission_from_env(env: Mapping[str, str]) -> AdmissionSettings:
    default = AdmissionSettings()
    target = _non_negative_float(env, ENV_QUEUE_TARGET_MS, default.target_ms)
    interval = _non_negative_float(env, ENV_QUEUE_INTERVAL_MS, default.interval_ms)
    max_wait = _non_negative_float(env, ENV_OVERLOAD_MAX_WAIT_MS, default.overload_max_wait_ms)
    for name, value in (
        (ENV_QUEUE_TARGET_MS, target),
        (ENV_QUEUE_INTERVAL_MS, interval),
        (ENV_OVERLOAD_MAX_WAIT_MS, max_wait),
    ):
        if value == 0:
            raise ValueError(f"{name} must be > 0 ms, got {value:g}")
    return AdmissionSettings(
        target_ms=target,
        interval_ms=interval,
        overload_max_wait_ms=max_wait,
        enabled=_flag(env, ENV_ADMISSION, default.enabled),
    )


def read_models_file(path: Path) -> tuple[str, ...]:
    """One model entry per line; blank lines and '#' comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{ENV_MODELS_FILE}: cannot read {path}: {exc}") from None
    return tuple(s for line in lines if (s := line.split("#", 1)[0].strip()))


def write_models_file(path: Path, models: tuple[str, ...] | list[str]) -> None:
    """Atomically (write + rename), so a worker polling it never reads half a list."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{m}\n" for m in models), encoding="utf-8")
    os.replace(tmp, path)
