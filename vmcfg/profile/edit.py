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

What a key names: keys.py; how a value is read: values.py; the changes to the tomlkit
document: tomldoc.py.  Commands do not use the editor directly: they stage edits in a
ProfileTransaction (transaction.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from ..vmx.config import plain
from ..vmx.kinds import kind_of
from ..vmx.settings import SETTING_BY_PATH, Setting
from .keys import SettingTarget, parse_target
from .loader import Profile, load_profile_text, normalize_setting
from .source import ProfileError
from .tomldoc import ensure_table, get_table, insert_key, toml_item
from .values import EditError, list_items, split_top
from .writer import literal


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

    def _list_op(self, t: SettingTarget, op: str, text: str, ch: Change) -> Change:
        s = t.setting
        items = list_items(text)
        for x, _ in items:
            try:
                normalize_setting(s, [x])
            except ValueError as e:
                raise EditError(f"{t.display}: {e}") from None
        tbl = get_table(self.doc, t.table)
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
                    have = _norm_set(s, [toml_item(e).unwrap() for e in elems]) if elems else set()
                    if not _norm_set(s, [x]) <= have:
                        elems.append(lit_x)
            lit = "[" + ", ".join(e for e in elems) + "]"
            tbl = ensure_table(self.doc, t.table)
            ch.how = insert_key(tbl, t.key, lit)
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
                arr.append(toml_item(lit))
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
                        arr.insert(i + j, toml_item(p))
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
    return [x.strip() for x in split_top(literal(s, v)[1:-1]) if x.strip()]
