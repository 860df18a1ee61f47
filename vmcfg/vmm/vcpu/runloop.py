"""The run loop and the run's outcome: emu_start to the next deadline or event, what
stopped the engine, and the end of the run (status, register dump)."""

from __future__ import annotations

import time
from unicorn import (UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID,
                     UC_ERR_READ_PROT, UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED, UcError,
                     x86_const as X)
from .. import apicv as _apicv
from .. import decode as D
from ...vmx.registers import GPR_NAMES
from ..exitinfo import VmExit
from ..outcome import RunEnd
from .common import DEADLINE_MARGIN, UNTIL

# trapped kinds the engine itself cannot run (QEMU 5's x86 translator has no INVPCID)
_ENGINE_LACKS = frozenset({"invpcid"})


def _canonical(address: int) -> bool:
    """Bits 63:47 of a 64-bit linear address all equal (48-bit linear addresses)."""
    top = address >> 47
    return top == 0 or top == 0x1FFFF

from .intercepts import PRIVILEGED, _UD_MNEMONICS
from .stopstats import event_cause
from ..counter import W_COUNTER, W_SOFT, W_STOP, W_STOPPED
from ...vmx.exits import Exit, InterruptionType, Vector


class RunLoopMixin:
    """The run loop and the run's outcome (see the module doc)."""

    def _entry_exit(self, ex: VmExit) -> None:
        self.vmexit(ex)
        self._entry_exit_outcome(self._last_ctx)

    def _entry_exit_outcome(self, ctx) -> None:
        """After an exit at an instruction boundary: what its handler decided."""
        if ctx.ended is not None:
            raise ctx.ended
        if ctx.fault is not None:
            f = ctx.fault
            self.raise_exception(f.vector, f.error_code, self.rip)
            return
        self.set_rip(ctx.resume_rip)

    def run_loop(self, wall_deadline: float | None = None) -> None:
        """Run until the guest ends; sets self.status/exit_code/message."""
        uc = self.uc
        counter = self.counter
        stops = self.stops
        perf_counter = time.perf_counter
        self._wall_deadline = wall_deadline
        try:
            while True:
                self._fx_mtf_settle()
                self._apply_pending()
                if self._rehalt:
                    self._rehalt = False
                    self.emulate_hlt(None)   # still in HLT after a change
                if wall_deadline is not None and time.monotonic() >= wall_deadline:
                    raise RunEnd("timeout", None, "the run reached its wall-clock timeout")
                ev = self._arm_entry_events()
                if ev is not None:
                    stops.add("exit at VM entry")
                    self._entry_exit(ev)
                    continue
                deadline, dkind, soft = self._deadline()
                counter.set_soft_deadline(soft)
                count = 0
                mtf_native = False
                if self._iw_steps or self._on["primary.monitor_trap_flag"] or \
                        self._smc_page is not None:
                    count = 1
                    # MTF with the default handler: the native exit path steps (fastexit.py)
                    mtf_native = self._fx_mtf_ok()
                    if mtf_native:
                        count = 0
                if deadline is not None:
                    left = deadline - self.icount
                    if left <= 0:
                        stops.add(f"{dkind} deadline reached between runs")
                        self._deadline_reached(dkind)
                        continue
                    if left <= 2 * DEADLINE_MARGIN or self._force_count:
                        if mtf_native:
                            mtf_native, count = False, 1
                        count = left if not count else min(count, left)
                        counter.set_deadline(None)
                    else:
                        counter.set_deadline(deadline - DEADLINE_MARGIN)
                else:
                    counter.set_deadline(None)
                self._event = None
                start_icount = self.icount
                counter.set_count(self.icount)
                err = None
                begin = self._pc_begin()
                begin_lin = self.rip
                if self._exc_dirty:
                    # Unicorn raised a CPU exception internally (fetch protection is a #PF
                    # to it): clear QEMU's double-fault bookkeeping before resuming
                    self._reset_old_exception()
                    self._exc_dirty = False
                self.flush()
                self._stray_fault = False            # (codepages._tb_drop)
                if self._tb_flush_pending:
                    self._tb_flush_pending = False
                    uc.ctl_flush_tb()
                if count and not self._count_mode:
                    # Unicorn adds its per-instruction count hook only to blocks translated
                    # from now on: drop the cached ones (it flushes them itself on the way back)
                    uc.ctl_flush_tb()
                self._count_mode = bool(count)
                until = UNTIL
                if self._smc_page is not None:
                    # the store that hit a code page, alone: QEMU may restart it once when it
                    # writes into its own block, so stop at the next instruction, not by count
                    dec = self._decode_any(self.rip)
                    until = (self.rip + (dec.len if dec is not None else 1))
                    count = 2
                self._fx_arm(count, mtf_native)
                exits = () if until == UNTIL else (until,)
                if exits != self._exits:
                    # the engine's exit addresses (exits mode, set up in core): see _stray_cr2
                    uc.ctl_set_exits(list(exits))
                    self._exits = exits
                cr2_before = self._cr2_engine() if exits else None
                self._soft_here = self._soft_here_ok(count, mtf_native)
                t_run = perf_counter()
                try:
                    uc.emu_start(begin, until, 0, count)
                except UcError as e:
                    err = e
                stops.engine_seconds += perf_counter() - t_run
                stops.runs += 1
                if cr2_before is not None and self._event is None:
                    self._stray_cr2(cr2_before)
                self._sync_mode()
                smc_step = self._smc_page is not None
                stops.add(self._stop_cause(err, smc_step, count))
                if smc_step:
                    self._end_smc_step()
                    if err is None and self._event is None and self.rip == until:
                        self.icount = start_icount + 1
                        counter.set_count(self.icount)
                        self._after_step()
                        continue
                stopped_by_stub = counter.clear_stop()
                self._stub_stopped = stopped_by_stub and self._event is None and err is None
                # a stub stop without progress: approach the deadline in count mode
                self._force_count = stopped_by_stub and counter.count == start_icount
                if counter.stop_pending():
                    counter.clear_stop_request()
                ev = self._event
                self._event = None
                if ev is None and err is not None and err.errno == UC_ERR_FETCH_PROT \
                        and not self._prot_global:
                    ev = ("fetch", self._fetch_fault_page())   # (no fetch hook: codepages.py)
                if ev is not None and ev[0] == "rehook" and err is None:
                    self._fx_mtf_rehooked = True      # (fastexit.py: the next step by count)
                    # a block about to run for the first time has a trapped instruction that
                    # was just hooked (_count_block): nothing of that block has retired; it
                    # is translated again, with the hook, when the run goes on
                    self._remove_cache(ev[1] & ~0xFFF)
                    ev = None
                    # the engine may still hold an exception it raised internally (the fetch
                    # fault that made the page code): a fault in the restarted block must not
                    # become a #DF
                    self._exc_dirty = True
                    if not (count and counter.count - start_icount == count):
                        self.icount = counter.count
                        continue
                if err is not None or (ev is not None and ev[0] not in ("resume", "end", "exited")):
                    self._exc_dirty = True
                if ev is None and err is None and self._stopped_at_invalid(
                        begin_lin, start_icount, count, stopped_by_stub):
                    continue
                if ev is None and err is None and count and not stopped_by_stub:
                    # count budget used up exactly
                    self.icount = start_icount + count
                    counter.set_count(self.icount)
                    self._after_step()
                    continue
                if ev is None:
                    self.icount = counter.count
                    if err is not None:
                        self._uc_error(err)
                    continue
                if ev[0] == "resume" and count == 1 and self.icount == start_icount + 1:
                    self._after_step()          # the single step was an emulated instruction
                    continue
                self._handle_event(ev, err)
        except RunEnd as e:
            self.status, self.exit_code = e.status, e.exit_code
            self.message = e.message
        with self.apply_cond:           # wake anyone waiting for an apply that cannot come
            self.apply_cond.notify_all()

    def _stop_cause(self, err: UcError | None, smc_step: bool, count: int) -> str:
        """Why the engine run that just ended stopped (stopstats.py), from what the hooks
        left: read before the run loop acts on it."""
        if smc_step:
            return "store into code, single step"
        if self._event is not None:
            return event_cause(self._event)
        if err is not None:
            return "fetch" if err.errno == UC_ERR_FETCH_PROT else f"engine error {err.errno}"
        st = self.counter.state
        if st[W_STOPPED]:
            if st[W_STOP]:
                return "stop request (another thread)"
            if st[W_COUNTER] >= st[W_SOFT]:
                return "device timer deadline"
            return "deadline (instruction count)"
        if count:
            return "single step" if count == 1 else "counted run to a deadline"
        return "other"

    def _stopped_at_invalid(self, begin_lin: int, start_icount: int, count: int,
                            stopped_by_stub: bool = False) -> bool:
        """Unicorn sometimes stops *before* an invalid opcode instead of raising it: under an
        instruction budget (count=) as if the budget were used up, and when emu_start begins
        at it after the native block stub counted it.  A single step on UD2 then went on for
        ever (MTF) and a run re-entered after an exit lost the #UD (preemption timer).  Seen
        here: raise #UD at that instruction, with the count of what really retired.  The
        same for an instruction the decoder knows but the emulated CPU does not have (RDPRU
        on this Intel model): the engine returns at it without running anything, nothing
        asked it to stop, and re-entering would do the same for ever."""
        rip = self.rip
        if not count and rip != begin_lin:
            return False
        stuck = not count and rip == begin_lin and not stopped_by_stub
        dec = self._decode_any(rip)
        if dec is not None and dec.mnemonic not in _UD_MNEMONICS:
            if not stuck:
                return False
            # the engine stopped before it when emu_start began at it and nothing else
            # stopped it: it raises something the engine did not report. #PF for a memory
            # operand the guest's paging does not map (the engine does not report a fault of
            # the first instruction of a run); else #GP(0) for a privileged instruction at
            # CPL > 0 and #UD for the rest (below: XGETBV without CR4.OSXSAVE, RDPRU, ...)
            cr2 = self._unmapped_operand(dec, rip)
            if cr2 is not None:
                self.icount = start_icount
                self.counter.set_count(start_icount)
                self.set_cr(2, cr2)
                self.raise_exception(Vector.PF, self._pf_error_code(cr2, rip), rip, cr2=cr2)
                return True
        done = start_icount if rip == begin_lin else self._retired_at(rip)
        if count and done - start_icount >= count:
            return False                  # the budget really ended just before it
        self.icount = done
        self.counter.set_count(done)
        if self._trap_at_stop(rip):
            return True
        if stuck and dec is not None and self.cpl and D.classify(dec) in PRIVILEGED:
            self.raise_exception(Vector.GP, 0, rip)   # e.g. MOV from CR0 at CPL 3
        else:
            self.raise_exception(Vector.UD, None, rip)
        return True

    def _trap_at_stop(self, rip: int) -> bool:
        """An instruction the engine cannot run (it has no INVPCID) that the VMM traps and
        performs itself: Unicorn calls no code hook for an instruction it cannot translate
        and stops there (or raises #UD), so do here what its trap would have done -- the VM
        exit, or the VMM's own emulation -- instead of a #UD the guest's CPU does not raise
        (Linux uses INVPCID where CPUID reports it, e.g. under trap-all)."""
        ins = self._decode_at(rip)
        if ins is None or ins.kind not in self._trapped or ins.kind not in _ENGINE_LACKS:
            return False
        native, self._fx_native = self._fx_native, False   # no native hook ran: plain flushes
        try:
            self._on_trap(self.uc, rip, ins.length, None)
        finally:
            self._fx_native = native
        ev, self._event = self._event, None
        self._exc_dirty = True
        if ev is not None:
            self._handle_event(ev, None)
        return True

    def _stack_noncanonical(self, rip: int) -> bool:
        """Does the instruction at `rip` (64-bit code) reference the stack at a non-canonical
        address -- a memory operand through SS (RSP or RBP as base) or a push/pop? The
        processor raises #SS(0) for it, not #GP(0) (SDM 6.15, interrupt 12)."""
        if self.bitness != 64:
            return False
        dec = self._decode_any(rip)
        raw = self._code_bytes(rip)
        if dec is None or raw is None:
            return False
        ins = D.make_insn(dec, raw, self.bitness)
        if ins.has_mem and dec.memory_segment == D.R.SS:
            return not _canonical(self.effective_address(ins))
        step = dec.stack_pointer_increment
        if step:
            rsp = self.gpr(4, 8)
            return not (_canonical(rsp) and _canonical((rsp + step) & ((1 << 64) - 1)))
        return False

    def _unmapped_operand(self, dec, rip: int) -> int | None:
        """The linear address of a memory operand of `dec` (at `rip`) that the guest's
        paging does not map, or None."""
        if not self._paging():
            return None
        raw = self._code_bytes(rip)
        if raw is None:
            return None
        ins = D.make_insn(dec, raw, self.bitness)
        if not ins.has_mem:
            return None
        ea = self.effective_address(ins)
        return ea if self.lin2phys(ea) is None else None

    def _after_step(self) -> None:
        """After a counted single step: MTF and interrupt-window checks."""
        if self._iret_unblock:
            self._iret_unblock = False        # the IRET has completed: NMIs unblocked
            self._nmi_blocked = False
        if self._iw_steps:
            self._iw_steps -= 1
            if not self._iw_steps and self.cfg.on("primary.interrupt_window_exiting") \
                    and self.rflags & (1 << 9):
                self._entry_exit(VmExit(Exit.INTERRUPT_WINDOW, 0, self.rip))
                return
        if self.cfg.on("primary.monitor_trap_flag"):
            self._entry_exit(VmExit(Exit.MONITOR_TRAP_FLAG, 0, self.rip))

    def _handle_event(self, ev: tuple, err: UcError | None) -> None:
        kind = ev[0]
        if kind == "fetch":
            a = ev[1]
            rip = self.rip
            la, lsize, ln = self.counter.last_block()
            c = self.counter.count
            if lsize and la < rip < la + lsize:
                c = c - ln + self._prefix(la, rip)
            self.icount = c
            self._fetch_page(a & ~0xFFF, rip)
            return
        if kind == "end":
            raise ev[1]
        if kind == "error":
            e = ev[1]
            if isinstance(e, RunEnd):
                raise e
            raise RunEnd("error", None, f"internal error while handling the guest: "
                                        f"{type(e).__name__}: {e}") from e
        if kind == "ptimer":
            self._ptimer_exit()
            return
        if kind == "resume":
            return
        if kind == "exited":               # an exit taken at the soft deadline (events.py)
            self._entry_exit_outcome(ev[1])
            return
        if kind == "fastcall":
            from ..cpu import fastcall
            _k, which, rip, ic = ev
            self.icount = self.counter.count
            length = 2
            fault = (fastcall.syscall if which == "syscall" else fastcall.sysenter)(self)
            if fault is not None:
                self.icount -= 1                  # faulted: not retired
                self.counter.set_count(self.icount)
                self.set_rip(self.rip - length)
                self.flush()
                self.raise_exception(fault[0], fault[1], self.rip)
            return
        if kind == "dirty":
            self.icount = self.counter.count
            self._rescan(ev[1])
            return
        if kind == "smc":
            self._code_page_written(ev[1], ev[2], ev[3])
            return
        if kind == "fault":
            _k, vector, ec, rip, ic, cr2 = ev
            self.icount = ic
            self.counter.set_count(ic)
            if cr2 is not None:
                self.set_cr(2, cr2)
            self.raise_exception(vector, ec, rip, cr2=cr2)
            return
        if kind == "intr":
            _k, vector, rip, ic, cr2_now = ev
            soft = self._soft_int_before(rip, vector)
            if soft is not None:
                # software INT n / INT3 / INTO / INT1: Unicorn reports RIP after the instruction
                length, itype = soft
                start = rip - length
                self.icount = ic
                self.counter.set_count(self.icount)
                self.set_rip(start)
                self.raise_exception(vector, None, start, itype=itype, next_rip=rip)
            elif vector == Vector.UD and self._trap_at_stop(rip):
                pass                              # the engine cannot run it; the VMM can
            else:
                self.icount = ic
                self.counter.set_count(ic)
                self.set_rip(rip)
                cr2 = cr2_now
                if cr2 is not None:
                    self.set_cr(2, cr2)
                ec = self._pf_error_code(cr2, rip) if vector == Vector.PF else None
                if vector == Vector.GP and self._stack_noncanonical(rip):
                    vector = Vector.SS          # the engine raises #GP for these
                self.raise_exception(vector, ec, rip, cr2=cr2)
            return
        if kind in ("apic_access", "apic_write"):     # virtualize APIC accesses (apicv.py)
            _apicv.handle_event(self, ev)
            return
        if kind in ("unmapped", "prot"):
            _k, access, address, size, ic, rip = ev
            self.icount = ic
            self.counter.set_count(ic)
            self._memory_fault(kind, access, address, size, rip)
            return
        raise RunEnd("error", None, f"unexpected VMM event {ev!r}")

    def _uc_error(self, err: UcError) -> None:
        rip = self.rip
        if err.errno == UC_ERR_INSN_INVALID:
            self.icount = self._retired_at(rip)
            self.counter.set_count(self.icount)
            dec = self._decode_any(rip)
            if dec is not None and dec.mnemonic == D.M.INT1:
                # INT1 (ICEBP): the engine ends the run as if for a debugger; the processor
                # raises #DB as a privileged software exception, returning after it
                self.icount += 1
                self.counter.set_count(self.icount)
                self.raise_exception(Vector.DB, None, rip, itype=InterruptionType.PRIV_SW_EXCEPTION,
                                     next_rip=rip + dec.len)
            elif not self._trap_at_stop(rip):
                self.raise_exception(Vector.UD, None, rip)
            return
        if err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                         UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT):
            self.fault_dump = self.register_dump()
            raise RunEnd("error", None, f"guest memory access fault at RIP {rip:#x}: {err}")
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None, f"the emulator stopped at RIP {rip:#x}: {err}")

    def register_dump(self) -> str:
        lines = []
        names = GPR_NAMES if self.mode == 64 else GPR_NAMES[:8]
        regs = [(n if self.mode == 64 else "e" + n[1:], self.gpr(i)) for i, n in enumerate(names)]
        w = 16 if self.mode == 64 else 8
        for i in range(0, len(regs), 4):
            lines.append("  ".join(f"{n.upper():>3}={v:0{w}x}" for n, v in regs[i:i + 4]))
        lines.append(f"RIP={self.rip:0{w}x}  RFLAGS={self.rflags:08x}  "
                     f"CS={self.rr(X.UC_X86_REG_CS):04x} SS={self.rr(X.UC_X86_REG_SS):04x} "
                     f"DS={self.rr(X.UC_X86_REG_DS):04x}")
        lines.append(f"CR0={self.cr(0):08x} CR2={self.cr(2):x} CR3={self.cr(3):x} CR4={self.cr(4):x}")
        try:
            code = self.read_code(self.rip, 15)
            dec = D.decode_one(code, self.rip, self.bitness)
            lines.append(f"at RIP: {code[:dec.len].hex()}  {D.format_instr(dec)}")
        except UcError:
            lines.append("at RIP: (not in guest RAM)")
        return "\n".join(lines)
