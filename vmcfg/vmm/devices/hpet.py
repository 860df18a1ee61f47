"""The HPET (IA-PC High Precision Event Timer) at MMIO 0xFED00000 (1 KiB), as in QEMU's ``pc``.

A 64-bit main counter at 100 MHz (COUNTER_CLK_PERIOD 10,000,000 fs) and three
comparators.  Registers (64 bits each, readable and writable as a whole or as
two 32-bit halves):

* 0x000 General Capabilities and ID (read-only): the period in 63:32, vendor
  0x8086, LEG_RT_CAP, COUNT_SIZE_CAP (64-bit), NUM_TIM_CAP = 2, REV_ID 1.
* 0x010 General Configuration: ENABLE_CNF (bit 0; the main counter runs only
  while it is set, and no timer interrupts while clear) and LEG_RT_CNF (bit 1;
  timer 0 drives IRQ 0 / IOAPIC pin 2 and timer 1 IRQ 8 in place of the PIT's
  and RTC's interrupts, which are cut off meanwhile).
* 0x020 General Interrupt Status: bit n is set while level-triggered timer n's
  interrupt is active; writing 1 clears it (and lowers the line).
* 0x0F0 Main Counter: derived from the machine's virtual clock (elapsed virtual
  time since ENABLE_CNF was set, counted at 100 MHz, plus the value last
  written or reached), so ``--clock virtual`` stays deterministic.  A write
  loads it (meant for a halted counter; a running one continues from there).
* 0x100 + 0x20n timer n: configuration and capabilities (Tn_INT_TYPE_CNF,
  Tn_INT_ENB_CNF, Tn_TYPE_CNF, Tn_VAL_SET_CNF, Tn_32MODE_CNF, Tn_INT_ROUTE_CNF;
  Tn_PER_INT_CAP on timer 0, Tn_SIZE_CAP on all; route capability IOAPIC pins
  16-23), comparator (+0x08), FSB route (+0x10, stored; FSB delivery is not
  offered).

A comparator interrupts when the main counter (its low 32 bits in 32-bit mode)
reaches it: edge-triggered timers pulse their line, level-triggered ones set
their status bit and hold the line until the guest clears it.  One-shot timers
fire once per match (a 32-bit one again when the counter wraps); periodic ones
add the period (the last comparator value written) and re-arm, and periods the
CPU did not see collapse into one interrupt.
"""

from __future__ import annotations

from typing import Callable

from ..clock import Clock

HPET_BASE, HPET_SIZE = 0xFED00000, 0x400
HPET_HZ = 100_000_000
PERIOD_FS = 10**15 // HPET_HZ                # 10,000,000 fs
NUM_TIMERS = 3
VENDOR_ID = 0x8086
MASK64, MASK32 = (1 << 64) - 1, (1 << 32) - 1

LEG_RT_CAP, COUNT_SIZE_CAP = 1 << 15, 1 << 13
CAPABILITIES = (PERIOD_FS << 32) | (VENDOR_ID << 16) | LEG_RT_CAP | COUNT_SIZE_CAP \
    | ((NUM_TIMERS - 1) << 8) | 0x01

# General Configuration
ENABLE_CNF, LEG_RT_CNF = 1 << 0, 1 << 1
# Timer N configuration and capabilities
INT_TYPE_CNF, INT_ENB_CNF, TYPE_CNF = 1 << 1, 1 << 2, 1 << 3
PER_INT_CAP, SIZE_CAP, VAL_SET_CNF, MODE32_CNF = 1 << 4, 1 << 5, 1 << 6, 1 << 8
ROUTE_SHIFT, ROUTE_MASK = 9, 0x1F << 9
ROUTE_CAP = 0x00FF0000                       # IOAPIC pins 16-23 (free of ISA devices)
TIMER_WRITABLE = INT_TYPE_CNF | INT_ENB_CNF | TYPE_CNF | MODE32_CNF | ROUTE_MASK

REG_CAP, REG_CONFIG, REG_STATUS, REG_COUNTER = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
LEGACY_IRQ = {0: 0, 1: 8}                    # LEG_RT_CNF: timer 0 -> IRQ 0, timer 1 -> IRQ 8


class HpetTimer:
    def __init__(self, hpet: "Hpet", index: int):
        self.hpet = hpet
        self.index = index
        self.caps = (ROUTE_CAP << 32) | SIZE_CAP | (PER_INT_CAP if index == 0 else 0)
        self.config = 0                      # the writable bits
        self.comparator = MASK64
        self.period = 0
        self.fsb = 0
        self.set_val = False                 # Tn_VAL_SET_CNF: the next comparator write sets it
        self._far = False                    # armed short of a match more than 43 s away
        self.timer = hpet.clock.timer(f"hpet{index}", self._fire)

    # ---- registers -------------------------------------------------------------------
    @property
    def mask(self) -> int:
        return MASK32 if self.config & MODE32_CNF else MASK64

    @property
    def periodic(self) -> bool:
        return bool(self.config & TYPE_CNF)

    @property
    def level(self) -> bool:
        return bool(self.config & INT_TYPE_CNF)

    def read_config(self) -> int:
        return self.caps | self.config

    def write_config(self, value: int) -> None:
        old = self.config
        writable = TIMER_WRITABLE
        if not self.caps & PER_INT_CAP:
            writable &= ~TYPE_CNF
        cfg = value & writable
        route = (cfg & ROUTE_MASK) >> ROUTE_SHIFT
        if not (ROUTE_CAP >> route) & 1:
            cfg = (cfg & ~ROUTE_MASK) | (old & ROUTE_MASK)    # a route it cannot take
        self.set_val = bool(value & VAL_SET_CNF) and bool(cfg & TYPE_CNF)
        self.config = cfg
        if cfg & MODE32_CNF:
            self.comparator &= MASK32
            self.period &= MASK32
        if (old ^ cfg) & (INT_TYPE_CNF | ROUTE_MASK) or not cfg & INT_ENB_CNF:
            self.hpet._lower(self, old)      # the line it drove before lets go
        if cfg & INT_TYPE_CNF and cfg & INT_ENB_CNF and self.hpet.status & (1 << self.index):
            self.hpet._raise(self)
        self.rearm()

    def write_comparator(self, value: int, bytes_mask: int = MASK64) -> None:
        """A write of the bytes in `bytes_mask`.  In periodic mode it sets the period and,
        with Tn_VAL_SET_CNF, the comparator too; VAL_SET lasts until the write that
        reaches the top byte (a 64-bit store arrives as two 32-bit halves, low first)."""
        m = bytes_mask & self.mask
        if not self.periodic or self.set_val:
            self.comparator = (self.comparator & ~m) | (value & m)
        if self.periodic:
            self.period = (self.period & ~m) | (value & m)
        if bytes_mask >> 56 or self.mask == MASK32:
            self.set_val = False
        self.rearm()

    # ---- time ------------------------------------------------------------------------
    def rearm(self) -> None:
        """Arm the clock timer for the next comparator match (none while the HPET is halted
        or this timer's interrupt is disabled)."""
        h = self.hpet
        if not (h.config & ENABLE_CNF and self.config & INT_ENB_CNF):
            self.timer.cancel()
            return
        count = h.raw_count(h.clock.now())
        delta = (self.comparator - count) & self.mask
        if delta == 0 and h.raw_fired(self, count):
            delta = self.mask + 1            # it matched here already: next time round
        if self.mask == MASK64 and delta >= 1 << 63:
            self.timer.cancel()              # behind the 64-bit counter: centuries away
            return
        self._far = delta > MASK32
        if self._far:                        # more than 43 s of counting: look again then
            delta = MASK32
        self.timer.arm(h.time_of(count + delta))

    def _fire(self, now: int) -> None:
        h = self.hpet
        if self._far:
            self.rearm()
            return
        count = h.raw_count(now)
        h._last_fire[self.index] = count
        if self.periodic and self.period:
            # add the period until the comparator is ahead of the counter again
            c = self.comparator
            behind = (count - c) & self.mask
            c += (behind // self.period + 1) * self.period
            self.comparator = c & self.mask
        h._interrupt(self)
        self.rearm()


class Hpet:
    MMIO = (HPET_BASE, HPET_SIZE)

    def __init__(self, clock: Clock, set_irq: Callable[[int, bool], None],
                 changed: Callable[[], None] = lambda: None):
        self.clock = clock
        self._set_irq = set_irq
        self._changed = changed
        self.config = 0
        self.status = 0
        self.count_base = 0                  # the (unmasked) counter at `started`
        self.started: int | None = None      # clock time ENABLE_CNF was set (None: halted)
        self._last_fire: dict[int, int] = {}
        self.timers = [HpetTimer(self, i) for i in range(NUM_TIMERS)]

    # ---- the main counter ------------------------------------------------------------
    def raw_count(self, now: int) -> int:
        if self.started is None:
            return self.count_base
        return self.count_base + self.clock.periods(HPET_HZ, max(0, now - self.started))

    def counter(self) -> int:
        return self.raw_count(self.clock.now()) & MASK64

    def time_of(self, count: int) -> int:
        """Clock time at which the running counter reaches (unmasked) `count`."""
        assert self.started is not None
        return self.started + self.clock.to_ticks(HPET_HZ, max(0, count - self.count_base))

    def raw_fired(self, timer: HpetTimer, count: int) -> bool:
        """Whether `timer` already fired at counter value `count`."""
        return self._last_fire.get(timer.index) == count

    @property
    def legacy(self) -> bool:
        """LEG_RT_CNF: the HPET has taken IRQ 0 and IRQ 8 from the PIT and the RTC."""
        return bool(self.config & LEG_RT_CNF)

    # ---- interrupts ------------------------------------------------------------------
    def _irq_of(self, t: HpetTimer, config: int | None = None) -> int:
        cfg = t.config if config is None else config
        if self.legacy and t.index in LEGACY_IRQ:
            return LEGACY_IRQ[t.index]
        return (cfg & ROUTE_MASK) >> ROUTE_SHIFT

    def _raise(self, t: HpetTimer) -> None:
        self._set_irq(self._irq_of(t), True)
        self._changed()

    def _lower(self, t: HpetTimer, config: int | None = None) -> None:
        cfg = t.config if config is None else config
        if cfg & INT_TYPE_CNF:
            self._set_irq(self._irq_of(t, cfg), False)

    def _interrupt(self, t: HpetTimer) -> None:
        if not (self.config & ENABLE_CNF and t.config & INT_ENB_CNF):
            return
        irq = self._irq_of(t)
        if t.level:
            self.status |= 1 << t.index
            self._set_irq(irq, True)
        else:
            self._set_irq(irq, True)
            self._set_irq(irq, False)
        self._changed()

    # ---- registers -------------------------------------------------------------------
    def _write_config(self, value: int) -> None:
        old = self.config
        new = value & (ENABLE_CNF | LEG_RT_CNF)
        if not (old ^ new):
            return
        now = self.clock.now()
        for t in self.timers:
            self._lower(t)                   # lines move (legacy) or stop (disable)
        if old & ENABLE_CNF and not new & ENABLE_CNF:
            self.count_base = self.raw_count(now)
            self.started = None
        elif new & ENABLE_CNF and not old & ENABLE_CNF:
            self.started = now
        self.config = new
        for t in self.timers:
            if new & ENABLE_CNF and t.level and t.config & INT_ENB_CNF \
                    and self.status & (1 << t.index):
                self._raise(t)
            t.rearm()
        self._changed()

    def _write_counter(self, value: int) -> None:
        self.count_base = value & MASK64
        if self.started is not None:
            self.started = self.clock.now()
        self._last_fire.clear()
        for t in self.timers:
            t.rearm()

    def _write_status(self, value: int) -> None:
        for t in self.timers:
            m = 1 << t.index
            if value & m and self.status & m:
                self.status &= ~m
                if t.level:
                    self._set_irq(self._irq_of(t), False)
        self._changed()

    def read_reg(self, reg: int) -> int:
        if reg == REG_CAP:
            return CAPABILITIES
        if reg == REG_CONFIG:
            return self.config
        if reg == REG_STATUS:
            return self.status
        if reg == REG_COUNTER:
            return self.counter()
        t, r = self._timer_reg(reg)
        if t is None:
            return 0
        if r == 0x00:
            return t.read_config()
        if r == 0x08:
            return t.comparator
        if r == 0x10:
            return t.fsb
        return 0

    def write_reg(self, reg: int, value: int) -> None:
        if reg == REG_CONFIG:
            self._write_config(value)
        elif reg == REG_STATUS:
            self._write_status(value)
        elif reg == REG_COUNTER:
            self._write_counter(value)
        else:
            t, r = self._timer_reg(reg)
            if t is None:
                return
            if r == 0x00:
                t.write_config(value)
            elif r == 0x08:
                t.write_comparator(value)
            elif r == 0x10:
                t.fsb = value & MASK64

    def _timer_reg(self, reg: int) -> tuple[HpetTimer | None, int]:
        i, r = divmod(reg - TIMER_BASE, TIMER_STRIDE)
        if reg < TIMER_BASE or i >= NUM_TIMERS:
            return None, 0
        return self.timers[i], r

    def mmio_read(self, offset: int, size: int) -> int:
        reg, shift = offset & ~7, 8 * (offset & 7)
        return (self.read_reg(reg) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        reg, shift = offset & ~7, 8 * (offset & 7)
        m = (((1 << (8 * size)) - 1) << shift) & MASK64
        value = (value << shift) & m
        t, r = self._timer_reg(reg)
        if t is not None and r == 0x08:
            t.write_comparator(value, m)
        elif reg == REG_STATUS:              # write-1-to-clear: untouched bytes clear nothing
            self.write_reg(reg, value)
        elif m == MASK64:
            self.write_reg(reg, value)
        else:
            old = self.read_reg(reg)
            if t is not None and r == 0x00 and t.set_val:
                old |= VAL_SET_CNF           # the other half of a split write keeps it
            self.write_reg(reg, (old & ~m) | value)
