"""Checking a `vmcfg launch --json` result against a case's expectations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..vmx.exits import EXIT_NUMBER, exit_name
from .model import Expect


@dataclass
class Mismatch:
    """One expectation that did not hold: what, expected, actual."""

    what: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.what}: expected {self.expected}, got {self.actual}"

    def to_json(self) -> dict:
        return {"what": self.what, "expected": self.expected, "actual": self.actual,
                "message": str(self)}


def exit_counts(result: dict) -> dict[int, int]:
    """reason number -> count from the result's "exits" list."""
    out: dict[int, int] = {}
    for e in result.get("exits") or []:
        if not isinstance(e, dict):
            continue
        n = e.get("reason")
        if not isinstance(n, int):
            n = EXIT_NUMBER.get(str(e.get("name", "")))
        if n is None:
            continue
        n &= 0xFFFF
        c = e.get("count", 0)
        out[n] = out.get(n, 0) + (c if isinstance(c, int) else 0)
    return out


def _snippet(text: str, limit: int = 80) -> str:
    t = text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
    return repr(t)


def describe_status(result: dict) -> str:
    s = str(result.get("status"))
    if s == "debug-exit":
        s += f" (exit code {result.get('guest_exit_code')})"
    msg = result.get("message")
    if msg and result.get("status") not in ("halted", "debug-exit"):
        s += f": {msg}"
    return s


def check(expect: Expect, result: dict) -> list[Mismatch]:
    out: list[Mismatch] = []
    status = result.get("status")
    if status not in expect.status:
        exp = " or ".join(f'"{s}"' for s in expect.status)
        if expect.exit_code is not None and expect.status == ("debug-exit",):
            exp = f'"debug-exit" (exit code {expect.exit_code})'
        out.append(Mismatch("status", exp, describe_status(result)))
    elif status == "debug-exit" and expect.exit_code is not None \
            and result.get("guest_exit_code") != expect.exit_code:
        out.append(Mismatch("exit code", str(expect.exit_code),
                            str(result.get("guest_exit_code"))))
    counts = exit_counts(result)
    for n, bound in sorted(expect.exits.items()):
        got = counts.get(n, 0)
        if not bound.ok(got):
            out.append(Mismatch(f"exits.{exit_name(n)}", str(bound), str(got)))
    if expect.no_other_exits:
        extra = {n: c for n, c in counts.items() if c and n not in expect.exits}
        if extra:
            listed = ", ".join(exit_name(n) for n in sorted(expect.exits)) or "none"
            got = ", ".join(f"{exit_name(n)} x{c}" for n, c in sorted(extra.items()))
            out.append(Mismatch("other exits", f"only {listed}", got))
    for name in ("instructions", "tsc"):
        bound = getattr(expect, name)
        if bound is not None:
            got = result.get(name)
            if not isinstance(got, int) or not bound.ok(got):
                out.append(Mismatch(name, str(bound), str(got)))
    console = result.get("console")
    if not isinstance(console, str):
        console = ""
    for s in expect.console_contains:
        if s not in console:
            out.append(Mismatch("console", f"to contain {s!r}", f"console {_snippet(console)}"))
    for s in expect.console_not_contains:
        i = console.find(s)
        if i >= 0:
            line = console.count("\n", 0, i) + 1
            out.append(Mismatch("console", f"not to contain {s!r}",
                                f"it on console line {line}"))
    for rx in expect.console_matches:
        if not re.search(rx, console, re.M):
            out.append(Mismatch("console", f"to match /{rx}/", f"console {_snippet(console)}"))
    return out


def result_summary(result: dict[str, Any]) -> str:
    """halted, 1234 instructions, 3 exits"""
    parts = [describe_status(result)]
    n = result.get("instructions")
    if isinstance(n, int):
        parts.append(f"{n} instructions")
    total = sum(exit_counts(result).values())
    parts.append(f"{total} exit{'s' if total != 1 else ''}")
    return ", ".join(parts)
