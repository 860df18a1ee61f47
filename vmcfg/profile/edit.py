"""Format-preserving edits of a profile: `vmcfg set` / `vmcfg unset`.

The document is edited with tomlkit, so every byte that is not being changed
-- comments, order, spacing, the spelling of other values -- stays as it was.
Keys are dotted (`<field>.<control>`, `tsc.offset`, `profile.extends`,
`raw.primary`, `cpuid."0x1".eax`, `handlers.CPUID`); a control may be named by
any alias (QEMU `vmx-*`, Linux names, short aliases) and is written under its
canonical key.  Values are parsed according to the settings table's kinds
(on/off for controls, integers in any base, "lo-hi" ranges, exception names,
sizes like "16M") and checked with the loader's own normaliser.  Lists take
`KEY+=VALUE` / `KEY-=VALUE` (port and MSR ranges are split as needed).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Comment, Null, Table, Whitespace

from ..vmx.config import plain
from ..vmx.kinds import ValueErrorAt, kind_of, parse_truth
from ..vmx.settings import SETTING_BY_PATH, SETTINGS_BY_TABLE, Setting
from ..vmx.table import ALIASES, CONTROL_BY_FIELD_KEY, FIELD_BY_KEY, FIELD_KEYS, Control, resolve_control
from .loader import META_KEYS, Profile, load_profile_text, normalize_setting
from .source import ProfileError, parse_key
from .writer import literal, toml_key, toml_string



class EditError(Exception):
    """Bad key or value (exit status 2): nothing is written."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---- loading from text -------------------------------------------------------------------

def parse_key_path(name: str) -> list[str] | None:
    """'cpuid."0x7.0".eax' -> ['cpuid', '0x7.0', 'eax'] (None if not a dotted TOML key)."""
    got = parse_key(name, 0)
    if got is None or got[1] != len(name):
        return None
    return got[0]


# ---- keys ----------------------------------------------------------------------------------

class Target:
    """What a dotted key names in a profile; one subclass per sort of key (a control, a
    setting, a profile.* field, a raw field, a whole table, an entry of a free-key table).
    Each knows how it reads `KEY=TEXT`, where it is written, its effective value and how
    it is shown."""

    is_list = False                 # takes KEY+=VALUE / KEY-=VALUE

    def __init__(self, table: str, key: str | None = None, control: Control | None = None,
                 inverted: bool = False, setting: Setting | None = None,
                 sub: tuple[str, ...] = ()):
        self.table = table
        self.key = key
        self.control = control
        self.inverted = inverted
        self.setting = setting
        self.sub = sub              # star tables: (leaf, reg) or (reason,)

    @property
    def display(self) -> str:
        return f"{self.table}.{self.key}"

    def parse(self, text: str) -> tuple[Any, str]:
        """(TOML-level value, TOML literal) for KEY=text; EditError if not acceptable."""
        raise EditError(f"{self.display} takes no value")

    def place(self, doc, ch: "Change") -> tuple[Any, str]:
        """(table in the document, key in it) where the value is written."""
        return _ensure_table(doc, self.table), self.key

    def set_in(self, ed: "ProfileEditor", op: str, text: str, ch: "Change") -> "Change":
        value, lit = self.parse(text)
        tbl, k = self.place(ed.doc, ch)
        if k in tbl:
            _set_existing(tbl, k, lit)
            ch.how = "changed"
        else:
            ch.how = _insert(tbl, k, lit)
        return ch

    def unset_in(self, ed: "ProfileEditor", ch: "Change") -> None:
        tbl = _get_table(ed.doc, self.table)
        if tbl is not None and self.key in tbl:
            del tbl[self.key]
            ch.how = "removed"
        else:
            ch.how = "unchanged"

    def inherited_in(self, prof: Profile) -> bool:
        """Whether the merged profile `prof` sets this key (from what it extends)."""
        return False

    def effective(self, resolved) -> Any:
        return None

    def choices(self) -> list[str]:
        """Values offered by shell completion after KEY=."""
        return []

    def show(self, v: Any) -> str | None:
        """The human form of an effective value, or None for the plain one."""
        return None


class ControlTarget(Target):
    @property
    def display(self) -> str:
        return self.control.path

    def parse(self, text):
        return _truth(text, self.display), ""   # literal decided by set_in (inversion)

    def set_in(self, ed, op, text, ch):
        on = _truth(text, self.display)
        ctl = self.control
        value = (not on) if self.inverted else on
        raw = _get_table(ed.doc, "raw")
        if raw is not None and ctl.field in raw:
            v = int(raw[ctl.field])
            nv = (v | ctl.mask) if value else (v & ~ctl.mask)
            _set_existing(raw, ctl.field, f"0x{nv:08x}")
            ch.how = "changed"
            ch.note = f"[{ctl.field}] is given as raw.{ctl.field}: bit {ctl.bit} updated there"
            return ch
        tbl = _ensure_table(ed.doc, ctl.field)
        spellings = _keys_for_control(tbl, ctl)
        if spellings:
            for k, inv in spellings:
                _set_existing(tbl, k, "true" if (value != inv) else "false")
            ch.how = "changed"
            if any(k != ctl.key for k, _ in spellings):
                ch.note = f"written as {', '.join(k for k, _ in spellings)} (the spelling in the file)"
            return ch
        ch.how = _insert(tbl, ctl.key, "true" if value else "false")
        return ch

    def unset_in(self, ed, ch):
        raw = _get_table(ed.doc, "raw")
        if raw is not None and self.control.field in raw:
            raise EditError(f"[{self.control.field}] is given as raw.{self.control.field}; "
                            f"use set {self.control.path}=off, or unset raw.{self.control.field}")
        tbl = _get_table(ed.doc, self.table)
        spellings = _keys_for_control(tbl, self.control) if tbl is not None else []
        for k, _ in spellings:
            del tbl[k]
        ch.how = "removed" if spellings else "unchanged"

    def inherited_in(self, prof):
        return self.control.key in prof.controls.get(self.control.field, {})

    def effective(self, resolved):
        return bool(resolved.config.controls.get(self.control.field, 0) & self.control.mask)

    def choices(self):
        return ["on", "off"]


class SettingTarget(Target):
    @property
    def is_list(self) -> bool:
        return kind_of(self.setting).is_list

    def parse(self, text):
        s = self.setting
        v, lit = _TEXT_READERS[kind_of(s).edit_as](s, text, self.display)
        try:
            normalize_setting(s, v)
        except ValueError as e:
            raise EditError(f"{self.display}: {e}") from None
        return v, lit

    def set_in(self, ed, op, text, ch):
        if op != "=":
            return ed._list_op(self, op, text, ch)
        return super().set_in(ed, op, text, ch)

    def inherited_in(self, prof):
        return self.key in prof.settings.get(self.table, {})

    def effective(self, resolved):
        return plain(resolved.config.settings.get(self.table, {}).get(self.key))

    def choices(self):
        return kind_of(self.setting).choices(self.setting)

    def show(self, v):
        s = self.setting
        if kind_of(s).is_ranges:
            v = [tuple(r) for r in v]
        try:
            return literal(s, v)
        except (ValueError, TypeError, KeyError):
            return None


class MetaTarget(Target):
    """profile.name / description / extends / cpu."""

    def parse(self, text):
        ok, v = _toml_value(text)
        s = v if ok and isinstance(v, str) else text
        return s, toml_string(s)

    def effective(self, resolved):
        return getattr(resolved.profile, self.key, None) or None

    def choices(self):
        if self.key == "cpu":
            from ..vmx.models import MODEL_NAMES
            return list(MODEL_NAMES)
        if self.key == "extends":
            from .loader import builtin_names
            return builtin_names()
        return []


class RawTarget(Target):
    """raw.<field>: a whole control field as one number."""

    def parse(self, text):
        n, lit = _int_text(text, self.display)
        width = FIELD_BY_KEY[self.key].width
        if not 0 <= n < (1 << width):
            raise EditError(f"{self.display}: {n:#x} does not fit the {width}-bit field")
        return n, f"0x{n:08x}"

    def effective(self, resolved):
        return resolved.config.controls.get(self.key)

    def show(self, v):
        return f"0x{v:08x}"


class TableTarget(Target):
    """A whole table (`vmcfg unset p.toml tsc`)."""

    @property
    def display(self) -> str:
        return self.table

    def unset_in(self, ed, ch):
        if self.table in ed.doc:
            del ed.doc[self.table]
            ch.how = "removed"
        else:
            ch.how = "unchanged"
            ch.note = f"[{self.table}] is not in the file"

    def effective(self, resolved):
        if self.table in FIELD_BY_KEY:
            return resolved.config.controls.get(self.table)
        return plain(resolved.config.settings.get(self.table))


class StarTarget(Target):
    """An entry of a table of free keys: cpuid."0x1".eax, handlers.CPUID."""

    @property
    def display(self) -> str:
        return ".".join([self.table] + [toml_key(s) for s in self.sub])

    def parse(self, text):
        v, lit = _TEXT_READERS[kind_of(self.setting).edit_as](self.setting, text, self.display)
        doc: Any = v
        for seg in reversed(self.sub):
            doc = {seg: doc}
        try:        # the same checks and messages as the table in a file
            normalize_setting(self.setting, doc)
        except ValueErrorAt as e:     # its message names the key already
            raise EditError(str(e)) from None
        except ValueError as e:
            raise EditError(f"{self.display}: {e}") from None
        return v, lit

    def spelling(self, tbl) -> str:
        """The key in `tbl` (the table in the file) that names the same entry as sub[0]
        ("1" and "0x1" are one CPUID leaf; "10" and "CPUID" one exit reason), else sub[0]."""
        k = kind_of(self.setting)
        want = k.star_key(self.sub[0])
        for have in tbl.keys():
            if str(have) == self.sub[0]:
                return self.sub[0]
        for have in tbl.keys():
            if k.star_key(str(have)) == want:
                return str(have)
        return self.sub[0]

    def place(self, doc, ch):
        top = _ensure_table(doc, self.table, super_table=(len(self.sub) == 2))
        first = self.spelling(top)
        if first != self.sub[0]:
            spelt = ".".join([self.table, toml_key(first)] + [toml_key(x) for x in self.sub[1:]])
            ch.note = f"written as {spelt} (the spelling in the file)"
        if len(self.sub) == 1:
            return top, first
        if first not in top:
            top.append(first, tomlkit.table())
        tbl = top[first]
        if not isinstance(tbl, MutableMapping):
            raise EditError(f"{self.display}: {first!r} is not a table in the file")
        return tbl, self.sub[1]

    def unset_in(self, ed, ch):
        tbl = _get_table(ed.doc, self.table)
        sub = ((self.spelling(tbl),) + self.sub[1:]) if tbl is not None else self.sub
        for s in sub[:-1]:
            tbl = tbl.get(s) if tbl is not None else None
            if tbl is not None and not isinstance(tbl, MutableMapping):
                raise EditError(f"{self.display}: not a table in the file")
        if tbl is not None and sub[-1] in tbl:
            del tbl[sub[-1]]
            ch.how = "removed"
        else:
            ch.how = "unchanged"

    def effective(self, resolved):
        v: Any = resolved.config.settings.get(self.table, {})
        for s in (kind_of(self.setting).star_key(self.sub[0]),) + self.sub[1:]:
            v = v.get(s) if isinstance(v, dict) else None
        return v


def _all_keys() -> list[str]:
    keys = list(ALIASES)
    keys += [p for p, s in SETTING_BY_PATH.items() if s.key != "*"]
    keys += [f"profile.{k}" for k in META_KEYS] + [f"raw.{f}" for f in FIELD_KEYS]
    return keys


def _unknown(name: str) -> EditError:
    hint = difflib.get_close_matches(name.lower(), _all_keys(), n=1, cutoff=0.6)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return EditError(f"unknown key {name!r}{extra}: expected a control (pin.*, primary.*, ... or "
                     f"an alias), a setting (e.g. tsc.offset), profile.<name|description|extends|"
                     f"cpu> or raw.<field>")


def parse_target(name: str, *, allow_table: bool = False) -> Target:
    name = name.strip()
    if not name:
        raise EditError("empty key")
    segs = parse_key_path(name)
    if segs is None:
        segs = [name]
    head = segs[0]
    if head == "profile" and len(segs) == 2:
        if segs[1] not in META_KEYS:
            raise EditError(f"unknown key profile.{segs[1]}; keys: {', '.join(META_KEYS)}")
        return MetaTarget("profile", segs[1])
    if head == "raw" and len(segs) == 2:
        if segs[1] not in FIELD_BY_KEY:
            raise EditError(f"unknown field raw.{segs[1]}; fields: {', '.join(FIELD_KEYS)}")
        return RawTarget("raw", segs[1])
    if len(segs) == 1 and allow_table and (head in FIELD_BY_KEY or head in SETTINGS_BY_TABLE
                                           or head in ("profile", "raw")):
        return TableTarget(head)
    if head in FIELD_BY_KEY and len(segs) == 2:
        hits = resolve_control(segs[1], head)
        if not hits:
            other = resolve_control(segs[1])
            if other:
                raise EditError(f"{segs[1]!r} is not a control of [{head}]; it is "
                                f"{' or '.join(c.path for c, _ in other)}")
            hint = difflib.get_close_matches(segs[1], list(CONTROL_BY_FIELD_KEY[head]), n=1)
            extra = f" (did you mean {head}.{hint[0]}?)" if hint else ""
            raise EditError(f"unknown control {segs[1]!r} in [{head}]{extra}")
        c, inv = hits[0]
        return ControlTarget(head, c.key, c, inv)
    if head in SETTINGS_BY_TABLE:
        specs = SETTINGS_BY_TABLE[head]
        if len(specs) == 1 and specs[0].key == "*":
            k = kind_of(specs[0])
            if len(segs) != 1 + k.star_depth:
                raise EditError(f"[{head}] keys look like {head}.{k.star_example}")
            return StarTarget(head, None, setting=specs[0], sub=tuple(segs[1:]))
        if len(segs) == 2:
            s = SETTING_BY_PATH.get(f"{head}.{segs[1]}")
            if s is None:
                keys = [x.key for x in specs]
                hint = difflib.get_close_matches(segs[1], keys, n=1)
                extra = f" (did you mean {head}.{hint[0]}?)" if hint else ""
                raise EditError(f"unknown setting {segs[1]!r} in [{head}]{extra}; keys: "
                                f"{', '.join(keys)}")
            return SettingTarget(head, s.key, setting=s)
    # a bare control name or vendor alias (possibly containing dots? no: whole name)
    hits = resolve_control(name)
    if len(hits) > 1:
        raise EditError(f"{name!r} is ambiguous: {' or '.join(c.path for c, _ in hits)}; "
                        f"write the table, e.g. {hits[0][0].path}")
    if hits:
        c, inv = hits[0]
        return ControlTarget(c.field, c.key, c, inv)
    raise _unknown(name)


def split_assignment(text: str) -> tuple[str, str, str]:
    """'KEY=VALUE' / 'KEY+=VALUE' / 'KEY-=VALUE' -> (key, op, value)."""
    i = text.find("=")
    if i <= 0:
        raise EditError(f"{text!r}: expected KEY=VALUE (or KEY+=VALUE / KEY-=VALUE for lists)")
    key, value = text[:i], text[i + 1:]
    op = "="
    if key.endswith("+") or key.endswith("-"):
        op = key[-1] + "="
        key = key[:-1]
    key = key.strip()
    if not key:
        raise EditError(f"{text!r}: missing key before {op!r}")
    return key, op, value.strip()


# ---- values --------------------------------------------------------------------------------

# ---- `KEY=TEXT` for each way a setting kind reads text (Kind.edit_as, vmx/kinds.py) ----------

def _read_int(s: Setting, text: str, what: str) -> tuple[Any, str]:
    return _int_text(text, what)


def _read_bool(s: Setting, text: str, what: str) -> tuple[Any, str]:
    v = _truth(text, what)
    return v, "true" if v else "false"


def _read_choice(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = _toml_value(text)
    v = x if ok and isinstance(x, (int, str)) and not isinstance(x, bool) else text.strip()
    if isinstance(v, str) and all(isinstance(c, int) for c in s.choices):
        try:
            v = int(v, 0)
        except ValueError:
            pass
    if isinstance(v, str):
        v = v.lower()
    return v, str(v) if isinstance(v, int) else toml_string(v)


def _read_list(s: Setting, text: str, what: str) -> tuple[Any, str]:
    items = _list_items(text)
    return [x for x, _ in items], "[" + ", ".join(p for _, p in items) + "]"


def _read_scalar(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = _toml_value(text)
    v = x if ok and isinstance(x, (int, str)) and not isinstance(x, bool) else text.strip()
    return v, str(v) if isinstance(v, int) else toml_string(v)


def _read_str(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, x = _toml_value(text)
    v = x if ok and isinstance(x, str) else text
    return v, toml_string(v)


def _read_toml(s: Setting, text: str, what: str) -> tuple[Any, str]:
    ok, v = _toml_value(text)
    if not ok:       # regions and anything structured: TOML syntax only
        raise EditError(f"{what}: expected a TOML value, e.g. "
                        f"[{{ base = 0x0, size = \"16M\", access = \"rwx\" }}]")
    return v, text.strip()


_TEXT_READERS = {"int": _read_int, "bool": _read_bool, "choice": _read_choice,
                 "list": _read_list, "scalar": _read_scalar, "str": _read_str,
                 "toml": _read_toml}


def _toml_value(text: str) -> tuple[bool, Any]:
    if "\n" in text or not text:
        return False, None
    try:
        return True, tomllib.loads(f"v = {text}\n")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def _truth(text: str, what: str) -> bool:
    try:
        return parse_truth(text)
    except ValueError as e:
        raise EditError(f"{what}: {e}") from None


def _int_text(text: str, what: str) -> tuple[int, str]:
    ok, v = _toml_value(text)
    if ok and isinstance(v, int) and not isinstance(v, bool):
        return v, text.strip()
    try:
        n = int(text.strip().replace("_", ""), 0)
    except ValueError:
        raise EditError(f"{what}: expected an integer (decimal, 0x hex, 0o, 0b), got {text!r}") from None
    hexy = text.strip().lower().lstrip("-+").startswith("0x")
    return n, (f"0x{n:x}" if hexy and n >= 0 else str(n))


def _item_literal(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, str):
        return toml_string(x)
    if isinstance(x, list):
        return "[" + ", ".join(_item_literal(i) for i in x) + "]"
    raise EditError(f"unsupported value {x!r}")


def _list_items(text: str) -> list[tuple[Any, str]]:
    """'0x60,"0x70-0x7f"' / '[0x60, 0x64]' / 'PF, UD' -> [(value, literal)]."""
    ok, v = _toml_value(text)
    if ok and isinstance(v, list):
        # keep the user's spelling of each item where we can
        inner = text.strip()[1:-1]
        parts = [p.strip() for p in _split_top(inner)] if inner.strip() else []
        if len(parts) == len(v):
            return [(x, p if _toml_value(p)[0] else _item_literal(x)) for x, p in zip(v, parts)]
        return [(x, _item_literal(x)) for x in v]
    if ok and not isinstance(v, (dict, list)):
        return [(v, text.strip())]
    out = []
    for part in _split_top(text):
        part = part.strip()
        if not part:
            continue
        ok, x = _toml_value(part)
        if ok and isinstance(x, (int, str)) and not isinstance(x, bool):
            out.append((x, part))
        else:
            out.append((part, toml_string(part)))
    return out


def _split_top(s: str) -> list[str]:
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


def parse_value(t: Target, text: str) -> tuple[Any, str]:
    """(TOML-level value, TOML literal) for `t = text`; EditError if it is not acceptable."""
    return t.parse(text)


# ---- tomlkit helpers ------------------------------------------------------------------------

def _item(lit: str):
    return tomlkit.parse(f"v = {lit}\n").item("v")


_PLACEHOLDER = re.compile(r"^\s*#\s*(?P<key>[A-Za-z0-9_\-\"']+)\s*=")


def _container(tbl):
    return tbl.value if isinstance(tbl, Table) else None


def _get_table(doc, name: str):
    """doc[name] if it is a table, None if absent; EditError if it is something else."""
    if name not in doc:
        return None
    t = doc[name]
    if not isinstance(t, MutableMapping):
        raise EditError(f"{name!r} in the file is not a table (expected [{name}])")
    return t


def _ensure_table(doc, name: str, *, super_table: bool = False):
    t = _get_table(doc, name)
    if t is not None:
        return t
    s = doc.as_string()
    if s and not s.endswith("\n\n"):
        doc.add(tomlkit.nl())
        if not s.endswith("\n"):
            doc.add(tomlkit.nl())
    t = tomlkit.table(is_super_table=super_table)
    doc.append(name, t)
    return doc[name]


def _insert(tbl, key: str, lit: str, placeholder_keys: tuple[str, ...] = ()) -> str:
    """Add key = lit to tbl: in place of a commented-out `# key = ...` line if there is
    one, else after the table's last key.  Returns how it was placed."""
    c = _container(tbl)
    item = _item(lit)
    if c is None:            # inline table or super-table proxy: let tomlkit place it
        tbl[key] = item
        return "added"
    body = c.body
    names = set(placeholder_keys) | {key}
    for i, (k, it) in enumerate(body):
        if k is None and isinstance(it, Comment):
            m = _PLACEHOLDER.match(it.as_string())
            if m and m.group("key").strip("\"'") in names:
                line = it.as_string().lstrip()
                code = line[1:].lstrip() if line.startswith("#") else line
                try:
                    parsed = tomlkit.parse(code if code.endswith("\n") else code + "\n")
                    pk = next(iter(parsed))
                    new = parsed.item(pk)
                    new = _with_value(new, lit)
                    indent = it.as_string()[:len(it.as_string()) - len(line)]
                    new.trivia.indent = indent
                    if new.trivia.comment:
                        # keep the trailing comment in the column it was in
                        orig = it.as_string().rstrip("\n")
                        col = orig.rfind(new.trivia.comment)
                        prefix = len(f"{indent}{toml_key(key)} = {lit}")
                        new.trivia.comment_ws = " " * max(2, col - prefix)
                except (TOMLKitError, StopIteration):
                    new = item
                if i + 1 < len(body):
                    c._insert_at(i, key, new)
                    body[i + 1] = (None, Null())
                else:
                    body[i] = (None, Null())
                    c.append(key, new)
                return "uncommented"
    last_kv = None
    last_ph = None
    for i, (k, it) in enumerate(body):
        if k is not None and not isinstance(it, (Table,)) and not getattr(it, "is_table", lambda: False)():
            last_kv = i
        elif k is None and isinstance(it, Comment) and _PLACEHOLDER.match(it.as_string()):
            last_ph = i
    idx = last_kv if last_kv is not None else last_ph
    pos = 0 if idx is None else idx + 1
    if pos < len(body):
        c._insert_at(pos, key, item)
    else:
        if body and isinstance(body[-1][1], Whitespace):
            c._insert_at(len(body) - 1, key, item)
        else:
            c.append(key, item)
    return "added"


def _with_value(old_item, lit: str):
    new = _item(lit)
    new.trivia.indent = old_item.trivia.indent
    new.trivia.comment_ws = old_item.trivia.comment_ws
    new.trivia.comment = old_item.trivia.comment
    new.trivia.trail = old_item.trivia.trail
    return new


def _set_existing(tbl, key: str, lit: str) -> None:
    c = _container(tbl)
    if c is None:
        tbl[key] = _item(lit)
        return
    old = c.item(key)
    tbl[key] = _with_value(old, lit)


def _keys_for_control(tbl, ctl: Control) -> list[tuple[str, bool]]:
    """Spellings in tbl that name ctl: [(key as written, inverted)]."""
    out = []
    for k in list(tbl.keys()):
        for c, inv in resolve_control(str(k), ctl.field):
            if c is ctl:
                out.append((str(k), inv))
    return out


# ---- edits ----------------------------------------------------------------------------------

@dataclass
class Change:
    key: str
    op: str                 # "=", "+=", "-=", "unset"
    text: str = ""          # value as given
    how: str = ""           # "changed", "added", "uncommented", "removed", "unchanged", ...
    note: str = ""
    before: Any = None      # effective values (filled in by the caller)
    after: Any = None

    def to_json(self) -> dict:
        return {"key": self.key, "op": self.op, "value": self.text, "action": self.how,
                "note": self.note, "before": plain(self.before), "after": plain(self.after)}


class ProfileEditor:
    """Apply set/unset operations to one profile's text."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.original = text
        try:
            self.doc = tomlkit.parse(text)
        except TOMLKitError as e:
            raise ProfileError(f"invalid TOML: {e}", path) from None
        self._inherited: Profile | None = None
        self._inherited_loaded = False

    def text(self) -> str:
        return self.doc.as_string()

    # the profile as currently on disk (for += on inherited lists)
    def _current_profile(self) -> Profile | None:
        if not self._inherited_loaded:
            self._inherited_loaded = True
            try:
                self._inherited = load_profile_text(self.original, self.path)
            except ProfileError:
                self._inherited = None
        return self._inherited

    def set(self, key: str, op: str, text: str) -> Change:
        t = parse_target(key)
        ch = Change(t.display, op, text)
        if op != "=" and not t.is_list:
            lists = [s.path for s in SETTING_BY_PATH.values() if kind_of(s).is_list]
            raise EditError(f"{t.display}: {op} works on lists only ({', '.join(lists)})")
        return t.set_in(self, op, text, ch)

    def _list_op(self, t: Target, op: str, text: str, ch: Change) -> Change:
        s = t.setting
        items = _list_items(text)
        for x, _ in items:
            try:
                normalize_setting(s, [x])
            except ValueError as e:
                raise EditError(f"{t.display}: {e}") from None
        tbl = _get_table(self.doc, t.table)
        present = tbl is not None and t.key in tbl
        if not present:
            prof = self._current_profile()
            inherited = prof.settings.get(t.table, {}).get(t.key) if prof else None
            base = list(inherited or [])
            elems = _elements_from_normalized(s, base)
            if op == "-=" and not elems:
                ch.how = "unchanged"
                ch.note = f"{t.display} is not set"
                return ch
            if op == "+=":
                # write the whole new list at once (keeps a placeholder's comment column)
                for x, lit_x in items:
                    have = _norm_set(s, [_item(e).unwrap() for e in elems]) if elems else set()
                    if not _norm_set(s, [x]) <= have:
                        elems.append(lit_x)
            lit = "[" + ", ".join(e for e in elems) + "]"
            tbl = _ensure_table(self.doc, t.table)
            ch.how = _insert(tbl, t.key, lit)
            if base:
                ch.note = "started from the inherited value"
            if op == "+=":
                return ch
        arr = self.doc[t.table][t.key]
        if not isinstance(arr, list):
            raise EditError(f"{t.display} is not a list in the file")
        if op == "+=":
            added = 0
            for x, lit in items:
                cover = _norm_set(s, list(arr))
                if _norm_set(s, [x]) <= cover:
                    continue
                arr.append(_item(lit))
                added += 1
            if ch.how != "added" and ch.how != "uncommented":
                ch.how = "changed" if added else "unchanged"
            if not added:
                ch.note = "already listed"
        else:
            removed = False
            for x, _ in items:
                gone = _norm_set(s, [x])
                i = 0
                while i < len(arr):
                    have = _norm_set(s, [arr[i]])
                    if not have & gone:
                        i += 1
                        continue
                    removed = True
                    rest = have - gone
                    del arr[i]
                    pieces = _pieces(s, rest)
                    for j, p in enumerate(pieces):
                        arr.insert(i + j, _item(p))
                    i += len(pieces)
            if ch.how not in ("added", "uncommented"):
                ch.how = "changed" if removed else "unchanged"
            if not removed:
                ch.note = "not listed"
        return ch

    def unset(self, key: str) -> Change:
        t = parse_target(key, allow_table=True)
        ch = Change(t.display, "unset")
        t.unset_in(self, ch)
        if ch.how == "unchanged" and not ch.note:
            ch.note = f"{t.display} is not set in this file"
            prof = self._current_profile()
            if prof is not None and prof.extends and t.inherited_in(prof):
                ch.note += f" (its value is inherited from {prof.extends!r}; set it to override)"
        return ch


def _norm_set(s: Setting, items: list) -> set[int]:
    """The set of ports/MSRs/vectors/values that `items` denote."""
    vals = normalize_setting(s, [i.unwrap() if hasattr(i, "unwrap") else i for i in items])
    if kind_of(s).is_ranges:
        out: set[int] = set()
        for lo, hi in vals:
            if hi - lo > 1 << 20:
                raise EditError(f"{s.path}: range {lo:#x}-{hi:#x} too large to edit with += / -=")
            out.update(range(lo, hi + 1))
        return out
    return set(vals)


def _pieces(s: Setting, values: set[int]) -> list[str]:
    """Literals for a set of values (ranges re-formed for ports/MSRs)."""
    if not values:
        return []
    if kind_of(s).is_ranges:
        out, vs = [], sorted(values)
        lo = prev = vs[0]
        for v in vs[1:]:
            if v == prev + 1:
                prev = v
                continue
            out.append((lo, prev))
            lo = prev = v
        out.append((lo, prev))
        return [literal(s, [r])[1:-1] for r in out]
    return [literal(s, [v])[1:-1] for v in sorted(values)]


def _elements_from_normalized(s: Setting, v: list) -> list[str]:
    if not v:
        return []
    return [x.strip() for x in _split_top(literal(s, v)[1:-1]) if x.strip()]


# ---- effective values for before/after summaries -------------------------------------------

def effective_value(resolved, key: str) -> Any:
    """The effective value of `key` in a Resolved profile (None if not applicable)."""
    try:
        t = parse_target(key, allow_table=True)
    except EditError:
        return None
    return t.effective(resolved)


def set_key_names() -> list[str]:
    """Keys offered by shell completion for `vmcfg set` (canonical spellings only)."""
    from ..vmx.table import CONTROLS
    out = [c.path for c in CONTROLS]
    out += [s.path for s in SETTING_BY_PATH.values() if s.key != "*"]
    out += [f"profile.{k}" for k in META_KEYS] + [f"raw.{f}" for f in FIELD_KEYS]
    return out


def value_choices(key: str) -> list[str]:
    """Values offered by shell completion after KEY=."""
    try:
        return parse_target(key).choices()
    except EditError:
        return []


def display_value(key: str, v: Any) -> str:
    """Human form of an effective value (as effective_value returns it)."""
    if v is None:
        return "(unset)"
    if isinstance(v, bool):
        return "on" if v else "off"
    try:
        shown = parse_target(key, allow_table=True).show(v)
    except EditError:
        shown = None
    if shown is not None:
        return shown
    if isinstance(v, int):
        return str(v) if -0x10000 < v < 0x10000 else f"0x{v:x}"
    if isinstance(v, str):
        return toml_string(v)
    return str(v)


def validate_text(text: str, path: str, cpu: str | None = None,
                  caps_file: str | None = None, caps=None):
    """Load `text` as the profile at `path` and check it.

    Returns (resolved, None) or (None, ProfileError) when the text cannot be
    loaded as a profile (bad TOML, unknown key, bad extends, unknown cpu).
    """
    from .resolve import load_caps, resolve_profile
    try:
        prof = load_profile_text(text, path)
        c = caps if caps is not None else load_caps(cpu, caps_file, prof)
        return resolve_profile(prof, c), None
    except ProfileError as e:
        return None, e
