"""Join exported models' manifests, load-test summaries and training runs into one comparison.

Writes `report.md` (a Markdown table with units in the headers, then where each number came
from) and `report.csv` (the same rows as raw numbers, for plotting or regression checks).
Rows join on the manifest's `name`, which is also the model name a load test sends and records.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

from loadtests.run import SUMMARY_NAME, LoadSummary, LoadTestError
from smallcls.manifest import MANIFEST_NAME, MODEL_NAME, Family, Manifest, Precision

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
RUN_METRICS = "metrics.json"
# Files ONNX writes beside the graph when it exceeds 2 GB; they are part of the model's size.
EXTERNAL_DATA_NAMES = (f"{MODEL_NAME}.data", f"{MODEL_NAME}_data")
BYTES_PER_MB = 1_000_000  # decimal megabytes, as file browsers and the Hub show sizes
NA = "n/a"

# Rows sort by family in the order the manifest declares (plain encoders first), then by
# precision (fp32 before int8); unknown values go last, alphabetically.
FAMILY_ORDER = typing.get_args(Family)
PRECISION_ORDER = typing.get_args(Precision)


class ReportError(ValueError):
    """An input the report cannot use; the message names the file."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportRow:
    name: str
    family: str
    head: str
    precision: str
    base_model: str
    accuracy: float | None  # fraction 0..1 on the test split
    macro_f1: float | None  # fraction 0..1
    max_abs_logit_diff_vs_torch: float | None
    label_agreement_vs_fp32: float | None  # fraction 0..1
    p50_ms: float | None
    p95_ms: float | None
    rps: float | None  # requests per second
    texts_per_s: float | None
    users: int | None
    batch: int | None  # texts per request in the load test
    requests: int | None
    failures: int | None
    model_mb: float
    parameters_m: float | None  # millions; None when the manifest does not say
    train_seconds: float | None
    model_dir: str
    loadtest_dir: str | None
    run_dir: str | None


@dataclasses.dataclass(frozen=True)
class ReportResult:
    markdown_path: Path
    csv_path: Path
    markdown: str  # the table alone, as written into report.md
    rows: list[ReportRow]


CSV_COLUMNS = [f.name for f in dataclasses.fields(ReportRow)]

# (header, row -> cell text): the Markdown view; the CSV keeps every field raw.
_MD_COLUMNS: list[tuple[str, typing.Callable[[ReportRow], str]]] = [
    ("Model", lambda r: r.name),
    ("Family", lambda r: r.family),
    ("Head", lambda r: r.head),
    ("Precision", lambda r: r.precision),
    ("Base model", lambda r: r.base_model),
    ("Accuracy (%)", lambda r: _pct(r.accuracy)),
    ("Macro-F1 (%)", lambda r: _pct(r.macro_f1)),
    ("Max abs logit diff vs torch", lambda r: _num(r.max_abs_logit_diff_vs_torch, ".2g")),
    ("Label agreement vs fp32 (%)", lambda r: _pct(r.label_agreement_vs_fp32)),
    ("p50 (ms)", lambda r: _num(r.p50_ms, ".0f")),
    ("p95 (ms)", lambda r: _num(r.p95_ms, ".0f")),
    ("Throughput (req/s)", lambda r: _num(r.rps, ".1f")),
    ("Throughput (texts/s)", lambda r: _num(r.texts_per_s, ".1f")),
    ("Users", lambda r: _num(r.users, "d")),
    ("Batch (texts/req)", lambda r: _num(r.batch, "d")),
    ("Failures (of requests)", lambda r: _failures(r)),
    ("Size (MB)", lambda r: _num(r.model_mb, ".1f")),
    ("Params (M)", lambda r: _num(r.parameters_m, ".1f")),
    ("Train time (s)", lambda r: _num(r.train_seconds, ".0f")),
]


def build_report(
    *,
    model_dirs: list[Path],
    loadtest_dirs: list[Path],
    out_dir: Path,
    run_dirs: list[Path] | None = None,
) -> ReportResult:
    """Write report.md and report.csv under out_dir; one row per model and load test.

    `run_dirs`, when given, pairs with `model_dirs` by position and replaces each manifest's
    `source_run` (for runs moved or copied from another machine). A model without a load test
    gets one row with n/a latency; a model load-tested several times (other users or batch)
    gets one row per test.
    """
    if not model_dirs:
        raise ReportError("no model directories given")
    if run_dirs is not None and len(run_dirs) != len(model_dirs):
        raise ReportError(
            f"run_dirs pairs with model_dirs by position: got {len(run_dirs)} run dirs "
            f"for {len(model_dirs)} model dirs"
        )

    manifests: dict[str, tuple[Path, Manifest]] = {}
    for model_dir in map(Path, model_dirs):
        manifest = Manifest.read(model_dir)  # ManifestError names the file
        if manifest.name in manifests:
            other = manifests[manifest.name][0]
            raise ReportError(
                f"{model_dir / MANIFEST_NAME} and {other / MANIFEST_NAME} both name the model "
                f"{manifest.name!r}; load tests could not be told apart"
            )
        manifests[manifest.name] = (model_dir, manifest)

    loadtests: dict[str, list[tuple[Path, LoadSummary]]] = {name: [] for name in manifests}
    for loadtest_dir in map(Path, loadtest_dirs):
        try:
            summary = LoadSummary.read(loadtest_dir)
        except LoadTestError as exc:  # its message names the file
            raise ReportError(str(exc)) from exc
        if summary.model not in manifests:
            raise ReportError(
                f"{loadtest_dir / SUMMARY_NAME} load-tested {summary.model!r}, which none of "
                f"the model dirs names (known: {sorted(manifests)})"
            )
        loadtests[summary.model].append((loadtest_dir, summary))

    rows: list[ReportRow] = []
    for index, (name, (model_dir, manifest)) in enumerate(manifests.items()):
        run_dir = _run_dir(manifest, None if run_dirs is None else Path(run_dirs[index]))
        base = _model_fields(model_dir, manifest, run_dir)
        tests = loadtests[name] or [(None, None)]
        for loadtest_dir, summary in tests:
            rows.append(ReportRow(**base, **_load_fields(loadtest_dir, summary)))
    rows.sort(key=_sort_key)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    md_path = out_dir / REPORT_MD
    md_path.write_text(_markdown_document(table, rows), encoding="utf-8")
    csv_path = out_dir / REPORT_CSV
    _write_csv(csv_path, rows)
    return ReportResult(markdown_path=md_path, csv_path=csv_path, markdown=table, rows=rows)


def markdown_table(rows: list[ReportRow]) -> str:
    headers = [header for header, _ in _MD_COLUMNS]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        cells = [cell(row).replace("|", "\\|") for _, cell in _MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _model_fields(model_dir: Path, manifest: Manifest, run_dir: Path | None) -> dict[str, Any]:
    manifest_path = model_dir / MANIFEST_NAME
    model_path = model_dir / MODEL_NAME
    if not model_path.is_file():
        raise ReportError(f"{model_path} not found (the model named in {manifest_path})")
    size = model_path.stat().st_size + sum(
        (model_dir / extra).stat().st_size
        for extra in EXTERNAL_DATA_NAMES
        if (model_dir / extra).is_file()
    )
    parameters = manifest.parameters
    if not isinstance(parameters, int) or parameters < 0:
        raise ReportError(f"{manifest_path}: parameters must be a count >= 0, got {parameters!r}")
    return {
        "name": manifest.name,
        "family": manifest.family,
        "head": manifest.head,
        "precision": manifest.precision,
        "base_model": manifest.base_model,
        "accuracy": _fraction(manifest.metrics, "accuracy", manifest_path, "metrics"),
        "macro_f1": _fraction(manifest.metrics, "macro_f1", manifest_path, "metrics"),
        "max_abs_logit_diff_vs_torch": _number(
            manifest.parity, "max_abs_logit_diff_vs_torch", manifest_path, "parity"
        ),
        "label_agreement_vs_fp32": _fraction(
            manifest.parity, "label_agreement_vs_fp32", manifest_path, "parity"
        ),
        "model_mb": size / BYTES_PER_MB,
        # 0 is the manifest's "not recorded" default; no real model has zero parameters.
        "parameters_m": parameters / 1e6 if parameters else None,
        "train_seconds": _train_seconds(run_dir),
        "model_dir": str(model_dir),
        "run_dir": None if run_dir is None else str(run_dir),
    }


def _load_fields(loadtest_dir: Path | None, summary: LoadSummary | None) -> dict[str, Any]:
    if summary is None:
        keys = ("p50_ms", "p95_ms", "rps", "texts_per_s", "users", "batch", "requests")
        return dict.fromkeys((*keys, "failures", "loadtest_dir"))
    return {
        "p50_ms": summary.p50_ms,
        "p95_ms": summary.p95_ms,
        "rps": summary.rps,
        "texts_per_s": summary.texts_per_s,
        "users": summary.users,
        "batch": summary.batch,
        "requests": summary.requests,
        "failures": summary.failures,
        "loadtest_dir": str(loadtest_dir),
    }


def _run_dir(manifest: Manifest, override: Path | None) -> Path | None:
    if override is not None:
        return override
    return Path(manifest.source_run) if manifest.source_run else None


def _train_seconds(run_dir: Path | None) -> float | None:
    """`train.seconds` from the run's metrics.json; None when the run is not on this machine."""
    if run_dir is None:
        return None
    path = run_dir / RUN_METRICS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, dict) or "seconds" not in train:
        return None
    seconds = train["seconds"]
    if not _is_number(seconds) or seconds < 0:
        raise ReportError(f"{path}: train.seconds must be a number >= 0, got {seconds!r}")
    return float(seconds)


def _number(section: dict[str, Any], key: str, path: Path, where: str) -> float | None:
    if key not in section or section[key] is None:
        return None
    value = section[key]
    if not _is_number(value):
        raise ReportError(f"{path}: {where}.{key} must be a number, got {value!r}")
    return float(value)


def _fraction(section: dict[str, Any], key: str, path: Path, where: str) -> float | None:
    value = _number(section, key, path, where)
    # Catch a percentage stored where a fraction belongs: it would print as 9150%.
    if value is not None and not 0.0 <= value <= 1.0:
        raise ReportError(f"{path}: {where}.{key} must be a fraction in 0..1, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sort_key(row: ReportRow) -> tuple[Any, ...]:
    def rank(value: str, order: tuple[str, ...]) -> tuple[int, str]:
        return (order.index(value), "") if value in order else (len(order), value)

    return (
        rank(row.family, FAMILY_ORDER),
        rank(row.precision, PRECISION_ORDER),
        row.name,
        row.users or 0,
        row.batch or 0,
    )


def _write_csv(path: Path, rows: list[ReportRow]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            # Empty cells for missing values: pandas and spreadsheets read them as NaN.
            writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})


def _markdown_document(table: str, rows: list[ReportRow]) -> str:
    sources = [
        "- Model, family, head, precision, base model, accuracy, macro-F1 (test split), "
        f"parity and parameters: each model directory's `{MANIFEST_NAME}` (`metrics`, "
        "`parity`, `parameters`).",
        f"- Size: bytes of `{MODEL_NAME}` (plus external data, if any) / 10^6.",
        f"- Latency, throughput, users, batch and failures: each load test's `{SUMMARY_NAME}` "
        "(Locust, no wait time; latency percentiles are whole milliseconds; failed requests "
        "count in req/s).",
        f"- Train time: `train.seconds` in the source run's `{RUN_METRICS}`.",
        "",
        "Per row:",
    ]
    for row in rows:
        parts = [f"manifest `{Path(row.model_dir) / MANIFEST_NAME}`"]
        if row.loadtest_dir is not None:
            parts.append(f"load test `{Path(row.loadtest_dir) / SUMMARY_NAME}`")
        else:
            parts.append("no load test")
        if row.train_seconds is not None and row.run_dir is not None:
            parts.append(f"run `{Path(row.run_dir) / RUN_METRICS}`")
        else:
            parts.append("no training metrics found")
        label = row.name if row.users is None else f"{row.name} ({row.users} users)"
        sources.append(f"- {label}: " + ", ".join(parts))
    return "# Model comparison\n\n" + table + "\n## Sources\n\n" + "\n".join(sources) + "\n"


def _pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.2f}"


def _num(value: float | int | None, spec: str) -> str:
    return NA if value is None else format(value, spec)


def _failures(row: ReportRow) -> str:
    if row.failures is None or row.requests is None:
        return NA
    return f"{row.failures} of {row.requests}"
