"""The Hugging Face files of a model directory, and a check that optimum really loads them.

`model.onnx` maps (input_ids, attention_mask) to `logits` for every family, which is exactly
what optimum's `ORTModelForSequenceClassification` runs. What it still needs is a
`config.json` that names the labels and the problem type (so `transformers.pipeline` applies
softmax or sigmoid and names the labels) and the tokenizer's `tokenizer_config.json` and
special tokens. The `tokenizer.json` stays the one the service reads: saved without padding
or truncation, since the manifest's preprocessing decides both.

`check_with_pipeline` loads the directory the way a user would and compares the pipeline's
answers, called plainly and called with the recipe the card gives (`recipe_labels`), with our
runtime's on test texts: what the card says is measured on this very directory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from core.decision import DecisionRule
from core.manifest import TOKENIZER_NAME, Manifest
from core.preprocessing import Preprocessing, fill_template

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
}


def sequence_classification_architecture(config: PretrainedConfig) -> str:
    """`<Type>ForSequenceClassification`: the name HF tools (Infinity, TEI) read from
    `architectures` to treat a directory as a classifier. Its torch class is never built from
    this directory (there are no torch weights); the graph holds our own head."""
    known = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if known:
        return known
    base = type(config).__name__.removesuffix("Config") or config.model_type.title()
    return f"{base}ForSequenceClassification"


def write_config(model_dir: Path, backbone_config: PretrainedConfig, rule: DecisionRule) -> Path:
    """`config.json`: the backbone's config with the labels and the problem type."""
    config = copy.deepcopy(backbone_config)
    config.id2label = dict(enumerate(rule.labels))
    config.label2id = {label: i for i, label in enumerate(rule.labels)}
    config.problem_type = PROBLEM_TYPES[rule.problem_type]
    config.architectures = [sequence_classification_architecture(backbone_config)]
    config.use_cache = False  # a classifier never decodes; optimum must not look for past keys
    config.save_pretrained(model_dir)
    return model_dir / CONFIG_NAME


def save_plain_tokenizer(tokenizer: Any, path: Path) -> None:
    """tokenizer.json without padding or truncation baked in (some hub files pad every text to
    128): the manifest's preprocessing decides both, for us and for any other reader."""
    plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(path))


def write_tokenizer_files(model_dir: Path, tokenizer: Any, pre: Preprocessing) -> list[str]:
    """tokenizer.json (the service's), tokenizer_config.json and special_tokens_map.json.

    tokenizer_config.json says what `truncation=True` means in a pipeline: the manifest's
    max_length, cut from the side the service cuts from; and right padding, which the graphs'
    last-token heads rely on (some decoder tokenizers pad on the left)."""
    with tempfile.TemporaryDirectory() as tmp:
        # legacy_format=False: the fast tokenizer's files only (no vocab.txt, merges.txt).
        saved = tokenizer.save_pretrained(tmp, legacy_format=False)
        names = sorted(Path(p).name for p in saved if Path(p).is_file())
        for name in names:
            if name != TOKENIZER_NAME:
                (model_dir / name).write_bytes((Path(tmp) / name).read_bytes())
    path = model_dir / TOKENIZER_CONFIG_NAME
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings.update(
        model_max_length=pre.max_length, truncation_side=pre.truncation_side, padding_side="right"
    )
    # Decoders have no pad token of their own; training set one, and a batched pipeline needs it.
    settings.setdefault("pad_token", pre.pad_token)
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    save_plain_tokenizer(tokenizer, model_dir / TOKENIZER_NAME)
    return sorted({*names, TOKENIZER_NAME})


def recipe_labels(scores: list[dict[str, Any]], rule: DecisionRule) -> list[str]:
    """Our decision rule applied to a pipeline's `top_k=None` scores (softmax or sigmoid per
    label): the labels the service answers. Multi-label: each label at or above its threshold;
    out-of-scope: the out-of-scope label when the top score is below the threshold."""
    if rule.multi_label:
        cut = dict(zip(rule.labels, rule.default_thresholds(), strict=True))
        return sorted(
            (s["label"] for s in scores if s["score"] >= cut[s["label"]]), key=rule.labels.index
        )
    best = max(scores, key=lambda s: s["score"])
    if rule.rejects and best["score"] < rule.rejection_threshold:
        return [rule.oos_label]
    return [best["label"]]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The pipeline logs its device and over-long texts for every call; the check's output
    is its counts, on the card."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@dataclasses.dataclass(frozen=True)
class PipelineCheck:
    """What optimum + transformers.pipeline answered on `rows` test texts, one call each,
    against our runtime's answer to each text alone."""

    rows: int
    same_with_recipe: int = 0  # the card's recipe: template, truncation=True, our rule
    same_plain: int = 0  # `classify(text, truncation=True)`: top label only, no template
    error: str = ""  # why optimum could not load or run the directory; empty when it did
    installed: bool = True  # optimum-onnx was importable where the export ran

    @property
    def loaded(self) -> bool:
        return self.installed and not self.error


def check_with_pipeline(model_dir: Path, manifest: Manifest, texts: Sequence[str]) -> PipelineCheck:
    """Load `model_dir` with ORTModelForSequenceClassification inside transformers.pipeline
    and compare its answers with the service runtime's on `texts`."""
    from service.runtime import OnnxClassifier

    texts = list(texts)
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError:  # optional where export runs; the card says it was not checked
        return PipelineCheck(len(texts), installed=False)
    from transformers import AutoTokenizer, pipeline

    try:
        with _quiet_transformers():
            model = ORTModelForSequenceClassification.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
            prompts = fill_template(manifest.prompt_template, texts)
            scored = classify(prompts, truncation=True, top_k=None)
            plain = classify(texts, truncation=True)
    except Exception as exc:  # optimum raises many types; the card reports what happened
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        log.warning("%s: optimum could not load or run it: %s", manifest.name, first)
        return PipelineCheck(len(texts), error=f"{type(exc).__name__}: {first}")
    ours = OnnxClassifier(model_dir)
    served = [list(ours.predict([text])[0].labels) for text in texts]  # one text per call
    rule = manifest.decision
    same_recipe = sum(recipe_labels(s, rule) == a for s, a in zip(scored, served, strict=True))
    same_plain = sum([p["label"]] == a for p, a in zip(plain, served, strict=True))
    return PipelineCheck(len(texts), same_recipe, same_plain)
