"""The three model families as PyTorch modules with one contract.

Every classifier takes `input_ids` and `attention_mask` (B, T), right-padded, and returns
`logits` (B, num_labels). Pooling and head live inside the module, so the exported ONNX graph
does everything after tokenization and the server never needs to know the family.

- encoder: a bidirectional encoder (MiniLM/BERT/DeBERTa/ModernBERT...), mean-pooled, linear head.
- extracted_encoder: a decoder-only LM made bidirectional (padding still masked) and
  optionally cut to its first K layers, or the encoder half of a T5; mean-pooled, linear head.
- causal_lm: a decoder-only LM kept causal, with either a linear head on the last non-pad
  token ("last_token") or the next-token logits of each label's word ("label_words").

Which attention mask a backbone gets is decided from its own config (`attention_kind`), not
from a list of names: any Hugging Face masked-LM encoder takes the plain 2-D 0/1 mask, any
decoder-only causal LM our 4-D additive mask. What cannot work is refused when the classifier
is built, naming the model type, never at the first training step.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

Family = Literal["encoder", "extracted_encoder", "causal_lm"]
Head = Literal["mean_pool", "last_token", "label_words"]
# encoder: bidirectional, plain 2-D 0/1 mask; decoder: decoder-only LM, our 4-D additive mask
# (causal, or bidirectional for extracted encoders); t5_encoder: the encoder half of T5/mT5.
AttentionKind = Literal["encoder", "decoder", "t5_encoder"]

WHAT_WORKS = (
    "what works: a bidirectional encoder with a masked-LM head in transformers (bert, roberta, "
    "deberta-v2, electra, albert, mpnet, modernbert, ...), a decoder-only causal LM (llama, "
    "qwen2, smollm3, ...), or t5/mt5 (its encoder half)"
)
# Sub-configs that mark a composite (multimodal) model: its text model is what could work.
_COMPOSITE_KEYS = ("text_config", "vision_config", "audio_config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What it takes to rebuild a trained classifier from its backbone config and weights."""

    family: Family
    head: Head
    num_labels: int
    layers: int | None = None  # decoder layers kept (extracted encoders); None = all
    label_token_ids: tuple[int, ...] = ()  # label_words: first token of each label's word
    dropout: float = 0.1
    # single_label: softmax over labels, cross-entropy; multi_label: one sigmoid per label,
    # binary cross-entropy. Never mixed: softmax makes labels compete, which multi-label
    # labels must not.
    problem_type: Literal["single_label", "multi_label"] = "single_label"

    def __post_init__(self) -> None:
        allowed = {
            "encoder": {"mean_pool"},
            "extracted_encoder": {"mean_pool"},
            "causal_lm": {"last_token", "label_words"},
        }
        if self.family not in allowed:
            raise ValueError(f"family must be one of {sorted(allowed)}, got {self.family!r}")
        if self.head not in allowed[self.family]:
            raise ValueError(
                f"head {self.head!r} does not fit family {self.family!r}; "
                f"use one of {sorted(allowed[self.family])}"
            )
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {self.num_labels}")
        if self.head == "label_words" and len(self.label_token_ids) != self.num_labels:
            raise ValueError("label_words needs one label token id per label")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.problem_type not in ("single_label", "multi_label"):
            raise ValueError(
                f"problem_type must be single_label or multi_label, got {self.problem_type!r}"
            )


def is_t5_config(config: PretrainedConfig) -> bool:
    return config.model_type in ("t5", "mt5")


def _refuse(model_type: str, why: str) -> ValueError:
    return ValueError(f"model type {model_type!r} is not supported: {why}; {WHAT_WORKS}")


def _architecture_says(config: PretrainedConfig, suffix: str) -> bool:
    """A checkpoint's own `architectures` (e.g. ["NewBertForMaskedLM"]), for model types
    transformers' auto mappings do not list."""
    return any(name.endswith(suffix) for name in getattr(config, "architectures", None) or ())


def attention_kind(config: PretrainedConfig) -> AttentionKind:
    """How a backbone attends, hence which mask it takes; ValueError for what cannot work.

    The rule, checked against transformers 4.57: T5/mT5 are encoder-decoders whose encoder
    half we keep; any other encoder-decoder (BART, Whisper, ...) is refused, as its encoder
    class differs per model. A model type with a masked-LM head is a bidirectional encoder
    (22 types have both heads, e.g. bert, roberta, electra: their base model is the encoder,
    so masked-LM wins). A causal-LM-only type is a decoder. Anything else (vision, audio,
    composite multimodal configs) is refused.
    """
    model_type = config.model_type
    if is_t5_config(config):
        return "t5_encoder"
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model_type, "an encoder-decoder other than t5/mt5")
    sub_configs = getattr(config, "sub_configs", None) or {}
    if any(key in sub_configs for key in _COMPOSITE_KEYS):
        raise _refuse(model_type, "a composite (multimodal) config; use its text model's config")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or _architecture_says(config, "ForMaskedLM"):
        if getattr(config, "is_decoder", False):
            # BERT-style models with is_decoder=True build a causal mask from the 2-D one.
            raise _refuse(model_type, "config.is_decoder=True makes this encoder causal")
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or _architecture_says(config, "ForCausalLM"):
        return "decoder"
    raise _refuse(model_type, "neither a masked-LM encoder nor a causal LM in transformers")


def is_decoder_config(config: PretrainedConfig) -> bool:
    """A decoder-only LM (4-D mask); raises ValueError for a model type that cannot work."""
    return attention_kind(config) == "decoder"


def backbone_states(
    backbone: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    kind: AttentionKind,
    causal: bool,
) -> torch.Tensor:
    """(B, T, C) last hidden states. Only `input_ids` and `attention_mask` are passed: some
    encoders reject other kwargs, and those that want token_type_ids default them to zeros."""
    mask = attention_mask  # (B, T): encoders build their own (bidirectional) mask from it
    if kind == "decoder":
        mask = decoder_mask(attention_mask, backbone.dtype, causal=causal)  # (B, 1, T, T)
    return backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state


def decoder_mask(attention_mask: torch.Tensor, dtype: torch.dtype, *, causal: bool) -> torch.Tensor:
    """An additive 4-D mask (B, 1, T, T) for a decoder: causal or bidirectional, padding masked.

    transformers 4.57 ignores `config.is_causal = False` for Llama-style models (measured:
    the first token's state does not move), but it uses a 4-D mask as given. Building the
    causal mask ourselves too keeps transformers' vmap-based mask code out of the ONNX trace
    (the TorchScript exporter cannot trace it). Padding stays masked, so a right-padded text
    gets the same states as the text alone.
    """
    _, seq_len = attention_mask.shape
    keep = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T) keys that are real tokens
    if causal:
        pos = torch.arange(seq_len, device=attention_mask.device)
        keep = keep & (pos[None, None, None, :] <= pos[None, None, :, None])  # (B, 1, T, T)
    else:
        keep = keep.expand(-1, 1, seq_len, -1)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, C)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row of a right-padded batch."""
    return (attention_mask.sum(dim=1) - 1).clamp(min=0)  # (B,)


class Classifier(nn.Module):
    """Backbone + pooling + head; `forward` returns {"logits", "loss"?} for the Trainer."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        spec: ModelSpec,
        output_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        hidden = backbone.config.hidden_size  # T5 configs alias it to d_model
        self.kind = attention_kind(backbone.config)
        check_family(self.kind, spec, backbone.config.model_type)
        self.decoder = self.kind == "decoder"
        # Encoders and T5 are bidirectional by construction; a decoder only when extracted.
        self.bidirectional = not self.decoder or spec.family == "extracted_encoder"
        self.dropout = nn.Dropout(spec.dropout)
        if spec.head == "label_words":
            # No new head: the label words' rows of the LM's output embedding score them,
            # so the untrained model already works zero-shot and fine-tuning starts there.
            if output_embeddings is None:
                output_embeddings = backbone.get_input_embeddings().weight
            rows = output_embeddings[list(spec.label_token_ids)].detach().clone()
            self.label_words = nn.Parameter(rows)  # (num_labels, C)
            self.head = None
        else:
            self.head = nn.Linear(hidden, spec.num_labels)
        # Loss options set by training; buffers are not persistent, so saved weights and the
        # exported graph never carry them.
        self.register_buffer("class_weights", None, persistent=False)  # (L,) or None
        self.distill_temperature = 1.0
        self.distill_alpha = 0.0
        # Last, and RNG-free (eval mode): seeded initialisation is the same as without it.
        check_backbone(backbone, self.kind, bidirectional=self.bidirectional)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return backbone_states(
            self.backbone,
            input_ids,
            attention_mask,
            kind=self.kind,
            causal=not self.bidirectional,
        )  # (B, T, C)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.encode(input_ids, attention_mask)  # (B, T, C)
        if self.spec.head == "mean_pool":
            logits = self.head(self.dropout(mean_pool(hidden, attention_mask)))
        else:
            idx = last_token_index(attention_mask)
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, C)
            if self.spec.head == "last_token":
                logits = self.head(self.dropout(last))
            else:
                logits = F.linear(last, self.label_words)  # (B, num_labels)
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = self.loss(logits, labels, soft_labels)
        return result

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy (single-label) or binary cross-entropy (multi-label) on the gold
        labels, mixed with a distillation term on a teacher's soft labels when given:
        KL at temperature T scaled by T^2 (Hinton et al. 2015), or BCE on the teacher's
        sigmoid probabilities. Rows without a gold label (label -100; unlabeled texts) count
        only through the teacher."""
        logits = logits.float()  # (B, L)
        multi = self.spec.problem_type == "multi_label"
        if multi:
            gold = labels.float()
            has_gold = (gold >= 0).all(dim=1)  # (B,)
            hard = F.binary_cross_entropy_with_logits(
                logits[has_gold], gold[has_gold], pos_weight=self.class_weights
            )
        else:
            has_gold = labels != -100
            hard = F.cross_entropy(logits[has_gold], labels[has_gold], weight=self.class_weights)
        if not has_gold.any():
            hard = logits.sum() * 0.0  # a batch of unlabeled rows only
        if soft_labels is None or self.distill_alpha == 0:
            return hard
        t = self.distill_temperature
        if multi:
            soft = F.binary_cross_entropy_with_logits(logits / t, soft_labels.float())
        else:
            soft = F.kl_div(
                F.log_softmax(logits / t, dim=-1), soft_labels.float(), reduction="batchmean"
            )
        soft = soft * t * t
        alpha = self.distill_alpha if has_gold.any() else 1.0
        return alpha * soft + (1 - alpha) * hard


def check_family(kind: AttentionKind, spec: ModelSpec, model_type: str) -> None:
    """causal_lm means a decoder kept causal: an encoder cannot be one (its 2-D mask lets
    every token see the whole text, and it has no next-token head for label words)."""
    if spec.family == "causal_lm" and kind != "decoder":
        raise ValueError(
            f"family 'causal_lm' needs a decoder-only LM, but model type {model_type!r} is a "
            f"bidirectional encoder ({kind}); use family 'encoder' or 'extracted_encoder'"
        )


def _accepts(backbone: PreTrainedModel, names: tuple[str, ...]) -> list[str]:
    """The names in `names` that the backbone's forward does not take."""
    params = inspect.signature(backbone.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [name for name in names if name not in params]


def check_backbone(backbone: PreTrainedModel, kind: AttentionKind, *, bidirectional: bool) -> None:
    """One tiny forward at build time, so a backbone that cannot take our inputs fails here
    (naming its model type) rather than at the first training step, and one that silently
    ignores the mask we rely on for bidirectionality is caught at all.

    Two rows differing only in their last token: if the model is meant to be bidirectional,
    the first token's state must differ between them.
    """
    model_type = backbone.config.model_type
    missing = _accepts(backbone, ("input_ids", "attention_mask"))
    if missing:  # e.g. FNet (no attention mask: it cannot mask padding), wav2vec2, perceiver
        raise _refuse(model_type, f"its forward takes no {', '.join(missing)}")
    device = next(backbone.parameters()).device
    first = backbone.config.vocab_size // 2  # ordinary tokens, clear of special ids
    rows = [[first, first + 1, first + 2], [first, first + 1, first + 3]]
    ids = torch.tensor(rows, device=device)  # (2, 3)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            hidden = backbone_states(
                backbone, ids, torch.ones_like(ids), kind=kind, causal=not bidirectional
            )  # (2, 3, C)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        mask = "a 4-D additive" if kind == "decoder" else "a 2-D 0/1"
        raise _refuse(model_type, f"its backbone fails on {mask} attention mask ({exc})") from exc
    finally:
        backbone.train(was_training)
    if bidirectional and torch.equal(hidden[0, 0], hidden[1, 0]):
        raise _refuse(model_type, "it ignored our attention mask: no token sees a later one")


def cut_layers(backbone: PreTrainedModel, layers: int | None) -> None:
    """Keep the first `layers` decoder blocks (the rest are dropped, not just skipped)."""
    if layers is None:
        return
    blocks = backbone.layers
    if layers > len(blocks):
        raise ValueError(f"layers={layers} but the model has only {len(blocks)}")
    backbone.layers = blocks[:layers]
    backbone.config.num_hidden_layers = layers
    if getattr(backbone.config, "layer_types", None):
        backbone.config.layer_types = backbone.config.layer_types[:layers]


def backbone_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised backbone of the right class (the T5 encoder half for T5)."""
    if is_t5_config(config):
        from transformers import T5EncoderModel

        return T5EncoderModel(config)
    return AutoModel.from_config(config)


def load_trained_backbone(model_dir: str) -> PreTrainedModel:
    """A backbone saved with `save_pretrained` by a run: what `AutoModel` loads, except T5,
    whose saved half is the encoder alone (AutoModel would add a random decoder)."""
    config = AutoConfig.from_pretrained(model_dir)
    if is_t5_config(config):
        from transformers import T5EncoderModel

        loader: type = T5EncoderModel
    else:
        loader = AutoModel
    backbone, info = loader.from_pretrained(model_dir, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        # Random weights where trained ones belong would export a model that only looks fine.
        raise ValueError(
            f"{model_dir}: the saved backbone lacks weights {info['missing_keys'][:3]} "
            f"(mismatched: {info['mismatched_keys'][:3]}); train the run again"
        )
    return backbone


def load_backbone(source: str, spec: ModelSpec) -> tuple[PreTrainedModel, torch.Tensor | None]:
    """Pretrained backbone weights from a local directory or a hub id, and the output
    embedding when the head scores label words (it may be untied from the input one)."""
    config = AutoConfig.from_pretrained(source)
    check_family(attention_kind(config), spec, config.model_type)  # before loading weights
    if is_t5_config(config):
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(source), None
    if spec.head == "label_words":
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(source)
        return lm.get_decoder(), lm.get_output_embeddings().weight
    # The base model, without any LM head: heads are ours.
    return AutoModel.from_pretrained(source), None


def prepare_backbone(backbone: PreTrainedModel, spec: ModelSpec) -> PreTrainedModel:
    backbone.config.use_cache = False  # classifiers never decode; a cache breaks export
    if spec.family == "extracted_encoder" and attention_kind(backbone.config) == "decoder":
        cut_layers(backbone, spec.layers)
    elif spec.layers is not None:
        raise ValueError("layers applies only to extracted encoders from decoder LMs")
    return backbone


def build_classifier(source: str | PretrainedConfig, spec: ModelSpec) -> Classifier:
    """From pretrained weights (a path or hub id) or, given a config, randomly initialised."""
    output_embeddings = None
    if isinstance(source, PretrainedConfig):
        check_family(attention_kind(source), spec, source.model_type)  # before building it
        backbone = backbone_from_config(source)
    else:
        backbone, output_embeddings = load_backbone(source, spec)
    return Classifier(prepare_backbone(backbone, spec), spec, output_embeddings)
