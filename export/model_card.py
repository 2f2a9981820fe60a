"""The model card (README.md) of an exported model directory, from its manifest.

Written with huggingface_hub's `ModelCard`/`ModelCardData`, so the Hub and any tool that reads
cards find the metadata (pipeline tag, base model, data, test metrics as eval results). The
text says what the manifest says (data, metrics, the gate's verdict, precision, preprocessing
and decision rule) and, per model, whether optimum + `transformers.pipeline` give the served
answers, what differs when they do not, and what the export measured when it tried.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from core.manifest import MODEL_NAME, Manifest
from export.hf_files import PipelineCheck
from training.run_card import hub_model_id

CARD_NAME = "README.md"
# Single-label metrics reported as eval results (value in [0, 1]); multi-label's below.
SINGLE_METRICS = ("accuracy", "macro_f1")
MULTI_METRICS = ("macro_f1", "micro_f1", "exact_match")
FAMILIES = {
    "encoder": "a bidirectional encoder, mean-pooled, with a linear head",
    "extracted_encoder": "a decoder-only LM made bidirectional (or a T5 encoder), mean-pooled, "
    "with a linear head",
    "causal_lm": "a decoder-only LM kept causal",
}


def differences(m: Manifest) -> list[str]:
    """What a plain `pipeline(...)` call does differently from the service for this model,
    each with what to do instead; empty when the plain call with `truncation=True` serves the
    same answers."""
    pre, rule, out = m.preprocessing, m.decision, []
    if pre.prompt_template != "{text}":
        out.append(
            f"The service puts each text into the prompt template `{pre.prompt_template!r}` "
            "before tokenizing; a pipeline tokenizes the text as given. Pass "
            "`template.replace('{text}', text)` instead of the text."
        )
    if pre.truncation == "head_tail":
        out.append(
            f"Texts over {pre.max_length} tokens: the service keeps the first "
            f"{pre.head_share:.0%} of the token budget and the last {1 - pre.head_share:.0%} "
            "(head_tail); `truncation=True` keeps the first tokens only, so answers to such "
            "texts can differ. Shorter texts get the same answers."
        )
    if rule.rejects:
        out.append(
            f"The service answers `{rule.oos_label}` (rejected) when the top probability is "
            f"below {rule.rejection_threshold:.4g}; a pipeline answers the most probable label. "
            "Call with `top_k=None` and apply the threshold to the top score."
        )
    if rule.multi_label:
        cuts = rule.default_thresholds()
        if any(t != 0.5 for t in cuts):
            named = zip(rule.labels, cuts, strict=True)
            pairs = ", ".join(f"`{name}` {t:.4g}" for name, t in named)
            which = f"per-label thresholds tuned on validation: {pairs}"
        else:
            which = "a threshold of 0.5 for every label"
        out.append(
            "Multi-label: the service answers every label whose sigmoid score is at or above "
            f"its threshold ({which}); a pipeline answers the single best label unless called "
            "with `top_k=None`, and applies no threshold."
        )
    return out


def reproduces(m: Manifest) -> bool:
    """True when `classify(text, truncation=True)` alone gives the served answer."""
    return not differences(m)


def usage(m: Manifest, where: str) -> str:
    """A snippet that loads the directory and answers as the service does."""
    rule, pre = m.decision, m.preprocessing
    lines = [
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from transformers import AutoTokenizer, pipeline",
        "",
        f'model = ORTModelForSequenceClassification.from_pretrained("{where}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        'classify = pipeline("text-classification", model=model, tokenizer=tokenizer)',
        "",
        'texts = ["a gorgeous, witty film"]',
    ]
    if pre.prompt_template != "{text}":
        lines.append(f"template = {pre.prompt_template!r}")
        lines.append('texts = [template.replace("{text}", text) for text in texts]')
    if not rule.multi_label and not rule.rejects:
        lines.append("answers = [s['label'] for s in classify(texts, truncation=True)]")
        return "\n".join(lines)
    lines.append("scores = classify(texts, truncation=True, top_k=None)  # every label, best first")
    if rule.multi_label:
        cut = dict(zip(rule.labels, rule.default_thresholds(), strict=True))
        lines.append(f"thresholds = {json.dumps(cut)}")
        lines.append(
            "answers = [[s['label'] for s in row if s['score'] >= thresholds[s['label']]] "
            "for row in scores]"
        )
    else:
        lines.append(
            f"answers = [{rule.oos_label!r} if row[0]['score'] < {rule.rejection_threshold!r} "
            "else row[0]['label'] for row in scores]"
        )
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "n/a"


def _sci(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, int | float) else "n/a"


def _check_text(m: Manifest, check: PipelineCheck | None) -> str:
    if check is None:
        return "Not checked at export: no device here could run this file."
    if not check.installed:
        return (
            "Not checked at export: optimum-onnx is not installed where this was exported "
            "(`pip install optimum-onnx[onnxruntime]`)."
        )
    if not check.loaded:
        return (
            "**optimum could not load or run this directory** at export: "
            f"`{check.error}`. Serve it with smallcls (onnxruntime on `model.onnx`)."
        )
    text = (
        f"Checked at export on the first {check.rows} test texts, one call per text, against "
        f"the smallcls runtime's answer to each text alone: the snippet above gave the same "
        f"answer on {check.same_with_recipe} of {check.rows}; a plain "
        f"`classify(text, truncation=True)` on {check.same_plain} of {check.rows}."
    )
    if m.quantization.get("method") == "dynamic":
        text += (
            " Dynamic int8 scales activations per call (over the whole batch), so an answer "
            "near the decision boundary can depend on which texts share its batch, in the "
            "service as in a batched pipeline."
        )
    return text


def _metric_rows(m: Manifest) -> list[tuple[str, Any]]:
    metrics = m.metrics
    names = MULTI_METRICS if m.decision.multi_label else SINGLE_METRICS
    rows = [(name, metrics.get(name)) for name in names]
    oos = metrics.get("oos")
    if isinstance(oos, dict):
        rows += [(f"oos: {k}", oos.get(k)) for k in ("in_scope_accuracy", "oos_recall")]
        rows += [("oos: oos_precision", oos.get("oos_precision"))]
    return [(name, value) for name, value in rows if value is not None]


def card_data(m: Manifest) -> ModelCardData:
    dataset = m.dataset.get("hub_dataset") or m.dataset.get("name") or "unknown"
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="test",
            metric_type=name.replace("oos: ", ""),
            metric_value=round(float(value), 6),
        )
        for name, value in _metric_rows(m)
    ]
    return ModelCardData(
        model_name=m.name,
        library_name="optimum",
        pipeline_tag="text-classification",
        base_model=hub_model_id(m.base_model),
        datasets=[dataset],
        metrics=sorted({r.metric_type for r in results}),
        eval_results=results or None,
        tags=["onnx", "smallcls", m.family, m.variant],
        smallcls={
            "variant": m.variant,
            "precision": m.precision,
            "gate": {
                k: m.gate.get(k) for k in ("passed", "forced", "agreement", "reasons", "metric")
            },
            "pipeline_reproduces_service": reproduces(m),
        },
    )


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def _files(m: Manifest) -> str:
    pre = m.preprocessing
    rows = [
        (
            f"`{MODEL_NAME}`",
            "the graph: `input_ids`, `attention_mask` (int64, batch x tokens, right-padded) to "
            f"`logits` (batch x {len(m.labels)}); pooling and head are inside",
        ),
        ("`config.json`", "the backbone's config with `id2label`, `label2id`, `problem_type`"),
        ("`tokenizer.json`", "the tokenizer the service uses, without padding or truncation"),
        (
            "`tokenizer_config.json`, `special_tokens_map.json`",
            f"for `AutoTokenizer`: `model_max_length` {pre.max_length}, truncation side "
            f"`{pre.truncation_side}`, right padding",
        ),
        (
            "`manifest.json`",
            "the smallcls contract (preprocessing, decision rule), the evidence, and the "
            "sha256 of every other file",
        ),
    ]
    return "## Files\n\n" + _table(("file", "what"), rows)


def _data(m: Manifest) -> str:
    ds = m.dataset
    validation = ds.get("validation_path")
    validation = f"`{validation}`" if validation else "carved from the training file"
    test = f"`{ds['test_path']}`" if ds.get("test_path") else "a split carved from it"
    text = (
        f"## Data\n\nDataset `{ds.get('name')}`: trained on `{ds.get('train_path')}`, tested on "
        f"{test} (validation: {validation}), text column `{ds.get('text_column')}`, label "
        f"column `{ds.get('label_column')}`."
    )
    if ds.get("test_rows"):
        text += f" Validation and test were subsampled to {ds['test_rows']} rows."
    return text


def _metrics(m: Manifest) -> str:
    rows = [(name, _pct(value)) for name, value in _metric_rows(m)]
    parity = m.parity
    return (
        f"## Metrics\n\nThis very file, through the serving runtime, on "
        f"{m.metrics.get('rows', 'n/a')} test rows:\n\n{_table(('metric', 'value'), rows)}\n\n"
        f"Parity: max |logit difference| with torch "
        f"{_sci(parity.get('max_abs_logit_diff_vs_torch'))} on {parity.get('rows', 'n/a')} "
        f"rows; answers equal to the training run's own on "
        f"{_pct(parity.get('answer_agreement_vs_run'))} of the test rows."
    )


def _gate(m: Manifest) -> str:
    gate = m.gate
    verdict = "passed" if gate.get("passed") else "refused"
    if gate.get("forced"):
        verdict = "refused, kept with --force"
    reasons = "; ".join(gate.get("reasons") or []) or "none"
    parent = (
        f"the torch model, on the first {m.parity.get('rows', 'n/a')} test rows"
        if m.variant == "fp32"
        else "the fp32 export, on the whole test split"
    )
    drop = gate.get("max_accuracy_drop")
    allowed = f"{drop * 100:.1f}" if isinstance(drop, int | float) else "n/a"
    return (
        f"## Accuracy gate\n\nVerdict: **{verdict}** (checked on "
        f"{gate.get('checked_on', 'n/a')}). Compared with its parent, {parent}: "
        f"{gate.get('metric', 'accuracy')} {_pct(gate.get('accuracy'))} against "
        f"{_pct(gate.get('parent_accuracy'))} (at most {allowed} points lower allowed); answers "
        f"agree on {_pct(gate.get('agreement'))} (needs {_pct(gate.get('min_agreement'))}); max "
        f"|logit difference| {_sci(gate.get('max_abs_logit_diff'))}; all logits finite: "
        f"{gate.get('finite')}. Reasons for refusal: {reasons}."
    )


def _precision(m: Manifest) -> str:
    built = m.quantization or m.optimization or {"method": "torch.onnx.export"}
    return (
        f"## Precision and variant\n\nVariant `{m.variant}`, precision {m.precision}, "
        f"{m.file_sizes.get(MODEL_NAME, 0) / 1e6:.1f} MB. Made by: `{json.dumps(built)}`. "
        f"Checked on: `{json.dumps(m.verified_on)}`."
    )


def _contract(m: Manifest) -> str:
    pre, rule = m.preprocessing, m.decision
    if rule.multi_label:
        cuts = zip(rule.labels, rule.default_thresholds(), strict=True)
        listed = ", ".join(f"`{n}` {t:.4g}" for n, t in cuts)
        decision = f"one sigmoid per label; every label at or above its threshold ({listed})"
    elif rule.rejects:
        decision = (
            f"softmax, the most probable label, or `{rule.oos_label}` (rejected) when the top "
            f"probability is below {rule.rejection_threshold:.4g}"
        )
    else:
        decision = "softmax over the labels, the most probable one"
    lost = {"head": "its end", "tail": "its start", "head_tail": "its middle"}[pre.truncation]
    return (
        f"## Preprocessing and decision rule\n\n- Prompt template: `{pre.prompt_template!r}`.\n"
        f"- At most {pre.max_length} tokens, template and special tokens included; a longer "
        f"text loses {lost} (`{pre.truncation}`). Right padding with `{pre.pad_token}` (id "
        f"{pre.pad_token_id}).\n- Decision: {decision}."
    )


def _loading(m: Manifest, check: PipelineCheck | None, where: str) -> str:
    diffs = differences(m)
    if diffs:
        said = "**Not with a plain call.** What differs, and what the snippet does about it:\n\n"
        said += "\n".join(f"- {d}" for d in diffs)
    else:
        said = "**Yes**: the snippet below is a plain pipeline call with `truncation=True`."
    return (
        "## Loading with optimum and transformers\n\nDo `ORTModelForSequenceClassification` "
        f"and `pipeline` give the served answers? {said}\n\n```python\n{usage(m, where)}\n"
        f"```\n\n{_check_text(m, check)}"
    )


def _limits(m: Manifest, where: str) -> str:
    pre = m.preprocessing
    gpu = " (fp16 is meant for GPUs)" if m.precision == "fp16" else ""
    return (
        "## Intended use and limits\n\n"
        "- Classifying texts like those of its training data into the labels above. Other "
        "domains, languages or labels need a new evaluation; the figures are from one run on "
        "one test split.\n"
        f"- Texts over {pre.max_length} tokens are cut as described; answers to them rest on "
        "part of the text.\n"
        f"- The base model's licence and limits apply. The graph runs on onnxruntime{gpu}; "
        f"smallcls serves it with `smallcls serve {where}`."
    )


def _body(m: Manifest, check: PipelineCheck | None, where: str) -> str:
    labels = ", ".join(f"`{label}`" for label in m.labels)
    intro = (
        f"# {m.name}\n\nA `{m.family}` text classifier ({FAMILIES.get(m.family, m.family)}; "
        f"head `{m.head}`) on the base model `{m.base_model}`, exported to ONNX as the "
        f"`{m.variant}` variant by smallcls. Labels: {labels}."
    )
    sections = [
        intro,
        _files(m),
        _data(m),
        _metrics(m),
        _gate(m),
        _precision(m),
        _contract(m),
        _loading(m, check, where),
        _limits(m, where),
    ]
    return "\n\n".join(sections) + "\n"


def write_card(model_dir: Path, manifest: Manifest, check: PipelineCheck | None) -> Path:
    """Write `model_dir/README.md`; the snippet loads the directory by the model's name."""
    data = card_data(manifest)
    body = _body(manifest, check, manifest.name)
    path = Path(model_dir) / CARD_NAME
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(path)
    return path
