"""Device I/O without a VM exit (issue 14): the direct path from the engine's I/O hook to the
device.  An IN or OUT that no control intercepts (I/O bitmaps, unconditional I/O exiting)
is not an exit: the native hook (native/fastexit.c) checks the controls, reads RAX, calls
`_dio_io` with the port, size and value -- one Python call, no exit record, no register
batch, no decode -- and writes AL/AX/EAX and RIP itself.  The devices stay the one home of
their state: the call goes to the board's bus.  The engine stops only when the access made
an interrupt or NMI deliverable or armed a timer's first deadline (the run loop must look
at the next instruction boundary: `_device_change_needs_stop`), or ended the run (debug
exit, reset, power-off).  Without the C helper (or with VMCFG_NO_NATIVE=1) the same
accesses take the trap path in intercepts.py, with the same result."""

from __future__ import annotations

from ..devices import DebugExit, SystemReset
from ..native import IO_IN
from ..outcome import RunEnd


def device_run_end(e: DebugExit | SystemReset) -> RunEnd:
    """How a run ends when a device ends it (the debug-exit port, a reset, ACPI power-off)."""
    if isinstance(e, DebugExit):
        return RunEnd("debug-exit", e.value, f"the guest wrote {e.value:#x} to the debug-exit port")
    return RunEnd(e.status, None, e.message)


class DeviceIoMixin:
    """The direct device I/O path (see the module doc)."""

    def _dio_attach(self) -> None:
        """After the devices and the native state block exist."""
        self._fxs.bits = self.bitness
        if self._fx_native:
            bus = self.platform.bus
            self._dio_read, self._dio_write = bus.io_read, bus.io_write
            # the bus's own per-port tables (claimed ports: the device's io_read / io_write),
            # looked up here directly: the native hook already masked the port and the value
            # (and masks what an IN returns to the access size)
            self._dio_readers, self._dio_writers = bus.readers, bus.writers
            self._dio_board = self.platform
            self._dio_clock = self.platform.clock
            self.fx.set_python_io(self._dio_io)

    def _dio_io(self, op: int, value: int, ic: int) -> int:
        """One IN/OUT no control intercepts (called by the native hook; `ic` instructions
        retired before it).  Returns what an IN reads."""
        try:
            self.icount = ic            # the devices' clock: virtual time at this instruction
            port = op & 0xFFFF
            if op & IO_IN:
                f = self._dio_readers.get(port)
                if f is not None:
                    v = f(port, (op >> 16) & 0xFF)
                else:
                    v = self._dio_read(port, (op >> 16) & 0xFF)
            else:
                f = self._dio_writers.get(port)
                if f is not None:
                    f(port, (op >> 16) & 0xFF, value)
                else:
                    self._dio_write(port, (op >> 16) & 0xFF, value)
                v = 0
            ic += 1                     # the instruction has retired
            self.icount = ic
            # (self.platform.changed)
            if (self._dio_board._changed or self._dio_clock.rescheduled) and \
                    self._event is None and self._device_change_needs_stop(ic):
                self._event = ("resume",)
                self.uc.emu_stop()
            return v & 0xFFFFFFFF
        except (DebugExit, SystemReset) as e:
            self.icount = ic + 1
            self._event = ("end", device_run_end(e))
        except BaseException as e:      # a bug: never let it reach C, never lose it
            self._event = ("error", e)
        self.uc.emu_stop()
        return 0
