"""The Hugging Face tokenizer of a run, and the label words' token ids.

Texts become ids through `core.preprocessing.TextEncoder` over this tokenizer's
`backend_tokenizer`, in training as in the server; this module only loads the tokenizer
(a pad token for decoder LMs, right padding for the Trainer's collator).
"""

from __future__ import annotations

import logging

from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        # Decoder LMs ship without a pad token; EOS never occurs inside a classified text,
        # and every head finds real tokens through attention_mask, never through pad ids.
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding, as core.preprocessing pads: the Trainer's collator pads with this.
    tokenizer.padding_side = "right"
    if not tokenizer.is_fast:
        # The server tokenizes with the `tokenizers` library from tokenizer.json: a model
        # without a fast tokenizer would be trained on other ids than it is served with.
        raise ValueError(
            f"{source} has no fast tokenizer (tokenizer.json); smallcls needs one so that "
            "training and serving tokenize alike"
        )
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
