"""The minimal real-mode BIOS: what SeaBIOS leaves behind for a real-mode guest under QEMU.

Installed at power-on for guests that start in real mode and for Multiboot kernels (which
may go back to real mode), not for 32/64-bit flat images or Linux bzImages:

* the 8259 pair initialised as a PC BIOS leaves it: master vector base 0x08 (IRQ 0-7 ->
  vectors 0x08-0x0F), slave 0x70 (IRQ 8-15 -> 0x70-0x77), cascade on IRQ 2 (the lines stay
  unmasked, as vmcfg's firmware always left them);
* the real-mode IVT (256 far pointers at 0x0): the hardware IRQ vectors point at default
  handlers that acknowledge the PIC (non-specific EOI to the master, and to the slave first
  for IRQ 8-15) and IRET, every other vector at an IRET;
* those handlers in the BIOS area at F000:BIOS_OFFSET (0xFF000), above the ACPI tables
  (acpi.py, from RSDP_ADDR = 0xF0000 on).

An image loaded over the IVT or the handlers wins (it is written after the BIOS).
"""

from __future__ import annotations

import struct

MASTER_BASE, SLAVE_BASE = 0x08, 0x70
BIOS_SEGMENT = 0xF000
BIOS_OFFSET = 0xF000                          # the handlers at 0xFF000
BIOS_ADDR = (BIOS_SEGMENT << 4) + BIOS_OFFSET
IVT_ADDR, IVT_ENTRIES = 0x0, 256

# 16-bit code, assembled by hand:
IRET_STUB = bytes([0xCF])                                       # iret
MASTER_EOI = bytes([0x50,                                       # push ax
                    0xB0, 0x20,                                 # mov al, 0x20 (EOI)
                    0xE6, 0x20,                                 # out 0x20, al
                    0x58,                                       # pop ax
                    0xCF])                                      # iret
SLAVE_EOI = bytes([0x50,                                        # push ax
                   0xB0, 0x20,                                  # mov al, 0x20 (EOI)
                   0xE6, 0xA0,                                  # out 0xa0, al
                   0xE6, 0x20,                                  # out 0x20, al
                   0x58,                                        # pop ax
                   0xCF])                                       # iret


def build() -> list[tuple[int, bytes]]:
    """The BIOS's memory contents: (address, bytes) for the handlers and the IVT."""
    code = IRET_STUB + MASTER_EOI + SLAVE_EOI
    iret_off = BIOS_OFFSET
    master_off = iret_off + len(IRET_STUB)
    slave_off = master_off + len(MASTER_EOI)
    ivt = bytearray()
    for vector in range(IVT_ENTRIES):
        if MASTER_BASE <= vector < MASTER_BASE + 8:
            off = master_off
        elif SLAVE_BASE <= vector < SLAVE_BASE + 8:
            off = slave_off
        else:
            off = iret_off
        ivt += struct.pack("<HH", off, BIOS_SEGMENT)
    return [(BIOS_ADDR, code), (IVT_ADDR, bytes(ivt))]
