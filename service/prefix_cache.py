"""The prompt prefix of a label-word model encoded once: its keys/values, computed at load,
are fed with every request's remaining tokens (export/prefix_cache.py made the graph).

The prefix is the token ids every prompt starts with: the longest common start of the
template filled with a few unlike probe texts, so a BPE merge across the text's first
character never makes it wrong. A row whose ids do not start with it (tail truncation cut
into the few-shot examples of a very long text) runs whole, with an empty past, through the
same graph: every row gets the answer of the uncached prompt, the cache only skips work.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.preprocessing import TextEncoder, fill_template

# Unlike first characters: a digit, a capital, a lower-case word, punctuation, a non-ASCII.
PROBES = ("0", "Zebra crossing", "the end", "!?", "évidemment", " spaced")


class PrefixCache:
    """The graph with past inputs and the shared prefix's keys/values (batch 1)."""

    def __init__(
        self, session: ort.InferenceSession, encoder: TextEncoder, tokenizer_path: Path
    ) -> None:
        self.session = session
        self.encoder = encoder
        self.past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_")]
        # Untruncated: the prefix is the prompt's, whatever max_length leaves of it per row.
        plain = Tokenizer.from_file(str(tokenizer_path))
        plain.no_truncation()
        plain.no_padding()
        template = encoder.preprocessing.prompt_template
        prompts = [e.ids for e in plain.encode_batch(fill_template(template, PROBES))]
        self.prefix_ids = np.asarray(_common_start(prompts), dtype=np.int64)  # (P,)
        shapes = {i.name: i.shape for i in session.get_inputs()}
        # (1, H, 0, D): an empty past; H and D are fixed in the graph.
        self.empty = {
            n: np.zeros((1, shapes[n][1], 0, shapes[n][3]), dtype=np.float32)
            for n in self.past_names
        }
        self.past = self._encode_prefix() if len(self.prefix_ids) else self.empty

    @property
    def length(self) -> int:
        return len(self.prefix_ids)

    def _encode_prefix(self) -> dict[str, np.ndarray]:
        ids = self.prefix_ids[None, :]  # (1, P)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), **self.empty}
        outputs = [n.replace("past_", "present_") for n in self.past_names]
        presents = self.session.run(outputs, feeds)
        return dict(zip(self.past_names, presents, strict=True))  # each (1, H, P, D)

    def rows_matching(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """(N,) bool: the row starts with the prefix and has tokens after it."""
        p = self.length
        return np.fromiter(
            (
                p > 0 and len(row) > p and np.array_equal(np.asarray(row[:p]), self.prefix_ids)
                for row in ids
            ),
            dtype=bool,
            count=len(ids),
        )

    def logits(self, ids: Sequence[Sequence[int]], width: int) -> np.ndarray:
        """(N, width) logits of full prompt ids: the prefix's rows from the cache, the rest
        whole with an empty past."""
        out = np.empty((len(ids), width), dtype=np.float32)
        cached = self.rows_matching(ids)
        p = self.length
        for rows, past, cut in ((cached, self.past, p), (~cached, self.empty, 0)):
            idx = np.flatnonzero(rows)
            if len(idx):
                feeds = self.encoder.pad([ids[i][cut:] for i in idx]) | past
                (out[idx],) = self.session.run(["logits"], feeds)
        return out


def _common_start(rows: Sequence[Sequence[int]]) -> list[int]:
    first = list(rows[0])
    n = min(len(r) for r in rows)
    k = 0
    while k < n and all(r[k] == first[k] for r in rows):
        k += 1
    return first[:k]
