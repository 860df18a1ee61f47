"""Hidden CPU state: segment descriptor caches, CPL and the current mode.

Unicorn's register API sets only the selector of a segment register in a
64-bit engine and has no way to read a descriptor cache, the CPL or the
mode the CPU is in.  The VMM needs all of them (a guest starts in 32-bit
protected mode and switches itself to long mode; an interrupt from CPL 3
loads CS and SS from the IDT gate and the TSS).  They live in QEMU's
``CPUX86State``, which ``uc_context_save`` copies verbatim; this module
reads and patches that copy and restores it.

The layout used (QEMU 5 ``CPUX86State``, x86-64 target, as in Unicorn 2):
``regs[16]`` at 0, ``eip`` 128, ``eflags`` 136, ``hflags`` 176, then
``segs[6]`` (ES CS SS DS FS GS), ``ldt``, ``tr``, ``gdt``, ``idt`` as
``SegmentCache {u32 selector; u64 base; u32 limit; u32 flags}`` (24 bytes)
from 184, and ``cr[5]`` from 424.  Where the structure starts inside a
saved context is found once per process with marker values, and the
layout is checked against known register values; on a Unicorn build that
does not match, ``CpuStateError`` says so instead of corrupting the guest.
"""

from __future__ import annotations

import ctypes
import struct

ES, CS, SS, DS, FS, GS = range(6)
LDT, TR = 6, 7
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

_EIP, _EFLAGS, _HFLAGS = 128, 136, 176
_SEG = struct.Struct("<I4xQII")
_SEGS = 184
_SEG_SIZE = 24
_GDT = _SEGS + 8 * _SEG_SIZE
_CR = _SEGS + 10 * _SEG_SIZE

# QEMU hflags bits
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3          # blocking by STI / MOV SS for the next instruction
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_VM = 1 << 17

# descriptor flag bits (the descriptor's high dword)
DESC_A = 1 << 8
DESC_W = 1 << 9          # data writable / code readable
DESC_CS = 1 << 11        # code segment
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23

REAL_MODE_FLAGS = DESC_P | DESC_S | DESC_W | DESC_A


class CpuStateError(Exception):
    """The Unicorn build's CPU state does not have the expected layout."""


_ENV_OFFSET: int | None = None
_EFER_OFFSET: int | None = None
_XCR0_OFFSET: int | None = None


def unicorn_cpu_model() -> int:
    """The emulator's CPU model: Skylake-Server (family 6, model 0x55), the processor the
    cvmm CPUID describes, so that what CPUID offers (SSE4.2, POPCNT, XSAVE...) also runs."""
    from unicorn import x86_const as X
    return X.UC_CPU_X86_SKYLAKE_SERVER


def _find_xcr0_offset(env: int) -> int:
    """env->xcr0, found by running XSETBV with two values in a scratch engine."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X
    from unicorn.unicorn_py3.unicorn import uclib
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(unicorn_cpu_model())
    uc.mem_map(0, 0x10000)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | (1 << 18))
    code = bytes.fromhex("31c931d20f01d1f4")          # xor ecx,ecx; xor edx,edx; xsetbv; hlt
    uc.mem_write(0x1000, code)
    size = uclib.uc_context_size(uc._uch)
    hits = None
    for val in (3, 7):
        uc.reg_write(X.UC_X86_REG_RAX, val)
        uc.emu_start(0x1000, 0x1007)
        blob = ctypes.string_at(_ctx_addr(uc.context_save()), size)
        pat = struct.pack("<Q", val)
        found = {i for i in range(env + _EIP, size - 7, 8) if blob[i:i + 8] == pat}
        hits = found if hits is None else hits & found
    if not hits or len(hits) != 1:
        raise CpuStateError("cannot locate XCR0 in this Unicorn build's CPU state")
    return hits.pop() - env


def _find_env_offset() -> int:
    global _ENV_OFFSET
    if _ENV_OFFSET is not None:
        return _ENV_OFFSET
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from unicorn import x86_const as X
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    marker = 0x5A17_C0DE_1234_9876
    uc.reg_write(X.UC_X86_REG_RAX, marker)
    uc.reg_write(X.UC_X86_REG_RIP, 0x1357_9BDF)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x2468_ACE0, 0x1FF, 0))
    uc.reg_write(X.UC_X86_REG_CR3, 0x7654_3000)
    ctx = uc.context_save()
    size = ctx.size if hasattr(ctx, "size") else None
    from unicorn.unicorn_py3.unicorn import uclib
    size = uclib.uc_context_size(uc._uch)
    blob = ctypes.string_at(_ctx_addr(ctx), size)
    off = blob.find(struct.pack("<Q", marker))
    ok = off >= 0 and off + _CR + 40 <= size and \
        struct.unpack_from("<Q", blob, off + _EIP)[0] == 0x1357_9BDF and \
        struct.unpack_from("<Q", blob, off + _GDT + 8)[0] == 0x2468_ACE0 and \
        struct.unpack_from("<Q", blob, off + _CR + 24)[0] == 0x7654_3000
    if not ok:
        raise CpuStateError("this Unicorn build's CPU state layout is not the one vmcfg knows "
                            "(QEMU 5 CPUX86State); use Unicorn 2.1.x")
    _ENV_OFFSET = off
    # env->efer: found by two distinctive values written through WRMSR
    global _EFER_OFFSET
    hits = None
    for val in (0xD01, 0x501):
        uc.msr_write(0xC0000080, val)
        now = uc.msr_read(0xC0000080)
        uc.context_update(ctx)
        blob = ctypes.string_at(_ctx_addr(ctx), size)
        pat = struct.pack("<Q", now)
        found = {i for i in range(off, size - 7, 8) if blob[i:i + 8] == pat}
        hits = found if hits is None else hits & found
    if not hits or len(hits) != 1:
        raise CpuStateError("cannot locate EFER in this Unicorn build's CPU state")
    _EFER_OFFSET = hits.pop() - off
    return off


class SegmentCache(ctypes.Structure):
    _fields_ = [("selector", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class Env(ctypes.Structure):
    """The start of QEMU 5's ``CPUX86State`` (the layout this module checks at start-up)."""
    _fields_ = [("regs", ctypes.c_uint64 * 16), ("eip", ctypes.c_uint64),
                ("eflags", ctypes.c_uint64), ("cc_dst", ctypes.c_uint64),
                ("cc_src", ctypes.c_uint64), ("cc_src2", ctypes.c_uint64),
                ("cc_op", ctypes.c_uint32), ("df", ctypes.c_int32),
                ("hflags", ctypes.c_uint32), ("hflags2", ctypes.c_uint32),
                ("segs", SegmentCache * 6), ("ldt", SegmentCache), ("tr", SegmentCache),
                ("gdt", SegmentCache), ("idt", SegmentCache), ("cr", ctypes.c_uint64 * 5)]


assert Env.hflags.offset == _HFLAGS and Env.segs.offset == _SEGS and Env.cr.offset == _CR


def _ctx_addr(ctx) -> int:
    return ctypes.cast(ctx.context, ctypes.c_void_p).value


_OLD_EXC_OFFSET: dict[int, int | None] = {}


def old_exception_offset(mode: int) -> int | None:
    """Offset of QEMU's ``env->old_exception`` inside a Unicorn CPU context.

    Unicorn reports CPU exceptions to UC_HOOK_INTR but never delivers them, so
    QEMU's double-fault bookkeeping (old_exception) is never reset and the
    next contributory exception would turn into #DF or a triple fault.  The
    field is located once per process by diffing two contexts around a #DE in
    a scratch engine (-1 before, 0 after).  Every write-back of a CpuState
    resets it: the VMM delivers every event itself, so none is in flight then.
    None if it cannot be found (then nothing is patched).
    """
    if mode in _OLD_EXC_OFFSET:
        return _OLD_EXC_OFFSET[mode]
    off = None
    try:
        code = {64: b"\x31\xd2\x31\xc9\xb8\x01\x00\x00\x00\xf7\xf1\xf4",
                32: b"\x31\xd2\x31\xc9\xb8\x01\x00\x00\x00\xf7\xf1\xf4",
                16: b"\x66\x31\xd2\x66\x31\xc9\x66\xb8\x01\x00\x00\x00\x66\xf7\xf1\xf4"}[mode]
        from unicorn import (UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_16, UC_MODE_32, UC_MODE_64,
                             Uc)
        from unicorn.unicorn_py3.unicorn import uclib
        uc = Uc(UC_ARCH_X86, {16: UC_MODE_16, 32: UC_MODE_32, 64: UC_MODE_64}[mode])
        uc.mem_map(0, 0x10000)
        uc.mem_write(0x1000, code)
        uc.hook_add(UC_HOOK_INTR, lambda u, n, d: u.emu_stop())
        size = uclib.uc_context_size(uc._uch)
        a = uc.context_save()
        uc.emu_start(0x1000, 0x1000 + len(code))
        b = uc.context_save()
        ba = ctypes.string_at(a.context, size)
        bb = ctypes.string_at(b.context, size)
        hits = [i for i in range(0, size - 3, 4)
                if ba[i:i + 4] == b"\xff\xff\xff\xff" and bb[i:i + 4] == b"\0\0\0\0"]
        if len(hits) == 1:
            off = hits[0]
    except Exception:  # pragma: no cover - a Unicorn build we do not know
        off = None
    _OLD_EXC_OFFSET[mode] = off
    return off


def descriptor_cache(e1: int, e2: int) -> tuple[int, int, int]:
    """(base, limit, flags) of a segment descriptor given as its two dwords."""
    base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000)
    limit = (e1 & 0xFFFF) | (e2 & 0x000F0000)
    if e2 & DESC_G:
        limit = (limit << 12) | 0xFFF
    return base, limit, e2


class CpuState:
    """One engine's hidden state, read and patched through a reusable context."""

    def __init__(self, uc):
        self.uc = uc
        self.env = _find_env_offset()
        self._ctx = uc.context_save()
        self._base = 0
        self._fresh = False

    def _load(self) -> int:
        self.uc.context_update(self._ctx)
        if not self._base:
            self._base = _ctx_addr(self._ctx) + self.env
            self._env = Env.from_address(self._base)
            off = old_exception_offset(64)
            self._old_exc = None if off is None else \
                ctypes.c_int32.from_address(_ctx_addr(self._ctx) + off)
        if self._old_exc is not None:
            # no exception is in flight when the VMM writes the state back: QEMU's #DF
            # bookkeeping (old_exception_offset) must not survive into the next run
            self._old_exc.value = -1
        return self._base

    # ---- one read, patches, one write (event delivery) ------------------------------
    def begin(self) -> Env:
        """The CPU state now, as a structure to read and patch; `commit()` writes it back.
        (Pending register writes of the vCPU must be flushed first.)"""
        self._load()
        return self._env

    def efer_of(self) -> int:
        """EFER in the state `begin()` read."""
        return self._u64(_EFER_OFFSET)

    def commit(self) -> None:
        self.uc.context_restore(self._ctx)

    def mode_bits(self) -> tuple[int, int, int]:
        """(hflags, CS base, EFLAGS): what the current mode, CPL and linear RIP need."""
        b = self._load()
        return (ctypes.c_uint32.from_address(b + _HFLAGS).value,
                ctypes.c_uint64.from_address(b + _SEGS + CS * _SEG_SIZE + 8).value,
                ctypes.c_uint64.from_address(b + _EFLAGS).value)

    def _u32(self, off: int) -> int:
        return ctypes.c_uint32.from_address(self._base + off).value

    def _u64(self, off: int) -> int:
        return ctypes.c_uint64.from_address(self._base + off).value

    # ---- reading ---------------------------------------------------------------
    def snapshot(self) -> "Snapshot":
        b = self._load()
        raw = ctypes.string_at(b + _EFLAGS, _CR + 8 - _EFLAGS)
        eflags = struct.unpack_from("<Q", raw, 0)[0]
        hf = struct.unpack_from("<I", raw, _HFLAGS - _EFLAGS)[0]
        segs = [_SEG.unpack_from(raw, _SEGS - _EFLAGS + i * _SEG_SIZE) for i in range(8)]
        cr0 = struct.unpack_from("<Q", raw, _CR - _EFLAGS)[0]
        return Snapshot(hf, [(sel, base, limit, fl) for sel, base, limit, fl in segs], cr0, eflags)

    # ---- writing ---------------------------------------------------------------
    def set_xcr0(self, value: int) -> None:
        """XCR0 as XSETBV writes it (the VMM traps XSETBV: it is an unconditional exit)."""
        global _XCR0_OFFSET
        if _XCR0_OFFSET is None:
            _XCR0_OFFSET = _find_xcr0_offset(self.env)
        self._load()
        ctypes.c_uint64.from_address(self._base + _XCR0_OFFSET).value = value
        self.uc.context_restore(self._ctx)

    def set_cr2(self, value: int) -> None:
        """CR2 as the guest last saw it (and no exception in flight): what the VMM puts back
        after an engine call faulted inside itself (Vcpu._tb_drop)."""
        self._load()
        self._env.cr[2] = value
        self.uc.context_restore(self._ctx)

    def set_efer(self, value: int) -> None:
        """EFER as written, LMA included (WRMSR keeps LMA; only a mode switch sets it), with
        hflags.LMA to match: how a VMM loads the guest's EFER at VM entry."""
        self._load()
        ctypes.c_uint64.from_address(self._base + _EFER_OFFSET).value = value
        hf = self._u32(_HFLAGS) & ~HF_LMA
        if value & (1 << 10):
            hf |= HF_LMA
        ctypes.c_uint32.from_address(self._base + _HFLAGS).value = hf
        self.uc.context_restore(self._ctx)

    def load_segments(self, loads: dict[int, tuple[int, int, int, int]],
                      cpl: int | None = None) -> None:
        """Load segment registers (index -> (selector, base, limit, flags)) and recompute
        the mode bits of hflags the way the processor does when CS/SS change."""
        self._load()
        self.patch_segments(loads, cpl)
        self.uc.context_restore(self._ctx)

    def patch_segments(self, loads: dict[int, tuple[int, int, int, int]],
                       cpl: int | None = None) -> int:
        """`load_segments` on the state `begin()` read, without writing it back; returns the
        new hflags."""
        env = self._env
        segs = env.segs
        for i, (sel, base, limit, flags) in loads.items():
            c = segs[i]
            c.selector = sel & 0xFFFF
            c.base = base & 0xFFFFFFFFFFFFFFFF
            c.limit = limit & 0xFFFFFFFF
            c.flags = flags & 0xFFFFFFFF
        hf = env.hflags
        cr0 = env.cr[0]
        eflags = env.eflags
        cs_flags = segs[CS].flags
        ss_flags = segs[SS].flags
        hf &= ~(HF_CS32 | HF_SS32 | HF_CS64 | HF_ADDSEG | HF_CPL_MASK | HF_PE)
        if cr0 & 1:
            hf |= HF_PE
        if hf & HF_LMA and cs_flags & DESC_L:
            hf |= HF_CS32 | HF_SS32 | HF_CS64
        else:
            if cs_flags & DESC_B:
                hf |= HF_CS32
            if ss_flags & DESC_B:
                hf |= HF_SS32
        if cpl is None:
            cpl = (ss_flags >> DESC_DPL_SHIFT) & 3 if cr0 & 1 and not eflags & (1 << 17) else \
                (3 if eflags & (1 << 17) else 0)
        hf |= cpl & 3
        if not hf & HF_CS64:
            if not cr0 & 1 or eflags & (1 << 17) or not hf & HF_CS32:
                hf |= HF_ADDSEG
            elif segs[DS].base or segs[ES].base or segs[SS].base:
                hf |= HF_ADDSEG
        env.hflags = hf
        return hf


def mode_of(hflags: int, eflags: int) -> int:
    """Code size from QEMU's hflags: 16 (real, virtual-8086, 16-bit segment), 32 or 64."""
    if hflags & HF_CS64:
        return 64
    if not hflags & HF_PE or eflags & (1 << 17):
        return 16
    return 32 if hflags & HF_CS32 else 16


class Snapshot:
    """The hidden state at one moment."""

    __slots__ = ("hflags", "segs", "cr0", "eflags")

    def __init__(self, hflags: int, segs: list, cr0: int, eflags: int):
        self.hflags, self.segs, self.cr0, self.eflags = hflags, segs, cr0, eflags

    @property
    def cpl(self) -> int:
        return self.hflags & HF_CPL_MASK

    @property
    def mode(self) -> int:
        """Code size: 16 (real, virtual-8086 or a 16-bit segment), 32 or 64."""
        return mode_of(self.hflags, self.eflags)

    @property
    def real(self) -> bool:
        return not self.hflags & HF_PE

    @property
    def long(self) -> bool:
        return bool(self.hflags & HF_LMA)

    def base(self, seg: int) -> int:
        return self.segs[seg][1]
