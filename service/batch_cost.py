"""What one more queued request costs the model, from every recent batch.

A batch of n requests takes about `c * (k + n)` seconds: `k` is the call's fixed cost counted
in requests (a property of the model and the CPU), `c` the seconds per request, which
changes with how much of a core the model gets. The door prices the work ahead of a new
request at `c` (service/admission.py): queued requests join one batch, so the fixed cost is
paid once whatever the queue, and a price that held it (a batch's seconds over its size)
made a short queue of small batches look over target and kept the door refusing after an
overload. Under overload the batches are small and share the cores with the refusals, so a
price taken from the last large batch, measured when the model had a core to itself, was a
stale sample that let the door keep about twice the intended work queued until the next
large batch came.

So `c` follows every batch (a moving average of `seconds / (n + k)` over the last twenty or
so), and `k` is learnt slowly from pairs of consecutive batches of different sizes: two
batches in a row share the cores alike, so their ratio of times, `(n1 + k) / (n2 + k)`,
tells `k` whatever `c` was. A least-squares line over all recent batches could not: one
large batch from a calm moment outweighs a second of small ones from the overload (its
size is far from theirs) and tilted the line for as long. `k` is at most the batch's own
size when it is applied (a fixed cost larger than a batch's per-request work would price a
queue at less than half its seconds per request: a noisy pair must not make it nearly free).

Written here rather than taken from a library: a handful of running sums updated on every
batch in the worker's event loop.
"""

from __future__ import annotations

import math


class BatchCost:
    def __init__(self, memory: int = 20, fixed_memory: int = 500) -> None:
        self._follow = 1.0 / memory  # under overload ~100 batches a second: 0.2 s
        self._keep_pairs = 1.0 - 1.0 / fixed_memory
        self._gg = self._g_rest = 0.0  # weighted sums over consecutive pairs that fit k
        self._last: tuple[int, float] | None = None
        self.fixed_requests = 0.0  # k; 0 until two batches of different sizes were seen
        self.per_request = 0.0  # c, seconds; 0 until a batch was seen

    def observe(self, requests: int, seconds: float) -> None:
        """A batch of `requests` took `seconds` of model time."""
        if requests <= 0 or seconds <= 0:
            return
        self._learn_fixed_cost(requests, seconds)
        price = seconds / (requests + min(self.fixed_requests, requests))
        if not self.per_request:
            self.per_request = price
        else:
            self.per_request += self._follow * (price - self.per_request)

    def _learn_fixed_cost(self, n: int, t: float) -> None:
        last, self._last = self._last, (n, t)
        if last is None or last[0] == n:
            return  # equal sizes say nothing of k, only of noise
        n0, t0 = last
        # The pair's slope over its mean time, g, is 1 / (mean size + k) whatever c was;
        # k is fitted to g * (size + k) = 1 by least squares. A flat pair (g = 0: the fixed
        # cost is all) adds nothing; with only such pairs k is unbounded.
        g = (t - t0) / ((n - n0) * (t + t0) / 2)
        keep = self._keep_pairs
        self._gg = keep * self._gg + g * g
        self._g_rest = keep * self._g_rest + g * (1.0 - g * (n + n0) / 2)
        self.fixed_requests = max(0.0, self._g_rest / self._gg) if self._gg else math.inf
