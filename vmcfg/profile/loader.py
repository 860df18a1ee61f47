"""Profiles: load a TOML document, check its shape, follow `extends`.

A Profile holds only what the user wrote (explicit control values, raw
fields, settings), each with the position it was written at; defaults,
forced bits and reserved bits are added when it is resolved against a
capability set (resolve.py).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field as _dcf
from typing import Any

from ..vmx.kinds import normalize, parse_int
from ..vmx.settings import SETTINGS_BY_TABLE, SETTING_TABLES, Setting
from ..vmx.table import CONTROL_BY_FIELD_KEY, FIELD_BY_KEY, FIELD_KEYS, resolve_control
from .source import Pos, ProfileError, load_toml, parse_toml

META_KEYS = ("name", "description", "extends", "cpu")
MAX_EXTENDS_DEPTH = 16


@dataclass
class Profile:
    path: str | None
    name: str = ""
    description: str = ""
    extends: str | None = None
    cpu: str | None = None
    controls: dict[str, dict[str, bool]] = _dcf(default_factory=dict)
    raw: dict[str, int] = _dcf(default_factory=dict)
    settings: dict[str, dict[str, Any]] = _dcf(default_factory=dict)
    pos: dict[str, Pos] = _dcf(default_factory=dict)
    chain: list[str] = _dcf(default_factory=list)   # files, child first

    def where(self, key: str) -> Pos | None:
        """Position of a dotted key (control path, setting path, raw.<field> or a table)."""
        p = self.pos.get(key)
        if p is None and "." in key:
            p = self.pos.get(key.split(".")[0])
        return p


def _err(msg: str, pos: Pos | None, path: str | None) -> ProfileError:
    if pos:
        return ProfileError(msg, pos.path, pos.line, pos.col)
    return ProfileError(msg, path)


# ---- builtin profiles -------------------------------------------------------------

def builtin_dir() -> str:
    """profiles/ of the source tree, or vmcfg/builtin_profiles/ when installed."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(pkg, "builtin_profiles")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(pkg), "profiles")


def builtin_names() -> list[str]:
    d = builtin_dir()
    try:
        return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".toml"))
    except OSError:
        return []


def builtin_path(name: str) -> str | None:
    n = name[len("builtin:"):] if name.startswith("builtin:") else name
    p = os.path.join(builtin_dir(), n + ".toml")
    return p if os.path.isfile(p) else None


def find_profile(spec: str, relative_to: str | None = None) -> str:
    """A path (relative to `relative_to`'s directory when given) or a built-in name."""
    if spec.startswith("builtin:"):
        p = builtin_path(spec)
        if p is None:
            raise ProfileError(f"no built-in profile {spec[8:]!r}; built-in: {', '.join(builtin_names())}")
        return p
    cand = spec
    if relative_to and not os.path.isabs(spec):
        cand = os.path.join(os.path.dirname(relative_to), spec)
    if os.path.exists(cand):
        return cand
    if "/" not in spec and not spec.endswith(".toml"):
        p = builtin_path(spec)
        if p:
            return p
    hint = difflib.get_close_matches(spec, builtin_names(), n=1)
    extra = f" (did you mean the built-in profile {hint[0]!r}?)" if hint else ""
    raise ProfileError(f"no such file or built-in profile{extra}", cand)


# ---- value normalisation ----------------------------------------------------------

def normalize_setting(s: Setting, v: Any) -> Any:
    """Turn a TOML value into the normalised form VmxConfig uses (ValueError if bad)."""
    return normalize(s, v)


# ---- document -> Profile -------------------------------------------------------------

def _unknown(what: str, name: str, choices: list[str]) -> str:
    hint = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"unknown {what} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def from_document(data: dict[str, Any], positions: dict[tuple[str, ...], Pos],
                  path: str | None) -> Profile:
    prof = Profile(path=path)

    def pos(*keys: str) -> Pos | None:
        for n in range(len(keys), 0, -1):
            p = positions.get(tuple(keys[:n]))
            if p:
                return p
        return None

    top_known = ("profile", "raw") + FIELD_KEYS + SETTING_TABLES
    for top, val in data.items():
        if top not in top_known:
            raise _err(_unknown("table", top, list(top_known)) +
                       f"; tables: {', '.join(top_known)}", pos(top), path)
        if not isinstance(val, dict):
            raise _err(f"{top!r} must be a table ([{top}])", pos(top), path)

    meta = data.get("profile", {})
    for k, v in meta.items():
        if k not in META_KEYS:
            raise _err(_unknown("key", k, list(META_KEYS)) + " in [profile]", pos("profile", k), path)
        if not isinstance(v, str):
            raise _err(f"profile.{k} must be a string", pos("profile", k), path)
        setattr(prof, k, v)
        prof.pos[f"profile.{k}"] = pos("profile", k)

    raw = data.get("raw", {})
    for k, v in raw.items():
        if k not in FIELD_BY_KEY:
            raise _err(_unknown("field", k, list(FIELD_KEYS)) + " in [raw]", pos("raw", k), path)
        try:
            prof.raw[k] = parse_int(v, "u64" if FIELD_BY_KEY[k].width == 64 else "u32")
        except ValueError as e:
            raise _err(f"raw.{k}: {e}", pos("raw", k), path) from None
        prof.pos[f"raw.{k}"] = pos("raw", k)

    for fk in FIELD_KEYS:
        table = data.get(fk)
        if table is None:
            continue
        prof.pos.setdefault(fk, pos(fk))
        vals: dict[str, bool] = {}
        for name, v in table.items():
            p = pos(fk, name)
            hits = resolve_control(name, fk)
            if not hits:
                other = resolve_control(name)
                if other:
                    fields = sorted({c.field for c, _ in other})
                    raise _err(f"{name!r} is not a control of [{fk}]; it belongs to "
                               f"[{'], ['.join(fields)}] ({other[0][0].path})", p, path)
                names = list(CONTROL_BY_FIELD_KEY[fk])
                raise _err(_unknown(f"control in [{fk}]", name, names), p, path)
            ctl, inverted = hits[0]
            if not isinstance(v, bool):
                raise _err(f"{fk}.{name} must be true or false, got {v!r}", p, path)
            value = (not v) if inverted else v
            if ctl.key in vals and vals[ctl.key] != value:
                raise _err(f"{fk}.{name} contradicts an earlier spelling of {ctl.path}", p, path)
            vals[ctl.key] = value
            prof.pos[ctl.path] = p
        if fk in prof.raw and vals:
            first = next(iter(vals))
            raise _err(f"[raw] {fk} is given, so the bits of [{fk}] may not be named as well "
                       f"(remove raw.{fk} or the [{fk}] table)", prof.pos[f"{fk}.{first}"], path)
        if vals:
            prof.controls[fk] = vals

    for t in SETTING_TABLES:
        table = data.get(t)
        if table is None:
            continue
        prof.pos.setdefault(t, pos(t))
        specs = SETTINGS_BY_TABLE[t]
        if len(specs) == 1 and specs[0].key == "*":
            try:
                prof.settings[t] = {"*": normalize_setting(specs[0], table)}
            except ValueError as e:
                at = getattr(e, "at", ())
                raise _err(str(e) if at else f"[{t}]: {e}", pos(t, *at), path) from None
            continue
        known = {s.key: s for s in specs}
        out = {}
        for k, v in table.items():
            p = pos(t, k)
            s = known.get(k)
            if s is None:
                raise _err(_unknown(f"setting in [{t}]", k, list(known)) +
                           f"; keys: {', '.join(known)}", p, path)
            try:
                out[k] = normalize_setting(s, v)
            except ValueError as e:
                raise _err(f"{t}.{k}: {e}", p, path) from None
            prof.pos[s.path] = p
        prof.settings[t] = out
    return prof


def load_file(path: str) -> Profile:
    data, positions = load_toml(path)
    return from_document(data, positions, path)


def merge(parent: Profile, child: Profile) -> Profile:
    """child over parent: per control bit, per raw field, per setting key."""
    out = Profile(path=child.path, name=child.name or parent.name,
                  description=child.description or parent.description,
                  extends=child.extends, cpu=child.cpu or parent.cpu)
    out.pos = {**parent.pos, **child.pos}
    out.chain = child.chain + parent.chain
    for fk in FIELD_KEYS:
        if fk in child.raw:
            out.raw[fk] = child.raw[fk]
            continue
        if fk in parent.raw:
            v = parent.raw[fk]
            for k, on in child.controls.get(fk, {}).items():
                m = CONTROL_BY_FIELD_KEY[fk][k].mask
                v = (v | m) if on else (v & ~m)
            out.raw[fk] = v
            continue
        merged = {**parent.controls.get(fk, {}), **child.controls.get(fk, {})}
        if merged:
            out.controls[fk] = merged
    for t in set(parent.settings) | set(child.settings):
        p, c = parent.settings.get(t, {}), child.settings.get(t, {})
        if "*" in p or "*" in c:
            # a child's [cpuid."0x1"] ecx = ... keeps the parent's other registers of that leaf
            pv, cv = p.get("*", {}), c.get("*", {})
            out.settings[t] = {"*": {k: ({**pv[k], **cv[k]} if isinstance(pv.get(k), dict)
                                         and isinstance(cv.get(k), dict)
                                         else cv.get(k, pv.get(k)))
                                     for k in {**pv, **cv}}}
        else:
            out.settings[t] = {**p, **c}
    return out


def load_profile(spec: str, relative_to: str | None = None, _seen: tuple[str, ...] = ()) -> Profile:
    """Load a profile file or built-in name and everything it extends."""
    path = find_profile(spec, relative_to)
    real = os.path.realpath(path)
    if real in _seen:
        cycle = " -> ".join(list(_seen) + [real])
        raise ProfileError(f"'extends' forms a cycle: {cycle}", path)
    if len(_seen) >= MAX_EXTENDS_DEPTH:
        raise ProfileError(f"'extends' chain deeper than {MAX_EXTENDS_DEPTH}", path)
    return _follow_extends(load_file(path), path, _seen + (real,))


def load_profile_text(text: str, path: str) -> Profile:
    """Like load_profile(path), but for `text` as if it were the content of `path`."""
    data, positions = parse_toml(text, path)
    return _follow_extends(from_document(data, positions, path), path,
                           (os.path.realpath(path),))


def _follow_extends(prof: Profile, path: str, seen: tuple[str, ...]) -> Profile:
    prof.chain = [path]
    if prof.extends:
        try:
            parent = load_profile(prof.extends, path, seen)
        except ProfileError as e:
            if e.line is None and e.path != path:
                p = prof.pos.get("profile.extends")
                raise ProfileError(f"extends = {prof.extends!r}: {e.message}"
                                   + (f" ({e.path})" if e.path else ""),
                                   path, p.line if p else None, p.col if p else None) from None
            raise
        prof = merge(parent, prof)
    return prof
