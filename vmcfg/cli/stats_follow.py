"""`vmcfg stats NAME -f`: per-reason exit rates over time.

On a terminal a small live chart (rich; one sparkline per reason), in a pipe
one plain line per sample, with --json one JSON line per sample (the stats
document plus "rates").  The rates and the chart's text come from
vmcfg/trace/rates.py; this module only polls and renders.
"""

from __future__ import annotations

import json
import sys
import time

from .common import EXIT_USAGE


def follow(name: str, call, refused, *, as_json: bool, interval: float) -> None:
    """Poll guest NAME's stats every `interval` seconds until it ends (or Ctrl-C)."""
    from ..live.channel import ChannelError
    from ..trace.rates import RateHistory, chart_lines, plain_line

    hist = RateHistory(length=40)
    tty = sys.stdout.isatty() and not as_json
    live = None
    if tty:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
        console = Console()
        live = Live(Text(f"{name}: waiting for the first sample..."), console=console,
                    auto_refresh=False, transient=False)
        live.start()
    first = True
    try:
        while True:
            try:
                s = call(name, "stats")
            except ChannelError as e:
                if not first and e.status == EXIT_USAGE:     # the guest ended
                    if live is not None:
                        live.update(Text("\n".join(_chart(name, s_last, hist, chart_lines,
                                                           console.width))
                                         + f"\n{name}: ended"), refresh=True)
                    return
                if live is not None:
                    live.stop()
                    live = None
                refused(e, as_json)
            first = False
            s_last = s
            rates = hist.add(time.monotonic(),
                             {e["name"]: e["count"] for e in s.get("exits", [])})
            if as_json:
                doc = dict(s)
                if rates is not None:
                    doc["rates"] = {k: round(v, 3) for k, v in sorted(rates.items())}
                sys.stdout.write(json.dumps(doc, default=str) + "\n")
                sys.stdout.flush()
            elif live is not None:
                live.update(Text("\n".join(_chart(name, s, hist, chart_lines, console.width))),
                            refresh=True)
            elif rates is not None:
                sys.stdout.write(plain_line(rates) + "\n")
                sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    finally:
        if live is not None:
            live.stop()


def _chart(name: str, s: dict, hist, chart_lines, columns: int = 80) -> list[str]:
    total = sum(e["count"] for e in s.get("exits", []))
    head = (f"{name}: {s.get('state')}  instructions {s.get('instructions'):,}  exits {total:,}"
            if isinstance(s.get("instructions"), int) else f"{name}: {s.get('state')}")
    if not hist.samples:
        return [head, "(measuring...)"]
    return [head, f"exit rates, last {hist.samples if hist.samples < hist.length else hist.length}"
                  " samples (each line scaled to its peak)",
            *chart_lines(hist, width=max(8, min(hist.length, columns - 22 - 29)), name_width=22)]
