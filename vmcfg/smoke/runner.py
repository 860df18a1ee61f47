"""Running cases: one `vmcfg launch` subprocess per case, N at a time.

Each case runs as

    vmcfg launch PROFILE [--guest G] [--mode M] [--memory S] [--max-instructions N]
                 --timeout T [ARGS...] --json --trace DIR/trace.jsonl --console DIR/console.txt

in its own process (and process group), so a guest that crashes or wedges the
emulator cannot take the others with it.  A pool of supervising threads keeps
at most `jobs` of these processes alive; a case whose process is still running
`grace` seconds after its own --timeout is killed (the safety net behind
launch's timeout).  DIR is the case's folder in the results folder: it is
removed when the case passes (unless keep_all) and kept, with summary.json,
stderr.txt and command.txt added, when it does not.

cancel() -- called from any thread, e.g. by `vmcfg smoke` on SIGINT/SIGTERM
(vmcfg/interrupt.py) -- starts no further case and kills the process group of
every running one; run() then returns what finished, the killed cases as
errors with the reason given to cancel().
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from queue import SimpleQueue
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..interrupt import hook
from .expect import Mismatch, check
from .model import STATUSES, Case, Suite

MARKER = ".vmcfg-smoke"
DEFAULT_LAUNCHER = (sys.executable, "-m", "vmcfg.cli", "launch")
_SAFE = re.compile(r"[^A-Za-z0-9_.+=@,-]")
STDERR_LIMIT = 64 * 1024
TRACE_LIMIT = 16 << 20         # a kept trace larger than this keeps its first and last 8 MiB


def cpu_count() -> int:
    """The CPUs this process may run on (the default number of cases at once)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CancelLatch:
    """Hands a signal to the runner, whether it arrives before or after the runner exists."""

    def __init__(self):
        self._lock = threading.Lock()
        self.runner = None
        self.reason: str | None = None

    def signal(self, signum: int) -> None:
        from ..interrupt import signal_name
        with self._lock:
            if self.reason is None:
                self.reason = f"interrupted by {signal_name(signum)}"
            runner = self.runner
        if runner is not None:
            runner.cancel(self.reason)

    def attach(self, runner) -> None:
        with self._lock:
            self.runner = runner
            reason = self.reason
        if reason is not None:
            runner.cancel(reason)


def keep_report(results_dir: str, doc: dict | None) -> None:
    """Write the run's report.json beside the kept artefacts; with nothing kept (doc None),
    remove the results folder again if it holds only our marker."""
    if doc is not None:
        try:
            with open(os.path.join(results_dir, "report.json"), "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)
                fh.write("\n")
        except OSError:
            pass
        return
    try:
        if os.listdir(results_dir) == [MARKER]:
            os.unlink(os.path.join(results_dir, MARKER))
            os.rmdir(results_dir)
    except OSError:
        pass


class ResultsDirError(Exception):
    """The results folder cannot be used (message says why)."""


@dataclass
class CaseResult:
    case: Case
    outcome: str                       # passed | failed | error | skipped
    seconds: float = 0.0
    result: dict | None = None         # the `vmcfg launch --json` document
    mismatches: list[Mismatch] = field(default_factory=list)
    error: str | None = None           # why there is no result (outcome "error")
    returncode: int | None = None
    stderr: str = ""
    command: list[str] = field(default_factory=list)
    artifacts: str | None = None       # the case's folder, when kept

    @property
    def reasons(self) -> list[str]:
        if self.outcome == "skipped":
            return [f"skipped: {self.case.skip}"]
        if self.error:
            return [self.error]
        return [str(m) for m in self.mismatches]

    @property
    def passed(self) -> bool:
        return self.outcome in ("passed", "skipped")

    def to_json(self) -> dict:
        r = self.result or {}
        exits = [{k: e.get(k) for k in ("reason", "name", "count")}
                 for e in r.get("exits") or [] if isinstance(e, dict) and "name" in e]
        return {
            "id": self.case.id, "profile": self.case.profile, "guest": self.case.guest,
            "outcome": self.outcome, "seconds": round(self.seconds, 3),
            "status": r.get("status"), "guest_exit_code": r.get("guest_exit_code"),
            "instructions": r.get("instructions"), "exits": exits,
            "failures": [m.to_json() for m in self.mismatches],
            "error": self.error, "skip": self.case.skip if self.outcome == "skipped" else None,
            "returncode": self.returncode, "artifacts": self.artifacts,
            "command": display_command(self.case), "where": self.case.where,
        }


def display_command(case: Case) -> str:
    """The launch command line a user can paste to rerun the case."""
    return "vmcfg launch " + shlex.join(case.launch_args())


# ---- the results folder ----------------------------------------------------------------

def prepare_results_dir(path: str) -> None:
    """Create (or empty a previous run's) results folder; never clear a foreign folder."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ResultsDirError(f"results folder {path}: exists and is not a folder")
    if os.path.isdir(path):
        entries = os.listdir(path)
        if entries and MARKER not in entries:
            raise ResultsDirError(
                f"results folder {path}: not empty and not made by vmcfg smoke (no {MARKER} "
                f"file); refusing to clear it: remove it or choose another --results")
        for e in entries:
            p = os.path.join(path, e)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif e != MARKER:
                os.unlink(p)
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, MARKER), "w") as fh:
            fh.write("Made by `vmcfg smoke`; emptied at the start of each run.\n")
    except OSError as e:
        raise ResultsDirError(f"results folder {path}: {e.strerror}") from None


def case_dir_names(cases: Sequence[Case]) -> dict[str, str]:
    """Case id -> a unique folder name (ids are unique; sanitised names may not be)."""
    used: set[str] = set()
    out = {}
    for c in cases:
        base = _SAFE.sub("_", c.id) or "case"
        name, n = base, 2
        while name.lower() in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name.lower())
        out[c.id] = name
    return out


# ---- the runner -----------------------------------------------------------------------

class Runner:
    def __init__(self, suite: Suite, cases: Sequence[Case], *, jobs: int, results_dir: str,
                 keep_all: bool = False, exitfirst: bool = False,
                 launcher: Sequence[str] | None = None,
                 on_start: Callable[[Case], None] | None = None,
                 on_done: Callable[[CaseResult], None] | None = None):
        self.suite = suite
        self.cases = list(cases)
        self.jobs = max(1, jobs)
        self.results_dir = results_dir
        self.keep_all = keep_all
        self.exitfirst = exitfirst
        self.launcher = list(launcher or DEFAULT_LAUNCHER)
        self.on_start = on_start
        self.on_done = on_done
        self.dirs = case_dir_names(self.cases)
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._stop = False
        self.stop_reason: str | None = None   # why cancel() was called ("interrupted by SIGINT")
        self.not_run = 0

    # public ------------------------------------------------------------------------
    def run(self) -> list[CaseResult]:
        """Run every case; results in case order (cases never started are left out)."""
        results: dict[str, CaseResult] = {}
        todo = []
        for c in self.cases:
            if c.skip:
                r = CaseResult(c, "skipped", command=self._command(c, "", ""))
                results[c.id] = r
                if self.on_done:
                    self.on_done(r)
            else:
                todo.append(c)
        if todo:
            # Plain worker threads and one SimpleQueue: the main thread only ever waits in
            # SimpleQueue.get, so a KeyboardInterrupt (a library caller's Ctrl-C) cannot
            # strike while it holds a lock the workers need.
            done: SimpleQueue = SimpleQueue()
            feed = iter(todo)
            feed_lock = threading.Lock()

            def work() -> None:
                while True:
                    with feed_lock:
                        case = next(feed, None)
                    if case is None:
                        return
                    r = None
                    try:
                        r = self._run_case(case)
                    finally:
                        done.put(r)           # exactly one item per case, even on errors

            workers = [threading.Thread(target=work, name=f"smoke-{i}", daemon=True)
                       for i in range(min(self.jobs, len(todo)))]
            try:
                for w in workers:
                    w.start()
                for _ in todo:
                    r = done.get()
                    if r is None:
                        continue
                    results[r.case.id] = r
                    if self.on_done:
                        self.on_done(r)
            except BaseException:
                self.cancel()
                for w in workers:
                    if w.ident is not None:
                        w.join()
                raise
            for w in workers:
                w.join()
        self.not_run = sum(1 for c in self.cases if c.id not in results)
        return [results[c.id] for c in self.cases if c.id in results]

    def cancel(self, reason: str = "interrupted") -> None:
        """Stop starting cases and kill every running launch (thread-safe; also before run())."""
        with self._lock:
            self._stop = True
            if self.stop_reason is None:
                self.stop_reason = reason
            procs = list(self._procs)
        for p in procs:
            _kill(p)

    # one case ----------------------------------------------------------------------
    def _command(self, case: Case, trace: str, console: str) -> list[str]:
        return self.launcher + case.launch_args() + ["--json", "--trace", trace,
                                                      "--console", console]

    def _run_case(self, case: Case) -> CaseResult | None:
        try:
            return self._run_case_in(case)
        except Exception as e:     # one case's trouble must not end the whole run
            r = CaseResult(case, "error", command=self._command(case, "", ""),
                           error=f"vmcfg smoke could not run the case: {type(e).__name__}: {e}")
            if self.exitfirst:
                self._stop = True
            return r

    def _run_case_in(self, case: Case) -> CaseResult | None:
        if self._stop:
            return None
        d = os.path.join(self.results_dir, self.dirs[case.id])
        os.makedirs(d, exist_ok=True)
        trace = os.path.join(d, "trace.jsonl")
        console = os.path.join(d, "console.txt")
        cmd = self._command(case, trace, console)
        if self.on_start:
            self.on_start(case)
        limit = case.timeout + self.suite.grace
        t0 = time.monotonic()
        killed = False
        hook("smoke:worker-start")
        try:
            # cancel() takes the same lock: a case is either never started or its
            # process is in _procs by the time cancel() looks (and is killed)
            with self._lock:
                if self._stop:
                    shutil.rmtree(d, ignore_errors=True)
                    return None
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
                self._procs.add(proc)
            try:
                out, errb = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                killed = True
                _kill(proc)
                out, errb = proc.communicate()
            finally:
                with self._lock:
                    self._procs.discard(proc)
            hook("smoke:case-done")
        except OSError as e:
            r = CaseResult(case, "error", time.monotonic() - t0, command=cmd,
                           error=f"cannot start vmcfg launch: {e.strerror or e}")
            return self._finish(r, d, console)
        secs = time.monotonic() - t0
        stderr = errb.decode("utf-8", "replace")
        if len(stderr) > STDERR_LIMIT:
            stderr = "...\n" + stderr[-STDERR_LIMIT:]
        r = CaseResult(case, "error", secs, returncode=proc.returncode, stderr=stderr,
                       command=cmd)
        if killed:
            r.error = (f"killed: no result {limit:g} s after start (launch --timeout "
                       f"{case.timeout:g} s + {self.suite.grace:g} s grace)")
            return self._finish(r, d, console)
        if self.stop_reason is not None and proc.returncode is not None and proc.returncode < 0:
            r.error = self.stop_reason           # killed by cancel()
            return self._finish(r, d, console)
        doc = _parse_result(out)
        invalid = _invalid_profile(out) if doc is None else None
        if invalid:
            r.error = invalid
            return self._finish(r, d, console)
        if doc is None:
            r.error = _no_result_reason(proc.returncode, stderr, out)
            return self._finish(r, d, console)
        r.result = doc
        r.mismatches = check(case.expect, doc)
        r.outcome = "failed" if r.mismatches else "passed"
        return self._finish(r, d, console)

    def _finish(self, r: CaseResult, d: str, console: str) -> CaseResult:
        if self.exitfirst and not r.passed:
            self._stop = True            # before this worker picks up its next case
        if r.outcome == "passed" and not self.keep_all:
            shutil.rmtree(d, ignore_errors=True)
            return r
        try:
            _trim_trace(os.path.join(d, "trace.jsonl"))
            if r.result is not None and not os.path.exists(console):
                with open(console, "w", encoding="utf-8") as fh:
                    fh.write(str(r.result.get("console") or ""))
            with open(os.path.join(d, "stderr.txt"), "w", encoding="utf-8") as fh:
                fh.write(r.stderr)
            with open(os.path.join(d, "command.txt"), "w", encoding="utf-8") as fh:
                fh.write(display_command(r.case) + "\n")
            r.artifacts = d
            with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as fh:
                json.dump({"case": r.case.to_json(), "verdict": r.to_json(),
                           "result": r.result}, fh, indent=2)
                fh.write("\n")
        except OSError as e:     # keep going: the verdict matters more than its artefacts
            r.artifacts = None
            r.stderr += f"\n(vmcfg smoke: could not write artefacts to {d}: {e.strerror})"
        return r


def _trim_trace(path: str, limit: int = TRACE_LIMIT) -> None:
    """Keep a runaway guest's trace useful and small: its first and last limit/2 bytes,
    cut at line boundaries, with one {"truncated": ...} JSON line between them."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return
    if size <= limit:
        return
    half = limit // 2
    with open(path, "rb") as fh:
        head = fh.read(half)
        fh.seek(size - half)
        tail = fh.read()
    head = head[:head.rfind(b"\n") + 1]
    tail = tail[tail.find(b"\n") + 1:]
    cut = size - len(head) - len(tail)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(head)
        fh.write(json.dumps({"truncated": True, "bytes_left_out": cut,
                             "note": "vmcfg smoke keeps the first and last part of a large "
                                     "trace"}).encode() + b"\n")
        fh.write(tail)
    os.replace(tmp, path)


def _kill(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:   # pragma: no cover - not POSIX
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def _parse_result(out: bytes) -> dict | None:
    text = out.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("status") not in STATUSES:
        return None
    return doc


def _invalid_profile(out: bytes) -> str | None:
    """launch --json's answer for a profile that is not valid: {"valid": false, "errors": [...]}."""
    try:
        doc = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("valid") is not False:
        return None
    errs = [e for e in doc.get("errors") or [] if isinstance(e, dict)]
    if not errs:
        return "invalid profile"
    e = errs[0]
    loc = e.get("location") or {}
    where = ":".join(str(loc[k]) for k in ("file", "line", "column") if loc.get(k) is not None)
    text = f"error[{e.get('rule')}] {e.get('title')}: {e.get('message')}"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"invalid profile: {where + ': ' if where else ''}{text}{more}"


def _no_result_reason(rc: int | None, stderr: str, out: bytes) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    # prefer the first message line: launch reports file:line:col problems first
    msg = ""
    if any(ln.startswith("Traceback") for ln in lines):
        msg = "crashed: " + lines[-1]          # the exception line
    elif lines:
        msg = lines[0]
    if rc is not None and rc < 0:
        try:
            how = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    else:
        how = f"exited {rc}"
    head = f"vmcfg launch {how} without a result"
    if not msg and out.strip():
        msg = "its output is not a launch --json document"
    return head + (f": {msg}" if msg else "")


__all__ = ["CaseResult", "Runner", "ResultsDirError", "prepare_results_dir", "display_command"]
