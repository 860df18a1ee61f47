"""The PC board: the bus, the devices on it, their IRQ lines and the interrupt path.

One instance per machine.  Wiring (like QEMU's ``pc`` machine):

| device | where | interrupt |
|---|---|---|
| 8259 PIC pair (pic.py) | I/O 0x20-0x21, 0xA0-0xA1, ELCR 0x4D0-0x4D1 | INTR via LAPIC LINT0 (ExtINT) |
| 8254 PIT (pit.py) | I/O 0x40-0x43; port 0x61 | IRQ 0 (IOAPIC GSI 2) |
| RTC/CMOS (rtc.py) | I/O 0x70-0x71 | IRQ 8 |
| 16550 UART COM1 (uart.py) | I/O 0x3F8-0x3FF | IRQ 4 |
| ACPI PM (pm.py) | I/O 0x600-0x60B (PM timer 0x608) | (SCI IRQ 9, no sources) |
| fw_cfg (fwcfg.py) | I/O 0x510-0x511 | - |
| isa-debug-exit, reset, POST (misc.py) | I/O 0xF4-0xF7, 0x60/0x64, 0xCF9, 0x80 | - |
| PCI configuration, no devices (misc.py) | I/O 0xCF8 (dword), 0xCFC-0xCFF | - |
| local APIC (lapic.py) | MMIO 0xFEE00000; MSRs 0x1B, 0x6E0, 0x800-0x8FF | delivers to the CPU |
| IOAPIC (ioapic.py) | MMIO 0xFEC00000 | to the LAPIC |
| HPET (hpet.py) | MMIO 0xFED00000 (1 KiB) | IOAPIC pins 16-23; legacy: IRQ 0 and IRQ 8 |
| ACPI tables (acpi.py) | RSDP at 0xF0000 in guest RAM | - |
| real-mode BIOS (bios.py), real-mode and Multiboot guests | IVT at 0x0, handlers at 0xFF000 | PIC bases 0x08/0x70 |
| pc-testdev (testdev.py) | I/O 0x2000-0x2017, 0xE0-0xE7; MMIO 0xFF000000 | sets lines 0-23 |

An ISA line goes to both the PIC (IRQ n) and the IOAPIC (GSI n, IRQ 0 -> GSI 2);
the CPU asks `pending_interrupt()` / `ack_interrupt()` at an instruction
boundary: the LAPIC's highest deliverable vector first, then the PIC's vector
when the LAPIC passes ExtINT through.  One path for every interrupt source.
"""

from __future__ import annotations

from typing import Callable

from ..clock import Clock
from . import acpi
from . import bios as _bios
from .bus import AccessFault, Bus
from .fwcfg import FwCfg
from .hpet import LEG_RT_CNF, Hpet
from .ioapic import IoApic
from .lapic import LocalApic
from .misc import DebugExitPort, KeyboardController, PciHost, PostPort, ResetControl
from .pic import PicPair
from .pit import Pit, SystemControlB
from .pm import PowerManagement
from .rtc import Rtc
from .testdev import TestDevice
from .uart import Uart

COM1_BASE, COM1_IRQ = 0x3F8, 4
PIT_IRQ, RTC_IRQ = 0, 8


def isa_to_gsi(irq: int) -> int:
    """IOAPIC pin of interrupt line `irq` (ISA IRQ 0, the PIT, is GSI 2; lines 16-23 are
    IOAPIC pins only)."""
    return 2 if irq == 0 else irq


class Board:
    """The emulated PC's devices; the vCPU attaches its clock source and NMI line."""

    def __init__(self, console_sink: Callable[[str], None] | None = None, *, memory: int = 0,
                 clock: Clock | None = None, rtc_epoch: int | None = None):
        self.memory = memory
        self.clock = clock or Clock()
        self.bus = Bus()
        self._changed = False
        self.nmi_sink: Callable[[], None] = lambda: None
        self._lines = 0
        self.pic = PicPair(self._mark)
        self.lapic = LocalApic(self.clock, nmi=self._nmi, eoi_broadcast=self._eoi_broadcast,
                               changed=self._mark)
        self.ioapic = IoApic(self._ioapic_deliver, self._mark)
        self.hpet = Hpet(self.clock, self.set_irq, self._mark)
        self.pit = Pit(self.clock, lambda level: self._legacy_irq(PIT_IRQ, level), self._pit_pulse)
        self.port61 = SystemControlB(self.pit)
        self.rtc = Rtc(self.clock, lambda level: self._legacy_irq(RTC_IRQ, level), memory=memory,
                       epoch=rtc_epoch)
        self.serial = Uart(lambda level: self.set_irq(COM1_IRQ, level), console_sink)
        self.pm = PowerManagement(self.clock)
        self.fwcfg = FwCfg(memory)
        self.debug_exit = DebugExitPort()
        self.kbc = KeyboardController()
        self.reset_control = ResetControl()
        self.post = PostPort()
        self.pci = PciHost()
        self.testdev = TestDevice(self.set_irq)
        for dev in (self.pic, self.rtc, self.pm, self.fwcfg, self.debug_exit, self.kbc,
                    self.reset_control, self.post, self.pci, self.testdev):
            for base, count in dev.PORTS:
                self.bus.add_ports(dev, base, count)
        self.bus.add_ports(self.pit, 0x40, 4)
        self.bus.add_ports(self.port61, 0x61)
        self.bus.add_ports(self.serial, COM1_BASE, 8)
        self.bus.add_mmio(self.lapic, *self.lapic.MMIO)
        self.bus.add_mmio(self.ioapic, *self.ioapic.MMIO)
        self.bus.add_mmio(self.hpet, *self.hpet.MMIO)
        self.bus.add_mmio(self.testdev, *self.testdev.MMIO)

    def latches(self) -> list[tuple[int, object, str, int, bool]]:
        """Ports whose device is one plain cell (see misc.Cell): (port, device, cell
        attribute, bits a byte write keeps, reads return the cell).  The vCPU's native exit
        path may serve byte accesses to them without calling Python."""
        out = [(p, self.post, a, m, r) for p, a, m, r in self.post.latches()]
        out += [(p, self.serial, a, m, r) for p, a, m, r in self.serial.latches(COM1_BASE)]
        return out

    # ---- the CPU side --------------------------------------------------------------------
    def attach_cpu(self, now: Callable[[], int], nmi: Callable[[], None] | None = None,
                   wake: Callable[[], None] | None = None) -> None:
        """The vCPU supplies virtual time, its NMI input and a way to wake it from another
        thread (serial input)."""
        self.clock.set_source(now)
        if nmi is not None:
            self.nmi_sink = nmi
        if wake is not None:
            self.serial.notify = wake

    def install(self, write: Callable[[int, bytes], None], *, bios: bool = False) -> None:
        """Firmware work at power-on: the ACPI tables in the BIOS area (RAM of 1 MiB or more);
        with `bios`, also the minimal real-mode BIOS (bios.py): the PIC vector bases 0x08/0x70,
        the IVT and its default handlers."""
        if self.memory < 1 << 20:
            return
        for addr, data in acpi.build():
            write(addr, data)
        if bios:
            self.pic.set_bases(_bios.MASTER_BASE, _bios.SLAVE_BASE)
            for addr, data in _bios.build():
                write(addr, data)

    @property
    def changed(self) -> bool:
        """Interrupt state or a device deadline changed: the CPU must look again at the next
        instruction boundary (the run loop clears it when it has)."""
        return self._changed or self.clock.rescheduled

    @changed.setter
    def changed(self, value: bool) -> None:
        self._changed = value
        self.clock.rescheduled = value

    def _mark(self) -> None:
        self._changed = True

    def _nmi(self) -> None:
        self.changed = True
        self.nmi_sink()

    def _eoi_broadcast(self, vector: int) -> None:
        self.ioapic.eoi(vector)

    def _ioapic_deliver(self, vector: int, mode: int, level: bool, dest: int, logical: bool) -> None:
        lapic = self.lapic
        if dest != 0xFF and not lapic._targets_me(dest, logical):
            return
        if mode in (0, 1):
            lapic.accept(vector, level)
        elif mode == 4:
            self._nmi()
        # ExtINT (7): the PIC's INTR is sampled through pending_interrupt(); SMI/INIT ignored

    # ---- IRQ lines -----------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Interrupt line `irq` (0-15 ISA, 16-23 IOAPIC only) changes level (edge devices
        pulse it)."""
        m = 1 << irq
        if bool(self._lines & m) == level:
            return
        self._lines = self._lines | m if level else self._lines & ~m
        if irq < 16:
            self.pic.set_irq(irq, level)
        self.ioapic.set_irq(isa_to_gsi(irq), level)
        self._changed = True                # (interrupt state: no deadline moved)

    def pulse_irq(self, irq: int) -> None:
        """An edge device pulses line `irq`: set_irq(irq, True) then set_irq(irq, False)."""
        m = 1 << irq
        if self._lines & m:                 # already high: only the fall is a change
            self.set_irq(irq, False)
            return
        if irq < 16:
            self.pic.pulse(irq)
        self.ioapic.pulse(isa_to_gsi(irq))
        self._changed = True                # (interrupt state: no deadline moved)

    def _pit_pulse(self) -> None:
        """The PIT's IRQ 0 edge at each expiry (cut off as _legacy_irq says): pulse_irq(0)
        written out, as it runs on every timer interrupt."""
        if self.hpet.config & LEG_RT_CNF:   # (self.hpet.legacy)
            return
        if self._lines & 1:                 # IRQ 0 already high: only the fall is a change
            self.set_irq(PIT_IRQ, False)
            return
        self.pic.master.pulse(PIT_IRQ)      # (PicPair.pulse: a master line, no cascade)
        self.ioapic.pulse(isa_to_gsi(PIT_IRQ))
        self._changed = True                # (interrupt state: no deadline moved)

    def _legacy_irq(self, irq: int, level: bool) -> None:
        """The PIT's IRQ 0 and the RTC's IRQ 8: cut off while the HPET's legacy replacement
        route (LEG_RT_CNF) drives those lines."""
        if not self.hpet.legacy:
            self.set_irq(irq, level)

    def pending_interrupt(self) -> int | None:
        """The vector the CPU would take now with RFLAGS.IF = 1, or None."""
        lapic = self.lapic
        if lapic.irr:                       # (LocalApic.pending is None without a request)
            v = lapic.pending()
            if v is not None:
                return v
        if lapic.accepts_extint():
            return self.pic.pending()
        return None

    def ack_interrupt(self) -> int | None:
        """INTA: take the pending interrupt (IRR -> ISR in the LAPIC or the PIC)."""
        lapic = self.lapic
        if lapic.irr and lapic.pending() is not None:
            v = lapic.ack()
        elif not lapic.accepts_extint():
            return None
        else:
            v = self.pic.ack_pending()      # (pic.ack() if pic.pending() is not None)
            if v is None:
                return None
        self._changed = True                # (interrupt state: no deadline moved)
        return v

    # ---- time ----------------------------------------------------------------------------
    def next_event(self) -> int | None:
        """Virtual TSC of the next device deadline (timer interrupt), or None."""
        return self.clock.next_deadline()

    def advance(self, now: int) -> None:
        """Let every device act on what is due at `now` (timers; queued serial input)."""
        self.clock.advance(now)
        serial = self.serial
        if serial._input and serial.input_waiting:
            serial.service()

    # ---- access --------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        return self.bus.io_read(port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.bus.io_write(port, size, value)

    def mmio_ranges(self) -> list[tuple[int, int]]:
        return [(b, s) for b, s, _d in self.bus.mmio_ranges()]

    def mmio_read(self, addr: int, size: int) -> int:
        return self.bus.mmio_read(addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.bus.mmio_write(addr, size, value)

    @staticmethod
    def owns_msr(msr: int) -> bool:
        return LocalApic.owns_msr(msr)

    def msr_read(self, msr: int) -> int:
        return self.lapic.rdmsr(msr)

    def msr_write(self, msr: int, value: int) -> None:
        self.lapic.wrmsr(msr, value)


__all__ = ["AccessFault", "Board"]


