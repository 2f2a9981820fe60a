"""How latency and throughput grow with input length: the curve that prices long texts.

    python bench/length_scaling.py demo_output/models --out bench_out/length
    python bench/length_scaling.py MODEL_DIR [MODEL_DIR ...] --lengths 16,64,256 --batches 1,8

Every model directory (or every one under a directory of them; `refused/` too with
--include-refused) runs in onnxruntime through `service.runtime.OnnxClassifier`, the session
and feeds the server uses (fixed thread count, no spinning), on batches of inputs of exactly
16, 32, ..., 512 tokens (special tokens included) and 1, 8 and 32 texts. The ids are real
tokens of the model's test split, cut to the length: the graph's cost depends on the shape,
and real ids keep the attention mask and pooling realistic. Tokenization is not timed (it is
a few per cent of a call at these lengths and the same for every model of a tokenizer).

Lengths above the manifest's `max_length` are measured too (up to the architecture's
`max_position_embeddings`), because they price what raising it would cost; the service itself
cuts texts to `max_length`, and the table marks those rows. A point whose call would take
longer than `--max-call-s` (predicted from the same length at batch 1) is skipped: SmolLM2 at
32 x 512 would take about half a minute a call on two cores; the table says which.

Each point: one warm-up call, then `--repeats` (>= 3, default 5) timed repeats, each as many
calls as fit in `--repeat-s` seconds (at least one); the figure is the median repeat's time
per call, and `spread` (slowest / fastest repeat) shows how noisy the machine was. Points of
all models are interleaved per repeat round, so a background load slows every model alike
and a disturbed round moves one repeat of each point, which the median drops.

Writes `length_scaling.json`, `length_scaling.md` and `length_scaling.html` (plotly: ms per
text and texts/s against tokens, one line per model and batch size), and `length_scaling.png`,
a screenshot of that page by headless Chromium where one is installed (plotly's own images
need kaleido, and matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_LENGTHS = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_MAX_CALL_S = 6.0  # a point predicted slower than this per call is skipped
# Batching makes a call cheaper than `batch` calls of one text; the prediction that decides a
# skip assumes this share (measured here: 0.35-0.9 of batch x the batch-1 time).
BATCH_EFFICIENCY = 0.7
DEFAULT_TEXTS = REPO / "data" / "sst2" / "test.jsonl"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Point:
    model: str
    precision: str
    tokens: int
    batch: int
    ms_per_call: float | None  # median repeat; None when skipped
    ms_per_text: float | None
    texts_per_s: float | None
    repeats_ms: list[float]
    spread: float | None  # slowest / fastest repeat
    served_max_length: int
    beyond_served_max: bool  # the service would cut such a text to served_max_length
    skipped: str | None = None


def model_dirs(paths: Sequence[Path], include_refused: bool) -> list[Path]:
    """The model directories named, or found one level under a directory of them."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / "manifest.json").is_file():
            out.append(path)
            continue
        out += sorted(p.parent for p in path.glob("*/manifest.json"))
        if include_refused:
            out += sorted(p.parent for p in path.glob("refused/*/manifest.json"))
    return out


def token_pool(model_dir: Path, texts_path: Path, need: int) -> list[int]:
    """At least `need` real token ids of the test texts (no special tokens, no truncation)."""
    from tokenizers import Tokenizer

    from loadtests.texts import read_texts

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    ids: list[int] = []
    for text in read_texts(texts_path):
        ids += tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) >= need:
            return ids
    raise ValueError(f"{texts_path} holds fewer than {need} tokens for {model_dir.name}")


def exact_ids(
    pool: list[int], tokens: int, batch: int, special: tuple[int, ...]
) -> list[list[int]]:
    """`batch` rows of exactly `tokens` ids: the tokenizer's special tokens around a slice of
    real text, each row from another offset (so rows differ as real batches do)."""
    body = tokens - len(special)
    rows = []
    for row in range(batch):
        start = (row * 97) % max(1, len(pool) - body)
        rows.append([*special[:1], *pool[start : start + body], *special[1:]])
    return rows


def special_ids(model_dir: Path) -> tuple[int, ...]:
    """The ids the tokenizer adds around one text ([CLS] ... [SEP] for BERT, none or BOS for
    the SmolLM2 tokenizer): measured on an empty string."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tuple(tokenizer.encode("", add_special_tokens=True).ids)


class Runner:
    """One model loaded as the server loads it, with its feeds prepared per point."""

    def __init__(self, model_dir: Path, threads: int, texts_path: Path, lengths: Sequence[int]):
        from service.runtime import OnnxClassifier

        self.clf = OnnxClassifier(model_dir, threads=threads, verify=False)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.limit = int(config.get("max_position_embeddings") or max(lengths))
        self.special = special_ids(model_dir)
        self.pool = token_pool(model_dir, texts_path, max(lengths) * 4)

    def feeds(self, tokens: int, batch: int) -> dict[str, Any]:
        import numpy as np

        ids = exact_ids(self.pool, tokens, batch, self.special)
        feeds = self.clf.encoder.pad(ids)
        # As OnnxClassifier feeds a graph: exactly its declared inputs.
        if "token_type_ids" in self.clf.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        feeds = {k: v for k, v in feeds.items() if k in self.clf.input_names}
        assert feeds["input_ids"].shape == (batch, tokens), feeds["input_ids"].shape
        return feeds

    def time_call(self, feeds: dict[str, Any], repeat_s: float) -> float:
        """Seconds per call over as many calls as fit in `repeat_s` (at least one)."""
        calls, start = 0, time.perf_counter()
        while True:
            self.clf.session.run(["logits"], feeds)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= repeat_s:
                return elapsed / calls


def measure(
    dirs: Sequence[Path],
    *,
    lengths: Sequence[int],
    batches: Sequence[int],
    repeats: int,
    repeat_s: float,
    max_call_s: float,
    threads: int,
    texts_path: Path,
    log: Any = print,
) -> list[Point]:
    runners = {d: Runner(d, threads, texts_path, lengths) for d in dirs}
    cases: list[tuple[Path, int, int, dict[str, Any]]] = []
    points: dict[tuple[Path, int, int], Point] = {}
    for d, runner in runners.items():
        manifest = runner.clf.manifest
        served = manifest.preprocessing.max_length
        one_text_s: dict[int, float] = {}  # tokens -> seconds of a warm batch-1 call
        for batch in sorted(batches, key=lambda b: (b != 1, b)):  # batch 1 first: it predicts
            for tokens in lengths:
                skip = None
                predicted = one_text_s.get(tokens, 0.0) * batch * BATCH_EFFICIENCY
                if tokens > runner.limit:
                    skip = f"over the model's {runner.limit} positions"
                elif predicted > max_call_s:
                    skip = f"predicted {predicted:.0f} s a call > --max-call-s {max_call_s:g}"
                points[d, tokens, batch] = Point(
                    model=manifest.name, precision=manifest.precision, tokens=tokens,
                    batch=batch, ms_per_call=None, ms_per_text=None, texts_per_s=None,
                    repeats_ms=[], spread=None, served_max_length=served,
                    beyond_served_max=tokens > served, skipped=skip,
                )  # fmt: skip
                if skip is None:
                    feeds = runner.feeds(tokens, batch)
                    runner.clf.session.run(["logits"], feeds)  # warm-up: allocations, caches
                    if batch == 1:
                        one_text_s[tokens] = runner.time_call(feeds, 0.0)
                    cases.append((d, tokens, batch, feeds))
    timed: dict[tuple[Path, int, int], list[float]] = {k[:3]: [] for k in cases}
    for round_ in range(1, repeats + 1):
        start = time.perf_counter()
        for d, tokens, batch, feeds in cases:
            timed[d, tokens, batch].append(1000 * runners[d].time_call(feeds, repeat_s))
        log(f"round {round_}/{repeats}: {len(cases)} points in {time.perf_counter() - start:.0f} s")
    out = []
    for key, point in points.items():
        if key in timed:
            ms = statistics.median(timed[key])
            point = dataclasses.replace(
                point, ms_per_call=round(ms, 3), ms_per_text=round(ms / point.batch, 3),
                texts_per_s=round(1000 * point.batch / ms, 1),
                repeats_ms=[round(t, 3) for t in timed[key]],
                spread=round(max(timed[key]) / min(timed[key]), 2),
            )  # fmt: skip
        out.append(point)
    return out


def markdown(points: Sequence[Point], header: str) -> str:
    lines = [header, "",
             "| model | batch | tokens | ms per call | ms per text | texts/s | spread | note |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        note = p.skipped or (
            f"beyond the served max_length {p.served_max_length}" if p.beyond_served_max else ""
        )
        cells = [f"{v:.2f}" if v is not None else "-" for v in (p.ms_per_call, p.ms_per_text)]
        tps = "-" if p.texts_per_s is None else f"{p.texts_per_s:.1f}"
        spread = "-" if p.spread is None else f"{p.spread:.2f}"
        lines.append(f"| {p.model} | {p.batch} | {p.tokens} | {cells[0]} | {cells[1]} | {tps} "
                     f"| {spread} | {note} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_html(points: Sequence[Point], path: Path, title: str) -> None:
    """Two panels: ms per text and texts/s against tokens (log axes), a colour per model and a
    dash per batch size; the dotted vertical line is the served max_length."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("ms per text", "texts per second"))
    series: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        if p.ms_per_text is not None:
            series.setdefault((p.model, p.batch), []).append(p)
    models = list(dict.fromkeys(model for model, _ in series))
    dashes = {1: "solid", 8: "dash", 32: "dot"}
    for (model, batch), pts in series.items():
        pts = sorted(pts, key=lambda p: p.tokens)
        name = f"{model}, batch {batch}"
        colour = qualitative.Plotly[models.index(model) % len(qualitative.Plotly)]
        line = {"color": colour, "dash": dashes.get(batch, "dashdot")}
        x = [p.tokens for p in pts]
        for col, y in ((1, [p.ms_per_text for p in pts]), (2, [p.texts_per_s for p in pts])):
            fig.add_scatter(
                x=x, y=y, mode="lines+markers", name=name, legendgroup=name, line=line,
                showlegend=col == 1, row=1, col=col,
                hovertemplate="%{x} tokens: %{y:.2f}<extra>" + name + "</extra>",
            )  # fmt: skip
    ticks = sorted({p.tokens for p in points})
    for col in (1, 2):
        fig.update_xaxes(type="log", title_text="tokens per text", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    # The served max_length as a trace, not a shape: shapes on log axes place unreliably.
    for value in sorted({p.served_max_length for p in points}):
        for col, key in ((1, "ms_per_text"), (2, "texts_per_s")):
            ys = [getattr(p, key) for p in points if getattr(p, key)]
            fig.add_scatter(
                x=[value, value], y=[min(ys), max(ys)], mode="lines",
                line={"color": "grey", "dash": "dot"}, name=f"served max_length {value}",
                legendgroup="served", showlegend=col == 1, row=1, col=col, hoverinfo="name",
            )  # fmt: skip
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=840,
                      legend={"font": {"size": 10}})  # fmt: skip
    fig.write_html(path, include_plotlyjs=True)


def screenshot(html: Path, png: Path) -> bool:
    """The page as a PNG by headless Chromium; False where none is installed or it fails."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000", "--window-size=1500,860"]  # fmt: skip
    done = subprocess.run(
        [chromium, *flags, f"--screenshot={png.resolve()}", html.resolve().as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode == 0 and png.is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model dirs, or dirs of them")
    parser.add_argument("--out", type=Path, default=Path("length_scaling"))
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeat-s", type=float, default=0.3)
    parser.add_argument("--max-call-s", type=float, default=DEFAULT_MAX_CALL_S)
    parser.add_argument("--threads", type=int, default=2, help="ORT threads, as the server")
    parser.add_argument("--include-refused", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be >= 3: a median of fewer is not a median")
    lengths = sorted(int(x) for x in args.lengths.split(","))
    batches = sorted(int(x) for x in args.batches.split(","))
    dirs = model_dirs(args.models, args.include_refused)
    if not dirs:
        parser.error(f"no model directories (with manifest.json) in {args.models}")
    from loadtests.sweep import machine_label

    start = time.perf_counter()
    points = measure(
        dirs, lengths=lengths, batches=batches, repeats=args.repeats, repeat_s=args.repeat_s,
        max_call_s=args.max_call_s, threads=args.threads, texts_path=args.texts,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    machine = machine_label()
    header = (
        f"Latency against input length, onnxruntime, {args.threads} threads, {machine}; "
        f"median of {args.repeats} repeats per point, {seconds:.0f} s in all."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine, "threads": args.threads, "repeats": args.repeats,
        "repeat_s": args.repeat_s, "max_call_s": args.max_call_s, "seconds": round(seconds, 1),
        "models": [str(d) for d in dirs], "points": [dataclasses.asdict(p) for p in points],
    }  # fmt: skip
    (args.out / "length_scaling.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(points, header)
    (args.out / "length_scaling.md").write_text(table)
    plot_html(points, args.out / "length_scaling.html", header)
    png = screenshot(args.out / "length_scaling.html", args.out / "length_scaling.png")
    print(table)
    print(f"wrote {args.out}/length_scaling.{{json,md,html{',png' if png else ''}}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
