"""The per-model batcher: merging, order, overload answers and failures, without a server."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher, Overloaded, Retired
from service.settings import BatchingSettings


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
        calls = []

        def flaky(texts: list[str]) -> np.ndarray:
            calls.append(texts)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return np.zeros((len(texts), 2), dtype=np.float32)

        batcher = Batcher("m", flaky, BatchingSettings())
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(["a"])
        assert (await batcher.submit(["b"])).shape == (1, 2)
        batcher.close()
        with pytest.raises(Retired):
            await batcher.submit(["c"])

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
