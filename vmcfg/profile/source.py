"""Reading TOML with positions, for error messages that name file:line:column.

The data comes from the standard library's tomllib (fast, strict).  A light
line scanner maps every key path to the line and column where its key is
written, so that semantic errors (an unknown control, a value out of range)
point at the right place.  Format-preserving edits use tomlkit elsewhere.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

MAX_FILE_BYTES = 4 * 1024 * 1024


class ProfileError(Exception):
    """A problem in an input file, reported as file:line:col: message."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 col: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.col = col

    def __str__(self) -> str:
        if self.path is None and self.line is None:
            return self.message
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict:
        return {"file": self.path, "line": self.line, "column": self.col,
                "message": self.message}


@dataclass(frozen=True)
class Pos:
    path: str | None
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path or '<input>'}:{self.line}:{self.col}"


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def parse_key(s: str, i: int) -> tuple[list[str], int] | None:
    """Parse a dotted key starting at s[i]; return (segments, index after)."""
    segs: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return None
        ch = s[i]
        if ch in "\"'":
            j = s.find(ch, i + 1)
            if j < 0:
                return None
            segs.append(s[i + 1:j])
            i = j + 1
        else:
            m = _BARE.match(s, i)
            if not m:
                return None
            segs.append(m.group(0))
            i = m.end()
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        return segs, i


def _depth_change(text: str) -> int:
    """Net bracket depth of a value fragment, ignoring strings and comments."""
    d = 0
    q = None
    i = 0
    while i < len(text):
        c = text[i]
        if q:
            if c == "\\" and q == '"':
                i += 2
                continue
            if c == q:
                q = None
        elif c in "\"'":
            q = c
        elif c == "#":
            break
        elif c in "[{":
            d += 1
        elif c in "]}":
            d -= 1
        i += 1
    return d


def scan_positions(text: str, path: str | None = None) -> dict[tuple, Pos]:
    """Key path -> position, with array-of-tables elements as integer path segments.

    ``[[case]]`` number 2's ``profile`` key is ``("case", 1, "profile")``; the
    header itself is ``("case", 1)``; ``[[matrix.cell]]`` under the first matrix
    is ``("matrix", 0, "cell", k)``.  Keys inside inline tables and arrays are not
    mapped: callers fall back to the nearest enclosing key.
    """
    pos: dict[tuple, Pos] = {}
    counts: dict[tuple, int] = {}
    table: tuple = ()
    depth = 0
    in_ml: str | None = None

    def resolve(segs: list[str]) -> tuple:
        out: list[Any] = []
        for s in segs:
            out.append(s)
            t = tuple(out)
            if t in counts:
                out.append(counts[t] - 1)
        return tuple(out)

    for ln, line in enumerate(text.splitlines(), 1):
        if in_ml:
            if in_ml in line:
                in_ml = None
            continue
        if depth > 0:
            depth += _depth_change(line)
            continue
        stripped = line.lstrip()
        col0 = len(line) - len(stripped) + 1
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            arr = stripped.startswith("[[")
            k = parse_key(stripped, 2 if arr else 1)
            if not k:
                continue
            segs = k[0]
            if arr:
                parent = resolve(segs[:-1])
                key = parent + (segs[-1],)
                counts[key] = counts.get(key, 0) + 1
                table = key + (counts[key] - 1,)
                pos.setdefault(key, Pos(path, ln, col0 + 2))
            else:
                table = resolve(segs)
            pos.setdefault(table, Pos(path, ln, col0 + (2 if arr else 1)))
            continue
        k = parse_key(line, col0 - 1)
        if not k:
            continue
        segs, after = k
        rest = line[after:].lstrip()
        if not rest.startswith("="):
            continue
        value = rest[1:]
        full = table + tuple(segs)
        for i in range(len(table) + 1, len(full) + 1):       # dotted keys: each prefix
            pos.setdefault(full[:i], Pos(path, ln, col0))
        v = value.strip()
        for q in ('"""', "'''"):
            if v.startswith(q) and v.count(q) == 1:
                in_ml = q
        if not in_ml:
            depth = max(0, _depth_change(value))
    return pos


def read_text(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ProfileError("no such file", path) from None
    except OSError as e:
        raise ProfileError(f"cannot read: {e.strerror}", path) from None
    if not os.path.isfile(path):
        raise ProfileError("not a regular file", path)
    if st.st_size > MAX_FILE_BYTES:
        raise ProfileError(f"file too large ({st.st_size} bytes; limit {MAX_FILE_BYTES})", path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise ProfileError(f"cannot read: {e.strerror}", path) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ProfileError("not valid UTF-8 text", path, line) from None


_TOMLLIB_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def parse_toml(text: str, path: str | None = None) -> tuple[dict[str, Any], dict[tuple[str, ...], Pos]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOMLLIB_POS.search(msg)
        line = col = None
        if m:
            line, col = int(m.group(1)), int(m.group(2))
            msg = msg[:m.start()].strip()
        elif "end of document" in msg:
            line = text.count("\n") + 1
        raise ProfileError(f"invalid TOML: {msg}", path, line, col) from None
    return data, scan_positions(text, path)


def load_toml(path: str) -> tuple[dict[str, Any], dict[tuple[str, ...], Pos]]:
    return parse_toml(read_text(path), path)
