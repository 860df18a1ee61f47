"""Code pages: the first fetch from a page scans it and hooks exactly the sensitive
instructions the controls trap; stores into code pages (self-modifying code) drop and
rescan; retired-instruction counting per block (with counter.BlockCounter)."""

from __future__ import annotations

import ctypes
from unicorn import (UC_HOOK_CODE, UC_HOOK_MEM_WRITE, UC_MEM_WRITE_PROT, UC_PROT_ALL,
                     UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, UcError)
from unicorn.unicorn_py3.unicorn import uclib
from .. import decode as D
from .common import PAGE


class CodePagesMixin:
    """Code pages: the first fetch from a page scans it and hooks exactly the sensitive"""

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
            uclib.uc_hook_del(self._uch, ctypes.c_size_t(h))
            self.fx.forget(addr)

    def _drop_page(self, page: int) -> None:
        found = self._scanned.pop(page, {})
        for addr in list(found):
            self._unhook(addr)
            self._insns.pop(addr, None)
        for a in [a for a in self._insns if page <= a < page + PAGE]:
            self._insns.pop(a, None)
        h = self._wguard.pop(page, None)
        if h is not None:
            self.uc.hook_del(h)
        self._make_data_page(page)

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
        self.uc.ctl_remove_cache(page, page + PAGE)

    def _make_data_page(self, page: int) -> None:
        """Back to readable/writable, not executable (within its EPT rights): the next
        fetch rescans it; its cached translations and block counts are dropped."""
        ppage = self._code_phys.pop(page, None)
        if ppage is None:
            ppage = page if not self._paging() else None
        else:
            lins = self._phys_code.get(ppage, set())
            lins.discard(page)
            if lins:
                ppage = None                  # another linear view still runs code from it
            else:
                self._phys_code.pop(ppage, None)
        if ppage is not None and ppage < self.memory:
            acc = self._ept_access(ppage)
            perms = UC_PROT_READ | UC_PROT_WRITE if acc is None else \
                (UC_PROT_READ if "r" in acc else 0) | (UC_PROT_WRITE if "w" in acc else 0)
            self.uc.mem_protect(ppage, PAGE, perms)
        self.counter.invalidate(page, page + PAGE)
        self._prefix_cache.clear()
        self.fx.forget_prefixes()
        self._remove_cache(page)

    def _remove_cache(self, page: int) -> None:
        try:
            self.uc.ctl_remove_cache(page, page + PAGE)
        except UcError:                       # not mapped at that linear address any more
            self.uc.ctl_flush_tb()

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
        lins = self._phys_code.get(page)
        if access == UC_MEM_WRITE_PROT and lins and page not in self._hot_pages:
            acc = self._ept_access(page)
            if acc is None or "w" in acc:
                rip = self.rip
                self._event = ("smc", min(lins), rip, self._retired_at(rip))
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
        """The first fetch from physical page `ppage` (as the engine reports it); the linear
        page is RIP's, or the next one for a block or instruction crossing into it."""
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
        if page in self._scanned:
            # executable already: a stale translation; drop and rescan
            self._drop_page(page)
        self._scan(page)
        self._code_phys[page] = ppage
        self._phys_code.setdefault(ppage, set()).add(page)
        # code pages are write-protected: a store to one is caught (UC_HOOK_MEM_WRITE_PROT)
        # at no cost to other stores; pages that keep being written get a write hook instead
        writable = (acc is None or "w" in acc) and page in self._hot_pages
        perms = UC_PROT_EXEC | (UC_PROT_READ if acc is None or "r" in acc else 0) | \
            (UC_PROT_WRITE if writable else 0)
        self.uc.mem_protect(ppage, PAGE, perms)
        self._remove_cache(page)

    def _code_page_written(self, page: int, rip: int, ic: int) -> None:
        """A guest store hit a write-protected code page.

        Fast path (the store's own instruction is on other pages, e.g. the kernel patching
        its text): the page stops being code at once -- hooks and block counts dropped, plain
        readable/writable, not executable -- and the store is restarted natively; later
        stores to it run at full speed, and its next fetch makes it code again (its blocks
        are decoded and hooked as they run).  The engine drops its own translations of
        code that is written.  Otherwise (the store writes the page it runs from) the
        store is single-stepped with the page writable and executable (_end_smc_step).
        """
        self.icount = ic
        self.counter.set_count(ic)
        self._smc_count[page] = self._smc_count.get(page, 0) + 1
        ppage = self._phys_page(page)
        if ppage is None:
            ppage = page
        own = set()
        for a in (rip, rip + 14):              # the pages the storing instruction spans
            p = self.lin2phys(a)
            if p is not None:
                own.add(p & ~0xFFF)
        if ppage not in own:
            for other in list(self._phys_code.get(ppage, ())):
                self._drop_page(other)
            if page in self._scanned:
                self._drop_page(page)
            if ppage < self.memory:
                acc = self._ept_access(ppage)
                self.uc.mem_protect(ppage, PAGE, UC_PROT_READ | UC_PROT_WRITE if acc is None
                                    else (UC_PROT_READ if "r" in acc else 0)
                                    | (UC_PROT_WRITE if "w" in acc else 0))
            self.set_rip(rip)
            return
        try:
            self._smc_before = self.read_code(page, PAGE + 15 if ppage + PAGE + 15 <= self.memory
                                              else PAGE)
        except UcError:
            self._smc_before = None
        for other in list(self._phys_code.get(ppage, ())):
            if other != page:
                self._drop_page(other)
        if self._smc_before is None or page not in self._scanned:
            self._drop_page(page)
        acc = self._ept_access(ppage)
        self.uc.mem_protect(ppage, PAGE, UC_PROT_ALL if acc is None else
                            UC_PROT_EXEC | UC_PROT_WRITE | (UC_PROT_READ if "r" in acc else 0))
        self._remove_cache(page)
        self._smc_page = page
        self._smc_phys = ppage
        self.set_rip(rip)

    def _end_smc_step(self) -> None:
        """After the store: if it changed no sensitive instruction (the bytes around every
        changed byte decode to the same trapped instructions before and after, from the same
        first byte), the page keeps its scan and hooks and only its translations go;
        otherwise it is dropped and rescanned at its next fetch."""
        page, self._smc_page = self._smc_page, None
        ppage = getattr(self, "_smc_phys", page)
        before, self._smc_before = self._smc_before, None
        if page in self._scanned and before is not None:
            try:
                after = self.read_code(page, len(before))
            except UcError:
                after = None
            if after is not None and self._same_sensitive(page, before, after):
                acc = self._ept_access(ppage)
                self.uc.mem_protect(ppage, PAGE, UC_PROT_EXEC | (
                    UC_PROT_READ if acc is None or "r" in acc else 0))
                self.counter.invalidate(page, page + PAGE)
                self._prefix_cache.clear()
                self.fx.forget_prefixes()
                self._remove_cache(page)
                return
            self._drop_page(page)
        if page in self._code_phys:
            self._make_data_page(page)
        elif ppage < self.memory:
            acc = self._ept_access(ppage)
            self.uc.mem_protect(ppage, PAGE, UC_PROT_READ | UC_PROT_WRITE if acc is None else
                                (UC_PROT_READ if "r" in acc else 0)
                                | (UC_PROT_WRITE if "w" in acc else 0))
            self.counter.invalidate(page, page + PAGE)
            self._prefix_cache.clear()
            self.fx.forget_prefixes()
            self._remove_cache(page)

    def _same_sensitive(self, page: int, before: bytes, after: bytes) -> bool:
        if before == after:
            return True
        n = len(before)
        first = next(i for i in range(n) if before[i] != after[i])
        last = next(i for i in range(n - 1, -1, -1) if before[i] != after[i])
        lo, hi = max(0, first - 15), min(n, last + 16)
        if any(page + lo <= a + ins.length and a < page + hi for a, ins in self._insns.items()
               if page <= a < page + PAGE + 15):
            return False
        lim = min(hi, PAGE) - lo
        if lim <= 0:
            return True
        old = {a: k for a, (k, _i) in self._scan_bytes(before[lo:hi], page + lo, 0, lim).items()}
        new = {a: k for a, (k, _i) in self._scan_bytes(after[lo:hi], page + lo, 0, lim).items()}
        return old == new
