"""vmcfg smoke FILE [-k EXPRESSION] [--shard K/N] [-j N] [--junit FILE] [--json] [--results DIR] [--keep] [-x] [--list]
vmcfg smoke merge -o OUT.xml IN.xml..."""

from __future__ import annotations

import os
import sys
import time

import click

from .common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, default_group, emit_json, err
from .report import Failure, fail, finish


@click.group(cls=default_group("run"))
def smoke():
    """Run a matrix of profiles x guests with expectations; JUnit XML.

    \b
    vmcfg smoke FILE [--shard K/N] [--junit OUT.xml] ...   run a smoke file (see `vmcfg smoke run -h`)
    vmcfg smoke merge -o ALL.xml SHARD.xml...            merge the JUnit reports of several shards
    """


@smoke.command("run")
@click.argument("smoke_file", metavar="FILE", type=click.Path())
@click.option("-k", "keyword", metavar="EXPRESSION",
              help="Only cases whose id matches: substrings joined with and/or/not and "
                   "parentheses, case-insensitive, like pytest -k (e.g. \"baseline and not hello\").")
@click.option("--shard", "shard_spec", metavar="K/N",
              help="Run only the K-th of N slices of the selected cases (K = 1..N), to split a "
                   "run across CI machines: every case is in exactly one slice, the same on "
                   "every machine (cases are dealt round-robin in the order of their ids).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Cases run at once, each in its own process (default: the number of CPUs).")
@click.option("--junit", "junit_file", metavar="FILE", type=click.Path(), help="Write a JUnit XML report to FILE.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--results", "results_dir", metavar="DIR", default="smoke-results",
              type=click.Path(),
              show_default=True,
              help="Folder for the artefacts (console, trace, summary) of failing cases; "
                   "emptied at the start of each run.")
@click.option("--keep", "keep_all", is_flag=True,
              help="Keep the artefacts of passing cases too.")
@click.option("-x", "--exitfirst", is_flag=True,
              help="Start no new case after the first one that fails.")
@click.option("--list", "list_only", is_flag=True,
              help="List the selected cases and exit without running them.")
def run(smoke_file, keyword, shard_spec, jobs, junit_file, as_json, results_dir, keep_all,
        exitfirst, list_only):
    """Run the cases of a smoke FILE: profiles x guests with expectations.

    Each case runs `vmcfg launch ... --json` in its own process; at most N at
    a time (-j).  Failing cases keep their console, trace and summary in the
    results folder (--results).  Paths in FILE are relative to FILE; the
    format is described in docs/smoke.md.

    \b
    Exit status: 0 every case passed (or was skipped); 1 some case failed or
    could not run; 2 bad smoke file or usage; 130 (Ctrl-C) / 143 (SIGTERM):
    interrupted -- the running cases are killed and the report (table, JUnit,
    --json, results folder) covers what finished.
    """
    from ..interrupt import SignalWatch

    from ..smoke.runner import CancelLatch
    cancel = CancelLatch()
    with SignalWatch(cancel.signal) as sig:
        try:
            _smoke(smoke_file, keyword, shard_spec, jobs, junit_file, as_json, results_dir,
                   keep_all, exitfirst, list_only, sig, cancel)
        except (click.exceptions.Exit, Failure):
            if sig.status:          # a signal at any point: 130 / 143, whatever else happened
                finish(sig.status)
            raise


def _smoke(smoke_file, keyword, shard_spec, jobs, junit_file, as_json, results_dir, keep_all,
           exitfirst, list_only, sig, cancel):
    from ..interrupt import hook
    from ..smoke.loader import load_smoke
    from ..smoke.model import SmokeFileError
    from ..smoke.select import SelectError, compile_k, parse_shard, shard

    shard_kn = None
    if shard_spec is not None:
        try:
            shard_kn = parse_shard(shard_spec)
        except SelectError as e:
            fail(str(e))

    hook("smoke:start")
    try:
        suite = load_smoke(smoke_file)
    except SmokeFileError as e:
        fail(str(e).removeprefix("vmcfg: "))
    cases = suite.cases
    if keyword is not None:
        try:
            pred = compile_k(keyword)
        except SelectError as e:
            fail(str(e))
        cases = [c for c in cases if pred(c.id)]
        if not cases:
            fail(f"-k {keyword!r} matches none of the {len(suite.cases)} cases of "
                 f"{smoke_file} (see --list)")
    if shard_kn:
        cases = shard(cases, *shard_kn)
    shard_label = f"{shard_kn[0]}/{shard_kn[1]}" if shard_kn else None
    deselected = len(suite.cases) - len(cases)

    if list_only:
        if as_json:
            emit_json({"smoke_file": smoke_file, "suite": suite.name, "shard": shard_label,
                       "cases": [c.to_json() for c in cases], "deselected": deselected})
        else:
            from ..smoke.runner import display_command
            for c in cases:
                skip = f"  [skip: {c.skip}]" if c.skip else ""
                err(f"{c.id}{skip}")
                err(f"    {display_command(c)}", fg="bright_black")
            err(f"{len(cases)} case{'s' if len(cases) != 1 else ''}"
                + (f", {deselected} deselected" if deselected else ""))
        finish(EXIT_OK)

    if junit_file and os.path.isdir(junit_file):
        fail(f"--junit {junit_file}: is a folder")

    from ..smoke.report import (Progress, closing_line, echo_closing, report_doc,
                                summary_table)
    from ..smoke.runner import (ResultsDirError, Runner, cpu_count, keep_report,
                                prepare_results_dir)

    try:
        prepare_results_dir(results_dir)
    except ResultsDirError as e:
        fail(str(e))
    jobs = jobs or cpu_count()
    runnable = sum(1 for c in cases if not c.skip)
    workers = min(jobs, runnable) if runnable else 0
    err(f"smoke: {smoke_file}: {len(cases)} case{'s' if len(cases) != 1 else ''}"
        + (f" (shard {shard_label})" if shard_label else "")
        + (f" ({deselected} deselected)" if deselected else "")
        + f", {workers} worker{'s' if workers != 1 else ''}", bold=True)

    t0 = time.monotonic()
    with Progress(len(cases)) as progress:
        runner = Runner(suite, cases, jobs=jobs, results_dir=results_dir,
                        keep_all=keep_all, exitfirst=exitfirst, on_start=progress.start,
                        on_done=progress.done)
        cancel.attach(runner)      # a signal from now on kills the running cases
        results = runner.run()
    seconds = time.monotonic() - t0
    hook("smoke:report")
    interrupted = cancel.reason
    ok = all(r.passed for r in results) and runner.not_run == 0 and not interrupted

    if results:                    # none when interrupted before any case ended
        err()
        summary_table(results)
        err()
    elif shard_label:
        err(f"shard {shard_label} has no cases (the selection has fewer cases than shards)")
    kept = [r for r in results if r.artifacts]
    failing = [r for r in results if not r.passed]
    if kept:
        what = "cases" if keep_all else "failing cases"
        err(f"artefacts of {len(kept)} {what} (console.txt, trace.jsonl, summary.json, "
            f"stderr.txt, command.txt): {os.path.join(results_dir, '')}")
        for r in failing:
            if r.artifacts:
                err(f"  {r.case.id}: {r.artifacts}")
    if interrupted:
        err(f"vmcfg: {interrupted}: {runner.not_run} case{'s' if runner.not_run != 1 else ''} "
            f"not run; the report covers the {len(results)} that finished or were stopped",
            fg="red")
    elif runner.not_run:
        err(f"stopped after the first failure (-x): {runner.not_run} case"
            f"{'s' if runner.not_run != 1 else ''} not run", fg="yellow")

    doc = report_doc(smoke_file, suite.name, shard_label, cases, results, deselected=deselected,
                     not_run=runner.not_run, seconds=seconds, ok=ok, interrupted=interrupted,
                     results_dir=results_dir if kept else None, junit=junit_file)
    keep_report(results_dir, doc if kept else None)

    status = EXIT_OK if ok else EXIT_INVALID
    if junit_file:
        from ..smoke import junit
        try:
            junit.write(junit_file, junit.build(suite.name, smoke_file, results, seconds,
                                                results_dir=results_dir if kept else None,
                                                shard=shard_label))
            err(f"JUnit XML: {junit_file}")
        except OSError as e:
            err(f"vmcfg: cannot write {junit_file}: {e.strerror}", fg="red")
            status = EXIT_USAGE
    if as_json:
        emit_json(doc)
    echo_closing(closing_line(results, seconds, deselected, runner.not_run), ok)
    finish(sig.status or status)


@smoke.command("merge")
@click.argument("reports", nargs=-1, required=True, metavar="IN.xml...",
                type=click.Path(dir_okay=False))
@click.option("-o", "--output", metavar="OUT.xml", required=True, type=click.Path(),
              help="The merged JUnit XML report to write ('-' = stdout).")
@click.option("--json", "as_json", is_flag=True, help="Print the merged counts as JSON.")
def merge(reports, output, as_json):
    """Merge JUnit XML reports (the shards of one smoke run) into one.

    Suites of the same name become one suite; a test case found in two reports is
    an error (the shards overlapped).  Prints the merged counts.

    \b
    Exit status: 0 merged, no failures or errors; 1 merged, and some case failed or
    had an error; 2 unreadable, malformed or overlapping reports.
    """
    from ..smoke import junit
    if as_json and output == "-":
        fail("--json prints the counts on stdout: give -o FILE for the XML")
    try:
        tree, summary = junit.merge(list(reports))
    except junit.MergeError as e:
        fail(str(e))
    if output == "-":
        import xml.etree.ElementTree as ET
        sys.stdout.write(ET.tostring(tree.getroot(), encoding="unicode") + "\n")
    else:
        try:
            junit.write(output, tree)
        except OSError as e:
            fail(f"cannot write {output}: {e.strerror}")
        err(f"merged {summary['files']} reports into {output}")
    ok = summary["failures"] == 0 and summary["errors"] == 0
    line = (f"{summary['passed']} passed, {summary['failures']} failed, "
            f"{summary['errors']} errors, {summary['skipped']} skipped "
            f"in {summary['tests']} cases from {summary['files']} reports")
    if as_json:
        emit_json({**summary, "output": output, "ok": ok})
    elif output == "-":
        err(line)
    else:
        click.echo(line)
    finish(EXIT_OK if ok else EXIT_INVALID)
