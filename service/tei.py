"""Hugging Face Text Embeddings Inference's classification API (`POST /predict`, `POST /`,
`GET /info`, `GET /health`) on the same path as `/classify`.

Written here rather than taken from a library: TEI is a Rust server, and no Python package
implements its HTTP contract. The request and response types follow its router
(`router/src/http/types.rs`, `server.rs`): `inputs` is a string, a pair `[a, b]` or a batch
`[[a], [b], ...]`; one input answers a list of `{"label", "score"}`, a batch a list of lists;
errors answer `{"error", "error_type"}` with TEI's status per type.

Every request goes through `Classifier.serve`, as `/classify`'s do: the same auth, limits,
batching, decision rule and metrics. `TeiShape` only reads TEI's options and writes TEI's
answer from `/classify`'s, so the two routes agree on every input by construction:
- the labels `/classify` serves (`labels`: the argmax, the out-of-scope label of a rejected
  text, or a multi-label model's labels over their thresholds) come first, then the others,
  each group highest score first, and `"selected": true` marks them (an addition to TEI's
  Prediction): element 0 is `/classify`'s label whenever it serves one;
- scores are `/classify`'s (softmax, or a multi-label model's sigmoids; TEI always takes the
  softmax); `raw_scores` or `parameters.function_to_apply` change the scores, never the order;
- truncation is the model's own (its manifest's max_length and side), as TEI started with
  `--auto-truncate`: `truncate` defaults to true, false refuses over-long texts with 422, and a
  `truncation_direction` other than the side the model was evaluated with is refused.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.decision import sigmoid, softmax
from service import gateway
from service.answers import ClientError, check_top_k, shorten
from service.batching import ModelFailed, Overloaded
from service.models import LoadedModel

if TYPE_CHECKING:
    from service.service import Classifier
    from service.settings import ServerSettings

# TEI's error types and the status each answers (server.rs, `From<&ErrorType> for StatusCode`).
STATUS = {
    "Validation": 422,
    "Tokenizer": 422,
    "Empty": 400,
    "Overloaded": 429,
    "Backend": 424,
    "Unhealthy": 503,
}
FIELDS = ("inputs", "truncate", "truncation_direction", "raw_scores", "parameters")
# What huggingface_hub's InferenceClient.text_classification sends under "parameters".
PARAMETERS = ("top_k", "function_to_apply")
FUNCTIONS = ("softmax", "sigmoid", "none")
DIRECTIONS = {"left": "Left", "right": "Right"}  # TEI accepts "Left"/"left", "Right"/"right"
# The side a manifest's truncation drops tokens from, in TEI's terms; head_tail keeps both ends.
SIDES = {"head": "Right", "tail": "Left", "head_tail": None}
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
BATCH_EXAMPLE = '[["first text"], ["second text"]]'


class TeiError(ClientError):
    """A refusal in TEI's own terms: its error type decides the status."""

    def __init__(self, error_type: str, message: str, field: str) -> None:
        super().__init__(STATUS[error_type], message, field)
        self.error_type = error_type


def error(status: int, error_type: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )


def parse_inputs(inputs: Any) -> tuple[list[str], bool]:
    """(texts, whether it was one input) from TEI's `inputs`. Items are left unchecked for
    `Classifier.serve` (empty, UTF-8, length), which names them `inputs[i]`."""
    pair = (
        "is a pair of texts; smallcls models classify single texts (none is trained on "
        f"pairs): send one string, or a batch {BATCH_EXAMPLE}"
    )
    if isinstance(inputs, str):
        return [inputs], True
    if not isinstance(inputs, list):
        raise TeiError(
            "Validation",
            f"inputs must be a string or a batch {BATCH_EXAMPLE}, got {type(inputs).__name__}",
            "inputs",
        )
    if not inputs:
        raise TeiError(
            "Empty", f"inputs is empty: send a string or a batch {BATCH_EXAMPLE}", "inputs"
        )
    if all(isinstance(item, str) for item in inputs):  # TEI: [a] is one text, [a, b] a pair
        if len(inputs) == 1:
            return inputs, True
        if len(inputs) == 2:
            raise TeiError("Validation", f"inputs {pair}", "inputs")
        raise TeiError(
            "Validation",
            f"inputs is a list of {len(inputs)} strings, which TEI reads as neither one text "
            f"nor a pair: send a batch as {BATCH_EXAMPLE}",
            "inputs",
        )
    texts = []
    for i, item in enumerate(inputs):
        field = f"inputs[{i}]"
        if isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
            raise TeiError("Validation", f"{field} {pair}", field)
        if not (isinstance(item, list) and len(item) == 1 and isinstance(item[0], str)):
            raise TeiError(
                "Validation",
                f'{field} must be a one-text list like ["text"] (a batch is {BATCH_EXAMPLE}), '
                f"got {shorten(json.dumps(item, default=str))}",
                field,
            )
        texts.append(item[0])
    return texts, False


def own_function(loaded: LoadedModel) -> str:
    """The function the model's decision rule turns logits into scores with."""
    return "sigmoid" if loaded.classifier.decision.multi_label else "softmax"


@dataclasses.dataclass(frozen=True)
class TeiShape:
    """TEI's `/predict` options and answers around `Classifier.serve` (see the module doc)."""

    single: bool = True
    truncate: bool | None = None
    direction: str | None = None  # "Left" or "Right"
    raw_scores: bool = False
    top_k: Any = None
    function: str | None = None  # parameters.function_to_apply
    route: str = "/predict"
    texts_field: str = "inputs"

    @classmethod
    def from_body(cls, data: Any, route: str) -> tuple[TeiShape, Any]:
        """(the shape, the texts for `serve`) from a parsed JSON body; raises TeiError."""
        if not isinstance(data, dict):
            message = 'the body must be a JSON object like {"inputs": "text"}'
            raise TeiError("Validation", message, "body")
        if unknown := sorted(set(data) - set(FIELDS)):
            name = shorten(str(unknown[0]))
            hint = " (choose the model with ?model=<name>)" if name == "model" else ""
            raise TeiError(
                "Validation", f"unknown field {name!r}{hint}: TEI's fields are {list(FIELDS)}", name
            )
        if "inputs" not in data:
            raise TeiError("Validation", 'inputs is required: {"inputs": "text"}', "inputs")
        texts, single = parse_inputs(data["inputs"])
        truncate = data.get("truncate")
        if truncate is not None and not isinstance(truncate, bool):
            raise TeiError("Validation", "truncate must be true, false or null", "truncate")
        direction = data.get("truncation_direction")
        if direction is not None:
            if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
                raise TeiError(
                    "Validation",
                    "truncation_direction must be 'left' or 'right', got "
                    f"{shorten(repr(direction))}",
                    "truncation_direction",
                )
            direction = DIRECTIONS[direction.lower()]
        raw_scores = data.get("raw_scores", False)
        if not isinstance(raw_scores, bool):
            raise TeiError("Validation", "raw_scores must be true or false", "raw_scores")
        top_k, function = cls._parameters(data.get("parameters"), raw_scores)
        return cls(single, truncate, direction, raw_scores, top_k, function, route), texts

    @staticmethod
    def _parameters(parameters: Any, raw_scores: bool) -> tuple[Any, str | None]:
        if parameters is None:
            return None, None
        if not isinstance(parameters, dict):
            raise TeiError("Validation", "parameters must be an object", "parameters")
        if unknown := sorted(set(parameters) - set(PARAMETERS)):
            name = shorten(str(unknown[0]))
            raise TeiError(
                "Validation",
                f"unknown parameter {name!r}: the accepted ones are {list(PARAMETERS)}",
                f"parameters.{name}",
            )
        function = parameters.get("function_to_apply")
        if function is not None and function not in FUNCTIONS:
            raise TeiError(
                "Validation",
                f"parameters.function_to_apply must be one of {list(FUNCTIONS)}, "
                f"got {shorten(repr(function))}",
                "parameters.function_to_apply",
            )
        if raw_scores and function not in (None, "none"):
            raise TeiError(
                "Validation",
                f"raw_scores: true asks for logits, function_to_apply {function!r} for "
                "probabilities: send one of the two",
                "parameters.function_to_apply",
            )
        return parameters.get("top_k"), function

    def _score_function(self, loaded: LoadedModel) -> str:
        """What the scores are: the model's own probabilities unless the request asks."""
        return "none" if self.raw_scores else (self.function or own_function(loaded))

    def options(self, loaded: LoadedModel) -> dict[str, Any]:
        check_top_k(self.top_k, loaded, "parameters.top_k")
        truncate = True if self.truncate is None else self.truncate  # --auto-truncate
        strategy = loaded.classifier.manifest.preprocessing.truncation
        side = SIDES[strategy]
        if truncate and self.direction is not None and self.direction != side:
            keeps = {"head": "its start", "tail": "its end", "head_tail": "both ends"}[strategy]
            todo = f"send {side.lower()!r} or omit it" if side else "omit it"
            raise TeiError(
                "Validation",
                f"model {loaded.name!r} was evaluated keeping {keeps} of an over-long text "
                f"({strategy!r}), not cutting it on the {self.direction.lower()}: "
                f"truncation_direction: {todo}",
                "truncation_direction",
            )
        return {
            "top_k": None,  # every label: the order is TEI's, made in `answer`
            "thresholds": {},
            "return_logits": self._score_function(loaded) != own_function(loaded),
            "truncate": truncate,
        }

    def answer(self, loaded: LoadedModel, body: dict[str, Any]) -> JSONResponse:
        function = self._score_function(loaded)
        labels = loaded.classifier.labels
        answers = [self._predictions(labels, p, function) for p in body["predictions"]]
        headers = {"x-model-name": loaded.name, "x-model-version": loaded.version}
        return JSONResponse(answers[0] if self.single else answers, headers=headers)

    def _predictions(
        self, labels: list[str], prediction: dict[str, Any], function: str
    ) -> list[dict[str, Any]]:
        served = set(prediction["labels"])
        probs = prediction["scores"]  # label -> probability, every label
        # Served first, then highest first; sorted() is stable, so ties keep the label order
        # and element 0 is the argmax `/classify` chose.
        order = sorted(labels, key=lambda label: (label not in served, -probs[label]))
        # Logits are in the prediction only when the scores are not the model's own.
        if function in ("softmax", "sigmoid") and "logits" in prediction:
            logits = np.array([prediction["logits"][label] for label in labels])
            values = softmax(logits) if function == "softmax" else sigmoid(logits)
            scores = {label: float(v) for label, v in zip(labels, values, strict=True)}
        elif function == "none":
            scores = prediction["logits"]
        else:
            scores = probs
        keep = order[: self.top_k] if self.top_k else order
        return [
            {"label": label, "score": scores[label], "selected": label in served} for label in keep
        ]

    def refuse(self, exc: ClientError) -> JSONResponse:
        if isinstance(exc, TeiError):
            return error(exc.status, exc.error_type, exc.message)
        # The shared checks speak /classify's statuses; TEI answers a refused body 413 (too
        # large) or 408 (too slow), and every other invalid request 422 Validation.
        status = exc.status if exc.field == "body" and exc.status in (408, 413) else 422
        return error(status, "Validation", exc.message)

    def overloaded(self, exc: Overloaded) -> JSONResponse:
        return error(429, "Overloaded", str(exc), **{"retry-after": "1"})

    def failed(self, exc: ModelFailed) -> JSONResponse:
        return error(424, "Backend", str(exc))


# ---- routes ---------------------------------------------------------------------------------


async def read_request(request: Request) -> tuple[TeiShape, Any, ClientError | None]:
    """(shape, texts, the refusal if the body cannot be served): a refused body still goes
    through `Classifier.serve`, so it is counted like any other answer."""
    route = request.url.path
    try:
        body = await request.body()
    except gateway.BodyRefused as exc:  # too large, or too slow to arrive
        return TeiShape(route=route), None, ClientError(exc.status, exc.message, "body")
    except ClientDisconnect:  # nobody reads the answer; refused without a traceback
        message = "the client left before sending the body"
        return TeiShape(route=route), None, ClientError(400, message, "body")
    try:
        # surrogateescape: invalid UTF-8 bytes become lone surrogates inside the strings,
        # so the shared text check can name the input that holds them.
        data = json.loads(body.decode("utf-8", "surrogateescape")) if body.strip() else None
    except (ValueError, RecursionError):  # bad JSON; absurdly deep nesting
        return TeiShape(route=route), None, TeiError("Validation", "the body is not JSON", "body")
    try:
        shape, texts = TeiShape.from_body(data, route)
    except TeiError as exc:
        return TeiShape(route=route), None, exc
    return shape, texts, None


def routes(active: Callable[[], Classifier | None], server: ServerSettings) -> list[Route]:
    """TEI's routes over this worker's service (`active()`; None while it starts)."""

    async def predict(request: Request) -> Response:
        service = active()
        if service is None:
            return error(503, "Unhealthy", "the service is still starting")
        shape, texts, problem = await read_request(request)
        return await service.serve(shape, request.query_params.get("model"), texts, problem)

    async def info(request: Request) -> Response:
        service = active()
        if service is None:
            return error(503, "Unhealthy", "the service is still starting")
        name = request.query_params.get("model") or service.default_model
        loaded = service.models.get(name)
        if loaded is None:
            message = f"unknown model {shorten(name)!r}: use one of {list(service.models)}"
            return error(422, "Validation", message)
        return JSONResponse(model_info(loaded, service, server))

    async def health(request: Request) -> Response:
        service = active()
        if service is None or not service.models:
            return error(503, "Unhealthy", "unhealthy")
        return Response(status_code=200)

    return [
        Route("/predict", predict, methods=["POST"]),
        # The path InferenceClient(base_url=URL) posts to; GET / stays the API's web page.
        Route("/", predict, methods=["POST"]),
        Route("/info", info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]


def model_info(loaded: LoadedModel, service: Classifier, server: ServerSettings) -> dict[str, Any]:
    """TEI's `Info` (lib.rs) for one served model."""
    manifest = loaded.classifier.manifest
    batching = service.settings.batching_for(loaded.name)
    return {
        "model_id": manifest.name,
        "model_sha": manifest.files.get("model.onnx"),
        "model_dtype": DTYPES.get(manifest.precision, manifest.precision),
        "served_model_name": manifest.name,
        "model_type": {
            "classifier": {
                "id2label": {str(i): label for i, label in enumerate(manifest.labels)},
                "label2id": {label: i for i, label in enumerate(manifest.labels)},
            }
        },
        # Requests in flight before 429: BentoML's limit when set, else the model's queue.
        "max_concurrent_requests": server.max_concurrency or batching.max_queue,
        "max_input_length": manifest.max_length,
        "max_batch_tokens": batching.max_batch_size * manifest.max_length,
        "max_batch_requests": batching.max_batch_size,
        "max_client_batch_size": service.settings.max_texts,
        "auto_truncate": True,
        "tokenization_workers": server.workers,  # each worker tokenizes its own batches
        "version": version(),
        "sha": None,
        "docker_label": None,
    }


def version() -> str:
    try:
        return importlib.metadata.version("smallcls")
    except importlib.metadata.PackageNotFoundError:  # a Bento carries the code, not the package
        return "unknown"
