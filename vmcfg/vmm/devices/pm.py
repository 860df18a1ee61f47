"""ACPI power management registers at I/O 0x600 (QEMU's PIIX4 layout).

* PM1a event block 0x600: PM1_STS (u16, write 1 to clear; no event sources yet)
  and PM1_EN (0x602).
* PM1a control block 0x604 (u16): SCI_EN reads as 1 (ACPI mode, there is no
  SMI command port); writing SLP_EN (bit 13) with SLP_TYP (bits 12:10) = 0, the
  DSDT's \\_S5 value, powers the machine off (status ``poweroff``).
* PM timer 0x608 (u32 read): a 24-bit counter at 3.579545 MHz.
"""

from __future__ import annotations

from ..clock import Clock
from .misc import SystemReset

PM_BASE = 0x600
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = PM_BASE, PM_BASE + 2, PM_BASE + 4, PM_BASE + 8
PM_TIMER_HZ = 3_579_545
SLP_TYP_S5 = 0
SCI_IRQ = 9


class PowerManagement:
    PORTS = ((PM_BASE, 12),)

    def __init__(self, clock: Clock):
        self.clock = clock
        self.sts = 0
        self.en = 0
        self.cnt = 1                      # SCI_EN
        self.start = clock.now()
        self.io_readers = {PM_TMR: self._read_timer}    # the bus calls it for a read of 0x608

    def timer(self) -> int:
        return self.clock.periods(PM_TIMER_HZ, max(0, self.clock.now() - self.start)) & 0xFFFFFF

    def _read_timer(self, port: int, size: int) -> int:
        """io_read of PM_TMR (timer() written out: guests poll it)."""
        clock = self.clock
        t = clock.now() - self.start
        return (t * PM_TIMER_HZ // clock.hz) & 0xFFFFFF if t > 0 else 0

    def io_read(self, port: int, size: int) -> int:
        if PM_TMR <= port < PM_TMR + 4:
            return self.timer() >> (8 * (port - PM_TMR))
        if port in (PM1_STS, PM1_STS + 1):
            return self.sts >> (8 * (port - PM1_STS))
        if port in (PM1_EN, PM1_EN + 1):
            return self.en >> (8 * (port - PM1_EN))
        if port in (PM1_CNT, PM1_CNT + 1):
            return self.cnt >> (8 * (port - PM1_CNT))
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == PM1_STS:
            self.sts &= ~value & 0xFFFF
        elif port == PM1_EN:
            self.en = value & 0xFFFF
        elif port in (PM1_CNT, PM1_CNT + 1):
            v = value << (8 * (port - PM1_CNT))
            if port == PM1_CNT + 1 and size == 1:
                v |= self.cnt & 0xFF
            self.cnt = (v & 0x1C06) | 1       # SLP_EN is write-only; SCI_EN stays 1
            if v & 0x2000 and (v >> 10) & 7 == SLP_TYP_S5:
                raise SystemReset("poweroff", "the guest powered the machine off (ACPI S5)")
