"""The exit fast path's side of the vCPU (issue 14): the native state block (vmm/native) is
the one home of the exit count, the idle ticks, the TSC adjustment, offset and multiplier;
this module keeps the block in step with the controls and tells the C helper, before each
emu_start, what it may do on its own.  Without the helper the same block is plain memory
and every trap takes the Python path (intercepts.py)."""

from __future__ import annotations

import ctypes
from unicorn import UC_HOOK_CODE, UcError, x86_const as X
from unicorn.unicorn_py3.unicorn import uclib
from .. import decode as D
from ..counter import W_LAST_ADDR
from ..exitinfo import VmExit
from ...vmx.exits import Exit
from ..native import NWRITE, FastExit, soft_taker
from .common import EXIT_COST, MASK64, TSC_PER_INSN, _GPR64

# the registers the native hook reads in one batch before a Python trap (fastexit.c order)
SNAP_IDS = tuple(_GPR64) + (X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS)
# the exits it can do itself (with the default handler)
FX_REASONS = (Exit.CPUID, Exit.RDTSC, Exit.IO_INSTRUCTION)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v



def queue_writes(pend: dict, wids, wvals) -> int:
    """Register writes `pend` (register id -> value) into the native hook's write batch (two
    ctypes arrays); their number. The caller checked they fit (NWRITE)."""
    n = 0
    for r, v in pend.items():
        wids[n] = r
        wvals[n] = v
        n += 1
    return n

class FastExitMixin:
    """The native exit path's state block and its arming (see the module doc)."""

    def _fx_init(self, native: bool | None) -> None:
        self.fx = FastExit(list(SNAP_IDS), X.UC_X86_REG_CR4, native=native)
        self._fxs = self.fx.state
        self._fx_native = self.fx.native
        self._fx_exits_ok: bool | None = None
        self._fx_step_hook: int | None = None     # fx_step over all code (MTF stepping)
        self._fx_mtf_from: int | None = None      # icount at the start of a native MTF run
        # the engine stopped in a block hook to retranslate a block (a trapped instruction
        # hooked just then, "rehook"): started natively there, MTF counted the block's
        # first instruction twice -- one single step by count first
        self._fx_mtf_rehooked = False
        # event delivery through the IDT in C for the common case (cpu/delivery.py has the rest)
        self._fx_dlv = None
        if self._fx_native:
            from ..cpu.state import _ctx_addr
            from ..native import event_deliverer
            self._fx_dlv = event_deliverer(self._uch, _ctx_addr(self.cpu_state._ctx),
                                           self.cpu_state.env, self.memory,
                                           X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS,
                                           X.UC_X86_REG_RIP)

    def _fx_attach(self) -> None:
        """After the block counter and the devices exist."""
        self.fx.attach_counter(self.counter.state)
        self._soft_here = False
        self._wall_deadline = None
        self._fx_soft = None
        if self._fx_dlv is not None:
            # a device timer's interrupt taken inside the engine (events.py): the turn in C
            # when the counter's stub is native and the helper has the C API, else in Python
            taker = soft_taker(self.fx, self._fx_dlv[1], self._soft_tick, self._soft_acked,
                               self, self.platform) if self.counter.native else None
            self._fx_soft = taker[1] if taker is not None else None   # (.taken: its count)
            if taker is not None:
                self.counter.set_soft_native(taker[0], ctypes.addressof(taker[1]), taker[1])
            else:
                self.counter.set_soft_fn(self._at_soft_deadline)
        if self._fx_native:
            self.fx.set_python_trap(self._raw_trap)
            # latch ports (POST, UART scratch): the device's cell becomes the native one
            for port, dev, attr, wmask, read_cell in self.platform.latches():
                setattr(dev, attr, self.fx.add_latch(port, wmask, read_cell,
                                                     getattr(dev, attr).value))
        self._fx_configure()

    # ---- virtual-time words kept in the state block -----------------------------------------
    @property
    def exit_count(self) -> int:
        return self._fxs.exit_count

    @exit_count.setter
    def exit_count(self, v: int) -> None:
        self._fxs.exit_count = v

    @property
    def idle_ticks(self) -> int:
        return self._fxs.idle_ticks

    @idle_ticks.setter
    def idle_ticks(self, v: int) -> None:
        self._fxs.idle_ticks = v & MASK64

    @property
    def tsc_adjust(self) -> int:
        return _signed(self._fxs.tsc_adjust)

    @tsc_adjust.setter
    def tsc_adjust(self, v: int) -> None:
        self._fxs.tsc_adjust = v & MASK64

    @property
    def tsc_offset(self) -> int:
        return _signed(self._fxs.tsc_offset)

    @tsc_offset.setter
    def tsc_offset(self, v: int) -> None:
        self._fxs.tsc_offset = v & MASK64

    @property
    def tsc_multiplier(self) -> int:
        return self._fxs.tsc_mult

    @tsc_multiplier.setter
    def tsc_multiplier(self, v: int) -> None:
        self._fxs.tsc_mult = v & MASK64

    # ---- what the helper may do ---------------------------------------------------------------
    def _fx_configure(self) -> None:
        """The controls the native path follows (at start and after every change)."""
        on = self._on
        bitmaps = on["primary.use_io_bitmaps"]
        self.fx.configure(rdtsc_exiting=on["primary.rdtsc_exiting"],
                          tsc_offsetting=on["primary.use_tsc_offsetting"],
                          tsc_scaling=on["secondary.use_tsc_scaling"],
                          io_bitmaps=bitmaps,
                          io_unconditional=on["primary.unconditional_io_exiting"],
                          bitmap=b"".join(self.cfg.io_bitmaps()) if bitmaps else None,
                          tsc_per_insn=TSC_PER_INSN, exit_cost=EXIT_COST)
        self._fx_exits_ok = None              # re-decided at the next emu_start

    def _fx_arm(self, count: int, mtf: bool = False) -> None:
        """Before emu_start: may the native path finish traps (and exits) on its own?
        mtf: it also does the monitor-trap-flag exits (see _fx_mtf_ok)."""
        fx = self.fx
        if not self._fx_native:
            return
        self._fx_step(mtf)
        ok = not count and self.clock == "virtual" and self._skip_once is None \
            and self._pending_cfg is None
        fx.set_fast(ok)
        # an exit moves virtual time: with an exact deadline in TSC ticks (preemption timer)
        # or an event to look at after it, every exit goes through Python (which stops and
        # re-arms). A device timer is the block counter's soft deadline, which the native
        # exit moves sooner by the exit's ticks (fastexit.c): the counter then stops the
        # engine at the next block, as the Python path's stop after the exit would.
        exits_ok = ok and self.trace is None \
            and not self._on["pin.activate_vmx_preemption_timer"] and not self._events_waiting()
        if exits_ok != self._fx_exits_ok:
            self._fx_exits_ok = exits_ok
            for r in FX_REASONS:
                seen = exits_ok and r in self.exit_stats
                fx.python_only(r, not (seen and r not in self.user_handlers))
                # a user handler: called from the hook (leanexit.py)
                fx.lean_only(r, seen and r in self.user_handlers)

    # ---- monitor-trap-flag stepping ----------------------------------------------------------
    def _fx_mtf_ok(self) -> bool:
        """MTF single-stepping may run natively (no count=1 emu_start per instruction): the
        default handler, nothing else that must look at every instruction boundary (events,
        windows, timers, a trace), and the reason already seen once (exit order)."""
        on = self._on
        if self._fx_mtf_rehooked:
            self._fx_mtf_rehooked = False
            return False
        return bool(self._fx_native and self.clock == "virtual" and self.trace is None
                    and Exit.MONITOR_TRAP_FLAG in self.exit_stats
                    and Exit.MONITOR_TRAP_FLAG not in self.user_handlers
                    and not self._iw_steps and self._smc_page is None
                    and self._skip_once is None and self._pending_cfg is None
                    and not on["pin.activate_vmx_preemption_timer"]
                    and not on["primary.interrupt_window_exiting"]
                    and not on["primary.nmi_window_exiting"]
                    and self.platform.next_event() is None and not self._virq
                    and not self._nmi_reflect and not self._nmi_pending)

    def _fx_step(self, on: bool) -> None:
        if on and self._fx_step_hook is None:
            hh = ctypes.c_size_t()
            err = uclib.uc_hook_add(self._uch, ctypes.byref(hh), UC_HOOK_CODE, self.fx.step_fn,
                                    ctypes.c_void_p(ctypes.addressof(self._fxs)),
                                    ctypes.c_uint64(1), ctypes.c_uint64(0))
            if err:
                raise UcError(err)
            self._fx_step_hook = hh.value
            self.uc.ctl_flush_tb()          # the hook is compiled into translated blocks
        elif not on and self._fx_step_hook is not None:
            self._tb_drop(uclib.uc_hook_del, self._uch, ctypes.c_size_t(self._fx_step_hook))
            self._fx_step_hook = None
            self.uc.ctl_flush_tb()
        if on:
            self.fx.mtf_begin()
            self._fx_mtf_from = self.icount

    def _fx_mtf_settle(self) -> None:
        """After a native MTF run (top of the run loop, the count final): the MTF exit after
        the last instruction that retired is still to do (fx_step does one per boundary)."""
        if self._fx_mtf_from is None:
            return
        done = self.fx.mtf_end()
        missing = self.icount - self._fx_mtf_from - done
        self._fx_mtf_from = None
        if missing > 0:
            self._entry_exit(VmExit(Exit.MONITOR_TRAP_FLAG, 0, self.rip))

    def _fx_first_exit(self, reason: int) -> None:
        """The first exit of a reason went through Python: the next ones may run natively."""
        if self._fx_exits_ok:
            if reason not in self.user_handlers:
                self.fx.python_only(reason, False)
            elif reason in FX_REASONS:
                self.fx.lean_only(reason, True)

    def _fx_learn(self, address: int, ins: D.Insn) -> None:
        """A trap the Python path did: teach the native one the instruction (mode-free
        encodings, and IN/OUT with the operand size of the current code size) and where the
        count of its block stands."""
        e = self.fx.entry(address)
        stale = e.bits and e.bits != self.bitness     # an IN/OUT size of another code size
        if e.kind and e.block == self.counter.state[W_LAST_ADDR] and not stale:  # known already
            return
        if not e.kind or stale:
            self.fx.learn(address, ins.raw, ins.length, self.mode == 64,
                          ins.io_size if ins.kind == "io" else 1, self.bitness)
            if not e.kind:
                return
        a, size, n = self.counter.last_block()
        if size and a <= address < a + size and e.block != a:
            e.prefix = self.icount - (self.counter.count - n)
            e.block = a

    def _fx_snapshot(self) -> None:
        """Start of a Python trap under the native hook: the registers it read in one batch."""
        self._rcache.update(zip(SNAP_IDS, self._fxs.snap))

    def _trap_flush(self) -> None:
        """End of a trap: under the native hook the queued register writes go back in one
        batch (the hook sends them); otherwise through flush()."""
        pend = self._pend
        if pend and self._fx_native and len(pend) <= NWRITE:
            st = self._fxs
            pc = pend.pop(self._pc_reg, None)
            st.nwrite = queue_writes(pend, st.wids, st.wvals)
            if pc is not None:
                st.pc = pc
                st.pc_write = 1
            pend.clear()
        elif pend:
            self.flush()
        self._rcache.clear()
