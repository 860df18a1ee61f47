"""Code pages: a region becomes code at its first fetch; each block is decoded the first
time it runs and its trapped instructions hooked; stores into code (self-modifying code)
turn a region back into data or are single-stepped; retired-instruction counting per
block (with counter.BlockCounter)."""

from __future__ import annotations

import bisect
import ctypes
from unicorn import (UC_HOOK_CODE, UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT, UC_MEM_WRITE_PROT,
                     UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib
from .. import decode as D
from .common import PAGE, _reg_read

FINE_AFTER = 16       # stores by a region's own code into it before it is protected page by page


class CodePagesMixin:
    """Code pages: scanning, hooks at trapped instructions, self-modifying code (see the module doc)."""

    def _count_block(self, address: int, size: int) -> int | None:
        """A block the engine is about to run for the first time (the counter's slow path):
        its instruction count, and its sensitive instructions recorded by page; a trapped
        one not hooked yet is hooked, and the block (not run yet) is dropped from the
        engine's cache and run again (None: the run loop restarts it, see "rehook")."""
        self._sync_mode()            # a new block: the guest may have switched modes natively
        try:
            data = self.read_code(address, size)
        except UcError:
            return 1
        n, found = D.block_sensitive(data, address, self.bitness)
        for lp in {address & ~0xFFF, (address + size - 1) & ~0xFFF}:
            if lp not in self._code_phys:
                self._code_page(lp)
        new = False
        for addr, kind, instr in found:
            self._scanned.setdefault(addr & ~0xFFF, {})[addr] = (kind, instr)
            if kind in self._trapped and addr not in self._hooks:
                self._hook(addr)
                new = True
        if new:
            # the block was translated without the hook: stop before it runs (the block
            # hook runs first, so nothing of it has retired) and translate it again
            if self._event is None:
                self._event = ("rehook", address)
            self.uc.emu_stop()
            return None
        return max(1, n)

    def _prefix(self, block: int, addr: int) -> int:
        """Instructions from block start up to (not including) addr."""
        if addr <= block:
            return 0
        key = (block, addr)
        n = self._prefix_cache.get(key)
        if n is None:
            try:
                data = self.read_code(block, addr - block)
            except UcError:
                return 0
            n = D.count_instructions(data, block, self.bitness, stop=addr)
            self._prefix_cache[key] = n
        return n

    def _retired_at(self, addr: int) -> int:
        """Retired instructions before the instruction at `addr`, inside the current block."""
        a, size, n = self.counter.last_block()
        c = self.counter.count
        if size and a <= addr < a + size:
            return c - n + self._prefix(a, addr)
        return c

    def _scan(self, page: int) -> None:
        """A page becomes code. Its sensitive instructions are found block by block as the
        engine first runs them (_count_block): only real instruction boundaries get a hook
        (every hook costs the engine time on every instruction it translates)."""
        self._scanned.setdefault(page, {})
        if page in self._hot_pages and page not in self._wguard:
            self._wguard[page] = self.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_code_write,
                                                  begin=page, end=page + PAGE - 1)

    def _scan_bytes(self, data: bytes, base: int, lo: int = 0, hi: int | None = None) -> dict:
        """Sensitive instructions in `data`, decoded in the current code size and in the one
        the guest may switch to without the VMM seeing it (32 <-> 64, 16 -> 32): a hook sits at
        each; at the trap the instruction is decoded again in the mode the CPU is in then."""
        other = 64 if self.bitness == 32 else 32
        found = D.scan_page(data, base, other, lo, hi)
        found.update(D.scan_page(data, base, self.bitness, lo, hi))
        return found

    def _hook(self, addr: int) -> None:
        # registered straight with the C API: one shared ctypes callback, no binding wrapper
        if addr not in self._hooks:
            hh = ctypes.c_size_t()
            if self._fx_native:      # the native hook (fastexit.c), this address's entry as data
                fn = self.fx.hook_fn
                ud = ctypes.c_void_p(ctypes.addressof(self.fx.entry(addr)))
            else:
                fn, ud = self._trap_fn, None
            err = uclib.uc_hook_add(self._uch, ctypes.byref(hh), UC_HOOK_CODE, fn,
                                    ud, ctypes.c_uint64(addr), ctypes.c_uint64(addr))
            if err:
                raise UcError(err)
            self._hooks[addr] = hh.value

    def _unhook(self, addr: int) -> None:
        h = self._hooks.pop(addr, None)
        if h is not None:
            self._tb_drop(uclib.uc_hook_del, self._uch, ctypes.c_size_t(h))
            self.fx.forget(addr)

    # ---- code units: what the engine protects ---------------------------------------------
    # Guest RAM is mapped in regions of MAP_CHUNK (1 MiB) or more; a region is the unit of
    # protection: "code" (readable, executable, not writable) once something is fetched from
    # it, "data" (readable, writable, not executable) again when it is written.  Protecting
    # a whole region never splits it: one mem_protect of part of a region copies it, and every
    # extra region makes all later ones slower (40 ms each after 1000 page-sized splits,
    # against 0.5 ms to toggle a whole region).
    def _unit(self, ppage: int) -> tuple[int, int]:
        """The engine memory region holding physical page `ppage`: (begin, end)."""
        bounds = self._unit_bounds
        if bounds is None:
            bounds = self._unit_bounds = sorted((b, e + 1) for b, e, _p in self.uc.mem_regions()
                                                if b < self.memory)
            self._unit_starts = [b for b, _e in bounds]
            self._unit_memo = {}
        else:
            r = self._unit_memo.get(ppage)     # (the same bounds: the same answer)
            if r is not None:
                return r
        i = bisect.bisect_right(self._unit_starts, ppage) - 1
        r = (ppage, ppage + PAGE) if i < 0 or ppage >= bounds[i][1] else bounds[i]
        memo = self._unit_memo
        if len(memo) >= 4096:
            memo.clear()
        memo[ppage] = r
        return r

    def _unit_perms(self, ppage: int, code: bool) -> int:
        acc = self._ept_access(ppage)
        r = UC_PROT_READ if acc is None or "r" in acc else 0
        if code:
            return UC_PROT_EXEC | r
        return r | (UC_PROT_WRITE if acc is None or "w" in acc else 0)

    def _code_page(self, page: int, ppage: int | None = None) -> None:
        """Record that linear page `page` runs code from its physical page (its unit's
        data transition must forget the page's blocks and hooks)."""
        if ppage is None:
            ppage = self.lin2phys(page)
            if ppage is None:
                return
            ppage &= ~0xFFF
        self._code_phys[page] = ppage
        self._phys_code.setdefault(ppage, set()).add(page)
        self._unit_lins.setdefault(self._unit(ppage)[0], set()).add(page)
        self._data_frame = None            # (a unit may be code now: _drop_phys must look)
        self._scanned.setdefault(page, {})

    def _forget_page(self, page: int) -> None:
        """Linear page `page` is no longer known code: its hooks, decoded instructions and
        block counts go (the next run of its blocks decodes and hooks them again)."""
        found = self._scanned.pop(page, {})
        for addr in list(found):
            self._unhook(addr)
            self._insns.pop(addr, None)
        for a in [a for a in self._insns if page <= a < page + PAGE]:
            self._insns.pop(a, None)
        h = self._wguard.pop(page, None)
        if h is not None:
            self._tb_drop(self.uc.hook_del, h)
        ppage = self._code_phys.pop(page, None)
        if ppage is not None:
            lins = self._phys_code.get(ppage)
            if lins is not None:
                lins.discard(page)
                if not lins:
                    del self._phys_code[ppage]
        self.counter.invalidate(page, page + PAGE)

    def _make_data_unit(self, unit: int) -> None:
        """The region starting at `unit` becomes data: every linear page that ran code from
        it is forgotten, and it is readable/writable, not executable (within its EPT rights).
        The engine drops its own translations of code that is written."""
        for lp in self._unit_lins.pop(unit, ()):
            self._forget_page(lp)
        self._prefix_cache.clear()
        self.fx.forget_prefixes()
        if unit in self._code_units:
            self._code_units.discard(unit)
            lo, hi = self._unit(unit)
            self.uc.mem_protect(lo, hi - lo, self._unit_perms(lo, False))

    def _drop_page(self, page: int) -> None:
        """Linear page `page` (code, or guest memory the VMM writes): its unit becomes data."""
        ppage = self._code_phys.get(page)
        if ppage is None:
            if self._paging():
                self._forget_page(page)
                return
            ppage = page
        if ppage < self.memory:
            self._make_data_unit(self._unit(ppage)[0])
        self._forget_page(page)

    def _frame_check(self, ppage: int) -> None:
        """An interrupt frame was written to guest-physical page `ppage`: `_drop_phys`, and the
        page remembered as data (`_data_frame`) until a unit becomes code again -- the frame of
        the next interrupt, on the same stack page, needs no look (fastexit.c c_turn)."""
        self._drop_phys(ppage)
        self._data_frame = ppage

    def _drop_phys(self, ppage: int) -> None:
        """Guest-physical page `ppage` is written by the VMM: if its unit is code, data."""
        if ppage < self.memory:
            unit = self._unit(ppage)[0]
            if unit in self._code_units or unit in self._unit_lins:
                self._make_data_unit(unit)

    def _rescan(self, page: int) -> None:
        """A guarded (hot) code page whose sensitive instructions changed: re-decode it in
        place, keeping it executable and writable; its cached translations are dropped."""
        found = self._scanned.pop(page, {})
        for addr in list(found):
            self._unhook(addr)
        for a in [a for a in self._insns if page <= a < page + PAGE]:
            self._insns.pop(a, None)
        self._scan(page)
        self.counter.invalidate(page, page + PAGE)
        self._prefix_cache.clear()
        self.fx.forget_prefixes()
        self._remove_cache(page)

    def _remove_cache(self, page: int) -> None:
        """Drop the engine's translated blocks of the code page at linear address `page`:
        by address where the guest may fetch from it at its current privilege, else (the
        engine's lookup would fault, see _tb_drop) the whole cache."""
        self.flush()
        if not self._fetchable(page):
            self.uc.ctl_flush_tb()
            return
        self._tb_drop(self.uc.ctl_remove_cache, page, page + PAGE)

    def _tb_drop(self, op, *args) -> None:
        """Run an engine call that drops translated blocks by *linear* address: a TB removal
        or the deletion of a code hook (Unicorn then invalidates every block the hook was
        compiled into).  Unicorn finds each block's page with a faulting code fetch at the
        current privilege; where that fetch faults (the page is gone, or supervisor-only
        while the guest is at CPL 3) the engine raises a #PF inside the call, swallows it
        and drops nothing -- but the fault stays behind: CR2 holds the address, QEMU's
        double-fault bookkeeping says a #PF is in flight (the guest's next #PF became a #DF:
        what stopped Linux at /init) and the engine may report the #PF once more when the
        run stops.  So CR2 is compared around the call; on a change the VMM puts CR2 back,
        clears the bookkeeping, ignores that one report and flushes the whole cache before
        the next run."""
        before = self._cr2_engine()
        op(*args)
        if self._stray_cr2(before):
            self._tb_flush_pending = True

    def _stray_cr2(self, before: int) -> bool:
        """After an engine call that may fault inside itself (_tb_drop): if CR2 moved, put it
        back, clear QEMU's double-fault bookkeeping and ignore the engine's one report."""
        if self._cr2_engine() == before:
            return False
        self.cpu_state.set_cr2(before)
        self._rcache.clear()
        self._stray_fault = True
        return True

    def _cr2_engine(self) -> int:
        b = self._rbuf
        b.value = 0
        _reg_read(self._uch, X.UC_X86_REG_CR2, self._rref)
        return b.value

    def _fetchable(self, page: int) -> bool:
        """May the guest fetch code from linear `page` at its current privilege (no fault)?"""
        cr0 = self.cr(0)
        if not cr0 & (1 << 31):
            return True
        from ..cpu.paging import PageFault, translate
        cr4 = self.cr(4)
        user = self.cpl == 3
        try:
            phys = translate(self.read_phys, page, cr0=cr0, cr3=self.cr(3), cr4=cr4,
                             efer=self.efer(), user=user, fetch=True)
        except (PageFault, UcError):
            return False
        if not user and cr4 & (1 << 20):      # SMEP: no supervisor fetch from a user page
            try:
                translate(self.read_phys, page, cr0=cr0, cr3=self.cr(3), cr4=cr4,
                          efer=self.efer(), user=True, fetch=True)
                return False
            except (PageFault, UcError):
                pass
        return phys < self.memory

    def _on_code_write(self, uc, access, address, size, value, _ud):
        page = address & ~0xFFF
        found = self._scanned.get(page)
        if found is None:
            return
        # fast path: no sensitive instruction overlaps the store and the stored bytes
        # cannot start one -> nothing to rescan
        trig = D.TRIGGER_BYTES
        if not any((value >> (8 * i)) & 0xFF in trig for i in range(size)) and \
                not any(a in found for a in range(address - 14, address + size)):
            return
        lo = max(address - 15, page)
        hi = min(address + size + 15, page + PAGE + 15)
        try:
            window = bytearray(self.read_mem(lo, hi - lo))
        except UcError:
            return
        before = bytes(window)
        for i in range(size):
            j = address - lo + i
            if 0 <= j < len(window):
                window[j] = (value >> (8 * i)) & 0xFF
        # the window decoded before and after the store from the same first byte (a window
        # may begin inside an instruction: only a difference between the two counts)
        lim = min(len(window), page + PAGE - lo)
        old = {a: k for a, (k, _i) in self._scan_bytes(before, lo, 0, lim).items()}
        newk = {a: k for a, (k, _i) in self._scan_bytes(bytes(window), lo, 0, lim).items()}
        end = address + size
        changed = old != newk or any(a < end and address < a + ins.length
                                     for a, ins in self._insns.items() if lo <= a < hi)
        if changed:
            # hooks cannot change inside a running callback: stop (at the end of this block,
            # or at the next trapped instruction, which keeps the count exact) and rescan
            if self._event is None:
                self._event = ("dirty", page)
            uc.emu_stop()

    def _rehook_all(self) -> None:
        for page, found in self._scanned.items():
            for addr, (kind, _i) in found.items():
                if kind in self._trapped:
                    self._hook(addr)
                else:
                    self._unhook(addr)
        self.uc.ctl_flush_tb()

    def _on_fetch_prot(self, uc, access, address, size, value, _ud):
        self._event = ("fetch", address)
        return False

    def _on_prot(self, uc, access, address, size, value, _ud):
        self._rcache.clear()
        self._sync_mode()
        page = address & ~0xFFF                 # physical: the engine reports those
        if access == UC_MEM_WRITE_PROT and page < self.memory:
            unit = self._unit(page)[0]
            if unit in self._code_units:
                acc = self._ept_access(page)
                if acc is None or "w" in acc:
                    rip = self.rip
                    self._event = ("smc", unit, rip, self._retired_at(rip))
                    return False
        self._event = ("prot", access, address, size, self._retired_at(self.rip), self.rip)
        return False

    def _code_bytes(self, address: int) -> bytes | None:
        """Up to 15 bytes of guest code at `address` (fewer at the end of RAM)."""
        try:
            return self.read_code(address, 15)
        except UcError:
            try:
                return self.read_code(address, PAGE - (address & 0xFFF))
            except UcError:
                return None

    def _decode_at(self, address: int) -> D.Insn | None:
        raw = self._code_bytes(address)
        if raw is None:
            return None
        instr = D.decode_one(raw, address, self.bitness)
        kind = D.classify(instr)
        if kind is None:
            self._insns.pop(address, None)
            return None
        ins = D.make_insn(instr, raw, self.bitness, kind)
        self._insns[address] = ins
        return ins

    def _fetch_page(self, ppage: int, rip: int) -> None:
        """A fetch from physical page `ppage` of a data unit (as the engine reports it); the
        linear page is RIP's, or the next one for a block or instruction crossing into it.
        The unit becomes code: executable, write-protected."""
        if ppage >= self.memory:
            self._memory_fault("unmapped", 16 + 2, ppage, 1, rip)   # fetch
            return
        acc = self._ept_access(ppage)
        if acc is not None and "x" not in acc:
            self._ept_violation(rip, ppage if ppage > rip else rip, "fetch", acc)
            return
        page = ppage
        if self._paging():
            for cand in (rip & ~0xFFF, (rip & ~0xFFF) + PAGE):
                phys = self.lin2phys(cand, UC_PROT_EXEC)
                if phys is not None and phys & ~0xFFF == ppage:
                    page = cand
                    break
        lo, hi = self._unit(ppage)
        split = hi - lo > PAGE and ppage // self._map_chunk in self._fine
        if split:                          # a region whose code writes it: page by page
            lo, hi = ppage, ppage + PAGE
        if lo not in self._code_units:
            self._code_units.add(lo)
            self._data_frame = None        # (a unit may be code now: _drop_phys must look)
            self.uc.mem_protect(lo, hi - lo, self._unit_perms(lo, True))
            self._guard_unit(lo)
            if split:
                self._unit_bounds = None   # the page is a region of its own now
        else:                              # a stale translation: run it again
            self._remove_cache(page)
        self._code_page(page, ppage)

    # ---- memory hooks -----------------------------------------------------------------------
    # Unicorn 2.1.4 keeps no dirty-page bitmap: a store to RAM takes its slow path
    # (helper_le_st*_mmu, notdirty_write, two address-space lookups) until the page's TLB entry
    # is marked dirty, and it never is while any memory hook -- even a protection or unmapped
    # one -- covers the page.  So the hooks cover only what needs them: the unmapped hook the
    # addresses above RAM (all of RAM is mapped), the store-protection hook each 1 MiB chunk
    # that has held code (stores into code), and no fetch-protection hook at all (a fetch from
    # a data region ends emu_start with UC_ERR_FETCH_PROT; the run loop finds the page:
    # _fetch_fault_page).
    # Data stores of a guest whose paging maps its data no-execute (Linux) then run at engine
    # speed.  With EPT permissions (read- or write-protected guest-physical pages) the hooks
    # cover all memory, as before.
    def _global_prot_hooks(self) -> None:
        """Protection hooks over all memory (EPT permissions can protect any page)."""
        if self._prot_global:
            return
        from unicorn import UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ_PROT
        self._prot_global = True
        for h in self._unit_hooks.values():
            self.uc.hook_del(h)
        self._unit_hooks.clear()
        self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch_prot)
        self.uc.hook_add(UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT, self._on_prot)

    def _guard_unit(self, lo: int) -> None:
        """Code region at `lo`: a store into it reaches _on_prot.  The hook covers the whole
        mapping chunk (1 MiB) and stays when the region becomes data again: regions that flip
        between code and data (text patching, self-modifying code) would otherwise add and
        delete a hook at every flip, and page-by-page regions would each get one."""
        if self._prot_global:
            return
        c = lo - lo % self._map_chunk
        if c not in self._unit_hooks:
            self._unit_hooks[c] = self.uc.hook_add(
                UC_HOOK_MEM_WRITE_PROT, self._on_prot, None, c,
                min(c + self._map_chunk, self.memory) - 1)

    def _fetch_fault_page(self) -> int:
        """The physical page of a fetch the engine refused (UC_ERR_FETCH_PROT without a
        hook): the page RIP runs from, or the next one for a block or instruction crossing
        into it -- the first of the two that is not in a code region."""
        rip = self.rip
        first = None
        for cand in (rip & ~0xFFF, (rip & ~0xFFF) + PAGE):
            p = self.lin2phys(cand, UC_PROT_EXEC)
            if p is None:
                continue
            p &= ~0xFFF
            if first is None:
                first = p
            if p >= self.memory or self._unit(p)[0] not in self._code_units:
                return p
        return first if first is not None else rip & ~0xFFF

    def _code_page_written(self, unit: int, rip: int, ic: int) -> None:
        """A guest store hit the write-protected code unit starting at `unit`.

        Fast path (the storing instruction is in another unit, e.g. the kernel patching its
        text): the unit becomes data at once (_make_data_unit) and the store is restarted
        natively; later stores to it run at full speed, and its next fetch makes it code
        again, its blocks decoded and hooked as they run -- a batch of patches costs one
        transition.  Otherwise (the store writes the unit it runs from) the store is
        single-stepped with the unit writable and executable (_end_smc_step), then the unit
        is data; after FINE_AFTER of those, the region is protected page by page instead
        (only the pages code runs from), as code and its data share it.
        """
        self.icount = ic
        self.counter.set_count(ic)
        self._smc_count[unit] = self._smc_count.get(unit, 0) + 1
        lo, hi = self._unit(unit)
        own = False
        for a in (rip, rip + 14):              # the pages the storing instruction spans
            p = self.lin2phys(a)
            if p is not None and lo <= p < hi:
                own = True
        self._make_data_unit(lo)
        if own and hi - lo > PAGE:
            n = self._own_stores[lo] = self._own_stores.get(lo, 0) + 1
            if n >= FINE_AFTER:
                # code and the data it writes share this region: from now on its pages are
                # protected one by one, so stores to its other pages cost nothing
                self._fine.add(lo // self._map_chunk)
                own = False                # the store runs natively into the data region
        if own:
            acc = self._ept_access(lo)
            self.uc.mem_protect(lo, hi - lo, UC_PROT_ALL if acc is None else
                                UC_PROT_EXEC | UC_PROT_WRITE | (UC_PROT_READ if "r" in acc else 0))
            self._smc_page = lo
        self.set_rip(rip)

    def _end_smc_step(self) -> None:
        """After the single-stepped store into its own unit: the unit is data (the next
        fetch from it makes it code again and its blocks are decoded as they run)."""
        lo, self._smc_page = self._smc_page, None
        lo, hi = self._unit(lo)
        self._make_data_unit(lo)            # forgets what the step ran from the unit
        self.uc.mem_protect(lo, hi - lo, self._unit_perms(lo, False))
