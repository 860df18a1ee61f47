"""Events: exceptions raised by guest instructions, event injection and delivery
through the guest's IDT/IVT (cpu.delivery), #DF and triple fault, NMIs and external
interrupts at instruction boundaries in the SDM's priority order, and the exits they
cause (exception bitmap, external-interrupt/NMI exiting, interrupt/NMI windows)."""

from __future__ import annotations

import struct
import time
from unicorn import UcError, x86_const as X
from .. import apicv as _apicv
from .. import decode as D
from ..counter import NO_DEADLINE, W_COUNTER, W_SOFT
from ..cpu.delivery import DeliveryFault, deliver_event, nested
from ..cpu.state import HF_INHIBIT_IRQ, old_exception_offset
from ..exitinfo import (INTR_EXTERNAL, INTR_HW_EXCEPTION, INTR_NMI, INTR_PRIV_SW_EXCEPTION,
                        INTR_SW_EXCEPTION, INTR_SW_INTERRUPT, VmExit, interruption_info)
from ..native import FXD_EC, FXD_FAULT, FXD_HERE, FXD_SOFT, REFLECTED, TICK_DONE, TICK_STOP
from .common import EXIT_COST, MASK64, _ERROR_CODE_VECTORS
from .intercepts import trapped_kinds
from ...vmx.exits import Exit, FAULT_VECTORS, FIRST_EXTERNAL_VECTOR, LAST_VECTOR, Vector


class EventsMixin:
    """Events: exceptions, event injection and delivery, NMIs and interrupts (see the module doc)."""

    def _device_nmi(self) -> None:
        self._nmi_pending = True

    def _device_wake(self) -> None:
        """Serial input arrived (another thread): take it at the next boundary.  Inside a
        hook (a guest polling the UART spends most of its time in the I/O hook) the stop is
        left to the hook's end, which sees `_input_wake`."""
        self._input_wake = True
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _on_intr(self, uc, intno, _ud):
        if self._stray_fault and intno in (Vector.PF, Vector.GP):
            # the report of a fault the engine raised inside a VMM call (_tb_drop), not a
            # guest fault; were it the guest's own, the instruction faults again when retried
            self._stray_fault = False
            if self._event is None:
                self._event = ("resume",)
            uc.emu_stop()                  # the run was ending: it still ends, cleanly
            return
        self._rcache.clear()
        self._sync_mode()
        rip = self.rip
        # CR2 now: after this hook Unicorn jumps to a stale "next EIP", which may fault again
        self._event = ("intr", intno, rip, self._retired_at(rip), self.cr(2) if intno == Vector.PF else None)
        uc.emu_stop()

    def _on_fastcall(self, uc, which):
        # Unicorn skips SYSCALL/SYSENTER after this hook: stop there (RIP = the next
        # instruction, the instruction retired) and do what the CPU does (cpu.fastcall)
        self._rcache.clear()
        self._sync_mode()
        rip = self.rip
        if self._event is None:
            self._event = ("fastcall", which, rip, self._retired_at(rip))
        uc.emu_stop()

    def _pf_error_code(self, cr2: int, rip: int) -> int:
        """Reconstruct the #PF error code by walking the guest page tables."""
        present = True
        cr0, cr4 = self.cr(0), self.cr(4)
        try:
            if cr0 & (1 << 31):
                if self.mode == 64 or cr4 & 0x20:
                    table = self.cr(3) & 0x000FFFFFFFFFF000
                    levels = (39, 30, 21, 12) if self.mode == 64 else (30, 21, 12)
                    for sh in levels:
                        idx = (cr2 >> sh) & (0x1FF if not (self.mode != 64 and sh == 30) else 3)
                        e = struct.unpack("<Q", self.read_mem(table + idx * 8, 8))[0]
                        if not e & 1:
                            present = False
                            break
                        if sh in (30, 21) and e & 0x80:
                            break
                        table = e & 0x000FFFFFFFFFF000
                else:
                    pde = struct.unpack("<I", self.read_mem((self.cr(3) & ~0xFFF) + ((cr2 >> 22) << 2), 4))[0]
                    if not pde & 1:
                        present = False
                    elif not pde & 0x80:
                        pte = struct.unpack("<I", self.read_mem((pde & ~0xFFF) + (((cr2 >> 12) & 0x3FF) << 2), 4))[0]
                        present = bool(pte & 1)
        except UcError:
            present = False
        ec = 1 if present else 0
        fetch = False
        write = False
        ins = self._decode_any(rip)
        if ins is not None:
            if ins.len and rip <= cr2 < rip + ins.len or cr2 == rip:
                fetch = True
            else:
                import iced_x86 as ix
                info = ix.InstructionInfoFactory().info(ins)
                for m in info.used_memory():
                    if m.access in (ix.OpAccess.WRITE, ix.OpAccess.READ_WRITE,
                                    ix.OpAccess.COND_WRITE, ix.OpAccess.READ_COND_WRITE):
                        write = True
        else:
            fetch = True
        if write:
            ec |= 2
        if (self.rr(X.UC_X86_REG_CS) & 3) == 3:
            ec |= 4
        if fetch and self.msrs and self.uc.msr_read(0xC0000080) & (1 << 11):
            ec |= 0x10
        return ec

    def _decode_any(self, rip: int):
        raw = self._code_bytes(rip)
        if raw is None:
            return None
        i = D.decode_one(raw, rip, self.bitness)
        return None if i.code == 0 else i

    def _exception_exits(self, vector: int, error_code: int | None) -> bool:
        bm = self.cfg.exception_bitmap()
        bit = bool(bm >> vector & 1)
        if vector == Vector.PF:
            s = self.cfg.settings["exceptions"]
            match = ((error_code or 0) & s["pf_error_code_mask"]) == s["pf_error_code_match"]
            return match == bit
        return bit

    def raise_exception(self, vector: int, error_code: int | None, rip: int, *,
                        itype: int = INTR_HW_EXCEPTION, next_rip: int | None = None,
                        cr2: int | None = None, _depth: int = 0) -> None:
        """An exception in the guest at `rip`: a VM exit or delivery through the guest IDT."""
        if error_code is None and vector in _ERROR_CODE_VECTORS and itype == INTR_HW_EXCEPTION:
            error_code = 0
        if itype != INTR_SW_INTERRUPT and self._exception_exits(vector, error_code):
            ins_len = (next_rip - rip) if next_rip is not None else 0
            ins = self._insns.get(rip)
            raw = b""
            text = ""
            dec = self._decode_any(rip)
            if dec is not None:
                raw = self.read_code(rip, dec.len)
                text = D.format_instr(dec)
            qual = 0
            if vector == Vector.PF:
                qual = cr2 if cr2 is not None else self.cr(2)
            ex = VmExit(Exit.EXCEPTION_NMI, qual, rip, ins_len if itype in (INTR_SW_EXCEPTION, INTR_PRIV_SW_EXCEPTION) else 0,
                        raw, text, interruption_info(vector, itype, error_code is not None),
                        error_code, insn=ins,
                        data={"vector": vector, "next_rip": next_rip})
            self.vmexit(ex)
            ctx = self._last_ctx
            if ctx.ended is not None:
                raise ctx.ended
            if ctx.fault is not None:
                f = ctx.fault
                ctx.fault = None
                self.deliver(f.vector, f.error_code, rip, itype=INTR_HW_EXCEPTION, depth=_depth)
                return
            self.set_rip(ctx.resume_rip)
            return
        self.deliver(vector, error_code, rip, itype=itype, next_rip=next_rip, depth=_depth)

    def deliver(self, vector: int, error_code: int | None, rip: int, *,
                itype: int = INTR_HW_EXCEPTION, next_rip: int | None = None,
                depth: int = 0) -> None:
        """Deliver an event through the guest IDT (or IVT in real mode): cpu.delivery.

        A fault while delivering becomes what SDM table 6-5 says: #DF for two
        contributory faults or a #PF followed by a #PF or a contributory fault,
        a triple fault when delivering #DF faults, else the second fault itself."""
        ret = next_rip if itype in (INTR_SW_INTERRUPT, INTR_SW_EXCEPTION, INTR_PRIV_SW_EXCEPTION) \
            and next_rip is not None else rip
        ec = error_code if itype == INTR_HW_EXCEPTION else None
        fd = self._fx_dlv
        if fd is not None:
            # the common case in one C call (fastexit.c fx_deliver): a gate to the code
            # segment already loaded, no stack switch; 0 = the Python path below does it
            self.flush()
            how = (FXD_SOFT if itype in (INTR_SW_INTERRUPT, INTR_SW_EXCEPTION) else 0) | \
                (FXD_EC if ec is not None else 0) | \
                (FXD_FAULT if itype == INTR_HW_EXCEPTION and vector in FAULT_VECTORS else 0)
            blk = fd[1]
            if fd[0](blk, vector, how, ec or 0, ret & MASK64):
                self._rcache.clear()
                self._drop_phys(blk.frame_phys & ~0xFFF)   # the frame may land on code
                return
        try:
            deliver_event(self, vector, itype, ec, ret)
            return
        except DeliveryFault as f:
            fault = f
        self._rcache.clear()
        self._pend.clear()
        first = vector if itype == INTR_HW_EXCEPTION else -1
        how = nested(first, fault.vector)
        if how == "triple" or depth >= 3:
            self.triple_fault(rip)
            return
        if fault.vector == Vector.PF and fault.cr2 is not None:
            self.set_cr(2, fault.cr2)
        if how == "double":
            self.raise_exception(8, 0, rip, _depth=depth + 1)
        else:
            self.raise_exception(fault.vector, fault.error_code, rip, cr2=fault.cr2,
                                 _depth=depth + 1)

    def triple_fault(self, rip: int) -> None:
        ex = VmExit(Exit.TRIPLE_FAULT, 0, rip)
        self.vmexit(ex)
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        self.set_rip(ctx.resume_rip)

    def _arm_entry_events(self) -> VmExit | None:
        """Events due at VM entry, before any guest instruction."""
        if self._on["pin.activate_vmx_preemption_timer"]:
            if self._ptimer_fire is None:
                now = self.tsc
                self._ptimer_fire = ((now >> self.ptimer_rate) + self.ptimer_value) << self.ptimer_rate
                if self.ptimer_value == 0:
                    self._ptimer_fire = now
        else:
            self._ptimer_fire = None
        if self._entry_inject is not None:
            inj, self._entry_inject = self._entry_inject, None
            self._deliver_event(*inj)
        # priority (vmx-facts 4.8): preemption timer > NMI-window > NMI > interrupt-window
        # > external interrupt
        if self._ptimer_fire is not None and self._ptimer_fire <= self.tsc:
            return VmExit(Exit.PREEMPTION_TIMER, 0, self.rip)
        return self._events()

    # ---- APIC virtualization (the processor's rules are in vmcfg/vmm/apicv.py) ----------
    @property
    def vtpr(self) -> int:
        """VTPR: byte 0x80 of the virtual-APIC page (use TPR shadow)."""
        return self.apicv.vtpr

    @vtpr.setter
    def vtpr(self, value: int) -> None:
        self.apicv.vtpr = value

    def _apicv_attach(self) -> None:
        """Keep the memory hook over the APIC-access page (exact RIPs for its accesses) in
        step with virtualize APIC accesses; fill the virtual-APIC page from the local APIC
        when register virtualization starts."""
        from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
        a = self.apicv
        if a.apic_accesses and self._apicv_hook is None:
            pg = a.access_page
            if pg >= self.memory and not any(b <= pg < b + n for b, n in self.platform.mmio_ranges()):
                # an APIC-access page of its own above RAM: map it (passed-on accesses reach
                # the board's bus there, like any other address without a device)
                self._map_mmio(pg, 0x1000)
            self._apicv_hook = self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                                                _apicv.sync_pc_hook, None, pg, pg + 0xFFF)
        elif not a.apic_accesses and self._apicv_hook is not None:
            self._tb_drop(self.uc.hook_del, self._apicv_hook)
            self._apicv_hook = None
        if a.register_virt and not getattr(self, "_apicv_loaded", False):
            a.load_from_lapic(self.platform.lapic)
            self._apicv_loaded = True

    def _events(self) -> VmExit | None:
        """Pending NMIs and interrupts at an instruction boundary: exit, deliver or wait."""
        on = self._on
        plat = self.platform
        self._input_wake = False
        plat.advance(self.tsc)
        plat.changed = False
        if self.nmi_at is not None and self.icount >= self.nmi_at:
            self.nmi_at = None
            self._nmi_pending = True
        if self._live_nmi or self._live_irqs:
            with self._cfg_lock:
                if self._live_nmi:
                    self._live_nmi = False
                    self._nmi_pending = True
        shadow = self._iw_steps > 0
        # the engine ends a block after STI and MOV SS / POP SS and keeps their blocking in
        # hflags: an engine stop at a block boundary (a device timer) may fall right after one
        engine_shadow = not shadow and self._engine_shadow()
        shadow = shadow or engine_shadow
        if_on = bool(self.rflags & (1 << 9))
        if self.apicv_late is not None:           # APIC virtualization: a trap-like exit due
            return _apicv.late_exit(self)
        if on["primary.nmi_window_exiting"] and on["pin.virtual_nmis"] and not self._nmi_blocked:
            return VmExit(Exit.NMI_WINDOW, 0, self.rip)
        if self._nmi_pending and on["pin.nmi_exiting"]:
            self._nmi_pending = False
            return VmExit(Exit.EXCEPTION_NMI, 0, self.rip, interruption_info=interruption_info(2, INTR_NMI, False),
                          data={"vector": 2, "nmi": True})
        if (self._nmi_pending or self._nmi_reflect) and not self._nmi_blocked:
            if self._nmi_reflect:
                self._nmi_reflect = False
            else:
                self._nmi_pending = False
            self._deliver_event(INTR_NMI, 2)
            return None
        if on["primary.interrupt_window_exiting"] and if_on and not shadow:
            return VmExit(Exit.INTERRUPT_WINDOW, 0, self.rip)
        live = self._live_irqs[0] if self._live_irqs else None
        vec = live if live is not None else plat.pending_interrupt()
        ext_exit = on["pin.external_interrupt_exiting"]
        if vec is not None and ext_exit and _apicv.posted_notification(self, vec):
            return self._events()                # posted interrupts: processed, no exit
        if vec is not None:
            if ext_exit:
                if on["exit.acknowledge_interrupt_on_exit"]:
                    self.ack_interrupt()
                    return VmExit(Exit.EXTERNAL_INTERRUPT, 0, self.rip,
                                  interruption_info=interruption_info(vec, INTR_EXTERNAL, False),
                                  data={"vector": vec, "acknowledged": True})
                return VmExit(Exit.EXTERNAL_INTERRUPT, 0, self.rip, data={"vector": vec, "acknowledged": False})
            if if_on and not shadow:
                self.ack_interrupt()
                self._deliver_event(INTR_EXTERNAL, vec)
                return None
        elif self._virq and if_on and not shadow:
            self._deliver_event(INTR_EXTERNAL, self._virq.pop(0))
            return None
        elif self.apicv.vid:                     # virtual-interrupt delivery (apicv.py)
            vvec = _apicv.pending_event(self, if_on, shadow)
            if vvec is not None:
                self._deliver_event(INTR_EXTERNAL, vvec)
                return None
        if engine_shadow and if_on and ((vec is not None and not ext_exit) or self._virq or
                                        (self.apicv.vid and self.apicv.pending() is not None) or
                                        on["primary.interrupt_window_exiting"]):
            self._iw_steps = 1           # one more instruction, then the event (_after_step)
        # something waits for RFLAGS.IF or for IRET: watch STI/POPF/IRET
        waiting = ((vec is not None and not ext_exit) or self._virq or (
            self.apicv.vid and self.apicv.pending() is not None)) and not if_on
        nmi_wait = (self._nmi_pending or self._nmi_reflect or self._nmi_blocked)
        # an interrupt may become deliverable at any boundary while the timer runs: watch
        # MOV SS / POP SS, whose blocking covers the instruction after them
        armed = plat.next_event() is not None or bool(self._live_irqs)
        extra = frozenset(("sti", "popf", "iret") if waiting else ()) | \
            frozenset(("iret",) if nmi_wait else ()) | frozenset(("ss_load",) if armed else ())
        if extra != self._extra_trap:
            self._extra_trap = extra
            trapped = trapped_kinds(self.cfg) | extra
            if trapped != self._trapped:
                self._trapped = trapped
                self._rehook_all()
        return None

    # ---- an interrupt taken inside the engine, at the soft deadline (counter.py) ----------
    def _soft_here_ok(self, count: int, mtf_native: bool) -> bool:
        """Before emu_start: may a device timer's interrupt be taken inside the engine this
        run (_at_soft_deadline)?  Only when nothing but external interrupts -- delivered
        through the guest IDT, or exiting (external-interrupt exiting) to the default
        handler -- can be due at a block boundary: no single-stepping, no window exiting,
        no virtual-interrupt delivery, no event from the VMM waiting."""
        on = self._on
        self._extint_lean = on["pin.external_interrupt_exiting"] and self._lean_extint_ok()
        ok = bool(self._fx_dlv is not None and not count and not mtf_native
                  and self._smc_page is None and self._skip_once is None
                  and not self._iw_steps and self._ptimer_fire is None
                  and self.nmi_at is None and self._entry_inject is None
                  and not on["primary.interrupt_window_exiting"]
                  and not on["primary.nmi_window_exiting"]
                  and not self.apicv.vid and self.apicv_late is None)
        s = self._fx_soft
        if s is not None:
            # the whole turn in C (fastexit.c c_turn) this run: the virtual clock; with
            # external-interrupt exiting, only the exit leanexit._lean_extint does
            exiting = on["pin.external_interrupt_exiting"]
            s.turn_on = ok and self.clock != "realtime" and (not exiting or self._extint_lean)
            s.turn_exit = bool(exiting)
            wd = self._wall_deadline
            s.wall_deadline_ns = 0 if wd is None else max(1, int(wd * 1e9))
        return ok

    def _at_soft_deadline(self, _uch, _address, _size, _user) -> None:
        """The block counter reached the soft deadline (a device timer) at the start of a
        block, before the block runs: the soft-deadline function of a build without the C
        API (fastexit.c fx_soft_deadline does this same turn in C: `_soft_tick`, the C
        delivery, `_soft_acked`).  The plain case -- the timer raised an interrupt the CPU
        takes now (RFLAGS.IF = 1, no STI / MOV SS blocking) through a gate the C delivery
        handles -- is done right here: the devices act, the interrupt is delivered and
        acknowledged, the next soft deadline set, and the engine goes on at the handler (the
        RIP write restarts it there).  Anything else stops the engine before the block, as
        the stub does without this function, and the run loop looks."""
        try:
            ic = self.counter.state[W_COUNTER]
            tsc = self._tsc_at(ic)
            vec = self._soft_tick(ic, tsc)
            if vec == TICK_DONE:
                return
            if vec >= 0:
                fd = self._fx_dlv
                if fd[0](fd[1], vec & 0xFF, FXD_HERE, 0, 0):
                    self.counter.state[W_SOFT] = self._soft_acked(vec, fd[1].frame_phys, ic, tsc)
                    return
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
        self.counter.soft_stop()

    def _soft_tick(self, ic: int, tsc: int) -> int:
        """The first half of a turn at the soft deadline, `ic` instructions retired, the VMM's
        TSC `tsc` (virtual clock): the devices act on what is due, and the answer is the
        vector the CPU takes now -- to be delivered through the guest IDT by the caller,
        then acknowledged with `_soft_acked` --, with REFLECTED when external-interrupt
        exiting's default handler reflected it (the exit is done: leanexit._lean_extint),
        or TICK_STOP (the run loop must look: the engine stops before the block) or
        TICK_DONE (done here: the exit's full path)."""
        if not self._soft_here or self._in_hook:
            return TICK_STOP
        self._in_hook = True
        try:
            if self._event is not None or self._pend or \
                    self._pending_cfg is not None or self._rehalt or self._virq or \
                    self._nmi_pending or self._nmi_reflect or self._live_nmi or self._live_irqs:
                return TICK_STOP
            wd = self._wall_deadline
            if wd is not None and time.monotonic() >= wd:
                return TICK_STOP
            self.icount = ic
            plat = self.platform
            self._input_wake = False             # queued serial input is served here (as _events)
            plat.advance(tsc if self.clock != "realtime" else self._tsc_at(ic))
            plat.changed = False
            if self._nmi_pending:
                return TICK_STOP
            vec = plat.pending_interrupt()
            if vec is None:
                return TICK_STOP
            if self._on["pin.external_interrupt_exiting"]:
                return self._lean_extint(vec, ic, tsc)  # (leanexit.py)
            return vec
        except BaseException as e:       # never let it reach C, never lose it
            self._event = ("error", e)
            return TICK_STOP
        finally:
            self._in_hook = False

    def _soft_acked(self, vec: int, frame_phys: int, ic: int, tsc: int) -> int:
        """The second half: `vec` was delivered through the guest IDT (its frame at
        `frame_phys`); the interrupt controller acknowledges it (INTA).  Returns the next
        soft deadline (NO_DEADLINE when the engine was stopped)."""
        self._in_hook = True
        try:
            if vec & REFLECTED:              # acknowledged at the exit, reflected (_virq)
                self._virq.pop(0)
                self.lean_extints += 1
                # (the exit's virtual time: _lean_extint)
                return self._after_boundary_delivery(frame_phys, ic, (tsc + EXIT_COST) & MASK64)
            took = self.platform.ack_interrupt()
            if took != vec:                  # pragma: no cover - the board contradicts itself
                raise RuntimeError(f"the interrupt acknowledged ({took}) is not the one "
                                   f"delivered ({vec})")
            return self._after_boundary_delivery(frame_phys, ic, tsc)
        except BaseException as e:       # never let it reach C, never lose it
            self._event = ("error", e)
            self.uc.emu_stop()
            return NO_DEADLINE
        finally:
            self._in_hook = False

    def _after_boundary_delivery(self, frame_phys: int, ic: int, tsc: int | None) -> int:
        """After an interrupt delivered at the soft deadline: the bookkeeping and the next soft
        deadline (NO_DEADLINE, the engine stopped, when no timer is armed any more: the run
        loop re-decides its watches).  `tsc`: the VMM's TSC at `ic` (None: ask)."""
        plat = self.platform
        self.events_delivered += 1
        self.irqs_in_engine += 1
        self._rcache.clear()
        page = frame_phys & ~0xFFF
        if page != self._data_frame:
            self._frame_check(page)                 # the frame may land on code
        nf = plat.clock.next_deadline()             # (plat.next_event())
        if nf is None:
            self._event = ("resume",)
            self.uc.emu_stop()
            return NO_DEADLINE
        if self._input_wake:                        # serial input came meanwhile (_device_wake)
            self.counter.request_stop()
        return min(self._soft_at(ic, nf, tsc), NO_DEADLINE)

    def _exit_at_boundary(self, vec: int, ic: int) -> bool:
        """External-interrupt exiting at the soft deadline, to the default handler: the exit
        (as _events makes it), then -- as the run loop's next turn would -- the interrupt
        the handler reflects, delivered when the guest can take it.  Any other outcome
        goes to the run loop with the exit done (event "exited")."""
        if Exit.EXTERNAL_INTERRUPT in self.user_handlers:
            return False
        self._sync_mode()                    # the exit records the linear RIP
        rip = self.rip
        if self._on["exit.acknowledge_interrupt_on_exit"]:
            self.ack_interrupt()
            ex = VmExit(Exit.EXTERNAL_INTERRUPT, 0, rip,
                        interruption_info=interruption_info(vec, INTR_EXTERNAL, False),
                        data={"vector": vec, "acknowledged": True})
        else:
            ex = VmExit(Exit.EXTERNAL_INTERRUPT, 0, rip,
                        data={"vector": vec, "acknowledged": False})
        self.vmexit(ex)
        ctx = self._last_ctx
        plat = self.platform
        # the exit took virtual time: the devices act on it before the next boundary
        plat.advance(self._tsc_at(ic))
        plat.changed = False
        if ctx.ended is not None or ctx.fault is not None or ctx.resume_rip != rip or \
                self._pend or self._pending_cfg is not None or self._entry_inject is not None \
                or self._nmi_pending or self._nmi_reflect or plat.pending_interrupt() is not None \
                or len(self._virq) != 1:
            self._event = ("exited", ctx)
            self.uc.emu_stop()
            return True
        blk = self._fx_dlv[1]
        if not self._fx_dlv[0](blk, self._virq[0], FXD_HERE, 0, 0):
            self._event = ("exited", ctx)    # IF = 0 or blocked: the run loop waits for it
            self.uc.emu_stop()
            return True
        self._virq.pop(0)
        return self._delivered_at_boundary(blk, ic)

    def _delivered_at_boundary(self, blk, ic: int) -> bool:
        """The C delivery `blk` delivered an interrupt at the soft deadline (the exit paths)."""
        self.counter.state[W_SOFT] = self._after_boundary_delivery(blk.frame_phys, ic, None)
        return True

    def _engine_shadow(self) -> bool:
        """Blocking by STI or MOV SS / POP SS at an engine stop: the engine ends a block after
        them and keeps the blocking in hflags, and the block counter may stop it right there
        (a device timer).  The flag is believed only when the block that ran last ran to its
        end natively and its last instruction is one of them (the engine leaves the flag set
        when a hook retired the next instruction instead)."""
        if not self._hflags & HF_INHIBIT_IRQ or not self._stub_stopped:
            return False
        addr, size, n = self.counter.last_block()
        rip = self.rip
        if not size or addr + size != rip:
            return False
        last = None
        a = addr
        for _ in range(max(n, 1)):
            last = self._decode_any(a)
            if last is None:
                return False
            a += last.len
            if a >= rip:
                break
        return a == rip and D.classify(last) in ("sti", "ss_load")

    def _device_change_needs_stop(self, icount: int) -> bool:
        """A device changed inside one of the engine's hooks (an emulated I/O instruction, an
        MMIO store), `icount` instructions retired.  True when the run loop must look at the
        next instruction boundary: an NMI or interrupt is now requested (taken, exited on or
        waited for), or the boundary watches must change (a timer was armed for the first
        time).  Otherwise only a device deadline moved (an EOI, a timer re-programmed): the
        block counter's soft deadline follows it and the guest runs on without a stop."""
        plat = self.platform
        if self._nmi_pending or self._live_nmi or self._live_irqs or \
                plat.pending_interrupt() is not None:
            return True
        clock = plat.clock
        nf = clock.next_deadline()                  # (plat.next_event())
        if nf is not None and "ss_load" not in self._extra_trap:
            return True
        if clock.rescheduled:                       # (else the soft deadline stands: an EOI)
            # (counter.set_soft_deadline)
            self.counter.state[W_SOFT] = NO_DEADLINE if nf is None else \
                min(self._soft_at(icount, nf), NO_DEADLINE)
        plat.changed = False
        return False

    def ack_interrupt(self) -> int | None:
        """INTA: take the highest-priority external interrupt (live queue first, then the
        board: LAPIC, or the PIC through LINT0)."""
        if self._live_irqs:
            with self._cfg_lock:
                return self._live_irqs.pop(0) if self._live_irqs else None
        return self.platform.ack_interrupt()

    def reflect_interrupt(self, vector: int) -> None:
        """The VMM (a default handler) gives the guest this interrupt when RFLAGS.IF allows."""
        self._virq.append(vector & 0xFF)

    def reflect_nmi(self) -> None:
        self._nmi_reflect = True

    def inject_event(self, itype: int, vector: int, error_code: int | None = None,
                     instruction_length: int = 0) -> None:
        """Event injection on the next VM entry (delivered before any guest instruction)."""
        self._entry_inject = (itype, vector & 0xFF, error_code, instruction_length)
        if self._in_hook and self._event is None:
            self._event = ("resume",)

    def _deliver_event(self, itype: int, vector: int, error_code: int | None = None,
                       length: int = 0) -> None:
        rip = self.rip
        if itype == INTR_NMI:
            self._nmi_blocked = True
        nxt = rip + length if itype in (INTR_SW_INTERRUPT, INTR_SW_EXCEPTION,
                                        INTR_PRIV_SW_EXCEPTION) else None
        self.events_delivered += 1
        self.deliver(vector, error_code if itype == INTR_HW_EXCEPTION else None, rip,
                     itype=itype, next_rip=nxt)

    def queue_event(self, kind: str, vector: int = 2) -> None:
        """A live NMI ("nmi") or external interrupt ("irq", vector); thread-safe, taken at
        the next instruction boundary (like request_apply)."""
        if kind not in ("nmi", "irq"):
            raise ValueError(f"event kind must be 'nmi' or 'irq', not {kind!r}")
        if kind == "irq" and not FIRST_EXTERNAL_VECTOR <= vector <= LAST_VECTOR:
            raise ValueError(f"external interrupt vector must be 32-255, not {vector}")
        with self._cfg_lock:
            if kind == "nmi":
                self._live_nmi = True
            else:
                self._live_irqs.append(vector)
            if self._pending_cfg is None:   # take the live-apply path out of a hook, too
                self._pending_cfg = self.cfg
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _ptimer_exit(self) -> None:
        now = self.tsc
        if self._ptimer_fire is not None and self._ptimer_fire > now:
            if self.clock == "realtime":
                self._sleep_until(self._ptimer_fire)
            else:
                self.idle_ticks += self._ptimer_fire - now
        self._entry_exit(VmExit(Exit.PREEMPTION_TIMER, 0, self.rip))

    def _soft_int_before(self, rip: int, vector: int) -> tuple[int, int] | None:
        try:
            pre = self.read_code(rip - 2, 2) if rip >= 2 else b"\0" + self.read_code(rip - 1, 1)
        except UcError:
            return None
        if pre[0] == 0xCD and pre[1] == vector:
            return 2, INTR_SW_INTERRUPT
        if vector == 3 and pre[1] == 0xCC:
            return 1, INTR_SW_EXCEPTION
        if vector == 4 and pre[1] == 0xCE:
            return 1, INTR_SW_EXCEPTION
        if vector == 1 and pre[1] == 0xF1:
            return 1, INTR_PRIV_SW_EXCEPTION
        return None

    def _reset_old_exception(self) -> None:
        """Clear QEMU's double-fault bookkeeping (every CpuState write-back does)."""
        if old_exception_offset(64) is None:
            return
        self.flush()
        self.cpu_state.begin()
        self.cpu_state.commit()
