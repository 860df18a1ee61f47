"""Reading `vmcfg launch --trace` files one record at a time.

A trace is JSON lines, plain or gzip-compressed (recognised by its magic
bytes, whatever the file is called).  Each exit record has at least `seq` and
`reason`; traces written since issue 17 also carry `host_ns` (the VMM's
handling time) and `host_at_ns` (when handling began, ns since the run began),
and sampled traces `sample` (the record stands for that many exits) plus one
closing {"totals": ...} line with the exact count and host time per reason.
A {"truncated": ...} line (left by `vmcfg smoke` when it trims a large trace)
is counted and skipped.

Nothing is kept per record: memory does not grow with the trace.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import IO, Iterator

GZIP_MAGIC = b"\x1f\x8b"


class TraceError(Exception):
    """A file that is not a readable trace; `line` is 1-based (None: the whole file)."""

    def __init__(self, message: str, path: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else \
            f"{self.path}: {self.message}"


class TraceReader:
    """Iterate over the exit records of a trace file (dicts, in file order).

    After the iteration: `totals` (the totals line of a sampled trace, or None),
    `truncated` (how many {"truncated"} markers were skipped), `lines`,
    `compressed`.
    """

    def __init__(self, path: str):
        self.path = path
        self.totals: dict | None = None
        self.truncated = 0
        self.lines = 0
        self.records = 0
        self.compressed = False

    def _open(self) -> IO[bytes]:
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise TraceError(f"cannot read: {e.strerror}", self.path) from None
        try:
            head = fh.peek(2)[:2] if hasattr(fh, "peek") else b""
        except OSError as e:
            fh.close()
            raise TraceError(f"cannot read: {e.strerror}", self.path) from None
        if head == GZIP_MAGIC:
            self.compressed = True
            return gzip.GzipFile(fileobj=fh, mode="rb")      # closes with fh below
        return fh

    def __iter__(self) -> Iterator[dict]:
        fh = self._open()
        raw = fh.fileobj if isinstance(fh, gzip.GzipFile) else fh
        n = 0
        try:
            while True:
                try:
                    line = fh.readline()
                except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
                    raise TraceError(self._gzip_problem(e, n), self.path, n + 1) from None
                if not line:
                    break
                n += 1
                self.lines = n
                if not line.strip():
                    continue
                rec = self._parse(line, n)
                if rec is not None:
                    self.records += 1
                    yield rec
        finally:
            fh.close()
            raw.close()

    def _gzip_problem(self, e: Exception, n: int) -> str:
        if isinstance(e, EOFError):
            return (f"the gzip stream is truncated after {n} complete line(s) "
                    "(was the run killed before it closed the trace?)")
        return f"corrupt gzip data after line {n}: {e}"

    def _parse(self, line: bytes, n: int) -> dict | None:
        try:
            rec = json.loads(line)
        except ValueError as e:
            if n == 1 and self.records == 0:
                raise TraceError("not a vmcfg trace: the first line is not JSON "
                                 "(expected one JSON object per VM exit, from "
                                 "'vmcfg launch --trace FILE')", self.path, n) from None
            what = "truncated JSON (the line ends early)" if not line.endswith(b"\n") \
                else f"bad JSON: {getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')}"
            raise TraceError(what, self.path, n) from None
        if not isinstance(rec, dict):
            raise TraceError(f"expected a JSON object per line, found {type(rec).__name__}",
                             self.path, n)
        if "reason" in rec and "seq" in rec:
            r, s = rec["reason"], rec["seq"]
            if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 0xFFFF:
                raise TraceError(f"'reason' must be an exit-reason number (0-65535), not {r!r}",
                                 self.path, n)
            if not isinstance(s, int) or isinstance(s, bool):
                raise TraceError(f"'seq' must be an integer, not {s!r}", self.path, n)
            for k in ("host_ns", "host_at_ns", "sample", "rip", "tsc", "instructions"):
                v = rec.get(k)
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise TraceError(f"{k!r} must be a non-negative integer, not {v!r}",
                                     self.path, n)
            return rec
        if "totals" in rec:
            t = rec["totals"]
            if not isinstance(t, dict) or not isinstance(t.get("exits"), list):
                raise TraceError("a 'totals' line needs an 'exits' list", self.path, n)
            self.totals = t
            return None
        if "truncated" in rec:
            self.truncated += 1
            return None
        if n == 1 and self.records == 0:
            raise TraceError("not a vmcfg trace: the first line is not an exit record "
                             "(no 'seq' and 'reason')", self.path, n)
        raise TraceError("not an exit record (no 'seq' and 'reason')", self.path, n)
