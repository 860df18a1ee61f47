"""Exit handlers: the API user handlers see, and the VMM's default handlers.

A handler is a Python function ``handler(ctx: ExitContext) -> None`` named
in a profile's ``[handlers]`` table (``CPUID = "mymod:on_cpuid"``) or with
``vmcfg launch --handler CPUID=mymod:on_cpuid``.  It runs at the VM exit,
with the guest stopped at the exiting instruction, and decides how the guest
resumes:

* ``ctx.emulate()`` -- do what the built-in default handler does (emulate the
  instruction as a minimal host would and skip it);
* ``ctx.skip()`` -- advance RIP past the exiting instruction (after the
  handler emulated it itself, e.g. by setting ``ctx.regs.rax``);
* neither -- the guest resumes at RIP as the handler left it (re-executing
  the instruction if RIP was not changed);
* ``ctx.inject(vector, error_code=None)`` -- deliver an exception to the
  guest instead;
* ``ctx.set_control("primary.rdtsc_exiting", False)`` /
  ``ctx.set_setting("tsc.offset", 100)`` / ``ctx.apply(config)`` -- change the
  controls; they take effect before the guest resumes;
* ``ctx.end(exit_code=None)`` -- end the run (status "halted", or
  "debug-exit" with an exit code).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable

from ..vmx.config import VmxConfig
from ..vmx.exits import Exit as E
from ..vmx.exits import InterruptionType, Vector, exit_name, lookup_exit
from ..vmx.registers import GPR_NAMES
from ..vmx.table import CONTROL_BY_PATH
from .exitinfo import VmExit, io_qualification
from .outcome import GuestFault, RunEnd


class Registers:
    """Attribute access to the guest's registers: ``ctx.regs.rax = 1``."""

    _GPR = {n: i for i, n in enumerate(GPR_NAMES)}
    _GPR32 = {"e" + n[1:]: i for n, i in list(_GPR.items())[:8]}

    def __init__(self, vcpu):
        object.__setattr__(self, "_v", vcpu)

    def __getattr__(self, name: str) -> int:
        v = object.__getattribute__(self, "_v")
        if name in self._GPR:
            return v.gpr(self._GPR[name])
        if name in self._GPR32:
            return v.gpr(self._GPR32[name], 4)
        if name in ("rip", "eip"):
            return v.rip
        if name in ("rflags", "eflags"):
            return v.rflags
        if name in ("cr0", "cr2", "cr3", "cr4", "cr8"):
            return v.cr(int(name[2:]))
        raise AttributeError(name)

    def __setattr__(self, name: str, value: int) -> None:
        v = object.__getattribute__(self, "_v")
        if name in self._GPR:
            v.set_gpr(self._GPR[name], value)
        elif name in self._GPR32:
            v.set_gpr(self._GPR32[name], value, 4)
        elif name in ("rip", "eip"):
            v.set_rip(value)
        elif name in ("rflags", "eflags"):
            v.set_rflags(value)
        elif name in ("cr0", "cr2", "cr3", "cr4", "cr8"):
            v.set_cr(int(name[2:]), value)
        else:
            raise AttributeError(name)

    def dump(self) -> dict[str, int]:
        names = list(self._GPR) if object.__getattribute__(self, "_v").mode == 64 else list(self._GPR)[:8]
        return {n: getattr(self, n) for n in names + ["rip", "rflags"]}


class ExitContext:
    """What a handler gets: the exit, the guest state, and the ways to resume."""

    def __init__(self, vcpu, exit: VmExit):
        self.vcpu = vcpu
        self.exit = exit
        self.ended = None            # RunEnd to raise after the handler
        self.fault = None            # GuestFault to deliver after the handler

    _at = None    # LeanExitContext: what the native hook read at the exit

    @property
    def regs(self) -> Registers:
        return Registers(self.vcpu)

    @property
    def _insn(self):
        """The decoded exiting instruction (vmm.decode.Insn), or None."""
        return self.exit.insn

    # ---- the exit -------------------------------------------------------------
    @property
    def reason(self) -> int:
        return self.exit.reason

    @property
    def name(self) -> str:
        return self.exit.name

    @property
    def qualification(self) -> int:
        return self.exit.qualification

    @property
    def instruction_length(self) -> int:
        return self.exit.instruction_length

    @property
    def config(self) -> VmxConfig:
        return self.vcpu.cfg

    @property
    def tsc(self) -> int:
        return self.vcpu.tsc

    @property
    def guest_tsc(self) -> int:
        return self.vcpu.guest_tsc()

    @property
    def instructions(self) -> int:
        return self.vcpu.icount

    @property
    def console(self) -> str:
        return self.vcpu.platform.serial.text

    @property
    def resume_rip(self) -> int:
        return self.vcpu.rip

    # ---- guest memory -----------------------------------------------------------
    def read(self, address: int, size: int) -> bytes:
        return self.vcpu.read_mem(address, size)

    def write(self, address: int, data: bytes) -> None:
        self.vcpu.write_mem(address, data)

    # ---- ways to resume -----------------------------------------------------------
    def skip(self) -> None:
        """Resume after the exiting instruction."""
        self.vcpu.set_rip(self.exit.rip + self.exit.instruction_length)

    def emulate(self) -> None:
        """Run the default handler (emulate the instruction like a minimal host)."""
        DEFAULT_HANDLERS[self.exit.reason](self)

    def inject(self, vector: int, error_code: int | None = None) -> None:
        """Deliver exception `vector` to the guest at the exiting instruction."""
        self.fault = GuestFault(vector, error_code)

    def inject_event(self, kind: str, vector: int | None = None, error_code: int | None = None,
                     instruction_length: int = 0) -> None:
        """Event injection on the next VM entry (SDM VM-entry interruption information).

        kind: "external", "nmi", "hw_exception", "sw_interrupt", "priv_sw_exception",
        "sw_exception".  The injection is checked with the N3-N8 rules of
        vmcfg.vmx.rules (as for a profile's [inject] table); a violation raises
        ValueError (the run ends with status "error").  The event is delivered
        through the guest IDT before the next guest instruction, whatever RFLAGS.IF
        says (as on VM entry).
        """
        from ..vmx.models import get_model
        from ..vmx.rules import RULE_BY_ID, Ctx
        from ..vmx.settings import INJECT_TYPES
        if kind not in INJECT_TYPES or kind == "other":
            raise ValueError(f"cannot inject {kind!r}: use one of "
                             f"{', '.join(k for k in INJECT_TYPES if k != 'other')}")
        if vector is None:
            vector = int(Vector.NMI) if kind == "nmi" else 0
        cfg = self._next_config()
        cfg.settings["inject"] = {**cfg.settings.get("inject", {}), "type": kind,
                                  "vector": vector, "error_code": error_code,
                                  "instruction_length": instruction_length, "info": None}
        ctx = Ctx(cfg, get_model(cfg.cpu if isinstance(cfg.cpu, str) and cfg.cpu else "cvmm"))
        problems = [v for rid in ("N3", "N4", "N5", "N6", "N7", "N8")
                    for v in RULE_BY_ID[rid].check(ctx)]
        if problems:
            raise ValueError("; ".join(f"[{p.rule}] {p.message}" for p in problems))
        self.vcpu.inject_event(INJECT_TYPES[kind], vector, error_code, instruction_length)

    def end(self, exit_code: int | None = None, message: str = "") -> None:
        if exit_code is None:
            self.ended = RunEnd("halted", None, message or f"ended by the {self.name} handler")
        else:
            self.ended = RunEnd("debug-exit", exit_code,
                                message or f"ended by the {self.name} handler")

    # ---- control changes ------------------------------------------------------------
    def apply(self, config: VmxConfig) -> None:
        self.vcpu.request_apply(config)

    def _next_config(self) -> VmxConfig:
        pending = self.vcpu._pending_cfg or self.vcpu.cfg
        return VmxConfig(controls=dict(pending.controls), settings=copy.deepcopy(pending.settings),
                         cpu=pending.cpu, name=pending.name)

    def set_control(self, path: str, on: bool) -> None:
        c = CONTROL_BY_PATH[path]
        cfg = self._next_config()
        v = cfg.controls.get(c.field, 0)
        cfg.controls[c.field] = (v | c.mask) if on else (v & ~c.mask)
        self.vcpu.request_apply(cfg)

    def set_setting(self, path: str, value: Any) -> None:
        table, key = path.split(".", 1)
        cfg = self._next_config()
        cfg.settings[table][key] = value
        self.vcpu.request_apply(cfg)


_MASK64 = (1 << 64) - 1


class LeanExitContext(ExitContext):
    """The context of an exit whose Python handler the native hook calls directly (CPUID,
    RDTSC, IN/OUT: vcpu/leanexit.py): the same API and the same results as ExitContext.  The
    exit record (`ctx.exit`) is built on first use from what the hook decoded at the exit --
    the registers it depends on (RAX for an OUT's value, RDX for a DX port) were read then."""

    _insn = None
    _exit: VmExit | None = None
    ended = None
    fault = None

    # Made once per exit by vcpu/leanexit.py, which sets its fields itself -- vcpu, _reason,
    # _insn (the decoded instruction), _at = (seq, icount, tsc, rax, rdx) (what the hook read
    # at the exit), ended = fault = None -- so no Python __init__ runs (object's own: the
    # cheapest way to make an instance).
    __init__ = object.__init__

    @property
    def exit(self) -> VmExit:
        ex = self._exit
        if ex is None:
            ins = self._insn
            seq, icount, tsc, rax, rdx = self._at
            qual, data = 0, None
            if self._reason == E.IO_INSTRUCTION:
                port = ins.port_imm if ins.port_imm is not None else rdx & 0xFFFF
                size = ins.io_size
                qual = io_qualification(size, ins.io_in, False, False, ins.port_imm is not None,
                                        port)
                data = {"port": port, "size": size, "direction": "in" if ins.io_in else "out"}
                if not ins.io_in:
                    data["value"] = rax & ((1 << (8 * size)) - 1)
            ex = self._exit = VmExit(self._reason, qual, ins.address, ins.length, ins.raw,
                                     ins.text, insn=ins, data=data)
            ex.seq, ex.instructions, ex.tsc = seq, icount, tsc
        return ex

    @property
    def reason(self) -> int:
        return self._reason

    @property
    def name(self) -> str:
        return exit_name(self._reason)

    @property
    def instruction_length(self) -> int:
        return self._insn.length

    def skip(self) -> None:
        ins = self._insn
        v = self.vcpu
        if v.mode == 64:                # set_rip, without its calls
            v._pend[v._pc_reg] = (ins.address + ins.length - v.cs_base) & _MASK64
        else:
            v.set_rip(ins.address + ins.length)

    def emulate(self) -> None:
        DEFAULT_HANDLERS[self._reason](self)


# ==================================================================== default handlers
def _skip_after(fn: Callable) -> Callable:
    def h(ctx: ExitContext) -> None:
        fn(ctx)
        if ctx.fault is None and ctx.ended is None:
            ctx.skip()
    h.__name__ = fn.__name__
    h.__doc__ = fn.__doc__
    return h


def _guard_fault(fn: Callable[[ExitContext], None]) -> Callable[[ExitContext], None]:
    def h(ctx: ExitContext) -> None:
        try:
            fn(ctx)
        except GuestFault as f:
            ctx.fault = f
    h.__name__ = fn.__name__
    h.__doc__ = fn.__doc__
    return h


def h_cpuid(ctx: ExitContext) -> None:
    """CPUID from the cvmm CPU model plus the profile's [cpuid] overrides."""
    v = ctx.vcpu
    g = v._gprs
    pend = v._pend
    rc = v._rcache
    ra, rcx = g[0], g[1]
    if not pend and ra in rc and rcx in rc:
        leaf, sub = rc[ra], rc[rcx]     # (v.rr written out: the lean path has RAX and RCX there)
    else:
        leaf, sub = v.rr(ra), v.rr(rcx)
    leaf &= 0xFFFFFFFF
    sub &= 0xFFFFFFFF
    fx = v.fx
    r = fx.cpuid_memo.get((leaf, sub))
    if r is None:
        cpuid = v.cpuid
        r = cpuid.query(leaf, sub)
        # the native exit path answers the next ones from its cache, this handler from the
        # memo (both emptied together, FastExit.cpuid_clear): leaf 1's OSXSAVE bit comes from
        # CR4 below; its APIC bit follows IA32_APIC_BASE, whose writes clear the cache
        fx.cpuid_put(leaf, sub if leaf in cpuid.subleaf_leaves else None, r)
        fx.cpuid_remember(leaf, sub, r)
    eax, ebx, ecx, edx = r
    if leaf == 1 and ecx & (1 << 26):
        ecx = (ecx & ~(1 << 27)) | ((v.cr(4) >> 18 & 1) << 27)    # OSXSAVE mirrors CR4
    # 32-bit results zero-extend into the 64-bit registers
    pend[ra] = eax
    pend[g[3]] = ebx
    pend[rcx] = ecx
    pend[g[2]] = edx
    ctx.skip()


def h_rdtsc(ctx: ExitContext) -> None:
    """The guest's TSC (virtual TSC with TSC offsetting/scaling applied)."""
    v = ctx.vcpu
    ins = ctx._insn
    if v.mode == 64 and ins is not None and ins.kind == "rdtsc":
        # emulate_rdtsc written out (an exit of every RDTSC): EAX and EDX zero-extended.  The
        # VMM's TSC at the exit: the lean path's hook computed it already (ctx._at), the same
        # value (the exit counted, the instructions retired before it)
        at = ctx._at
        t = v.guest_tsc(v._tsc_at(v.icount) if at is None else at[2])
        g = v._gprs
        pend = v._pend
        pend[g[0]] = t & 0xFFFFFFFF
        pend[g[2]] = t >> 32
    else:
        v.emulate_rdtsc(ins)
    if ctx.fault is None and ctx.ended is None:
        ctx.skip()


def h_hlt(ctx: ExitContext) -> None:
    """Skip HLT, then wait for the preemption timer; with no event possible, end ('halted')."""
    ctx.skip()
    try:
        ctx.vcpu.emulate_hlt(None)
    except RunEnd as e:
        ctx.ended = e


@_skip_after
def h_nop(ctx: ExitContext) -> None:
    """Nothing to emulate: skip the instruction."""


@_skip_after
@_guard_fault
def h_msr(ctx: ExitContext) -> None:
    """RDMSR/WRMSR on the virtual MSR file; #GP(0) for MSRs the virtual CPU lacks."""
    ctx.vcpu.emulate_msr(ctx.exit.insn)


def h_io(ctx: ExitContext) -> None:
    """Perform the I/O on the board's devices (vmcfg/vmm/devices)."""
    v = ctx.vcpu
    ins = ctx._insn
    if ins.io_string:
        v.emulate_io(ins)
    else:
        # (emulate_io's first case and the bus's port lookup written out: an exit of every
        # IN/OUT) a device that claims the port, or the bus (wide accesses, unclaimed ports)
        port = ins.port_imm
        if port is None:
            port = v.gpr(2, 2)
        size = ins.io_size
        mask = (1 << (8 * size)) - 1
        if ins.io_in:
            f = v._io_readers.get(port)
            v.set_gpr(0, f(port, size) & mask if f is not None else
                      v.platform.io_read(port, size), size)
        else:
            r = v._gprs[0]
            value = v._pend.get(r)
            if value is None:
                value = v._rcache.get(r)
                if value is None:
                    value = v.rr(r)
            f = v._io_writers.get(port)
            if f is not None:
                f(port, size, value & mask)
            else:
                v.platform.io_write(port, size, value & mask)
    if ctx.fault is None and ctx.ended is None:
        ctx.skip()


@_skip_after
def h_rdrand(ctx: ExitContext) -> None:
    """Deterministic random numbers (xorshift), CF=1."""
    ctx.vcpu.emulate_rdrand(ctx.exit.insn)


@_skip_after
@_guard_fault
def h_rdpmc(ctx: ExitContext) -> None:
    """Fixed counter 0 = retired instructions; other counters read 0."""
    ctx.vcpu.emulate_rdpmc(ctx.exit.insn)


def h_ud(ctx: ExitContext) -> None:
    """VMX and SMX instructions are not offered to the guest: inject #UD."""
    ctx.inject(6)


@_skip_after
def h_vmcall(ctx: ExitContext) -> None:
    """No hypercalls are implemented: RAX = -1000 (KVM's -KVM_ENOSYS)."""
    ctx.vcpu.set_gpr(0, -1000 & ((1 << 64) - 1), 8)


@_skip_after
@_guard_fault
def h_xsetbv(ctx: ExitContext) -> None:
    """XCR0 := EDX:EAX.  #GP(0) for ECX != 0, x87 state off, or a state component the CPU
    model does not support (CPUID.(EAX=0DH,ECX=0):EAX; AVX needs SSE)."""
    v = ctx.vcpu
    val = (v.gpr(2, 4) << 32) | v.gpr(0, 4)
    supported = v.cpuid.query(0xD, 0)[0] | (v.cpuid.query(0xD, 0)[3] << 32)
    if v.gpr(1, 4) != 0 or not val & 1 or val & ~supported or (val & 4 and not val & 2):
        raise GuestFault(13, 0)
    v.flush()
    v.cpu_state.set_xcr0(val)
    v.after_state_load()
    v.xcr0 = val


@_skip_after
def h_invlpg(ctx: ExitContext) -> None:
    """Flush the emulated TLB."""
    uc = ctx.vcpu.uc
    if hasattr(uc, "ctl_flush_tlb"):
        uc.ctl_flush_tlb()


def _write_cr(v, n: int, value: int) -> None:
    if n == 0:
        owned = v.cr0_mask
        v.cr0_shadow = (v.cr0_shadow & ~owned) | (value & owned)
    elif n == 4:
        owned = v.cr4_mask
        v.cr4_shadow = (v.cr4_shadow & ~owned) | (value & owned)
    v.set_cr(n, value)


@_skip_after
def h_cr(ctx: ExitContext) -> None:
    """Perform the CR access; guest-visible values of host-owned bits go to the read shadow."""
    from .exitinfo import CR_CLTS, CR_LMSW, CR_MOV_FROM, CR_MOV_TO
    v = ctx.vcpu
    q = ctx.qualification
    n, access, gpr = q & 0xF, (q >> 4) & 3, (q >> 8) & 0xF
    ins = ctx.exit.insn
    if access == CR_MOV_TO:
        value = v.gpr(gpr, ins.gpr_size if ins else 8)
        _write_cr(v, n, value)
        if n == 3:
            uc = v.uc
            if hasattr(uc, "ctl_flush_tlb"):
                uc.ctl_flush_tlb()
    elif access == CR_MOV_FROM:
        v.set_gpr(gpr, v.cr(n), 8)
    elif access == CR_CLTS:
        v.cr0_shadow &= ~8
        v.set_cr(0, v.cr(0) & ~8)
    elif access == CR_LMSW:
        src = (q >> 16) & 0xF
        cr0 = v.cr(0)
        low = (src & 0xF) | (cr0 & 1)
        v.cr0_shadow = (v.cr0_shadow & ~(v.cr0_mask & 0xF)) | (low & v.cr0_mask & 0xF)
        v.set_cr(0, (cr0 & ~0xF) | low)


@_skip_after
def h_dr(ctx: ExitContext) -> None:
    """Perform MOV to/from DRn."""
    from unicorn import x86_const as X
    v = ctx.vcpu
    q = ctx.qualification
    dr, mov_from, gpr = q & 7, bool(q & 0x10), (q >> 8) & 0xF
    reg = getattr(X, f"UC_X86_REG_DR{dr}")
    if mov_from:
        v.set_gpr(gpr, v.rr(reg), 8)
    else:
        v.rw(reg, v.gpr(gpr, 8))


@_skip_after
def h_desc(ctx: ExitContext) -> None:
    """Perform LGDT/LIDT/SGDT/SIDT/LLDT/LTR/SLDT/STR (operands and the GDT at linear addresses,
    through the guest's paging)."""
    import struct
    from unicorn import x86_const as X
    v = ctx.vcpu
    ident = (ctx.exit.instruction_info >> 28) & 3
    ins = ctx.exit.insn
    if ctx.reason == E.GDTR_IDTR_ACCESS:
        reg = X.UC_X86_REG_GDTR if ident in (0, 2) else X.UC_X86_REG_IDTR
        ea = ctx.exit.guest_linear_address or 0
        base_size = 8 if v.mode == 64 else 4
        if ident >= 2:
            raw = v.read_lin(ea, 2 + base_size)
            limit = struct.unpack_from("<H", raw)[0]
            base = int.from_bytes(raw[2:], "little")
            if v.mode != 64:
                base &= 0xFFFFFFFF
            v.uc.reg_write(reg, (0, base, limit, 0))
        else:
            _sel, base, limit, _fl = v.uc.reg_read(reg)
            v.write_lin(ea, struct.pack("<H", limit) + base.to_bytes(base_size, "little"))
        return
    reg = X.UC_X86_REG_LDTR if ident in (0, 2) else X.UC_X86_REG_TR
    if ident < 2:
        sel = v.uc.reg_read(reg)[0]
        if ins is not None and ins.has_mem:
            v.write_lin(ctx.exit.guest_linear_address, struct.pack("<H", sel))
        else:
            v.set_gpr(ins.gpr, sel, ins.gpr_size if ins else 2)
        return
    if ins is not None and ins.has_mem:
        sel = struct.unpack("<H", v.read_lin(ctx.exit.guest_linear_address, 2))[0]
    else:
        sel = v.gpr(ins.gpr, 2)
    _s, gbase, glimit, _f = v.uc.reg_read(X.UC_X86_REG_GDTR)
    base = limit = flags = 0
    if sel & ~7 and (sel & ~7) + 7 <= glimit:
        d = struct.unpack("<Q", v.read_lin(gbase + (sel & ~7), 8))[0]
        base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
        limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
        flags = (d >> 40) & 0xF0FF
        if v.mode == 64:
            hi = struct.unpack("<Q", v.read_lin(gbase + (sel & ~7) + 8, 8))[0]
            base |= (hi & 0xFFFFFFFF) << 32
    v.uc.reg_write(reg, (sel, base, limit, flags))


def h_exception(ctx: ExitContext) -> None:
    """Reflect the exception into the guest (deliver it through the guest IDT)."""
    from .exitinfo import INTR_HW_EXCEPTION
    ex = ctx.exit
    vector = ex.interruption_info & 0xFF
    itype = (ex.interruption_info >> 8) & 7
    if itype == InterruptionType.NMI:   # an NMI exit (nmi_exiting): give the guest the NMI
        ctx.vcpu.reflect_nmi()
        return
    if vector == Vector.PF:
        ctx.vcpu.set_cr(2, ex.qualification)
    next_rip = ex.data.get("next_rip")
    ctx.vcpu.set_rip(ex.rip)
    ctx.vcpu.deliver(vector, ex.interruption_error_code if itype == INTR_HW_EXCEPTION else None,
                     ex.rip, itype=itype, next_rip=next_rip)


def h_triple(ctx: ExitContext) -> None:
    """The guest is dead: end the run with status 'triple-fault'."""
    ctx.vcpu.fault_dump = ctx.vcpu.register_dump()
    ctx.ended = RunEnd("triple-fault", None,
                       f"triple fault at RIP {ctx.exit.rip:#x} (an exception could not be "
                       "delivered through the guest IDT)")


def h_external_interrupt(ctx: ExitContext) -> None:
    """Like a host that passes the interrupt on: acknowledge it (if the exit did not),
    and deliver it to the guest as soon as its RFLAGS.IF allows.  With virtual-interrupt
    delivery the interrupt becomes a virtual one (VIRR, RVI) and the local APIC gets its EOI
    at once -- except a level-triggered one, which stays in service there until the guest's
    virtual EOI (an EOI-induced exit: list the vector in apic.eoi_exit)."""
    v = ctx.vcpu
    info = ctx.exit.interruption_info
    vec = info & 0xFF if info >> 31 else v.ack_interrupt()
    if vec is None:
        return
    if v.apicv.vid:
        from .apicv import pass_on_as_virtual
        pass_on_as_virtual(v, vec)
        return
    v.reflect_interrupt(vec)


def h_interrupt_window(ctx: ExitContext) -> None:
    """The guest can take an interrupt: turn interrupt-window exiting off (an interrupt the
    VMM reflects is delivered right after, before the next guest instruction)."""
    ctx.set_control("primary.interrupt_window_exiting", False)


def h_nmi_window(ctx: ExitContext) -> None:
    """No NMI is pending on this platform: turn NMI-window exiting off."""
    ctx.set_control("primary.nmi_window_exiting", False)


def h_mtf(ctx: ExitContext) -> None:
    """Monitor trap flag: nothing to do, resume."""


def h_tpr_below_threshold(ctx: ExitContext) -> None:
    """TPR below threshold (trap-like, after the MOV to CR8): nothing to deliver, resume."""


def h_apic_access(ctx: ExitContext) -> None:
    """APIC access (fault-like): pass the access on -- the instruction runs again and this
    time its access reaches the local APIC (a fetch cannot be passed on: the run ends)."""
    from .apicv import pass_access_on
    pass_access_on(ctx)


def h_apic_write(ctx: ExitContext) -> None:
    """APIC write (trap-like): the value is in the virtual-APIC page; give it to the local
    APIC's register at that offset, as a host that emulates the APIC does."""
    from .apicv import pass_write_on
    pass_write_on(ctx)


def h_eoi_induced(ctx: ExitContext) -> None:
    """Virtualized EOI of a vector in the EOI-exit bitmap (trap-like): if the local APIC
    still has the vector in service (a level-triggered interrupt the VMM passed on), it gets
    its EOI now (the IOAPIC sees it)."""
    from .apicv import pass_eoi_on
    pass_eoi_on(ctx)


def h_ptimer(ctx: ExitContext) -> None:
    """Reload the preemption timer with the profile's value (at least 1) and resume."""
    ctx.vcpu.ptimer_value = max(1, ctx.config.settings["preemption_timer"]["value"])


def h_ept(ctx: ExitContext) -> None:
    """ept.on_violation = "map": map the page rwx and resume; "stop": end with a report."""
    v = ctx.vcpu
    gpa = ctx.exit.guest_physical_address or 0
    if ctx.config.settings["ept"]["on_violation"] == "map" and gpa < v.memory:
        v.ept_map(gpa, "rwx")
        return
    v.fault_dump = v.register_dump()
    where = f", outside guest RAM (0x0-{v.memory - 1:#x})" if gpa >= v.memory else ""
    ctx.ended = RunEnd("error", None,
                       f"EPT violation: guest {ctx.exit.data.get('access', 'access')} of "
                       f"guest-physical {gpa:#x}{where} (EPT permissions "
                       f"{ctx.exit.data.get('permissions', '---')}) at RIP {ctx.exit.rip:#x}")


def h_unhandled(ctx: ExitContext) -> None:
    ctx.ended = RunEnd("error", None, f"no default handler for exit {ctx.reason} ({ctx.name})")


class _Defaults(dict):
    def __missing__(self, key):
        return h_unhandled


DEFAULT_HANDLERS: dict[int, Callable[[ExitContext], None]] = _Defaults({
    E.EXCEPTION_NMI: h_exception,
    E.EXTERNAL_INTERRUPT: h_external_interrupt,
    E.TRIPLE_FAULT: h_triple,
    E.INTERRUPT_WINDOW: h_interrupt_window,
    E.NMI_WINDOW: h_nmi_window,
    E.CPUID: h_cpuid,
    E.GETSEC: h_ud,
    E.HLT: h_hlt,
    E.INVD: h_nop,
    E.INVLPG: h_invlpg,
    E.RDPMC: h_rdpmc,
    E.RDTSC: h_rdtsc,
    E.VMCALL: h_vmcall,
    E.VMCLEAR: h_ud,
    E.VMLAUNCH: h_ud,
    E.VMPTRLD: h_ud,
    E.VMPTRST: h_ud,
    E.VMREAD: h_ud,
    E.VMRESUME: h_ud,
    E.VMWRITE: h_ud,
    E.VMXOFF: h_ud,
    E.VMXON: h_ud,
    E.CR_ACCESS: h_cr,
    E.DR_ACCESS: h_dr,
    E.IO_INSTRUCTION: h_io,
    E.RDMSR: h_msr,
    E.WRMSR: h_msr,
    E.MWAIT: h_nop,
    E.MONITOR_TRAP_FLAG: h_mtf,
    E.MONITOR: h_nop,
    E.PAUSE: h_nop,
    E.TPR_BELOW_THRESHOLD: h_tpr_below_threshold,
    E.APIC_ACCESS: h_apic_access,
    E.EOI_INDUCED: h_eoi_induced,
    E.APIC_WRITE: h_apic_write,
    E.GDTR_IDTR_ACCESS: h_desc,
    E.LDTR_TR_ACCESS: h_desc,
    E.EPT_VIOLATION: h_ept,
    E.INVEPT: h_ud,
    E.RDTSCP: h_rdtsc,
    E.PREEMPTION_TIMER: h_ptimer,
    E.INVVPID: h_ud,
    E.WBINVD: h_nop,
    E.XSETBV: h_xsetbv,
    E.RDRAND: h_rdrand,
    E.INVPCID: h_invlpg,
    E.VMFUNC: h_ud,
    E.RDSEED: h_rdrand,
})


# ==================================================================== loading user handlers
class HandlerError(Exception):
    pass


def load_handler(spec: str, base_dir: str | None = None) -> Callable[[ExitContext], None]:
    """Resolve "module:function" (module may be a .py path, relative to base_dir)."""
    if ":" not in spec:
        raise HandlerError(f"handler {spec!r}: expected \"module:function\"")
    mod_name, func = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
            path = mod_name
            if base_dir and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            if not os.path.isfile(path):
                raise HandlerError(f"handler {spec!r}: no file {path}")
            name = "vmcfg_handler_" + os.path.splitext(os.path.basename(path))[0]
            s = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
        else:
            added = False
            if base_dir and base_dir not in sys.path:
                sys.path.insert(0, base_dir)
                added = True
            try:
                mod = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(base_dir)
    except HandlerError:
        raise
    except Exception as e:
        raise HandlerError(f"handler {spec!r}: cannot import {mod_name}: "
                           f"{type(e).__name__}: {e}") from None
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise HandlerError(f"handler {spec!r}: {mod_name} has no function {func!r}")
    return fn


def resolve_handlers(table: dict[str, str], base_dir: str | None = None
                     ) -> dict[int, Callable[[ExitContext], None]]:
    out: dict[int, Callable] = {}
    for key, spec in table.items():
        r = lookup_exit(key if not isinstance(key, int) else key)
        if r is None:
            raise HandlerError(f"handler for {key!r}: unknown exit reason "
                               "(use a name like CPUID or a number)")
        out[r.number] = load_handler(spec, base_dir)
    return out
