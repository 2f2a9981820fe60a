"""A decoder graph with past keys/values, so a prompted label-word model encodes its shared
prompt prefix (instruction and few-shot examples before the text) once, not per request.

A label-word model's prompt is `PREFIX{text}SUFFIX`; with k few-shot examples PREFIX holds
k filled prompts and their answers, usually far more tokens than the text. In a causal LM
the prefix's keys and values do not depend on what follows, so they can be computed once and
reused: the cached graph (`model_with_past.onnx`, beside the plain `model.onnx`) takes
`input_ids` and `attention_mask` of the request's tokens after the prefix and the prefix's
`past_key.{i}`/`past_value.{i}` (batch 1, broadcast over the batch inside the graph), and
returns the label words' logits and the `present_*` keys/values. Run on the prefix alone with
an empty past, it gives that prefix's cache; the service does that once at load
(service/prefix_cache.py).

Why not optimum's `text-generation-with-past` export: its graph returns the LM head's logits
over the whole vocabulary at every position ((B, T, 49152) for SmolLM2), while our
classifier's graph returns the trained label-word rows at the last real token; the trained
rows differ from the LM head after fine-tuning. So the classifier is traced with its own head,
with `torch.onnx.export` and the same additive 4-D mask the plain graph uses
(training/families.py `decoder_mask`), extended to the past: every prefix position is
visible, the request's tokens are causal and their padding masked. Position ids continue
after the prefix, as in the uncached prompt.

`add_prefix_cache` writes the graph into an exported model directory and checks it on the
whole test split through the serving runtime, cached against uncached: the manifest's
`prefix_cache` record holds the prefix length, the agreement (1.0 or the cache is refused)
and the largest logit difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from core.manifest import MANIFEST_NAME, Manifest, sha256_of
from training.families import Classifier, last_token_index

log = logging.getLogger(__name__)

CACHED_MODEL_NAME = "model_with_past.onnx"
OPSET = 17


class LabelWordsWithPast(torch.nn.Module):
    """(input_ids (B, T), attention_mask (B, T), past (1, H, P, D) per layer and kind) ->
    (logits (B, L), presents (B, H, P+T, D)): the label-word classifier continued after a
    cached prefix of P tokens that every row shares."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        if classifier.spec.head != "label_words" or not classifier.decoder:
            raise ValueError("a prefix cache needs a causal label-word model (head label_words)")
        self.classifier = classifier
        self.layers = classifier.backbone.config.num_hidden_layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        batch, steps = input_ids.shape
        past_len = past[0].shape[2]
        # The shared prefix, broadcast over the batch: one copy fed, B rows attended.
        legacy = tuple(
            (past[2 * i].expand(batch, -1, -1, -1), past[2 * i + 1].expand(batch, -1, -1, -1))
            for i in range(self.layers)
        )
        cache = DynamicCache.from_legacy_cache(legacy)
        dtype = self.classifier.backbone.dtype
        pos = torch.arange(steps, device=input_ids.device)
        keep_new = attention_mask[:, None, None, :].bool() & (
            pos[None, None, None, :] <= pos[None, None, :, None]
        )  # (B, 1, T, T): causal over the request's tokens, padding masked
        keep_past = torch.ones(
            (batch, 1, steps, past_len), dtype=torch.bool, device=input_ids.device
        )  # (B, 1, T, P): the prefix is visible to every token
        keep = torch.cat([keep_past, keep_new], dim=-1)  # (B, 1, T, P+T)
        mask = torch.where(
            keep, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype)
        )
        position_ids = (past_len + pos)[None, :].expand(batch, -1)  # continue after the prefix
        out = self.classifier.backbone(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache_position=past_len + pos,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state  # (B, T, C)
        last = hidden[torch.arange(batch), last_token_index(attention_mask)]  # (B, C)
        logits = torch.nn.functional.linear(last, self.classifier.label_words)  # (B, L)
        presents = []
        for key, value in out.past_key_values.to_legacy_cache():
            presents += [key, value]
        return (logits, *presents)


def past_names(layers: int) -> tuple[list[str], list[str]]:
    inputs = [f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    return inputs, [n.replace("past_", "present_") for n in inputs]


def export_with_past(model: Classifier, path: Path) -> None:
    """Trace the classifier continued after a past of 3 tokens (any length runs: dynamic)."""
    wrapper = LabelWordsWithPast(model).eval()
    config = model.backbone.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    past = [torch.randn(1, heads, 3, head_dim) for _ in range(2 * wrapper.layers)]
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    inputs, outputs = past_names(wrapper.layers)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    axes |= {name: {2: "past"} for name in inputs}
    axes |= {name: {0: "batch", 2: "total"} for name in outputs}
    with torch.inference_mode():
        torch.onnx.export(
            wrapper,
            (input_ids, attention_mask, *past),
            str(path),
            input_names=["input_ids", "attention_mask", *inputs],
            output_names=["logits", *outputs],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # as the plain graph: the TorchScript exporter keeps our 4-D mask
        )


def _refresh_files(model_dir: Path, manifest: Manifest) -> Manifest:
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    return dataclasses.replace(
        manifest,
        files={n: sha256_of(model_dir / n) for n in names},
        file_sizes={n: (model_dir / n).stat().st_size for n in names},
    )


def check_cache(model_dir: Path, texts: list[str], *, threads: int = 1) -> dict[str, Any]:
    """Cached against uncached logits on `texts` through the serving runtime."""
    from service.runtime import OnnxClassifier

    plain = OnnxClassifier(model_dir, threads=threads, prefix_cache=False)
    cached = OnnxClassifier(model_dir, threads=threads, prefix_cache=True)
    assert cached.prefix is not None
    a = plain.logits_batched(texts)  # batches of 32: a few-shot prompt is long
    b = cached.logits_batched(texts)
    same = plain.decision.decide(a).label_ids == cached.decision.decide(b).label_ids
    used = cached.prefix.rows_matching(cached.encoder.encode(texts).ids)
    return {
        "prefix_tokens": cached.prefix.length,  # encoded once at load
        "rows": len(texts),
        "rows_cached": int(used.sum()),  # the others run whole (their prefix was cut)
        "answer_agreement_vs_uncached": float(same.mean()) if len(same) else 1.0,
        "max_abs_logit_diff_vs_uncached": float(np.abs(a - b).max()) if len(a) else 0.0,
    }


def add_prefix_cache(
    model_dir: Path | str, model: Classifier, test_texts: list[str], *, threads: int = 1
) -> dict[str, Any]:
    """Write `model_with_past.onnx` into an exported label-word model directory, check it on
    `test_texts` against the plain graph, and record the result in its manifest; a cache
    whose answers differ on any row is removed again (ValueError)."""
    model_dir = Path(model_dir)
    manifest = Manifest.read(model_dir)
    if "{text}" not in manifest.prompt_template or manifest.prompt_template.startswith("{text}"):
        raise ValueError(f"{manifest.name}: its prompt has no prefix before the text to cache")
    export_with_past(model, model_dir / CACHED_MODEL_NAME)
    record = {"graph": CACHED_MODEL_NAME, "layers": model.backbone.config.num_hidden_layers}
    manifest = _refresh_files(model_dir, dataclasses.replace(manifest, prefix_cache=record))
    manifest.write(model_dir)  # the runtime below reads it (and verifies the new file)
    checked = check_cache(model_dir, test_texts, threads=threads)
    log.info("%s: prefix cache %s", manifest.name, checked)
    if checked["answer_agreement_vs_uncached"] < 1.0:
        (model_dir / CACHED_MODEL_NAME).unlink()
        manifest = _refresh_files(model_dir, dataclasses.replace(manifest, prefix_cache={}))
        manifest.write(model_dir)
        raise ValueError(f"{manifest.name}: the prefix cache changed answers ({checked})")
    manifest = dataclasses.replace(manifest, prefix_cache={**record, **checked})
    manifest.write(model_dir)
    return manifest.prefix_cache


def add_to_run_export(model_dir: Path | str, run_dir: Path | str, *, threads: int = 1) -> dict:
    """`add_prefix_cache` with the run's model and test split."""
    from core.data import dataset_for
    from training.run_dir import load_run

    model, _, config, _ = load_run(run_dir)
    texts = dataset_for(config).test.texts
    return add_prefix_cache(model_dir, model, texts, threads=threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add a prefix cache to an exported model")
    parser.add_argument("model_dir", type=Path, help="an exported fp32 label-word model")
    parser.add_argument("run_dir", type=Path, help="the run it was exported from")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(add_to_run_export(args.model_dir, args.run_dir, threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
