"""The 8254 programmable interval timer (I/O 0x40-0x43) and system control port B (0x61).

Three channels counting down at 1.193182 MHz (converted from the machine's
clock).  Channel 0's OUT drives IRQ 0 (an edge on each rising OUT); channel 2's
gate is bit 0 of port 0x61 and its OUT reads back as bit 5 there.  Modes 0
(interrupt on terminal count), 1 (hardware one-shot), 2 (rate generator), 3
(square wave), 4 and 5 (strobes); binary or BCD counting; lobyte, hibyte and
lobyte/hibyte access; the counter latch command and the read-back command
(count and status).  Periods the CPU does not see (interrupts disabled for
several of them) collapse into one IRQ 0 edge, as on real hardware.

Port 0x61 (read): bit 0 gate 2, bit 1 speaker data, bit 4 a refresh toggle that
flips on every read, bit 5 channel 2 OUT.
"""

from __future__ import annotations

from typing import Callable

from ..clock import PIT_HZ, Clock


def _to_bcd(v: int) -> int:
    r, s = 0, 0
    for _ in range(4):
        r |= (v % 10) << s
        v //= 10
        s += 4
    return r


def _from_bcd(v: int) -> int:
    return ((v >> 12) & 0xF) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF)


class Channel:
    def __init__(self, pit: "Pit", index: int):
        self.pit = pit
        self.index = index
        self.mode = 0
        self.bcd = False
        self.rw = 3                 # 1 lobyte, 2 hibyte, 3 lobyte then hibyte
        self.count = 0x10000        # the reload value (0 means 65536, or 10000 in BCD)
        self.loaded: int | None = None   # clock time the count was loaded (None: never)
        self.gate = index != 2      # channels 0 and 1 are gated on in a PC
        self.paused_at: int | None = None   # modes 0/4: gate low stops the count
        self.latched: list[int] = []        # latched count bytes still to read
        self.status: int | None = None      # latched status byte
        self.write_lsb: int | None = None
        self.read_msb_next = False
        self.null_count = True

    # ---- time ------------------------------------------------------------------------
    def elapsed(self, now: int) -> int:
        """PIT input cycles since the count was loaded."""
        if self.loaded is None:
            return 0
        t = self.paused_at if self.paused_at is not None else now
        return self.pit.clock.periods(PIT_HZ, max(0, t - self.loaded))

    def value(self, now: int) -> int:
        """The counting element (what a latch would capture), binary."""
        loaded = self.loaded
        if loaded is None:
            return 0
        # (elapsed() written out: the counter latch runs it on every read)
        t = self.paused_at if self.paused_at is not None else now
        d, n = (t - loaded if t > loaded else 0) * PIT_HZ // self.pit.clock.hz, self.count
        if self.mode in (2, 6):
            return n - d % n
        if self.mode in (3, 7):
            return (n - (2 * d) % n) & 0xFFFE
        return (n - d) & 0xFFFF

    def out(self, now: int) -> bool:
        if self.loaded is None:
            return self.mode != 0
        d, n = self.elapsed(now), self.count
        m = self.mode
        if m == 0:
            return d >= n
        if m == 1:
            return d >= n
        if m in (2, 6):
            return d % n != n - 1
        if m in (3, 7):
            return d % n < (n + 1) // 2
        return d != n               # modes 4 and 5: one low cycle at terminal count

    def next_rise(self, now: int) -> int | None:
        """Clock time of the next rising edge of OUT after `now` (channel 0 -> IRQ 0)."""
        loaded = self.loaded
        m = self.mode
        if loaded is None or self.paused_at is not None or not self.gate and m in (2, 3, 6, 7):
            return None
        # elapsed() and Clock.to_ticks written out: this runs on every timer interrupt
        hz = self.pit.clock.hz
        d, n = (now - loaded if now > loaded else 0) * PIT_HZ // hz, self.count
        if m in (2, 3, 6, 7):
            k = (d // n + 1) * n           # the reload at the end of each period
        elif m in (0, 1):
            if d >= n:
                return None
            k = n
        elif d <= n:
            k = n + 1
        else:
            return None
        return loaded - (-k * hz // PIT_HZ)

    # ---- programming -----------------------------------------------------------------
    def load(self, raw: int, now: int) -> None:
        if self.bcd:
            raw = _from_bcd(raw)
            n = raw or 10000
        else:
            n = raw or 0x10000
        self.count = n
        self.null_count = False
        self.paused_at = None
        if self.mode in (1, 5) and self.loaded is not None:
            return                           # takes effect on the next gate trigger
        self.loaded = now
        if not self.gate and self.mode in (0, 4):
            self.paused_at = now
        self.pit._rearm(self)

    def set_gate(self, level: bool, now: int) -> None:
        if level == self.gate:
            return
        self.gate = level
        if self.loaded is None:
            return
        if level:
            if self.mode in (0, 4) and self.paused_at is not None:
                self.loaded += now - self.paused_at
                self.paused_at = None
            elif self.mode in (1, 2, 3, 5, 6, 7):
                self.loaded = now                # rising gate (re)starts the count
        elif self.mode in (0, 4):
            self.paused_at = now
        self.pit._rearm(self)

    def read(self, now: int) -> int:
        if self.status is not None:
            v, self.status = self.status, None
            return v
        if self.latched:
            return self.latched.pop(0)
        v = self.value(now)
        if self.bcd:
            v = _to_bcd(v % 10000)
        v &= 0xFFFF
        if self.rw == 1:
            return v & 0xFF
        if self.rw == 2:
            return v >> 8
        b = (v >> 8) if self.read_msb_next else v & 0xFF
        self.read_msb_next = not self.read_msb_next
        return b

    def latch(self, now: int) -> None:
        if self.latched:
            return                           # a second latch before reading is ignored
        v = self.value(now)
        if self.bcd:
            v = _to_bcd(v % 10000)
        v &= 0xFFFF
        rw = self.rw
        self.latched = [v & 0xFF] if rw == 1 else [v >> 8] if rw == 2 else [v & 0xFF, v >> 8]

    def latch_status(self, now: int) -> None:
        if self.status is None:
            self.status = (self.out(now) << 7) | (self.null_count << 6) | (self.rw << 4) \
                | (self.mode << 1) | int(self.bcd)

    def write(self, value: int, now: int) -> None:
        if self.rw == 1:
            self.load(value, now)
        elif self.rw == 2:
            self.load(value << 8, now)
        elif self.write_lsb is None:
            self.write_lsb = value
        else:
            lsb, self.write_lsb = self.write_lsb, None
            self.load(lsb | (value << 8), now)


class Pit:
    """8254 with channel 0 on IRQ 0."""

    def __init__(self, clock: Clock, irq0: Callable[[bool], None],
                 pulse0: Callable[[], None] | None = None):
        """`irq0(level)` drives IRQ 0; `pulse0()`, when given, does irq0(True) then
        irq0(False) in one call (the edge at each expiry)."""
        self.clock = clock
        self._irq0 = irq0
        self._pulse0 = pulse0
        self.channels = [Channel(self, i) for i in range(3)]
        self._timer = clock.timer("pit", self._fire)

    def _rearm(self, ch: Channel, now: int | None = None) -> None:
        """Channel 0's next rising edge after `now` (default: the clock's now) armed."""
        if ch.index != 0:
            return
        t = ch.next_rise(self.clock.now() if now is None else now)
        if t is None:
            self._timer.cancel()
        else:
            self._timer.arm(t)

    def _fire(self, now: int) -> None:
        pulse = self._pulse0
        if pulse is not None:
            pulse()
        else:
            self._irq0(True)
            self._irq0(False)               # an edge: the PIC latches it in IRR
        self._rearm(self.channels[0], now)     # (at the expiry's time: the clock's now)

    @property
    def next_fire(self) -> int | None:
        return self._timer.deadline

    def io_read(self, port: int, size: int) -> int:
        if port == 0x43:
            return 0xFF                     # the control word register cannot be read
        ch = self.channels[port - 0x40]
        if ch.status is None and ch.latched:
            return ch.latched.pop(0)        # (Channel.read without asking the time)
        return ch.read(self.clock.now())

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        now = self.clock.now()
        if port != 0x43:
            self.channels[port - 0x40].write(value, now)
            return
        sel = value >> 6
        if sel == 3:                        # read-back
            for i in range(3):
                if value & (2 << i):
                    ch = self.channels[i]
                    if not value & 0x20:
                        ch.latch(now)
                    if not value & 0x10:
                        ch.latch_status(now)
            return
        ch = self.channels[sel]
        rw = (value >> 4) & 3
        if rw == 0:
            ch.latch(now)
            return
        ch.rw = rw
        mode = (value >> 1) & 7
        ch.mode = mode
        ch.bcd = bool(value & 1)
        ch.write_lsb = None
        ch.read_msb_next = False
        ch.latched = []
        ch.null_count = True
        ch.loaded = None                     # a control word stops the count until it is loaded
        ch.paused_at = None
        self._rearm(ch)


class SystemControlB:
    """Port 0x61: channel 2 gate and speaker bits; refresh toggle and OUT2 on read."""

    def __init__(self, pit: Pit):
        self.pit = pit
        self.value = 0
        self._refresh = False

    def io_read(self, port: int, size: int) -> int:
        self._refresh = not self._refresh
        ch2 = self.pit.channels[2]
        out = ch2.out(self.pit.clock.now())
        return (self.value & 0x0F) | (self._refresh << 4) | (out << 5)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0x0F
        self.pit.channels[2].set_gate(bool(value & 1), self.pit.clock.now())
