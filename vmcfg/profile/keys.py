"""What a dotted key of `vmcfg set`/`unset` names, and how it is read, written, shown.

`parse_target(KEY)` gives one Target per sort of key: a control (by any alias), a setting,
profile.<name|description|extends|cpu>, raw.<field>, a whole table, or an entry of a table
of free keys (cpuid."0x1".eax, handlers.CPUID).  Each Target parses `KEY=TEXT` by its
setting's kind, knows where it is written in the document, its effective value in a
resolved profile, its completion values and its human form.
"""

from __future__ import annotations

import difflib
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import tomlkit

from ..vmx.config import plain
from ..vmx.kinds import ValueErrorAt, kind_of
from ..vmx.settings import SETTING_BY_PATH, SETTINGS_BY_TABLE, Setting
from ..vmx.table import ALIASES, CONTROL_BY_FIELD_KEY, FIELD_BY_KEY, FIELD_KEYS, Control, resolve_control
from .loader import META_KEYS, Profile, normalize_setting
from .source import parse_key
from .tomldoc import ensure_table, get_table, insert_key, keys_for_control, set_existing
from .values import TEXT_READERS, EditError, int_text, toml_value, truth
from .writer import literal, toml_key, toml_string

if TYPE_CHECKING:
    from .edit import Change, ProfileEditor


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
        return ensure_table(doc, self.table), self.key

    def set_in(self, ed: "ProfileEditor", op: str, text: str, ch: "Change") -> "Change":
        value, lit = self.parse(text)
        tbl, k = self.place(ed.doc, ch)
        if k in tbl:
            set_existing(tbl, k, lit)
            ch.how = "changed"
        else:
            ch.how = insert_key(tbl, k, lit)
        return ch

    def unset_in(self, ed: "ProfileEditor", ch: "Change") -> None:
        tbl = get_table(ed.doc, self.table)
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
        return truth(text, self.display), ""   # literal decided by set_in (inversion)

    def set_in(self, ed, op, text, ch):
        on = truth(text, self.display)
        ctl = self.control
        value = (not on) if self.inverted else on
        raw = get_table(ed.doc, "raw")
        if raw is not None and ctl.field in raw:
            v = int(raw[ctl.field])
            nv = (v | ctl.mask) if value else (v & ~ctl.mask)
            set_existing(raw, ctl.field, f"0x{nv:08x}")
            ch.how = "changed"
            ch.note = f"[{ctl.field}] is given as raw.{ctl.field}: bit {ctl.bit} updated there"
            return ch
        tbl = ensure_table(ed.doc, ctl.field)
        spellings = keys_for_control(tbl, ctl)
        if spellings:
            for k, inv in spellings:
                set_existing(tbl, k, "true" if (value != inv) else "false")
            ch.how = "changed"
            if any(k != ctl.key for k, _ in spellings):
                ch.note = f"written as {', '.join(k for k, _ in spellings)} (the spelling in the file)"
            return ch
        ch.how = insert_key(tbl, ctl.key, "true" if value else "false")
        return ch

    def unset_in(self, ed, ch):
        raw = get_table(ed.doc, "raw")
        if raw is not None and self.control.field in raw:
            raise EditError(f"[{self.control.field}] is given as raw.{self.control.field}; "
                            f"use set {self.control.path}=off, or unset raw.{self.control.field}")
        tbl = get_table(ed.doc, self.table)
        spellings = keys_for_control(tbl, self.control) if tbl is not None else []
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
        v, lit = TEXT_READERS[kind_of(s).edit_as](s, text, self.display)
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
        ok, v = toml_value(text)
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
        n, lit = int_text(text, self.display)
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
        v, lit = TEXT_READERS[kind_of(self.setting).edit_as](self.setting, text, self.display)
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
        top = ensure_table(doc, self.table, super_table=(len(self.sub) == 2))
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
        tbl = get_table(ed.doc, self.table)
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


def parse_value(t: Target, text: str) -> tuple[Any, str]:
    """(TOML-level value, TOML literal) for `t = text`; EditError if it is not acceptable."""
    return t.parse(text)


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
