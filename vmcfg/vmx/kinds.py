"""Setting kinds as data: one class per kind of setting value (settings.py `kind`).

Each kind knows how to
- `parse(s, v)`: check a TOML value and return its normalised form (ValueError if bad);
- `schema(s)`: its JSON Schema (the profile schema, `vmcfg schema`);
- `literal(s, v)`: the TOML literal of a normalised value (`vmcfg new`, `vmcfg set`);
- `edit_as`: how `vmcfg set KEY=TEXT` reads the text ("int", "bool", "choice", "list",
  "scalar", "str" or "toml").
The profile loader, the writer, the editor and the schema use these classes; no
layer switches over kind names.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from typing import Any

from .config import merge_ranges
from .exits import LAST_EXCEPTION_VECTOR
from .registers import CPUID_REGS
from .settings import INT_RANGES, VECTOR_NAMES, Setting
from .sizes import SIZE_PATTERN, format_size, parse_size

NUMBER_PATTERN = r"(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9_]+)"
RANGE_PATTERN = rf"^\s*{NUMBER_PATTERN}\s*-\s*{NUMBER_PATTERN}\s*$"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
VECTOR_BY_NUMBER: dict[int, str] = {}
for _n, _v in VECTOR_NAMES.items():
    VECTOR_BY_NUMBER.setdefault(_v, _n)


# ---- TOML literals -----------------------------------------------------------------------

def toml_string(s: str) -> str:
    """A TOML basic string for s."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(k: str) -> str:
    """A TOML key: bare where it can be, else quoted."""
    return k if _BARE_KEY.match(k) else toml_string(k)


def toml_int(v: int, hex_: bool = False) -> str:
    return f"0x{v:x}" if hex_ and v >= 0 else str(v)


def toml_size(v: int) -> str:
    text = format_size(v)
    return text if text.isdigit() else toml_string(text)


# ---- shared value checks -------------------------------------------------------------------

TRUE_WORDS = frozenset({"on", "true", "yes", "y", "1", "enable", "enabled"})
FALSE_WORDS = frozenset({"off", "false", "no", "n", "0", "disable", "disabled"})


def parse_truth(text: str) -> bool:
    """on/off, true/false, yes/no, 1/0, enable(d)/disable(d) (ValueError otherwise)."""
    t = text.strip().lower()
    if t in TRUE_WORDS or t in FALSE_WORDS:
        return t in TRUE_WORDS
    raise ValueError(f"expected on/off (true/false, yes/no, 1/0), got {text!r}")


def parse_int(v: Any, kind: str = "u64") -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected an integer, got {str(v).lower()}")
    if isinstance(v, str):
        try:
            v = int(v.replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"expected an integer, got {v!r}") from None
    if not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    lo, hi = INT_RANGES[kind]
    if not lo <= v <= hi:
        raise ValueError(f"{v} is out of range for {kind} ({lo}..{hi:#x})")
    return v


def _int_schema(kind: str) -> dict:
    lo, hi = INT_RANGES[kind]
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _size_schema() -> dict:
    return {"anyOf": [{"type": "integer", "minimum": 1},
                      {"type": "string", "pattern": SIZE_PATTERN}]}


class ValueErrorAt(ValueError):
    """A bad value whose fault lies at a key inside it: `at` is the key path below the setting
    (the loader reports the position of that key, e.g. cpuid."0x1".ecx)."""

    def __init__(self, msg: str, at: tuple[str, ...] = ()):
        super().__init__(msg)
        self.at = tuple(str(a) for a in at)


class Kind:
    name = ""
    edit_as = "toml"
    is_list = False      # a list value: `vmcfg set KEY+=ITEM` / `-=` apply
    is_ranges = False    # a list of ranges: items may be split and merged
    # a whole table of free keys ([cpuid."0x1"] eax = ..., [handlers] CPUID = ...): how many
    # key segments below the table name one value, and an example of them
    star_depth = 0
    star_example = ""

    def parse(self, s: Setting, v: Any) -> Any:
        raise ValueError(f"unsupported kind {self.name}")

    def schema(self, s: Setting) -> dict:
        return {}

    def literal(self, s: Setting, v: Any) -> str:
        raise ValueError(f"no single-line literal for kind {self.name}")

    def choices(self, s: Setting) -> list[str]:
        """The values to offer after `vmcfg set KEY=` (shell completion)."""
        return []

    def implied(self, s: Setting) -> Any:
        """The value `vmcfg new --want KEY` (no value) means: the default."""
        return copy.deepcopy(s.default)

    def star_key(self, key: str) -> str:
        """The one spelling of a free key of a star table (the normalised value's key):
        two spellings of one key ("1" and "0x1") edit one entry."""
        return key

    def table_lines(self, table: str, value: Any) -> list[str]:
        """A star table's normalised value as TOML lines (header(s) and entries)."""
        raise ValueError(f"kind {self.name} is not a table of free keys")


class IntKind(Kind):
    edit_as = "int"

    def __init__(self, name: str):
        self.name = name

    def parse(self, s, v):
        return parse_int(v, self.name)

    def schema(self, s):
        return _int_schema(self.name)

    def literal(self, s, v):
        return toml_int(v, self.name == "u64" or v >= 0x10000)


class BoolKind(Kind):
    name, edit_as = "bool", "bool"

    def parse(self, s, v):
        if not isinstance(v, bool):
            raise ValueError(f"expected true or false, got {v!r}")
        return v

    def schema(self, s):
        return {"type": "boolean"}

    def literal(self, s, v):
        return "true" if v else "false"

    def choices(self, s):
        return ["on", "off"]

    def implied(self, s):
        return True


class EnumKind(Kind):
    name, edit_as = "enum", "choice"

    def parse(self, s, v):
        choices = s.choices
        if isinstance(v, str) and all(isinstance(c, int) for c in choices):
            try:
                v = int(v)
            except ValueError:
                pass
        if isinstance(v, str):
            v = v.lower()
        if v not in choices or isinstance(v, bool):
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        return v

    def schema(self, s):
        return {"enum": list(s.choices)}

    def literal(self, s, v):
        return str(v) if isinstance(v, int) else toml_string(str(v))

    def choices(self, s):
        return [str(c) for c in s.choices]


class VectorsKind(Kind):
    """Exception vectors 0-31 by number or name ("PF", "#UD")."""
    name, edit_as, is_list = "vectors", "list", True

    def parse(self, s, v):
        out = set()
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, str) and not item.strip().lstrip("#").isdigit() \
                    and not item.startswith("0x"):
                name = item.strip().lstrip("#").upper()
                if name not in VECTOR_NAMES:
                    hint = difflib.get_close_matches(name, list(VECTOR_NAMES), n=1)
                    raise ValueError(f"unknown exception {item!r}" +
                                     (f" (did you mean {hint[0]!r}?)" if hint else "") +
                                     f"; names: {', '.join(VECTOR_NAMES)}")
                out.add(VECTOR_NAMES[name])
            else:
                n = parse_int(item.lstrip("#") if isinstance(item, str) else item)
                if n > LAST_EXCEPTION_VECTOR:
                    raise ValueError(f"exception vector {n} is out of range "
                                     f"(0-{LAST_EXCEPTION_VECTOR})")
                out.add(n)
        return sorted(out)

    def schema(self, s):
        names = list(VECTOR_NAMES) + [f"#{n}" for n in VECTOR_NAMES]
        names += [n.lower() for n in names]
        item = {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": LAST_EXCEPTION_VECTOR},
            {"type": "string", "enum": names},
            {"type": "string", "pattern": r"^#?([0-9]|[12][0-9]|3[01])$"},
        ]}
        return {"anyOf": [item, {"type": "array", "items": item}]}

    def literal(self, s, v):
        return "[" + ", ".join(toml_string(VECTOR_BY_NUMBER[x]) if x in VECTOR_BY_NUMBER
                               else str(x) for x in v) + "]"


class RangesKind(Kind):
    """Numbers and "lo-hi" ranges up to a limit (I/O ports, MSRs), merged and sorted."""
    edit_as, is_list, is_ranges = "list", True, True

    def __init__(self, name: str, limit: int, what: str):
        self.name, self.limit, self.what = name, limit, what

    def parse(self, s, v):
        out = []
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, str) and "-" in item.strip()[1:]:
                a, b = item.split("-", 1)
                lo, hi = parse_int(a.strip()), parse_int(b.strip())
            elif isinstance(item, list) and len(item) == 2:
                lo, hi = parse_int(item[0]), parse_int(item[1])
            else:
                lo = hi = parse_int(item)
            if lo > hi:
                raise ValueError(f"range {lo:#x}-{hi:#x} is empty")
            if hi > self.limit:
                raise ValueError(f"{self.what} {hi:#x} is out of range (0..{self.limit:#x})")
            out.append((lo, hi))
        return merge_ranges(out)

    def schema(self, s):
        item = {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": self.limit},
            {"type": "string", "pattern": RANGE_PATTERN,
             "description": f"a {self.what} range \"lo-hi\""},
            {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": self.limit},
             "minItems": 2, "maxItems": 2},
        ]}
        return {"anyOf": [item, {"type": "array", "items": item}]}

    def literal(self, s, v):
        return "[" + ", ".join(toml_int(lo, True) if lo == hi
                               else toml_string(f"0x{lo:x}-0x{hi:x}") for lo, hi in v) + "]"


class U64ListKind(Kind):
    name, edit_as, is_list = "u64list", "list", True

    def parse(self, s, v):
        if not isinstance(v, list):
            raise ValueError("expected a list of integers")
        return [parse_int(x) for x in v]

    def schema(self, s):
        return {"type": "array", "items": _int_schema("u64")}

    def literal(self, s, v):
        return "[" + ", ".join(toml_int(x, True) for x in v) + "]"


class SizeKind(Kind):
    name, edit_as = "size", "scalar"

    def parse(self, s, v):
        n = parse_size(v)
        if n <= 0:
            raise ValueError("size must be positive")
        return n

    def schema(self, s):
        return _size_schema()

    def literal(self, s, v):
        return toml_size(v)


class StrKind(Kind):
    name, edit_as = "str", "str"

    def parse(self, s, v):
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {v!r}")
        return v

    def schema(self, s):
        return {"type": "string"}

    def literal(self, s, v):
        return toml_string(v)


class RegionsKind(Kind):
    """EPT regions: [{base, size, access = "rwx"}]."""
    name = "regions"

    def parse(self, s, v):
        if not isinstance(v, list):
            raise ValueError("expected a list of tables {base, size, access}")
        out = []
        for r in v:
            if not isinstance(r, dict):
                raise ValueError("each region is a table {base = ..., size = ..., access = \"rwx\"}")
            extra = set(r) - {"base", "size", "access"}
            if extra:
                raise ValueError(f"unknown region key(s): {', '.join(sorted(extra))}")
            if "base" not in r or "size" not in r:
                raise ValueError("a region needs base and size")
            acc = str(r.get("access", "rwx")).lower()
            if set(acc) - set("rwx-"):
                raise ValueError(f"access must use the letters r, w, x (got {acc!r})")
            out.append({"base": parse_int(r["base"]), "size": parse_size(r["size"]),
                        "access": "".join(c for c in "rwx" if c in acc)})
        return out

    def schema(self, s):
        return {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["base", "size"],
            "properties": {"base": _int_schema("u64"), "size": _size_schema(),
                           "access": {"type": "string", "pattern": "^[rwxRWX-]*$",
                                      "description": "r, w, x (default \"rwx\")"}}}}

    def literal(self, s, v):
        return "[" + ", ".join(
            f"{{ base = {toml_int(r['base'], True)}, size = {toml_size(r['size'])}, "
            f"access = {toml_string(r['access'])} }}" for r in v) + "]"


class CpuidKind(Kind):
    """[cpuid."leaf"] / [cpuid."leaf.subleaf"] tables of eax/ebx/ecx/edx.

    The normalised form maps "0x<leaf>" or "0x<leaf>.<subleaf>" (hex leaf, decimal subleaf) to
    {register: u32}; registers not written keep the CPU model's value.
    """
    name, edit_as, star_depth, star_example = "cpuid", "int", 2, '"0x1".eax'
    FIX = 'write one table per leaf, e.g. [cpuid."0x1"] ecx = 0x80000000 or [cpuid."0x7.0"] ebx = 0x1'

    @staticmethod
    def leaf_key(text: str) -> tuple[str, int, int | None]:
        """'7', '0x7' or '0x7.0' -> ('0x7[.0]', leaf, subleaf or None) (ValueError if bad)."""
        parts = str(text).strip().split(".")
        try:
            if len(parts) > 2 or any(p.strip() != p or p.startswith(("-", "+")) for p in parts):
                raise ValueError
            nums = [int(p.replace("_", ""), 0) for p in parts]
        except ValueError:
            raise ValueError(f"CPUID leaf {text!r} is not a leaf number: write it as \"0x1\" "
                             "(leaf) or \"0x7.0\" (leaf.subleaf), hex or decimal") from None
        for what, n in zip(("leaf", "subleaf"), nums):
            if n > 0xFFFFFFFF:
                raise ValueError(f"CPUID {what} {n:#x} in {text!r} does not fit in 32 bits "
                                 "(0..0xffffffff)")
        sub = nums[1] if len(nums) == 2 else None
        return f"{nums[0]:#x}" + (f".{sub}" if sub is not None else ""), nums[0], sub

    def parse(self, s, v):
        if not isinstance(v, dict):
            raise ValueError(f"expected one sub-table per leaf: {self.FIX}")
        out: dict[str, dict[str, int]] = {}
        seen: dict[str, str] = {}
        for leaf, regs in v.items():
            try:
                key, _leaf, _sub = self.leaf_key(leaf)
            except ValueError as e:
                raise ValueErrorAt(str(e), (leaf,)) from None
            if not isinstance(regs, dict):
                raise ValueErrorAt(f"CPUID leaf {leaf!r} must be a table of registers, not a "
                                   f"single value: {self.FIX}", (leaf,))
            if key in seen:
                raise ValueErrorAt(f"CPUID leaf {leaf!r} is the same leaf as {seen[key]!r}: "
                                   "merge the two tables into one", (leaf,))
            seen[key] = str(leaf)
            regs_out = {}
            for r, x in regs.items():
                if r not in CPUID_REGS:
                    hint = difflib.get_close_matches(str(r), CPUID_REGS, n=1, cutoff=0.5)
                    raise ValueErrorAt(
                        f"CPUID leaf {leaf!r}: unknown register {r!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; registers: {', '.join(CPUID_REGS)}", (leaf, r))
                try:
                    regs_out[r] = parse_int(x, "u32")
                except ValueError as e:
                    why = (f"{x:#x} does not fit in the 32-bit register" if isinstance(x, int)
                           and not isinstance(x, bool) else str(e))
                    raise ValueErrorAt(f"cpuid.\"{leaf}\".{r}: {why}: write an integer "
                                       "0..0xffffffff", (leaf, r)) from None
            out[key] = regs_out
        return out

    def star_key(self, key):
        try:
            return self.leaf_key(key)[0]
        except ValueError:
            return key

    def table_lines(self, table, value):
        out = []
        for leaf, regs in value.items():
            out.append(f"[{table}.{toml_string(leaf)}]")
            out += [f"{r} = 0x{v:x}" for r, v in regs.items()]
        return out

    def schema(self, s):
        reg = dict(_int_schema("u32"), description="the register's value (32 bits)")
        return {"type": "object", "title": s.title, "description": s.meaning,
                "propertyNames": {"pattern": rf"^{NUMBER_PATTERN}(\.{NUMBER_PATTERN})?$"},
                "additionalProperties": {
                    "type": "object", "additionalProperties": False,
                    "description": "one CPUID leaf (\"0x1\") or leaf.subleaf (\"0x7.0\")",
                    "properties": {r: reg for r in CPUID_REGS}}}


class HandlersKind(Kind):
    """REASON = "module:function" (a reason by name or number)."""
    name, edit_as, star_depth, star_example = "handlers", "str", 1, "CPUID"

    def star_key(self, key):
        from .exits import lookup_exit
        r = lookup_exit(key)
        return r.name if r is not None else key

    def table_lines(self, table, value):
        return [f"[{table}]"] + [f"{toml_key(k)} = {toml_string(v)}" for k, v in value.items()]

    def parse(self, s, v):
        from .exits import lookup_exit
        if not isinstance(v, dict):
            raise ValueError("expected REASON = \"module:function\" entries")
        out = {}
        for reason, target in v.items():
            r = lookup_exit(str(reason))
            if r is None:
                raise ValueError(f"unknown exit reason {reason!r}")
            if not isinstance(target, str) or ":" not in target:
                raise ValueError(f"handler for {reason} must be \"module:function\"")
            out[r.name] = target
        return out

    def schema(self, s):
        from .exits import EXIT_REASONS
        return {"type": "object", "title": s.title, "description": s.meaning,
                "propertyNames": {"anyOf": [{"enum": [r.name for r in EXIT_REASONS]},
                                            {"pattern": r"^[0-9]+$"}]},
                "additionalProperties": {"type": "string",
                                         "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"}}


KINDS: dict[str, Kind] = {k.name: k for k in (
    *(IntKind(n) for n in INT_RANGES), BoolKind(), EnumKind(), VectorsKind(),
    RangesKind("ports", 0xFFFF, "port"), RangesKind("msrs", 0xFFFFFFFF, "MSR"),
    RangesKind("irq_vectors", 0xFF, "interrupt vector"),
    U64ListKind(), SizeKind(), StrKind(), RegionsKind(), CpuidKind(), HandlersKind())}


def kind_of(s: Setting) -> Kind:
    return KINDS[s.kind]


def normalize(s: Setting, v: Any) -> Any:
    """A TOML value in the normalised form VmxConfig uses (None stays None; ValueError if bad)."""
    return None if v is None else kind_of(s).parse(s, v)
