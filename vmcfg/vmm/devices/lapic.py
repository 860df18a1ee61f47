"""The local APIC: xAPIC registers at MMIO 0xFEE00000 and x2APIC MSRs 0x800-0x8FF.

One CPU, APIC ID 0, version 0x14 with six LVT entries (timer, thermal,
performance, LINT0, LINT1, error).  IA32_APIC_BASE (MSR 0x1B) switches between
disabled, xAPIC and x2APIC with the SDM's legal transitions (others #GP).

Implemented: TPR and PPR, EOI (to the IOAPIC for level-triggered vectors),
ISR/TMR/IRR, the spurious-interrupt vector register (software enable; clearing
it masks every LVT), the error status register (write to latch), LDR/DFR (flat
and cluster), ICR with the self, all-including-self and physical/logical
destinations that name this CPU (fixed, lowest priority and NMI; INIT, SIPI
and SMI to itself are ignored), the x2APIC SELF IPI register, and the timer in
one-shot, periodic and TSC-deadline (IA32_TSC_DEADLINE, MSR 0x6E0) modes with
the divide configuration register.  The timer's input clock is the TSC (one
count per TSC tick at divide-by-1).

Interrupts: `accept(vector, level)` puts a fixed interrupt in IRR (from the
IOAPIC, an IPI or an LVT); `pending()` is the vector the CPU would take now
(highest IRR above the PPR class, APIC software-enabled); `ack()` moves it to
ISR.  `accepts_extint()` says the PIC's INTR reaches the CPU (APIC disabled,
or LINT0 unmasked in ExtINT mode: the virtual-wire mode a BIOS leaves).

In x2APIC mode the MSR interface follows the SDM: RDMSR or WRMSR of a register
that does not exist, a write to a read-only one, a read of EOI or SELF IPI and
reserved bits set are #GP (raised as `AccessFault`).  The xAPIC page reads 0
and ignores writes when the APIC is disabled or in x2APIC mode.
"""

from __future__ import annotations

from typing import Callable

from ..clock import Clock
from .bus import AccessFault

APIC_BASE_DEFAULT = 0xFEE00000
MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
X2APIC_MSR_FIRST, X2APIC_MSR_LAST = 0x800, 0x8FF
BASE_BSP, BASE_EXTD, BASE_EN = 1 << 8, 1 << 10, 1 << 11
MAXPHYADDR = 39

ID, VERSION, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = (
    0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0)
ISR0, TMR0, IRR0, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TMICT, TMCCT, TDCR, SELF_IPI = 0x380, 0x390, 0x3E0, 0x3F0
LVT_OFFSETS = (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR)
LVT_WRITABLE = {LVT_TIMER: 0x700FF, LVT_THERMAL: 0x107FF, LVT_PERF: 0x107FF,
                LVT_LINT0: 0x1A7FF, LVT_LINT1: 0x1A7FF, LVT_ERROR: 0x100FF}
LVT_MASKED = 1 << 16
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
VERSION_VALUE = 0x14 | ((len(LVT_OFFSETS) - 1) << 16)
ESR_SEND_ILLEGAL, ESR_RECV_ILLEGAL, ESR_ILLEGAL_REG = 1 << 5, 1 << 6, 1 << 7

# x2APIC MSR (offset >> 4) -> access: "rw", "r", "w"
_X2 = {0x02: "r", 0x03: "r", 0x08: "rw", 0x0A: "r", 0x0B: "w", 0x0D: "r", 0x0F: "rw",
       0x28: "rw", 0x30: "rw", 0x32: "rw", 0x33: "rw", 0x34: "rw", 0x35: "rw", 0x36: "rw",
       0x37: "rw", 0x38: "rw", 0x39: "r", 0x3E: "rw", 0x3F: "w"}
for _i in range(0x10, 0x28):
    _X2[_i] = "r"


def _highest(bits: int) -> int | None:
    return bits.bit_length() - 1 if bits else None


class LocalApic:
    MMIO = (APIC_BASE_DEFAULT, 0x1000)

    def __init__(self, clock: Clock, *, apic_id: int = 0,
                 nmi: Callable[[], None] = lambda: None,
                 eoi_broadcast: Callable[[int], None] = lambda vector: None,
                 changed: Callable[[], None] = lambda: None):
        self.clock = clock
        self.apic_id = apic_id
        self.nmi = nmi
        self.eoi_broadcast = eoi_broadcast
        self._changed = changed
        self.base = APIC_BASE_DEFAULT | BASE_BSP | BASE_EN
        self._timer = clock.timer("lapic-timer", self._on_timer)
        self.reset()

    def reset(self) -> None:
        """Power-on register state (the base MSR is kept)."""
        self.irr = self.isr = self.tmr = 0
        self.tpr = 0
        self.svr = 0xFF
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.esr = self.esr_pending = 0
        self.icr = 0
        self.lvt = {o: LVT_MASKED for o in LVT_OFFSETS}
        self.lvt[LVT_LINT0] = 0x700          # ExtINT: the PIC's virtual wire, as a BIOS leaves it
        self.lvt[LVT_LINT1] = 0x400          # NMI
        self.tdcr = 0
        self.initial = 0
        self.start = 0
        self.stopped = False        # the count ended in one-shot mode and was not reloaded
        self.tsc_deadline = 0
        self._timer.cancel()

    # ---- mode ------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.base & BASE_EN)

    @property
    def x2apic(self) -> bool:
        return self.base & (BASE_EN | BASE_EXTD) == BASE_EN | BASE_EXTD

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & 0x100)

    @property
    def xapic_mmio_active(self) -> bool:
        return self.enabled and not self.x2apic and \
            self.base & ~0xFFF & ((1 << MAXPHYADDR) - 1) == APIC_BASE_DEFAULT

    def write_base(self, value: int) -> None:
        reserved = ~(((1 << MAXPHYADDR) - 1) & ~0xFFF | BASE_BSP | BASE_EXTD | BASE_EN) & (2**64 - 1)
        if value & reserved:
            raise AccessFault(f"IA32_APIC_BASE: reserved bits {value & reserved:#x}")
        en, extd = bool(value & BASE_EN), bool(value & BASE_EXTD)
        if extd and not en:
            raise AccessFault("IA32_APIC_BASE: x2APIC mode with the APIC disabled is invalid")
        if self.x2apic and en and not extd:
            raise AccessFault("IA32_APIC_BASE: x2APIC -> xAPIC is not a legal transition")
        if not self.enabled and extd:
            raise AccessFault("IA32_APIC_BASE: disabled -> x2APIC is not a legal transition")
        was_enabled = self.enabled
        self.base = value & ~BASE_BSP | (self.base & BASE_BSP)
        if was_enabled and not en:
            self.reset()
        self._changed()

    # ---- interrupts ------------------------------------------------------------------
    def accept(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt for this CPU (from the IOAPIC, an IPI or an LVT)."""
        vector &= 0xFF
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL)
            return
        m = 1 << vector
        self.irr |= m
        if level:
            self.tmr |= m
        else:
            self.tmr &= ~m
        self._changed()

    def _error(self, bit: int) -> None:
        self.esr_pending |= bit
        lvt = self.lvt[LVT_ERROR]
        if not lvt & LVT_MASKED:
            self.accept(lvt & 0xFF)

    @property
    def ppr(self) -> int:
        isrv = _highest(self.isr) or 0
        if (self.tpr & 0xF0) >= (isrv & 0xF0):
            return self.tpr & 0xFF
        return isrv & 0xF0

    def pending(self) -> int | None:
        """The vector the CPU takes at the next boundary with RFLAGS.IF = 1, or None."""
        if not self.irr or not self.enabled or not self.software_enabled:
            return None
        v = _highest(self.irr)
        if (v & 0xF0) <= (self.ppr & 0xF0):
            return None
        return v

    def ack(self) -> int:
        """INTA: the pending vector moves from IRR to ISR (spurious vector if none)."""
        v = self.pending()
        if v is None:
            return self.svr & 0xFF
        self.irr &= ~(1 << v)
        self.isr |= 1 << v
        return v

    def accepts_extint(self) -> bool:
        if not self.base & BASE_EN:         # (not self.enabled)
            return True
        lint0 = self.lvt[LVT_LINT0]
        return not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == 7

    def eoi(self) -> None:
        v = _highest(self.isr)
        if v is None:
            return
        self.isr &= ~(1 << v)
        if self.tmr & (1 << v):
            self.eoi_broadcast(v)
        self._changed()

    def lint1_nmi(self) -> None:
        if not self.lvt[LVT_LINT1] & LVT_MASKED and (self.lvt[LVT_LINT1] >> 8) & 7 == 4:
            self.nmi()

    # ---- IPIs ------------------------------------------------------------------------
    def _targets_me(self, dest: int, logical: bool) -> bool:
        if self.x2apic:
            if not logical:
                return dest in (self.apic_id, 0xFFFFFFFF)
            ldr = self._x2_ldr()
            return dest == 0xFFFFFFFF or (dest >> 16 == ldr >> 16 and dest & ldr & 0xFFFF != 0)
        dest &= 0xFF
        if not logical:
            return dest in (self.apic_id, 0xFF)
        if dest == 0xFF:
            return True
        mine = self.ldr >> 24
        if self.dfr >> 28 == 0xF:                    # flat model
            return bool(dest & mine)
        return dest >> 4 == mine >> 4 and bool(dest & mine & 0xF)   # cluster model

    def send_ipi(self, lo: int, dest: int) -> None:
        vector, mode = lo & 0xFF, (lo >> 8) & 7
        logical, trigger = bool(lo & (1 << 11)), bool(lo & (1 << 15))
        shorthand = (lo >> 18) & 3
        if shorthand == 3 or (shorthand == 0 and not self._targets_me(dest, logical)):
            return                                   # no other CPU on this machine
        if mode in (0, 1):
            if vector < 16:
                self._error(ESR_SEND_ILLEGAL)
                return
            self.accept(vector, trigger)
        elif mode == 4:
            self.nmi()
            self._changed()

    # ---- timer -----------------------------------------------------------------------
    @property
    def divisor(self) -> int:
        v = (self.tdcr & 3) | ((self.tdcr >> 1) & 4)
        return 1 << ((v + 1) & 7)

    @property
    def timer_mode(self) -> int:
        return (self.lvt[LVT_TIMER] >> 17) & 3

    def current_count(self, now: int | None = None) -> int:
        if self.initial == 0 or self.timer_mode == TIMER_TSC_DEADLINE or self.stopped:
            return 0
        now = self.clock.now() if now is None else now
        n = (now - self.start) // self.divisor
        if self.timer_mode == TIMER_PERIODIC:
            return self.initial - n % self.initial
        return max(0, self.initial - n)

    def _arm_count(self, now: int) -> None:
        if self.initial == 0 or self.timer_mode == TIMER_TSC_DEADLINE or self.stopped:
            self._timer.cancel()
            return
        period = self.initial * self.divisor
        n = (now - self.start) // period + 1
        if self.timer_mode != TIMER_PERIODIC:
            if now - self.start >= period:
                self._timer.cancel()
                return
            n = 1
        self._timer.arm(self.start + n * period)

    def _on_timer(self, now: int) -> None:
        lvt = self.lvt[LVT_TIMER]
        if not lvt & LVT_MASKED:
            self.accept(lvt & 0xFF)
        if self.timer_mode == TIMER_TSC_DEADLINE:
            self.tsc_deadline = 0
        elif self.timer_mode == TIMER_PERIODIC:
            self._arm_count(now)

    def write_tsc_deadline(self, value: int) -> None:
        if self.timer_mode != TIMER_TSC_DEADLINE:
            return                               # ignored outside TSC-deadline mode
        self.tsc_deadline = value & (2**64 - 1)
        if value == 0:
            self._timer.cancel()
        else:
            self._timer.arm(max(self.clock.host_tsc(value), self.clock.now()))
        self._changed()

    def read_tsc_deadline(self) -> int:
        return self.tsc_deadline if self.timer_mode == TIMER_TSC_DEADLINE else 0

    # ---- registers -------------------------------------------------------------------
    def _x2_ldr(self) -> int:
        return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))

    def read(self, off: int) -> int:
        """A 32-bit register read (offset in the xAPIC page)."""
        if off == ID:
            return self.apic_id if self.x2apic else self.apic_id << 24
        if off == VERSION:
            return VERSION_VALUE
        if off == TPR:
            return self.tpr
        if off == PPR:
            return self.ppr
        if off == LDR:
            return self._x2_ldr() if self.x2apic else self.ldr
        if off == DFR:
            return self.dfr
        if off == SVR:
            return self.svr
        if ISR0 <= off < ISR0 + 0x80:
            return (self.isr >> (32 * ((off - ISR0) >> 4))) & 0xFFFFFFFF
        if TMR0 <= off < TMR0 + 0x80:
            return (self.tmr >> (32 * ((off - TMR0) >> 4))) & 0xFFFFFFFF
        if IRR0 <= off < IRR0 + 0x80:
            return (self.irr >> (32 * ((off - IRR0) >> 4))) & 0xFFFFFFFF
        if off == ESR:
            return self.esr
        if off == ICR_LO:
            return self.icr & 0xFFFFFFFF & ~(1 << 12)
        if off == ICR_HI:
            return self.icr >> 32
        if off in self.lvt:
            return self.lvt[off]
        if off == TMICT:
            return self.initial
        if off == TMCCT:
            return self.current_count()
        if off == TDCR:
            return self.tdcr
        return 0                                 # APR, RRD, EOI and reserved offsets

    def write(self, off: int, value: int) -> None:
        """A 32-bit register write (offset in the xAPIC page)."""
        value &= 0xFFFFFFFF
        now = self.clock.now()
        if off == ID and not self.x2apic:
            self.apic_id = value >> 24
        elif off == TPR:
            self.tpr = value & 0xFF
            self._changed()
        elif off == EOI:
            self.eoi()
        elif off == LDR and not self.x2apic:
            self.ldr = value & 0xFF000000
        elif off == DFR and not self.x2apic:
            self.dfr = value | 0x0FFFFFFF
        elif off == SVR:
            self.svr = value & 0x3FF
            if not self.svr & 0x100:
                for o in LVT_OFFSETS:
                    self.lvt[o] |= LVT_MASKED
            self._changed()
        elif off == ESR:
            self.esr, self.esr_pending = self.esr_pending, 0
        elif off == ICR_LO:
            self.icr = (self.icr & ~0xFFFFFFFF) | (value & ~(1 << 12))
            self.send_ipi(value, (self.icr >> 56) & 0xFF)
        elif off == ICR_HI and not self.x2apic:
            self.icr = (self.icr & 0xFFFFFFFF) | ((value & 0xFF000000) << 32)
        elif off in self.lvt:
            v = value & LVT_WRITABLE[off]
            if not self.software_enabled:
                v |= LVT_MASKED
            if off == LVT_TIMER:
                old_mode = self.timer_mode
                count = self.current_count(now)
                self.lvt[off] = v
                if (old_mode == TIMER_TSC_DEADLINE) != (self.timer_mode == TIMER_TSC_DEADLINE):
                    self.initial = 0
                    self.tsc_deadline = 0
                    self._timer.cancel()
                else:
                    # one counter: a mode change lets it go on from where it is -- a count
                    # that ended in one-shot mode stays 0, periodic -> one-shot counts on
                    if self.initial and old_mode != self.timer_mode:
                        if count == 0:
                            self.stopped = True
                        else:
                            self.start = now - (self.initial - count) * self.divisor
                    self._arm_count(now)
            else:
                self.lvt[off] = v
            self._changed()
        elif off == TMICT:
            if self.timer_mode == TIMER_TSC_DEADLINE:
                return
            self.initial = value
            self.start = now
            self.stopped = False
            self._arm_count(now)
            self._changed()
        elif off == TDCR:
            self.tdcr = value & 0xB
            self._arm_count(now)
        elif off == SELF_IPI and self.x2apic:
            self.accept(value & 0xFF)

    # ---- MMIO (xAPIC) ----------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if not self.xapic_mmio_active:
            return (1 << (8 * size)) - 1         # disabled or x2APIC: nothing answers
        reg = self.read(offset & 0xFF0)
        shift = 8 * (offset & 3)
        return (reg >> shift) & ((1 << (8 * size)) - 1) if (offset & 0xF) < 4 else 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if not self.xapic_mmio_active or offset & 0xF:
            return                               # only aligned 32-bit writes reach a register
        if offset == SELF_IPI:
            return                               # SELF IPI exists only in x2APIC mode
        self.write(offset & 0xFF0, value)

    # ---- MSRs (x2APIC, APIC base, TSC deadline) ---------------------------------------
    @staticmethod
    def owns_msr(msr: int) -> bool:
        return msr in (MSR_APIC_BASE, MSR_TSC_DEADLINE) or X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST

    def rdmsr(self, msr: int) -> int:
        if msr == MSR_APIC_BASE:
            return self.base
        if msr == MSR_TSC_DEADLINE:
            return self.read_tsc_deadline()
        idx = msr - X2APIC_MSR_FIRST
        acc = _X2.get(idx)
        if not self.x2apic or acc is None or "r" not in acc:
            raise AccessFault(f"RDMSR {msr:#x}: no such x2APIC register"
                              + ("" if self.x2apic else " (x2APIC mode is off)"))
        if idx == 0x30:
            return (self.icr & ~(1 << 12)) & (2**64 - 1)
        return self.read(idx << 4)

    def wrmsr(self, msr: int, value: int) -> None:
        if msr == MSR_APIC_BASE:
            self.write_base(value)
            return
        if msr == MSR_TSC_DEADLINE:
            self.write_tsc_deadline(value)
            return
        idx = msr - X2APIC_MSR_FIRST
        acc = _X2.get(idx)
        if not self.x2apic or acc is None or "w" not in acc:
            raise AccessFault(f"WRMSR {msr:#x}: no such writable x2APIC register"
                              + ("" if self.x2apic else " (x2APIC mode is off)"))
        off = idx << 4
        if idx == 0x30:                          # ICR: one 64-bit register
            reserved = 0xFFF32000                # bits 13, 16-17, 20-31 (bit 12 ignored, as KVM)
            if value & reserved:
                raise AccessFault(f"WRMSR {msr:#x}: reserved ICR bits {value & reserved:#x}")
            self.icr = value & ~(1 << 12)
            self.send_ipi(value & 0xFFFFFFFF, value >> 32)
            return
        if value >> 32:
            raise AccessFault(f"WRMSR {msr:#x}: bits 63:32 are reserved")
        if off == EOI and value:
            raise AccessFault("WRMSR 0x80b (EOI): a nonzero value is reserved")
        if off == ESR and value:
            raise AccessFault("WRMSR 0x828 (ESR): a nonzero value is reserved")
        if off == TPR and value & ~0xFF:
            raise AccessFault("WRMSR 0x808 (TPR): bits 31:8 are reserved")
        if off == SELF_IPI and value & ~0xFF:
            raise AccessFault("WRMSR 0x83f (SELF IPI): bits 31:8 are reserved")
        if off == SVR and value & ~0x3FF:
            raise AccessFault("WRMSR 0x80f (SVR): reserved bits set")
        if off in LVT_WRITABLE and value & ~(LVT_WRITABLE[off] | (1 << 12) | (1 << 14)):
            raise AccessFault(f"WRMSR {msr:#x} (LVT): reserved bits set")
        if off == TDCR and value & ~0xB:
            raise AccessFault("WRMSR 0x83e (divide configuration): reserved bits set")
        self.write(off, value)
