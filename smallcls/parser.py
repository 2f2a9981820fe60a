"""The `smallcls` command's options: one subparser per stage, with defaults and examples.

Kept apart from smallcls/cli.py, which holds what each command does: this module only says
what a command takes, and imports nothing but the names its choices list.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from core.devices import DEVICES
from core.manifest import VARIANTS
from smallcls.cli_help import HelpFormatter, dress, version_line

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
Commands = dict[str, Callable[[argparse.Namespace], int]]


def _add_bento_parser(sub: argparse._SubParsersAction, commands: Commands) -> None:
    p = sub.add_parser(
        "bento",
        help="build a Bento that carries store models (`bentoml build --arg models=...`)",
    )
    p.add_argument("action", choices=["build"])
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="REF",
        help="store models NAME[:VERSION] to pack, the default model first (`smallcls models "
        "list`); the Bento serves them with no SMALLCLS_MODELS set",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: the GPU Bento (onnxruntime-gpu from requirements/gpu.lock, one GPU asked "
        "for, models on CUDA); auto: the GPU lock, CUDA where there is one",
    )
    p.set_defaults(func=commands["bento"])


def _families(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _user_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected user counts like 1,2,4; got {text!r}") from None
    if not counts or any(n < 1 for n in counts) or counts != sorted(set(counts)):
        raise argparse.ArgumentTypeError(f"expected increasing counts >= 1; got {text!r}")
    return counts


def _targets(text: str) -> list[float]:
    """Latency targets in ms, in the order given: the first is the one the summary uses."""
    try:
        targets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ms like 50,100,200; got {text!r}") from None
    if not targets or any(t <= 0 for t in targets) or len(set(targets)) != len(targets):
        raise argparse.ArgumentTypeError(f"expected distinct targets > 0 ms; got {text!r}")
    return targets


def build_parser(commands: Commands) -> argparse.ArgumentParser:
    """Every subcommand's options; `commands` maps each subcommand to the function it runs."""
    parser = argparse.ArgumentParser(
        prog="smallcls",
        description="Train, export, serve, load-test and report small text classifiers.",
        epilog="Run `smallcls COMMAND --help` for a command's options and examples. Exit "
        "status: 0 done, 1 failed (the message says what to do), 2 bad usage, 130 interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="fine-tune one model; writes a run directory (a killed run resumes when rerun)",
    )
    p.add_argument("--config", type=Path, help="YAML TrainConfig (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set learning_rate=1e-4 (repeatable)",
    )
    p.add_argument("--name")
    p.add_argument("--family", choices=["encoder", "extracted_encoder", "causal_lm"])
    p.add_argument("--head", choices=["mean_pool", "last_token", "label_words"])
    p.add_argument(
        "--base-model",
        dest="base_model",
        help="minilm-l6, smollm2-135m, a local directory or a hub id",
    )
    p.add_argument("--train", dest="train_path", help="training data (.csv, .tsv, .jsonl; .gz too)")
    p.add_argument(
        "--test",
        dest="test_path",
        help="test data (default with --train: a stratified test_fraction carved from it)",
    )
    p.add_argument("--text-column", dest="text_column", help="the text's column (default text)")
    p.add_argument("--label-column", dest="label_column", help="the label's column (default label)")
    p.add_argument(
        "--dataset",
        help="a benchmark in ../shared/datasets instead of --train/--test: sst2, banking77, "
        "emotion, trec, ag_news, goemotions, clinc150, imdb",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands["train"])

    p = sub.add_parser(
        "export", help="export a run to ONNX model directories, one per variant, each gated"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("models"))
    p.add_argument(
        "--variants",
        nargs="+",
        choices=[*VARIANTS, "all"],
        default=["fp32", "int8"],
        help="what to build (default: fp32 int8); 'all' builds every variant",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="keep (and register) variants that fail the accuracy gate; recorded in the manifest",
    )
    p.add_argument(
        "--register", action="store_true", help="add accepted models to the BentoML model store"
    )
    p.add_argument(
        "--calibration-rows",
        dest="calibration_rows",
        type=int,
        default=256,
        help="training texts that calibrate int8-static (default 256)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the gate scores each variant: cpu, cuda (all variants; refused without a "
        "usable CUDA provider), or auto (fp16 on CUDA when there is one, the rest on the CPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands["export"])

    p = sub.add_parser("models", help="list, show, register or remove models in the BentoML store")
    p.add_argument("action", choices=["list", "show", "register", "remove"])
    p.add_argument(
        "ref", nargs="?", help="NAME[:VERSION] (list: a name filter; register: a model dir)"
    )
    p.set_defaults(func=commands["models"])

    p = sub.add_parser("serve", help="serve model directories with BentoML")
    p.add_argument("model_dirs", nargs="+", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the models run: cpu, cuda (onnxruntime-gpu; refused at start without it) "
        "or auto",
    )
    p.set_defaults(func=commands["serve"])

    p = sub.add_parser(
        "loadtest",
        help="headless Locust: one run, a load shape, or a sweep to the throughput at an SLO",
        description=(
            "Load-test models on a running service (--host, --model) or on model directories "
            "served here on 127.0.0.1 (positional dirs, no --host). --sweep 1,2,4,8: the largest "
            "step is a closed-loop probe, then open-loop arrival rates are bisected to the "
            "throughput at --slo-p95-ms; each model gets a directory of Locust CSVs, "
            "HTML reports and JSON summaries. Options left out come from [tool.locust] in "
            "./pyproject.toml or ./locust.conf (users, run-time, batch, request-timeout, ...). "
            "--web opens Locust's web UI for one model instead."
        ),
    )
    p.add_argument("model_dirs", nargs="*", type=Path, help="model directories (served here)")
    p.add_argument("--host", default=None, help="a running service, e.g. http://127.0.0.1:3000")
    p.add_argument(
        "--model", action="append", help="model name as the service knows it (repeatable)"
    )
    p.add_argument(
        "--texts",
        type=Path,
        default=None,
        help="CSV, TSV or JSON Lines of texts (default: each model directory's own test file, "
        "as its manifest names it)",
    )
    p.add_argument(
        "--text-column",
        dest="text_column",
        default=None,
        help="the texts' column (default: text, or the manifest's)",
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help="users of a single run (default: [tool.locust] users, else 8)",
    )
    p.add_argument(
        "--seconds",
        type=int,
        default=None,
        help="length of a single run or of each sweep step (default: [tool.locust] run-time, "
        "else 20)",
    )
    p.add_argument(
        "--sweep",
        type=_user_counts,
        default=None,
        metavar="N,N,...",
        help="e.g. 1,2,4,8: find the throughput at the SLO (the largest is the closed-loop "
        "probe before the rate search)",
    )
    p.add_argument("--slo-p95-ms", type=float, default=50.0, help="p95 latency target (ms)")
    p.add_argument(
        "--shape", choices=["ramp", "steps", "spike"], help="a load-shape table (shapes.py)"
    )
    p.add_argument("--shape-scale", type=float, default=1.0, help="stretch the shape's time")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="texts per request (default: [tool.locust] batch, else 1)",
    )
    p.add_argument(
        "--length",
        choices=["all", "short", "typical", "near_max"],
        default="all",
        help="length bucket of the texts sent (loadtests/texts.py)",
    )
    p.add_argument("--max-length", type=int, default=64, help="tokens, for near_max with --model")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N local Locust worker processes under a master (Locust's --processes N)",
    )
    p.add_argument(
        "--web",
        action="store_true",
        help="open Locust's web UI on 127.0.0.1 for one model, options pre-filled; Ctrl-C stops",
    )
    p.add_argument("--web-port", type=int, default=8089, help="port of the web UI (--web)")
    p.add_argument(
        "--quiet", action="store_true", help="no live progress lines, only each run's summary"
    )
    p.add_argument("--server-pid", type=int, default=None, help="server root pid, for CPU %%")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads when serving")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the model directories served here run: cpu, cuda or auto",
    )
    p.add_argument("--out", type=Path, default=Path("loadtests_out"))
    p.set_defaults(func=commands["loadtest"])

    p = sub.add_parser(
        "report", help="accuracy, latency, cost: Markdown, CSV and an HTML page with plots"
    )
    p.add_argument("--models", nargs="+", type=Path, default=[], help="model directories")
    p.add_argument("--loadtests", nargs="*", type=Path, help="smallcls loadtest output dirs")
    p.add_argument(
        "--from",
        dest="from_dirs",
        nargs="+",
        type=Path,
        default=[],
        help="pipeline output dirs (smallcls compare --out), one per dataset: their models/ "
        "and loadtests/; with several datasets, one answer page (answer.html)",
    )
    p.add_argument(
        "--latency-targets",
        type=_targets,
        default=None,
        help="p95 targets in ms, e.g. 50,100,200: every model priced at each (the first is "
        "the one the summary uses); writes the answer page",
    )
    p.add_argument(
        "--multitask",
        type=Path,
        default=None,
        metavar="PATH",
        help="a multitask_measure.json (python -m bench.multitask_serving measure): adds the "
        "section 'One model for many tasks' to the answer page",
    )
    p.add_argument("--out", type=Path, default=Path("report"))
    p.add_argument("--prices", type=Path, default=None, help="price table (configs/prices.yaml)")
    p.add_argument(
        "--accuracy-floor", type=float, default=0.85, help="fraction, e.g. 0.86 for 86%%"
    )
    p.add_argument(
        "--latency-target-ms",
        type=float,
        default=None,
        help="p95 target (default: each sweep's SLO)",
    )
    p.add_argument("--metric", choices=["accuracy", "macro_f1"], default="accuracy")
    p.add_argument("--no-html", action="store_true", help="only Markdown and CSV")
    p.set_defaults(func=commands["report"])

    p = sub.add_parser(
        "compare",
        help="your own data, end to end: train, export, serve, load-test and report each family",
        description=(
            "Compare the model families on a CSV, TSV or JSON Lines file: the data is checked "
            "and written as JSON Lines splits into OUT/data (a stratified, seeded test split "
            "carved from TRAIN when TEST is not given), then each family is trained, exported, "
            "served, load-tested and reported as `make demo` does on SST-2."
        ),
    )
    p.add_argument("train", type=Path, help="training data (.csv, .tsv, .jsonl; .gz too)")
    p.add_argument("test", type=Path, nargs="?", help="test data (default: carved from train)")
    p.add_argument("--validation", type=Path, help="validation data (default: carved from train)")
    p.add_argument("--text-column", dest="text_column", default="text", help="default: text")
    p.add_argument("--label-column", dest="label_column", default="label", help="default: label")
    p.add_argument(
        "--test-fraction",
        dest="test_fraction",
        type=float,
        default=0.2,
        help="share of train carved as the test split when no TEST is given (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="carving and training seed (default 0)")
    p.add_argument(
        "--oos-label",
        dest="oos_label",
        help="the label of out-of-scope rows: the models reject texts below a confidence "
        "threshold tuned on validation and answer this label",
    )
    p.add_argument(
        "--name", help="the dataset's name in runs and reports (default: from the file's name)"
    )
    p.add_argument(
        "--families",
        type=_families,
        default=None,
        metavar="F,F,...",
        help="families (encoder, extracted_encoder, causal_lm) or preset names; default: all "
        "of the preset's",
    )
    p.add_argument("--out", type=Path, default=Path("compare_output"))
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_DEMO_CONFIG,
        help="preset: stages and family recipes (default: configs/demo.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline field, e.g. --set loadtest_seconds=30",
    )
    p.add_argument(
        "--model-set",
        dest="model_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field of every family, e.g. --model-set train_rows=2000",
    )
    p.add_argument("--fresh", action="store_true", help="retrain even if a complete run exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands["compare"])

    p = sub.add_parser("demo", help="train, export, serve, load-test and report, end to end")
    p.add_argument("--config", type=Path, default=DEFAULT_DEMO_CONFIG)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DemoConfig field, e.g. --set loadtest_seconds=30",
    )
    p.add_argument("--out", type=Path, help="output directory (default from the config)")
    p.add_argument("--fresh", action="store_true", help="retrain even if a complete run exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=commands["demo"])
    _add_bento_parser(sub, commands)
    dress(sub)
    return parser
