"""The virtual CPU's model: CPUID leaves and the MSR file.

The devices (PIC, PIT, UART, debug-exit, LAPIC, ...) live in `vmcfg.vmm.devices`.
"""

from __future__ import annotations

import struct
from typing import Callable

from ..vmx.kinds import CpuidKind
from ..vmx.registers import CPUID_REGS
from .devices.bus import AccessFault

# ---- CPUID ------------------------------------------------------------------------


def _regs(s: str) -> tuple[int, int, int]:
    b = s.encode().ljust(12, b"\0")[:12]
    return struct.unpack("<III", b)


HYPERVISOR_SIGNATURE = "vmcfg cvmm"
BRAND = "vmcfg cvmm virtual CPU @ 1 instruction/tick"


class CpuidModel:
    """CPUID of the cvmm virtual CPU plus the profile's ``[cpuid]`` overrides.

    Reports what the emulator implements: GenuineIntel family 6, x87/SSE..SSE4.2, XSAVE (x87|SSE),
    TSC, MSR, PAE, CX8/CX16, CMOV, POPCNT, RDRAND/RDSEED (deterministic),
    the hypervisor bit, long mode, NX, RDTSCP (when secondary.enable_rdtscp is
    on) and INVPCID (when secondary.enable_invpcid is on).  VMX is not
    offered to the guest.  Leaf 0x40000000 names the hypervisor
    ("vmcfg cvmm"); 0x40000001 reports the virtual TSC rate (ticks per
    retired instruction) and the cost of one VM exit in ticks.
    """

    def __init__(self, overrides: dict | None = None, *, rdtscp: bool = False,
                 invpcid: bool = False, tsc_per_insn: int = 1, exit_cost: int = 0,
                 tsc_hz: int = 1_000_000_000,
                 apic_enabled: Callable[[], bool] | None = None):
        # devices: CPUID.1:EDX.APIC follows IA32_APIC_BASE.EN (SDM 10.4.3)
        self.apic_enabled = apic_enabled
        v = _regs("GenuineIntel")
        self.max_basic = 0x16
        t: dict[tuple[int, int], list[int]] = {}
        t[(0, 0)] = [self.max_basic, v[0], v[2], v[1]]
        fms = (6 << 8) | (0x5 << 4) | 4 | (0x5 << 16)          # family 6, model 0x55, stepping 4
        ecx1 = (1 << 0) | (1 << 1) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23) \
            | (1 << 26) | (1 << 30) | (1 << 31)                 # .. XSAVE (26)
        edx1 = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 13) | (1 << 15) \
            | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
        # devices: the local APIC (EDX 9), its x2APIC mode (ECX 21) and TSC-deadline timer (ECX 24)
        ecx1 |= (1 << 21) | (1 << 24)
        edx1 |= 1 << 9
        t[(1, 0)] = [fms, (1 << 16) | (8 << 8), ecx1, edx1]
        ebx7 = (1 << 18)                                      # RDSEED
        if invpcid:
            ebx7 |= 1 << 10
        t[(7, 0)] = [0, ebx7, 0, 0]
        # XSAVE: x87 and SSE state (XCR0 bits 0-1), 512-byte legacy area + 64-byte header
        t[(0xD, 0)] = [0x3, 576, 576, 0]
        t[(0xD, 1)] = [0, 0, 0, 0]
        # TSC and core crystal clock: TSC = ECX * EBX / EAX = the profile's tsc.frequency
        # (the crystal runs at the TSC rate), so a kernel takes the frequency without calibrating
        k = 1 if tsc_hz < (1 << 32) else 1000
        t[(0x15, 0)] = [1, k, (tsc_hz // k) & 0xFFFFFFFF, 0]
        mhz = max(1, tsc_hz // 1_000_000) & 0xFFFF
        t[(0x16, 0)] = [mhz, mhz, 100, 0]                       # base, max, bus MHz
        ext_max = 0x80000008
        t[(0x80000000, 0)] = [ext_max, 0, 0, 0]
        edx_ext = (1 << 11) | (1 << 20) | (1 << 29)             # SYSCALL, NX, LM
        if rdtscp:
            edx_ext |= 1 << 27
        t[(0x80000001, 0)] = [0, 0, 1, edx_ext]                 # LAHF/SAHF in 64-bit
        brand = BRAND.encode().ljust(48, b"\0")
        for i in range(3):
            t[(0x80000002 + i, 0)] = list(struct.unpack("<IIII", brand[16 * i:16 * i + 16]))
        t[(0x80000007, 0)] = [0, 0, 0, 1 << 8]                  # invariant TSC
        t[(0x80000008, 0)] = [0x3027, 0, 0, 0]                  # 39-bit physical, 48-bit linear
        h = _regs(HYPERVISOR_SIGNATURE)
        t[(0x40000000, 0)] = [0x40000001, h[0], h[1], h[2]]
        t[(0x40000001, 0)] = [tsc_per_insn, exit_cost, 0, 0]
        self.table = t
        self.subleaf_leaves = {4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F}
        # The profile's [cpuid] overrides replace only the registers they name; the rest of the
        # leaf stays the model's.  A leaf past the model's maximum of its range (basic, 0x4000....
        # hypervisor, 0x8000.... extended) raises that maximum, unless the profile also sets the
        # range's maximum leaf (its EAX) itself.
        set_max: set[int] = set()
        added: list[int] = []
        for key, regs in (overrides or {}).items():
            leaf, sub = _parse_leaf(key)
            cur = list(self.table.get((leaf, sub), [0, 0, 0, 0]))
            for i, r in enumerate(CPUID_REGS):
                if r in regs and regs[r] is not None:
                    cur[i] = int(regs[r]) & 0xFFFFFFFF
            self.table[(leaf, sub)] = cur
            if "." in str(key):
                self.subleaf_leaves.add(leaf)
            if leaf in _RANGE_BASES and sub == 0 and regs.get("eax") is not None:
                set_max.add(leaf)
            added.append(leaf)
        for leaf in added:
            base = _range_base(leaf)
            if base not in set_max and self.table[(base, 0)][0] < leaf:
                self.table[(base, 0)][0] = leaf
        self.max_basic = self.table[(0, 0)][0]

    def query(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        leaf &= 0xFFFFFFFF
        sub = subleaf & 0xFFFFFFFF if leaf in self.subleaf_leaves else 0
        r = self.table.get((leaf, sub))
        if r is not None:
            if leaf == 1 and self.apic_enabled is not None and not self.apic_enabled():
                return (r[0], r[1], r[2], r[3] & ~(1 << 9))
            return tuple(r)
        ext_max = self.table.get((0x80000000, 0), [0])[0]
        hv_max = self.table.get((0x40000000, 0), [0])[0]
        in_range = (leaf <= self.max_basic or 0x80000000 <= leaf <= ext_max
                    or 0x40000000 <= leaf <= hv_max)
        if in_range:
            return (0, 0, 0, 0)
        # Intel: a leaf above the maximum returns the highest basic leaf's data.
        return tuple(self.table.get((self.max_basic, 0), [0, 0, 0, 0]))


_RANGE_BASES = (0, 0x40000000, 0x80000000)


def _range_base(leaf: int) -> int:
    """The first leaf of leaf's CPUID range (its EAX is the range's maximum leaf)."""
    return 0x80000000 if leaf >= 0x80000000 else 0x40000000 if leaf >= 0x40000000 else 0


def _parse_leaf(key) -> tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    if isinstance(key, int):
        return key, 0
    _, leaf, sub = CpuidKind.leaf_key(str(key))       # the profile's leaf grammar
    return leaf, sub or 0


# ---- the virtual MSR file -----------------------------------------------------------

def _canonical(address: int, bits: int = 48) -> bool:
    """Bits 63:bits-1 of a 64-bit linear address all equal (4-level paging: 48 bits)."""
    top = address >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


class MsrFault(Exception):
    """RDMSR/WRMSR of an MSR the virtual CPU does not have (#GP(0))."""


class MsrFile:
    """MSRs of the cvmm virtual CPU.

    Plain storage for the architectural MSRs a small kernel touches; MSRs that
    live in the emulated CPU (EFER, FS/GS base, SYSENTER, STAR...) are
    forwarded to it; IA32_TSC reads and writes the virtual TSC.  Any other
    index raises #GP(0), like real hardware.
    """

    STORED: dict[int, int] = {
        0x3A: 0x1,                 # IA32_FEATURE_CONTROL (locked, VMX off)
        0x8B: 0,                   # IA32_BIOS_SIGN_ID
        0xFE: 0x508,               # IA32_MTRRCAP
        0x1A0: 0x1,                # IA32_MISC_ENABLE (fast strings)
        0x277: 0x0007040600070406,  # IA32_PAT
        0x2FF: 0xC06,              # IA32_MTRR_DEF_TYPE
        0x48: 0,                   # IA32_SPEC_CTRL
        0x10A: 0,                  # IA32_ARCH_CAPABILITIES
        0xC0000103: 0,             # IA32_TSC_AUX
        0x179: 0,                  # IA32_MCG_CAP: no machine-check banks (MCi_* are #GP)
        0x17A: 0,                  # IA32_MCG_STATUS
    }
    CPU: frozenset[int] = frozenset({0x174, 0x175, 0x176, 0xC0000080, 0xC0000081, 0xC0000082,
                                     0xC0000083, 0xC0000084, 0xC0000100, 0xC0000101,
                                     0xC0000102})
    READ_ONLY: frozenset[int] = frozenset({0xFE, 0x10A, 0x3A, 0x179})
    # MSRs that hold a linear address: WRMSR of a non-canonical one is #GP(0) (SDM WRMSR;
    # SYSENTER_ESP/EIP, FS/GS/KERNEL_GS base, LSTAR, and CSTAR as KVM checks it)
    CANONICAL: frozenset[int] = frozenset({0x175, 0x176, 0xC0000082, 0xC0000083, 0xC0000100,
                                           0xC0000101, 0xC0000102})
    TSC = 0x10
    # MSRs that exist only where CPUID enumerates them: (leaf, subleaf, register 0-3 =
    # EAX-EDX, any of these bits). IA32_SPEC_CTRL: IBRS/IBPB, STIBP or SSBD; IA32_ARCH_
    # CAPABILITIES: CPUID.(7,0):EDX[29]. Without them RDMSR and WRMSR are #GP(0).
    ENUMERATED: dict[int, tuple[int, int, int, int]] = {
        0x48: (7, 0, 3, (1 << 26) | (1 << 27) | (1 << 31)),
        0x10A: (7, 0, 3, 1 << 29),
    }

    def __init__(self, cpu_read: Callable[[int], int], cpu_write: Callable[[int, int], None],
                 tsc_read: Callable[[], int], tsc_write: Callable[[int], None],
                 devices=None, cpuid: Callable[[int, int], tuple] | None = None):
        self.values = dict(self.STORED)
        self._cpuid = cpuid             # (leaf, subleaf) -> (eax, ebx, ecx, edx): ENUMERATED
        # devices: MSRs a device owns (IA32_APIC_BASE, IA32_TSC_DEADLINE, x2APIC 0x800-0x8FF)
        self.devices = devices
        self._cpu_read, self._cpu_write = cpu_read, cpu_write
        self._tsc_read, self._tsc_write = tsc_read, tsc_write

    def read(self, msr: int) -> int:
        if self.devices is not None and self.devices.owns_msr(msr):
            try:
                return self.devices.msr_read(msr)
            except AccessFault:
                raise MsrFault(msr) from None
        if msr == self.TSC:
            return self._tsc_read()
        if msr in self.CPU:
            return self._cpu_read(msr)
        if msr in self.values and self._enumerated(msr):
            return self.values[msr]
        raise MsrFault(msr)

    def _enumerated(self, msr: int) -> bool:
        gate = self.ENUMERATED.get(msr)
        if gate is None or self._cpuid is None:
            return True
        leaf, sub, reg, bits = gate
        return bool(self._cpuid(leaf, sub)[reg] & bits)

    def write(self, msr: int, value: int) -> None:
        value &= (1 << 64) - 1
        if self.devices is not None and self.devices.owns_msr(msr):
            try:
                self.devices.msr_write(msr, value)
            except AccessFault:
                raise MsrFault(msr) from None
            return
        if msr == self.TSC:
            self._tsc_write(value)
        elif msr in self.CPU:
            if msr == 0xC0000080 and value & ~0xD01:
                raise MsrFault(msr)     # reserved EFER bits
            if msr in self.CANONICAL and not _canonical(value):
                raise MsrFault(msr)
            self._cpu_write(msr, value)
        elif msr in self.values and msr not in self.READ_ONLY and self._enumerated(msr):
            self.values[msr] = value
        else:
            raise MsrFault(msr)

    def known(self, msr: int) -> bool:
        if self.devices is not None and self.devices.owns_msr(msr):
            return True
        return msr == self.TSC or msr in self.CPU or (msr in self.values
                                                      and self._enumerated(msr))
