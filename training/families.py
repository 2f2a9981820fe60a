"""The three model families as PyTorch modules with one contract.

Every classifier takes `input_ids` and `attention_mask` (B, T), right-padded, and returns
`logits` (B, num_labels). Pooling and head live inside the module, so the exported ONNX graph
does everything after tokenization and the server never needs to know the family.

- encoder: a bidirectional encoder (MiniLM/BERT), mean-pooled, linear head.
- extracted_encoder: a decoder-only LM made bidirectional (padding still masked) and
  optionally cut to its first K layers, or the encoder half of a T5; mean-pooled, linear head.
- causal_lm: a decoder-only LM kept causal, with either a linear head on the last non-pad
  token ("last_token") or the next-token logits of each label's word ("label_words").
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

Family = Literal["encoder", "extracted_encoder", "causal_lm"]
Head = Literal["mean_pool", "last_token", "label_words"]


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


def is_decoder_config(config: PretrainedConfig) -> bool:
    return config.model_type not in ("bert", "t5", "mt5", "roberta", "distilbert", "xlm-roberta")


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
        self.decoder = is_decoder_config(backbone.config)
        self.bidirectional = spec.family == "extracted_encoder" and self.decoder
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

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask
        if self.decoder:
            mask = decoder_mask(attention_mask, self.backbone.dtype, causal=not self.bidirectional)
        out = self.backbone(input_ids=input_ids, attention_mask=mask)
        return out.last_hidden_state  # (B, T, C)

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


def load_backbone(source: str, spec: ModelSpec) -> tuple[PreTrainedModel, torch.Tensor | None]:
    """Pretrained backbone weights from a local directory or a hub id, and the output
    embedding when the head scores label words (it may be untied from the input one)."""
    config = AutoConfig.from_pretrained(source)
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
    if spec.family == "extracted_encoder" and is_decoder_config(backbone.config):
        cut_layers(backbone, spec.layers)
    elif spec.layers is not None:
        raise ValueError("layers applies only to extracted encoders from decoder LMs")
    return backbone


def build_classifier(source: str | PretrainedConfig, spec: ModelSpec) -> Classifier:
    """From pretrained weights (a path or hub id) or, given a config, randomly initialised."""
    output_embeddings = None
    if isinstance(source, PretrainedConfig):
        backbone = backbone_from_config(source)
    else:
        backbone, output_embeddings = load_backbone(source, spec)
    return Classifier(prepare_backbone(backbone, spec), spec, output_embeddings)
