"""Tiny random checkpoints built from configs, with a tokenizer trained locally on SST-2.

Tests never download weights: these directories look to `from_pretrained` exactly like real
ones (config, weights, tokenizer), so the same code paths run as for MiniLM and SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

REPO = Path(__file__).resolve().parents[1]
SST2_TRAIN = REPO / "data" / "sst2" / "train.jsonl"
SST2_TEST = REPO / "data" / "sst2" / "test.jsonl"


def sst2_slice(src: Path, dst: Path, rows: int) -> Path:
    """The first `rows` lines of an SST-2 split, written to `dst`: small real data for tests."""
    with open(src, encoding="utf-8") as fh:
        dst.write_text("".join(line for _, line in zip(range(rows), fh, strict=False)))
    return dst


def sst2_texts(n: int = 2000) -> list[str]:
    with open(SST2_TRAIN, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]


def _word_piece(texts: list[str], style: str) -> Tokenizer:
    specials = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        if style == "bert"
        else ["<pad>", "<unk>", "<s>", "</s>"]
    )
    tok = Tokenizer(models.WordPiece(unk_token=specials[1]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials)
    )
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    elif style == "llama":  # a BOS token, as SmolLM2's tokenizer adds
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 2)]
        )
    else:  # t5: EOS at the end
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 3)]
        )
    return tok


def _save_tokenizer(tok: Tokenizer, path: Path, style: str) -> PreTrainedTokenizerFast:
    if style == "bert":
        kw = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    elif style == "llama":  # no pad token: like SmolLM2, training must set one
        kw = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    else:
        kw = dict(pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(path)
    return fast


def make_tiny(path: Path, style: str, seed: int = 0) -> Path:
    """A tiny random `bert`, `llama` or `t5` checkpoint directory at `path`."""
    torch.manual_seed(seed)
    tok = _word_piece(sst2_texts(), style)
    vocab = tok.get_vocab_size()
    if style == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                pad_token_id=0,
            )
        )
    elif style == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
                bos_token_id=2,
                eos_token_id=3,
                tie_word_embeddings=True,
            )
        )
    elif style == "t5":
        model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=vocab,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=1,
                num_heads=4,
                pad_token_id=0,
                eos_token_id=3,
                decoder_start_token_id=0,
            )
        )
    else:
        raise ValueError(style)
    model.save_pretrained(path)
    _save_tokenizer(tok, path, style)
    return path
