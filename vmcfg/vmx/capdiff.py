"""Compare two capability sets control by control."""

from __future__ import annotations

from .caps import CapSet
from .msrs import CAP_LAYOUTS, MSR_NAMES
from .table import CONTROLS_BY_FIELD, FIELDS


def diff_caps(a: CapSet, b: CapSet) -> list[dict]:
    """Every control whose verdict (yes/no/forced/default) differs, then every
    BASIC/MISC/EPT/VMFUNC field that differs."""
    out: list[dict] = []
    for f in FIELDS:
        ea, eb = a.field_exists(f.key), b.field_exists(f.key)
        for c in CONTROLS_BY_FIELD[f.key]:
            va = a.support(f.key, c.bit) if ea else "no"
            vb = b.support(f.key, c.bit) if eb else "no"
            if va != vb:
                out.append({"kind": "control", "name": c.path, "a": va, "b": vb})
    for idx, layout in CAP_LAYOUTS.items():
        for bit in layout:
            va = bit.get(a.msr(idx)) if a.msr_exists(idx) else 0
            vb = bit.get(b.msr(idx)) if b.msr_exists(idx) else 0
            if va != vb:
                out.append({"kind": "capability", "name": f"{MSR_NAMES[idx]}.{bit.key}",
                            "title": bit.title, "a": va, "b": vb})
    if a.maxphyaddr != b.maxphyaddr:
        out.append({"kind": "capability", "name": "maxphyaddr", "title": "MAXPHYADDR",
                    "a": a.maxphyaddr, "b": b.maxphyaddr})
    return out
