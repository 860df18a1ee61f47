"""QEMU's ``pc-testdev``: the test hooks kvm-unit-tests images use (QEMU runs them with
``-device pc-testdev``).

* I/O 0x2000-0x2017: a byte write of v sets interrupt line n = port - 0x2000 to
  level v != 0 (lines 0-15 are ISA IRQs to the PICs and the IOAPIC, 16-23 IOAPIC
  pins only).
* I/O 0xE0-0xE3: a 32-bit scratch register (reads return what was written).
* I/O 0xE4-0xE7: "flush page" (a guest address; there is no host mapping to
  flush here, so the write has no effect).
* MMIO 0xFF000000-0xFF00FFFF: 64 KiB of device memory that reads back what was
  written (emulated MMIO, not RAM).
"""

from __future__ import annotations

from typing import Callable

IRQ_PORT_BASE, IRQ_LINES = 0x2000, 24
IOMEM_BASE, IOMEM_SIZE = 0xFF000000, 0x10000


class TestDevice:
    PORTS = ((0xE0, 8), (IRQ_PORT_BASE, IRQ_LINES))
    MMIO = (IOMEM_BASE, IOMEM_SIZE)
    __test__ = False                      # not a pytest class

    def __init__(self, set_line: Callable[[int, bool], None]):
        self._set_line = set_line
        self.scratch = 0
        self.iomem = bytearray(IOMEM_SIZE)

    def io_read(self, port: int, size: int) -> int:
        if 0xE0 <= port < 0xE4:
            return (self.scratch >> (8 * (port - 0xE0))) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if port >= IRQ_PORT_BASE:
            self._set_line(port - IRQ_PORT_BASE, bool(value & 0xFF))
        elif 0xE0 <= port < 0xE4:
            shift = 8 * (port - 0xE0)
            mask = ((1 << (8 * size)) - 1) << shift
            self.scratch = (self.scratch & ~mask | (value << shift) & mask) & 0xFFFFFFFF

    def mmio_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.iomem[offset:offset + size], "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.iomem[offset:offset + size] = value.to_bytes(size, "little")[:IOMEM_SIZE - offset]
