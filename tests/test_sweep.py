"""Tests for the concurrency sweep, load shapes, master/worker mode and length buckets."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.run import LoadSummary, run_loadtest
from loadtests.sweep import SWEEP_NAME, SweepSummary, best_at_slo, run_sweep
from loadtests.texts import select_texts
from tests.test_loadtest import _serve

MODEL = "stub-fp32"


def _step(users: int, texts_per_s: float, p95: float | None, failures: int = 0) -> LoadSummary:
    return LoadSummary(
        model="m", users=users, run_time_s=5, batch=1, requests=100, failures=failures,
        failure_rate=failures / 100, rps=texts_per_s, texts_per_s=texts_per_s,
        p50_ms=None if p95 is None else p95 / 2, p95_ms=p95, p99_ms=p95, mean_ms=p95,
    )  # fmt: skip


def test_best_at_slo_picks_most_throughput_within_latency_and_failures() -> None:
    steps = [
        _step(1, 20.0, 10.0),
        _step(2, 38.0, 30.0),
        _step(4, 60.0, 49.0, failures=5),  # fast enough, but 5% failed
        _step(8, 70.0, 80.0),  # over the SLO
    ]
    assert best_at_slo(steps, 50.0, 0.01).users == 2
    assert best_at_slo(steps, 50.0, 0.10).users == 4
    assert best_at_slo(steps, 100.0, 0.01).users == 8
    assert best_at_slo(steps, 5.0, 0.01) is None
    assert best_at_slo([_step(1, 0.0, None)], 50.0, 0.01) is None


def test_length_buckets() -> None:
    texts = [" ".join(["w"] * n) for n in range(1, 21)]  # 1..20 words
    short = select_texts(texts, "short")
    typical = select_texts(texts, "typical")
    assert max(len(t.split()) for t in short) < min(len(t.split()) for t in typical)
    assert len(short) + len(typical) < len(texts)  # the longest quarter is in neither
    near_max = select_texts(texts, "near_max", max_length=64)
    assert len(near_max) == len(texts)
    assert all(len(t.split()) >= 64 for t in near_max)
    assert select_texts(texts, "all") == texts
    with pytest.raises(ValueError, match="one of all, short, typical, near_max"):
        select_texts(texts, "huge")


@pytest.fixture
def good_host() -> Iterator[str]:
    yield from _serve("good")


@pytest.fixture
def texts_path(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    rows = [{"text": " ".join(["word"] * (i + 1))} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_stops_at_the_slo(texts_path: Path, tmp_path: Path) -> None:
    # The stub takes 5 ms per request: the first step misses a 1 ms SLO and the sweep stops.
    # (A fast stub can answer in under 0.5 ms, which Locust rounds to a p95 of 0 ms.)
    host = _serve("slow")
    sweep = run_sweep(
        host=next(host), model=MODEL, texts_path=texts_path, out_dir=tmp_path / "sw",
        steps=[1, 2, 4], step_seconds=2, slo_p95_ms=1.0, length="short", search="users",
    )  # fmt: skip
    host.close()
    assert len(sweep.steps) == 1 and sweep.at_slo is None
    assert "> SLO" in sweep.stop_reason
    assert SweepSummary.read(tmp_path / "sw") == sweep
    assert not (tmp_path / "sw" / "summary.json").exists()  # nothing met the SLO
    step = tmp_path / "sw" / "users-001"
    assert (step / "locust.html").is_file() and (step / "locust_final_stats.csv").is_file()
    sent = (step / "texts.jsonl").read_text().splitlines()
    assert sent and all(len(json.loads(line)["text"].split()) <= 11 for line in sent)
    assert LoadSummary.read(step).length == "short"


@pytest.mark.slow
@pytest.mark.integration
def test_load_shape_table_runs(good_host: str, texts_path: Path, tmp_path: Path) -> None:
    # The "steps" table, squeezed to 0.1 of its length: four stages in 6 s.
    summary = run_loadtest(
        host=good_host, model=MODEL, texts_path=texts_path, out_dir=tmp_path / "shape",
        users=8, run_time_s=30, shape="steps", shape_scale=0.1,
    )  # fmt: skip
    assert summary.requests > 0 and summary.failures == 0
    history = (tmp_path / "shape" / "locust_stats_history.csv").read_text()
    assert history.count("\n") > 2


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    """A real `bentoml serve` of the torch-free tiny model: (url, server pid, model name)."""
    from service.launch import ServerProcess
    from tests.fakes import make_tiny_model_dir

    root = tmp_path_factory.mktemp("sweep-server")
    model_dir = make_tiny_model_dir(root / "tiny-fp32", name="tiny-fp32")
    # No admission control: these tests check the search, which must see every point's
    # latency rather than refusals of a server the generator saturates.
    env = {"BENTOML_HOME": str(root / "bentoml"), "SMALLCLS_ADMISSION": "false"}
    with ServerProcess([model_dir], extra_env=env, log_path=root / "server.log") as server:
        assert server.process is not None
        yield server.url, server.process.pid, "tiny-fp32"


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_against_a_tiny_model_service(
    tiny_server: tuple[str, int, str], texts_path: Path, tmp_path: Path
) -> None:
    url, pid, model = tiny_server
    sweep = run_sweep(
        host=url, model=model, texts_path=texts_path, out_dir=tmp_path / "sw",
        steps=[1, 2], step_seconds=2, slo_p95_ms=10_000, min_gain=-1.0, server_pid=pid,
        batch=2, search="users",
    )  # fmt: skip
    assert [s["users"] for s in sweep.steps] == [1, 2]
    assert sweep.at_slo is not None and sweep.at_slo["failures"] == 0
    assert sweep.at_slo["texts_per_s"] == max(s["texts_per_s"] for s in sweep.steps)
    assert sweep.at_slo["texts_per_s"] == pytest.approx(2 * sweep.at_slo["rps"])
    assert "-core" in sweep.machine
    for step in sweep.steps:
        assert step["server_cpu_percent"] is not None and step["server_cpu_percent"] > 0
        assert (tmp_path / "sw" / step["dir"] / "locust.html").is_file()
    # The chosen step is also the directory's plain summary, for single-run readers.
    assert LoadSummary.read(tmp_path / "sw").users == sweep.at_slo["users"]
    assert (tmp_path / "sw" / SWEEP_NAME).is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_rate_search_against_a_tiny_model_service(
    tiny_server: tuple[str, int, str], texts_path: Path, tmp_path: Path
) -> None:
    # A probe and two open-loop points; a generous SLO, so both points pass and the search
    # grows the rate: the second point offers 1.25x the first.
    url, pid, model = tiny_server
    sweep = run_sweep(
        host=url, model=model, texts_path=texts_path, out_dir=tmp_path / "rs", steps=[2],
        step_seconds=2, point_seconds=2, points=2, slo_p95_ms=10_000, server_pid=pid,
    )  # fmt: skip
    assert sweep.search == "rate" and sweep.probe is not None and sweep.probe["users"] == 2
    rates = [s["rate"] for s in sweep.steps]
    assert len(rates) == 2 and rates[1] == pytest.approx(1.25 * rates[0], rel=1e-3)
    assert all(s["passed"] for s in sweep.steps)
    assert len({s["users"] for s in sweep.steps}) == 2  # one user count per point
    assert sweep.at_slo == max(sweep.steps, key=lambda s: s["texts_per_s"])
    # Open loop: the achieved rate follows the offered one (the first point offers 85% of
    # what the probe was served), not the server's speed.
    first = sweep.steps[0]
    assert first["rps"] == pytest.approx(first["rate"], rel=0.35)
    assert first["users"] <= 256  # a 10 s SLO must not ask for thousands of users
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 3:  # a core to spare: the server pinned alone to two
        assert sweep.cost_basis == "dedicated_cores" and sweep.server_cores == cores[:2]
        assert sweep.generator_cores == cores[2:]
    else:  # the generator shares the cores: priced from the server's CPU-seconds
        assert sweep.cost_basis == "server_cpu_seconds" and sweep.server_cores is None
    assert sweep.server_cpu_s_per_text == sweep.at_slo["server_cpu_s_per_text"] > 0
    assert sweep.texts_per_cpu_s == pytest.approx(1 / sweep.server_cpu_s_per_text, rel=0.01)
    assert "open loop" in sweep.method and "CPU-seconds" in sweep.method
    assert SweepSummary.read(tmp_path / "rs") == sweep
    for step in sweep.steps:
        assert (tmp_path / "rs" / step["dir"] / "locust_final_stats.csv").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_master_with_two_local_workers(
    tiny_server: tuple[str, int, str], texts_path: Path, tmp_path: Path
) -> None:
    url, _, model = tiny_server
    summary = run_loadtest(
        host=url, model=model, texts_path=texts_path, out_dir=tmp_path / "dist",
        users=4, run_time_s=3, workers=2,
    )  # fmt: skip
    assert summary.workers == 2 and summary.requests > 0 and summary.failures == 0
    log = (tmp_path / "dist" / "locust.log").read_text()
    assert "worker" in log.lower()


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_prints_live_lines_marked_with_the_step(
    good_host: str, texts_path: Path, tmp_path: Path
) -> None:
    echoed: list[str] = []
    live: list[str] = []
    sweep = run_sweep(
        host=good_host, model=MODEL, texts_path=texts_path, out_dir=tmp_path / "sw",
        steps=[1, 2], step_seconds=2, slo_p95_ms=10_000, min_gain=-1.0, echo=echoed.append,
        progress=live.append, config_dir=tmp_path, search="users",
    )  # fmt: skip
    assert len(sweep.steps) == 2 and sweep.step_seconds == 2 and sweep.batch == 1
    for k, users in ((1, 1), (2, 2)):
        mine = [line for line in live if line.startswith(f"  [step {k}/2] ")]
        assert mine, f"no live line for step {k}: {live}"
        assert re.search(rf"\d+/2 s: {users} users, [\d.]+ req/s, [\d.]+ texts/s, p95 ", mine[-1])
    # The end of each step is still one summary line.
    assert [line.split("]")[0] for line in echoed] == ["  [step 1/2", "  [step 2/2"]
    assert all("requests" in line for line in echoed)


@pytest.mark.slow
@pytest.mark.integration
def test_cli_prints_progress_to_stderr_unless_quiet(
    good_host: str, texts_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smallcls.cli import main

    base = ["loadtest", "--host", good_host, "--model", MODEL, "--texts", str(texts_path),
            "--users", "1", "--seconds", "2"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert re.search(r"\[loadtest 1/1\] \d+/2 s: 1 users, .* req/s", loud.err)
    assert "[loadtest 1/1] stub-fp32: " in loud.out  # the summary line, on stdout
    assert main([*base, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert not re.search(r"\d+/2 s: ", quiet.err + quiet.out)
    assert "[loadtest 1/1] stub-fp32: " in quiet.out
