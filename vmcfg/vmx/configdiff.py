"""Differences between two effective configurations, bit by bit and setting by setting."""

from __future__ import annotations


from .config import VmxConfig, plain
from .settings import SETTINGS
from .table import CONTROL_BY_FIELD_BIT, FIELDS

# Settings that describe the guest itself: changing them needs a new guest.
NOT_LIVE_TABLES = frozenset({"guest"})


def diff_configs(old: VmxConfig, new: VmxConfig) -> list[dict]:
    """[{kind, key, old, new, live}] for every control bit and setting that differs.

    Control bits are compared as written to the VMCS (forced and reserved bits
    included); `live` says whether the change can be made to a running guest.
    """
    out: list[dict] = []
    for f in FIELDS:
        a, b = old.controls.get(f.key, 0), new.controls.get(f.key, 0)
        x = a ^ b
        bit = 0
        while x:
            if x & 1:
                c = CONTROL_BY_FIELD_BIT[f.key].get(bit)
                out.append({"kind": "control", "key": c.path if c else f"{f.key}.bit{bit}",
                            "old": a >> bit & 1, "new": b >> bit & 1, "live": True})
            x >>= 1
            bit += 1
    for s in SETTINGS:
        if s.key == "*":
            a, b = old.settings.get(s.table, {}), new.settings.get(s.table, {})
            key = s.table
        else:
            a, b = old.settings[s.table][s.key], new.settings[s.table][s.key]
            key = s.path
        if plain(a) != plain(b):
            out.append({"kind": "setting", "key": key, "old": plain(a), "new": plain(b),
                        "live": s.table not in NOT_LIVE_TABLES})
    return out
