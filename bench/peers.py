"""Our service against its peers on one machine, in one session, with the same model.

    python bench/peers.py --seconds 20 --out bench_out/peers

Targets, one at a time (never two servers at once, so they do not share the cores):
- raw-ort: onnxruntime in this process with the service's own batcher and thread count:
  the ceiling (no HTTP, no JSON, no client on the same cores);
- ours: `bentoml serve` of service.service:Classifier (SMALLCLS_THREADS, SMALLCLS_WORKERS);
- naive: FastAPI + transformers + torch eager, one text per forward pass (bench/naive_server.py);
- infinity: infinity-emb 0.0.78 from PyPI in its own venv (--infinity-python), optimum engine,
  serving the SAME exported directory (its model.onnx, tokenizer and HF config) as is.

Load: single-text requests drawn from SST-2's test split. The generator is asyncio + aiohttp
in this process: one process can keep hundreds of requests in flight with little CPU (Locust
would need gevent workers and more CPU on the same 2 cores), and open-loop arrivals at a fixed
rate are easy to schedule, with latency counted from the scheduled time (no coordinated
omission). Phases per target: concurrency 1 (low load), fixed rates (open loop), and
saturation (closed loop, many clients). Ratios are against raw-ort.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.launch import ServerProcess, free_port  # noqa: E402

DEFAULT_MODEL = Path("demo_output/models/minilm-int8")
DEFAULT_RUN = Path("demo_output/runs/minilm")
DEFAULT_INFINITY_PYTHON = ROOT / ".peer-venv" / "bin" / "python"

Call = Callable[[str], Awaitable[None]]  # one request with one text; raises on failure


@dataclasses.dataclass
class Phase:
    name: str  # "c1", "rate50", "saturation"
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    # CPU milliseconds per request at saturation: the server's processes, and this process
    # (the load generator; for raw-ort also the model). Where the cores go.
    server_cpu_ms: float | None = None
    client_cpu_ms: float | None = None

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": round(self.throughput, 1),
            "p50_ms": round(self.pct(50), 2),
            "p95_ms": round(self.pct(95), 2),
            "p99_ms": round(self.pct(99), 2),
            "server_cpu_ms_per_req": _round(self.server_cpu_ms),
            "client_cpu_ms_per_req": _round(self.client_cpu_ms),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def tree_cpu_seconds(pid: int | None) -> float:
    """user+system CPU of a process and its children (the server's workers)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def closed_loop(
    call: Call, texts: list[str], clients: int, seconds: float, name: str
) -> Phase:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(0)

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            text = texts[rng.randrange(len(texts))]
            t0 = time.perf_counter()
            try:
                await call(text)
                latencies.append((time.perf_counter() - t0) * 1000)
            except Exception:  # a failed request counts as an error, the run goes on
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Phase(name, len(latencies) + errors, errors, time.perf_counter() - start, latencies)


async def open_loop(call: Call, texts: list[str], rate: float, seconds: float, name: str) -> Phase:
    """Poisson arrivals at `rate`/s; latency from each request's scheduled start."""
    rng = random.Random(1)
    latencies: list[float] = []
    errors = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(text: str, scheduled: float) -> None:
        nonlocal errors
        try:
            await call(text)
            latencies.append((time.perf_counter() - scheduled) * 1000)
        except Exception:
            errors += 1

    start = time.perf_counter()
    t = start
    while t < start + seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(texts[rng.randrange(len(texts))], t)))
    await asyncio.gather(*tasks)
    return Phase(name, len(tasks), errors, time.perf_counter() - start, latencies)


async def run_phases(
    call: Call, texts: list[str], args: argparse.Namespace, server_pid: int | None = None
) -> list[Phase]:
    await closed_loop(call, texts, 4, min(3.0, args.seconds), "warmup")
    phases = [await closed_loop(call, texts, 1, args.seconds, "c1")]
    for rate in args.rates:
        phases.append(await open_loop(call, texts, rate, args.seconds, f"rate{rate:g}"))
    server0, client0 = tree_cpu_seconds(server_pid), time.process_time()
    sat = await closed_loop(call, texts, args.clients, args.seconds, "saturation")
    done = max(1, sat.requests - sat.errors)
    if server_pid is not None:
        sat.server_cpu_ms = (tree_cpu_seconds(server_pid) - server0) * 1000 / done
    sat.client_cpu_ms = (time.process_time() - client0) * 1000 / done
    phases.append(sat)
    return phases


# ---- targets ------------------------------------------------------------------------------


def http_call(session: Any, url: str, body: Callable[[str], dict[str, Any]]) -> Call:
    async def call(text: str) -> None:
        async with session.post(url, json=body(text)) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {data[:200]!r}")

    return call


async def bench_http(
    url: str, body: Callable[[str], dict[str, Any]], texts, args, server_pid: int | None = None
) -> list[Phase]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await run_phases(http_call(session, url, body), texts, args, server_pid)


def bench_raw_ort(texts: list[str], args: argparse.Namespace) -> list[Phase]:
    from service.batching import Batcher
    from service.runtime import OnnxClassifier
    from service.settings import BatchingSettings

    # The service's own ORT settings (threads, spinning), so the ceiling is comparable.
    spinning = os.environ.get("SMALLCLS_ORT_SPINNING", "false").lower() in ("1", "true")
    classifier = OnnxClassifier(args.model, threads=args.threads, spinning=spinning)
    classifier.logits_bucketed(["warm up"])

    async def main() -> list[Phase]:
        batcher = Batcher("raw", classifier.logits_bucketed, BatchingSettings.from_env())

        async def call(text: str) -> None:
            await batcher.submit([text])

        try:
            return await run_phases(call, texts, args)
        finally:
            batcher.close()

    return asyncio.run(main())


def bench_ours(texts: list[str], args: argparse.Namespace, out: Path) -> list[Phase]:
    env = {"SMALLCLS_WORKERS": str(args.workers), "SMALLCLS_MAX_TEXTS": "64"}
    with ServerProcess(
        [args.model], threads=args.threads, extra_env=env, log_path=out / "ours.log"
    ) as server:
        return asyncio.run(
            bench_http(
                f"{server.url}/classify",
                lambda t: {"texts": [t]},
                texts,
                args,
                server.process.pid if server.process else None,
            )
        )


@contextlib.contextmanager
def subprocess_server(
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    log: Path,
    timeout: float,
    cwd: Path | None = None,
) -> Iterator[int]:
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[0]} exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def bench_naive(texts: list[str], args: argparse.Namespace, out: Path) -> list[Phase]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SMALLCLS_NAIVE_RUN": str(args.run),
        "SMALLCLS_NAIVE_THREADS": str(args.threads),
        "OMP_NUM_THREADS": str(args.threads),
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.naive_server:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    with subprocess_server(cmd, env, f"{url}/readyz", out / "naive.log", 180) as pid:
        return asyncio.run(
            bench_http(f"{url}/classify", lambda t: {"texts": [t]}, texts, args, pid)
        )


def infinity_model_dir(args: argparse.Namespace) -> Path:
    """The exported directory itself: its config.json (labels, problem type, a
    `...ForSequenceClassification` architecture), tokenizer_config.json (model_max_length =
    the manifest's max_length) and model.onnx are what Infinity's optimum engine loads."""
    missing = [
        n for n in ("config.json", "tokenizer_config.json") if not (args.model / n).is_file()
    ]
    if missing:
        raise RuntimeError(
            f"{args.model} has no {', '.join(missing)}: it was exported by an older smallcls; "
            "export the run again with `smallcls export`"
        )
    return args.model


def bench_infinity(texts: list[str], args: argparse.Namespace, out: Path) -> list[Phase]:
    if not Path(args.infinity_python).is_file():
        raise RuntimeError(
            f"{args.infinity_python} not found: create the peer venv (bench/README.md)"
        )
    model_dir = infinity_model_dir(args)
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    env.pop("PYTHONPATH", None)
    cli = Path(args.infinity_python).parent / "infinity_emb"
    # Run from inside the model directory with --model-id ".": infinity 0.0.78 hands optimum
    # 2.1 an absolute ONNX file name for local directories, which optimum then fails to match
    # ("Could not find any ONNX files with target file name"); relative to "." it matches.
    cmd = [
        str(cli),
        "v2",
        "--model-id",
        ".",
        "--served-model-name",
        "minilm",
        "--engine",
        "optimum",
        "--device",
        "cpu",
        "--batch-size",
        "32",
        "--onnx-disable-optimize",
        # Its warm-up sends 512-token inputs untruncated (the text-classification pipeline
        # does not truncate), past what the exported graph takes; SST-2 texts stay far below.
        "--no-model-warmup",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with subprocess_server(
        cmd, env, f"{url}/health", out / "infinity.log", 300, cwd=model_dir
    ) as pid:
        return asyncio.run(
            bench_http(
                f"{url}/classify", lambda t: {"input": [t], "model": "minilm"}, texts, args, pid
            )
        )


# ---- report -------------------------------------------------------------------------------


def table(results: dict[str, list[Phase] | str], rates: list[float]) -> str:
    raw = results.get("raw-ort")
    raw_phases = {p.name: p for p in raw} if isinstance(raw, list) else {}
    head = ["target", "sat req/s", "vs raw", "CPU ms/req server+client", "c1 p50/p95/p99 ms"]
    head += ["c1 p50 - raw"]
    head += [f"{r:g}/s p50/p95/p99 ms (err)" for r in rates]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for target, phases in results.items():
        if isinstance(phases, str):
            lines.append(f"| {target} | failed: {phases} |" + " |" * (len(head) - 2))
            continue
        by = {p.name: p for p in phases}
        sat, c1 = by["saturation"], by["c1"]
        row = [
            target,
            f"{sat.throughput:.1f}",
            f"{sat.throughput / raw_phases['saturation'].throughput:.2f}x" if raw_phases else "-",
            f"{sat.server_cpu_ms or 0:.2f} + {sat.client_cpu_ms or 0:.2f}",
            f"{c1.pct(50):.1f} / {c1.pct(95):.1f} / {c1.pct(99):.1f}",
            f"{c1.pct(50) - raw_phases['c1'].pct(50):+.1f} ms" if raw_phases else "-",
        ]
        for r in rates:
            p = by[f"rate{r:g}"]
            row.append(f"{p.pct(50):.1f} / {p.pct(95):.1f} / {p.pct(99):.1f} ({p.errors})")
        lines.append("| " + " | ".join(row) + " |")
    ours = results.get("ours")
    if isinstance(ours, list):
        sat = {p.name: p for p in ours}["saturation"].throughput
        for peer in ("infinity", "naive"):
            other = results.get(peer)
            if isinstance(other, list):
                peer_sat = {p.name: p for p in other}["saturation"].throughput
                lines.append(f"\nours / {peer} throughput at saturation: {sat / peer_sat:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model dir")
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="its training run (naive)")
    parser.add_argument("--texts", type=Path, default=ROOT / "data/sst2/test.jsonl")
    parser.add_argument("--targets", default="raw-ort,ours,naive,infinity")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--rates", type=float, nargs="*", default=[20.0, 100.0])
    parser.add_argument("--clients", type=int, default=64, help="concurrency at saturation")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime/torch threads")
    parser.add_argument("--workers", type=int, default=1, help="our service's workers")
    parser.add_argument("--infinity-python", default=str(DEFAULT_INFINITY_PYTHON))
    parser.add_argument("--out", type=Path, default=Path("bench_out/peers"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line)["text"] for line in args.texts.read_text().splitlines() if line]
    os.environ.setdefault("SMALLCLS_THREADS", str(args.threads))
    runners = {
        "raw-ort": lambda: bench_raw_ort(texts, args),
        "ours": lambda: bench_ours(texts, args, args.out),
        "naive": lambda: bench_naive(texts, args, args.out),
        "infinity": lambda: bench_infinity(texts, args, args.out),
    }
    results: dict[str, list[Phase] | str] = {}
    for target in args.targets.split(","):
        print(f"[peers] {target} ...", flush=True)
        try:
            results[target] = runners[target]()
        except Exception as exc:  # report the peer that could not run and measure the rest
            results[target] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            print(f"[peers] {target} failed: {exc}", flush=True)
            continue
        for phase in results[target]:
            print(f"[peers]   {phase.name}: {phase.summary()}", flush=True)
    report = table(results, args.rates)
    print(report)
    (args.out / "table.md").write_text(report + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "cpus": os.cpu_count(),
                "results": {
                    t: r if isinstance(r, str) else [p.summary() | {"phase": p.name} for p in r]
                    for t, r in results.items()
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
