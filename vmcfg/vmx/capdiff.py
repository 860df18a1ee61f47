"""Compare two capability sets: what each control bit may be, and the other capability MSRs."""

from __future__ import annotations

from .caps import CapSet
from .table import CONTROL_BY_FIELD_BIT, FIELDS


def diff_caps(ca: CapSet, cb: CapSet) -> dict:
    fields = []
    for f in FIELDS:
        ea, eb = ca.field_exists(f.key), cb.field_exists(f.key)
        rows = []
        for bit in range(f.width):
            va = ca.support(f.key, bit) if ea else "no"
            vb = cb.support(f.key, bit) if eb else "no"
            if va != vb:
                c = CONTROL_BY_FIELD_BIT[f.key].get(bit)
                rows.append({"bit": bit, "control": c.key if c else None, "a": va, "b": vb})
        if rows or ea != eb:
            fields.append({"field": f.key, "exists": [ea, eb], "bits": rows,
                           "a": {"allowed0": f"0x{ca.allowed(f.key)[0]:x}",
                                 "allowed1": f"0x{ca.allowed(f.key)[1]:x}"},
                           "b": {"allowed0": f"0x{cb.allowed(f.key)[0]:x}",
                                 "allowed1": f"0x{cb.allowed(f.key)[1]:x}"}})
    da, db = ca.decode(), cb.decode()
    other = []
    for k in ("maxphyaddr", "true_ctls"):
        if da[k] != db[k]:
            other.append({"key": k, "a": da[k], "b": db[k]})
    skip = {"name", "title", "source", "year", "partial", "msrs", "controls", "maxphyaddr",
            "true_ctls", "notes", "unknown"}
    for k in da:
        if k in skip:
            continue
        va, vb = da.get(k), db.get(k)
        if isinstance(va, dict) or isinstance(vb, dict):
            for sk in sorted(set(va or {}) | set(vb or {})):
                x = (va or {}).get(sk)
                y = (vb or {}).get(sk)
                if x != y:
                    other.append({"key": f"{k}.{sk}", "a": x, "b": y})
        elif va != vb:
            other.append({"key": k, "a": va, "b": vb})
    return {"kind": "caps", "equal": not fields and not other,
            "a": {"spec": ca.path or ca.name, "name": ca.name},
            "b": {"spec": cb.path or cb.name, "name": cb.name},
            "fields": fields, "other": other}
