"""The price of one more queued request, fitted from batches of known cost."""

from __future__ import annotations

import itertools

import pytest

from service.batch_cost import BatchCost

FIXED_S, PER_TEXT_S = 0.0015, 0.0045  # MiniLM-L6 int8 on one core of a 2-core EPYC, about


def batches(cost: BatchCost, sizes, fixed_s: float, per_text_s: float) -> None:
    for n in sizes:
        cost.observe(n, fixed_s + per_text_s * n)


def test_the_price_is_what_one_more_request_adds_not_a_share_of_the_fixed_cost() -> None:
    cost = BatchCost()
    batches(cost, itertools.islice(itertools.cycle([1, 2, 3, 4]), 200), FIXED_S, PER_TEXT_S)
    assert cost.per_request == pytest.approx(PER_TEXT_S, rel=0.01)


def test_the_price_follows_small_batches_that_got_dearer() -> None:
    """Full batches with a core to themselves, then small ones while the cores are shared
    (under overload the refusals take CPU too): within a hundred batches, about a second
    under overload, the price is that of the small ones."""
    cost = BatchCost()
    batches(cost, [16] * 100, FIXED_S, PER_TEXT_S)
    batches(cost, itertools.islice(itertools.cycle([1, 2, 3]), 100), FIXED_S, 2 * PER_TEXT_S)
    assert cost.per_request == pytest.approx(2 * PER_TEXT_S, rel=0.1)


def test_batches_of_one_size_keep_the_share_and_follow_their_seconds() -> None:
    cost = BatchCost()
    batches(cost, itertools.islice(itertools.cycle([1, 2, 3, 4]), 200), FIXED_S, PER_TEXT_S)
    batches(cost, [2] * 200, 2 * FIXED_S, 2 * PER_TEXT_S)  # the cores shared: all twice as long
    assert cost.per_request == pytest.approx(2 * PER_TEXT_S, rel=0.05)


def test_the_price_stays_within_half_and_all_of_a_batchs_seconds_per_request() -> None:
    dominated = BatchCost()  # a large fixed cost: the slope is small
    batches(dominated, itertools.islice(itertools.cycle([1, 2, 3]), 200), 0.008, 0.0001)
    # Each batch is priced at half its seconds per request, not the slope's 0.1 ms.
    half = sum((0.008 + 0.0001 * n) / (2 * n) for n in (1, 2, 3)) / 3
    assert dominated.per_request == pytest.approx(half, rel=0.05)
    falling = BatchCost()  # larger batches took less in all (noise): no negative fixed cost
    for n in itertools.islice(itertools.cycle([1, 2, 3]), 200):
        falling.observe(n, 0.004 * n - 0.002 * (n - 1))
    assert 0 < falling.per_request <= 0.004


def test_nothing_is_priced_before_a_batch_and_empty_batches_are_ignored() -> None:
    cost = BatchCost()
    cost.observe(0, 0.01)
    cost.observe(3, 0.0)
    assert cost.per_request == 0.0
    cost.observe(2, 0.01)  # the first batch: its seconds per request
    assert cost.per_request == pytest.approx(0.005)
