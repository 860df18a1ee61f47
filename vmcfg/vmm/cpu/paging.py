"""Guest-linear to guest-physical translation through the guest's own page tables.

Covers what CR0.PG, CR4.PAE/PSE and EFER.LMA select: no paging, 32-bit paging
(4 KiB and 4 MiB pages), PAE paging and 4-level paging (2 MiB and 1 GiB pages).
A walk that finds a non-present entry or a protection violation returns the
#PF error code instead of an address.
"""

from __future__ import annotations

import struct
from typing import Callable

PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16
_ADDR = 0x000F_FFFF_FFFF_F000


class PageFault(Exception):
    def __init__(self, address: int, error_code: int):
        super().__init__(f"#PF at {address:#x} ({error_code:#x})")
        self.address = address
        self.error_code = error_code


def translate(read_phys: Callable[[int, int], bytes], lin: int, *, cr0: int, cr3: int,
              cr4: int, efer: int, write: bool = False, user: bool = False,
              fetch: bool = False) -> int:
    """Guest-physical address of `lin`; raises PageFault with the architectural error code."""
    if not cr0 & (1 << 31):
        return lin & 0xFFFFFFFF if not efer & (1 << 10) else lin
    ec_base = (PF_W if write else 0) | (PF_U if user else 0) | \
        (PF_I if fetch and efer & (1 << 11) else 0)
    wp = bool(cr0 & (1 << 16))
    allow_w = allow_u = True
    nx = False

    def entry(addr: int, size: int) -> int:
        return struct.unpack("<Q" if size == 8 else "<I", read_phys(addr, size))[0]

    def check(e: int) -> None:
        nonlocal allow_w, allow_u, nx
        if not e & 1:
            raise PageFault(lin, ec_base)
        allow_w = allow_w and bool(e & 2)
        allow_u = allow_u and bool(e & 4)
        if efer & (1 << 11) and e >> 63:
            nx = True

    if efer & (1 << 10):                   # 4-level paging (LMA)
        table = cr3 & _ADDR
        for shift in (39, 30, 21, 12):
            e = entry(table + ((lin >> shift) & 0x1FF) * 8, 8)
            check(e)
            if shift in (30, 21) and e & 0x80:
                phys = (e & _ADDR & ~((1 << shift) - 1)) | (lin & ((1 << shift) - 1))
                break
            table = e & _ADDR
        else:
            phys = table | (lin & 0xFFF)
    elif cr4 & (1 << 5):                   # PAE
        pdpte = entry((cr3 & 0xFFFFFFE0) + ((lin >> 30) & 3) * 8, 8)
        if not pdpte & 1:
            raise PageFault(lin, ec_base)
        table = pdpte & _ADDR
        for shift in (21, 12):
            e = entry(table + ((lin >> shift) & 0x1FF) * 8, 8)
            check(e)
            if shift == 21 and e & 0x80:
                phys = (e & _ADDR & ~0x1FFFFF) | (lin & 0x1FFFFF)
                break
            table = e & _ADDR
        else:
            phys = table | (lin & 0xFFF)
    else:                                  # 32-bit paging
        pde = entry((cr3 & 0xFFFFF000) + ((lin >> 22) & 0x3FF) * 4, 4)
        check(pde)
        if pde & 0x80 and cr4 & (1 << 4):
            phys = (pde & 0xFFC00000) | ((pde >> 13 & 0xFF) << 32) | (lin & 0x3FFFFF)
        else:
            pte = entry((pde & 0xFFFFF000) + ((lin >> 12) & 0x3FF) * 4, 4)
            check(pte)
            phys = (pte & 0xFFFFF000) | (lin & 0xFFF)
    if user and not allow_u:
        raise PageFault(lin, ec_base | PF_P)
    if write and not allow_w and (user or wp):
        raise PageFault(lin, ec_base | PF_P)
    if fetch and nx:
        raise PageFault(lin, ec_base | PF_P)
    return phys
