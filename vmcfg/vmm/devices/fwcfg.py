"""QEMU's firmware configuration device, I/O interface: selector 0x510, data 0x511.

A 16-bit write to 0x510 selects an item and rewinds it; each read of 0x511
returns its next byte (0 past the end).  Items: 0x00 signature "QEMU", 0x01
ID (bit 0: the I/O interface; no DMA), 0x02 UUID (zeros), 0x03 RAM size
(u64), 0x05 NB_CPUS (u16, 1), 0x0F MAX_CPUS (u16, 1), 0x19 the file directory
(big-endian: u32 count, then per file u32 size, u16 select, u16 reserved,
56-byte name), files from select 0x20 on (`add_file`).  Numeric items are
little-endian, like QEMU's.  Writes to the data port are ignored.
"""

from __future__ import annotations

import struct

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20


class FwCfg:
    PORTS = ((0x510, 2),)

    def __init__(self, memory: int = 0, cpus: int = 1):
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", 1),
            FW_CFG_UUID: bytes(16),
            FW_CFG_RAM_SIZE: struct.pack("<Q", memory),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
        }
        self.files: list[tuple[str, int]] = []
        self.items[FW_CFG_FILE_DIR] = self._directory()
        self.selector = 0
        self.offset = 0

    def _directory(self) -> bytes:
        d = struct.pack(">I", len(self.files))
        for name, sel in self.files:
            d += struct.pack(">IHH56s", len(self.items[sel]), sel, 0, name.encode()[:55])
        return d

    def add_file(self, name: str, data: bytes) -> int:
        if len(name.encode()) > 55:
            raise ValueError(f"fw_cfg file name {name!r} is longer than 55 bytes")
        sel = FW_CFG_FILE_FIRST + len(self.files)
        self.items[sel] = bytes(data)
        self.files.append((name, sel))
        self.items[FW_CFG_FILE_DIR] = self._directory()
        return sel

    def io_read(self, port: int, size: int) -> int:
        if port != 0x511:
            return (1 << (8 * size)) - 1
        v = 0
        item = self.items.get(self.selector & 0x3FFF, b"")
        for i in range(size):
            b = item[self.offset] if self.offset < len(item) else 0
            if self.offset < len(item):
                self.offset += 1
            v |= b << (8 * i)
        return v

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x510:
            self.selector = value & 0xFFFF if size > 1 else value & 0xFF
            self.offset = 0
