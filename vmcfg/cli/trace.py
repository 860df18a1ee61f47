"""vmcfg trace summary|export FILE: read a `vmcfg launch --trace` file.

The work happens in vmcfg/trace/; this module parses options, picks the
output (stdout or an atomically written -o FILE) and turns errors into
messages and exit statuses.
"""

from __future__ import annotations

import contextlib
import sys

import click

from .common import err
from .report import fail, finish

STATUS_HELP = """\b
Exit status:
  0  done
  2  bad usage, or FILE is unreadable or not a (complete) trace: not JSON
     lines, a bad JSON line (reported with its line number), a truncated
     gzip stream; or the output cannot be written (-o FILE is then unchanged)"""


@click.group(epilog=STATUS_HELP)
def trace() -> None:
    """Summarise a 'vmcfg launch --trace' file or export it for Perfetto.

    FILE is JSON lines, plain or gzip-compressed (--trace FILE.jsonl.gz),
    sampled or not (--trace-sample N).  Both commands read it in one pass
    with bounded memory, whatever its size.
    """


@contextlib.contextmanager
def _output(path: str | None):
    if not path or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    from ..profile.atomic import atomic_open
    with atomic_open(path) as fh:
        yield fh


def _run(work) -> None:
    from ..profile.atomic import WriteError
    from ..trace.export import ExportError
    from ..trace.reader import TraceError
    try:
        work()
    except (TraceError, ExportError, WriteError) as e:
        fail(str(e))
    except BrokenPipeError:
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finish(0)
    except OSError as e:
        fail(f"cannot write the output: {e.strerror or e}")


@trace.command(epilog=STATUS_HELP)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=0),
              help="Guest RIPs to show per exit reason.")
@click.option("-o", "--output", metavar="OUT", help="Write to OUT (atomically) instead of stdout.")
def summary(file, as_json, top, output):
    """Per exit reason: count, share of host time, median/p99 handling time,
    and the guest RIPs that exit most, with their instruction."""
    from ..trace.reader import TraceReader
    from ..trace.summary import render_text, summarize

    def work():
        rd = TraceReader(file)
        doc = summarize(rd, totals=lambda: rd.totals, top=top)
        if rd.truncated:
            err(f"vmcfg: note: {file} was trimmed ({rd.truncated} gap(s)): counts cover the "
                "records that are left", fg="yellow")
        with _output(output) as fh:
            if as_json:
                import json
                fh.write(json.dumps({"file": file, **doc}, indent=2) + "\n")
            else:
                fh.write(render_text(doc, file))

    _run(work)


@trace.command(epilog=STATUS_HELP)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["perfetto"]), default="perfetto",
              show_default=True,
              help="perfetto: Chrome Trace Event JSON (ui.perfetto.dev, chrome://tracing).")
@click.option("--clock", type=click.Choice(["host", "tsc"]), default=None,
              help="Timeline: host (slices as long as each exit's handling; the default for "
                   "traces with host times) or tsc (instants at the guest's virtual TSC).")
@click.option("--rate-window", "rate_window", default=10.0, show_default=True,
              type=click.FloatRange(min=0.001), metavar="MS",
              help="Window of the exit-rate counters, in milliseconds of the timeline.")
@click.option("-o", "--output", metavar="OUT", help="Write to OUT (atomically) instead of stdout.")
def export(file, fmt, clock, rate_window, output):
    """Export a trace for a timeline viewer: one track per exit reason,
    a slice per exit with its handling time, exit-rate counters."""
    from ..trace.export import ExportError, export_perfetto
    from ..trace.reader import TraceError, TraceReader

    def work():
        rd = TraceReader(file)
        try:
            with _output(output) as fh:
                info = export_perfetto(rd, fh, clock=clock, window_ns=int(rate_window * 1e6),
                                       source=file, totals=lambda: rd.totals)
        except ExportError as e:
            raise TraceError(str(e), file, rd.lines) from None
        if rd.truncated:
            err(f"vmcfg: note: {file} was trimmed ({rd.truncated} gap(s)): the timeline has "
                "a gap where records were left out", fg="yellow")
        if output and output != "-":
            err(f"{output}: {info['exits']:,} exits on {info['reasons']} track(s), "
                f"{info['events']:,} events (clock {info['clock']}); open it in "
                "https://ui.perfetto.dev (Open trace file) or chrome://tracing")

    _run(work)
