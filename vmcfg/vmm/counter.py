"""Deterministic retired-instruction counting without a callback per instruction.

Unicorn has no instruction counter it will report, and its ``count=`` mode
adds a C callback per instruction (about 2x slower).  vmcfg counts per
translated block instead:

* a UC_HOOK_BLOCK callback runs at the start of every executed block with
  (address, size); the number of instructions in the block is looked up in a
  table indexed by guest address (one u32 per byte: size | count << 16),
  filled by decoding the block the first time it is seen;
* blocks outside the table's window (a kernel's high-half addresses, user space of a
  guest with its own page tables) are looked up in a small hash table keyed by the
  block address (tag + size|count), filled and invalidated the same way;
* the callback is a few machine instructions assembled at start-up (with
  keystone) into an executable anonymous mapping, so the common path never
  enters Python.  A miss (new block, address outside the table) tail-calls a
  Python function that decodes the block and fills the table.
* it also stops emulation *before* a block that would run past a deadline
  (instruction limit, preemption timer) or when another thread raised the
  stop word (live apply, timeout) -- stopping inside the block hook leaves
  RIP at the block start with the block not executed, so the count is exact;
* and before the first block that starts at or after a *soft* deadline (a
  device timer: PIT, LAPIC timer, RTC): the block that crosses it runs to its
  end, so the engine never has to approach it instruction by instruction.  The
  interrupt is then taken at that block boundary, a few instructions after the
  timer expired (as on hardware, where an interrupt waits for an instruction
  boundary); which boundary that is depends only on the guest's code and the
  run's history, so a --clock virtual run stays deterministic.  When the vCPU
  set a *soft-deadline function* (``set_soft_fn``), the stub tail-calls it there
  instead of stopping: it may take the interrupt without leaving the engine
  (the vCPU's ``_at_soft_deadline``) or stop the engine itself.

Where the guest stops inside a block (a trapped instruction, a fault), the
count is corrected by decoding the block prefix (``Vcpu._retired_at``).

On hosts where the native stub cannot be built (not x86-64 SysV, no
executable mappings) the same logic runs as a Python block hook: slower,
identical counts.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys

# u64 words of the shared state block
W_COUNTER, W_BASE, W_LIMIT, W_TABLE, W_SLOW, W_LAST_ADDR, W_LAST_SIZE, W_DEADLINE, \
    W_STOP, W_EMU_STOP, W_LAST_N, W_STOPPED, W_HTABLE, W_HMASK, W_SOFT, W_SOFT_FN, \
    W_SOFT_CTX = range(17)
N_WORDS = 17                   # (W_SOFT_CTX: the soft-deadline function's own data, not the stub's)
HASH_BITS = 20                 # 1 Mi entries of 16 bytes (tag, size | count << 16)
HASH_MASK = (1 << HASH_BITS) - 1


def hash_slot(address: int) -> int:
    """The hash-table slot of a block address (the stub computes the same)."""
    # every byte address its own slot within a 1 MiB window (blocks often start a few
    # bytes apart: a block ending at a trapped or patched instruction and the next one)
    return (address ^ (address >> HASH_BITS)) & HASH_MASK
NO_DEADLINE = (1 << 63) - 1

# rdi = uc, rsi = address, edx = size, rcx = state (SysV x86-64)
_STUB = """
    cmp qword ptr [rcx + 64], 0
    jne stop
    mov rax, rsi
    sub rax, [rcx + 8]
    cmp rax, [rcx + 16]
    jae hashed
    mov r8, [rcx + 24]
    mov r9d, dword ptr [r8 + rax*4]
found:
    mov r10d, r9d
    and r10d, 0xffff
    cmp r10d, edx
    jne slow
    shr r9d, 16
    mov rax, [rcx]
    cmp rax, [rcx + 112]
    jae soft
    add rax, r9
    cmp rax, [rcx + 56]
    ja stop
    mov [rcx], rax
    mov [rcx + 40], rsi
    mov [rcx + 48], rdx
    mov [rcx + 80], r9
    ret
stop:
    mov qword ptr [rcx + 88], 1
    jmp qword ptr [rcx + 72]
slow:
    jmp qword ptr [rcx + 32]
soft:
    cmp qword ptr [rcx + 120], 0
    je stop
    jmp qword ptr [rcx + 120]
hashed:
    mov rax, rsi
    shr rax, 20
    mov r8, rsi
    xor rax, r8
    and rax, [rcx + 104]
    shl rax, 4
    add rax, [rcx + 96]
    cmp [rax], rsi
    jne slow
    mov r9d, dword ptr [rax + 8]
    jmp found
"""

_BLOCK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                             ctypes.c_void_p)


class BlockCounter:
    """Counts retired instructions per executed block (see module doc)."""

    def __init__(self, uc, count_block, table_base: int, table_size: int,
                 native: bool | None = None):
        """`count_block(address, size) -> int | None` decodes a block's instruction count
        (None: it stopped the engine before the block; the block is neither counted nor
        remembered)."""
        from unicorn import UC_HOOK_BLOCK
        from unicorn.unicorn_py3.unicorn import uclib

        self.uc = uc
        self._count_block = count_block
        self.state = (ctypes.c_uint64 * N_WORDS)()
        st = self.state
        st[W_BASE] = table_base
        st[W_LIMIT] = table_size
        st[W_DEADLINE] = NO_DEADLINE
        st[W_SOFT] = NO_DEADLINE
        self._table_map = mmap.mmap(-1, max(4096, table_size * 4))
        self._table_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._table_map))
        st[W_TABLE] = self._table_addr
        self._table = (ctypes.c_uint32 * max(1024, table_size)).from_address(self._table_addr)
        self.table_base = table_base
        self.table_size = table_size
        self._hash = (ctypes.c_uint64 * (2 << HASH_BITS))()
        st[W_HTABLE] = ctypes.addressof(self._hash)
        st[W_HMASK] = HASH_MASK
        self._hash_pages: dict[int, set[int]] = {}   # page -> slots filled for its blocks
        self._soft_fn = None                # set_soft_fn
        self._soft_cb = None
        self._slow_cb = _BLOCK_CB(self._slow)
        st[W_SLOW] = ctypes.cast(self._slow_cb, ctypes.c_void_p).value
        st[W_EMU_STOP] = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self.native = False
        self._code_map = None
        if native is not False and _native_ok():
            try:
                self._code_map = _build_stub()
                self.native = True
            except Exception:  # pragma: no cover - host without exec mappings
                if native:
                    raise
                self._code_map = None
        handle = ctypes.c_size_t()
        if self.native:
            fn = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(self._code_map)))
        else:
            fn = ctypes.cast(self._slow_cb, ctypes.c_void_p)
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK, fn,
                                ctypes.cast(st, ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            from unicorn import UcError
            raise UcError(err)
        self._handle = handle.value

    # ---- the slow path (also the whole path without the native stub) -------
    def _slow(self, uch, address, size, _user):
        st = self.state
        if st[W_STOP]:
            st[W_STOPPED] = 1
            self.uc.emu_stop()
            return
        if st[W_COUNTER] >= st[W_SOFT]:
            if self._soft_fn is not None:
                self._soft_fn(uch, address, size, _user)
                return
            st[W_STOPPED] = 1
            self.uc.emu_stop()
            return
        off = address - self.table_base
        n = self._count_block(address, size)
        if n is None:                     # the vCPU stopped before this block: not counted
            return
        if size < 0x10000 and n < 0x10000:
            if 0 <= off < self.table_size:
                self._table[off] = size | (n << 16)
            else:
                slot = hash_slot(address)
                self._hash[2 * slot] = address
                self._hash[2 * slot + 1] = size | (n << 16)
                self._hash_pages.setdefault(address >> 12, set()).add(slot)
        total = st[W_COUNTER] + n
        if total > st[W_DEADLINE]:
            st[W_STOPPED] = 1
            self.uc.emu_stop()
            return
        st[W_COUNTER] = total
        st[W_LAST_ADDR] = address
        st[W_LAST_SIZE] = size
        st[W_LAST_N] = n

    # ---- helpers used by the vCPU -------------------------------------------
    @property
    def count(self) -> int:
        return self.state[W_COUNTER]

    def set_count(self, value: int) -> None:
        st = self.state
        st[W_COUNTER] = value
        st[W_LAST_ADDR] = 0
        st[W_LAST_SIZE] = 0
        st[W_LAST_N] = 0

    def last_block(self) -> tuple[int, int, int]:
        st = self.state
        return st[W_LAST_ADDR], st[W_LAST_SIZE], st[W_LAST_N]

    def set_deadline(self, value: int | None) -> None:
        self.state[W_DEADLINE] = NO_DEADLINE if value is None else min(value, NO_DEADLINE)

    def set_soft_fn(self, fn) -> None:
        """`fn(uch, address, size, state)`, called at the start of the first block at or after
        the soft deadline instead of stopping the engine (the block is not counted yet); it
        takes the event and lets the engine go on, or stops it (W_STOPPED and emu_stop, as
        the stub does).  None: stop there."""
        self._soft_fn = fn
        if fn is None:
            self._soft_cb = None
            self.state[W_SOFT_FN] = 0
        else:
            self._soft_cb = _BLOCK_CB(fn)
            self.state[W_SOFT_FN] = ctypes.cast(self._soft_cb, ctypes.c_void_p).value

    def set_soft_native(self, fn: int, ctx: int, keep) -> None:
        """A C soft-deadline function (its address) instead of a Python one, with `ctx` in
        word W_SOFT_CTX for it; `keep` holds what it points at alive."""
        self._soft_fn = None
        self._soft_cb = keep
        st = self.state
        st[W_SOFT_CTX] = ctx
        st[W_SOFT_FN] = fn

    def soft_stop(self) -> None:
        """From the soft-deadline function: stop the engine before this block, as the stub
        does without one."""
        self.state[W_STOPPED] = 1
        self.uc.emu_stop()

    def set_soft_deadline(self, value: int | None) -> None:
        """Stop before the first block that starts with `value` or more instructions retired
        (None: no soft deadline)."""
        self.state[W_SOFT] = NO_DEADLINE if value is None else min(value, NO_DEADLINE)

    def request_stop(self) -> None:
        """Thread-safe: stop before the next block starts."""
        self.state[W_STOP] = 1

    def clear_stop(self) -> bool:
        """Clear the stop request; True if the stub stopped emulation."""
        st = self.state
        stopped = bool(st[W_STOPPED])
        st[W_STOPPED] = 0
        return stopped

    def stop_pending(self) -> bool:
        return bool(self.state[W_STOP])

    def clear_stop_request(self) -> None:
        self.state[W_STOP] = 0

    def invalidate(self, begin: int, end: int) -> None:
        """Forget cached block counts for guest addresses [begin, end)."""
        lo = max(begin - self.table_base - 0x1000, 0)
        hi = min(end - self.table_base, self.table_size)
        if hi > lo:
            ctypes.memset(self._table_addr + lo * 4, 0, (hi - lo) * 4)
        if self._hash_pages:
            h = self._hash
            for page in range((begin - 0x1000) >> 12, (end + 0xFFF) >> 12):
                for slot in self._hash_pages.pop(page, ()):
                    if begin - 0x1000 <= h[2 * slot] < end:
                        h[2 * slot] = h[2 * slot + 1] = 0


def _native_ok() -> bool:
    return (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
            and ctypes.sizeof(ctypes.c_void_p) == 8)


def _build_stub() -> mmap.mmap:
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(_STUB, 0)[0])
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    return m
