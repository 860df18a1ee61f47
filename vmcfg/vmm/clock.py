"""Virtual time for the emulated machine.

Every device reads time from one `Clock` and tells it when it next needs the
CPU's attention; the run loop asks `next_deadline()` and runs the engine
natively up to it, then calls `advance(now)` so the due devices act (raise an
IRQ line, re-arm).  Time is the vCPU's virtual TSC (host view, before TSC
offsetting); `hz` says how many of its ticks make one virtual second, so a
device with its own input clock (the PIT's 1.193182 MHz, the PM timer's
3.579545 MHz, the RTC's 32.768 kHz) converts with `to_ticks` / `periods`.
"""

from __future__ import annotations

from typing import Callable

PIT_HZ = 1_193_182
# The virtual TSC rate.  It equals the PIT's input clock: one PIT count per TSC tick (and,
# at TSC_PER_INSN = 1, per retired instruction), so a guest's PIT periods and its
# instruction counts stay in the simple ratio the bundled guests rely on.
TSC_HZ = PIT_HZ


class Timer:
    """One deadline a device owns (virtual TSC), and what to do when it is reached."""

    __slots__ = ("name", "callback", "deadline", "clock", "order")

    def __init__(self, name: str, callback: Callable[[int], None], clock: "Clock"):
        self.name = name
        self.callback = callback
        self.deadline: int | None = None
        self.clock = clock
        self.order = len(clock.timers)      # of two due at the same time, the first made fires

    def arm(self, deadline: int) -> None:
        old = self.deadline
        if deadline != old:
            clock = self.clock
            if old is None:
                clock.armed.append(self)
            self.deadline = deadline
            clock.rescheduled = True
            clock._stale = True

    def cancel(self) -> None:
        if self.deadline is not None:
            self.deadline = None
            clock = self.clock
            clock.armed.remove(self)
            clock.rescheduled = True
            clock._stale = True

    @property
    def armed(self) -> bool:
        return self.deadline is not None

    def __repr__(self) -> str:
        return f"Timer({self.name!r}, deadline={self.deadline})"


class Clock:
    """The machine's virtual time source and deadline list."""

    def __init__(self, hz: int = TSC_HZ, source: Callable[[], int] | None = None):
        self.hz = hz
        self._source: Callable[[], int] = source or (lambda: 0)
        self.now: Callable[[], int] = self._source
        self.timers: list[Timer] = []
        self.armed: list[Timer] = []      # the timers with a deadline (next_deadline looks there)
        self.rescheduled = False          # a deadline moved since the run loop last looked
        self._next: int | None = None     # next_deadline(), valid while not _stale,
        self._first: Timer | None = None  # and the timer it belongs to
        self._stale = False
        # the guest's view of the TSC (TSC offsetting/scaling) and its inverse, set by the vCPU
        self.guest_tsc: Callable[[int], int] = lambda t: t
        self.host_tsc: Callable[[int], int] = lambda g: g

    def set_source(self, source: Callable[[], int]) -> None:
        self._source = source
        self.now = source                 # (devices ask often: one call, not two)

    def now(self) -> int:
        return self._source()

    def timer(self, name: str, callback: Callable[[int], None]) -> Timer:
        t = Timer(name, callback, self)
        self.timers.append(t)
        self._stale = True
        return t

    def next_deadline(self) -> int | None:
        if not self._stale:
            return self._next             # no timer armed or cancelled since it was found
        best, first = None, None
        for t in self.armed:
            d = t.deadline
            if best is None or d < best or (d == best and t.order < first.order):
                best, first = d, t
        self._next, self._first = best, first
        self._stale = False
        return best

    def advance(self, now: int | None = None) -> bool:
        """Fire every timer due at `now` (earliest first -- of two at the same time, the
        one created first; a callback may re-arm its timer).  Returns whether any fired."""
        if now is None:
            now = self.now()
        fired = False
        for _ in range(1000):            # a timer that keeps re-arming in the past is a bug
            nd = self._next if not self._stale else self.next_deadline()
            if nd is None or nd > now:
                return fired
            due = self._first
            due.deadline = None
            self.armed.remove(due)
            self._stale = True
            due.callback(now)
            fired = True
        raise RuntimeError("a device timer re-armed itself in the past 1000 times")

    # ---- conversions to and from a device's own input clock -------------------------
    def to_ticks(self, hz: int, periods: int) -> int:
        """TSC ticks for `periods` cycles of an `hz` clock, rounded up."""
        return -(-periods * self.hz // hz)

    def periods(self, hz: int, ticks: int) -> int:
        """Whole cycles of an `hz` clock in `ticks` TSC ticks."""
        return ticks * hz // self.hz
