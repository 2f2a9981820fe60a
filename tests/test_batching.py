"""The per-model batcher: merging, order, overload answers and failures, without a server."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher, ModelFailed, Overloaded, Retired
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
