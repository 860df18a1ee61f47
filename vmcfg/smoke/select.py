"""`-k EXPRESSION`: choose cases by id, like pytest's -k.

    expr     := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | "(" expr ")" | WORD

A WORD matches a case when it is a substring of the case id, ignoring case
(`-k cpuid`, `-k "baseline and not hello"`, `-k "(a or b) and 32"`).
"""

from __future__ import annotations

import re
from typing import Callable

_TOKEN = re.compile(r"\s*(?:(\()|(\))|([^\s()]+))")


class SelectError(ValueError):
    """A -k expression that does not parse."""


def _tokens(expr: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(expr):
        m = _TOKEN.match(expr, i)
        if not m or m.end() == i:
            break
        out.append(m.group(1) or m.group(2) or m.group(3))
        i = m.end()
    return out


def compile_k(expr: str) -> Callable[[str], bool]:
    """A predicate over case ids; raise SelectError for a malformed expression."""
    toks = _tokens(expr)
    if not toks:
        raise SelectError("empty -k expression")
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        t = toks[pos]
        pos += 1
        return t

    def p_or() -> Callable[[str], bool]:
        terms = [p_and()]
        while peek() == "or":
            take()
            terms.append(p_and())
        return terms[0] if len(terms) == 1 else (lambda s: any(t(s) for t in terms))

    def p_and() -> Callable[[str], bool]:
        terms = [p_not()]
        while peek() == "and":
            take()
            terms.append(p_not())
        return terms[0] if len(terms) == 1 else (lambda s: all(t(s) for t in terms))

    def p_not() -> Callable[[str], bool]:
        t = peek()
        if t is None:
            raise SelectError(f"-k {expr!r}: expression ends unexpectedly")
        if t == "not":
            take()
            inner = p_not()
            return lambda s: not inner(s)
        if t == "(":
            take()
            inner = p_or()
            if peek() != ")":
                raise SelectError(f"-k {expr!r}: missing ')'")
            take()
            return inner
        if t in (")", "and", "or"):
            raise SelectError(f"-k {expr!r}: unexpected {t!r}")
        word = take().lower()
        return lambda s: word in s.lower()

    pred = p_or()
    if pos != len(toks):
        raise SelectError(f"-k {expr!r}: unexpected {toks[pos]!r}")
    return pred


# ---- --shard K/N ----------------------------------------------------------------

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 1 <= K <= N; raise SelectError otherwise."""
    m = _SHARD.match(text or "")
    if not m:
        raise SelectError(f"--shard {text!r}: expected K/N, e.g. 2/4 (the 2nd of 4 shards)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise SelectError(f"--shard {text!r}: K must be 1..N and N at least 1")
    return k, n


def shard(cases: list, k: int, n: int, key: Callable[[object], str] = lambda c: c.id) -> list:
    """The K-th of N slices of `cases` (K is 1-based).

    The cases are ordered by id (ids are unique within a smoke file) and dealt
    round-robin, so every case is in exactly one shard, the shards differ in size
    by at most one, and the split depends only on the ids -- not on the machine,
    the order of the file, -j, or the Python hash seed.  The slice keeps the
    file's order.
    """
    ids = sorted(key(c) for c in cases)
    mine = {cid for i, cid in enumerate(ids) if i % n == k - 1}
    return [c for c in cases if key(c) in mine]
