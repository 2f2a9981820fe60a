"""The `smallcls` command: one subcommand per stage, and `demo` for the whole pipeline.

Each subcommand only parses its arguments, builds a config and calls one function; heavy
libraries (torch, bentoml, locust) are imported inside those functions, never here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from smallcls.config import ConfigError, DemoConfig, TrainConfig, load_config, parse_overrides

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _cmd_train(args: argparse.Namespace) -> int:
    from training.train import train

    overrides = parse_overrides(args.set)
    for key in ("name", "family", "head", "base_model", "train_path", "test_path", "dataset"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    config = load_config(TrainConfig, args.config, overrides)
    run_dir = train(config, args.runs_dir, show_progress=not args.quiet)
    print(f"run: {run_dir}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from export.onnx_export import export_run

    for model_dir in export_run(args.run_dir, args.out, precisions=tuple(args.precision)):
        print(f"model: {model_dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.launch import serve

    return serve(args.model_dirs, host=args.host, port=args.port, threads=args.threads)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.run import run_loadtest, wait_ready

    wait_ready(args.host, timeout_s=args.wait)
    summary = run_loadtest(
        host=args.host,
        model=args.model,
        texts_path=args.texts,
        out_dir=args.out,
        users=args.users,
        spawn_rate=args.spawn_rate or args.users,
        run_time_s=args.seconds,
        batch=args.batch,
    )
    print(summary.line())
    print(f"results: {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports.report import build_report

    result = build_report(
        model_dirs=args.models, loadtest_dirs=args.loadtests or [], out_dir=args.out
    )
    print(result.markdown)
    print(f"report: {result.markdown_path}")
    print(f"csv: {result.csv_path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from smallcls.demo import run_demo

    overrides = parse_overrides(args.set)
    if args.out:
        overrides["output_dir"] = str(args.out)
    config = load_config(DemoConfig, args.config, overrides)
    run_demo(config, show_progress=not args.quiet, fresh=args.fresh)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smallcls",
        description="Train, export, serve, load-test and report small text classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    p.add_argument("--train", dest="train_path", help="training data (.jsonl/.csv)")
    p.add_argument("--test", dest="test_path", help="test data (.jsonl/.csv)")
    p.add_argument(
        "--dataset",
        help="a benchmark in ../shared/datasets instead of --train/--test: sst2, banking77, "
        "emotion, trec, ag_news, goemotions, clinc150, imdb",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="export a run to ONNX fp32/int8 model directories")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("models"))
    p.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="serve model directories with BentoML")
    p.add_argument("model_dirs", nargs="+", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("loadtest", help="headless Locust run against a running service")
    p.add_argument("--host", default="http://127.0.0.1:3000")
    p.add_argument("--model", required=True, help="model name as the service knows it")
    p.add_argument(
        "--texts",
        type=Path,
        default=Path("data/sst2/test.jsonl"),
        help="JSON Lines with a 'text' field",
    )
    p.add_argument("--users", type=int, default=8)
    p.add_argument(
        "--spawn-rate", type=float, default=None, help="users per second (default: all at once)"
    )
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="texts per request")
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for /readyz")
    p.add_argument("--out", type=Path, default=Path("loadtests_out"))
    p.set_defaults(func=_cmd_loadtest)

    p = sub.add_parser("report", help="join accuracy, latency, throughput and size")
    p.add_argument("--models", nargs="+", type=Path, required=True, help="model directories")
    p.add_argument("--loadtests", nargs="*", type=Path, help="smallcls loadtest output dirs")
    p.add_argument("--out", type=Path, default=Path("report"))
    p.set_defaults(func=_cmd_report)

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
        # Expected user errors get one clear line, not a traceback; --verbose shows it.
        logging.getLogger("smallcls").debug("failed", exc_info=True)
        print(f"smallcls {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smallcls {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
