"""Small PC odds: isa-debug-exit (0xF4), the reset paths (0x64 and 0xCF9), POST port 0x80.

* isa-debug-exit at I/O 0xF4-0xF7 (QEMU's device with iobase=0xf4, iosize=4):
  a write of value v ends the run with guest exit code v; QEMU's process exits
  with (v << 1) | 1, and so does `vmcfg launch`.
* The keyboard controller's command port 0x64: writing 0xFE pulses the CPU
  reset line; reads return status 0 (buffers empty).  Port 0x60 reads 0.
* The reset control register 0xCF9 (byte accesses): a write with bit 2
  (RST_CPU) set resets the machine; reads return the last value written (bits 1
  and 3).
* PCI configuration mechanism #1: a 32-bit access to 0xCF8 is the address
  register (a dword write at 0xCF8 covers 0xCF9 but is not a reset), data at
  0xCFC-0xCFF.  The bus has no devices: configuration reads return all ones.
* Port 0x80 (POST codes, also used as a short delay): writes are kept in
  `value`; reads return all ones, as on QEMU's PC.
"""

from __future__ import annotations


class DebugExit(Exception):
    """The guest wrote the debug-exit port: the run ends with this exit code."""

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value


class SystemReset(Exception):
    """The guest reset the machine (status ``reset``) or powered it off (``poweroff``)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class DebugExitPort:
    PORTS = ((0xF4, 4),)

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        raise DebugExit(value)


class KeyboardController:
    PORTS = ((0x60, 1), (0x64, 1))

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x64 and value & 0xFF == 0xFE:
            raise SystemReset("reboot", "the guest reset the machine (0xFE to port 0x64)")


class ResetControl:
    PORTS = ((0xCF9, 1),)

    def __init__(self) -> None:
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0x0A
        if value & 0x04:
            kind = "hard" if value & 0x02 else "soft"
            raise SystemReset("reboot", f"the guest reset the machine ({kind} reset, "
                                       f"{value & 0xFF:#x} to port 0xcf9)")


class PciHost:
    PORTS = ((0xCF8, 1), (0xCFA, 2), (0xCFC, 4))

    def __init__(self) -> None:
        self.address = 0

    def io_read(self, port: int, size: int) -> int:
        if port == 0xCF8 and size == 4:
            return self.address
        return (1 << (8 * size)) - 1            # no device answers a configuration read

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0xCF8 and size == 4:
            self.address = value & 0x80FFFFFC


class Cell:
    """One register a device keeps as a plain latch.  The VMM may swap it for a cell of its
    native exit path (vmm/native), which then serves the port without calling Python; the
    device reads and writes the same cell either way."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value


class PostPort:
    PORTS = ((0x80, 1),)

    def __init__(self) -> None:
        self.cell = Cell()

    @property
    def value(self) -> int:
        return self.cell.value

    @value.setter
    def value(self, v: int) -> None:
        self.cell.value = v

    def latches(self) -> list[tuple[int, str, int, bool]]:
        """(port, cell attribute, bits a byte write keeps, reads return the cell)."""
        return [(0x80, "cell", 0xFF, False)]

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0xFF
