"""A JSON Schema of the profile format, generated from the control and settings tables.

For editors' TOML plug-ins (Taplo / Even Better TOML: `#:schema` directive or a
`[[rule]]` in .taplo.toml) to complete and check profiles.  Only keywords that
JSON Schema draft 4 already had are used (plus draft-6 `propertyNames`), so
older validators read it too.  Vendor aliases of controls are accepted but
hidden from completion (`x-taplo.hidden`) and marked `deprecated`, since
profiles should use the canonical names.
"""

from __future__ import annotations

from typing import Any

from .models import MODEL_NAMES
from .sizes import SIZE_PATTERN
from .settings import INT_RANGES, SETTINGS_BY_TABLE, SETTING_TABLES, VECTOR_NAMES, Setting
from .table import CONTROLS_BY_FIELD, FIELDS, _norm

SCHEMA_ID = "urn:vmcfg:schema:profile"
_NUM = r"(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9_]+)"
RANGE_PATTERN = rf"^\s*{_NUM}\s*-\s*{_NUM}\s*$"


def _int(kind: str) -> dict:
    lo, hi = INT_RANGES[kind]
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _range_list(hi: int, what: str) -> dict:
    item = {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": hi},
        {"type": "string", "pattern": RANGE_PATTERN, "description": f"a {what} range \"lo-hi\""},
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": hi},
         "minItems": 2, "maxItems": 2},
    ]}
    return {"anyOf": [item, {"type": "array", "items": item}]}


def _vectors() -> dict:
    names = list(VECTOR_NAMES) + [f"#{n}" for n in VECTOR_NAMES]
    names += [n.lower() for n in names]
    item = {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 31},
        {"type": "string", "enum": names},
        {"type": "string", "pattern": r"^#?([0-9]|[12][0-9]|3[01])$"},
    ]}
    return {"anyOf": [item, {"type": "array", "items": item}]}


def _size() -> dict:
    return {"anyOf": [{"type": "integer", "minimum": 1},
                      {"type": "string", "pattern": SIZE_PATTERN}]}


def _setting_schema(s: Setting) -> dict:
    k = s.kind
    if k in INT_RANGES:
        out = _int(k)
    elif k == "bool":
        out = {"type": "boolean"}
    elif k == "enum":
        out = {"enum": list(s.choices)}
    elif k == "vectors":
        out = _vectors()
    elif k == "ports":
        out = _range_list(0xFFFF, "port")
    elif k == "msrs":
        out = _range_list(0xFFFFFFFF, "MSR")
    elif k == "u64list":
        out = {"type": "array", "items": _int("u64")}
    elif k == "size":
        out = _size()
    elif k == "str":
        out = {"type": "string"}
    elif k == "regions":
        out = {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["base", "size"],
            "properties": {"base": _int("u64"), "size": _size(),
                           "access": {"type": "string", "pattern": "^[rwxRWX-]*$",
                                      "description": "r, w, x (default \"rwx\")"}}}}
    else:
        out = {}
    desc = s.meaning or s.title
    if s.needs:
        desc += f" (takes effect with {s.needs} = true)"
    if s.vmcs is not None:
        desc += f" [VMCS 0x{s.vmcs:04X}]"
    out = {"title": s.title, "description": desc, **out}
    if s.default is not None and not isinstance(s.default, (dict,)):
        out["default"] = s.default
    return out


def _star_schema(table: str, s: Setting) -> dict:
    if s.kind == "cpuid":
        reg = {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}
        return {"type": "object", "title": s.title, "description": s.meaning,
                "propertyNames": {"pattern": rf"^{_NUM}(\.{_NUM})?$"},
                "additionalProperties": {"type": "object", "additionalProperties": False,
                                         "properties": {r: reg for r in
                                                        ("eax", "ebx", "ecx", "edx")}}}
    if s.kind == "handlers":
        from .exits import EXIT_REASONS
        names = [r.name for r in EXIT_REASONS]
        return {"type": "object", "title": s.title, "description": s.meaning,
                "propertyNames": {"anyOf": [{"enum": names}, {"pattern": r"^[0-9]+$"}]},
                "additionalProperties": {"type": "string",
                                         "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"}}
    return {"type": "object"}


def _control_props(field: str) -> dict:
    props: dict[str, Any] = {}
    for c in CONTROLS_BY_FIELD[field]:
        extra = []
        if c.default1:
            extra.append("reserved-as-1 without TRUE capability MSRs")
        if c.qemu:
            extra.append(f"QEMU: {c.qemu}" + (" (inverse sense)" if c.qemu_inverted else ""))
        desc = f"{c.meaning} (bit {c.bit}" + (f"; {'; '.join(extra)}" if extra else "") + ")"
        props[c.key] = {"type": "boolean", "title": c.title, "description": desc}
    for c in CONTROLS_BY_FIELD[field]:
        for alias, inv in [(c.qemu, c.qemu_inverted), (c.linux, False)] + \
                [(a, False) for a in c.aliases]:
            if not alias or alias in props or _norm(alias) == c.key:
                continue
            sense = " with inverted sense" if inv else ""
            props[alias] = {"type": "boolean", "deprecated": True,
                            "description": f"Alias of {c.key}{sense}; write {c.key} instead.",
                            "x-taplo": {"hidden": True}}
    return props


def profile_schema() -> dict:
    """The JSON Schema (a dict) of a vmcfg profile."""
    props: dict[str, Any] = {
        "profile": {
            "type": "object", "title": "Profile metadata", "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "description": "Name of the profile."},
                "description": {"type": "string", "description": "One-line description."},
                "extends": {"type": "string",
                            "description": "Parent profile: a file (relative to this one) or "
                                           "a built-in profile name; this profile overrides it "
                                           "key by key."},
                "cpu": {"type": "string", "enum": list(MODEL_NAMES),
                        "description": "CPU model checked against by default (vmcfg cpus)."},
            }},
        "raw": {
            "type": "object", "title": "Raw control-field values",
            "description": "Whole control fields as numbers (then the field's table may not "
                           "name bits).", "additionalProperties": False,
            "properties": {f.key: {"type": "integer", "minimum": 0,
                                   "maximum": (1 << f.width) - 1,
                                   "description": f"{f.title} (VMCS 0x{f.encoding:04X})"}
                           for f in FIELDS}},
    }
    for f in FIELDS:
        act = f" Used only while {f.activated_by} = true." if f.activated_by else ""
        props[f.key] = {"type": "object", "title": f.title,
                        "description": f"{f.title} (VMCS 0x{f.encoding:04X}, {f.width}-bit): "
                                       f"true sets a bit, false clears it; unnamed bits get "
                                       f"the CPU's required values.{act}",
                        "additionalProperties": False, "properties": _control_props(f.key)}
    for t in SETTING_TABLES:
        specs = SETTINGS_BY_TABLE[t]
        if len(specs) == 1 and specs[0].key == "*":
            props[t] = _star_schema(t, specs[0])
            continue
        props[t] = {"type": "object", "additionalProperties": False,
                    "properties": {s.key: _setting_schema(s) for s in specs}}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "vmcfg profile",
        "description": "A vmcfg profile: which Intel VT-x VMCS controls are on, and the "
                       "settings beside them (generated by `vmcfg schema` from vmcfg's "
                       "control table).",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
