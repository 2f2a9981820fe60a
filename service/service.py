"""The BentoML service: `/classify` over several ONNX models, batched in-process per model.

One service, one process per worker: the API validates a request, puts its texts on the
model's queue (`service.batching.Batcher`) and answers when its batch has run. Under load the
texts of concurrent requests share one onnxruntime call. Running the model in the API process
avoids a second process and a second HTTP hop per request, which on 2 cores cost about as
much CPU as MiniLM's inference (measured by bench/peers.py).

Routes: `POST /classify`, `GET /models`, `POST /admin/models` (change the model list, needs
auth), `/livez`, `/readyz` (ready after every model is loaded and warmed), `/metrics`, and
Text Embeddings Inference's `POST /predict`, `POST /`, `GET /info`, `GET /health`
(service/tei.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core import devices
from service import (
    admission,
    bento_models,
    door,
    gateway,
    gc_pauses,
    http_protocol,
    loop_lag,
    tei,
    tracing,
)
from service.answers import (
    ClassifyShape,
    ClientError,
    Shape,
    check_task,
    error_response,
    render,
    shorten,
)
from service.batching import InternalError, ModelFailed, Overloaded, Retired
from service.bento_image import requirements_for, service_image
from service.metrics import get_metrics
from service.models import LoadedModel, by_path, check_entries, load_all
from service.schema import REQUEST_STATE_KEY, ClassifyRequest, ClassifyResponse
from service.settings import (
    ENV_MODELS,
    ENV_MODELS_FILE,
    ServerSettings,
    Settings,
    write_models_file,
)

logger = logging.getLogger(__name__)

# Read when the class is defined: BentoML takes workers and traffic from the decorator.
SERVER = ServerSettings.from_env()
# The store models a Bento of this service carries, named at build time by
# `bentoml build --arg models=NAME:VERSION,...` (service/bento_models.py); () otherwise.
PACKED = bento_models.declared_models()
# `bentoml build --arg device=cuda`: the GPU Bento (its lock, one GPU, CUDA by default).
BUILT_FOR = bento_models.read_arguments().device
# Set by `preflight` in the process that checked the configuration; the workers it starts
# inherit it and skip the check (each verifies its models again when it loads them).
PREFLIGHT_ENV = "SMALLCLS_PREFLIGHT_DONE"


def preflight() -> None:
    """Check the settings and every model's files before `bentoml serve` starts workers.

    A worker whose __init__ raises is restarted by BentoML's supervisor every few seconds,
    for ever, while the server never becomes ready: a tampered model, a missing directory
    or auth required without a token would look like a slow start. Checked here, in the
    process that imports the service first (the `bentoml serve` arbiter), the server exits
    at once with status 1 and one line saying what to fix. Skipped where no models are
    configured (`bentoml build`, tests importing the module)."""
    configured = os.environ.get(ENV_MODELS, "").strip() or os.environ.get(ENV_MODELS_FILE, "")
    serving = sys.argv[1:2] == ["serve"]  # `bentoml serve ...`: models are needed now
    if os.environ.get(PREFLIGHT_ENV) or not (configured or serving):
        return
    try:
        settings = Settings.from_env(packed=bento_models.entries(PACKED), device=BUILT_FOR)
        devices.resolve(settings.device)  # CUDA asked for but unusable: say so, once
        check_entries(settings.models)
    except (ValueError, OSError, devices.DeviceError) as exc:  # ManifestError: a ValueError
        raise SystemExit(f"smallcls: the service cannot start: {exc}") from None
    os.environ[PREFLIGHT_ENV] = "1"


preflight()
UNKNOWN_MODEL_LABEL = "-"  # metrics label for requests naming no loaded model


def show_info_logs() -> None:
    """BentoML's server logging passes only WARNING and up from loggers other than its own;
    let this package's INFO lines (models loaded, reloads) through, unless the level was set
    on purpose."""
    package_logger = logging.getLogger(__name__.partition(".")[0])
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)


def request_limits() -> dict[str, Any]:
    """The running worker's request limits and model names, for the published schema; the
    defaults where no service runs in this process (e.g. `bentoml build`)."""
    service = _active()
    if service is None:
        return {"max_chars": Settings.max_chars, "max_texts": Settings.max_texts, "models": []}
    return {
        "max_chars": service.settings.max_chars,
        "max_texts": service.settings.max_texts,
        "models": list(service.models),
    }


def _tracing_exporter() -> str | None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.config.tracing.exporter_type.get()


@bentoml.service(
    image=service_image(requirements_for(BUILT_FOR)),
    resources=bento_models.resources(SERVER.resources, BUILT_FOR),
    workers=SERVER.workers,
    traffic={"timeout": SERVER.timeout_s, "max_concurrency": SERVER.max_concurrency},
    logging={"access": {"enabled": SERVER.access_log}},
    **tracing.service_config(SERVER.trace_classify, door.CLASSIFY_PATHS),
)
@bento_models.attach(PACKED)
class Classifier:
    """Public API. Client errors answer `{"error": ..., "field": ...}`; see `classify`."""

    def __init__(self) -> None:
        show_info_logs()
        packed = bento_models.packed_entries(Classifier)
        self.settings = Settings.from_env(packed=packed, device=BUILT_FOR)
        if warning := bento_models.override_warning(self.settings, packed):
            logger.warning(warning)
        gateway.CONFIG.auth_token = (
            self.settings.auth_token.encode() if self.settings.auth_token else None
        )
        gateway.CONFIG.max_body_bytes = self.settings.max_body_bytes
        gateway.CONFIG.body_timeout_s = self.settings.body_timeout_s
        gateway.CONFIG.max_requests_per_connection = self.settings.max_requests_per_connection
        admission.CONTROL.configure(self.settings.admission)
        self.metrics = get_metrics()
        self.models = load_all(self.settings.models, self.settings, self.metrics)
        self.metrics.show_models(m.info_labels() for m in self.models.values())
        self.default_model = self._check_default(self.settings.default_model, self.models)
        frozen = gc_pauses.freeze()  # what loading made stays: later collections skip it
        gc_pauses.watch()
        self._models_file_mtime = self._file_mtime()
        self._reload_lock = asyncio.Lock()
        ACTIVE.append(self)  # the /models and /admin routes reach this worker's models here
        logger.info(
            "serving models %s (from %s), default %r; %d objects exempt from collection; "
            "HTTP parsed by %s",
            list(self.models),
            self.settings.models_origin,
            self.default_model,
            frozen,
            HTTP_PARSER,
        )
        tracing.warn_if_exporter_untraced(SERVER.trace_classify, _tracing_exporter())
        if self.settings.auth_token:
            logger.info("auth on: every route but /livez, /readyz, /healthz needs the token")
        else:  # fine on a laptop or a private network; the Bento sets SMALLCLS_REQUIRE_AUTH
            logger.warning(
                "auth OFF: every route is open to anyone who reaches this port (set "
                "SMALLCLS_AUTH_TOKEN or SMALLCLS_AUTH_TOKEN_FILE; production sets "
                "SMALLCLS_REQUIRE_AUTH=true)"
            )

    @staticmethod
    def _check_default(default: str | None, models: dict[str, LoadedModel]) -> str:
        default = default or next(iter(models))
        if default not in models:
            raise ValueError(
                f"SMALLCLS_DEFAULT_MODEL={default!r} is not among the loaded models {list(models)}"
            )
        return default

    def _file_mtime(self) -> float | None:
        path = self.settings.models_file
        try:
            return path.stat().st_mtime if path is not None else None
        except OSError:
            return None

    # ---- reload -------------------------------------------------------------------------

    async def reload(self, entries: tuple[str, ...], default: str | None) -> None:
        """Load `entries` next to the running models (unchanged ones are kept), then swap
        the name → model map in one assignment: requests already holding a model finish on
        it, new ones get the new map. Replaced models drain their queues, then stop."""
        async with self._reload_lock:
            old = self.models
            new = await asyncio.get_running_loop().run_in_executor(
                None, load_all, entries, self.settings, self.metrics, by_path(old)
            )
            if default is not None:  # asked for: it must be among the new models
                default = self._check_default(default, new)
            elif self.default_model in new:
                default = self.default_model
            else:
                default = next(iter(new))
            self.models, self.default_model = new, default
            kept = {id(m) for m in new.values()}
            retired = [m for m in old.values() if id(m) not in kept]
            for model in retired:
                model.batcher.close()
            self.metrics.show_models(
                (m.info_labels() for m in new.values()), (m.info_labels() for m in retired)
            )
            logger.info("reloaded: models %s, default %r", list(new), default)

    @bentoml.on_startup
    async def report_gc_pauses(self) -> None:
        async def every_second() -> None:
            while True:
                await asyncio.sleep(1)
                gc_pauses.report(self.metrics.gc_pause)

        self._gc_task = asyncio.get_running_loop().create_task(every_second())

    @bentoml.on_startup
    async def watch_event_loop(self) -> None:
        self._lag_task = asyncio.get_running_loop().create_task(
            loop_lag.watch(self.metrics.loop_lag)
        )

    @bentoml.on_startup
    async def watch_models_file(self) -> None:
        if self.settings.models_file is None or self.settings.reload_poll_s == 0:
            return
        asyncio.get_running_loop().create_task(self._poll_models_file())

    async def _poll_models_file(self) -> None:
        # Every worker polls: an admin call reaches one worker, the file reaches all.
        from service.settings import read_models_file

        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            mtime = self._file_mtime()
            if mtime is None or mtime == self._models_file_mtime:
                continue
            self._models_file_mtime = mtime
            try:
                assert self.settings.models_file is not None
                await self.reload(read_models_file(self.settings.models_file), None)
            except (ValueError, OSError) as exc:  # ManifestError is a ValueError
                logger.error(
                    "reload from %s failed, still serving %s: %s",
                    self.settings.models_file,
                    list(self.models),
                    exc,
                )

    # ---- classify -----------------------------------------------------------------------

    def _resolve(self, model: Any) -> LoadedModel:
        if model is None:
            return self.models[self.default_model]
        if not isinstance(model, str):
            raise ClientError(400, f"model must be a string, one of {list(self.models)}", "model")
        if model not in self.models:
            raise ClientError(
                404,
                f"unknown model {shorten(model)!r}: use one of {list(self.models)} or omit 'model'",
                "model",
            )
        return self.models[model]

    def _check_texts(self, texts: Any, name: str = "texts") -> tuple[list[str], list[str]]:
        """(texts, the field name of each: `name` for a lone string, else "name[i]")."""
        if texts is None:
            raise ClientError(400, f"{name} is required: a string or a JSON list of strings", name)
        if isinstance(texts, str):
            texts = [texts]
            fields = [name]
        elif isinstance(texts, list):
            fields = [f"{name}[{i}]" for i in range(len(texts))]
        else:
            raise ClientError(
                400,
                f"{name} must be a string or a list of strings, got {type(texts).__name__}",
                name,
            )
        if not texts:
            raise ClientError(400, f"{name} is empty: send at least one text", name)
        if len(texts) > self.settings.max_texts:
            raise ClientError(
                400,
                f"too many texts ({len(texts)}): send at most {self.settings.max_texts} "
                "per request",
                name,
            )
        for text, field in zip(texts, fields, strict=True):
            if not isinstance(text, str):
                message = f"{field} must be a string, got {type(text).__name__}"
                raise ClientError(400, message, field)
            if not text.strip():
                message = f"{field} is empty or only whitespace: send some text"
                raise ClientError(400, message, field)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # invalid UTF-8 bytes, or a lone surrogate escape
                raise ClientError(
                    400, f"{field} is not valid UTF-8 text (bad bytes or a lone surrogate)", field
                ) from None
            if len(text) > self.settings.max_chars:
                raise ClientError(
                    413,
                    f"{field} has {len(text)} characters, the limit is "
                    f"{self.settings.max_chars}: shorten or split it",
                    field,
                )
        return texts, fields

    @bentoml.api(route="/classify", input_spec=ClassifyRequest)
    async def classify(
        self,
        texts: Any = None,
        model: Any = None,
        top_k: Any = None,
        threshold: Any = None,
        return_logits: Any = False,
        truncate: Any = True,
        task: Any = None,
        *,
        ctx: bentoml.Context,
    ) -> ClassifyResponse:
        """Classify one text or a list with one model.

        Body `{"texts": ["...", ...], "model": "<name>", "top_k": k, "threshold": t,
        "return_logits": false, "truncate": true, "task": "<name>"}`, all but `texts`
        optional (`task` is required by, and only accepted by, multi-task models). 200 →
        `{"model", "version", "predictions": [{"label", "labels", "scores", "truncated"}]}`
        (and `"task"` for a multi-task model).
        Errors answer `{"error": "<what to do>", "field": "<where>"}`: 400 bad body, field or
        value; 401 no or wrong token (when auth is on); 404 unknown model; 413 a text over the
        character limit, a text over max_length tokens with `truncate: false`, or a body over
        the byte limit; 500 the model failed; 503 overloaded (retry after the Retry-After
        seconds).
        """
        problem = getattr(ctx.request.state, REQUEST_STATE_KEY, None)
        shape = ClassifyShape(top_k, threshold, return_logits, truncate, task)
        response = await self.serve(shape, model, texts, ClientError(*problem) if problem else None)
        # With a ctx parameter BentoML overwrites the status code with ctx's.
        ctx.response.status_code = response.status_code
        return response  # type: ignore[return-value]  # BentoML passes Responses through

    async def serve(
        self, shape: Shape, model: Any, texts: Any, problem: ClientError | None = None
    ) -> JSONResponse:
        """The one path of every classification route (`/classify`, TEI's `/predict` and
        `/`): the same model choice, limits, batching, decision rule and metrics, so every
        route gives the answer that was evaluated; `shape` only reads the route's options
        and writes its answer and errors. `problem`: the body was refused while parsing."""
        started = time.perf_counter()
        name = UNKNOWN_MODEL_LABEL
        try:
            if problem is not None:
                raise problem
            loaded = self._resolve(model)
            name = loaded.name
            text_list, fields = self._check_texts(texts, shape.texts_field)
            options = shape.options(loaded)
            body = await self._predict(loaded, text_list, fields, options)
            response = shape.answer(loaded, body)
        except ClientError as exc:
            response = shape.refuse(exc)
        except Overloaded as exc:
            self.metrics.rejected.labels(model=name, reason=exc.reason).inc()
            response = shape.overloaded(exc)
        except ModelFailed as exc:
            self.metrics.server_errors.labels(model=name, reason="model_failed").inc()
            response = shape.failed(exc)
        except Exception as exc:  # a bug of ours: still an answer, logged and counted
            logger.exception("internal error answering %s for model %r", shape.route, name)
            self.metrics.server_errors.labels(model=name, reason="internal").inc()
            response = shape.failed(InternalError(name, exc))
        status = str(response.status_code)
        self.metrics.requests.labels(model=name, route=shape.route, status=status).inc()
        self.metrics.latency.labels(model=name).observe(time.perf_counter() - started)
        return response

    async def _predict(
        self, loaded: LoadedModel, texts: list[str], fields: list[str], options: dict[str, Any]
    ) -> dict[str, Any]:
        classifier = loaded.classifier
        max_length = classifier.manifest.max_length
        # A multi-task model reads each text in its task's prompt (routes without a task
        # field are refused by check_task); the batch may then mix tasks.
        task = options.get("task") or check_task(None, loaded)
        texts = task.prompts(texts) if task is not None else texts
        longest = 0
        # Counted only when needed: the batch reports truncation anyway, and counting costs
        # the event loop about 40 us per text.
        if not options["truncate"] or loaded.batcher.settings.max_batch_tokens:
            counts = classifier.count_tokens(texts)
            longest = min(max(counts), max_length)
            for field, n in zip(fields, counts, strict=True):
                if n > max_length and not options["truncate"]:
                    raise ClientError(
                        413,
                        f"{field} has {n} tokens, {loaded.name!r} reads at most {max_length}: "
                        "shorten it or send truncate: true",
                        field,
                    )
        try:
            loaded, (logits, truncated) = await self._submit(loaded, texts, longest)
        except ModelFailed as exc:  # point at the text the model raised on, when one did
            if exc.text_index is not None:
                exc.field = fields[exc.text_index]
            raise
        self.metrics.texts.labels(model=loaded.name).inc(len(texts))
        return render(loaded, logits, truncated, options)

    async def _submit(
        self, loaded: LoadedModel, texts: list[str], longest: int = 0
    ) -> tuple[LoadedModel, Any]:
        """The model that answered and its rows for these texts. A version a reload replaced
        between resolving it and submitting to it hands over to its successor (whose rule
        and version then answer); a model the reload removed is a 404 naming the models now
        served, never a 500."""
        for _ in range(3):  # a successor can itself be replaced by the next reload
            try:
                return loaded, await loaded.batcher.submit(texts, longest)
            except Retired:
                successor = self.models.get(loaded.name)
                if successor is None:
                    raise ClientError(
                        404,
                        f"model {loaded.name!r} was removed by a reload while this request "
                        f"waited; serving {sorted(self.models)}",
                        "model",
                    ) from None
                if successor.classifier.labels != loaded.classifier.labels:
                    # This request's options were checked against the old labels.
                    raise ClientError(
                        409,
                        f"model {loaded.name!r} was replaced by a version with other labels "
                        "while this request waited: send it again",
                        "model",
                    ) from None
                loaded = successor
        return loaded, await loaded.batcher.submit(texts, longest)

    # ---- lifecycle ----------------------------------------------------------------------

    async def __is_ready__(self) -> bool:
        return bool(self.models)  # models are loaded and warmed in __init__

    @bentoml.on_shutdown
    def close(self) -> None:
        for model in self.models.values():
            model.batcher.close()
        if self in ACTIVE:
            ACTIVE.remove(self)


ClassifyRequest.limits = staticmethod(request_limits)


# ---- routes outside BentoML's API methods (GET, admin) ------------------------------------

ACTIVE: list[Classifier] = []  # this worker's service instance (one per process)


def _active() -> Classifier | None:
    return ACTIVE[-1] if ACTIVE else None


async def list_models(request: Request) -> JSONResponse:
    service = _active()
    if service is None:
        return error_response(503, "the service is still starting", "model")
    return JSONResponse(
        {
            "default": service.default_model,
            "models": [m.facts() for m in service.models.values()],
        }
    )


async def admin_models(request: Request) -> JSONResponse:
    """`{"models": ["dir-or-ref", ...], "default": "<name>"}`: load, verify and warm the
    models, then serve them instead of the current list. With SMALLCLS_MODELS_FILE the list is
    written there and every worker switches within SMALLCLS_RELOAD_POLL_S; without it only
    one worker exists to switch (more workers refuse the call)."""
    service = _active()
    if service is None:
        return error_response(503, "the service is still starting", "body")
    if gateway.CONFIG.auth_token is None:
        return error_response(
            403,
            "admin routes need auth: set SMALLCLS_AUTH_TOKEN or SMALLCLS_AUTH_TOKEN_FILE",
            "authorization",
        )
    if service.settings.models_file is None and SERVER.workers > 1:
        return error_response(
            409, "with several workers set SMALLCLS_MODELS_FILE, so every worker reloads", "body"
        )
    try:
        data = json.loads(await request.body())
    except gateway.BodyRefused as exc:
        return error_response(exc.status, exc.message, "body")
    except (ValueError, RecursionError, ClientDisconnect):
        data = None
    models = data.get("models") if isinstance(data, dict) else None
    if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
        return error_response(400, 'send {"models": ["<dir or name:version>", ...]}', "models")
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        return error_response(400, "default must be a model name", "default")
    try:
        await service.reload(tuple(models), default)
    except (ValueError, OSError) as exc:  # ManifestError (sha256, missing files) included
        # Shortened: the message may quote a client string (a 1 MB "model directory").
        return error_response(422, shorten(str(exc), 400), "models")
    if service.settings.models_file is not None:
        write_models_file(service.settings.models_file, models)
        service._models_file_mtime = service._file_mtime()  # this worker already switched
    return await list_models(request)


Classifier.mount_asgi_app(
    Starlette(
        routes=[
            Route("/models", list_models, methods=["GET"]),
            Route("/admin/models", admin_models, methods=["POST"]),
            *tei.routes(_active, SERVER),  # Text Embeddings Inference's API
        ]
    ),
    path="/",
    name="smallcls-routes",
)
Classifier.add_asgi_middleware(gateway.Gateway)
door.install(Classifier)  # outside BentoML's own middleware: overload refused cheapest
# Before the worker's uvicorn resolves its "auto" protocol: httptools, with a head limit.
HTTP_PARSER = http_protocol.install()
