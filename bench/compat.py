"""Drop-in checks on real model directories: do the tools people already use give the answers
the service gives, on every test row?

    python -m bench.compat MODEL_DIR [MODEL_DIR ...] [--texts FILE] [--rows N] [--no-bento]

For each model directory (the first is the service's default model):
1. **Hugging Face's client**: `huggingface_hub.InferenceClient(base_url=URL)`
   `.text_classification(text)` against the running service (TEI's `POST /`, or
   `/predict?model=NAME` for the others), against `/classify`'s label for the same text,
   one text per request;
2. **optimum + transformers**: `ORTModelForSequenceClassification.from_pretrained(dir)` inside
   `pipeline("text-classification")`, one text per call with `truncation=True`, against
   the service's label for one text per request;
3. **a Bento that carries the models**: the directories registered in a private BentoML store,
   `smallcls bento build`, `bentoml serve <tag>` with no SMALLCLS_MODELS, its `/classify`
   labels against the directories' own, 32 texts per request (skipped with --no-bento).

A first row per model compares /classify with 1 and with 32 texts per request: dynamic int8
quantizes activations with one scale per batch, so a text near the decision boundary can
change its answer with the texts that share its batch.

Prints one table row per model and check (rows compared, rows equal) and writes
`compat.json` beside it. The client refuses even 127.0.0.1 in offline mode
(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): this script unsets both for itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.data import read_text_column
from core.manifest import Manifest
from service.launch import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def classify_labels(url: str, model: str, texts: list[str], batch: int = 32) -> list[str]:
    labels: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for first in range(0, len(texts), batch):
            body = {"texts": texts[first : first + batch], "model": model}
            resp = http.post("/classify", json=body)
            resp.raise_for_status()
            labels += [p["label"] for p in resp.json()["predictions"]]
    return labels


def client_labels(url: str, model: str, default: str, texts: list[str]) -> list[str]:
    from huggingface_hub import InferenceClient

    base = url if model == default else f"{url}/predict?model={model}"
    client = InferenceClient(base_url=base)
    out = []
    for text in texts:
        answer = client.text_classification(text)
        # huggingface_hub 0.36 returns TEI's first element for one input (docs/tei.md).
        first = answer[0] if isinstance(answer, list) else answer
        out.append(first.label)
    return out


def pipeline_labels(model_dir: Path, texts: list[str]) -> list[str]:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    return [classify(text, truncation=True)[0]["label"] for text in texts]


def bento_labels(model_dirs: list[Path], texts: list[str]) -> tuple[str, dict[str, list[str]]]:
    """Register, build and serve a Bento in a private BentoML home; its labels per model."""
    home = Path(tempfile.mkdtemp(prefix="smallcls-compat-bentoml-"))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    for key in ("SMALLCLS_MODELS", "SMALLCLS_MODELS_FILE"):
        env.pop(key, None)

    def smallcls(*args: str) -> str:
        command = [sys.executable, "-m", "smallcls.cli", *args]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"smallcls {' '.join(args)} failed: {done.stderr[-1000:]}")
        return done.stdout

    tags = [smallcls("models", "register", str(d)).split("registered: ")[1].split()[0]
            for d in model_dirs]  # fmt: skip
    bento = smallcls("bento", "build", "--models", *tags).split("bento: ")[1].split()[0]
    # The server's environment is ours plus extra_env: it reads the private store from there.
    with ServerProcess([], bento=bento, threads=2, extra_env={"BENTOML_HOME": str(home)}) as server:
        labels = {
            Manifest.read(d).name: classify_labels(server.url, Manifest.read(d).name, texts)
            for d in model_dirs
        }
    return bento, labels


def row(model: str, check: str, theirs: list[str], ours: list[str], seconds: float) -> dict:
    same = sum(a == b for a, b in zip(theirs, ours, strict=True))
    return {"model": model, "check": check, "rows": len(ours), "equal": same,
            "seconds": round(seconds, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compat", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--texts", type=Path, help="default: the first manifest's test file")
    parser.add_argument("--rows", type=int, default=None, help="the first N texts (default all)")
    parser.add_argument("--no-bento", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_out/compat"))
    args = parser.parse_args(argv)
    # The client refuses even 127.0.0.1 in offline mode, which either variable turns on; the
    # model directories are local, so nothing here needs the hub.
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(variable, None)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    manifests = [Manifest.read(d) for d in args.model_dirs]
    texts_path = args.texts or Path(manifests[0].test_path or "")
    texts = read_text_column(texts_path, manifests[0].dataset.get("text_column") or "text")
    texts = texts[: args.rows] if args.rows else texts
    names = [m.name for m in manifests]
    results: list[dict[str, Any]] = []
    # The client and the pipeline send one text per call, and dynamic int8 scales activations
    # over a whole batch: their reference is /classify one text per request. The Bento is
    # asked as the directories were, 32 texts per request.
    with ServerProcess(args.model_dirs, threads=2) as server:
        batched = {name: classify_labels(server.url, name, texts) for name in names}
        single = {name: classify_labels(server.url, name, texts, batch=1) for name in names}
        for name in names:
            check = "/classify, 1 vs 32 texts per request"
            results.append(row(name, check, single[name], batched[name], 0.0))
            start = time.perf_counter()
            theirs = client_labels(server.url, name, names[0], texts)
            spent = time.perf_counter() - start
            results.append(row(name, "InferenceClient (TEI's POST /)", theirs, single[name], spent))
    for name, model_dir in zip(names, args.model_dirs, strict=True):
        start = time.perf_counter()
        theirs = pipeline_labels(model_dir, texts)
        spent = time.perf_counter() - start
        results.append(row(name, "optimum + pipeline", theirs, single[name], spent))
    if not args.no_bento:
        start = time.perf_counter()
        bento, labels = bento_labels(list(args.model_dirs), texts)
        spent = time.perf_counter() - start
        for name in names:
            results.append(row(name, f"Bento {bento}", labels[name], batched[name], spent))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compat.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"texts: {texts_path} ({len(texts)} rows)")
    print("| model | check | rows | same label as the service | seconds |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['check']} | {r['rows']} | {r['equal']} | {r['seconds']} |")
    # The batch-size row measures dynamic int8's batch dependence: reported, not a failure.
    checks = [r for r in results if not r["check"].startswith("/classify")]
    return 0 if all(r["equal"] == r["rows"] for r in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
