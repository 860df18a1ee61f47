"""The MC146818 real-time clock and CMOS NVRAM (I/O 0x70 index, 0x71 data; IRQ 8).

Time runs from the host's UTC time at power-on (or a given epoch) forward in
virtual time.  Registers 0x00-0x09 and 0x32 (century) read the date and time in
BCD or binary, 12 or 24 hour, as register B says; writes with B.SET stop and
set the clock.  Register A: the divider and the periodic rate (UIP is set in
the last 244 us of each second); B: SET, PIE, AIE, UIE, DM, 24/12; C: IRQF,
PF, AF, UF, cleared by reading it (which lowers IRQ 8); D: VRT.  The periodic
interrupt (PIE), the alarm (AIE, with "don't care" values 0xC0-0xFF) and the
update-ended interrupt (UIE) raise IRQ 8.

NVRAM: the memory size like QEMU's PC: 0x15/0x16 base memory (640 KiB),
0x17/0x18 and 0x30/0x31 KiB above 1 MiB (at most 65535), 0x34/0x35 64-KiB units
above 16 MiB, 0x5B-0x5D 64-KiB units above 4 GiB; 0x14 equipment, 0x10 no
floppy; the rest reads what was written.  Bit 7 of port 0x70 is the NMI mask.
"""

from __future__ import annotations

import calendar
import time
from typing import Callable

from ..clock import Clock

RTC_HZ = 32768
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
B_SET, B_PIE, B_AIE, B_UIE, B_DM, B_24H = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
UIP_TICKS = 8                    # 244 us at 32.768 kHz


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


# Where the RTC starts under `--clock virtual`: 2026-01-01 00:00:00 UTC.  A run on virtual time
# takes no input from the host, so the date a guest reads (Linux prints it in its log)
# is the same on every run; `--clock realtime` starts from the host's UTC time.
VIRTUAL_EPOCH = 1767225600


class Rtc:
    PORTS = ((0x70, 2),)

    def __init__(self, clock: Clock, irq8: Callable[[bool], None], *, memory: int = 0,
                 epoch: int | None = None):
        self.clock = clock
        self._irq = irq8
        self.cmos = bytearray(128)
        self.index = 0
        self.nmi_masked = False
        self.epoch = int(time.time()) if epoch is None else int(epoch)
        self.start = clock.now()         # clock time of `epoch`
        self.stopped_at: int | None = None   # B.SET: seconds frozen at this value
        self.cmos[REG_A] = 0x26          # 32.768 kHz divider, 1024 Hz periodic rate
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = 0x80          # valid RAM and time
        self._last_period = 0            # periodic interrupts accounted for
        self._last_second = 0
        self._periodic = clock.timer("rtc-periodic", self._on_periodic)
        self._second = clock.timer("rtc-second", self._on_second)
        self._set_memory(memory)
        self.cmos[0x10] = 0x00           # no floppy drives
        self.cmos[0x14] = 0x06           # equipment: coprocessor, VGA/EGA display
        self._restart()

    def _set_memory(self, memory: int) -> None:
        c = self.cmos
        c[0x15], c[0x16] = 640 & 0xFF, 640 >> 8
        below4g = min(memory, 1 << 32)
        ext = min(max(0, below4g - (1 << 20)) >> 10, 0xFFFF)
        c[0x17] = c[0x30] = ext & 0xFF
        c[0x18] = c[0x31] = ext >> 8
        hi = min(max(0, below4g - (16 << 20)) >> 16, 0xFFFF)
        c[0x34], c[0x35] = hi & 0xFF, hi >> 8
        above = max(0, memory - (1 << 32)) >> 16
        c[0x5B], c[0x5C], c[0x5D] = above & 0xFF, (above >> 8) & 0xFF, (above >> 16) & 0xFF

    # ---- time ------------------------------------------------------------------------
    def _rtc_ticks(self, now: int) -> int:
        return self.clock.periods(RTC_HZ, max(0, now - self.start))

    def seconds(self, now: int | None = None) -> int:
        """Unix time the RTC shows."""
        if self.stopped_at is not None:
            return self.stopped_at
        now = self.clock.now() if now is None else now
        return self.epoch + self._rtc_ticks(now) // RTC_HZ

    def _period_ticks(self) -> int:
        """The periodic interrupt period in 32.768 kHz cycles (0: off)."""
        rate = self.cmos[REG_A] & 0x0F
        if rate == 0 or (self.cmos[REG_A] & 0x70) != 0x20:
            return 0
        if rate < 3:
            rate += 7
        return 1 << (rate - 1)

    def _restart(self) -> None:
        now = self.clock.now()
        t = self._rtc_ticks(now)
        p = self._period_ticks()
        self._last_period = t // p if p else 0
        self._last_second = t // RTC_HZ
        self._rearm(now)

    def _rearm(self, now: int) -> None:
        p = self._period_ticks()
        if p and self.cmos[REG_B] & B_PIE:
            self._periodic.arm(self.start + self.clock.to_ticks(RTC_HZ, (self._last_period + 1) * p))
        else:
            self._periodic.cancel()
        if self.cmos[REG_B] & (B_UIE | B_AIE) and self.stopped_at is None:
            self._second.arm(self.start + self.clock.to_ticks(RTC_HZ, (self._last_second + 1) * RTC_HZ))
        else:
            self._second.cancel()

    def _catch_up(self, now: int) -> None:
        """Set the flags of register C for everything that happened up to `now`."""
        t = self._rtc_ticks(now)
        p = self._period_ticks()
        if p and t // p > self._last_period:
            self._last_period = t // p
            self._flag(C_PF, B_PIE)
        if self.stopped_at is None and t // RTC_HZ > self._last_second:
            self._last_second = t // RTC_HZ
            self._flag(C_UF, B_UIE)
            if self._alarm_matches():
                self._flag(C_AF, B_AIE)

    def _alarm_matches(self) -> bool:
        tm = time.gmtime(self.seconds())
        c = self.cmos
        for reg, val in ((1, tm.tm_sec), (3, tm.tm_min), (5, tm.tm_hour)):
            a = c[reg]
            if a >= 0xC0:
                continue
            if self._decode(a, hour=reg == 5) != val:
                return False
        return True

    def _flag(self, flag: int, enable: int) -> None:
        self.cmos[REG_C] |= flag
        if self.cmos[REG_B] & enable and not self.cmos[REG_C] & C_IRQF:
            self.cmos[REG_C] |= C_IRQF
            self._irq(True)

    def _on_periodic(self, now: int) -> None:
        self._catch_up(now)
        self._rearm(now)

    def _on_second(self, now: int) -> None:
        self._catch_up(now)
        self._rearm(now)

    # ---- encoding --------------------------------------------------------------------
    def _encode(self, v: int, *, hour: bool = False) -> int:
        b = self.cmos[REG_B]
        pm = 0
        if hour and not b & B_24H:
            pm = 0x80 if v >= 12 else 0
            v = v % 12 or 12
        return (v if b & B_DM else _bcd(v)) | pm

    def _decode(self, v: int, *, hour: bool = False) -> int:
        b = self.cmos[REG_B]
        pm = False
        if hour and not b & B_24H:
            pm, v = bool(v & 0x80), v & 0x7F
        v = v if b & B_DM else _unbcd(v)
        if hour and not b & B_24H:
            v = (v % 12) + (12 if pm else 0)
        return v

    def _time_reg(self, reg: int) -> int:
        tm = time.gmtime(self.seconds())
        if reg == 0:
            return self._encode(tm.tm_sec)
        if reg == 2:
            return self._encode(tm.tm_min)
        if reg == 4:
            return self._encode(tm.tm_hour, hour=True)
        if reg == 6:
            return self._encode((tm.tm_wday + 1) % 7 + 1)      # 1 = Sunday
        if reg == 7:
            return self._encode(tm.tm_mday)
        if reg == 8:
            return self._encode(tm.tm_mon)
        if reg == 9:
            return self._encode(tm.tm_year % 100)
        return self._encode(tm.tm_year // 100)              # 0x32: century

    def _set_time_reg(self, reg: int, value: int) -> None:
        tm = list(time.gmtime(self.seconds())[:6])      # year, mon, mday, hour, min, sec
        v = self._decode(value, hour=reg == 4)
        idx = {0: 5, 2: 4, 4: 3, 7: 2, 8: 1}.get(reg)
        if idx is not None:
            tm[idx] = v
        elif reg == 9:
            tm[0] = tm[0] // 100 * 100 + v
        elif reg == 0x32:
            tm[0] = v * 100 + tm[0] % 100
        else:
            return                                      # day of week: derived
        try:
            secs = calendar.timegm(tuple(tm) + (0, 0, 0))
        except (ValueError, OverflowError):
            return
        if self.stopped_at is not None:
            self.stopped_at = secs
        else:
            now = self.clock.now()
            self.epoch = secs - self._rtc_ticks(now) // RTC_HZ

    # ---- port I/O --------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == 0x70:
            return 0xFF
        reg = self.index
        now = self.clock.now()
        if reg in (0, 2, 4, 6, 7, 8, 9, 0x32):
            return self._time_reg(reg)
        if reg == REG_A:
            uip = 0
            if self.stopped_at is None and RTC_HZ - self._rtc_ticks(now) % RTC_HZ <= UIP_TICKS:
                uip = 0x80
            return (self.cmos[REG_A] & 0x7F) | uip
        if reg == REG_C:
            self._catch_up(now)
            v = self.cmos[REG_C]
            self.cmos[REG_C] = 0
            if v & C_IRQF:
                self._irq(False)
            self._rearm(now)
            return v
        return self.cmos[reg]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == 0x70:
            self.index = value & 0x7F
            self.nmi_masked = bool(value & 0x80)
            return
        reg = self.index
        if reg in (0, 2, 4, 6, 7, 8, 9, 0x32):
            self._set_time_reg(reg, value)
            return
        if reg in (REG_C, REG_D):
            return                                      # read-only
        if reg == REG_A:
            self.cmos[REG_A] = value & 0x7F             # UIP is read-only
            self._restart()
            return
        if reg == REG_B:
            old = self.cmos[REG_B]
            if value & B_SET and not old & B_SET:
                self.stopped_at = self.seconds()
                value &= ~B_UIE
            elif old & B_SET and not value & B_SET and self.stopped_at is not None:
                now = self.clock.now()
                self.epoch = self.stopped_at - self._rtc_ticks(now) // RTC_HZ
                self.stopped_at = None
            self.cmos[REG_B] = value
            self._restart()
            return
        self.cmos[reg] = value
