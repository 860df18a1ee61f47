"""`vmcfg trace export --format perfetto`: Chrome Trace Event JSON, streamed.

The output is the JSON Object Format of the Trace Event Format (the format
chrome://tracing and ui.perfetto.dev open): {"traceEvents": [...],
"displayTimeUnit": "ns", "otherData": {...}}.  One process ("vmcfg guest"),
one thread track per exit reason (tid = reason + 1, named after the reason,
ordered by reason number) and one counter track per reason for the exit rate.

clock "host" (traces with host_at_ns, the default): every exit is a complete
  event ("ph": "X") at the moment its handling began (ts, µs since the run
  began), lasting its handling time (dur = host_ns); the gaps between slices
  are the guest running.  Exits never overlap, so each track nests cleanly.
clock "tsc": every exit is an instant event ("ph": "i") at the guest's
  virtual TSC, read as nanoseconds (1 tick per instruction, 1000 per exit);
  its handling time is in args.  Traces without host times use this clock.

Counters ("ph": "C", name "exit rate"): at the end of every window of
`window_ns` that had exits, the rate of each reason in exits per second over
that window (weighted by `sample` in sampled traces), and a 0 at the end of
the first empty window after it.  Events are written in order of timestamp
(metadata events carry the timestamp of the event that introduced them), and
nothing is kept per exit: memory does not grow with the trace.
"""

from __future__ import annotations

import json
from typing import IO, Iterable

from ..vmx.exits import exit_name

PID = 1
DEFAULT_WINDOW_NS = 10_000_000       # 10 ms
CLOCKS = ("host", "tsc")


class ExportError(Exception):
    """A trace that cannot be exported as asked (message names the record's seq)."""


def _us(ns: int) -> str:
    """Nanoseconds as a JSON number of microseconds (exact to the ns)."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def export_perfetto(records: Iterable[dict], out: IO[str], *, clock: str | None = None,
                    window_ns: int = DEFAULT_WINDOW_NS, source: str = "",
                    totals: "callable | None" = None) -> dict:
    """Write the Trace Event JSON of `records` to `out`; returns what was written
    ({"events", "exits", "reasons", "clock"})."""
    if clock is not None and clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}")
    if window_ns <= 0:
        raise ValueError("window_ns must be positive")
    w = out.write
    w('{"traceEvents":[\n')
    n_events = 0
    first = True

    def emit(s: str) -> None:
        nonlocal first, n_events
        if first:
            first = False
            w(s)
        else:
            w(",\n")
            w(s)
        n_events += 1

    seen: dict[int, str] = {}              # reason -> name, in order of first appearance
    window_counts: dict[int, int] = {}     # reason -> weighted exits in the current window
    window_end = None
    idle_zero_sent = True
    last_ts = 0
    exits = 0
    rate_scale = 1e9 / window_ns

    def flush_window(at: int) -> None:
        nonlocal idle_zero_sent
        if window_counts:
            args = ",".join(f'"{seen[r]}":{window_counts.get(r, 0) * rate_scale:.6g}'
                            for r in seen)
            emit(f'{{"name":"exit rate","ph":"C","pid":{PID},"tid":0,"ts":{_us(at)},'
                 f'"args":{{{args}}}}}')
            window_counts.clear()
            idle_zero_sent = False
        elif not idle_zero_sent:
            args = ",".join(f'"{seen[r]}":0' for r in seen)
            emit(f'{{"name":"exit rate","ph":"C","pid":{PID},"tid":0,"ts":{_us(at)},'
                 f'"args":{{{args}}}}}')
            idle_zero_sent = True

    for rec in records:
        if clock is None:
            clock = "host" if rec.get("host_at_ns") is not None else "tsc"
        if clock == "host":
            ts = rec.get("host_at_ns")
            if ts is None:
                raise ExportError(f"exit seq {rec['seq']} has no host_at_ns although the "
                                  "trace's first exit has one (use --clock tsc)")
            dur = rec.get("host_ns") or 0
        else:
            ts = rec.get("tsc")
            if ts is None:
                raise ExportError(f"exit seq {rec['seq']} has no tsc")
            dur = None
        if ts < last_ts:           # a guest write to IA32_TSC moved the TSC back
            ts = last_ts
        if n_events == 0:
            emit(f'{{"name":"process_name","ph":"M","pid":{PID},"tid":0,"ts":{_us(ts)},'
                 f'"args":{{"name":"vmcfg guest{(" " + json.dumps(source)[1:-1]) if source else ""}"}}}}')
            window_end = (ts // window_ns + 1) * window_ns
        while ts >= window_end:
            flush_window(window_end)
            if not window_counts and idle_zero_sent and ts >= window_end + window_ns:
                window_end = (ts // window_ns + 1) * window_ns    # skip empty windows at once
            else:
                window_end += window_ns
        last_ts = ts
        reason = rec["reason"]
        name = seen.get(reason)
        tid = reason + 1
        if name is None:
            name = seen[reason] = exit_name(reason)
            emit(f'{{"name":"thread_name","ph":"M","pid":{PID},"tid":{tid},"ts":{_us(ts)},'
                 f'"args":{{"name":"{name}"}}}}')
            emit(f'{{"name":"thread_sort_index","ph":"M","pid":{PID},"tid":{tid},'
                 f'"ts":{_us(ts)},"args":{{"sort_index":{reason}}}}}')
        weight = rec.get("sample", 1)
        window_counts[reason] = window_counts.get(reason, 0) + weight
        exits += weight
        args = [f'"seq":{rec["seq"]}']
        rip = rec.get("rip")
        if rip is not None:
            args.append(f'"rip":"{rip:#x}"')
        dis = rec.get("disassembly")
        if dis:
            args.append(f'"disassembly":{json.dumps(dis)}')
        q = rec.get("qualification")
        if q:
            args.append(f'"qualification":"{q:#x}"')
        for k in ("instructions", "tsc"):
            v = rec.get(k)
            if v is not None:
                args.append(f'"{k}":{v}')
        if weight != 1:
            args.append(f'"sample":{weight}')
        if dur is None:
            hn = rec.get("host_ns")
            if hn is not None:
                args.append(f'"host_ns":{hn}')
            emit(f'{{"name":"{name}","cat":"vmexit","ph":"i","s":"t","pid":{PID},"tid":{tid},'
                 f'"ts":{_us(ts)},"args":{{{",".join(args)}}}}}')
        else:
            emit(f'{{"name":"{name}","cat":"vmexit","ph":"X","pid":{PID},"tid":{tid},'
                 f'"ts":{_us(ts)},"dur":{_us(dur)},"args":{{{",".join(args)}}}}}')
            last_ts = ts + dur
    if window_end is not None:
        end = max(window_end, last_ts)
        flush_window(end)              # the last (partial) window, then back to 0
        flush_window(end + window_ns)
    tot = totals() if totals is not None else None
    other = {"generator": "vmcfg trace export", "source": source, "clock": clock or "host",
             "exits": tot and sum(e["count"] for e in tot["exits"]) or exits,
             "rate_window_ns": window_ns}
    w('\n],"displayTimeUnit":"ns","otherData":')
    w(json.dumps(other))
    w("}\n")
    return {"events": n_events, "exits": other["exits"], "reasons": len(seen),
            "clock": other["clock"]}
