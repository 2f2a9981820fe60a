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
from smallcls import parser as options


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
    # One write, not print's text-then-newline: under torchrun every process prints this line
    # into the same unbuffered pipe, and two prints could interleave into one line.
    sys.stdout.write(f"run: {run_dir}\n")
    sys.stdout.flush()
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
    from reports.answer_page import wants_answer_page
    from reports.report import build_report

    if not args.models and not args.from_dirs:
        raise SystemExit("smallcls report: error: give --models DIR... or --from OUT_DIR...")
    if args.multitask or wants_answer_page(args.models, args.from_dirs, args.latency_targets):
        return _answer_page(args)
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


def _answer_page(args: argparse.Namespace) -> int:
    """Several datasets (or several latency targets): one answer page."""
    from reports.answer import InputGroup, group_from_output
    from reports.answer_page import build_answer_page

    groups = [group_from_output(d) for d in args.from_dirs]
    if args.models:
        groups.append(InputGroup(model_dirs=args.models, loadtest_dirs=args.loadtests or []))
    targets = args.latency_targets or ([args.latency_target_ms] if args.latency_target_ms else None)
    result = build_answer_page(
        groups, args.out, prices=args.prices, latency_targets=targets, html=not args.no_html,
        multitask=args.multitask,
    )  # fmt: skip
    for text in (a.text for a in result.page.answers.values()):
        print(text)
    if result.page.multitask is not None:
        print(result.page.multitask.text)
    print(f"answer page: {result.markdown_path}")
    print(f"csv: {result.csv_path}")
    print(f"json: {result.json_path}")
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


COMMANDS: options.Commands = {
    "train": _cmd_train,
    "export": _cmd_export,
    "models": _cmd_models,
    "bento": _cmd_bento,
    "serve": _cmd_serve,
    "loadtest": _cmd_loadtest,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "demo": _cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    return options.build_parser(COMMANDS)


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
