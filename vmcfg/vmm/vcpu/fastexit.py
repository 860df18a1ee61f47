"""The exit fast path's side of the vCPU (issue 14): the native state block (vmm/native) is
the one home of the exit count, the idle ticks, the TSC adjustment, offset and multiplier;
this module keeps the block in step with the controls and tells the C helper, before each
emu_start, what it may do on its own.  Without the helper the same block is plain memory
and every trap takes the Python path (intercepts.py)."""

from __future__ import annotations

from unicorn import x86_const as X
from .. import decode as D
from ...vmx.exits import Exit
from ..native import NWRITE, FastExit
from .common import EXIT_COST, MASK64, TSC_PER_INSN, _GPR64

# the registers the native hook reads in one batch before a Python trap (fastexit.c order)
SNAP_IDS = tuple(_GPR64) + (X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS)
# the exits it can do itself (with the default handler)
FX_REASONS = (Exit.CPUID, Exit.RDTSC, Exit.IO_INSTRUCTION)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class FastExitMixin:
    """The native exit path's state block and its arming (see the module doc)."""

    def _fx_init(self, native: bool | None) -> None:
        self.fx = FastExit(list(SNAP_IDS), X.UC_X86_REG_CR4, native=native)
        self._fxs = self.fx.state
        self._fx_native = self.fx.native
        self._fx_exits_ok: bool | None = None

    def _fx_attach(self) -> None:
        """After the block counter and the devices exist."""
        self.fx.attach_counter(self.counter.state)
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

    def _fx_arm(self, count: int) -> None:
        """Before emu_start: may the native path finish traps (and exits) on its own?"""
        fx = self.fx
        if not self._fx_native:
            return
        ok = not count and self.clock == "virtual" and self._skip_once is None \
            and self._pending_cfg is None
        fx.set_fast(ok)
        # an exit moves virtual time: with a deadline in TSC ticks or an event to look at
        # after it, every exit goes through Python (which stops and re-arms)
        exits_ok = ok and self.trace is None \
            and not self._on["pin.activate_vmx_preemption_timer"] and not self._reentry_needed()
        if exits_ok != self._fx_exits_ok:
            self._fx_exits_ok = exits_ok
            for r in FX_REASONS:
                fx.python_only(r, not (exits_ok and r in self.exit_stats
                                       and r not in self.user_handlers))

    def _fx_first_exit(self, reason: int) -> None:
        """The first exit of a reason went through Python: the next ones may run natively."""
        if self._fx_exits_ok and reason not in self.user_handlers:
            self.fx.python_only(reason, False)

    def _fx_learn(self, address: int, ins: D.Insn) -> None:
        """A trap the Python path did: teach the native one the instruction (mode-free
        encodings only) and where the count of its block stands."""
        e = self.fx.entry(address)
        if not e.kind:
            self.fx.learn(address, ins.raw, ins.length, self.mode == 64)
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
            wids, wvals = st.wids, st.wvals
            n = 0
            for r, v in pend.items():
                wids[n] = r
                wvals[n] = v
                n += 1
            st.nwrite = n
            if pc is not None:
                st.pc = pc
                st.pc_write = 1
            pend.clear()
        elif pend:
            self.flush()
        self._rcache.clear()
