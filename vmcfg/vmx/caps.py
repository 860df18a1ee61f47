"""Capability sets: what a CPU (or vmcfg's own VMM) allows.

A capability set is a dictionary of VMX capability MSR values plus a little
metadata that is not in those MSRs (MAXPHYADDR comes from CPUID).  Every
question about what may be set is answered from the MSRs with the SDM's
rules (vmx-facts.md §2): allowed-0 (low half: must be 1) / allowed-1 (high
half: may be 1), TRUE_* MSRs when IA32_VMX_BASIC[55], existence rules for the
secondary/tertiary/VMFUNC/EPT-VPID MSRs.
"""

from __future__ import annotations

from dataclasses import dataclass, field as _dcf

from .msrs import ALLOWED1_ONLY, CAP_LAYOUTS, MSR_INDEX, MSR_NAMES, cap_bit
from .table import CONTROL_BY_PATH, CONTROLS_BY_FIELD, FIELD_BY_KEY, FIELDS, Field

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1


def _ctl(path: str) -> int:
    return CONTROL_BY_PATH[path].mask


@dataclass
class CapSet:
    name: str
    msrs: dict[int, int]
    title: str = ""
    source: str = ""
    year: int | None = None
    maxphyaddr: int = 46
    partial: bool = False      # built from incomplete information (e.g. /proc/cpuinfo)
    path: str | None = None    # file it was read from, if any
    notes: list[str] = _dcf(default_factory=list)
    # What the source did not say: control paths ("pin.nmi_exiting") and capability-MSR
    # fields ("IA32_VMX_MISC.cr3_targets").  Their settings in `msrs` are permissive
    # (may be 1, need not be 1), support() says "unknown", and validation checks only
    # what is known.
    unknown: set[str] = _dcf(default_factory=set)

    def __post_init__(self) -> None:
        self._cache: dict[str, tuple[int, int]] = {}
        self.unknown = set(self.unknown)

    def unknown_mask(self, key: str) -> int:
        """Bits of control field `key` whose settings the source did not report."""
        return sum(c.mask for c in CONTROLS_BY_FIELD[key] if c.path in self.unknown)

    def is_known(self, path: str) -> bool:
        """False for a control or capability field the source did not report."""
        return path not in self.unknown

    # ---- raw access -----------------------------------------------------
    def msr(self, index: int) -> int:
        return self.msrs.get(index, 0)

    def has_true_ctls(self) -> bool:
        return bool(self._capfield(0x480, "true_ctls"))

    def _capfield(self, index: int, key: str) -> int:
        b = cap_bit(index, key)
        if self.unknown and f"{MSR_NAMES[index]}.{key}" in self.unknown:
            return (1 << (b.hi - b.lo + 1)) - 1      # not reported: permissive
        return b.get(self.msr(index))

    def basic(self, key: str) -> int:
        return self._capfield(0x480, key)

    def misc(self, key: str) -> int:
        return self._capfield(0x485, key)

    def ept(self, key: str) -> int:
        return self._capfield(0x48C, key) if self.msr_exists(0x48C) else 0

    def vmfunc(self) -> int:
        return self.msr(0x491) if self.msr_exists(0x491) else 0

    # ---- existence rules (§2.4) --------------------------------------------
    def msr_exists(self, index: int) -> bool:
        if index in (0x48D, 0x48E, 0x48F, 0x490):
            return self.has_true_ctls()
        if index == 0x48B:
            return bool(self._hi(0x482) & _ctl("primary.activate_secondary_controls"))
        if index == 0x492:
            return bool(self._hi(0x482) & _ctl("primary.activate_tertiary_controls"))
        if index == 0x493:
            return bool(self._hi(0x483) & _ctl("exit.activate_secondary_controls"))
        if index == 0x491:
            return self.msr_exists(0x48B) and bool(
                self._hi(0x48B) & _ctl("secondary.enable_vm_functions"))
        if index == 0x48C:
            return self.msr_exists(0x48B) and bool(
                self._hi(0x48B) & (_ctl("secondary.enable_ept") | _ctl("secondary.enable_vpid")))
        return index in MSR_NAMES

    def _hi(self, index: int) -> int:
        return (self.msr(index) >> 32) & M32

    # ---- allowed settings per control field --------------------------------
    def field_msr(self, f: Field, use_true: bool = True) -> int:
        """Index of the MSR that governs field f (TRUE MSR when present)."""
        idx = MSR_INDEX[f.cap_msr]
        if use_true and f.true_msr and self.has_true_ctls():
            idx = MSR_INDEX[f.true_msr]
        return idx

    def field_exists(self, key: str) -> bool:
        return self.msr_exists(MSR_INDEX[FIELD_BY_KEY[key].cap_msr])

    def allowed(self, key: str, use_true: bool = True) -> tuple[int, int]:
        """(must_be_one, may_be_one) masks for control field `key`."""
        ck = key if use_true else key + "!legacy"
        got = self._cache.get(ck)
        if got is not None:
            return got
        f = FIELD_BY_KEY[key]
        idx = self.field_msr(f, use_true)
        if not self.msr_exists(idx):
            res = (0, 0)
        elif idx in ALLOWED1_ONLY:
            res = (0, self.msr(idx) & (M64 if f.width == 64 else M32))
        else:
            v = self.msr(idx)
            res = (v & M32, (v >> 32) & M32)
        unk = self.unknown_mask(key) if self.unknown else 0
        if unk and self.msr_exists(idx):
            res = (res[0] & ~unk, res[1] | unk)
        self._cache[ck] = res
        return res

    def support(self, key: str, bit: int) -> str:
        """vmxcap's verdict for one control bit: yes / no / forced / default
        (or "unknown" when the source did not report it)."""
        m = 1 << bit
        if self.unknown and self.unknown_mask(key) & m:
            return "unknown"
        must, may = self.allowed(key)
        if not may & m:
            return "no"
        if must & m:
            return "forced"
        lmust, _ = self.allowed(key, use_true=False)
        if lmust & m:
            return "default"
        return "yes"

    def supports(self, path: str) -> bool:
        c = CONTROL_BY_PATH[path]
        return bool(self.allowed(c.field)[1] & c.mask)

    def supported_controls(self) -> list[str]:
        """Controls known to be allowed-1 (unknown ones are left out)."""
        return [c.path for f in FIELDS for c in CONTROLS_BY_FIELD[f.key]
                if self.allowed(f.key)[1] & c.mask and c.path not in self.unknown]

    # ---- decoded summaries -------------------------------------------------
    def decode(self) -> dict:
        """A JSON-ready decode of every capability (like QEMU's vmxcap)."""
        out: dict = {"name": self.name, "title": self.title, "source": self.source,
                     "year": self.year, "partial": self.partial,
                     "maxphyaddr": self.maxphyaddr, "true_ctls": self.has_true_ctls(),
                     "notes": list(self.notes), "unknown": sorted(self.unknown),
                     "msrs": {f"0x{k:X}": f"0x{v:016X}" for k, v in sorted(self.msrs.items())},
                     "controls": {}}
        for f in FIELDS:
            exists = self.field_exists(f.key)
            out["controls"][f.key] = {
                "exists": exists,
                "allowed0": self.allowed(f.key)[0], "allowed1": self.allowed(f.key)[1],
                "bits": {c.key: (self.support(f.key, c.bit) if exists else "no")
                         for c in CONTROLS_BY_FIELD[f.key]},
            }
        for idx, layout in CAP_LAYOUTS.items():
            name = MSR_NAMES[idx]
            present = self.msr_exists(idx) and idx in self.msrs
            out[name] = ({b.key: (None if f"{name}.{b.key}" in self.unknown
                                  else bool(b.get(self.msr(idx))) if b.is_flag
                                  else b.get(self.msr(idx)))
                          for b in layout} if present else None)
        for idx in (0x486, 0x487, 0x488, 0x489, 0x48A):
            out[MSR_NAMES[idx]] = f"0x{self.msr(idx):X}" if idx in self.msrs else None
        return out


def make_msr(must_be_one: int, may_be_one: int) -> int:
    return (must_be_one & M32) | ((may_be_one & M32) << 32)


def msrs_from_features(features: dict[str, list[str]], *, basic: int, misc: int,
                       ept_vpid: int = 0, vmfunc: int = 0, cr4_fixed1: int = 0x3727FF,
                       vmcs_enum: int = 0x2E) -> dict[int, int]:
    """Build capability MSRs from "can be 1" feature lists, as QEMU does.

    QEMU's recipe (vmx-facts.md §2.3, make_vmx_msr_value): with f the feature
    bits and d the default1 bits of a field, can_be_one = f | d,
    can_be_zero = f | ~d, TRUE MSR = ~can_be_zero | can_be_one << 32; the
    legacy MSR keeps every default1 bit as must-be-1.  A feature naming a
    default1 bit therefore means "this bit may be cleared".
    """
    msrs: dict[int, int] = {0x480: basic, 0x485: misc,
                            0x486: 0x80000021, 0x487: 0xFFFFFFFF,
                            0x488: 0x2000, 0x489: cr4_fixed1, 0x48A: vmcs_enum}
    has_true = bool(cap_bit(0x480, "true_ctls").get(basic))
    for f in FIELDS:
        feats = 0
        for key in features.get(f.key, []):
            feats |= CONTROL_BY_PATH[f"{f.key}.{key}"].mask
        idx = MSR_INDEX[f.cap_msr]
        if idx in ALLOWED1_ONLY:
            if feats:
                msrs[idx] = feats
            continue
        d = f.default1
        can1 = feats | d
        can0 = (feats | ~d) & M32
        if f.key == "secondary" and not feats:
            continue
        msrs[idx] = make_msr(d, can1)
        if f.true_msr and has_true:
            msrs[MSR_INDEX[f.true_msr]] = make_msr(~can0 & M32, can1)
    if ept_vpid:
        msrs[0x48C] = ept_vpid
    if vmfunc:
        msrs[0x491] = vmfunc
    return msrs


def pack_bits(msr: int, **values: int) -> int:
    """Compose a BASIC/MISC/EPT value from named fields of its layout."""
    v = 0
    for k, x in values.items():
        v = cap_bit(msr, k).put(v, int(x))
    return v
