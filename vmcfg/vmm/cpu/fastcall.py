"""SYSCALL and SYSENTER (SDM Vol. 2B): Unicorn reports them to a hook and skips them.

SYSRET and SYSEXIT run natively in the emulator; the two entries are done here, on
the state at the next instruction (where Unicorn leaves RIP after the hook).
Each returns None, or the vector (and error code) of the exception it raises.
"""

from __future__ import annotations

from ...vmx.exits import Vector
from .state import CS, DESC_A, DESC_B, DESC_G, DESC_L, DESC_P, DESC_S, SS

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, \
    0xC0000083, 0xC0000084
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
_CODE = DESC_P | DESC_S | (0xB << 8) | DESC_G        # execute/read, accessed, 4 KiB granular
_DATA = DESC_P | DESC_S | (0x3 << 8) | DESC_G | DESC_B
RF, IF, VM = 1 << 16, 1 << 9, 1 << 17


def syscall(v) -> tuple[int, int | None] | None:
    """SYSCALL at CPL 0..3 in IA-32e mode: CS/SS from STAR, RIP from LSTAR (64-bit code) or
    CSTAR (compatibility mode, as AMD and KVM's emulator do), RFLAGS masked by FMASK."""
    efer = v.efer()
    snap = v.cpu_state.snapshot()
    if not efer & 1 or not snap.long:
        return Vector.UD, None
    uc = v.uc
    nxt = v.rr_rip_reg()
    rflags = v.rr_rflags()
    star = uc.msr_read(MSR_STAR)
    target = uc.msr_read(MSR_LSTAR if snap.mode == 64 else MSR_CSTAR)
    fmask = uc.msr_read(MSR_FMASK)
    sel = (star >> 32) & 0xFFFC
    v.cpu_state.load_segments({CS: (sel, 0, 0xFFFFFFFF, _CODE | DESC_L | DESC_A),
                               SS: ((sel + 8) & 0xFFFC, 0, 0xFFFFFFFF, _DATA | DESC_A)}, cpl=0)
    v.after_state_load()
    v.set_gpr(1, nxt, 8)
    v.set_gpr(11, rflags & ~RF, 8)
    v.set_rflags_raw(rflags & ~fmask & ~RF)
    v.set_rip_reg(target)
    v.flush()
    v.after_state_load()
    return None


def sysenter(v) -> tuple[int, int | None] | None:
    """SYSENTER: CS from IA32_SYSENTER_CS (SS = CS + 8), RIP/RSP from the SYSENTER MSRs;
    64-bit code in IA-32e mode; VM, IF and RF cleared.  #GP(0) in real mode or with a null
    IA32_SYSENTER_CS."""
    snap = v.cpu_state.snapshot()
    uc = v.uc
    cs = uc.msr_read(MSR_SYSENTER_CS)
    if snap.real or not cs & 0xFFFC:
        return Vector.GP, 0
    long_mode = snap.long
    eip, esp = uc.msr_read(MSR_SYSENTER_EIP), uc.msr_read(MSR_SYSENTER_ESP)
    if not long_mode:
        eip, esp = eip & 0xFFFFFFFF, esp & 0xFFFFFFFF
    rflags = v.rr_rflags()
    code = _CODE | DESC_A | (DESC_L if long_mode else DESC_B)
    v.cpu_state.load_segments({CS: (cs & 0xFFFC, 0, 0xFFFFFFFF, code),
                               SS: ((cs + 8) & 0xFFFC, 0, 0xFFFFFFFF, _DATA | DESC_A)}, cpl=0)
    v.after_state_load()
    v.set_rflags_raw(rflags & ~(VM | IF | RF))
    v.set_rsp(esp)
    v.set_rip_reg(eip)
    v.flush()
    v.after_state_load()
    return None
