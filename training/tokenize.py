"""Tokenizer set-up shared by training and export, matching what the server does.

The server tokenizes with the `tokenizers` library from tokenizer.json, right-padded and
truncated on the side the manifest says; training must see exactly the same ids.
"""

from __future__ import annotations

import logging

from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_tokenizer(source: str, *, head: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        # Decoder LMs ship without a pad token; EOS never occurs inside a classified text,
        # and every head finds real tokens through attention_mask, never through pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    # Label-word prompts put the question after the text: truncate the text's start, not
    # the prompt's end.
    tokenizer.truncation_side = "left" if head == "label_words" else "right"
    return tokenizer


def label_token_ids(
    tokenizer: PreTrainedTokenizerBase, labels: list[str], words: dict[str, str]
) -> tuple[int, ...]:
    """The first token of each label's word, in label order; the words must start with
    different tokens or the labels could not be told apart."""
    missing = [label for label in labels if label not in words]
    if missing:
        raise ValueError(f"label_words has no word for labels {missing}")
    ids = []
    for label in labels:
        pieces = tokenizer.encode(words[label], add_special_tokens=False)
        if not pieces:
            raise ValueError(f"label word {words[label]!r} tokenizes to nothing")
        if len(pieces) > 1:
            log.warning("label word %r is %d tokens; scoring its first", words[label], len(pieces))
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {words} share a first token; choose distinct words")
    return tuple(ids)


def truncation_side(strategy: str) -> str:
    """The tokenizer side that drops tokens: head keeps the start (drop right), tail keeps the
    end (drop left); head_tail shortens the text first and then drops right if still long."""
    return "left" if strategy == "tail" else "right"


def shorten_head_tail(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], budget: int, head_share: float = 0.25
) -> list[str]:
    """Texts longer than `budget` tokens cut to their first quarter and last three quarters of
    the budget, joined by a space (Sun et al. 2019 kept 128 head + 382 tail tokens of IMDB
    reviews). Cut at token offsets, so the text stays text and every stage that tokenizes it
    (training, evaluation, export) sees the same words."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        if len(ids) <= budget:
            out.append(text)
            continue
        n_head = max(1, int(budget * head_share))
        n_tail = max(1, budget - n_head)
        head_end = offsets[n_head - 1][1]
        tail_start = offsets[len(ids) - n_tail][0]
        out.append(text[:head_end].rstrip() + " " + text[tail_start:].lstrip())
    return out


def prepare_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    template: str,
    max_length: int,
    truncation: str,
) -> list[str]:
    """The strings that get tokenized: head_tail-shortened if asked, then put in the prompt."""
    from core.manifest import fill_template

    if truncation == "head_tail":
        overhead = tokenizer.num_special_tokens_to_add()
        overhead += len(tokenizer.encode(template.replace("{text}", ""), add_special_tokens=False))
        texts = shorten_head_tail(tokenizer, texts, max(8, max_length - overhead))
    return fill_template(template, texts)
