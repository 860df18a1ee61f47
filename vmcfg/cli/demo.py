"""vmcfg demo: the paper's model in thirty seconds, on built-in defaults.

Launches the bundled `soak` guest (a loop with one RDTSC and one OUT per
iteration) under the built-in `baseline` profile, shows its exit statistics,
applies a second built-in profile live, shows how the statistics change (a
chart of the exit rates before and after the apply), and stops the guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from ..vmx.exits import exits_json
from .report import emit_json, fail, out, styled


def _delta(a: list[dict], b: list[dict]) -> list[dict]:
    """The exits of `b` less those of `a` (both [{reason, name, count}])."""
    before = {e["reason"]: e["count"] for e in a}
    return exits_json({e["reason"]: e["count"] - before.get(e["reason"], 0) for e in b})


@click.command()
@click.option("--first", default="baseline", show_default=True, help="Profile to launch under.")
@click.option("--second", default="trap-all", show_default=True, help="Profile to apply live.")
@click.option("--guest", default="builtin:soak", show_default=True, help="Guest to run.")
@click.option("--seconds", default=1.0, show_default=True, help="How long to watch each phase.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def demo(first, second, guest, seconds, as_json):
    """Launch a guest, apply a second profile live, show the exit statistics change."""
    from ..live.channel import ChannelError, request
    from ..live.runtime import paths

    name = f"demo-{os.getpid()}"
    say = (lambda *a, **k: None) if as_json else out
    say(styled(f"1. launch {guest} under '{first}' as {name}", bold=True))
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", "launch", first, "--guest", guest,
                        "--name", name, "--detach", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(r.stderr.strip().removeprefix("vmcfg: ") or f"launch failed (status {r.returncode})")
    sock = paths(name).sock
    doc: dict = {"name": name, "guest": guest, "first": first, "second": second}
    try:
        doc["phase1"] = _phase(request, sock, seconds)
        _show(say, f"   in {seconds:g} s under '{first}'", doc["phase1"])
        say(styled(f"2. vmcfg apply {second} --to {name}", bold=True))
        spec = second
        res = request(sock, "apply", profile=os.path.abspath(spec) if os.path.exists(spec) else spec)
        doc["apply"] = {k: res[k] for k in ("instructions", "tsc", "latency_ms", "diff")}
        say(f"   {len(res['diff'])} change(s) took effect at instruction {res['instructions']:,} "
            f"in {res['latency_ms']:.2f} ms, between two guest instructions")
        doc["phase2"] = _phase(request, sock, seconds)
        _show(say, f"   in {seconds:g} s under '{second}'", doc["phase2"])
        _chart(say, doc["phase1"].pop("_rates"), doc["phase2"].pop("_rates"))
    except ChannelError as e:
        fail(e.message)
    finally:
        # the guest is stopped first, whatever ended the demo (a reader that closed our
        # stdout included: the messages below may then fail, the stop must not)
        stop = subprocess.run([sys.executable, "-m", "vmcfg.cli", "stop", name, "--json"],
                              capture_output=True, text=True)
        say(styled(f"3. vmcfg stop {name}", bold=True))
        try:
            summ = json.loads(stop.stdout).get("summary", {})
        except ValueError:
            summ = {}
        doc["final"] = {"status": summ.get("status"), "instructions": summ.get("instructions"),
                        "applies": len(summ.get("history", [])) - 1}
        say(f"   {summ.get('status')} after {summ.get('instructions') or 0:,} instructions")
    if as_json:
        emit_json(doc)


SAMPLES = 12     # exit-rate samples per phase (the chart's width per phase)


def _phase(request, sock: str, seconds: float) -> dict:
    """Instructions and exits by reason during `seconds` of the guest's life,
    and the exit rates of SAMPLES equal slices of it (for the chart)."""
    from ..trace.rates import RateHistory
    hist = RateHistory(length=SAMPLES)
    a = request(sock, "stats")
    hist.add(time.monotonic(), a["exits"])
    t_end = time.monotonic() + seconds
    for i in range(SAMPLES):
        time.sleep(max(0.0, t_end - seconds * (SAMPLES - 1 - i) / SAMPLES - time.monotonic()))
        b = request(sock, "stats")
        hist.add(time.monotonic(), b["exits"])
    return {"instructions": b["instructions"] - a["instructions"],
            "exits": _delta(a["exits"], b["exits"]),
            "rates": {k: [round(v, 1) for v in s] for k, s in sorted(hist.series.items())},
            "_rates": hist}


def _chart(say, before, after) -> None:
    from ..trace.rates import before_after_lines
    say(click.style("   exit rates before │ after the apply", bold=True))
    for ln in before_after_lines(before, after, name_width=20):
        say(f"   {ln}")


def _show(say, title: str, phase: dict) -> None:
    total = sum(e["count"] for e in phase["exits"])
    say(f"{title}: {phase['instructions']:,} instructions, {total:,} exits")
    for e in sorted(phase["exits"], key=lambda e: -e["count"]):
        say(f"     {e['name']:20s} {e['count']:10,d}")
