"""The one size grammar of vmcfg: every option and profile key that takes a size uses it.

    16777216    a number of bytes
    0x1000000   a number of bytes in hex (0o / 0b too; '_' separators allowed)
    16M 16MB 16MiB 16m   with a unit K, M, G or T (binary: K = 1024), optionally
                         followed by B or iB, case-insensitive; "512B" is 512 bytes
"""

from __future__ import annotations

import re
from typing import Any

UNITS: dict[str, int] = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUMBER = r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*"
SIZE_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:([kKmMgGtT])(?:[iI]?[bB])?|[bB])?\s*$")
# The same grammar for JSON Schema ("pattern" of a size string).
SIZE_PATTERN = SIZE_RE.pattern
EXAMPLES = "16M, 16MiB, 0x1000000 or 16777216"


def parse_size(v: Any) -> int:
    """A size in bytes from an int or a string of the grammar (ValueError if neither)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a size like {EXAMPLES}, got {str(v).lower()}")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"a size cannot be negative ({v})")
        return v
    if isinstance(v, str):
        m = SIZE_RE.match(v)
        if m:
            return int(m.group(1).replace("_", ""), 0) * UNITS[(m.group(2) or "").upper()]
    raise ValueError(f"expected a size like {EXAMPLES}, got {v!r}")


def format_size(n: int) -> str:
    """The shortest exact spelling: "16M", "512K", or the number of bytes."""
    for suffix in ("T", "G", "M", "K"):
        unit = UNITS[suffix]
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
