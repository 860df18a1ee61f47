"""VmxConfig: the effective VMCS execution environment of one profile.

This is what the validator checks, what exports encode and what the emulated
VMM runs under: the control-field values exactly as they would be written to
the VMCS (forced and reserved default1 bits filled in) and the settings with
defaults applied, in normalised form:

* ``exceptions.intercept``: sorted list of vectors
* ``io.intercept``, ``msr.intercept_read``/``intercept_write``: merged
  inclusive ``(lo, hi)`` ranges
* everything else: plain ints/bools/strings/lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field as _dcf
from typing import Any, Iterable

from .table import CONTROL_BY_PATH, FIELDS
from .vmcs import Vmcs

# path -> (field, mask), and field -> (activating field, mask) for the hot path
_BIT: dict[str, tuple[str, int]] = {p: (c.field, 1 << c.bit) for p, c in CONTROL_BY_PATH.items()}
_ACT: dict[str, tuple[str, int] | None] = {
    f.key: (_BIT[f.activated_by] if f.activated_by else None) for f in FIELDS}

def plain(v: Any) -> Any:
    """A normalised value as plain JSON data: tuples (ranges) as lists, keys as strings."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


MSR_LOW_END = 0x1FFF
MSR_HIGH_BASE = 0xC0000000
MSR_HIGH_END = 0xC0001FFF


def in_ranges(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass
class VmxConfig:
    controls: dict[str, int]
    settings: dict[str, dict[str, Any]]
    cpu: str = "cvmm"
    name: str = ""
    _active: dict[str, int] = _dcf(default_factory=dict, repr=False, compare=False)

    # ---- control bits ----------------------------------------------------
    def active(self, field: str) -> int:
        """The value the CPU acts on: secondary/tertiary read as 0 unless activated."""
        v = self._active.get(field)
        if v is None:
            v = self.controls.get(field, 0)
            act = _ACT[field]
            if act is not None and not self.controls.get(act[0], 0) & act[1]:
                v = 0
            self._active[field] = v
        return v

    def on(self, path: str) -> bool:
        field, mask = _BIT[path]
        v = self._active.get(field)
        if v is None:
            v = self.active(field)
        return bool(v & mask)

    def setting(self, path: str) -> Any:
        table, key = path.split(".", 1)
        return self.settings[table][key]

    # ---- derived VMCS data -------------------------------------------------
    def exception_bitmap(self) -> int:
        bm = 0
        for v in self.settings["exceptions"]["intercept"]:
            bm |= 1 << v
        return bm

    def io_port_intercepted(self, port: int) -> bool:
        return in_ranges(port & 0xFFFF, self.settings["io"]["intercept"])

    def io_bitmaps(self) -> tuple[bytes, bytes]:
        bm = bytearray(8192)
        for lo, hi in self.settings["io"]["intercept"]:
            for p in range(lo, hi + 1):
                bm[p >> 3] |= 1 << (p & 7)
        return bytes(bm[:4096]), bytes(bm[4096:])

    def msr_intercepted(self, msr: int, write: bool) -> bool:
        """Whether RDMSR/WRMSR of `msr` exits (vmx-facts.md §4.7)."""
        if not self.on("primary.use_msr_bitmaps"):
            return True
        if not (msr <= MSR_LOW_END or MSR_HIGH_BASE <= msr <= MSR_HIGH_END):
            return True
        key = "intercept_write" if write else "intercept_read"
        return in_ranges(msr, self.settings["msr"][key])

    def msr_bitmap(self) -> bytes:
        bm = bytearray(4096)
        for key, base in (("intercept_read", 0), ("intercept_write", 0x800)):
            for lo, hi in self.settings["msr"][key]:
                for m in range(lo, hi + 1):
                    if m <= MSR_LOW_END:
                        off = base + (m >> 3)
                    elif MSR_HIGH_BASE <= m <= MSR_HIGH_END:
                        off = base + 0x400 + ((m - MSR_HIGH_BASE) >> 3)
                    else:
                        continue
                    bm[off] |= 1 << (m & 7)
        return bytes(bm)

    def eptp(self, pml4_address: int = 0) -> int:
        raw = self.settings["vmcs"].get("eptp")
        if raw is not None:
            return raw
        e = self.settings["ept"]
        mt = {"uc": 0, "wb": 6}[e["memory_type"]]
        return (pml4_address & ~0xFFF) | mt | ((int(e["walk_length"]) - 1) << 3) | (
            (1 << 6) if e["accessed_dirty"] else 0)

    def vm_function_controls(self) -> int:
        from .msrs import cap_bit
        v = 0
        for key, on in self.settings["vmfunc"].items():
            if on:
                v |= 1 << cap_bit(0x491, key).lo
        return v

    def entry_interruption_info(self) -> int:
        from .settings import INJECT_TYPES
        inj = self.settings["inject"]
        if inj.get("info") is not None:
            return inj["info"]
        if inj["type"] is None:
            return 0
        v = (1 << 31) | (INJECT_TYPES[inj["type"]] << 8) | (inj["vector"] & 0xFF)
        if inj["error_code"] is not None:
            v |= 1 << 11
        return v

    def eoi_exit_bitmap(self) -> int:
        """The 256-bit EOI-exit bitmap (EOI_EXIT_BITMAP0..3 as one integer)."""
        out = 0
        for lo, hi in self.settings["apic"]["eoi_exit"]:
            out |= ((1 << (hi - lo + 1)) - 1) << lo
        return out

    def vmcs_fields(self) -> dict[int, int]:
        """VMCS field encoding -> value for every field this config determines."""
        from .settings import SETTINGS
        out: dict[int, int] = {}
        for f in FIELDS:
            out[f.encoding] = self.controls.get(f.key, 0)
        s = self.settings
        out[Vmcs.EXCEPTION_BITMAP] = self.exception_bitmap()
        out[Vmcs.PAGE_FAULT_ERROR_CODE_MASK] = s["exceptions"]["pf_error_code_mask"]
        out[Vmcs.PAGE_FAULT_ERROR_CODE_MATCH] = s["exceptions"]["pf_error_code_match"]
        out[Vmcs.CR3_TARGET_COUNT] = len(s["cr3"]["targets"])
        for i, t in enumerate(s["cr3"]["targets"]):
            out[Vmcs.CR3_TARGET_VALUE0 + 2 * i] = t
        out[Vmcs.CR0_GUEST_HOST_MASK], out[Vmcs.CR0_READ_SHADOW] = s["cr0"]["mask"], s["cr0"]["shadow"]
        out[Vmcs.CR4_GUEST_HOST_MASK], out[Vmcs.CR4_READ_SHADOW] = s["cr4"]["mask"], s["cr4"]["shadow"]
        out[Vmcs.TSC_OFFSET] = s["tsc"]["offset"] & ((1 << 64) - 1)
        out[Vmcs.TSC_MULTIPLIER] = s["tsc"]["multiplier"]
        out[Vmcs.VMX_PREEMPTION_TIMER_VALUE] = s["preemption_timer"]["value"]
        out[Vmcs.PLE_GAP], out[Vmcs.PLE_WINDOW] = s["ple"]["gap"], s["ple"]["window"]
        out[Vmcs.VIRTUAL_PROCESSOR_ID] = s["vpid"]["id"]
        out[Vmcs.EPT_POINTER] = self.eptp()
        out[Vmcs.POSTED_INTR_NV] = s["posted_interrupts"]["vector"]
        out[Vmcs.VM_FUNCTION_CONTROL] = self.vm_function_controls()
        out[Vmcs.TPR_THRESHOLD] = s["apic"]["tpr_threshold"]
        bitmap = self.eoi_exit_bitmap()
        for i in range(4):
            out[Vmcs.EOI_EXIT_BITMAP0 + 2 * i] = (bitmap >> (64 * i)) & ((1 << 64) - 1)
        out[Vmcs.GUEST_INTR_STATUS] = (s["apic"]["svi"] << 8) | s["apic"]["rvi"]
        out[Vmcs.VM_ENTRY_INTR_INFO_FIELD] = self.entry_interruption_info()
        if s["inject"]["error_code"] is not None or out[Vmcs.VM_ENTRY_INTR_INFO_FIELD] & (1 << 11):
            out[Vmcs.VM_ENTRY_EXCEPTION_ERROR_CODE] = s["inject"]["error_code"] or 0
        out[Vmcs.VM_ENTRY_INSTRUCTION_LEN] = s["inject"]["instruction_length"]
        for st in SETTINGS:
            if st.table == "vmcs" and st.vmcs is not None and st.key != "eptp":
                v = s["vmcs"][st.key]
                if v is not None:
                    out[st.vmcs] = v
        return {int(k): v for k, v in sorted(out.items())}

    def to_json(self) -> dict:
        """JSON-ready form (ranges as [lo, hi] pairs)."""
        return {"name": self.name, "cpu": self.cpu,
                "controls": dict(self.controls),
                "settings": {t: {k: ([list(r) for r in v] if (t in ("io", "msr") or (t, k) == ("apic", "eoi_exit")) and isinstance(v, list) else v)
                                 for k, v in tbl.items()} for t, tbl in self.settings.items()}}
