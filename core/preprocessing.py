"""Texts to token ids: the one preprocessing contract of training, the export gate and the API.

A `Preprocessing` is resolved once by training (prompt template, max length, truncation
strategy, padding) and written into the run and then the manifest. `TextEncoder` applies it
with the `tokenizers` library alone (no torch, no transformers), so the server and the
training loop produce the same ids from the same `tokenizer.json` and the same record: no
stage re-derives a setting or relies on a tokenizer object's last-set state.

Truncation keeps the text's head (drop from the right), its tail (drop from the left, for
label-word prompts whose question follows the text), or both: head_tail cuts an over-long text
to the first quarter of the token budget and the last three quarters, joined by a space, as
"How to Fine-Tune BERT for Text Classification?" (Sun et al. 2019,
https://arxiv.org/abs/1905.05583) found best on IMDB. The cut is made at token offsets in
the text, so it stays text and the template and special tokens fit around it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from core.fields import from_fields

Truncation = Literal["head", "tail", "head_tail"]
TRUNCATIONS: tuple[str, ...] = ("head", "tail", "head_tail")


class PreprocessingError(ValueError):
    """A preprocessing record that cannot be applied; the message names the field."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
    max_length: int  # tokens after the template and special tokens
    truncation: Truncation = "head"
    # "{text}" for plain classifiers; label-word and few-shot models wrap the text.
    prompt_template: str = "{text}"
    pad_token_id: int = 0
    pad_token: str = "[PAD]"
    head_share: float = 0.25  # head_tail: share of the text's budget taken from its start

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise PreprocessingError(f"max_length must be >= 2, got {self.max_length}")
        if self.truncation not in TRUNCATIONS:
            raise PreprocessingError(
                f"truncation must be one of {list(TRUNCATIONS)}, got {self.truncation!r}"
            )
        if "{text}" not in self.prompt_template:
            raise PreprocessingError("prompt_template must contain '{text}'")
        if not 0 < self.head_share < 1:
            raise PreprocessingError(f"head_share must be in (0, 1), got {self.head_share}")

    @property
    def truncation_side(self) -> Literal["left", "right"]:
        """The side the tokenizer drops tokens from once the text is still too long."""
        return "left" if self.truncation == "tail" else "right"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return from_fields(cls, data, "preprocessing", PreprocessingError)


def fill_template(template: str, texts: Sequence[str]) -> list[str]:
    """Put each text into a prompt template."""
    return [template.replace("{text}", text) for text in texts]


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: list[list[int]]  # unpadded token ids per text, special tokens included
    truncated: np.ndarray  # (N,) bool: the text lost tokens to max_length


class TextEncoder:
    """A `Preprocessing` applied with one tokenizer. Thread-safe: it only reads its tokenizers."""

    def __init__(self, tokenizer: Tokenizer, preprocessing: Preprocessing) -> None:
        self.preprocessing = p = preprocessing
        # Own copies, configured once: the caller's tokenizer keeps whatever state it had.
        self._truncating = Tokenizer.from_str(tokenizer.to_str())
        self._truncating.no_padding()
        self._truncating.enable_truncation(p.max_length, direction=p.truncation_side)
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.no_padding()
        self._plain.no_truncation()
        # head_tail: tokens the text itself may use once specials and template are counted.
        processor = self._plain.post_processor
        specials = processor.num_special_tokens_to_add(False) if processor is not None else 0
        template = p.prompt_template.replace("{text}", "")
        overhead = specials + len(self._plain.encode(template, add_special_tokens=False).ids)
        self._text_budget = max(8, p.max_length - overhead)

    @classmethod
    def from_file(cls, path: Path | str, preprocessing: Preprocessing) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), preprocessing)

    def prompts(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The strings that get tokenized (head_tail-shortened, then in the template) and
        (N,) bool: head_tail shortened the text."""
        shortened = np.zeros(len(texts), dtype=bool)
        if self.preprocessing.truncation == "head_tail":
            texts, shortened = self._head_tail(texts)
        return fill_template(self.preprocessing.prompt_template, texts), shortened

    def _head_tail(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        budget = self._text_budget
        out: list[str] = []
        shortened = np.zeros(len(texts), dtype=bool)
        encodings = self._plain.encode_batch(list(texts), add_special_tokens=False)
        for i, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
            if len(enc.ids) <= budget:
                out.append(text)
                continue
            n_head = max(1, int(budget * self.preprocessing.head_share))
            n_tail = max(1, budget - n_head)
            head_end = enc.offsets[n_head - 1][1]
            tail_start = enc.offsets[len(enc.ids) - n_tail][0]
            out.append(text[:head_end].rstrip() + " " + text[tail_start:].lstrip())
            shortened[i] = True
        return out, shortened

    def encode(self, texts: Sequence[str]) -> Encoded:
        prompts, shortened = self.prompts(texts)
        encodings = self._truncating.encode_batch(prompts)
        truncated = shortened | np.fromiter(
            (bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings)
        )
        return Encoded([e.ids for e in encodings], truncated)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text in its template, specials included, before any truncation."""
        prompts = fill_template(self.preprocessing.prompt_template, texts)
        return [len(e.ids) for e in self._plain.encode_batch(prompts)]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Right-padded (B, T) int64 `input_ids` and `attention_mask`: every head finds its
        tokens through the mask, which the graphs were traced with."""
        width = max((len(row) for row in ids), default=0)
        input_ids = np.full((len(ids), width), self.preprocessing.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)  # (B, T)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.pad(self.encode(texts).ids)
