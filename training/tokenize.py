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
