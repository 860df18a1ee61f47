"""Look up anything by name: a control, a setting, a rule, an exit reason, a raw
exit-reason value, a CPU model.  Returns JSON-ready dictionaries; the CLI renders them."""

from __future__ import annotations

from .exits import EXIT_BY_NUMBER, decode_reason_field, lookup_exit
from .models import MODEL_NAMES, all_models, get_model
from .rules import RULE_BY_ID, dependents, requirements
from .settings import SETTING_BY_PATH
from .table import CONTROLS, CPUINFO_AGGREGATES, FIELD_BY_KEY, all_names, resolve_control


def explain_control(c, inverted: bool = False) -> dict:
    f = FIELD_BY_KEY[c.field]
    support = {}
    for m in all_models():
        support[m.name] = m.support(c.field, c.bit) if m.field_exists(c.field) else "no"
    return {
        "kind": "control", "control": c.path, "field": c.field, "field_title": f.title,
        "vmcs_encoding": f"{f.encoding:#06x}", "bit": c.bit, "mask": f"{c.mask:#x}",
        "title": c.title, "meaning": c.meaning,
        "default1": c.default1,
        "aliases": {"qemu": c.qemu or None, "qemu_inverted": c.qemu_inverted,
                    "linux": c.linux or None, "other": list(c.aliases)},
        "queried_alias_inverted": inverted,
        "activated_by": f.activated_by,
        "exits": [{"reason": n, "name": EXIT_BY_NUMBER[n].name} for n in c.exits
                  if n in EXIT_BY_NUMBER],
        "requires": [{"control": need, "rule": r.id, "title": r.title}
                     for need, r in requirements(c.path)],
        "required_by": [{"control": w, "rule": r.id, "title": r.title}
                        for w, r in dependents(c.path)],
        "rules": sorted({r.id for r in RULE_BY_ID.values() if c.path in r.fields}),
        "support": support,
    }


def explain_rule(rid: str) -> dict:
    r = RULE_BY_ID[rid]
    return {"kind": "rule", "rule": r.id, "title": r.title, "holds": r.holds, "sdm": r.sdm,
            "source": r.source, "severity": r.severity, "stage": r.stage,
            "fields": list(r.fields), "note": r.note or None, "alias_of": r.alias_of}


def explain_exit(number: int, raw: int | None = None) -> dict:
    r = EXIT_BY_NUMBER.get(number)
    out = {"kind": "exit", "reason": number, "name": r.name if r else f"RESERVED_{number}",
           "title": r.title if r else "reserved", "trigger": r.trigger if r else "",
           "controls": [c.path for c in CONTROLS if number in c.exits]}
    if raw is not None:
        out["field"] = decode_reason_field(raw)
        out["kind"] = "exit-reason-value"
    return out


def explain_setting(path: str) -> dict:
    s = SETTING_BY_PATH[path]
    return {"kind": "setting", "setting": s.path, "title": s.title, "meaning": s.meaning,
            "type": s.kind, "default": s.default, "choices": list(s.choices) or None,
            "vmcs_encoding": f"{s.vmcs:#06x}" if s.vmcs is not None else None,
            "needs": s.needs}


def explain_model(name: str) -> dict:
    m = get_model(name)
    return {"kind": "cpu", "cpu": m.name, "title": m.title, "year": m.year, "source": m.source,
            "controls_supported": len(m.supported_controls())}


def explain(name: str) -> dict | None:
    t = name.strip()
    rid = {k.upper(): k for k in RULE_BY_ID}.get(t.upper())
    if rid:
        return explain_rule(rid)
    hits = resolve_control(t)
    if hits:
        if len(hits) > 1:
            return {"kind": "ambiguous", "name": t,
                    "candidates": [c.path for c, _ in hits]}
        return explain_control(*hits[0])
    if t in SETTING_BY_PATH:
        return explain_setting(t)
    if t.lower() in CPUINFO_AGGREGATES:
        return {"kind": "flag", "flag": t.lower(), "controls": list(CPUINFO_AGGREGATES[t.lower()]),
                "meaning": "a Linux /proc/cpuinfo VMX flag that stands for several controls: "
                           "shown when all of them may be 1"}
    if t.lower() in MODEL_NAMES:
        return explain_model(t.lower())
    try:
        v = int(t, 0)
    except ValueError:
        r = lookup_exit(t)
        return explain_exit(r.number) if r else None
    if v > 0xFFFF:
        return explain_exit(v & 0xFFFF, raw=v)
    return explain_exit(v)


def suggestions(name: str) -> list[str]:
    import difflib
    pool = all_names() + list(CPUINFO_AGGREGATES) + list(RULE_BY_ID) + list(SETTING_BY_PATH) + \
        [r.name.lower() for r in EXIT_BY_NUMBER.values()] + list(MODEL_NAMES)
    return difflib.get_close_matches(name.lower().replace("-", "_"), pool, n=3)
