"""ACPI tables for the emulated PC, built at power-on into the BIOS area.

The RSDP (revision 2) is at 0xF0000, where a guest scanning 0xE0000-0xFFFFF
on 16-byte boundaries finds it; the tables follow it: RSDT and XSDT (each
listing FADT and MADT), FADT (revision 3) with the PM timer at 0x608, PM1a
event/control blocks at 0x600/0x604, SCI on IRQ 9, the reset register (0x06
to I/O 0xCF9), no 8042 in IAPC_BOOT_ARCH (ports 0x60/0x64 are only the reset line) and the
FACS and DSDT addresses; a DSDT whose AML defines only
\\_S5 (SLP_TYP 0, so 0x2000 to PM1a_CNT powers off); a FACS; and the MADT: the
local APIC at 0xFEE00000 (PC-AT compatible, with 8259s), processor 0 / APIC ID
0, the IOAPIC (ID 0, 0xFEC00000, GSI base 0), the interrupt source overrides
ISA IRQ 0 -> GSI 2 and IRQ 9 -> GSI 9 level/active-high (as QEMU's), and the
LINT1 NMI.  Every table's checksum makes its bytes sum to zero.
"""

from __future__ import annotations

import struct

from .ioapic import IOAPIC_BASE
from .lapic import APIC_BASE_DEFAULT
from .pm import PM1_CNT, PM1_STS, PM_TMR, SCI_IRQ

RSDP_ADDR = 0xF0000
OEM_ID = b"VMCFG "
OEM_TABLE = b"VMCFGPC "
CREATOR = b"VMCF"


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _table(sig: bytes, rev: int, body: bytes) -> bytes:
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", sig, length, rev, 0, OEM_ID, OEM_TABLE, 1, CREATOR, 1)
    t = bytearray(hdr + body)
    t[9] = checksum(t)
    return bytes(t)


def _gas(space: int, width: int, address: int, access: int) -> bytes:
    return struct.pack("<BBBBQ", space, width, 0, access, address)


def dsdt() -> bytes:
    # Name (_S5, Package (4) {0, 0, 0, 0})
    aml = b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"
    return _table(b"DSDT", 2, aml)


def facs() -> bytes:
    return struct.pack("<4sIIIII", b"FACS", 64, 0, 0, 0, 0) + struct.pack("<QB3sI24s", 0, 2, b"", 0, b"")


def madt() -> bytes:
    body = struct.pack("<II", APIC_BASE_DEFAULT, 1)               # PCAT_COMPAT: has 8259s
    body += struct.pack("<BBBBI", 0, 8, 0, 0, 1)                   # processor 0, APIC ID 0, enabled
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_BASE, 0)    # IOAPIC 0, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)              # ISA IRQ 0 -> GSI 2
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0xD)  # IRQ 9: level, active high
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)                # LINT1 is NMI on all CPUs
    return _table(b"APIC", 3, body)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    b = bytearray(244 - 36)

    def put(off: int, fmt: str, *v) -> None:
        struct.pack_into("<" + fmt, b, off - 36, *v)

    put(36, "I", facs_addr)
    put(40, "I", dsdt_addr)
    put(46, "H", SCI_IRQ)
    put(56, "I", PM1_STS)                 # PM1a_EVT_BLK
    put(64, "I", PM1_CNT)                 # PM1a_CNT_BLK
    put(76, "I", PM_TMR)                  # PM_TMR_BLK
    put(88, "BBBB", 4, 2, 0, 4)           # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    put(96, "HH", 0xFFF, 0xFFF)           # no C2/C3
    put(108, "B", 0x32)                   # CENTURY: the RTC's century register
    # IAPC_BOOT_ARCH: no 8042. The board's ports 0x60/0x64 are only the reset line (misc.py),
    # no keyboard controller: with the flag set, Linux probes them directly and waits out its
    # i8042 timeouts (0.5 s of guest time, 500 M busy-wait instructions) before giving up
    put(109, "H", 0x0000)
    # WBINVD | PROC_C1 | SLP_BUTTON | RTC_S4 | RESET_REG_SUP
    put(112, "I", (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 10))
    b[116 - 36:128 - 36] = _gas(1, 8, 0xCF9, 1)
    put(128, "B", 0x06)                   # RESET_VALUE
    put(132, "Q", facs_addr)              # X_FIRMWARE_CTRL
    put(140, "Q", dsdt_addr)              # X_DSDT
    b[148 - 36:160 - 36] = _gas(1, 32, PM1_STS, 2)
    b[172 - 36:184 - 36] = _gas(1, 16, PM1_CNT, 2)
    b[208 - 36:220 - 36] = _gas(1, 32, PM_TMR, 3)
    return _table(b"FACP", 3, bytes(b))


def rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    r = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36,
                              xsdt_addr, 0, b""))
    r[8] = checksum(r[:20])
    r[32] = checksum(r)
    return bytes(r)


def build(base: int = RSDP_ADDR) -> list[tuple[int, bytes]]:
    """The tables and where they go in guest memory, the RSDP first."""
    out: list[tuple[int, bytes]] = []
    addr = base + 0x40

    def place(data: bytes, align: int = 16) -> int:
        nonlocal addr
        addr = (addr + align - 1) & ~(align - 1)
        a = addr
        out.append((a, data))
        addr += len(data)
        return a

    facs_a = place(facs(), 64)
    dsdt_a = place(dsdt())
    fadt_a = place(fadt(facs_a, dsdt_a))
    madt_a = place(madt())
    rsdt_a = place(_table(b"RSDT", 1, struct.pack("<II", fadt_a, madt_a)))
    xsdt_a = place(_table(b"XSDT", 1, struct.pack("<QQ", fadt_a, madt_a)))
    return [(base, rsdp(rsdt_a, xsdt_a))] + out
