"""The BentoML service: a public `/classify` API in front of a batching runner of ONNX models.

Two services, because BentoML's adaptive batching batches exactly one argument per call while
`/classify` takes two (`texts` and `model`):

- `ModelRunner` holds every `OnnxClassifier` and exposes `predict(items)`, batchable: BentoML
  merges the items of concurrent requests (any model) into one call, which groups them by model.
- `Classifier` validates requests, answers client errors itself and sends one item per text to
  the runner through `bentoml.depends`.

Under `bentoml serve` each service runs in its own process and the runner is called over a
local socket, so batching happens there. In-process (`Classifier.to_asgi()`, tests),
`bentoml.depends` builds a plain local `ModelRunner` and calls it directly: no batching.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from http import HTTPStatus
from typing import Any

import aiohttp
import bentoml
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.runtime import OnnxClassifier
from service.settings import BatchingSettings, Settings
from smallcls.manifest import Manifest

logger = logging.getLogger(__name__)

# Read when the class is defined: BentoML builds its batch dispatcher from the decorator.
BATCHING = BatchingSettings.from_env()
WARMUP_TEXT = "warm up"
REQUEST_STATE_KEY = "smallcls_body_error"


def show_info_logs() -> None:
    """BentoML's server logging passes only WARNING and up from loggers other than its own;
    let this package's INFO lines (models loaded, batching summary) through, unless the level
    was set on purpose."""
    package_logger = logging.getLogger(__name__.partition(".")[0])
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)


class Item(BaseModel):
    """One text to score with one model: the unit the runner batches."""

    model: str
    text: str


class LabelScores(BaseModel):
    label: str = Field(description="The label with the highest probability.")
    scores: dict[str, float] = Field(description="Softmax probability per label name.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="Name of the model that answered.")
    predictions: list[LabelScores] = Field(description="One per input text, in input order.")


# Parsed here rather than by BentoML, which answers a malformed body with a pydantic error list
# and no `field`. Values are checked by `Classifier.classify`, which knows the limits and the
# loaded models: the types below document the schema (OpenAPI) but are not enforced.
class ClassifyRequest(bentoml.IODescriptor):
    """Texts to classify and, optionally, the model to use."""

    texts: list[str] = Field(
        default=None,
        description="Texts to classify (1..SMALLCLS_MAX_TEXTS, each non-empty and at most "
        "SMALLCLS_MAX_CHARS characters).",
    )
    model: str | None = Field(
        default=None, description="Model name; omit for the server's default model."
    )

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ClassifyRequest:
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):  # bad JSON or bytes; absurdly deep nesting
            data = None
        problem: tuple[str, str] | None = None
        if not isinstance(data, dict):
            problem = (
                'the body must be a JSON object like {"texts": ["..."], "model": "<name>"}',
                "body",
            )
        elif unknown := sorted(set(data) - set(cls.model_fields)):
            problem = (
                f"unknown field {shorten(unknown[0])!r}: the accepted fields are 'texts' and "
                "'model'",
                shorten(unknown[0]),
            )
        if problem is not None:
            # The API method only receives field values; the request state reaches it via ctx.
            setattr(request.state, REQUEST_STATE_KEY, problem)
            return cls.model_construct()
        # No validation: `classify` checks values with per-item messages.
        return cls.model_construct(**data)


def shorten(text: str, limit: int = 80) -> str:
    # Client strings echoed in errors: a 1 MB model name should not make a 1 MB error.
    return text if len(text) <= limit else text[:limit] + "…"


def error_response(status: HTTPStatus, message: str, field: str) -> JSONResponse:
    # Returned directly: BentoML's own handler wraps 4xx bodies of BentoMLException in a list.
    return JSONResponse({"error": message, "field": field}, status_code=status)


@bentoml.service(
    workers=1,  # one process sees every concurrent request, so it can batch them
    traffic={"timeout": 60},
    # BentoML 1.4.40's client replaces its HTTP session every 100 requests or 300 s and closes
    # the old one under requests still in flight: about 12% of calls failed with "Server
    # disconnected" at 20 concurrent users. Calls go over a local socket: keep one session.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class ModelRunner:
    """Every configured model, loaded and warmed once; scores batches of (model, text) items."""

    def __init__(self) -> None:
        show_info_logs()
        settings = Settings.from_env()
        self.models: dict[str, OnnxClassifier] = {}
        for model_dir in settings.model_dirs:
            classifier = OnnxClassifier(model_dir, threads=settings.threads)
            if classifier.name in self.models:
                raise ValueError(
                    f"two model directories are named {classifier.name!r} "
                    f"({self.models[classifier.name].model_dir} and {model_dir}); "
                    "give each a distinct manifest name"
                )
            classifier.predict([WARMUP_TEXT])  # first real request should not pay ORT's setup
            self.models[classifier.name] = classifier
            logger.info(
                "loaded model %r from %s (labels %s)",
                classifier.name,
                model_dir,
                classifier.labels,
            )
        self.batch_sizes: Counter[int] = Counter()  # items per `predict` call → calls

    @bentoml.api(
        batchable=True,
        max_batch_size=BATCHING.max_batch_size,
        max_latency_ms=BATCHING.max_latency_ms,
    )
    def predict(self, items: list[Item]) -> list[LabelScores]:
        """One prediction per item, in order. Items are grouped by model: one ORT call each."""
        self.batch_sizes[len(items)] += 1
        logger.debug("predict: batch of %d items", len(items))
        by_model: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_model.setdefault(item.model, []).append(i)
        out: list[LabelScores | None] = [None] * len(items)
        for name, indices in by_model.items():
            predictions = self.models[name].predict([items[i].text for i in indices])
            for i, p in zip(indices, predictions, strict=True):
                out[i] = LabelScores(label=p.label, scores=p.scores)
        return out  # type: ignore[return-value]  # every slot was filled above

    @bentoml.on_shutdown
    def log_batching(self) -> None:
        # One line per process lifetime: how much adaptive batching merged (sizes → count).
        sizes = dict(sorted(self.batch_sizes.items()))
        logger.info(
            "batching summary: %d items in %d model calls, batch sizes %s",
            sum(k * v for k, v in sizes.items()),
            sum(sizes.values()),
            json.dumps(sizes),
        )


@bentoml.service(workers=1, traffic={"timeout": 60})
class Classifier:
    """Public API. Client errors answer `{"error": ..., "field": ...}`; see `classify`."""

    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        show_info_logs()
        settings = Settings.from_env()
        self.max_texts = settings.max_texts
        self.max_chars = settings.max_chars
        # Names from the manifests (cheap), so bad requests never reach the runner.
        self.model_names = [Manifest.read(d).name for d in settings.model_dirs]
        self.default_model = settings.default_model or self.model_names[0]
        if self.default_model not in self.model_names:
            raise ValueError(
                f"SMALLCLS_DEFAULT_MODEL={self.default_model!r} is not among the loaded "
                f"models {self.model_names}"
            )
        logger.info("serving models %s, default %r", self.model_names, self.default_model)

    def _check(self, texts: Any, model: Any) -> tuple[JSONResponse | None, str]:
        """(error response or None, model name)."""
        if model is None:
            model = self.default_model
        elif not isinstance(model, str):
            msg = f"model must be a string, one of {self.model_names}"
            return error_response(HTTPStatus.BAD_REQUEST, msg, "model"), ""
        elif model not in self.model_names:
            msg = f"unknown model {shorten(model)!r}: use one of {self.model_names} or omit 'model'"
            return error_response(HTTPStatus.NOT_FOUND, msg, "model"), ""
        if texts is None:
            msg = "texts is required: a JSON list of strings"
            return error_response(HTTPStatus.BAD_REQUEST, msg, "texts"), model
        if not isinstance(texts, list):
            msg = f"texts must be a JSON list of strings, got {type(texts).__name__}"
            return error_response(HTTPStatus.BAD_REQUEST, msg, "texts"), model
        if not texts:
            msg = "texts is empty: send at least one text"
            return error_response(HTTPStatus.BAD_REQUEST, msg, "texts"), model
        if len(texts) > self.max_texts:
            msg = f"too many texts ({len(texts)}): send at most {self.max_texts} per request"
            return error_response(HTTPStatus.BAD_REQUEST, msg, "texts"), model
        for i, text in enumerate(texts):
            field = f"texts[{i}]"
            if not isinstance(text, str):
                msg = f"{field} must be a string, got {type(text).__name__}"
                return error_response(HTTPStatus.BAD_REQUEST, msg, field), model
            if not text.strip():
                msg = f"{field} is empty or only whitespace: send some text"
                return error_response(HTTPStatus.BAD_REQUEST, msg, field), model
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"), tokenizers not
                msg = f"{field} is not valid Unicode (a lone surrogate escape): send UTF-8 text"
                return error_response(HTTPStatus.BAD_REQUEST, msg, field), model
            if len(text) > self.max_chars:
                msg = (
                    f"{field} has {len(text)} characters, the limit is {self.max_chars}: "
                    "shorten or split it"
                )
                return error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, msg, field), model
        return None, model

    @bentoml.api(route="/classify", input_spec=ClassifyRequest)
    async def classify(
        self, texts: Any = None, model: Any = None, *, ctx: bentoml.Context
    ) -> ClassifyResponse:
        """Classify texts with one model.

        Body `{"texts": ["...", ...], "model": "<name>"}` (`model` optional). 200 →
        `{"model": name, "predictions": [{"label": ..., "scores": {label: prob}}, ...]}`.
        Client errors answer `{"error": "<what to do>", "field": "<where>"}` with
        400 for a body that is not a JSON object (field "body"), an unknown field, a missing or
        ill-typed `texts`/`model`, an empty list, too many texts, a non-string or empty text;
        404 for an unknown model; 413 for a text over the character limit.
        """
        if problem := getattr(ctx.request.state, REQUEST_STATE_KEY, None):
            error: JSONResponse | None = error_response(HTTPStatus.BAD_REQUEST, *problem)
        else:
            error, model = self._check(texts, model)
        if error is not None:
            # With a ctx parameter BentoML overwrites the status code with ctx's.
            ctx.response.status_code = error.status_code
            return error  # type: ignore[return-value]  # BentoML passes Responses through
        items = [Item(model=model, text=t) for t in texts]
        try:
            predictions = await self.runner.to_async.predict(items)
        except aiohttp.ClientConnectionError as exc:
            # The runner's server closes idle keep-alive connections after 5 s, the client
            # keeps them 15 s: a call can race the close (BentoML issue #4971). It never
            # reached the model, and predict has no side effects: retry it once.
            logger.warning("runner connection dropped (%s); retrying once", exc)
            predictions = await self.runner.to_async.predict(items)
        return ClassifyResponse(model=model, predictions=predictions)
