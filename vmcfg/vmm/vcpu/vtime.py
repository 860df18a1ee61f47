"""Virtual time: the TSC from retired instructions (or the host clock), the guest's
view of it (offset, multiplier), and the next deadline the engine runs to."""

from __future__ import annotations

import time
from ...vmx.config import VmxConfig
from ..outcome import RunEnd
from .common import EXIT_COST, MASK64, TSC_PER_INSN


def tsc_frequency(cfg: VmxConfig, machine_hz: int | None = None) -> int:
    """The TSC rate in Hz: the profile's tsc.frequency, else the machine's (a Linux boot's
    machine runs at LINUX_TSC_HZ, vmm/linux.py), else the machine clock's default."""
    from ..clock import TSC_HZ
    return int((cfg.settings.get("tsc") or {}).get("frequency") or machine_hz or TSC_HZ)


class TimeMixin:
    """Virtual time: the TSC, its guest view and the next deadline (see the module doc)."""

    @property
    def tsc(self) -> int:
        """The VMM's (host) virtual TSC."""
        return self._tsc_at(self.icount)

    def _tsc_at(self, icount: int) -> int:
        if self.clock == "realtime":
            # host nanoseconds at tsc.frequency ticks per second (plus HLT waits and guest writes)
            return ((time.perf_counter_ns() - self._rt0) * self.tsc_hz // 1_000_000_000
                    + self.tsc_adjust) & MASK64
        st = self._fxs               # exit count, idle ticks, adjustment: the native state block
        return (icount * TSC_PER_INSN + st.exit_count * EXIT_COST + st.idle_ticks
                + st.tsc_adjust) & MASK64

    def _insns_for(self, ticks: int) -> int:
        """Instructions to run before `ticks` TSC ticks have passed (a budget for deadlines)."""
        if ticks <= 0:
            return 0
        if self.clock == "realtime":
            # the measured rate so far; the run loop re-checks, so a low guess only costs a turn
            el = max(1, (time.perf_counter_ns() - self._rt0) * self.tsc_hz // 1_000_000_000)
            rate = max(self.icount, 1) / el
            return max(1, int(ticks * rate))
        return (ticks + TSC_PER_INSN - 1) // TSC_PER_INSN

    def guest_tsc(self, raw: int | None = None) -> int:
        """What RDTSC returns in the guest when it does not exit (§4.5)."""
        t = self.tsc if raw is None else raw
        if self._on["primary.use_tsc_offsetting"]:
            if self._on["secondary.use_tsc_scaling"]:
                t = (t * self.tsc_multiplier) >> 48
            t = t + self.tsc_offset
        return t & MASK64

    def _tsc_msr_read(self) -> int:
        return self.guest_tsc()

    def _tsc_msr_write(self, value: int) -> None:
        cur = self.guest_tsc()
        self.tsc_adjust += value - cur

    def _device_now(self) -> int:
        """Virtual TSC for the devices; inside an MMIO access, the instructions the current
        block has retired so far count too."""
        ic = self._mmio_icount
        if ic is None:
            if self.clock == "realtime":
                return self._tsc_at(self.icount)
            st = self._fxs                        # _tsc_at written out: devices ask often
            return (self.icount * TSC_PER_INSN + st.exit_count * EXIT_COST + st.idle_ticks
                    + st.tsc_adjust) & MASK64
        return self.tsc + (self._mmio_ic() - self.icount) * TSC_PER_INSN

    def _soft_at(self, icount: int, deadline: int, tsc: int | None = None) -> int:
        """The block counter's soft deadline (retired instructions) for the device deadline
        `deadline` (virtual TSC), `icount` instructions retired: at least one more.  `tsc`:
        the VMM's TSC at `icount` when the caller has it (the virtual clock)."""
        if self.clock == "realtime":
            return icount + max(1, self._insns_for(deadline - self._tsc_at(icount)))
        if tsc is None:
            st = self._fxs                   # (_tsc_at written out)
            tsc = (icount * TSC_PER_INSN + st.exit_count * EXIT_COST + st.idle_ticks
                   + st.tsc_adjust) & MASK64
        t = deadline - tsc
        if t <= TSC_PER_INSN:
            return icount + 1
        return icount + (t + TSC_PER_INSN - 1) // TSC_PER_INSN

    def _hlt_sleep(self, tsc: int) -> bool:
        """Realtime clock, in HLT: wait on the host until the TSC reaches `tsc`; serial input
        that arrives first (a key typed on the terminal) is taken at once.  True when it
        raised an interrupt the halted CPU takes (HLT ends now), else False (`tsc` reached,
        or a stop request)."""
        while True:
            self._sleep_until(tsc, on_input=True)
            if not self._input_wake or self.tsc >= tsc:
                return False
            self._input_wake = False
            self.platform.advance(self.tsc)          # the UART takes the input: IRQ 4
            if self._can_take_irq() and self.platform.pending_interrupt() is not None:
                return True

    def _can_take_irq(self) -> bool:
        return bool(self.rflags & (1 << 9)) or self._on["pin.external_interrupt_exiting"]

    def _sleep_until(self, tsc: int, on_input: bool = False) -> None:
        """Realtime clock: wait on the host until the TSC reaches `tsc` (or a stop request)."""
        while not self.counter.stop_pending() and self._end_request is None and \
                not (on_input and self._input_wake):
            left = tsc - self.tsc
            if left <= 0:
                return
            time.sleep(min(left / self.tsc_hz, 0.05))

    def _pc_now(self) -> int:
        self._rcache.clear()
        return self._pc_begin()

    def _pc_begin(self) -> int:
        """Where emu_start begins: the RIP register (an offset in CS; `until` is linear)."""
        return self.rr(self._rip_reg)

    def _deadline(self) -> tuple[int | None, str | None, int | None]:
        """(hard deadline, its kind, soft deadline), in retired instructions.

        Hard deadlines are exact -- the instruction budget (`limit`), the preemption timer
        (`ptimer`), `--nmi-at` (`nmi`): the engine stops before the instruction at which they
        fall.  The soft one is the next device timer (PIT, LAPIC timer, RTC): the engine runs
        natively to the first block boundary at or after it (counter.py) and the interrupt is
        taken there, at an instruction boundary a few instructions after the timer expired,
        never before it -- without stepping the engine toward it."""
        best, kind = None, None
        if self.max_instructions is not None:
            best, kind = self.max_instructions, "limit"
        if self._ptimer_fire is not None:
            d = self.icount + self._insns_for(self._ptimer_fire - self.tsc)
            if best is None or d < best:
                best, kind = d, "ptimer"
        if self.nmi_at is not None and (best is None or self.nmi_at < best):
            best, kind = max(self.nmi_at, self.icount), "nmi"
        soft = None
        nf = self.platform.next_event()
        if nf is not None:
            soft = self.icount + max(1, self._insns_for(nf - self.tsc))
        return best, kind, soft

    def _deadline_reached(self, kind: str | None) -> None:
        if kind == "limit":
            raise RunEnd("instruction-limit", None,
                         f"the guest ran {self.icount} instructions (--max-instructions)")
        if kind == "ptimer":
            self._ptimer_exit()
