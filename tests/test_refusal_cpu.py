"""bench/reliability.py's CPU per refusal under overload, on a synthetic trace with a known
answer: both estimates, and what each needs to be given."""

from __future__ import annotations

from bench.reliability import Request, refusal_cpu

T0, DROP, END = 1000.0, 1060.0, 1090.0


def requests(first: int, last: int, ok: int, shed: int) -> list[Request]:
    """`ok` answers and `shed` refusals spread over each second in [first, last)."""
    out = []
    for second in range(first, last):
        n = ok + shed
        for k in range(n):
            outcome = "ok" if k < ok else "shed"
            out.append(Request(T0 + second + k / n, 5.0, 200 if k < ok else 503, outcome, ""))
    return out


def samples(loop_after_drop: float) -> list[tuple[float, float, float]]:
    """One sample a second: the tree uses 1.8 cores and the event loops 0.6 under
    overload; after the drop the loops use `loop_after_drop` cores."""
    out, tree, loop = [], 0.0, 0.0
    for second in range(int(END - T0) + 1):
        t = T0 + second
        out.append((t, tree, loop))
        tree += 1.8 if t < DROP else 0.5
        loop += 0.6 if t < DROP else loop_after_drop
    return out


# The overload: 100 answers and 400 refusals a second; after the drop, refusals for 3 s,
# then 50 answers a second.
OVERLOAD = requests(0, 60, ok=100, shed=400)
SETTLING = requests(60, 63, ok=40, shed=20)
CALM = requests(63, 90, ok=50, shed=0)


def test_both_estimates_of_the_cpu_per_refusal() -> None:
    got = refusal_cpu(samples(0.1), OVERLOAD + SETTLING + CALM, T0, DROP, END, 0.010)
    assert got is not None
    # The middle of the overload (1001-1059 s): 5,800 answers, 23,200 refusals.
    assert (got["answers"], got["refusals"], got["window_s"]) == (5800, 23200, 58)
    # Whole tree: (1.8 x 58 - 5800 x 10 ms) / 23200 = 2.0 ms.
    assert abs(got["cpu_per_refusal_ms"] - 2.0) < 1e-9
    # An answer's loop CPU after the drop: 0.1 core / 50 answers a second = 2 ms; so a
    # refusal's: (0.6 x 58 - 5800 x 2 ms) / 23200 = 1.0 ms.
    assert abs(got["loop_cpu_per_answer_ms"] - 2.0) < 1e-9
    assert abs(got["loop_cpu_per_refusal_ms"] - 1.0) < 1e-9
    # The calm span starts a second after the last refusal and ends a second before the end.
    assert got["calm_window_s"] == 25
    # The bound from above: the loops' CPU over every request, 0.6 x 58 / 29000 = 1.2 ms.
    assert abs(got["loop_cpu_per_request_ms"] - 1.2) < 1e-9


def test_the_loop_estimate_needs_a_calm_span_after_the_drop() -> None:
    still_refusing = requests(60, 90, ok=40, shed=20)
    got = refusal_cpu(samples(0.1), OVERLOAD + still_refusing, T0, DROP, END, 0.010)
    assert got is not None and abs(got["cpu_per_refusal_ms"] - 2.0) < 1e-9
    assert got["loop_cpu_per_refusal_ms"] is None and got["calm_window_s"] is None
    assert abs(got["loop_cpu_per_request_ms"] - 1.2) < 1e-9


def test_the_tree_estimate_needs_the_cost_of_an_answer_at_saturation() -> None:
    got = refusal_cpu(samples(0.1), OVERLOAD + SETTLING + CALM, T0, DROP, END, None)
    assert got is not None and got["cpu_per_refusal_ms"] is None
    assert abs(got["loop_cpu_per_refusal_ms"] - 1.0) < 1e-9


def test_no_refusal_no_estimate() -> None:
    answers_only = requests(0, 90, ok=100, shed=0)
    assert refusal_cpu(samples(0.1), answers_only, T0, DROP, END, 0.010) is None
    assert refusal_cpu(samples(0.1)[:2], OVERLOAD, T0, DROP, END, 0.010) is None
