"""What a smoke run shows while it runs and at the end (all on stderr).

On a terminal: a rich progress bar with the cases in flight, a coloured line
per finished case and a rich summary table.  Otherwise (CI logs, pipes): one
plain line per finished case and a plain-text table -- no cursor movement.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Sequence

import click

from .expect import exit_counts
from .model import Case
from .runner import CaseResult

LABEL = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
COLOR = {"passed": "green", "failed": "red", "error": "red", "skipped": "yellow"}


def report_doc(smoke_file: str, suite: str, shard: str | None, cases: Sequence[Case],
               results: Sequence[CaseResult], *, deselected: int, not_run: int, seconds: float,
               ok: bool, interrupted: str | None, results_dir: str | None,
               junit: str | None) -> dict:
    """The JSON report of a smoke run (`vmcfg smoke --json`, and report.json)."""
    def count(outcome: str) -> int:
        return sum(1 for r in results if r.outcome == outcome)
    return {
        "smoke_file": smoke_file, "suite": suite, "shard": shard,
        "summary": {"total": len(cases), "passed": count("passed"),
                    "failed": count("failed"), "errors": count("error"),
                    "skipped": count("skipped"), "deselected": deselected,
                    "not_run": not_run, "seconds": round(seconds, 3), "ok": ok,
                    "interrupted": interrupted},
        "results_dir": results_dir,
        "junit": junit,
        "cases": [r.to_json() for r in results],
    }


def _fmt_secs(s: float) -> str:
    return f"{s:.2f}s"


def case_line(r: CaseResult) -> str:
    head = f"{LABEL[r.outcome]:5s} {r.case.id}"
    if r.outcome == "skipped":
        return f"{head}: {r.case.skip}"
    head += f" ({_fmt_secs(r.seconds)})"
    reasons = r.reasons
    if reasons:
        head += ": " + reasons[0] + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
    return head


class Progress:
    """Context manager: start(case) / done(result) from any thread."""

    def __init__(self, total: int, *, stream: IO[str] | None = None, fancy: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.fancy = self.stream.isatty() if fancy is None else fancy
        self.n = 0
        self.running: list[str] = []
        self._lock = threading.Lock()
        self._rich = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.fancy and self.total:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RProgress,
                                       SpinnerColumn, TextColumn, TimeElapsedColumn)
            console = Console(file=self.stream)
            self._rich = RProgress(SpinnerColumn(), TextColumn("smoke"), BarColumn(),
                                   MofNCompleteColumn(), TimeElapsedColumn(),
                                   TextColumn("{task.fields[running]}", style="dim"),
                                   console=console, transient=True)
            self._rich.__enter__()
            self._task = self._rich.add_task("smoke", total=self.total, running="")
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None

    def _running_text(self) -> str:
        shown = self.running[:3]
        more = len(self.running) - len(shown)
        return ", ".join(shown) + (f" +{more}" if more > 0 else "")

    def start(self, case: Case) -> None:
        with self._lock:
            self.running.append(case.id)
            if self._rich is not None:
                self._rich.update(self._task, running=self._running_text())

    def done(self, r: CaseResult) -> None:
        with self._lock:
            self.n += 1
            if r.case.id in self.running:
                self.running.remove(r.case.id)
            width = len(str(self.total))
            prefix = f"[{self.n:>{width}}/{self.total}]"
            if self._rich is not None:
                color = COLOR[r.outcome]
                from rich.markup import escape
                self._rich.console.print(f"{prefix} [{color}]{escape(case_line(r))}[/{color}]",
                                         highlight=False)
                self._rich.update(self._task, advance=1, running=self._running_text())
            else:
                self.stream.write(f"{prefix} {case_line(r)}\n")
                self.stream.flush()


def _row(r: CaseResult) -> list[str]:
    res = r.result or {}
    status = str(res.get("status") or ("-" if r.outcome == "skipped" else "no result"))
    code = res.get("guest_exit_code")
    instr = res.get("instructions")
    exits = sum(exit_counts(res).values()) if res else None
    return [r.case.id, LABEL[r.outcome], status, "-" if code is None else str(code),
            "-" if instr is None else str(instr), "-" if exits is None else str(exits),
            "-" if r.outcome == "skipped" else _fmt_secs(r.seconds)]


HEADERS = ["case", "result", "status", "code", "instructions", "exits", "time", "reason"]


def summary_table(results: Sequence[CaseResult], *, stream: IO[str] | None = None,
                  fancy: bool | None = None) -> None:
    stream = stream or sys.stderr
    fancy = stream.isatty() if fancy is None else fancy
    rows: list[tuple[str, list[str]]] = []
    for r in results:
        base = _row(r)
        reasons = r.reasons if r.outcome != "passed" else [""]
        if r.outcome == "skipped":
            reasons = [r.case.skip or ""]
        for i, why in enumerate(reasons or [""]):
            cells = base if i == 0 else [""] * len(base)
            rows.append((r.outcome if i == 0 else "", cells + [why]))
    if fancy:
        _rich_table(results, rows, stream)
        return
    widths = [max([len(h)] + [len(c[i]) for _, c in rows]) for i, h in enumerate(HEADERS[:-1])]
    right = {3, 4, 5, 6}

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return ("  ".join(parts) + "  " + cells[-1]).rstrip()

    stream.write(fmt(HEADERS) + "\n")
    stream.write(fmt(["-" * w for w in widths] + ["-" * 6]) + "\n")
    for _, cells in rows:
        stream.write(fmt(cells) + "\n")
    stream.flush()


def closing_line(results: Sequence[CaseResult], seconds: float, deselected: int = 0,
                 not_run: int = 0) -> str:
    n = {k: sum(1 for r in results if r.outcome == k)
         for k in ("passed", "failed", "error", "skipped")}
    parts = [f"{n['passed']} passed", f"{n['failed']} failed"]
    if n["error"]:
        parts.append(f"{n['error']} error{'s' if n['error'] != 1 else ''}")
    if n["skipped"]:
        parts.append(f"{n['skipped']} skipped")
    if deselected:
        parts.append(f"{deselected} deselected")
    if not_run:
        parts.append(f"{not_run} not run")
    return ", ".join(parts) + f" in {seconds:.2f}s"


def echo_closing(line: str, ok: bool) -> None:
    click.echo(click.style(line, fg="green" if ok else "red", bold=True), err=True)


def _rich_table(results: Sequence[CaseResult], rows: list[tuple[str, list[str]]],
                stream: IO[str]) -> None:
    """A rich table; on a narrow terminal the reasons go below it, one line each."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    console = Console(file=stream)
    wide = console.width >= 120
    heads = HEADERS if wide else HEADERS[:-1]
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for h in heads:
        if h == "reason":
            t.add_column(h, overflow="fold", ratio=1)
        else:
            t.add_column(h, justify="right" if h in ("code", "instructions", "exits", "time")
                         else "left", no_wrap=True, overflow="ellipsis")
    for outcome, cells in rows:
        if not wide and not outcome:
            continue                       # continuation rows only carry reasons
        texts = [Text(c) for c in cells[:len(heads)]]
        if outcome:
            texts[1].stylize(COLOR[outcome])
        if wide and outcome in ("failed", "error"):
            texts[-1].stylize(COLOR[outcome])
        t.add_row(*texts)
    console.print(t)
    if not wide:
        for r in results:
            if r.outcome in ("failed", "error"):
                for why in r.reasons:
                    line = Text(f"{LABEL[r.outcome]} {r.case.id}: ", style=COLOR[r.outcome])
                    line.append(why)
                    console.print(line)
