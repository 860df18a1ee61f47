"""The I/O APIC at MMIO 0xFEC00000: 24 redirection entries to the local APIC.

IOREGSEL at offset 0x00, IOWIN at 0x10, the EOI register at 0x40 (version
0x20, like QEMU's).  Registers: 0x00 ID (bits 27:24), 0x01 version (0x170020:
24 entries), 0x02 arbitration, 0x10 + 2n / 0x11 + 2n redirection entry n
(vector, delivery mode, destination mode, delivery status and remote IRR
read-only, polarity, trigger mode, mask, destination).  All entries start
masked.  An edge-triggered input delivers on its rising edge; a level-triggered
one while it is asserted and remote IRR is clear, setting remote IRR until the
local APIC's EOI for that vector (or a write to the EOI register).  Fixed and
lowest-priority entries go to the LAPIC when the destination names it; NMI
entries raise an NMI; ExtINT entries hand the PIC's vector to the CPU.
GSI n is ISA IRQ n, except ISA IRQ 0 (the PIT), which is GSI 2 (see the MADT).
"""

from __future__ import annotations

from typing import Callable

IOAPIC_BASE = 0xFEC00000
NUM_PINS = 24
MASKED = 1 << 16
REMOTE_IRR = 1 << 14
LEVEL = 1 << 15
VERSION = 0x20 | ((NUM_PINS - 1) << 16)


class IoApic:
    MMIO = (IOAPIC_BASE, 0x1000)

    def __init__(self, deliver: Callable[[int, int, bool, int, bool], None],
                 changed: Callable[[], None] = lambda: None):
        # deliver(vector, delivery_mode, level, destination, logical)
        self._deliver = deliver
        self._changed = changed
        self.id = 0
        self.regsel = 0
        self.redir = [MASKED] * NUM_PINS
        self.levels = 0

    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < NUM_PINS:
            return
        m = 1 << pin
        was = bool(self.levels & m)
        self.levels = self.levels | m if level else self.levels & ~m
        e = self.redir[pin]
        if e & LEVEL:
            if level:
                self._service(pin)
        elif level and not was:
            self._send(pin)

    def pulse(self, pin: int) -> None:
        """set_irq(pin, True) then set_irq(pin, False): one edge."""
        if not 0 <= pin < NUM_PINS:
            return
        m = 1 << pin
        e = self.redir[pin]
        was = self.levels & m
        self.levels |= m
        if e & LEVEL:
            self._service(pin)
        elif not was and not e & MASKED:
            self._send(pin)
        self.levels &= ~m

    def _send(self, pin: int) -> None:
        e = self.redir[pin]
        if e & MASKED:
            return
        level = bool(e & LEVEL)
        if level:
            self.redir[pin] |= REMOTE_IRR
        self._deliver(e & 0xFF, (e >> 8) & 7, level, e >> 56, bool(e & (1 << 11)))
        self._changed()

    def _service(self, pin: int) -> None:
        e = self.redir[pin]
        if e & LEVEL and not e & REMOTE_IRR and self.levels & (1 << pin):
            self._send(pin)

    def eoi(self, vector: int) -> None:
        """The LAPIC's EOI of a level-triggered vector: clear remote IRR, re-deliver if the
        line is still asserted."""
        for pin, e in enumerate(self.redir):
            if e & REMOTE_IRR and e & 0xFF == vector:
                self.redir[pin] = e & ~REMOTE_IRR
                self._service(pin)

    # ---- registers -------------------------------------------------------------------
    def read_reg(self, reg: int) -> int:
        if reg == 0:
            return self.id << 24
        if reg == 1:
            return VERSION
        if reg == 2:
            return self.id << 24
        if 0x10 <= reg < 0x10 + 2 * NUM_PINS:
            e = self.redir[(reg - 0x10) >> 1]
            return (e >> 32) if reg & 1 else e & 0xFFFFFFFF
        return 0xFFFFFFFF

    def write_reg(self, reg: int, value: int) -> None:
        if reg == 0:
            self.id = (value >> 24) & 0xF
        elif 0x10 <= reg < 0x10 + 2 * NUM_PINS:
            pin = (reg - 0x10) >> 1
            e = self.redir[pin]
            if reg & 1:
                e = (e & 0xFFFFFFFF) | ((value & 0xFF000000) << 32)
            else:
                ro = e & (REMOTE_IRR | (1 << 12))
                e = (e & ~0xFFFFFFFF) | (value & 0x1AFFF) | ro
                if not e & LEVEL:
                    e &= ~REMOTE_IRR
            self.redir[pin] = e
            self._service(pin)
            self._changed()

    def mmio_read(self, offset: int, size: int) -> int:
        if offset == 0x00:
            return self.regsel
        if offset == 0x10:
            return self.read_reg(self.regsel) & ((1 << (8 * size)) - 1)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x00:
            self.regsel = value & 0xFF
        elif offset == 0x10:
            self.write_reg(self.regsel, value)
        elif offset == 0x40:
            self.eoi(value & 0xFF)
