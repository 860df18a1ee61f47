"""Bounded-memory statistics over millions of values: quantiles and top keys.

LogHistogram  quantiles (median, p99) of non-negative integers (host ns) with
              a guaranteed relative error: a value v >= 1 goes to bucket
              i = ceil(log_g v) with g = (1 + a) / (1 - a); the bucket covers
              (g^(i-1), g^i] and reports 2 g^i / (g + 1), which is within a
              (relative) of every value in it.  With a = 1 % a bucket spans 2 %,
              so values from 1 ns to 1 s need at most ~1,040 buckets (to a day
              ~1,600), however many values are added.  The rank is exact: the reported quantile is
              within a of the true value at that rank (nearest-rank definition,
              index floor(q * (n - 1)) of the sorted values).
TopCounter    the most frequent keys (guest RIPs) in at most `capacity` slots
              (Space-Saving, Metwally et al. 2005): exact while there are no more
              distinct keys than slots; beyond that every key seen more than
              n / capacity times is kept, and a kept key's count is over by at
              most its reported `error`.
"""

from __future__ import annotations

import math
from typing import Any, Hashable

DEFAULT_RELATIVE_ERROR = 0.01


class LogHistogram:
    def __init__(self, relative_error: float = DEFAULT_RELATIVE_ERROR):
        if not 0 < relative_error < 1:
            raise ValueError("relative_error must be between 0 and 1")
        self.relative_error = relative_error
        self.gamma = (1 + relative_error) / (1 - relative_error)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, value: int, weight: int = 1) -> None:
        self.count += weight
        self.total += value * weight
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value
        if value <= 0:
            self.zeros += weight
            return
        i = math.ceil(math.log(value) * self._inv_log_gamma)
        b = self.buckets
        b[i] = b.get(i, 0) + weight

    def quantile(self, q: float) -> float | None:
        """The value at rank floor(q * (count - 1)), within the relative error (None: empty)."""
        if not self.count:
            return None
        rank = int(q * (self.count - 1))
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                v = 2 * self.gamma ** i / (self.gamma + 1)
                return float(min(max(v, self.min), self.max))
        return float(self.max)

    def __len__(self) -> int:
        return len(self.buckets)


class TopCounter:
    def __init__(self, capacity: int = 64):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.counts: dict[Hashable, int] = {}
        self.errors: dict[Hashable, int] = {}
        self.info: dict[Hashable, Any] = {}
        self.n = 0

    def add(self, key: Hashable, weight: int = 1, info: Any = None) -> None:
        self.n += weight
        c = self.counts
        if key in c:
            c[key] += weight
            return
        if len(c) < self.capacity:
            c[key] = weight
            self.errors[key] = 0
        else:
            victim = min(c, key=c.__getitem__)
            floor = c.pop(victim)
            del self.errors[victim]
            self.info.pop(victim, None)
            c[key] = floor + weight
            self.errors[key] = floor
        if info is not None:
            self.info[key] = info

    def top(self, k: int) -> list[tuple[Hashable, int, int]]:
        """Up to k (key, count, error) with the highest counts (ties: smaller key first)."""
        items = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [(key, n, self.errors[key]) for key, n in items]

    @property
    def exact(self) -> bool:
        return not any(self.errors.values())
