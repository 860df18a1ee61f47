"""Intercepts: which instruction kinds the VMM must see under a configuration, the
trap hook, each instruction's semantics (exit or not, per the controls), the exit
record and its handler (handlers.DEFAULT_HANDLERS), and the emulation shared by the
non-exiting paths and the default handlers."""

from __future__ import annotations

import iced_x86 as ix
import time
from typing import Any
from .. import apicv as _apicv
from .. import decode as D
from ...vmx.config import VmxConfig
from ...vmx.exits import Exit, Vector
from ..devices.lapic import MSR_APIC_BASE
from ..devices import DebugExit, SystemReset
from .deviceio import device_run_end
from ..exitinfo import (CR_CLTS, CR_LMSW, CR_MOV_FROM, CR_MOV_TO, VmExit, cr_qualification,
                        descriptor_table_info, dr_qualification, io_qualification, ldt_tr_info, rdrand_info)
from ..handlers import DEFAULT_HANDLERS, ExitContext
from ..outcome import GuestFault, RunEnd
from ..platform import MsrFault
from .common import EXIT_COST, MASK64, TSC_PER_INSN, _SEGS


_UD_MNEMONICS = frozenset({ix.Mnemonic.UD0, ix.Mnemonic.UD1, ix.Mnemonic.UD2})


# RDTSC, CPUID and byte IN/OUT (imm8 and DX forms): the same instruction in every mode
_MODE_FREE = frozenset({b"\x0f\x31", b"\x0f\xa2", b"\xec", b"\xee"}
                       | {bytes((op, p)) for op in (0xE4, 0xE6) for p in range(256)})


_UNCONDITIONAL = {"cpuid": Exit.CPUID, "invd": Exit.INVD, "xsetbv": Exit.XSETBV,
                  "vmcall": Exit.VMCALL, "getsec": Exit.GETSEC}


# kinds always trapped: unconditional exits, and instructions whose results the
# VMM must produce itself (virtual TSC, MSR file, platform I/O, deterministic RNG)
ALWAYS_TRAPPED = frozenset({"cpuid", "invd", "xsetbv", "vmcall", "vmx", "getsec", "hlt",
                            "rdtsc", "rdtscp", "rdmsr", "wrmsr", "io", "rdrand", "rdseed",
                            "rdpmc", "mwait", "monitor", "invpcid",
                            "mov_to_cr4",       # CR4 bits the CPU model lacks: #GP (cr4_allowed)
                            "mov_to_cr8", "mov_from_cr8",    # devices: CR8 is the LAPIC TPR
                            "smsw_wide",       # the engine's SMSW r32/r64 stores 16 bits only
                            "pushf_rf"})       # ... and its 16/32-bit PUSHF stores RF
CR4_UMIP = 1 << 11
RFLAGS_RF = 1 << 16


# Instruction kinds that raise #GP(0) at CPL > 0 (this check comes before any VM exit)
PRIVILEGED = frozenset({"rdmsr", "wrmsr", "hlt", "invd", "wbinvd", "xsetbv", "invlpg", "invpcid",
                        "mov_dr", "clts", "lmsw", "mov_to_cr0", "mov_from_cr0", "mov_to_cr3",
                        "mov_from_cr3", "mov_to_cr4", "mov_from_cr4", "mov_to_cr8",
                        "mov_from_cr8", "monitor", "mwait"})


def cr4_allowed(cpuid) -> int:
    """CR4 bits the CPU model supports (the rest are reserved: MOV to CR4 raises #GP(0))."""
    _a, _b, ecx1, edx1 = cpuid.query(1, 0)
    _a, ebx7, ecx7, _d = cpuid.query(7, 0)
    bits = 0x7FF & ~(1 << 7 if not edx1 & (1 << 13) else 0)     # VME..OSXMMEXCPT (PGE per CPUID)
    for cond, bit in ((ecx7 & (1 << 2), 11), (ebx7 & 1, 16), (ecx1 & (1 << 17), 17),
                      (ecx1 & (1 << 26), 18), (ebx7 & (1 << 7), 20), (ebx7 & (1 << 20), 21),
                      (ecx7 & (1 << 3), 22), (ecx7 & (1 << 31), 24), (ecx7 & (1 << 16), 12)):
        if cond:
            bits |= 1 << bit
    return bits


def _prefixes(ins: D.Insn) -> bytes:
    """The legacy/REX prefix bytes of a two-byte-opcode (0F xx) instruction."""
    i = ins.raw.find(b"\x0f")
    return ins.raw[:i] if i > 0 else b""


def _address_size(ins: D.Insn, mode: int) -> int:
    """Address size of a memory operand in bytes (the 0x67 prefix flips the default)."""
    default = 8 if mode == 64 else 4 if mode == 32 else 2
    if 0x67 in _prefixes(ins):
        return 4 if mode == 64 else 2 if mode == 32 else 4
    return default


def trapped_kinds(cfg: VmxConfig) -> frozenset[str]:
    """Instruction kinds the VMM must see under `cfg` (the rest run natively)."""
    k = set(ALWAYS_TRAPPED)
    on = cfg.on
    s = cfg.settings
    if on("primary.invlpg_exiting"):
        k.add("invlpg")
    if on("primary.pause_exiting") or on("secondary.pause_loop_exiting"):
        k.add("pause")
    if on("secondary.wbinvd_exiting"):
        k.add("wbinvd")
    if on("secondary.descriptor_table_exiting"):
        k |= {"gdt_idt", "ldt_tr"}
    if on("primary.mov_dr_exiting"):
        k.add("mov_dr")
    if s["cr0"]["mask"]:
        k |= {"mov_to_cr0", "mov_from_cr0", "smsw"}        # smsw_wide: always
        if s["cr0"]["mask"] & 0x8:
            k.add("clts")
        if s["cr0"]["mask"] & 0xF:
            k.add("lmsw")
    if s["cr4"]["mask"]:
        k |= {"mov_to_cr4", "mov_from_cr4"}
    if on("primary.cr3_load_exiting"):
        k.add("mov_to_cr3")
    if on("primary.cr3_store_exiting"):
        k.add("mov_from_cr3")
    if on("primary.cr8_load_exiting"):
        k.add("mov_to_cr8")
    if on("primary.cr8_store_exiting"):
        k.add("mov_from_cr8")
    if on("primary.interrupt_window_exiting"):
        k |= {"sti", "popf", "iret"}
    return frozenset(k)


# Instruction kinds that exit when one control is on and are otherwise emulated by
# one method (or simply retire): kind -> (control, basic exit reason, emulator).
SIMPLE_EXITS: dict[str, tuple[str, Exit, str | None]] = {
    "hlt": ("primary.hlt_exiting", Exit.HLT, "emulate_hlt"),
    "rdrand": ("secondary.rdrand_exiting", Exit.RDRAND, "emulate_rdrand"),
    "rdseed": ("secondary.rdseed_exiting", Exit.RDSEED, "emulate_rdrand"),
    "rdpmc": ("primary.rdpmc_exiting", Exit.RDPMC, "emulate_rdpmc"),
    "mwait": ("primary.mwait_exiting", Exit.MWAIT, None),
    "monitor": ("primary.monitor_exiting", Exit.MONITOR, None),
}


class ExitStats:
    """Exits of one reason and the host time their handlers took, including the ones the
    native exit path did (it counts them in its state block, vmm/native)."""

    __slots__ = ("_count", "_seconds", "_native", "_reason")

    def __init__(self, count: int = 0, seconds: float = 0.0, native: Any = None,
                 reason: int = 0):
        self._count, self._seconds, self._native, self._reason = count, seconds, native, reason

    @property
    def count(self) -> int:
        n = self._native
        return self._count + (n.stats[self._reason] if n is not None else 0)

    @count.setter
    def count(self, v: int) -> None:
        self._count = v - (self.count - self._count)

    @property
    def seconds(self) -> float:
        n = self._native
        return self._seconds + (n.stats_ns[self._reason] * 1e-9 if n is not None else 0.0)

    @seconds.setter
    def seconds(self, v: float) -> None:
        self._seconds = v - (self.seconds - self._seconds)

    def __repr__(self) -> str:
        return f"ExitStats(count={self.count}, seconds={self.seconds:.6f})"


class InterceptsMixin:
    """Intercepts: trapped instruction kinds, their semantics and VM exits (see the module doc)."""

    def _raw_trap(self, _uch, address, size, _ud):
        try:
            self._on_trap(self.uc, address, size, None)
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            self.uc.emu_stop()

    def _on_trap(self, uc, address, size, _ud):
        if self._in_hook:
            return
        if self._skip_once == address:
            self._skip_once = None
            return
        self._rcache.clear()
        if self._fx_native:           # the native hook read the registers in one batch
            self._fx_snapshot()
        ins = self._insns.get(address)
        # the mode decides how the bytes decode; RDTSC/CPUID without prefixes decode the same
        # in every mode and need no CPL unless CR4.TSD: skip reading the mode for them
        if ins is None or ins.raw not in _MODE_FREE or (ins.kind == "rdtsc" and
                                                         self.cr(4) & 4):
            self._sync_mode()
        if ins is None or (ins.bitness != self.bitness and ins.raw not in _MODE_FREE):
            ins = self._decode_at(address)
            if ins is None:
                return
        if ins.kind not in self._trapped:
            return
        if ins.kind == "pushf_rf":
            self._pushf_rf(address)
            return
        self._in_hook = True
        try:
            self.icount = self._retired_at(address)
            if self._fx_native:
                self._fx_learn(address, ins)
            fxs = self._fxs
            exits_before = fxs.exit_count
            nxt = self._instruction(ins)
            if nxt is not None:
                self.icount += 1
                self.counter.set_count(self.icount)
                self._pend[self._pc_reg] = self._rip_value(nxt)
                if self._pending_cfg is not None or self._event is not None or \
                        self._input_wake or (
                        self.platform.changed and self._device_change_needs_stop(self.icount)) or (
                        fxs.exit_count != exits_before and self._reentry_needed()):
                    if self._event is None:
                        self._event = ("resume", ins.kind)
                    uc.emu_stop()
            else:
                # not retired: stop here, the run loop takes over (fault/end/single-step)
                self.counter.set_count(self.icount)
                uc.emu_stop()
        except RunEnd as e:
            self._event = ("end", e)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except (DebugExit, SystemReset) as d:     # debug exit; reset (0x64, 0xCF9), power-off
            self.icount += 1
            self._event = ("end", device_run_end(d))
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except GuestFault as f:
            self._event = ("fault", f.vector, f.error_code, address, self.icount, f.address)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except BaseException as e:    # a bug or a user handler error: never lose it
            self._event = ("error", e)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        finally:
            self._trap_flush()
            self._in_hook = False

    def _pushf_rf(self, address: int) -> None:
        """PUSHF/PUSHFD outside 64-bit code: the engine copies RFLAGS.RF into the image, and
        keeps RF set after the instruction that follows the IRET that loaded it, where the
        processor clears it (SDM 17.3.1.1) and PUSHF stores it as 0.  With RF set, clear it
        and restart the block at the PUSHF (the engine's translated code must not go on
        with flags rewritten under it); with RF clear, it runs natively."""
        fl = self.rflags
        if not fl & RFLAGS_RF:
            return
        self.icount = self._retired_at(address)
        self.counter.set_count(self.icount)
        self.set_rflags(fl & ~RFLAGS_RF)
        self._pend[self._pc_reg] = self._rip_value(address)
        self._trap_flush()

    def _reentry_needed(self) -> bool:
        return self.platform.next_event() is not None or self._events_waiting()

    def _events_waiting(self) -> bool:
        """After an exit, the run loop must look at events before the guest goes on (windows,
        preemption timer, MTF, interrupts or NMIs the VMM reflects) -- a device timer aside."""
        apicv = self.apicv                      # (pending() is None without VID: one call less)
        return self._reentry or bool(self._virq) or self._nmi_reflect or self._nmi_pending \
            or (apicv.vid and apicv.pending() is not None)

    def vmexit(self, ex: VmExit) -> None:
        """Record an exit, run its handler (user or default)."""
        fxs = self._fxs
        ex.seq = fxs.exit_count = fxs.exit_count + 1
        ex.instructions = ic = self.icount
        ex.tsc = self._tsc_at(ic)
        if self._on["pin.activate_vmx_preemption_timer"] and self._ptimer_fire is not None \
                and self._on["exit.save_vmx_preemption_timer_value"]:
            now = self.tsc - EXIT_COST
            left = (self._ptimer_fire >> self.ptimer_rate) - (now >> self.ptimer_rate)
            self.ptimer_value = max(0, left) & 0xFFFFFFFF
        st = self.exit_stats.get(ex.reason)
        if st is None:
            st = self.exit_stats[ex.reason] = ExitStats(native=self._fxs, reason=ex.reason)
            self.exit_order.append(ex.reason)
            self._fx_first_exit(ex.reason)
        st._count += 1
        # -- trace hook (issue 17): the record is taken before the handler and written after it
        #    with the handler's host time; with no trace nothing extra runs.
        tr = self.trace
        rec = tr.begin(ex) if tr is not None else None
        t0 = time.perf_counter_ns()
        try:
            ctx = ExitContext(self, ex)
            h = self.user_handlers.get(ex.reason)
            if h is not None:
                try:
                    h(ctx)
                except (RunEnd, GuestFault):
                    raise
                except Exception as e:
                    raise RunEnd("error", None,
                                 f"exit handler for {ex.name} raised {type(e).__name__}: {e}") from e
            else:
                DEFAULT_HANDLERS[ex.reason](ctx)
            self._last_ctx = ctx
        finally:
            dt = time.perf_counter_ns() - t0
            st._seconds += dt * 1e-9
            if rec is not None:
                tr.end(rec, t0, dt)
        # -- end of trace hook
        self._ptimer_fire = None     # re-armed at the next VM entry

    def _exit(self, reason: int, ins: D.Insn | None, qual: int = 0, **kw) -> int | None:
        """A VM exit caused by `ins`; returns the linear RIP to resume at."""
        ex = VmExit(reason, qual, ins.address if ins else self.rip,
                    ins.length if ins else 0, ins.raw if ins else b"",
                    ins.text if ins else "", insn=ins, **kw)
        self.vmexit(ex)
        return self._exit_outcome()

    def _exit_outcome(self) -> int | None:
        """What the handler of the last exit decided: end the run, fault, or resume at an RIP."""
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        if ctx.fault is not None:
            raise ctx.fault
        return ctx.resume_rip

    def _trap_exit(self, reason: int, ins: D.Insn, nxt: int, qual: int = 0, **kw) -> int | None:
        """A trap-like VM exit after `ins` completed: RIP is the next instruction."""
        self.icount += 1                 # the instruction has retired before the exit
        self.counter.set_count(self.icount)
        self.set_rip(nxt)
        ex = VmExit(reason, qual, nxt, 0, b"", "", insn=None, **kw)
        self.vmexit(ex)
        self.icount -= 1                 # _on_trap counts the instruction when it resumes
        self.counter.set_count(self.icount)
        return self._exit_outcome()

    def _instruction(self, ins: D.Insn) -> int | None:
        cfg = self.cfg
        on = self._on.__getitem__
        k = ins.kind
        nxt = ins.address + ins.length
        if self.cpl and (k in PRIVILEGED or (k == "gdt_idt" and ins.mnemonic in (D.M.LGDT, D.M.LIDT))
                         or (k == "ldt_tr" and ins.mnemonic in (D.M.LLDT, D.M.LTR))
                         or (k == "rdpmc" and not self.cr(4) & (1 << 8))
                         or (k in ("rdtsc", "rdtscp") and self.cr(4) & (1 << 2))):
            raise GuestFault(13, 0)
        if k in _UNCONDITIONAL:
            if k == "getsec" and not self.cr(4) & (1 << 14):
                raise GuestFault(6)
            if k == "xsetbv" and not self.cr(4) & (1 << 18):
                raise GuestFault(6)
            return self._exit(_UNCONDITIONAL[k], ins)
        if k == "vmx":
            return self._exit(ins.reason_of_vmx, ins)
        if k == "rdtsc":
            if on("primary.rdtsc_exiting"):
                return self._exit(Exit.RDTSC, ins)
            self.emulate_rdtsc(ins)
            return nxt
        if k == "rdtscp":
            if not on("secondary.enable_rdtscp"):
                raise GuestFault(6)
            if on("primary.rdtsc_exiting"):
                return self._exit(Exit.RDTSCP, ins)
            self.emulate_rdtsc(ins)
            return nxt
        if k in ("rdmsr", "wrmsr"):
            msr = self.gpr(1, 4)
            write = k == "wrmsr"
            if cfg.msr_intercepted(msr, write):
                data = {"msr": msr}
                if write:
                    data["value"] = (self.gpr(2, 4) << 32) | self.gpr(0, 4)
                return self._exit(Exit.WRMSR if write else Exit.RDMSR, ins, data=data)
            if self.apicv.x2apic and _apicv.X2APIC_FIRST <= msr <= _apicv.X2APIC_LAST:
                done, rip = _apicv.x2apic_msr(self, ins, msr, write, nxt)
                if done:                 # virtualize x2APIC mode (apicv.py)
                    return rip
            self.emulate_msr(ins)
            return nxt
        if k == "io":
            if not ins.io_string:             # the common case: no exit, one port access
                port = ins.port_imm if ins.port_imm is not None else self.gpr(2, 2)
                if not self._io_exits(port, ins.io_size):
                    self._io_access(ins, port)
                    return nxt
            port, size, qual, gla = self._io_params(ins)
            if self._io_exits(port, size):
                data = {"port": port, "size": size, "direction": "in" if ins.io_in else "out"}
                if not ins.io_in and not ins.io_string:
                    data["value"] = self.gpr(0, size)
                return self._exit(Exit.IO_INSTRUCTION, ins, qual, guest_linear_address=gla, data=data)
            self.emulate_io(ins)
            return nxt
        simple = SIMPLE_EXITS.get(k)
        if simple is not None:
            control, reason, emulate = simple
            if on(control):
                if k in ("rdrand", "rdseed"):
                    return self._exit(reason, ins, instruction_info=rdrand_info(ins))
                if k == "mwait":
                    # qualification bit 0: the monitoring hardware is armed (MONITOR ran)
                    return self._exit(reason, ins, 1 if self._monitor_armed else 0)
                if k == "monitor":
                    self._monitor_armed = True
                return self._exit(reason, ins)
            if k == "monitor":
                self._monitor_armed = True
            elif k == "mwait":
                self._monitor_armed = False
            if emulate is not None:
                getattr(self, emulate)(ins)
            return nxt
        if k == "invpcid":
            if not on("secondary.enable_invpcid"):
                raise GuestFault(6)
            if on("primary.invlpg_exiting"):
                return self._exit(Exit.INVPCID, ins, self._mem_displacement(ins))
            self.uc.ctl_flush_tlb() if hasattr(self.uc, "ctl_flush_tlb") else None
            return nxt
        if k == "invlpg":
            return self._exit(Exit.INVLPG, ins, self.effective_address(ins))
        if k == "pause":
            if on("primary.pause_exiting"):
                return self._exit(Exit.PAUSE, ins)
            if self._ple_check():
                return self._exit(Exit.PAUSE, ins)
            return nxt
        if k == "wbinvd":
            return self._exit(Exit.WBINVD, ins)
        if k == "gdt_idt":
            m = ins.mnemonic
            ident = {D.M.SGDT: 0, D.M.SIDT: 1, D.M.LGDT: 2, D.M.LIDT: 3}[m]
            asz = _address_size(ins, self.mode)
            osz = 2 if self.mode != 64 and (self.mode == 16) != (0x66 in _prefixes(ins)) else 4
            return self._exit(Exit.GDTR_IDTR_ACCESS, ins, self._mem_displacement(ins),
                              instruction_info=descriptor_table_info(ins, ident, asz, osz),
                              guest_linear_address=self.effective_address(ins))
        if k == "ldt_tr":
            m = ins.mnemonic
            ident = {D.M.SLDT: 0, D.M.STR: 1, D.M.LLDT: 2, D.M.LTR: 3}[m]
            info = ldt_tr_info(ins, ident, _address_size(ins, self.mode))
            return self._exit(Exit.LDTR_TR_ACCESS, ins, self._mem_displacement(ins) if ins.has_mem else 0,
                              instruction_info=info,
                              guest_linear_address=self.effective_address(ins) if ins.has_mem else None)
        if k == "mov_dr":
            return self._exit(Exit.DR_ACCESS, ins, dr_qualification(ins.dr, ins.io_in, ins.gpr))
        if k.startswith("mov_") or k in ("clts", "lmsw", "smsw", "smsw_wide"):
            return self._cr_access(ins)
        if k in ("sti", "popf", "iret", "ss_load"):
            # interrupt-window exiting / a blocked pending event: let the instruction run,
            # then look at RFLAGS.IF (and STI / MOV SS blocking); IRET ends blocking by NMI
            if k == "iret":
                self._iret_unblock = self._nmi_blocked
            self._skip_once = ins.address
            self._iw_steps = 2 if k in ("sti", "ss_load") else 1
            if self._event is None:
                self._event = ("resume", k)    # not retired: a single step must not count it
            return None
        raise GuestFault(6)

    def _cr_access(self, ins: D.Insn) -> int | None:
        k = ins.kind
        nxt = ins.address + ins.length
        if k in ("mov_to_cr0", "mov_to_cr4"):
            n = ins.cr
            val = self.gpr(ins.gpr, ins.gpr_size)
            if n == 4 and val & ~cr4_allowed(self.cpuid):
                raise GuestFault(13, 0)
            mask, shadow = (self.cr0_mask, self.cr0_shadow) if n == 0 else (self.cr4_mask, self.cr4_shadow)
            if (mask & val) != (mask & shadow):
                return self._exit(Exit.CR_ACCESS, ins, cr_qualification(n, CR_MOV_TO, ins.gpr), data={"value": val})
            self.set_cr(n, (self.cr(n) & mask) | (val & ~mask))
            return nxt
        if k in ("mov_from_cr0", "mov_from_cr4"):
            n = ins.cr
            mask, shadow = (self.cr0_mask, self.cr0_shadow) if n == 0 else (self.cr4_mask, self.cr4_shadow)
            self.set_gpr(ins.gpr, (self.cr(n) & ~mask) | (shadow & mask), 8)
            return nxt
        if k in ("smsw", "smsw_wide"):
            if self.cpl and self.cr(4) & CR4_UMIP:
                raise GuestFault(Vector.GP, 0)
            # bits the CR0 guest/host mask owns read from the shadow (SDM 25.3)
            v = (self.cr(0) & ~self.cr0_mask) | (self.cr0_shadow & self.cr0_mask)
            if k == "smsw_wide":
                # SMSW r32 stores CR0[31:0] (64-bit mode: zero-extended; elsewhere the SDM
                # leaves bits 31:16 undefined and Intel CPUs store CR0's), SMSW r64 all of CR0
                self.set_gpr(ins.gpr, v & ((1 << (8 * ins.gpr_size)) - 1), ins.gpr_size)
                return nxt
            v &= 0xFFFF
            if ins.has_mem:
                self.write_lin(self.effective_address(ins), v.to_bytes(2, "little"))
            else:
                self.set_gpr(ins.gpr, v, ins.gpr_size)
            return nxt
        if k == "clts":
            if self.cr0_mask & 8 and self.cr0_shadow & 8:
                return self._exit(Exit.CR_ACCESS, ins, cr_qualification(0, CR_CLTS))
            if not self.cr0_mask & 8:
                self.set_cr(0, self.cr(0) & ~8)
            return nxt
        if k == "lmsw":
            src = self.lmsw_source(ins)
            mask, shadow = self.cr0_mask, self.cr0_shadow
            if (mask & 0xE & src) != (mask & 0xE & shadow) or \
                    (mask & 1 and not shadow & 1 and src & 1):
                return self._exit(Exit.CR_ACCESS, ins, cr_qualification(0, CR_LMSW, 0, ins.has_mem, src),
                                  guest_linear_address=self.effective_address(ins) if ins.has_mem else None)
            cr0 = self.cr(0)
            low = (cr0 & 0xF & mask) | (src & 0xF & ~mask)
            low |= cr0 & 1           # LMSW cannot clear PE
            self.set_cr(0, (cr0 & ~0xF) | low)
            return nxt
        if k == "mov_to_cr3":
            val = self.gpr(ins.gpr, ins.gpr_size)
            n_targets = len(self.cr3_targets)
            if val in self.cr3_targets[:n_targets]:
                self.set_cr(3, val)
                return nxt
            return self._exit(Exit.CR_ACCESS, ins, cr_qualification(3, CR_MOV_TO, ins.gpr), data={"value": val})
        if k == "mov_from_cr3":
            return self._exit(Exit.CR_ACCESS, ins, cr_qualification(3, CR_MOV_FROM, ins.gpr))
        if k == "mov_to_cr8":
            val = self.gpr(ins.gpr, 8)
            if self._on["primary.cr8_load_exiting"]:
                return self._exit(Exit.CR_ACCESS, ins, cr_qualification(8, CR_MOV_TO, ins.gpr),
                                  data={"value": val})
            if val >> 4:
                raise GuestFault(13, 0)          # bits 63:4 of CR8 are reserved
            self.set_cr(8, val)
            if self._on["primary.use_tpr_shadow"]:
                # SDM 29.3: VTPR[7:4] <- CR8[3:0], then TPR virtualization (29.1.2): below
                # the threshold a trap-like TPR-below-threshold exit after the instruction;
                # with virtual-interrupt delivery PPR virtualization and evaluation instead
                return _apicv.after_tpr_write(self, ins, nxt)
            return nxt
        if k == "mov_from_cr8":
            if self._on["primary.cr8_store_exiting"]:
                return self._exit(Exit.CR_ACCESS, ins, cr_qualification(8, CR_MOV_FROM, ins.gpr))
            self.set_gpr(ins.gpr, self.cr(8), 8)
            return nxt
        raise GuestFault(6)

    def lmsw_source(self, ins: D.Insn) -> int:
        if ins.has_mem:
            return int.from_bytes(self.read_lin(self.effective_address(ins), 2), "little")
        return self.gpr(ins.gpr, 2)

    def _io_params(self, ins: D.Insn) -> tuple[int, int, int, int | None]:
        port = ins.port_imm if ins.port_imm is not None else self.gpr(2, 2)
        size = ins.io_size
        qual = io_qualification(size, ins.io_in, ins.io_string, ins.io_rep,
                                ins.port_imm is not None, port)
        gla = None
        if ins.io_string:
            gla = self.gpr(7 if ins.io_in else 6, 8 if self.mode == 64 else 4)
            if self.mode == 16:
                seg = "es" if ins.io_in else "ds"
                gla = (self.rr(_SEGS[seg]) << 4) + (gla & 0xFFFF)
        return port, size, qual, gla

    def _io_exits(self, port: int, size: int) -> bool:
        on = self._on
        if on["primary.use_io_bitmaps"]:
            if port + size - 1 > 0xFFFF:
                return True
            bm = self.fx.io_bitmap            # the I/O bitmaps, one bit per port
            return any(bm[p >> 3] >> (p & 7) & 1 for p in range(port, port + size))
        return on["primary.unconditional_io_exiting"]

    def _io_access(self, ins: D.Insn, port: int) -> None:
        """IN/OUT (not string I/O) on the board's devices."""
        size = ins.io_size
        if ins.io_in:
            self.set_gpr(0, self.platform.io_read(port, size), size)
        else:                          # (self.gpr(0, size): AL, AX or EAX)
            self.platform.io_write(port, size, self.rr(self._gprs[0]) & ((1 << (8 * size)) - 1))

    def _ple_check(self) -> bool:
        if not self.cfg.on("secondary.pause_loop_exiting"):
            return False
        now = self.tsc
        gap, window = self.cfg.settings["ple"]["gap"], self.cfg.settings["ple"]["window"]
        if self._ple_last is None or now - self._ple_last > gap:
            self._ple_first = now
        self._ple_last = now
        if now - self._ple_first > window:
            self._ple_first = self._ple_last = None
            return True
        return False

    def emulate_rdtsc(self, ins: D.Insn) -> None:
        t = self.guest_tsc()
        self.set_gpr(0, t & 0xFFFFFFFF, 4 if self.mode == 64 else 4)
        self.set_gpr(2, t >> 32, 4)
        if ins is not None and ins.kind == "rdtscp":
            self.set_gpr(1, self.msrs.values.get(0xC0000103, 0) & 0xFFFFFFFF, 4)

    def emulate_msr(self, ins: D.Insn) -> None:
        msr = self.gpr(1, 4)
        try:
            if ins.kind == "rdmsr":
                v = self.msrs.read(msr)
                self.set_gpr(0, v & 0xFFFFFFFF, 4)
                self.set_gpr(2, v >> 32, 4)
            else:
                self.msrs.write(msr, (self.gpr(2, 4) << 32) | self.gpr(0, 4))
                if msr == MSR_APIC_BASE:
                    self.fx.cpuid_clear()       # CPUID.1:EDX.APIC follows its enable bit
        except MsrFault:
            raise GuestFault(Vector.GP, 0) from None

    def emulate_io(self, ins: D.Insn) -> None:
        if not ins.io_string:
            self._io_access(ins, ins.port_imm if ins.port_imm is not None else self.gpr(2, 2))
            return
        port, size, _q, _g = self._io_params(ins)
        p = self.platform
        asz = 8 if self.mode == 64 else 4 if self.mode == 32 else 2
        count = self.gpr(1, asz) if ins.io_rep else 1
        step = -size if self.rflags & (1 << 10) else size
        idx_reg = 7 if ins.io_in else 6
        ptr = self.gpr(idx_reg, asz)
        seg_base = 0
        if self.mode == 16:
            seg_base = self.rr(_SEGS["es" if ins.io_in else "ds"]) << 4
        try:
            while count:
                lin = seg_base + (ptr & ((1 << (8 * asz)) - 1))
                if ins.io_in:
                    self.write_lin(lin, p.io_read(port, size).to_bytes(size, "little"))
                else:
                    p.io_write(port, size, int.from_bytes(self.read_lin(lin, size), "little"))
                ptr = (ptr + step) & ((1 << (8 * asz)) - 1)
                count -= 1
        finally:
            self.set_gpr(idx_reg, ptr, asz)
            if ins.io_rep:
                self.set_gpr(1, count, asz)

    def emulate_hlt(self, ins: D.Insn | None) -> None:
        """Wait in virtual time for the next event that can wake the CPU.

        Wakes: the preemption timer; an NMI (pending, --nmi-at, live); with
        RFLAGS.IF = 1 or external-interrupt exiting, a pending or reflected
        interrupt or the next PIT interrupt.  Nothing can come: 'halted'.
        """
        now = self.tsc + TSC_PER_INSN      # the HLT retires, then the CPU waits
        self.platform.advance(now)         # devices: what is due now (timers, serial input)
        cands: list[tuple[int, str]] = []
        if self.cfg.on("pin.activate_vmx_preemption_timer") and self._ptimer_fire is not None:
            cands.append((self._ptimer_fire, "ptimer"))
        if self._nmi_pending or self._nmi_reflect or self._live_nmi or self.nmi_at is not None:
            cands.append((now, "resume"))
        if self.rflags & (1 << 9) or self._on["pin.external_interrupt_exiting"]:
            if self._live_irqs or self.platform.pending_interrupt() is not None or (
                    (self._virq or self.apicv.pending(self._on["primary.interrupt_window_exiting"])
                     is not None) and self.rflags & (1 << 9)):
                cands.append((now, "resume"))
            nf = self.platform.next_event()
            if nf is not None:
                cands.append((nf, "resume"))
        if not cands:
            if self.live_wakeable or (self.interactive and self._can_take_irq() and
                                      self.platform.serial.ier & 1):
                self._wait_live()
                self._event = ("resume",)
                return
            raise RunEnd("halted", None, "the guest halted with no event that could wake it")
        t, kind = min(cands)
        if t > now:
            if self.clock == "realtime":
                if self._hlt_sleep(t):
                    kind = "resume"
            else:
                self.idle_ticks += t - now
        self._event = (kind,)

    def _rand(self) -> int:
        x = self._rng
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        self._rng = x
        return x

    def emulate_rdrand(self, ins: D.Insn) -> None:
        self.set_gpr(ins.gpr, self._rand(), ins.gpr_size)
        self.set_rflags((self.rflags & ~0x8D5) | 1)      # CF=1, OF/SF/ZF/AF/PF = 0

    def emulate_rdpmc(self, ins: D.Insn) -> None:
        ecx = self.gpr(1, 4)
        if ecx == 0x40000000:
            v = self.icount                               # fixed counter 0: instructions retired
        elif ecx < 4 or ecx in (0x40000001, 0x40000002):
            v = 0
        else:
            raise GuestFault(13, 0)
        self.set_gpr(0, v & 0xFFFFFFFF, 4)
        self.set_gpr(2, (v >> 32) & 0xFFFF, 4)

    def effective_address(self, ins: D.Insn) -> int:
        i = ins.instr
        if i is None or not ins.has_mem:
            return 0
        from iced_x86 import Register as R
        addr = i.memory_displacement
        if i.memory_base not in (R.NONE, R.RIP, R.EIP):
            idx = D.gpr_index(i.memory_base)
            addr += self.gpr(idx, D.gpr_size(i.memory_base)) if idx is not None else 0
        if i.memory_index != R.NONE:
            idx = D.gpr_index(i.memory_index)
            addr += (self.gpr(idx, D.gpr_size(i.memory_index)) if idx is not None else 0) \
                * i.memory_index_scale
        seg = i.memory_segment
        if self.mode == 64:
            if seg == R.FS:
                addr += self.uc.msr_read(0xC0000100)
            elif seg == R.GS:
                addr += self.uc.msr_read(0xC0000101)
            return addr & MASK64
        if self.mode == 16:
            name = {R.ES: "es", R.CS: "cs", R.SS: "ss", R.DS: "ds", R.FS: "fs", R.GS: "gs"}.get(seg, "ds")
            return ((self.rr(_SEGS[name]) << 4) + (addr & 0xFFFF)) & 0xFFFFF
        return addr & 0xFFFFFFFF

    def _mem_displacement(self, ins: D.Insn) -> int:
        i = ins.instr
        if i is None or not ins.has_mem:
            return 0
        return i.memory_displacement & MASK64
