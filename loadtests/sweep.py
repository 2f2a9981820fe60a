"""The throughput at a latency target (SLO), and how that figure is to be priced.

Two searches, one `sweep.json`:
- "rate" (default): a closed-loop probe, then open-loop points at set Poisson arrival rates,
  bracketed and bisected to the highest rate whose p95 meets the SLO with few failures
  (loadtests/rate_sweep.py, loadtests/search.py). Every point records the server's CPU-seconds
  per text; `cost_basis` says whether the throughput (server pinned alone to its cores) or
  the CPU-seconds (generator on the same cores) prices the figure (reports/cost.py), and
  `method` says so in one sentence for the report.
- "users": closed-loop steps of 1, 2, 4, ... users until one misses the SLO, fails, or adds
  too little throughput (loadtests/user_steps.py). Coarse: kept for comparison.

Each run is a headless Locust run of its own, in its own directory with Locust's CSVs and
HTML report and a `summary.json` (`LoadSummary`): Locust's statistics accumulate over a run,
so separate runs give each point clean percentiles, and the search can pick the next rate
from the last answer. `sweep.json` holds every point, the chosen one (`at_slo`), why the
search stopped, and the machine it ran on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtests.rate_sweep import rate_fields, run_rate_search
from loadtests.run import (
    SUMMARY_NAME,
    LoadSummary,
    LoadTestError,
    read_json_object,
    run_loadtest,
)
from loadtests.search import DEFAULT_REL_TOL, best_at_slo, meets_slo
from loadtests.user_steps import live_printer, user_steps
from loadtests.web import DEFAULT_WEB_PORT, WebUI

logger = logging.getLogger(__name__)

SWEEP_NAME = "sweep.json"
DEFAULT_HOST = "http://127.0.0.1:3000"  # `smallcls serve`'s default
DEFAULT_STEPS = (1, 2, 4, 8, 16, 32)
DEFAULT_SLO_P95_MS = 50.0
# A step that fails more requests than this does not count as meeting the SLO: a server that
# sheds load with 503s can show a low p95 while refusing work.
DEFAULT_MAX_FAILURE_RATE = 0.01
# Stop when a step adds less than this fraction of throughput over the best so far: the server
# is saturated, and more users only add queueing delay.
DEFAULT_MIN_GAIN = 0.05
SEARCHES = ("rate", "users")
# Rate search: points after the probe (each narrows the bracket by about half once found),
# and a point's length when nothing else sets it.
DEFAULT_POINTS = 4
DEFAULT_POINT_SECONDS = 5
# The vCPUs of the instance the load-test machine stands for (configs/prices.yaml
# measured_as: aws-c7i.large, 2 vCPUs): the server gets that many cores when it can have them
# to itself.
DEFAULT_SERVER_CORES = 2


def _load_summary(step: Mapping[str, Any], source: str) -> LoadSummary:
    """A step (or probe) of sweep.json as a LoadSummary: its extra keys ("dir", "rate")
    dropped."""
    fields = {f.name for f in dataclasses.fields(LoadSummary)}
    return LoadSummary.from_dict({k: v for k, v in step.items() if k in fields}, source=source)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSummary:
    model: str
    slo_p95_ms: float
    max_failure_rate: float
    batch: int
    length: str
    step_seconds: int
    workers: int
    machine: str  # what the numbers were measured on, e.g. "2-core AMD EPYC 7B13 (Linux x86_64)"
    cpu_count: int
    stop_reason: str
    steps: list[dict[str, Any]]  # LoadSummary fields + "dir" (relative to the sweep directory)
    at_slo: dict[str, Any] | None  # the chosen step (same fields), None when none met the SLO
    # Optional, with defaults, so sweeps written before they existed still load.
    # "users": closed-loop steps of `users` each; "rate": open-loop points of an arrival rate
    # (each step also holds "rate", the offered requests/s, and "passed").
    search: str = "users"
    probe: dict[str, Any] | None = None  # rate search: the closed-loop run that set the guess
    # Rate search: the highest passing and the lowest failing rate (requests/s).
    bracket: list[float | None] | None = None
    # How the figure is to be priced (loadtests/rate_sweep.py): "dedicated_cores" (the server
    # was pinned alone to `server_cores` cores: price its throughput) or "server_cpu_seconds"
    # (the generator shared the cores: price `server_cpu_s_per_text` at the vCPU-second).
    cost_basis: str = "throughput"
    server_cores: list[int] | None = None  # pinned server cores, None when not pinned
    generator_cores: list[int] | None = None
    server_cpu_s_per_text: float | None = None  # at the chosen step
    texts_per_cpu_s: float | None = None  # 1 / server_cpu_s_per_text
    method: str = ""  # one sentence for the report: how the throughput was found and priced

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / SWEEP_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, out_dir: Path) -> SweepSummary:
        path = Path(out_dir) / SWEEP_NAME
        data = read_json_object(path, written_by="a sweep")
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        if required - set(data):
            raise LoadTestError(f"{path}: expected an object with keys {sorted(required)}")
        # Unknown keys are ignored: a newer sweep may record more than this reader knows.
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})

    def step_summaries(self, *, source: str = "sweep") -> list[LoadSummary]:
        return [_load_summary(s, source) for s in self.steps]

    def probe_summary(self, *, source: str = "sweep") -> LoadSummary | None:
        """The rate search's closed-loop probe, None when the sweep had none."""
        return None if self.probe is None else _load_summary(self.probe, source)

    def line(self) -> str:
        if self.at_slo is None:
            best = f"no step met p95 <= {self.slo_p95_ms:g} ms"
        else:
            at = (
                f"{self.at_slo['rate']:.1f} req/s offered"
                if self.search == "rate"
                else f"{self.at_slo['users']} users"
            )
            best = (
                f"{self.at_slo['texts_per_s']:.1f} texts/s at {at} "
                f"(p95 {self.at_slo['p95_ms']:.0f} ms <= {self.slo_p95_ms:g} ms)"
            )
            if self.server_cpu_s_per_text is not None:
                best += f", server {1000 * self.server_cpu_s_per_text:.2f} CPU-ms per text"
        return f"{self.model}: {best}; {len(self.steps)} steps, stopped: {self.stop_reason}"


def machine_label() -> str:
    """What a measurement ran on: core count, CPU model, OS and architecture."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {model} ({platform.system()} {platform.machine()})"


def run_sweep(
    *,
    host: str,
    model: str,
    texts_path: Path,
    out_dir: Path,
    text_column: str = "text",
    steps: Sequence[int] = DEFAULT_STEPS,
    step_seconds: int | None = 10,
    slo_p95_ms: float = DEFAULT_SLO_P95_MS,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    min_gain: float = DEFAULT_MIN_GAIN,
    batch: int | None = 1,
    length: str = "all",
    max_length: int = 64,
    workers: int = 0,
    server_pid: int | None = None,
    timeout_s: float | None = None,
    echo: Callable[[str], None] | None = None,
    extra_env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    config_dir: Path | None = None,
    search: str = "rate",
    points: int = DEFAULT_POINTS,
    point_seconds: int | None = None,
    server_cores: int = DEFAULT_SERVER_CORES,
    rel_tol: float = DEFAULT_REL_TOL,
    also_targets: Sequence[float] = (),
) -> SweepSummary:
    """The throughput at the SLO, written to `sweep.json` in `out_dir`.

    `search="rate"` (default): a closed-loop probe at max(`steps`) users, then `points`
    open-loop points of `point_seconds` each, bracketing and bisecting the arrival rate
    (loadtests/rate_sweep.py). `point_seconds` None: the time the user steps would have taken,
    len(steps) x step_seconds, shared by the probe and the points (at least 3 s each), so a
    caller's time budget holds; more points of more seconds give a finer, steadier answer.
    `server_cores`: the vCPUs of the instance the figure stands for; the server is pinned to
    that many cores and Locust to the rest when the machine has more (loadtests/cores.py).
    `also_targets`: tighter p95 targets searched too (their points join `steps` in
    sweep.json), so that a report can price the model at each.

    `search="users"`: the steps in order until one misses the SLO or adds < `min_gain`
    throughput (closed loop). `extra_env`: more locustfile settings for every run (e.g.
    SMALLCLS_LOADTEST_TOKEN). `echo` gets a summary line per run, `progress` a live line
    about once a second while a run runs. `step_seconds` or `batch` None: `[tool.locust]`'s
    run-time or batch in `config_dir` (loadtests/run.py), else 20 s and 1.
    """
    steps = list(steps)
    if not steps or any(u < 1 for u in steps) or steps != sorted(set(steps)):
        raise ValueError(f"steps must be increasing user counts >= 1, got {steps}")
    if slo_p95_ms <= 0 or not 0 <= max_failure_rate <= 1:
        raise ValueError(
            f"need slo_p95_ms > 0 and 0 <= max_failure_rate <= 1; got {slo_p95_ms}, "
            f"{max_failure_rate}"
        )
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SWEEP_NAME).unlink(missing_ok=True)
    common: dict[str, Any] = dict(
        host=host, model=model, texts_path=texts_path, text_column=text_column, batch=batch,
        timeout_s=timeout_s, length=length, max_length=max_length, workers=workers,
        server_pid=server_pid, extra_env=extra_env, config_dir=config_dir,
    )  # fmt: skip
    if search == "users":
        done, stop_reason = user_steps(
            common, out_dir, steps, step_seconds, slo_p95_ms, max_failure_rate, min_gain,
            echo, progress,
        )  # fmt: skip
        extra: dict[str, Any] = {
            "method": (
                f"closed loop: the best of {len(done)} steps of users ({step_seconds} s each) "
                f"with p95 <= {slo_p95_ms:g} ms and failures <= {max_failure_rate:.0%}; "
                "the load generator shared the server's cores; priced from throughput"
            )
        }
        step_dicts = [{**dataclasses.asdict(s), "dir": d} for d, s in done]
    else:
        if point_seconds is None:
            budget = len(steps) * (step_seconds or DEFAULT_POINT_SECONDS)
            point_seconds = max(3, budget // (points + 1))
        found = run_rate_search(
            common=common, out_dir=out_dir, probe_users=max(steps), probe_seconds=point_seconds,
            point_seconds=point_seconds, points=points, slo_p95_ms=slo_p95_ms,
            max_failure_rate=max_failure_rate, server_cores=server_cores, rel_tol=rel_tol,
            echo=echo, progress=progress, also_targets=also_targets,
        )  # fmt: skip
        stop_reason = found.stop_reason
        done = [(name, summary) for name, _, summary in found.points]
        step_dicts = [
            {**dataclasses.asdict(s), "dir": d, "rate": round(rate, 3),
             "passed": meets_slo(s, slo_p95_ms, max_failure_rate)}
            for d, rate, s in found.points
        ]  # fmt: skip
        extra = rate_fields(found, slo_p95_ms, max_failure_rate, point_seconds)
        step_seconds = point_seconds

    best = best_at_slo([s for _, s in done], slo_p95_ms, max_failure_rate)
    at_slo = None
    if best is not None:
        at_slo = next(d for (_, s), d in zip(done, step_dicts, strict=True) if s is best)
        per_text = at_slo.get("server_cpu_s_per_text")
        extra["server_cpu_s_per_text"] = per_text
        extra["texts_per_cpu_s"] = round(1 / per_text, 2) if per_text else None
    result = SweepSummary(
        model=model,
        slo_p95_ms=slo_p95_ms,
        max_failure_rate=max_failure_rate,
        batch=(done[0][1].batch if done else batch) or 1,  # as the runs resolved it
        length=length,
        step_seconds=(done[0][1].run_time_s if done else step_seconds) or 0,
        workers=workers,
        machine=machine_label(),
        cpu_count=os.cpu_count() or 0,
        stop_reason=stop_reason,
        steps=step_dicts,
        at_slo=at_slo,
        search=search,
        **extra,
    )
    result.write(out_dir)
    # The chosen step's summary also sits at the top, so a plain load-test reader finds it.
    if best is not None:
        best.write(out_dir)
    else:
        (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    logger.info("%s", result.line())
    return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadTestPlan:
    """What `smallcls loadtest` runs for each model: a sweep (`steps`), a load shape, one run
    of `users` users for `seconds`, or (`web`) Locust's web UI for an interactive test. None:
    `[tool.locust]` in the current directory, else 8 users, 20 s, batch 1 (loadtests/run.py)."""

    # None: each model directory's own test file, as its manifest names it.
    texts_path: Path | None
    out_dir: Path
    text_column: str | None = None  # None: "text", or the manifest's column
    users: int | None = None
    seconds: int | None = None  # one run's length, each sweep step's, or the bound of a shape
    steps: list[int] | None = None
    shape: str | None = None
    shape_scale: float = 1.0
    slo_p95_ms: float = DEFAULT_SLO_P95_MS
    batch: int | None = None
    length: str = "all"
    max_length: int = 64
    workers: int = 0
    web: bool = False
    web_port: int = DEFAULT_WEB_PORT
    # A sweep's search (run_sweep): "rate" (open loop, bisected; `steps`' largest is the
    # probe) or "users" (closed-loop steps); its points and their length (None: the steps'
    # time budget).
    search: str = "rate"
    points: int = DEFAULT_POINTS
    point_seconds: int | None = None


def load_test_models(
    plan: LoadTestPlan,
    *,
    host: str | None,
    models: Sequence[str] = (),
    model_dirs: Sequence[Path] = (),
    server_pid: int | None = None,
    serve_threads: int = 2,
    serve_device: str = "cpu",
    echo: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Load-test each model; returns the output directories (one per model under
    `plan.out_dir`, or `plan.out_dir` itself for a single named model). `progress` gets the
    live lines of every run (None: summaries only).

    With `model_dirs` and no `host`, starts `bentoml serve` for them on 127.0.0.1 first, and
    takes each model's name and max length from its manifest. Otherwise talks to `host`, and
    finds the server's process (for CPU figures) from the port when `server_pid` is None.
    """
    from core.manifest import Manifest
    from loadtests.run import find_server_pid, wait_ready

    if model_dirs and host is None:
        from service.launch import ServerProcess
        from service.settings import ENV_DEVICE

        log = Path(plan.out_dir) / "server.log"
        echo(f"[serve] starting BentoML with {len(model_dirs)} models (log {log})")
        device = {ENV_DEVICE: serve_device}
        with ServerProcess(
            model_dirs, threads=serve_threads, log_path=log, extra_env=device
        ) as server:
            assert server.process is not None
            echo(f"[serve] ready at {server.url}")
            named = [_target(plan, Manifest.read(Path(d))) for d in model_dirs]
            return _each(plan, server.url, named, server.process.pid, echo, progress, nest=True)
    if host is None:
        host = DEFAULT_HOST
    wait_ready(host)
    if models and plan.texts_path is None:
        raise ValueError("--texts is needed for models named by --model (no manifest here)")
    column = plan.text_column or "text"
    pairs = [_Target(name, plan.max_length, plan.texts_path, column) for name in models]  # type: ignore[arg-type]
    pairs += [_target(plan, Manifest.read(Path(d))) for d in model_dirs]
    if not pairs:
        raise ValueError("name at least one model (--model NAME or model directories)")
    pid = server_pid if server_pid is not None else find_server_pid(host)
    if pid is None:
        echo("[loadtest] server process not found on this machine: no server CPU figures")
    nest = len(pairs) > 1 or plan.steps is not None
    return _each(plan, host, pairs, pid, echo, progress, nest=nest)


@dataclasses.dataclass(frozen=True)
class _Target:
    name: str
    max_length: int
    texts_path: Path
    text_column: str


def _target(plan: LoadTestPlan, manifest: Any) -> _Target:
    """A model directory's load test sends its own test texts unless told otherwise: the
    texts its accuracy was measured on."""
    texts, column = plan.texts_path, plan.text_column
    if texts is None:
        texts = manifest.test_path
        column = column or manifest.dataset.get("text_column") or "text"
        if texts is None:
            raise ValueError(f"{manifest.name}'s manifest names no test file: pass --texts")
    return _Target(manifest.name, manifest.max_length, Path(texts), column or "text")


def _each(
    plan: LoadTestPlan,
    host: str,
    models: list[_Target],
    server_pid: int | None,
    echo: Callable[[str], None],
    progress: Callable[[str], None] | None,
    *,
    nest: bool,
) -> list[Path]:
    if plan.web:
        return [_web(plan, host, models, echo)]
    outs = []
    for i, target in enumerate(models, 1):
        out = Path(plan.out_dir) / target.name if nest else Path(plan.out_dir)
        mark = f"[loadtest {i}/{len(models)}]"
        echo(f"[loadtest {i}/{len(models)}] {target.name} -> {out} (texts {target.texts_path})")
        common: dict[str, Any] = dict(
            host=host, model=target.name, texts_path=target.texts_path,
            text_column=target.text_column, out_dir=out, batch=plan.batch, length=plan.length,
            max_length=target.max_length, workers=plan.workers, server_pid=server_pid,
        )  # fmt: skip
        if plan.steps:
            sweep = run_sweep(
                **common, steps=plan.steps, step_seconds=plan.seconds,
                slo_p95_ms=plan.slo_p95_ms, echo=echo, progress=progress, search=plan.search,
                points=plan.points, point_seconds=plan.point_seconds,
            )  # fmt: skip
            echo(f"[loadtest {i}/{len(models)}] {sweep.line()}")
        else:
            summary = run_loadtest(
                **common, users=plan.users, spawn_rate=plan.users, run_time_s=plan.seconds,
                shape=plan.shape, shape_scale=plan.shape_scale,
                progress=None if progress is None else live_printer(progress, mark),
            )  # fmt: skip
            echo(f"[loadtest {i}/{len(models)}] {summary.line()}")
        outs.append(out)
    return outs


def _web(plan: LoadTestPlan, host: str, models: list[_Target], echo: Callable[[str], None]) -> Path:
    """Serve Locust's web UI for one model until Ctrl-C; its files land in `plan.out_dir`."""
    if len(models) != 1 or plan.steps or plan.shape:
        raise ValueError("--web opens the UI for one model: name one, without --sweep or --shape")
    (target,) = models
    ui = WebUI(
        host=host, model=target.name, texts_path=target.texts_path,
        text_column=target.text_column, out_dir=plan.out_dir, length=plan.length,
        max_length=target.max_length, users=plan.users, batch=plan.batch,
        workers=plan.workers, web_port=plan.web_port,
    )  # fmt: skip
    with ui:
        echo(f"[loadtest] Locust web UI for {target.name} at {ui.url} (Ctrl-C stops it; "
             f"log {ui.log_path})")  # fmt: skip
        try:
            ui.wait()
        except KeyboardInterrupt:
            echo("[loadtest] stopping Locust (writing its reports)")
    return Path(plan.out_dir)
