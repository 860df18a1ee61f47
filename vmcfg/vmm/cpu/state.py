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
        b = self._base
        for i, (sel, base, limit, flags) in loads.items():
            o = b + _SEGS + i * _SEG_SIZE
            ctypes.c_uint32.from_address(o).value = sel & 0xFFFF
            ctypes.c_uint64.from_address(o + 8).value = base & 0xFFFFFFFFFFFFFFFF
            ctypes.c_uint32.from_address(o + 16).value = limit & 0xFFFFFFFF
            ctypes.c_uint32.from_address(o + 20).value = flags & 0xFFFFFFFF
        hf = self._u32(_HFLAGS)
        cr0 = self._u64(_CR)
        eflags = self._u64(_EFLAGS)
        cs_flags = self._u32(_SEGS + CS * _SEG_SIZE + 20)
        ss_flags = self._u32(_SEGS + SS * _SEG_SIZE + 20)
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
            else:
                bases = [self._u64(_SEGS + s * _SEG_SIZE + 8) for s in (DS, ES, SS)]
                if any(bases):
                    hf |= HF_ADDSEG
        ctypes.c_uint32.from_address(b + _HFLAGS).value = hf
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
