"""One bus for port I/O and MMIO: devices claim port ranges and MMIO ranges.

A device implements any of ``io_read(port, size) -> int``,
``io_write(port, size, value)``, ``mmio_read(offset, size) -> int`` and
``mmio_write(offset, size, value)``; the bus hands it the whole access (a
16-bit OUT to 0x510 reaches the fw_cfg selector as one 16-bit write).  A port
nobody claims reads as all ones and ignores writes, like an empty ISA bus.
"""

from __future__ import annotations

from typing import Any


class AccessFault(Exception):
    """The access raises #GP(0) in the guest (an x2APIC MSR that does not exist, a write to
    a read-only one, ...)."""


class Bus:
    def __init__(self) -> None:
        self._ports: dict[int, tuple[Any, int]] = {}      # port -> (device, base port)
        # port -> the device's io_read / io_write (claimed ports of devices that have them;
        # a device may name a method of its own for one port: `io_readers` / `io_writers`)
        self.readers: dict[int, Any] = {}
        self.writers: dict[int, Any] = {}
        self._readers, self._writers = self.readers, self.writers
        self._mmio: list[tuple[int, int, Any]] = []        # (base, size, device)

    # ---- registration ----------------------------------------------------------------
    def add_ports(self, device: Any, base: int, count: int = 1) -> None:
        for p in range(base, base + count):
            if p in self._ports:
                raise ValueError(f"port {p:#x} is already claimed by {self._ports[p][0]!r}")
            self._ports[p] = (device, base)
            if hasattr(device, "io_read"):
                self._readers[p] = getattr(device, "io_readers", {}).get(p, device.io_read)
            if hasattr(device, "io_write"):
                self._writers[p] = getattr(device, "io_writers", {}).get(p, device.io_write)

    def add_mmio(self, device: Any, base: int, size: int) -> None:
        for b, s, d in self._mmio:
            if base < b + s and b < base + size:
                raise ValueError(f"MMIO {base:#x}+{size:#x} overlaps {d!r} at {b:#x}")
        self._mmio.append((base, size, device))

    def mmio_ranges(self) -> list[tuple[int, int, Any]]:
        return list(self._mmio)

    def port_owner(self, port: int) -> Any | None:
        e = self._ports.get(port & 0xFFFF)
        return e[0] if e else None

    # ---- port I/O --------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        port &= 0xFFFF
        f = self._readers.get(port)
        if f is not None:
            return f(port, size) & ((1 << (8 * size)) - 1)
        if size > 1 and port not in self._ports:
            # bytes of a wide access may belong to different devices
            v = 0
            for i in range(size):
                v |= self.io_read(port + i, 1) << (8 * i)
            return v
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        port &= 0xFFFF
        value &= (1 << (8 * size)) - 1
        f = self._writers.get(port)
        if f is not None:
            f(port, size, value)
            return
        if size > 1 and port not in self._ports:
            for i in range(size):
                self.io_write(port + i, 1, (value >> (8 * i)) & 0xFF)

    # ---- MMIO ------------------------------------------------------------------------
    def _find(self, addr: int) -> tuple[int, Any] | None:
        for b, s, d in self._mmio:
            if b <= addr < b + s:
                return b, d
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        f = self._find(addr)
        if f is None:
            return (1 << (8 * size)) - 1
        return f[1].mmio_read(addr - f[0], size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        f = self._find(addr)
        if f is not None:
            f[1].mmio_write(addr - f[0], size, value & ((1 << (8 * size)) - 1))
