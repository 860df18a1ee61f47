"""Exits to a Python handler without leaving the engine (issue 14): the lean path.

A CPUID, RDTSC or IN/OUT exit whose reason has a user handler (``handlers=`` of run_guest,
a profile's [handlers]) is found by the native hook (native/fastexit.c ``lean_exit``),
which decodes it -- the reason, the instructions retired before it, the TSC at the exit,
RAX/RCX/RDX and RIP -- reads those registers in one batch, puts them in the register cache
and calls `_lean_exit` once (through the CPython C API; `_lean_exit_ctypes` where the helper
was built without the Python headers).  That runs the handler with a `LeanExitContext`
(handlers.py: the same API; the exit record is built only if the handler looks at it); the
hook takes the register writes from the pending dict and sends them back in one batch.
Every such exit runs this code, so it does as little as it can: what cannot change while
the engine runs is not looked at again (see `_lean_exit`), and the default handlers use
what the hook read (the TSC at the exit, the registers in the cache, the bus's port
tables).  The engine goes on; it stops only for what the run loop must do:
the handler ended the run, injected an exception or an event, changed the controls, a
device now needs the next instruction boundary, or events wait (the full trap path in
intercepts.py stops at the same points, and also after every exit while a device timer is
armed: here, as in fastexit.c, the exit's virtual time moves the block counter's soft
deadline instead, which takes the timer's interrupt at the same instruction).

The hook takes this path only when the full one would do nothing more: the virtual clock,
no trace, no preemption timer, no event waiting, the reason seen once already (exit order),
and an instruction the native hook decoded (fastexit.FX_REASONS).  Anything unexpected here
goes to the full trap path instead.  Without the C helper every exit takes the full path.
"""

from __future__ import annotations

import time
from unicorn import x86_const as X
from ..devices import DebugExit, SystemReset
from ..exitinfo import INTR_EXTERNAL, VmExit, interruption_info
from ..handlers import DEFAULT_HANDLERS, ExitContext, LeanExitContext, h_external_interrupt
from ..native import LEAN_COUNTED, LEAN_NONE, LEAN_RESUMED, LEAN_STOPPING, NWRITE, REFLECTED, \
    TICK_DONE, TICK_STOP
from ..outcome import GuestFault, RunEnd
from .common import EXIT_COST, MASK64
from .deviceio import device_run_end
from .fastexit import queue_writes
from .intercepts import _MODE_FREE
from ...vmx.exits import Exit

_RAX, _RCX, _RDX, _RIP = X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RIP
_EXTINT = Exit.EXTERNAL_INTERRUPT
_clock = time.perf_counter_ns


class LeanExitMixin:
    """Python exit handlers called from the native hook (see the module doc)."""

    def _lean_attach(self) -> None:
        self.lean_extints = 0            # external-interrupt exits done by _lean_extint
        self._extint_lean = False        # it may, this run (_lean_extint_ok)
        self._lean_capi = False
        # the bus's per-port tables (handlers.h_io looks the device up there directly)
        bus = self.platform.bus
        self._io_readers, self._io_writers = bus.readers, bus.writers
        if self._fx_native:
            st = self._fxs
            self._lean_wids, self._lean_wvals = st.wids, st.wvals
            self.fx.set_python_exit(self._lean_exit_ctypes)
            if self.fx.capi():
                # the hook calls _lean_exit through the C API: it fills the register cache
                # and takes the writes from the pending dict itself (fastexit.c call_py_exit)
                self._lean_capi = True
                self.fx.set_python_exit_capi(self._lean_exit, self._pend, self._rcache)

    def _lean_exit(self, reason, address, ic, at):
        """One exit from the hook (fastexit.c lean_exit), which has counted it and put the
        registers it read (RAX RCX RDX RIP) in the register cache; at = (the exit's number,
        `ic`: the instructions retired before it, the VMM's TSC at the exit, RAX, RDX).
        Returns what the hook does next (native.LEAN_*); when the guest resumes, the hook
        sends the pending writes -- the RIP too, if it moved -- and empties both dicts.
        Every such exit runs this: each step counts."""
        ins = self._insns.get(address)
        if ins is None or self._in_hook or ins.raw not in _MODE_FREE:
            # not decoded here, or an operand size that follows the code size: the full path
            return self._lean_full(address)
        self._in_hook = True
        self.icount = ic
        try:
            ctx = LeanExitContext()          # (its fields set here: no __init__ to run)
            ctx.vcpu = self
            ctx._reason = reason
            ctx._insn = ins
            ctx._at = at
            ctx.ended = ctx.fault = None
            try:
                self.user_handlers[reason](ctx)
            except (RunEnd, GuestFault):
                raise
            except Exception as e:
                raise RunEnd("error", None,
                             f"exit handler for {ctx.name} raised {type(e).__name__}: {e}") from e
            self._last_ctx = ctx
            self._ptimer_fire = None
            if ctx.ended is not None:
                raise ctx.ended
            if ctx.fault is not None:
                raise ctx.fault
            # resume at the RIP the handler left (intercepts._on_trap: _rip_value(self.rip),
            # which in 64-bit code is the RIP register's value itself: the hook's default)
            if self.mode != 64:
                self._pend[self._pc_reg] = self._rip_value(self.rip)
            ic += 1
            self.icount = ic
            plat = self.platform
            # the run loop must look (intercepts._on_trap's conditions; plat.changed and
            # _events_waiting() written out).  Not here: _reentry (window exiting, MTF), which
            # only a new configuration sets -- the hook takes this path only when it is off.
            # Otherwise the engine goes on, and the hook moves a device timer's soft deadline
            # (retired instructions) sooner by the exit's EXIT_COST ticks, as for the exits it
            # does itself; the full path stops here and the run loop sets the same deadline.
            if self._pending_cfg is not None or self._event is not None or \
                    self._input_wake or self._virq or self._nmi_reflect or self._nmi_pending \
                    or ((plat._changed or plat.clock.rescheduled)
                        and self._device_change_needs_stop(ic)) \
                    or (self.apicv.vid and self._events_waiting()):
                if self._event is None:
                    self._event = ("resume", ins.kind)
                self.uc.emu_stop()
                self._in_hook = False
                return LEAN_STOPPING
            self._in_hook = False
            return LEAN_RESUMED
        except RunEnd as e:
            self._event = ("end", e)
        except (DebugExit, SystemReset) as d:
            self.icount += 1
            self._event = ("end", device_run_end(d))
        except GuestFault as f:
            self._event = ("fault", f.vector, f.error_code, address, self.icount, f.address)
        except BaseException as e:     # a bug: never let it reach C, never lose it
            self._event = ("error", e)
        try:
            self.counter.set_count(self.icount)
            self.uc.emu_stop()
            self._trap_flush()
        except BaseException as e:     # pragma: no cover
            self._event = ("error", e)
        self._in_hook = False
        return LEAN_COUNTED

    def _lean_exit_ctypes(self, reason, address, ic, seq, tsc, rax, rcx, rdx, rip):
        """`_lean_exit` for the ctypes callback (a build without the CPython headers): the
        register cache filled here, the RIP and the writes put in the state block's batch,
        which the hook sends."""
        rc = self._rcache
        rc[_RAX] = rax
        rc[_RCX] = rcx
        rc[_RDX] = rdx
        rc[_RIP] = rip
        r = self._lean_exit(reason, address, ic, (seq, ic, tsc, rax, rdx))
        rc.clear()
        if r == LEAN_RESUMED or r == LEAN_STOPPING:
            st = self._fxs
            pend = self._pend
            st.pc = pend.pop(self._pc_reg, rip)
            if pend:
                if len(pend) <= NWRITE:
                    st.nwrite = queue_writes(pend, self._lean_wids, self._lean_wvals)
                    pend.clear()
                else:
                    self.flush()                     # more than the hook's batch holds
        return r

    def _lean_full(self, address: int) -> int:
        """The full trap path (intercepts.py) for this exit, which counts it itself."""
        self._fxs.exit_count -= 1
        self.fx.read_snapshot(self._uch)         # (the hook read only what it passed)
        self._raw_trap(None, address, 0, None)
        return LEAN_NONE

    # ---- external-interrupt exiting at the soft deadline, default handler (events.py) ----------
    def _lean_extint_ok(self) -> bool:
        """Before a run (events._soft_here_ok): may `_lean_extint` do external-interrupt exits
        this run?  What it asks changes only through the run loop (a live apply stops the
        engine): no trace, no user handler, acknowledge-on-exit, no preemption timer, no
        virtual-interrupt delivery, the default handler the one this path writes out."""
        on = self._on
        return bool(self.trace is None and _EXTINT not in self.user_handlers
                    and on["exit.acknowledge_interrupt_on_exit"]
                    and not on["pin.activate_vmx_preemption_timer"] and not self.apicv.vid
                    and DEFAULT_HANDLERS[_EXTINT] is h_external_interrupt)

    def _lean_extint(self, vec: int, ic: int, tsc: int) -> int:
        """External-interrupt exiting with acknowledge-on-exit, to the default handler, at
        the block counter's soft deadline (events._take_at_boundary, inside the engine): the
        exit is counted and the interrupt acknowledged and reflected as the full path
        (_exit_at_boundary + vmexit + handlers.h_external_interrupt) does it, without the
        exit record, the context or a read of the CPU mode -- nothing looks at them here (no
        trace, no user handler) -- and the answer is the reflected interrupt, to be delivered
        through the guest IDT in C (REFLECTED | vector: `_soft_acked` then takes it from
        _virq).  Anything else takes the full path; then the answer is TICK_DONE or
        TICK_STOP (events._soft_tick).  `tsc`: the VMM's TSC before the exit."""
        st = self.exit_stats.get(_EXTINT)
        if st is None or not self._extint_lean:      # (the first exit of the reason too)
            return TICK_DONE if self._exit_at_boundary(vec, ic) else TICK_STOP
        self.ack_interrupt()
        fxs = self._fxs
        fxs.exit_count += 1
        st._count += 1
        t0 = _clock()
        self.reflect_interrupt(vec)                  # h_external_interrupt, acknowledged
        st._seconds += (_clock() - t0) * 1e-9
        self._ptimer_fire = None
        plat = self.platform
        # the exit took virtual time: the devices act on it before the next boundary
        plat.advance((tsc + EXIT_COST) & MASK64 if self.clock != "realtime" else self._tsc_at(ic))
        plat.changed = False
        if self._pending_cfg is not None or self._entry_inject is not None \
                or self._nmi_pending or self._nmi_reflect or plat.pending_interrupt() is not None \
                or len(self._virq) != 1:
            self._lean_extint_exited(vec, ic)
            return TICK_DONE
        # delivered by the caller (fastexit.c fx_soft_deadline, events._at_soft_deadline):
        # should the guest not take it there (IF = 0, blocked, a gate the C delivery leaves
        # to Python), the engine stops and the run loop delivers it from _virq
        return REFLECTED | self._virq[0]

    def _lean_extint_exited(self, vec: int, ic: int) -> bool:
        """The run loop takes over after the exit (event "exited", as _exit_at_boundary): the
        exit record and the handler's context, as the full path made them."""
        self._sync_mode()
        ex = VmExit(_EXTINT, 0, self.rip,
                    interruption_info=interruption_info(vec, INTR_EXTERNAL, False),
                    data={"vector": vec, "acknowledged": True})
        ex.seq = self._fxs.exit_count
        ex.instructions = ic
        ex.tsc = self._tsc_at(ic)
        ctx = self._last_ctx = ExitContext(self, ex)
        self._event = ("exited", ctx)
        self.uc.emu_stop()
        return True
