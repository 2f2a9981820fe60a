"""The `smallcls` command: one subcommand per stage, and `demo` for the whole pipeline.

Each subcommand only parses its arguments, builds a config and calls one function; heavy
libraries (torch, bentoml, locust) are imported inside those functions, never here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.config import ConfigError, DemoConfig, TrainConfig, load_config, parse_overrides
from core.devices import DEVICES
from core.manifest import VARIANTS
from smallcls.cli_help import HelpFormatter, dress, version_line

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _cmd_train(args: argparse.Namespace) -> int:
    from training.train import train

    overrides = parse_overrides(args.set)
    keys = ("name", "family", "head", "base_model", "train_path", "test_path", "dataset")
    for key in (*keys, "text_column", "label_column"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.train_path and args.test_path is None:
        # New training data without a test file: carve the test split from it, rather than
        # evaluate on the config's test file, which belongs to other data.
        overrides.setdefault("test_path", None)
    config = load_config(TrainConfig, args.config, overrides)
    run_dir = train(config, args.runs_dir, show_progress=not args.quiet)
    print(f"run: {run_dir}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.onnx_export import export_model

    result = export_model(
        args.run_dir,
        args.out,
        variants=tuple(args.variants),
        force=args.force,
        register=args.register,
        calibration_rows=args.calibration_rows,
        show_progress=not args.quiet,
        device=args.device,
    )
    for model_dir in result.accepted:
        print(f"model: {model_dir}")
    for tag in result.registered:
        print(f"registered: {tag}")
    for message in result.messages:
        print(f"refused: {message}", file=sys.stderr)
    # Refusals are an error for scripts, but the accepted variants are still usable.
    return 1 if result.refused and not args.force else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from core import registry

    if args.action == "list":
        rows = [m.row() for m in registry.list_models(args.ref)]
        if not rows:
            print("no smallcls models in the BentoML store")
        for row in rows:
            acc = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
            agree = "n/a" if row["agreement"] is None else f"{row['agreement']:.2%}"
            forced = " FORCED" if row["forced"] else ""
            print(
                f"{row['tag']:<44} {row['variant']:<12} acc {acc:>7}  agree {agree:>7}  "
                f"{row['size_mb']:>7.1f} MB  {row['created']}{forced}"
            )
    elif args.action == "show":
        stored = registry.get(_need_ref(args))
        print(f"tag: {stored.tag}\npath: {stored.path}")
        print(stored.manifest.to_json(), end="")
    elif args.action == "remove":
        print(f"removed: {registry.remove(_need_ref(args))}")
    elif args.action == "register":
        print(f"registered: {registry.register(Path(_need_ref(args))).tag}")
    return 0


def _need_ref(args: argparse.Namespace) -> str:
    if not args.ref:
        what = "a model directory" if args.action == "register" else "NAME[:VERSION]"
        raise ValueError(f"models {args.action} needs {what}")
    return args.ref


def _cmd_bento(args: argparse.Namespace) -> int:
    import bentoml

    from service.bento_models import build_bento

    tag = build_bento(args.models, device=args.device)
    print(f"bento: {tag}")
    for service in bentoml.bentos.get(tag).info.services:
        for model in service.models:
            print(f"model: {model.tag}")
    return 0


def _add_bento_parser(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_bento)


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.launch import serve
    from service.settings import ENV_DEVICE

    return serve(
        args.model_dirs,
        host=args.host,
        port=args.port,
        threads=args.threads,
        extra_env={ENV_DEVICE: args.device},
    )


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.sweep import LoadTestPlan, load_test_models

    if args.sweep is not None and args.shape is not None:
        raise ValueError("--sweep and --shape are alternatives: pass one")
    plan = LoadTestPlan(
        texts_path=args.texts,
        text_column=args.text_column,
        out_dir=args.out,
        users=args.users,
        seconds=args.seconds,
        steps=args.sweep,
        shape=args.shape,
        shape_scale=args.shape_scale,
        slo_p95_ms=args.slo_p95_ms,
        batch=args.batch,
        length=args.length,
        max_length=args.max_length,
        workers=args.workers,
        web=args.web,
        web_port=args.web_port,
    )
    outs = load_test_models(
        plan,
        host=args.host,
        models=args.model or [],
        model_dirs=args.model_dirs,
        server_pid=args.server_pid,
        serve_threads=args.threads,
        serve_device=args.device,
        # Live lines on stderr, so stdout keeps only the summaries and the results line.
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True),
    )
    print("results: " + " ".join(str(o) for o in outs))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports.report import build_report

    result = build_report(
        model_dirs=args.models,
        loadtest_dirs=args.loadtests or [],
        out_dir=args.out,
        prices=args.prices,
        accuracy_floor=args.accuracy_floor,
        latency_target_ms=args.latency_target_ms,
        metric=args.metric,
        html=not args.no_html,
    )
    print(result.markdown)
    if result.recommendation is not None:
        print(result.recommendation.message)
    print(f"report: {result.markdown_path}")
    print(f"csv: {result.csv_path}")
    if result.html_path is not None:
        print(f"html: {result.html_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from smallcls.demo import run_demo

    overrides = parse_overrides(args.set)
    if args.out:
        overrides["output_dir"] = str(args.out)
    config = load_config(DemoConfig, args.config, overrides)
    run_demo(config, show_progress=not args.quiet, fresh=args.fresh)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from smallcls.compare import CompareInputs, compare_config
    from smallcls.demo import run_demo

    inputs = CompareInputs(
        train=args.train,
        test=args.test,
        validation=args.validation,
        text_column=args.text_column,
        label_column=args.label_column,
        test_fraction=args.test_fraction,
        seed=args.seed,
        name=args.name,
    )
    # The data is read and checked here, before anything trains (a DatasetError is one line).
    config = compare_config(
        inputs,
        args.out,
        preset=args.config,
        families=args.families,
        overrides=parse_overrides(args.set),
        model_overrides=parse_overrides(args.model_set)
        | ({"oos_label": args.oos_label} if args.oos_label else {}),
    )
    run_demo(config, show_progress=not args.quiet, fresh=args.fresh)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list, show, register or remove models in the BentoML store")
    p.add_argument("action", choices=["list", "show", "register", "remove"])
    p.add_argument(
        "ref", nargs="?", help="NAME[:VERSION] (list: a name filter; register: a model dir)"
    )
    p.set_defaults(func=_cmd_models)

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
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "loadtest",
        help="headless Locust: one run, a load shape, or a sweep to the throughput at an SLO",
        description=(
            "Load-test models on a running service (--host, --model) or on model directories "
            "served here on 127.0.0.1 (positional dirs, no --host). --sweep 1,2,4,8 runs each "
            "step until p95 passes --slo-p95-ms; each model gets a directory of Locust CSVs, "
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
        help="concurrency steps, e.g. 1,2,4,8,16: find the throughput at the SLO",
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
    p.set_defaults(func=_cmd_loadtest)

    p = sub.add_parser(
        "report", help="accuracy, latency, cost: Markdown, CSV and an HTML page with plots"
    )
    p.add_argument("--models", nargs="+", type=Path, required=True, help="model directories")
    p.add_argument("--loadtests", nargs="*", type=Path, help="smallcls loadtest output dirs")
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
    p.set_defaults(func=_cmd_report)

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
    p.set_defaults(func=_cmd_compare)

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
    p.set_defaults(func=_cmd_demo)
    _add_bento_parser(sub)
    dress(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # Expected failures get one clear line, not a traceback; --verbose shows it. Exit 1:
        # the command ran and failed; 2 stays argparse's "bad usage", as in most CLIs.
        logging.getLogger("smallcls").debug("failed", exc_info=True)
        print(f"smallcls {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"smallcls {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
