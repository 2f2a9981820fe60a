"""The per-model batcher: merging, order, overload answers and failures, without a server."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher, BatchTimeLimit, ModelFailed, Overloaded, Retired
from service.settings import BatchingSettings, per_model_batching


class GatedModel:
    """Logits = text length; blocks on a gate so tests decide when a batch finishes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.gate.wait(5)
        return np.array([[len(t), -len(t)] for t in texts], dtype=np.float32)


async def _until(predicate) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


def test_requests_that_arrive_while_the_model_runs_share_the_next_batch() -> None:
    async def main() -> None:
        model = GatedModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)  # running, blocked on the gate
        rest = [asyncio.ensure_future(batcher.submit(["b" * i] * 2)) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        assert model.calls == [["a"], ["b", "b", "bb", "bb", "bbb", "bbb"]]
        assert [r[:, 0].tolist() for r in results] == [[1], [1, 1], [2, 2], [3, 3]]
        batcher.close()

    asyncio.run(main())


def test_a_full_queue_is_refused_at_once() -> None:
    async def main() -> None:
        model = GatedModel()
        batcher = Batcher("m", model, BatchingSettings(max_queue=3))
        running = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        queued = asyncio.ensure_future(batcher.submit(["b", "c"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(["d", "e"])
        assert info.value.reason == "queue_full"
        model.gate.set()
        await asyncio.gather(running, queued)
        batcher.close()

    asyncio.run(main())


def test_texts_that_waited_too_long_are_refused_before_the_model() -> None:
    async def main() -> None:
        model = GatedModel()
        batcher = Batcher("m", model, BatchingSettings(max_latency_ms=1))
        running = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        late = asyncio.ensure_future(batcher.submit(["b"]))
        await asyncio.sleep(0.02)  # > max_latency_ms in the queue
        model.gate.set()
        await running
        with pytest.raises(Overloaded) as info:
            await late
        assert info.value.reason == "queue_timeout"
        assert model.calls == [["a"]]
        batcher.close()

    asyncio.run(main())


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        def broken(texts: list[str]) -> np.ndarray:
            raise RuntimeError("boom")

        batcher = Batcher("m", broken, BatchingSettings())
        with pytest.raises(ModelFailed, match="boom") as failed:
            await batcher.submit(["a"])
        # Nothing passed alone: the model is failing, and no text is blamed.
        assert failed.value.text_index is None and isinstance(failed.value.__cause__, RuntimeError)
        batcher._run = lambda texts: np.zeros((len(texts), 2), dtype=np.float32)
        assert (await batcher.submit(["b"])).shape == (1, 2)  # the batcher goes on
        batcher.close()
        with pytest.raises(Retired):
            await batcher.submit(["c"])

    asyncio.run(main())


class PoisonedModel(GatedModel):
    """Raises on any batch holding the text "poison"; blocks on the gate like GatedModel."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        rows = super().__call__(texts)
        if "poison" in texts:
            raise ValueError("cannot take this text")
        return rows


def test_one_bad_text_fails_only_its_own_request_which_is_told_which_text() -> None:
    async def main() -> None:
        model = PoisonedModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=16))
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)  # the next three queue into one batch
        good = asyncio.ensure_future(batcher.submit(["bb", "ccc"]))
        bad = asyncio.ensure_future(batcher.submit(["dd", "poison", "e"]))
        other = asyncio.ensure_future(batcher.submit(["ffff"]))
        await asyncio.sleep(0.01)
        model.gate.set()
        assert (await first)[:, 0].tolist() == [1]
        assert (await good)[:, 0].tolist() == [2, 3]
        assert (await other)[:, 0].tolist() == [4]
        with pytest.raises(ModelFailed, match="text 1 of the request") as failed:
            await bad
        assert failed.value.text_index == 1
        # The shared batch failed once; then each request ran alone, then the bad one's texts.
        assert model.calls[1] == ["bb", "ccc", "dd", "poison", "e", "ffff"]
        assert ["dd", "poison", "e"] in model.calls[2:] and ["poison"] in model.calls[2:]
        batcher.close()

    asyncio.run(main())


def test_bucketed_batches_match_one_text_at_a_time(tmp_path) -> None:
    """Sorting by length and splitting into groups must not change any text's logits, and
    the batch says which texts were cut to max_length."""
    from fakes import make_tiny_model_dir

    from service.runtime import OnnxClassifier

    classifier = OnnxClassifier(make_tiny_model_dir(tmp_path / "m", max_length=16))
    texts = ["good", "a " * 30, "bad movie", "the plot was very good but not great", "fun"] * 3
    logits, truncated = classifier.score_batch(texts)
    one_by_one = np.concatenate([classifier.logits([t]) for t in texts])
    np.testing.assert_allclose(logits, one_by_one, atol=1e-5)
    assert truncated.tolist() == [t.startswith("a a") for t in texts]


def test_a_small_batch_of_unequal_texts_is_not_padded_to_its_longest(tmp_path) -> None:
    """Even two texts make two calls when padding them together would cost more than the
    slack allows; texts of equal length still share one call."""
    from fakes import make_tiny_model_dir

    from service.runtime import OnnxClassifier

    classifier = OnnxClassifier(make_tiny_model_dir(tmp_path / "m", max_length=64))
    run, calls = classifier._run, []
    classifier._run = lambda ids: calls.append([len(row) for row in ids]) or run(ids)
    classifier.score_batch(["good", "the plot was very good but not great at all"])
    assert len(calls) == 2
    calls.clear()
    classifier.score_batch(["good fun", "bad film"])
    assert len(calls) == 1 and len(calls[0]) == 2


def test_batches_are_bounded_by_padded_tokens_as_well_as_texts() -> None:
    async def main(budget: int) -> list[list[str]]:
        model = GatedModel()
        settings = BatchingSettings(max_batch_size=8, max_batch_tokens=budget)
        batcher = Batcher("m", model, settings)
        first = asyncio.ensure_future(batcher.submit(["a"], longest=5))
        await _until(lambda: len(model.calls) == 1)
        # Two short texts around a long one: padded to the long one, the three are 3 x 60.
        queued = [
            asyncio.ensure_future(batcher.submit([text], longest=n))
            for text, n in (("s1", 10), ("long", 60), ("s2", 10))
        ]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *queued)
        batcher.close()
        return model.calls

    assert asyncio.run(main(0)) == [["a"], ["s1", "long", "s2"]]  # no bound: one batch
    # 100 padded tokens: s1 + long would be 2 x 60; the long text runs without the others.
    assert asyncio.run(main(100)) == [["a"], ["s1"], ["long"], ["s2"]]
    assert asyncio.run(main(130)) == [["a"], ["s1", "long"], ["s2"]]


def _settle(limit: BatchTimeLimit, fixed_s: float, per_text_s: float, batches: int) -> list[int]:
    """Batch sizes when every batch is as large as the limit allows and takes a + b*n."""
    sizes = []
    for _ in range(batches):
        n = limit.limit
        sizes.append(n)
        limit.observe(n, fixed_s + per_text_s * n)
    return sizes


@pytest.mark.parametrize("first_batch", [1, 32])
def test_the_time_limit_settles_on_the_largest_batch_within_budget(first_batch: int) -> None:
    # 10 ms per call + 5 ms per text, budget 52 ms: 8 texts take 50 ms, 9 take 55.
    limit = BatchTimeLimit(0.052, most=32)
    assert limit.limit == 32  # nothing measured: only max_batch_size bounds
    limit.observe(first_batch, 0.010 + 0.005 * first_batch)
    sizes = _settle(limit, 0.010, 0.005, 60)
    assert sizes[-10:] == [8] * 10
    assert 0.010 + 0.005 * sizes[-1] <= 0.052


def test_the_time_limit_never_passes_max_batch_size_nor_goes_below_one() -> None:
    fast, slow = BatchTimeLimit(0.050, most=16), BatchTimeLimit(0.050, most=16)
    assert _settle(fast, 0.0, 0.0001, 20)[-1] == 16  # 500 texts would fit: 16 is the most
    assert _settle(slow, 0.0, 0.2, 20)[-1] == 1  # one text is over budget: it still runs
    unbounded = BatchTimeLimit(0.0, most=16)
    unbounded.observe(4, 10.0)
    assert unbounded.limit == 16


class ClockedModel:
    """Takes `fixed_s + per_text_s * n` seconds of a fake clock per batch of n texts."""

    def __init__(self, fixed_s: float, per_text_s: float) -> None:
        self.now = 0.0
        self.fixed_s, self.per_text_s = fixed_s, per_text_s
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.now += self.fixed_s + self.per_text_s * len(texts)
        return np.zeros((len(texts), 2), dtype=np.float32)


def test_max_batch_ms_bounds_batches_by_their_measured_model_time() -> None:
    async def main(max_batch_ms: float) -> list[int]:
        model = ClockedModel(fixed_s=0.004, per_text_s=0.006)  # 8 texts: 52 ms, 7: 46 ms
        settings = BatchingSettings(max_batch_size=32, max_batch_ms=max_batch_ms)
        batcher = Batcher("m", model, settings, clock=model.clock)
        for _ in range(8):  # a steady backlog: every batch is as full as allowed
            await asyncio.gather(*(batcher.submit([str(i)]) for i in range(64)))
        batcher.close()
        return model.calls

    assert set(asyncio.run(main(0))) == {32}  # unbounded: every batch of the backlog is full
    calls = asyncio.run(main(50))
    assert calls[0] == 32  # before anything is measured, max_batch_size alone bounds
    # 7 texts are the most that finish within 50 ms; the last round's 64th text runs alone.
    assert calls[-10:] == [7] * 9 + [1]
    assert sum(calls) == 8 * 64  # every text answered


def test_max_batch_ms_is_read_from_the_environment_and_checked() -> None:
    assert BatchingSettings.from_env({}).max_batch_ms == 0.0  # off unless set
    assert BatchingSettings.from_env({"SMALLCLS_MAX_BATCH_MS": "25"}).max_batch_ms == 25.0
    with pytest.raises(ValueError, match="SMALLCLS_MAX_BATCH_MS must be a number >= 0"):
        BatchingSettings.from_env({"SMALLCLS_MAX_BATCH_MS": "-1"})
    with pytest.raises(ValueError, match="max_batch_ms must be >= 0"):
        BatchingSettings(max_batch_ms=-5)
    per_model = per_model_batching(
        {"SMALLCLS_MODEL_BATCHING": '{"m": {"max_batch_ms": 30}}'}, BatchingSettings()
    )
    assert per_model["m"].max_batch_ms == 30


class LaneModel:
    """Each call blocks on its own gate, so a test holds several batches running at once."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[threading.Event] = []
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        gate = threading.Event()
        with self.lock:
            self.calls.append(list(texts))
            self.gates.append(gate)
        gate.wait(5)
        return np.array([[len(t), -len(t)] for t in texts], dtype=np.float32)


def test_with_two_lanes_a_request_does_not_wait_behind_a_running_batch() -> None:
    async def main() -> None:
        model = LaneModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=8, lanes=2))
        slow = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        fast = asyncio.ensure_future(batcher.submit(["bb"]))
        # The second lane takes it while the first batch still runs.
        await _until(lambda: len(model.calls) == 2)
        model.gates[1].set()
        assert (await fast)[:, 0].tolist() == [2]
        assert not slow.done()
        # Both lanes busy: what arrives now waits, and forms one batch for the first free lane.
        third = asyncio.ensure_future(batcher.submit(["c"]))
        await _until(lambda: len(model.calls) == 3)
        rest = [asyncio.ensure_future(batcher.submit(["d" * i])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert len(model.calls) == 3
        model.gates[0].set()
        await slow
        await _until(lambda: len(model.calls) == 4)
        assert model.calls[3] == ["d", "dd"]
        for gate in model.gates[2:]:
            gate.set()
        await asyncio.gather(third, *rest)
        batcher.close()

    asyncio.run(main())


def test_one_lane_runs_one_batch_at_a_time() -> None:
    async def main() -> None:
        model = LaneModel()
        batcher = Batcher("m", model, BatchingSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: len(model.calls) == 1)
        second = asyncio.ensure_future(batcher.submit(["b"]))
        await asyncio.sleep(0.02)
        assert len(model.calls) == 1
        model.gates[0].set()
        await first
        await _until(lambda: len(model.calls) == 2)
        model.gates[1].set()
        await second
        batcher.close()

    asyncio.run(main())


def test_lanes_are_read_from_the_environment_and_checked() -> None:
    assert BatchingSettings.from_env({"SMALLCLS_MODEL_LANES": "2"}).lanes == 2
    assert BatchingSettings.from_env({}).lanes == 1
    with pytest.raises(ValueError, match="lanes"):
        BatchingSettings(lanes=0)
