"""Where the service's CPU goes per request, apart from the model: cProfile of the ASGI app.

    python bench/profile_service.py --requests 2000
    python bench/profile_service.py --requests 800 --cpu-rounds 5 --path /predict

Drives `Classifier.to_asgi()` directly from one event loop (no sockets, no HTTP parsing), one
single-text request at a time, and prints (1) wall time per request against the bare
`logits_bucketed` call on the same texts and (2) the top functions by cumulative time in the
event-loop thread. The model's own time is in the batcher's thread and does not show in (2).
With `--cpu-rounds N` it profiles nothing and prints instead the event-loop thread's CPU per
request in each of N rounds and their median: what a request costs outside the model, without
the profiler's own overhead (set SMALLCLS_TRACE_CLASSIFY=true to compare with the span).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def lifespan(app, messages: list[str]) -> asyncio.Task:
    queue: asyncio.Queue = asyncio.Queue()
    for m in messages:
        queue.put_nowait({"type": m})
    started = asyncio.Event()

    async def send(message):
        if message["type"].endswith("startup.complete"):
            started.set()
        if message["type"].endswith("failed"):
            raise RuntimeError(message)

    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, queue.get, send)
    )
    await started.wait()
    return task, queue


async def request(app, body: bytes, path: str = "/classify") -> int:
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 5000),
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    return status


@contextlib.asynccontextmanager
async def serving(app, bodies: list[bytes], path: str) -> AsyncIterator[None]:
    """The app started (its lifespan) and warmed on the first bodies; shut down after."""
    _, queue = await lifespan(app, ["lifespan.startup"])
    for body in bodies[:50]:
        assert await request(app, body, path) == 200
    try:
        yield
    finally:
        queue.put_nowait({"type": "lifespan.shutdown"})


async def loop_cpu_per_request(app, bodies: list[bytes], path: str, rounds: int) -> list[float]:
    """CPU time of this thread (the event loop's) per request, in ms, once per round."""
    per_round = []
    async with serving(app, bodies, path):
        for _ in range(rounds):
            t0 = time.thread_time()
            for body in bodies:
                await request(app, body, path)
            per_round.append((time.thread_time() - t0) * 1000 / len(bodies))
    return per_round


async def profiled_ms_per_request(app, bodies: list[bytes], path: str, out: Path) -> float:
    """Wall time per request with cProfile on; the profile is written to `out`."""
    async with serving(app, bodies, path):
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        for body in bodies:
            await request(app, body, path)
        profiler.disable()
        per_request = (time.perf_counter() - t0) * 1000 / len(bodies)
    profiler.dump_stats(str(out))
    return per_request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo_output/models/minilm-int8"))
    parser.add_argument("--texts", type=Path, default=ROOT / "data/sst2/test.jsonl")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--path", choices=["/classify", "/predict"], default="/classify")
    parser.add_argument("--cpu-rounds", type=int, default=0, help="thread CPU, no profile")
    args = parser.parse_args()
    os.environ.update(
        SMALLCLS_MODELS=str(args.model),
        SMALLCLS_THREADS=str(args.threads),
        BENTOML_DO_NOT_TRACK="true",
    )
    texts = [json.loads(line)["text"] for line in args.texts.read_text().splitlines() if line]
    texts = [texts[i % len(texts)] for i in range(args.requests)]
    from service.runtime import OnnxClassifier
    from service.service import Classifier

    classifier = OnnxClassifier(args.model, threads=args.threads)
    classifier.logits_bucketed(texts[:8])
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in texts:
        classifier.logits_bucketed([t])
    bare_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    # The CPU as well as the wall: on more than one intra-op thread they differ, and the
    # CPU is what a loaded server pays per text.
    bare_cpu_ms = (time.process_time() - cpu0) * 1000 / len(texts)
    bare = f"bare model {bare_ms:.2f} ms/text wall, {bare_cpu_ms:.2f} ms CPU on {args.threads}"
    bare += " intra-op thread" + ("s" if args.threads > 1 else "")

    app = Classifier.to_asgi()
    shape = (lambda t: {"inputs": t}) if args.path == "/predict" else (lambda t: {"texts": [t]})
    bodies = [json.dumps(shape(t)).encode() for t in texts]
    if args.cpu_rounds:
        rounds = asyncio.run(loop_cpu_per_request(app, bodies, args.path, args.cpu_rounds))
        shown = " / ".join(f"{r:.3f}" for r in rounds)
        print(
            f"{args.path}: event-loop thread CPU per request {statistics.median(rounds):.3f} ms "
            f"(median of {len(rounds)} rounds of {len(bodies)}: {shown}); {bare}"
        )
        return 0

    (ROOT / "bench_out").mkdir(exist_ok=True)
    profile = ROOT / "bench_out" / "service.prof"
    served_ms = asyncio.run(profiled_ms_per_request(app, bodies, args.path, profile))
    print(
        f"{bare}; through the ASGI app: {served_ms:.2f} ms/request wall "
        f"(+{served_ms - bare_ms:.2f} ms, profiled)"
    )
    stats = pstats.Stats(str(profile))
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
