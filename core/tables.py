"""Rows of a CSV, TSV or JSON Lines file (each may be gzipped), with errors that name the file,
the line and the column: the one reader of every stage's input files.

`.jsonl`/`.json` hold one JSON object per line; `.csv` a header line and RFC 4180 quoting;
`.tsv` a header line with cells taken literally (no quoting, as GLUE's and GoEmotions' files
are: quotes are text, a tab ends a cell). The csv module does the parsing; this module adds
the checks a user needs to fix a file.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file, line and field."""


FORMATS = ("jsonl", "json", "csv", "tsv")


def _format(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    fmt = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if fmt not in FORMATS:
        what = f"file type '.{fmt}'" if fmt else "a file without a suffix"
        raise DatasetError(
            f"{path}: cannot read {what}; use .jsonl, .json, .csv or .tsv (each may be .gz)"
        )
    return fmt


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig: spreadsheets start CSVs with a byte-order mark, which would otherwise become
    # part of the first column's name. newline="": csv handles line ends inside quoted cells.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _no_column(
    path: Path, where: int, column: str, have: Sequence[str], setting: str
) -> DatasetError:
    have_text = ", ".join(repr(c) for c in have) or "none"
    return DatasetError(
        f"{path}:{where}: no column {column!r} (columns: {have_text}); "
        f"set {setting} to one of them or rename the column"
    )


def _json_rows(path: Path, handle: IO[str], require: str | None) -> Iterator[tuple[int, dict]]:
    found = False
    for lineno, line in enumerate(handle, 1):
        if not line.strip():
            continue
        # A pretty-printed JSON document instead of one object per line: say so.
        hint = "; write one JSON object per line" if line.lstrip()[:1] in "[{" else ""
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg}){hint}") from None
        if not isinstance(row, dict):
            got = type(row).__name__
            raise DatasetError(f"{path}:{lineno}: expected a JSON object per line, got {got}")
        if require is not None and require not in row:
            raise _no_column(path, lineno, require, list(row), "text_column")
        found = True
        yield lineno, row
    if not found:
        raise DatasetError(f"{path}: no rows (the file is empty); add one JSON object per line")


def _csv_rows(
    path: Path, handle: IO[str], fmt: str, require: str | None
) -> Iterator[tuple[int, dict]]:
    tsv = fmt == "tsv"
    sep, name = ("\t", "TSV") if tsv else (",", "CSV")
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=sep, quoting=quoting, strict=not tsv)
    try:
        header = [cell.strip() for cell in next(reader, [])]
        if not header:
            raise DatasetError(
                f"{path}: the file is empty; a {name} needs a header line naming the columns "
                f"(e.g. text{sep}label) and a row per example"
            )
        if require is not None and require not in header:
            raise DatasetError(
                f"{path}:1: the header has no column {require!r} (it has: "
                f"{', '.join(map(repr, header))}); the first line must name the columns "
                f"(e.g. text{sep}label): add that line, or set text_column to one of these"
            )
        if len(set(header)) < len(header):
            raise DatasetError(f"{path}:1: the header names a column twice: {header}")
        found, start = False, reader.line_num + 1
        for cells in reader:
            # A quoted cell may span lines: a row's number is the line it starts on.
            lineno, start = start, reader.line_num + 1
            if len(cells) <= 1 and not "".join(cells).strip():
                continue  # a blank line
            if len(cells) != len(header):
                fix = "a TSV cell cannot hold a tab" if tsv else 'quote cells holding ","'
                raise DatasetError(
                    f"{path}:{lineno}: {len(cells)} cells but the header names "
                    f"{len(header)} columns; {fix}"
                )
            found = True
            yield lineno, dict(zip(header, cells, strict=True))
    except csv.Error as exc:
        raise DatasetError(
            f"{path}:{reader.line_num}: malformed {name} ({exc}); check the quotes near this "
            'line: a quoted cell must end with a quote, and a quote inside it is written ""'
        ) from None
    if not found:
        raise DatasetError(f"{path}: a header but no rows; add a row per example below it")


def rows(path: Path, require: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every row of a JSON Lines, CSV or TSV file, gzipped or not.
    `require`: a column every row must have (a CSV's header is checked once, at line 1)."""
    fmt = _format(path)
    try:
        with _open_text(path) as handle:
            if fmt in ("jsonl", "json"):
                yield from _json_rows(path, handle, require)
            else:
                yield from _csv_rows(path, handle, fmt, require)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DatasetError(
            f"{path}: not a readable gzip file ({exc}); compress it with gzip or drop '.gz'"
        ) from None


def text_cell(path: Path, lineno: int, row: dict, column: str) -> str:
    text = row.get(column)
    if not isinstance(text, str):
        got = json.dumps(text)[:40]
        raise DatasetError(f"{path}:{lineno}: column {column!r} must hold text, got {got}")
    return text


def label_cell(path: Path, lineno: int, row: dict, column: str) -> str | tuple[str, ...]:
    """One row's label: a name, or (multi-label) a tuple of names. See the module docstring
    for which columns are multi-label."""
    if column == "label" and "label" not in row and "labels" in row:
        column = "labels"  # the default column's multi-label form
    if column not in row:
        raise _no_column(path, lineno, column, list(row), "label_column")
    value = row[column]
    if column == "labels" and isinstance(value, str):  # CSV/TSV: names separated by commas
        value = [name for name in value.split(",") if name.strip()]
    if isinstance(value, list):
        if not all(isinstance(name, str) and name.strip() for name in value):
            got = json.dumps(value)[:60]
            raise DatasetError(f"{path}:{lineno}: {column!r} must list label names, got {got}")
        return tuple(name.strip() for name in value)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        got = json.dumps(value)[:40]
        raise DatasetError(
            f"{path}:{lineno}: column {column!r} must hold a label name, got {got}; "
            "give the row a label or drop it"
        )
    return str(value).strip()
