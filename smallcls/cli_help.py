"""What `smallcls COMMAND --help` shows beyond the options: defaults and worked examples.

Kept apart from the parser so cli.py stays a list of options: every subcommand gets the same
formatter (defaults shown where they say something) and the examples a user copies first.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows `(default: X)` after an option's help, unless the help already names its default
    or the default says nothing (None, False, an empty list); keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not shows_default(action) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def shows_default(action: argparse.Action) -> bool:
    if action.default in (None, False, [], argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
        return False
    return bool(action.option_strings) or action.nargs == "?"


EXAMPLES: dict[str, str] = {
    "train": """examples:
  smallcls train --dataset sst2 --base-model minilm-l6 --name minilm
  smallcls train --train reviews.csv --text-column review --label-column stars \\
      --family causal_lm --head last_token --base-model smollm2-135m
  smallcls train --config configs/train_minilm.yaml --set learning_rate=1e-4""",
    "export": """examples:
  smallcls export runs/minilm                      # fp32 and int8, each gated
  smallcls export runs/minilm --variants all --register
  smallcls export runs/minilm --variants int8 --force   # keep a refused variant, recorded""",
    "models": """examples:
  smallcls models register models/minilm-int8
  smallcls models list
  smallcls models show minilm-int8:latest""",
    "bento": """examples:
  smallcls models register models/minilm-int8
  smallcls bento build --models minilm-int8 minilm-fp32   # the first is the default model
  bentoml serve smallcls-classifier:latest                # serves them, no SMALLCLS_MODELS
  smallcls bento build --models minilm-fp16 --device cuda  # the GPU Bento""",
    "serve": """examples:
  smallcls serve models/minilm-int8
  smallcls serve models/minilm-int8 models/smollm2-last-fp32 --port 3001 --threads 2""",
    "loadtest": """examples:
  smallcls loadtest models/minilm-int8 --sweep 1,2,4,8 --slo-p95-ms 50
  smallcls loadtest --host http://127.0.0.1:3000 --model minilm-int8 --users 8 --seconds 30""",
    "report": """examples:
  smallcls report --models models/* --loadtests loadtests_out/*
  smallcls report --models models/* --metric macro_f1 --no-html
  smallcls report --from out/sst2 out/trec --latency-targets 50,100,200 --out answer""",
    "compare": """examples:
  smallcls compare data/sst2/train.jsonl data/sst2/test.jsonl --out demo_output
  smallcls compare tickets.csv --text-column body --label-column queue --families encoder
  smallcls compare intents.jsonl --oos-label oos --model-set train_rows=2000""",
    "demo": """examples:
  smallcls demo
  smallcls demo --set loadtest_seconds=30 --out demo_long""",
}


def version_line() -> str:
    try:
        version = importlib.metadata.version("smallcls")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown (not installed)"
    return f"smallcls {version} (Python {platform.python_version()})"


def dress(subparsers: argparse._SubParsersAction) -> None:
    """Give every subcommand the formatter and its examples."""
    for name, parser in subparsers.choices.items():
        parser.formatter_class = HelpFormatter
        for action in parser._actions:
            if not action.help and shows_default(action):
                action.help = "default: %(default)s"  # argparse prints nothing for no help
        if name in EXAMPLES and not parser.epilog:
            parser.epilog = EXAMPLES[name]
