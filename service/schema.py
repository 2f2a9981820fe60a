"""The /classify API's request and response types, apart from the handlers (as Text
Embeddings Inference keeps `router/src/http/types.rs`): what OpenAPI publishes and how a raw
body becomes field values, with a `field` named in every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

import bentoml
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect, Request

from service import gateway
from service.answers import shorten
from service.settings import Settings

REQUEST_STATE_KEY = "smallcls_body_error"
FIELDS = ("texts", "model", "top_k", "threshold", "return_logits", "truncate", "task")


def default_limits() -> dict[str, Any]:
    return {"max_chars": Settings.max_chars, "max_texts": Settings.max_texts, "models": []}


class Prediction(BaseModel):
    label: str = Field(
        description="The answer: the most probable label, or the model's out-of-scope label "
        "when the model rejects the text."
    )
    labels: list[str] = Field(
        description="Every predicted label: [label] for single-label models; for multi-label "
        "models each label whose probability clears its threshold (may be empty)."
    )
    rejected: bool = Field(
        description="Out-of-scope models: the top probability was below the rejection "
        "threshold, so the answer is the out-of-scope label. Always false for other models."
    )
    scores: dict[str, float] = Field(
        description="Probability by label name (softmax; sigmoid per label for multi-label "
        "models), best first when top_k is given, else in the model's label order."
    )
    logits: dict[str, float] | None = Field(
        default=None, description="Raw logits by label name, with return_logits."
    )
    truncated: bool = Field(description="The text was cut to the model's max_length tokens.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="Name of the model that answered.")
    version: str = Field(
        description="Its version: the BentoML store version, or the first 12 hex digits of "
        "model.onnx's sha256."
    )
    task: str | None = Field(
        default=None, description="Multi-task models: the task that answered (its labels)."
    )
    predictions: list[Prediction] = Field(description="One per input text, in input order.")


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong and what to do.")
    field: str = Field(description="Where: a request field such as 'texts[2]', or 'body'.")


# Parsed here rather than by BentoML, which answers a malformed body with a pydantic error list
# and no `field`. Values are checked by `Classifier.classify`, which knows the limits and the
# loaded models: the types below document the schema (OpenAPI) but are not enforced.
class ClassifyRequest(bentoml.IODescriptor):
    """Texts to classify and, optionally, the model and how to answer."""

    # The running worker's limits and model names for the published schema; the service sets
    # it (this module imports no service state). Defaults where none runs (`bentoml build`).
    limits: ClassVar[Callable[[], dict[str, Any]]] = staticmethod(default_limits)

    texts: list[str] | str = Field(
        default=None,
        description="One text or a list (1..SMALLCLS_MAX_TEXTS), each non-empty and at most "
        "SMALLCLS_MAX_CHARS characters.",
    )
    model: str | None = Field(default=None, description="Model name; omit for the default.")
    top_k: int | None = Field(
        default=None, description="Return only the k best scores per text (1..labels)."
    )
    threshold: float | dict[str, float] | None = Field(
        default=None,
        description="Multi-label models: one threshold in (0, 1) for every label, or one per "
        "label name, instead of the manifest's. Out-of-scope models: the rejection threshold "
        "in [0, 1) instead of the manifest's.",
    )
    return_logits: bool = Field(default=False, description="Add raw logits per label.")
    truncate: bool = Field(
        default=True,
        description="Cut texts longer than the model's max_length tokens (default); false "
        "refuses them with 413.",
    )
    task: str | None = Field(
        default=None,
        description="Multi-task models (required there, refused elsewhere): the task whose "
        "prompt, labels and decision rule answer, as GET /models lists them.",
    )

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The published request schema (OpenAPI at /docs.json), written out by hand: BentoML
        flattens every `anyOf` of the pydantic schema to its first branch, which dropped the
        string form of `texts`, the object form of `threshold` and every limit. With the
        limits and model names in it, schema-driven clients and fuzzers (bench/hostile.py)
        send bodies that reach the model instead of bouncing off the first check."""
        limits = cls.limits()
        text = {"type": "string", "minLength": 1, "maxLength": limits["max_chars"]}
        probability = {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "exclusiveMinimum": True,
            "exclusiveMaximum": True,
        }
        fields = cls.model_fields
        model: dict[str, Any] = {"type": "string", "nullable": True}
        if limits["models"]:
            model["enum"] = [*limits["models"], None]
        return {
            "type": "object",
            "title": cls.__name__,
            "description": cls.__doc__,
            "required": ["texts"],
            "additionalProperties": False,
            "properties": {
                "texts": {
                    "description": fields["texts"].description,
                    # oneOf, not anyOf: BentoML's flattening leaves oneOf alone.
                    "oneOf": [
                        text,
                        {
                            "type": "array",
                            "items": text,
                            "minItems": 1,
                            "maxItems": limits["max_texts"],
                        },
                    ],
                },
                "model": {"description": fields["model"].description, **model},
                "top_k": {
                    "description": fields["top_k"].description,
                    "type": "integer",
                    "minimum": 1,
                    "nullable": True,
                },
                "threshold": {
                    "description": fields["threshold"].description,
                    "nullable": True,
                    "oneOf": [
                        probability,
                        {"type": "object", "additionalProperties": probability},
                    ],
                },
                "return_logits": {
                    "description": fields["return_logits"].description,
                    "type": "boolean",
                    "default": False,
                },
                "truncate": {
                    "description": fields["truncate"].description,
                    "type": "boolean",
                    "default": True,
                },
                "task": {
                    "description": fields["task"].description,
                    "type": "string",
                    "nullable": True,
                },
            },
        }

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ClassifyRequest:
        try:
            body = await request.body()
        except gateway.BodyRefused as exc:  # too large, or too slow to arrive
            return cls._refuse(request, (exc.status, exc.message, "body"))
        except ClientDisconnect:  # nobody reads the answer; refused without a traceback
            return cls._refuse(request, (400, "the client left before sending the body", "body"))
        try:
            # surrogateescape: invalid UTF-8 bytes become lone surrogates inside the strings,
            # so the check in `classify` can name the text that holds them.
            data = json.loads(body.decode("utf-8", "surrogateescape")) if body.strip() else {}
        except (ValueError, RecursionError):  # bad JSON; absurdly deep nesting
            data = None
        if not isinstance(data, dict):
            example = '{"texts": ["..."], "model": "<name>"}'
            message = f"the body must be a JSON object like {example}"
            return cls._refuse(request, (400, message, "body"))
        if unknown := sorted(set(data) - set(FIELDS)):
            name = shorten(str(unknown[0]))
            message = f"unknown field {name!r}: the accepted fields are {list(FIELDS)}"
            return cls._refuse(request, (400, message, name))
        # No validation: `classify` checks values with per-item messages.
        return cls.model_construct(**data)

    @classmethod
    def _refuse(cls, request: Request, problem: tuple[int, str, str]) -> ClassifyRequest:
        # The API method only receives field values; the request state reaches it via ctx.
        setattr(request.state, REQUEST_STATE_KEY, problem)
        return cls.model_construct()
