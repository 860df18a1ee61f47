"""What a smoke file describes: cases, their launch options and expectations.

Nothing here imports the emulator: a smoke run only ever starts `vmcfg launch`
in subprocesses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..profile.source import ProfileError
from ..status import LAUNCH_STATUSES

# `vmcfg launch --json` statuses (the launch contract).
STATUSES = LAUNCH_STATUSES

DEFAULT_TIMEOUT = 10.0       # seconds: `vmcfg launch --timeout`
DEFAULT_GRACE = 10.0         # seconds beyond the launch timeout before a case is killed


class SmokeFileError(ProfileError):
    """A problem in a smoke file, reported as file:line:col: message (exit status 2)."""


@dataclass(frozen=True)
class Bound:
    """An integer expectation: exactly `exact`, or within [lo, hi] (either may be open)."""

    lo: int | None = None
    hi: int | None = None

    @classmethod
    def exactly(cls, n: int) -> "Bound":
        return cls(n, n)

    def ok(self, value: int) -> bool:
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def __str__(self) -> str:
        if self.lo is not None and self.lo == self.hi:
            return str(self.lo)
        if self.hi is None:
            return f">= {self.lo}"
        if self.lo is None:
            return f"<= {self.hi}"
        return f"{self.lo}..{self.hi}"

    def to_json(self) -> Any:
        if self.lo is not None and self.lo == self.hi:
            return self.lo
        return {"min": self.lo, "max": self.hi}


_BOUND_RE = re.compile(r"^\s*(?:(>=|<=|>|<|==|=)?\s*(\d[\d_]*)|(\d[\d_]*)\s*\.\.\s*(\d[\d_]*))\s*$")


def parse_bound(v: Any) -> Bound:
    """3 | ">= 1" | "<= 5" | "> 0" | "< 9" | "2..4" | {min = 1, max = 4}."""
    if isinstance(v, bool):
        raise ValueError(f"expected a count like 3, \">= 1\", \"<= 5\", \"1..4\" or "
                         f"{{min = 1, max = 4}}, got {str(v).lower()}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"a count cannot be negative ({v})")
        return Bound.exactly(v)
    if isinstance(v, str):
        m = _BOUND_RE.match(v)
        if m:
            if m.group(3) is not None:
                lo, hi = int(m.group(3).replace("_", "")), int(m.group(4).replace("_", ""))
                if lo > hi:
                    raise ValueError(f"empty range {v!r} (min > max)")
                return Bound(lo, hi)
            op, n = m.group(1) or "=", int(m.group(2).replace("_", ""))
            if op in ("=", "=="):
                return Bound.exactly(n)
            if op == ">=":
                return Bound(n, None)
            if op == ">":
                return Bound(n + 1, None)
            if op == "<=":
                return Bound(None, n)
            if n == 0:
                raise ValueError(f"{v!r} can never hold (counts are >= 0)")
            return Bound(None, n - 1)
    if isinstance(v, dict):
        extra = sorted(set(v) - {"min", "max"})
        if extra:
            raise ValueError(f"unknown key {extra[0]!r} in a count (keys: min, max)")
        if not v:
            raise ValueError("a count table needs min and/or max")
        lo, hi = v.get("min"), v.get("max")
        for k, x in (("min", lo), ("max", hi)):
            if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 0):
                raise ValueError(f"{k} must be a non-negative integer, got {x!r}")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min {lo} is greater than max {hi}")
        return Bound(lo, hi)
    raise ValueError(f"expected a count like 3, \">= 1\", \"<= 5\", \"1..4\" or "
                     f"{{min = 1, max = 4}}, got {v!r}")


@dataclass
class Expect:
    """Expectations on one `vmcfg launch --json` result.  None = not checked."""

    status: tuple[str, ...] = ("halted",)
    exit_code: int | None = None
    exits: dict[int, Bound] = field(default_factory=dict)       # exit reason number -> bound
    no_other_exits: bool = False
    instructions: Bound | None = None
    tsc: Bound | None = None
    console_contains: tuple[str, ...] = ()
    console_not_contains: tuple[str, ...] = ()
    console_matches: tuple[str, ...] = ()

    def to_json(self) -> dict:
        from ..vmx.exits import exit_name
        d: dict[str, Any] = {"status": list(self.status)}
        if self.exit_code is not None:
            d["exit_code"] = self.exit_code
        if self.exits:
            d["exits"] = {exit_name(n): b.to_json() for n, b in sorted(self.exits.items())}
        if self.no_other_exits:
            d["no_other_exits"] = True
        for k in ("instructions", "tsc"):
            b = getattr(self, k)
            if b is not None:
                d[k] = b.to_json()
        for k in ("console_contains", "console_not_contains", "console_matches"):
            if getattr(self, k):
                d[k] = list(getattr(self, k))
        return d


@dataclass
class Case:
    """One run of one profile with one guest, and what must come out of it."""

    id: str
    profile: str                   # as written
    profile_path: str              # resolved file
    guest: str | None              # as written
    guest_arg: str | None          # what `vmcfg launch --guest` gets (builtin:NAME or a path)
    mode: int | None = None
    memory: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_instructions: int | None = None
    args: tuple[str, ...] = ()
    skip: str | None = None
    expect: Expect = field(default_factory=Expect)
    where: str | None = None       # file:line where the case (or its matrix) is written
    line: int | None = None
    origin: str = "case"           # "case" or "matrix"

    @property
    def profile_name(self) -> str:
        return short_name(self.profile)

    @property
    def guest_name(self) -> str | None:
        return short_name(self.guest) if self.guest else None

    def launch_args(self) -> list[str]:
        """Arguments after `vmcfg launch` (without --json/--trace/--console)."""
        a = [self.profile_path]
        if self.guest_arg:
            a += ["--guest", self.guest_arg]
        if self.mode is not None:
            a += ["--mode", str(self.mode)]
        if self.memory is not None:
            a += ["--memory", str(self.memory)]
        if self.max_instructions is not None:
            a += ["--max-instructions", str(self.max_instructions)]
        a += ["--timeout", _num(self.timeout)]
        a += list(self.args)
        return a

    def to_json(self) -> dict:
        return {"id": self.id, "profile": self.profile, "guest": self.guest,
                "mode": self.mode, "memory": self.memory, "timeout": self.timeout,
                "max_instructions": self.max_instructions, "args": list(self.args),
                "skip": self.skip, "expect": self.expect.to_json(), "where": self.where}


@dataclass
class Suite:
    path: str
    name: str
    cases: list[Case]
    grace: float = DEFAULT_GRACE


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def short_name(spec: str) -> str:
    """baseline -> baseline; builtin:cpuid -> cpuid; ../guests/boot.bin -> boot."""
    s = spec[len("builtin:"):] if spec.startswith("builtin:") else spec
    s = s.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(s)
    return stem if stem and ext else s
