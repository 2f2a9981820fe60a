"""Pick the texts a load test sends: real test-split texts, optionally one length bucket.

Latency depends on the number of tokens per request, so a load test must say which lengths it
sent. The buckets are cut from the test split's own word counts:

  all       every text, in file order (the split's natural mix)
  short     the shortest quarter (word count <= the 25th percentile)
  typical   the middle half (25th < words <= 75th percentile)
  near_max  real texts joined end to end until each has >= `max_length` words; every word is
            at least one token for the project's tokenizers, so each text reaches the model's
            maximum length and is truncated there: the worst case per text

The chosen texts are written next to the load test's results (`texts.jsonl`), so a figure can
always be traced to exactly what was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

from core.data import read_text_column

Bucket = Literal["all", "short", "typical", "near_max"]
BUCKETS: tuple[str, ...] = get_args(Bucket)
# Below the service's default 2,000-character limit per text, so near-max texts are never 413s.
MAX_CHARS = 1500


def read_texts(path: Path, text_column: str = "text") -> list[str]:
    """The non-blank texts of a .jsonl/.csv/.tsv file (or .gz), read by core/data.py's row
    reader, so a load test accepts whatever training accepts; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a JSON Lines, CSV or TSV file of texts")
    texts = read_text_column(path, text_column)
    if not texts:
        raise ValueError(f"{path}: no texts found in column {text_column!r}")
    return texts


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (no interpolation: word counts are whole)."""
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def select_texts(texts: list[str], bucket: str, *, max_length: int = 64) -> list[str]:
    """The texts of one bucket (see the module docstring); never empty for a non-empty input."""
    if bucket not in BUCKETS:
        raise ValueError(f"length bucket must be one of {', '.join(BUCKETS)}; got {bucket!r}")
    if not texts:
        raise ValueError("no texts to select from")
    if bucket == "all":
        return list(texts)
    if bucket == "near_max":
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        return _near_max(texts, max_length)
    counts = sorted(len(t.split()) for t in texts)
    q25, q75 = _percentile(counts, 0.25), _percentile(counts, 0.75)
    if bucket == "short":
        chosen = [t for t in texts if len(t.split()) <= q25]
    else:
        chosen = [t for t in texts if q25 < len(t.split()) <= q75]
    return chosen or list(texts)  # a split of identical lengths has no middle half


def _near_max(texts: list[str], max_length: int) -> list[str]:
    # One long text per starting text, joining the texts that follow it (wrapping around), so
    # the bucket holds as many distinct texts as the split.
    out: list[str] = []
    n = len(texts)
    for start in range(n):
        words: list[str] = []
        i = start
        while len(words) < max_length and i < start + n:
            words.extend(texts[i % n].split())
            i += 1
        out.append(" ".join(words)[:MAX_CHARS])
    return out


def write_texts(texts: list[str], path: Path) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def mean_words(texts: list[str]) -> float:
    return sum(len(t.split()) for t in texts) / len(texts)
