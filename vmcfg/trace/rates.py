"""Exit rates over time from cumulative counters, and small text charts of them.

`vmcfg stats NAME -f` and `vmcfg demo` poll a running guest's exit counters
(name -> count since launch); RateHistory turns successive snapshots into
per-reason rates (exits per second of wall-clock time) and keeps the last
`length` of them, so a chart's memory is bounded however long it runs.
"""

from __future__ import annotations

import time
from collections import deque

BARS = "▁▂▃▄▅▆▇█"


class RateHistory:
    def __init__(self, length: int = 40):
        self.length = length
        self.series: dict[str, deque] = {}
        self.total: deque = deque(maxlen=length)
        self.samples = 0
        self._last: tuple[float, dict[str, int]] | None = None

    def add(self, t: float, counts: dict[str, int] | list[dict]) -> dict[str, float] | None:
        """Feed the counters read at time t (seconds): {NAME: count} or a report's exits
        list [{reason, name, count}]; returns the rates since the previous call (None on
        the first call, which only sets the baseline)."""
        if isinstance(counts, list):
            counts = {e["name"]: e["count"] for e in counts}
        last = self._last
        self._last = (t, dict(counts))
        if last is None:
            return None
        dt = t - last[0]
        if dt <= 0:
            return None
        rates = {}
        for k in set(counts) | set(last[1]):
            d = counts.get(k, 0) - last[1].get(k, 0)
            rates[k] = max(d, 0) / dt           # a counter never goes back; clamp if it did
        for k, v in rates.items():
            s = self.series.get(k)
            if s is None:
                s = self.series[k] = deque([0.0] * len(self.total), maxlen=self.length)
            s.append(v)
        self.total.append(sum(rates.values()))
        self.samples += 1
        return rates

    def current(self) -> dict[str, float]:
        return {k: s[-1] for k, s in self.series.items() if s}

    def reasons(self) -> list[str]:
        """Reasons by current rate, then by name."""
        cur = self.current()
        return sorted(self.series, key=lambda k: (-cur.get(k, 0.0), k))


def sparkline(values, top: float | None = None) -> str:
    """One character per value, ▁ to █ scaled to `top` (default: the largest
    value); an exact 0 is a space, so 'no exits' and 'a few' look different."""
    vals = list(values)
    hi = top if top is not None else max(vals, default=0.0)
    out = []
    for v in vals:
        if v <= 0 or hi <= 0:
            out.append(" ")
        else:
            out.append(BARS[min(len(BARS) - 1, int(v / hi * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def fmt_rate(r: float) -> str:
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f}k/s"
    return f"{r:.0f}/s"


def chart_lines(h: RateHistory, *, width: int | None = None, shared_scale: bool = False,
                name_width: int = 24) -> list[str]:
    """The chart as text lines: a total line, then one line per reason
    (sparkline of its last rates, its current rate, its peak).  Each line is
    scaled to its own peak unless shared_scale."""
    n = width or h.length
    top = max((max(s) for s in h.series.values() if s), default=0.0) if shared_scale else None
    lines = [f"{'all exits':{name_width}s} {sparkline(list(h.total)[-n:], top):{n}s} "
             f"{fmt_rate(h.total[-1] if h.total else 0):>9s}  peak "
             f"{fmt_rate(max(h.total, default=0)):>9s}"]
    for k in h.reasons():
        s = list(h.series[k])[-n:]
        lines.append(f"{k:{name_width}s} {sparkline(s, top):{n}s} {fmt_rate(s[-1] if s else 0):>9s}"
                     f"  peak {fmt_rate(max(s, default=0)):>9s}")
    return lines


def plain_line(rates: dict[str, float], when: float | None = None) -> str:
    """One line per sample for pipes: time, total rate, then reason=rate by rate."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when if when is not None else time.time()))
    total = sum(rates.values())
    parts = [f"{k}={v:.0f}/s" for k, v in sorted(rates.items(), key=lambda kv: (-kv[1], kv[0]))]
    return " ".join([stamp, f"total={total:.0f}/s", *parts])


def before_after_lines(before: RateHistory, after: RateHistory, *,
                       name_width: int = 22) -> list[str]:
    """Two phases side by side, per reason: sparkline before │ sparkline after
    (one scale per reason across both, so a change shows), mean rates before -> after."""
    nb, na = len(before.total), len(after.total)
    keys = sorted(set(before.series) | set(after.series),
                  key=lambda k: (-max(_mean(after.series.get(k, ())),
                                      _mean(before.series.get(k, ()))), k))
    lines = [f"{'':{name_width}s} {'before':<{nb}s} {'after':<{na}s} "
             f"{'mean before':>11s} -> after"]
    for k in keys:
        b = list(before.series.get(k, ())) or [0.0] * nb
        a = list(after.series.get(k, ())) or [0.0] * na
        top = max(b + a, default=0.0)
        lines.append(f"{k:{name_width}s} {sparkline(b, top):{nb}s}│{sparkline(a, top):{na}s} "
                     f"{fmt_rate(_mean(b)):>11s} -> {fmt_rate(_mean(a))}")
    return lines


def _mean(vals) -> float:
    vals = list(vals)
    return sum(vals) / len(vals) if vals else 0.0
