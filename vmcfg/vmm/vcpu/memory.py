"""Guest memory: the RAM layout and EPT permissions, physical and linear (paged)
access, the MMIO bus wiring, and memory faults (EPT violations, unmapped accesses)."""

from __future__ import annotations

import ctypes

from unicorn import (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_PROT_READ,
                     UC_PROT_WRITE, UcError, x86_const as X)
from unicorn.unicorn_py3.unicorn import uclib

from .. import apicv as _apicv
from .. import decode as D
from ...vmx.config import VmxConfig
from ..exitinfo import VmExit
from ..outcome import RunEnd
from .common import (MAP_CHUNK, MAP_REGIONS, MASK64, PAGE, _reg_write, _vmem_read,
                     _vmem_translate)
from ...vmx.exits import Exit


# Unicorn's MMIO callbacks: (engine, offset, size, user data) -> value; (..., value, user data)
_MMIO_READ_CB = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                 ctypes.c_void_p)
_MMIO_WRITE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                  ctypes.c_uint64, ctypes.c_void_p)


class MemoryMixin:
    """Guest memory: layout, EPT permissions, access, MMIO and memory faults (see the module doc)."""

    def _ept_layout(self, cfg: VmxConfig) -> list[tuple[int, int, str]] | None:
        if not cfg.on("secondary.enable_ept"):
            return None
        regions = cfg.settings["ept"]["regions"] or []
        if not regions:
            return None
        out = []
        for r in regions:
            from ..loader import parse_size
            base, size = parse_size(r["base"]), parse_size(r["size"])
            out.append((base & ~0xFFF, (base + size + 0xFFF) & ~0xFFF, str(r.get("access", "rwx"))))
        return out

    def _ept_access(self, page: int) -> str | None:
        """EPT permissions of a guest-physical page ('' = not mapped); None = no EPT limits."""
        if self._ept_regions is None:
            return None
        for lo, hi, acc in self._ept_regions:
            if lo <= page < hi:
                return acc
        return ""

    def _map_memory(self) -> None:
        # in 1 MiB regions: Unicorn's mem_protect on part of a region copies the whole region
        # (2.5 s per code page on a 256 MiB guest mapped as one region, and the copy makes the
        # region resident). But each mem_map costs time growing with the number of regions
        # (4096 regions for a 4 GiB guest: over 100 s), so large guests get larger regions:
        # at most about MAP_REGIONS of them (16 MiB each for 4 GiB). Memory stays lazy either way.
        chunk = MAP_CHUNK
        while self.memory > chunk * MAP_REGIONS:
            chunk <<= 1
        self._map_chunk = chunk
        for lo in range(0, self.memory, chunk):
            self.uc.mem_map(lo, min(chunk, self.memory - lo), UC_PROT_READ | UC_PROT_WRITE)
        if self._ept_regions is not None:
            # one mem_protect per run of pages with equal EPT permissions
            bounds = sorted({0, self.memory} | {min(max(x, 0), self.memory)
                                                for lo, hi, _a in self._ept_regions
                                                for x in (lo, hi)})
            for lo, hi in zip(bounds, bounds[1:]):
                if hi <= lo:
                    continue
                acc = self._ept_access(lo)
                perms = (UC_PROT_READ if "r" in acc else 0) | (UC_PROT_WRITE if "w" in acc else 0)
                if perms != UC_PROT_READ | UC_PROT_WRITE:
                    self.uc.mem_protect(lo, hi - lo, perms)
        # devices: the LAPIC, IOAPIC and HPET pages (above RAM) go to the board's MMIO bus
        # (whole pages: the rest of a smaller device's page reads as all ones)
        for base, size in self.platform.mmio_ranges():
            if base >= self.memory:
                self._map_mmio(base, (size + PAGE - 1) & -PAGE)

    def _map_mmio(self, base: int, size: int) -> None:
        """Guest-physical [base, base + size) to the MMIO callbacks below, registered with
        Unicorn directly (one Python call per access; the binding's wrapper adds layers)."""
        cbs = self.__dict__.get("_mmio_cbs")
        if cbs is None:
            bus = self.platform.bus
            self._bus_mmio_read, self._bus_mmio_write = bus.mmio_read, bus.mmio_write
            cbs = self._mmio_cbs = (_MMIO_READ_CB(self._mmio_read), _MMIO_WRITE_CB(self._mmio_write))
        err = uclib.uc_mmio_map(self._uch, ctypes.c_uint64(base), ctypes.c_size_t(size), cbs[0],
                                ctypes.c_void_p(base), cbs[1], ctypes.c_void_p(base))
        if err:
            raise UcError(err)

    def read_phys(self, addr: int, size: int) -> bytes:
        if addr + size > self.memory:
            raise UcError(UC_ERR_READ_UNMAPPED)
        return bytes(self.uc.mem_read(addr, size))

    def write_phys(self, addr: int, data: bytes) -> None:
        if addr + len(data) > self.memory:
            raise UcError(UC_ERR_WRITE_UNMAPPED)
        self.write_mem(addr, data)

    def _paging(self) -> bool:
        return bool(self.rr(X.UC_X86_REG_CR0) & (1 << 31))

    def _sync_paging(self) -> None:
        """Pending CR0/CR3/CR4 writes reach the engine before it walks the page tables."""
        pend = self._pend
        if pend and (X.UC_X86_REG_CR3 in pend or X.UC_X86_REG_CR0 in pend
                     or X.UC_X86_REG_CR4 in pend):
            self.flush()

    def lin2phys(self, lin: int, prot: int = UC_PROT_READ) -> int | None:
        """Guest-physical address of a linear one through the guest's paging (None: unmapped)."""
        if not self._paging():
            return lin
        self._sync_paging()
        cr2 = self._cr2_engine()
        err = _vmem_translate(self._uch, ctypes.c_uint64(lin & MASK64), ctypes.c_int(prot),
                              ctypes.byref(self._xlat))
        if err:
            self._probe_failed(cr2)
            return None
        return self._xlat.value

    def _probe_failed(self, cr2: int) -> None:
        """A page walk of the engine's that failed leaves what a fault would: CR2 = the
        address, and a #PF the engine may report once when the run stops.  CR2 goes back to
        the guest's value; that report is ignored (events._on_intr)."""
        self._cr2buf.value = cr2
        _reg_write(self._uch, X.UC_X86_REG_CR2, self._cr2ref)
        self._rcache.pop(X.UC_X86_REG_CR2, None)
        self._stray_fault = True

    def read_code(self, lin: int, size: int) -> bytes:
        """Guest code at a linear address (through the guest's paging)."""
        if not self._paging():
            return bytes(self.uc.mem_read(lin, size))
        self._sync_paging()
        buf = ctypes.create_string_buffer(size)
        cr2 = self._cr2_engine()
        err = _vmem_read(self._uch, ctypes.c_uint64(lin & MASK64), ctypes.c_int(UC_PROT_READ),
                         buf, ctypes.c_size_t(size))
        if err:
            self._probe_failed(cr2)
            raise UcError(err)
        return buf.raw

    def _phys_page(self, page: int) -> int | None:
        """The physical page under a code page (linear)."""
        p = self._code_phys.get(page)
        if p is None:
            p = self.lin2phys(page)
        return None if p is None else p & ~0xFFF

    def read_mem(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def read_lin(self, lin: int, size: int) -> bytes:
        """Guest memory at a *linear* address (an emulated instruction's operand, a
        descriptor table), through the guest's paging at its current privilege; a page that
        is not there raises the guest's #PF (GuestFault with the address for CR2)."""
        out = b""
        while size:
            n = min(size, PAGE - (lin & 0xFFF))
            out += self.read_mem(self._lin_phys(lin, False), n)
            lin, size = (lin + n) & MASK64, size - n
        return out

    def write_lin(self, lin: int, data: bytes) -> None:
        """`read_lin`'s store (both pages are checked before anything is written)."""
        data = bytes(data)
        parts = []
        while data:
            n = min(len(data), PAGE - (lin & 0xFFF))
            parts.append((self._lin_phys(lin, True), data[:n]))
            lin, data = (lin + n) & MASK64, data[n:]
        for pa, chunk in parts:
            self.write_mem(pa, chunk)

    def _lin_phys(self, lin: int, write: bool) -> int:
        if not self._paging():
            return lin if self.mode == 64 else lin & 0xFFFFFFFF
        from ..cpu.paging import PageFault, translate
        from ..outcome import GuestFault
        from ...vmx.exits import Vector
        self.flush()
        try:
            return translate(self.read_phys, lin, cr0=self.cr(0), cr3=self.cr(3), cr4=self.cr(4),
                             efer=self.efer(), write=write, user=self.cpl == 3)
        except PageFault as f:
            raise GuestFault(Vector.PF, f.error_code, address=f.address) from None
        except UcError:                       # a paging structure outside RAM
            raise GuestFault(Vector.GP, 0) from None

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        for ppage in range(addr & ~0xFFF, addr + len(data), PAGE):
            self._drop_phys(ppage)            # the VMM wrote guest code: decode it again
        self.uc.mem_write(addr, data)

    def _mmio_ic(self) -> int:
        """Inside an MMIO access: the instructions retired before it, worked out when first
        asked (reading RIP costs more than most device registers do)."""
        ic = self._mmio_icount
        if ic is None:
            return self.icount
        if ic < 0:
            ic = self._mmio_icount = max(self.icount, self._retired_at(self.rip))
        return ic

    def _mmio_read(self, _uch, offset: int, size: int, base: int) -> int:
        # (the engine's raw callback, see _map_mmio: no exit, no register read unless a
        #  device asks for the time or APIC virtualization for RIP)
        try:
            self._rcache.clear()
            self._mmio_icount = -1                    # not worked out yet (_mmio_ic)
            if self.apicv.covers(base + offset):      # virtualize APIC accesses (apicv.py)
                return _apicv.mmio_read(self, base + offset, size)
            return self._bus_mmio_read(base + offset, size)
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            self.uc.emu_stop()
            return 0
        finally:
            self._mmio_icount = None
            self._rcache.clear()       # values read mid-block must not outlive the access

    def _mmio_write(self, _uch, offset: int, size: int, value: int, base: int) -> None:
        try:
            self._rcache.clear()
            self._mmio_icount = -1                    # not worked out yet (_mmio_ic)
            if self.apicv.covers(base + offset):      # virtualize APIC accesses (apicv.py)
                if not _apicv.mmio_write(self, base + offset, size, value):
                    return
            else:
                self._bus_mmio_write(base + offset, size, value)
            if self.platform.changed and self._event is None and \
                    self._device_change_needs_stop(self._mmio_ic()):
                # interrupt state changed: re-check before the next block.  Not emu_stop: a
                # stop requested inside an MMIO store makes Unicorn restart the store
                self._event = ("resume", "mmio write")
                self.counter.request_stop()
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            self.uc.emu_stop()
        finally:
            self._mmio_icount = None
            self._rcache.clear()       # values read mid-block must not outlive the access

    def _on_unmapped(self, uc, access, address, size, value, _ud):
        self._rcache.clear()
        self._sync_mode()
        self._event = ("unmapped", access, address, size, self._retired_at(self.rip), self.rip)
        return False

    def _memory_fault(self, kind: str, access: int, address: int, size: int, rip: int) -> None:
        from unicorn import UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT, \
            UC_MEM_FETCH_PROT
        what = "fetch" if access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT) else \
            "write" if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT) else "read"
        if self.apicv.covers(rip) and rip & ~0xFFF == address & ~0xFFF:
            _apicv.fetch_exit(self, rip)          # code fetch from the APIC-access page
            return
        if self.cfg.on("secondary.enable_ept"):
            acc = self._ept_access(address & ~0xFFF) if address < self.memory else ""
            self._ept_violation(rip, address, what, acc or "")
            return
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None,
                     f"guest {what} of guest-physical address {address:#x} outside guest RAM "
                     f"(0x0-{self.memory - 1:#x}) at RIP {rip:#x}")

    def _ept_violation(self, rip: int, gpa: int, what: str, acc: str) -> None:
        qual = {"read": 1, "write": 2, "fetch": 4}[what]
        qual |= (8 if "r" in acc else 0) | (16 if "w" in acc else 0) | (32 if "x" in acc else 0)
        qual |= 1 << 7      # guest linear address valid
        qual |= 1 << 8      # the access was to the translation of that linear address
        ex = VmExit(Exit.EPT_VIOLATION, qual, rip, guest_physical_address=gpa, guest_linear_address=gpa,
                    data={"access": what, "permissions": acc or "---"})
        dec = self._decode_any(rip)
        if dec is not None:
            ex.instruction_bytes = self.read_code(rip, dec.len)
            ex.disassembly = D.format_instr(dec)
        self.vmexit(ex)
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        self.set_rip(ctx.resume_rip)

    def ept_map(self, gpa: int, access: str = "rwx") -> None:
        """Give a guest-physical page EPT permissions (used by the EPT handler)."""
        page = gpa & ~0xFFF
        if page >= self.memory:
            raise RunEnd("error", None, f"EPT mapping of {gpa:#x}: outside guest RAM")
        self._ept_regions = [(page, page + PAGE, access)] + (self._ept_regions or [])
        self._global_prot_hooks()            # (codepages.py: memory hooks)
        perms = (UC_PROT_READ if "r" in access else 0) | (UC_PROT_WRITE if "w" in access else 0)
        self._drop_phys(page)                 # its unit is data again (then fetched anew)
        self.uc.mem_protect(page, PAGE, perms)
        self._unit_bounds = None              # the page is a region of its own now
        self.uc.ctl_flush_tb()
