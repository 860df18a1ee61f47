"""`vmcfg trace summary`: where a run's VM exits and their host time went.

Per exit reason: the number of exits, their share of the VMM's handling time,
median / p99 / max handling time and the guest RIPs that exit most, with the
exiting instruction's disassembly.  One pass over the trace in bounded memory
(vmcfg.trace.sketch): quantiles within `relative_error`, top RIPs exact unless
a reason has more distinct RIPs than `rip_slots`.
"""

from __future__ import annotations

from typing import Iterable

from ..vmx.exits import exit_name
from .sketch import DEFAULT_RELATIVE_ERROR, LogHistogram, TopCounter

RIP_SLOTS = 64


class _Reason:
    __slots__ = ("count", "host_ns", "hist", "rips", "records")

    def __init__(self, rel_err: float, slots: int):
        self.count = 0
        self.host_ns = 0
        self.hist = LogHistogram(rel_err)
        self.rips = TopCounter(slots)
        self.records = 0


def summarize(records: Iterable[dict], *, totals: "callable | None" = None, top: int = 3,
              relative_error: float = DEFAULT_RELATIVE_ERROR,
              rip_slots: int = RIP_SLOTS) -> dict:
    """The summary document of an iterable of trace records (see module doc).

    `totals` is called after the iteration and may return the totals line of a
    sampled trace ({"sample": N, "exits": [...]}), whose exact counts and host
    times then replace the estimates.
    """
    per: dict[int, _Reason] = {}
    timed = untimed = 0
    last = None
    first_at = None
    sample = 1
    for rec in records:
        r = rec["reason"]
        st = per.get(r)
        if st is None:
            st = per[r] = _Reason(relative_error, rip_slots)
        w = rec.get("sample", 1)
        if w > sample:
            sample = w
        st.count += w
        st.records += 1
        ns = rec.get("host_ns")
        if ns is not None:
            timed += 1
            st.host_ns += ns * w
            st.hist.add(ns)
        else:
            untimed += 1
        rip = rec.get("rip")
        if rip is not None:
            st.rips.add(rip, w, rec.get("disassembly") or None)
        if first_at is None:
            first_at = rec.get("host_at_ns")
        last = rec
    tot = totals() if totals is not None else None
    exact = sample == 1
    if tot:
        exact = True
        sample = tot.get("sample", sample)
        for e in tot["exits"]:
            st = per.get(e["reason"])
            if st is None:
                st = per[e["reason"]] = _Reason(relative_error, rip_slots)
            st.count = e["count"]
            if e.get("host_ns") is not None:
                st.host_ns = e["host_ns"]
    has_time = timed > 0 and untimed == 0
    total_ns = sum(s.host_ns for s in per.values()) if has_time else None
    rows = []
    for r, st in per.items():
        row = {"reason": r, "name": exit_name(r), "count": st.count}
        if has_time:
            row.update(host_ns=st.host_ns,
                       share=round(st.host_ns / total_ns, 6) if total_ns else 0.0,
                       median_ns=_q(st.hist, 0.5), p99_ns=_q(st.hist, 0.99),
                       max_ns=st.hist.max)
        row["top_rips"] = [{"rip": rip, "count": n, **({"overcount_at_most": e} if e else {}),
                            "disassembly": st.rips.info.get(rip, "")}
                           for rip, n, e in st.rips.top(top)]
        rows.append(row)
    rows.sort(key=lambda x: (-(x.get("host_ns") or 0), -x["count"], x["reason"]))
    doc = {
        "exits": sum(s.count for s in per.values()),
        "records": sum(s.records for s in per.values()),
        "sample": sample,
        "counts_exact": exact,
        "host_ns": total_ns,
        "quantile_relative_error": relative_error if has_time else None,
        "instructions": last.get("instructions") if last else None,
        "tsc": last.get("tsc") if last else None,
        "reasons": rows,
    }
    if has_time and last is not None and first_at is not None and \
            last.get("host_at_ns") is not None:
        doc["host_span_ns"] = last["host_at_ns"] + last["host_ns"] - first_at
    return doc


def _q(h: LogHistogram, q: float) -> int | None:
    v = h.quantile(q)
    return None if v is None else int(round(v))


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def render_text(doc: dict, source: str = "") -> str:
    """The summary as aligned plain text (what `vmcfg trace summary` prints)."""
    out = []
    timed = doc["host_ns"] is not None
    head = f"{source}: " if source else ""
    head += f"{doc['exits']:,} exits"
    if doc["sample"] > 1:
        head += f" (trace sampled 1 in {doc['sample']}; {doc['records']:,} records" + \
            ("; counts and host time exact from the totals line)" if doc["counts_exact"]
             else "; counts estimated)")
    if doc.get("instructions") is not None:
        head += f", the last at guest instruction {doc['instructions']:,}"
    if timed:
        head += f", {fmt_ns(doc['host_ns'])} of host time handling them"
    out.append(head)
    if not doc["records"]:
        return "\n".join(out) + "\n"
    if not timed:
        out.append("(this trace has no host times: it predates host_ns; counts and RIPs only)")
    if timed:
        out.append(f"{'REASON':24s} {'COUNT':>11s} {'HOST TIME':>10s} {'SHARE':>6s} "
                   f"{'MEDIAN':>9s} {'P99':>9s} {'MAX':>9s}")
    else:
        out.append(f"{'REASON':24s} {'COUNT':>11s}")
    for r in doc["reasons"]:
        if timed:
            out.append(f"{r['name']:24s} {r['count']:11,d} {fmt_ns(r['host_ns']):>10s} "
                       f"{100 * r['share']:5.1f}% {fmt_ns(r['median_ns']):>9s} "
                       f"{fmt_ns(r['p99_ns']):>9s} {fmt_ns(r['max_ns']):>9s}")
        else:
            out.append(f"{r['name']:24s} {r['count']:11,d}")
        for t in r["top_rips"]:
            n = ("~" if doc["sample"] > 1 else "") + f"{t['count']:,}" + \
                ("+" if t.get("overcount_at_most") else "")
            out.append(f"    rip {t['rip']:#018x} {n:>11s}  {t['disassembly'] or '(no instruction)'}")
    notes = []
    if timed:
        notes.append(f"median/p99 within {100 * doc['quantile_relative_error']:g} %")
    if any(t.get("overcount_at_most") for r in doc["reasons"] for t in r["top_rips"]):
        notes.append("'+': a RIP count that may be over (more distinct RIPs than slots)")
    if doc["sample"] > 1:
        notes.append("'~': a RIP count estimated from the sampled records")
    if notes:
        out.append(f"({'; '.join(notes)})")
    return "\n".join(out) + "\n"
