"""How `vmcfg set KEY=TEXT` reads TEXT: one reader per way a setting kind reads text
(`Kind.edit_as` in vmx/kinds.py), and the small parsers they share (integers in any base,
on/off, lists as `0x60,0x64`, `PF,UD` or TOML)."""

from __future__ import annotations

import tomllib
from typing import Any

from ..vmx.kinds import parse_truth
from ..vmx.settings import Setting
from .writer import toml_string


class EditError(Exception):
    """Bad key or value (exit status 2): nothing is written."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---- `KEY=TEXT` for each way a setting kind reads text (Kind.edit_as, vmx/kinds.py) ----------

def read_int(s: Setting, text: str, what: str) -> tuple[Any, str]:
    return int_text(text, what)


def read_bool(s: Setting, text: str, what: str) -> tuple[Any, str]:
    v = truth(text, what)
    return v, "true" if v else "false"


def read_choice(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = toml_value(text)
    v = x if ok and isinstance(x, (int, str)) and not isinstance(x, bool) else text.strip()
    if isinstance(v, str) and all(isinstance(c, int) for c in s.choices):
        try:
            v = int(v, 0)
        except ValueError:
            pass
    if isinstance(v, str):
        v = v.lower()
    return v, str(v) if isinstance(v, int) else toml_string(v)


def read_list(s: Setting, text: str, what: str) -> tuple[Any, str]:
    items = list_items(text)
    return [x for x, _ in items], "[" + ", ".join(p for _, p in items) + "]"


def read_scalar(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = toml_value(text)
    v = x if ok and isinstance(x, (int, str)) and not isinstance(x, bool) else text.strip()
    return v, str(v) if isinstance(v, int) else toml_string(v)


def read_str(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = toml_value(text)
    v = x if ok and isinstance(x, str) else text
    return v, toml_string(v)


def read_toml(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, v = toml_value(text)
    if not ok:       # regions and anything structured: TOML syntax only
        raise EditError(f"{what}: expected a TOML value, e.g. "
                        f"[{{ base = 0x0, size = \"16M\", access = \"rwx\" }}]")
    return v, text.strip()


TEXT_READERS = {"int": read_int, "bool": read_bool, "choice": read_choice,
                 "list": read_list, "scalar": read_scalar, "str": read_str,
                 "toml": read_toml}


def toml_value(text: str) -> tuple[bool, Any]:
    if "\n" in text or not text:
        return False, None
    try:
        return True, tomllib.loads(f"v = {text}\n")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def truth(text: str, what: str) -> bool:
    try:
        return parse_truth(text)
    except ValueError as e:
        raise EditError(f"{what}: {e}") from None


def int_text(text: str, what: str) -> tuple[int, str]:
    ok, v = toml_value(text)
    if ok and isinstance(v, int) and not isinstance(v, bool):
        return v, text.strip()
    try:
        n = int(text.strip().replace("_", ""), 0)
    except ValueError:
        raise EditError(f"{what}: expected an integer (decimal, 0x hex, 0o, 0b), got {text!r}") from None
    hexy = text.strip().lower().lstrip("-+").startswith("0x")
    return n, (f"0x{n:x}" if hexy and n >= 0 else str(n))


def item_literal(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, str):
        return toml_string(x)
    if isinstance(x, list):
        return "[" + ", ".join(item_literal(i) for i in x) + "]"
    raise EditError(f"unsupported value {x!r}")


def list_items(text: str) -> list[tuple[Any, str]]:
    """'0x60,"0x70-0x7f"' / '[0x60, 0x64]' / 'PF, UD' -> [(value, literal)]."""
    ok, v = toml_value(text)
    if ok and isinstance(v, list):
        # keep the user's spelling of each item where we can
        inner = text.strip()[1:-1]
        parts = [p.strip() for p in split_top(inner)] if inner.strip() else []
        if len(parts) == len(v):
            return [(x, p if toml_value(p)[0] else item_literal(x)) for x, p in zip(v, parts)]
        return [(x, item_literal(x)) for x in v]
    if ok and not isinstance(v, (dict, list)):
        return [(v, text.strip())]
    out = []
    for part in split_top(text):
        part = part.strip()
        if not part:
            continue
        ok, x = toml_value(part)
        if ok and isinstance(x, (int, str)) and not isinstance(x, bool):
            out.append((x, part))
        else:
            out.append((part, toml_string(part)))
    return out


def split_top(s: str) -> list[str]:
    parts, depth, cur, q = [], 0, "", None
    for ch in s:
        if q:
            cur += ch
            if ch == q:
                q = None
            continue
        if ch in "\"'":
            q = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return parts
