"""Exception and interrupt delivery (SDM Vol. 3 ch. 6): the one place an event enters the guest.

``deliver_event`` takes an event (vector, type, error code, the linear address
to return to) and does what the processor does: through the real-mode IVT, or
through a protected-mode or long-mode IDT gate with the privilege checks of
the gate and of the target code segment, a stack switch through the TSS when
the CPL changes (SS:ESP from the 32-bit TSS, RSPn or an IST stack from the
64-bit TSS), the frame with SS:RSP, RFLAGS, CS:RIP and the error code, and
the RFLAGS bits cleared.  A fault while doing so raises ``DeliveryFault``
with the architectural exception; the caller turns it into #DF or a triple
fault (``nested``).
"""

from __future__ import annotations

import ctypes
import struct

from ...vmx.exits import CONTRIBUTORY_VECTORS, FAULT_VECTORS, InterruptionType, Vector
from .paging import PageFault, translate
from .state import (CS, DESC_B, DESC_CS, DESC_DPL_SHIFT, DESC_L, DESC_P, DESC_S, HF_CPL_MASK,
                    HF_LMA, HF_PE, REAL_MODE_FLAGS, SS, descriptor_cache)

TF, IF, NT, RF, VM, AC = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17, 1 << 18
SOFTWARE = (InterruptionType.SW_INTERRUPT, InterruptionType.SW_EXCEPTION)
CR4_SMAP = 1 << 21
_MASK64 = (1 << 64) - 1


class DeliveryFault(Exception):
    """A fault raised while delivering an event (vector, error code, CR2 for #PF)."""

    def __init__(self, vector: int, error_code: int | None = 0, cr2: int | None = None):
        super().__init__(f"vector {vector}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


def nested(first: int, second: int) -> str:
    """What a fault `second` raised while delivering `first` becomes (SDM table 6-5):
    'double' (#DF), 'triple' (shutdown) or 'serial' (deliver `second`)."""
    if first == Vector.DF:
        return "triple"
    c1 = first in CONTRIBUTORY_VECTORS
    c2 = second in CONTRIBUTORY_VECTORS
    if (c1 and c2) or (first == Vector.PF and (c2 or second == Vector.PF)):
        return "double"
    return "serial"


_uclib = None


def _lib():
    global _uclib
    if _uclib is None:
        from unicorn.unicorn_py3.unicorn import uclib
        _uclib = uclib
    return _uclib


class _Mem:
    """Guest-linear memory access for one delivery (supervisor accesses).

    At CPL 0 without SMAP the engine's own MMU translates (one call, and it sets the
    accessed/dirty bits as the processor does); where it refuses (a write to a page the VMM
    protects, a supervisor-only case it cannot model at this CPL) or anywhere else, the
    page walk of cpu.paging decides, with the architectural #PF error code."""

    def __init__(self, v, cr0: int, cr3: int, cr4: int, efer: int, fast: bool):
        self.v, self.cr0, self.cr3, self.cr4, self.efer = v, cr0, cr3, cr4, efer
        self.paging = bool(cr0 & (1 << 31))
        self.fast = fast and self.paging
        lib = _lib()
        self._uch = v.uc._uch
        self._mem_read = lib.uc_mem_read
        sc = v.__dict__.get("_delivery_scratch")
        if sc is None:                # ctypes buffers made once per vCPU, not per delivery
            out = ctypes.c_uint64()
            sc = v._delivery_scratch = (ctypes.create_string_buffer(16), out, ctypes.byref(out))
        self._buf, self._out, self._outref = sc
        if self.fast:
            self._tr = lib.uc_vmem_translate

    def _phys(self, lin: int, write: bool) -> int:
        if not self.paging:
            return lin & 0xFFFFFFFF if not self.efer & (1 << 10) else lin
        if self.fast and not self._tr(self._uch, ctypes.c_uint64(lin & _MASK64),
                                      ctypes.c_int(2 if write else 1), self._outref):
            return self._out.value
        try:
            return translate(self.v.read_phys, lin, cr0=self.cr0, cr3=self.cr3, cr4=self.cr4,
                             efer=self.efer, write=write)
        except PageFault as f:
            raise DeliveryFault(Vector.PF, f.error_code, f.address) from None

    def read(self, lin: int, n: int) -> bytes:
        out = b""
        while n:
            chunk = min(n, 0x1000 - (lin & 0xFFF))
            try:
                pa = self._phys(lin, False)
                if chunk <= 16 and pa + chunk <= self.v.memory and not self._mem_read(
                        self._uch, ctypes.c_uint64(pa), self._buf, ctypes.c_uint64(chunk)):
                    out += self._buf.raw[:chunk]
                else:
                    out += self.v.read_phys(pa, chunk)
            except Exception as e:
                if isinstance(e, DeliveryFault):
                    raise
                raise DeliveryFault(Vector.GP, 0) from None
            lin += chunk
            n -= chunk
        return out

    def write(self, lin: int, data: bytes) -> None:
        while data:
            chunk = min(len(data), 0x1000 - (lin & 0xFFF))
            try:
                self.v.write_phys(self._phys(lin, True), data[:chunk])
            except Exception as e:
                if isinstance(e, DeliveryFault):
                    raise
                raise DeliveryFault(Vector.GP, 0) from None
            lin += chunk
            data = data[chunk:]


def _seg(c) -> tuple[int, int, int, int]:
    return c.selector, c.base, c.limit, c.flags


def _descriptor(mem: _Mem, env, sel: int, vector_ec: int) -> tuple[int, int]:
    """The two dwords of the GDT/LDT descriptor `sel`; #GP(sel) past the table limit."""
    table = env.ldt if sel & 4 else env.gdt
    base, limit = table.base, table.limit
    idx = sel & ~7
    if idx + 7 > limit or (sel & ~3) == 0:
        raise DeliveryFault(Vector.GP, (sel & ~3) | vector_ec)
    return struct.unpack("<II", mem.read(base + idx, 8))


def deliver_event(v, vector: int, itype: int, error_code: int | None, ret_lin: int) -> None:
    """Deliver one event; `ret_lin` is the linear address the handler returns to.

    The CPU state is read once (one context copy: registers, descriptor caches, control
    registers, EFER), patched, and written back once; RFLAGS and RIP go through the vCPU's
    batched register writes."""
    v.flush()
    rflags = v.rr_rflags()                # with the arithmetic flags (the engine keeps them lazily)
    st = v.cpu_state
    env = st.begin()
    hf = env.hflags
    cr0, cr3, cr4 = env.cr[0], env.cr[3], env.cr[4]
    efer = st.efer_of()
    cpl = hf & HF_CPL_MASK
    mem = _Mem(v, cr0, cr3, cr4, efer, fast=cpl == 0 and not cr4 & CR4_SMAP)
    idt_base, idt_limit = env.idt.base, env.idt.limit
    ext = 0 if itype in SOFTWARE or itype == InterruptionType.PRIV_SW_EXCEPTION else 1
    cs_sel, cs_base = env.segs[CS].selector, env.segs[CS].base
    ret = (ret_lin - cs_base) & _MASK64
    # the RFLAGS image a protected-mode frame pushes: a fault sets RF in it (FAULT_VECTORS);
    # other events push it clear (the engine leaves RF set until the end of the block after
    # an IRET that restored it, where hardware clears it after one instruction)
    pushed = rflags | RF if itype == InterruptionType.HW_EXCEPTION and vector in FAULT_VECTORS \
        else rflags & ~RF
    old_rsp = env.regs[4]
    if not hf & HF_PE:
        if vector * 4 + 3 > idt_limit:
            raise DeliveryFault(Vector.GP, 0)
        ip, cs = struct.unpack("<HH", mem.read(idt_base + vector * 4, 4))
        ss_base = env.segs[SS].base
        sp = old_rsp & 0xFFFF
        frame = b""
        for val in (rflags & 0xFFFF, cs_sel, ret & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            frame = struct.pack("<H", val) + frame
        if sp <= 0xFFFA:
            mem.write(ss_base + sp, frame)
        else:                              # the frame wraps around the 64 KiB segment
            for i in range(3):
                mem.write(ss_base + ((sp + 2 * i) & 0xFFFF), frame[2 * i:2 * i + 2])
        hf = st.patch_segments({CS: (cs, cs << 4, 0xFFFF, REAL_MODE_FLAGS)}, cpl=0)
        env.regs[4] = (old_rsp & ~0xFFFF) | sp
        st.commit()
        v.after_state_load((hf, cs << 4, env.eflags & ~VM))
        v.set_rflags_raw(rflags & ~(IF | TF | AC))
        v.set_rip_reg(ip)
        return
    long_mode = bool(hf & HF_LMA)
    gate_size = 16 if long_mode else 8
    gate_ec = vector * 8 + 2 + ext
    if vector * gate_size + gate_size - 1 > idt_limit:
        raise DeliveryFault(Vector.GP, gate_ec)
    raw = mem.read(idt_base + vector * gate_size, gate_size)
    e1, e2 = struct.unpack_from("<II", raw)
    gtype = (e2 >> 8) & 0x1F
    gdpl = (e2 >> 13) & 3
    if long_mode:
        if gtype not in (0x0E, 0x0F):
            raise DeliveryFault(Vector.GP, gate_ec)
    elif gtype not in (0x06, 0x07, 0x0E, 0x0F):
        if gtype == 0x05:
            v.unsupported("a task gate in the IDT (hardware task switch)")
        raise DeliveryFault(Vector.GP, gate_ec)
    if itype in SOFTWARE and gdpl < cpl:
        raise DeliveryFault(Vector.GP, gate_ec)
    if not e2 & DESC_P:
        raise DeliveryFault(Vector.NP, gate_ec)
    sel = (e1 >> 16) & 0xFFFF
    offset = (e1 & 0xFFFF) | (e2 & 0xFFFF0000)
    if long_mode:
        offset |= struct.unpack_from("<I", raw, 8)[0] << 32
    c1, c2 = _descriptor(mem, env, sel, ext)
    cdpl = (c2 >> DESC_DPL_SHIFT) & 3
    if not (c2 & DESC_S and c2 & DESC_CS) or cdpl > cpl:
        raise DeliveryFault(Vector.GP, (sel & ~3) | ext)
    if not c2 & DESC_P:
        raise DeliveryFault(Vector.NP, (sel & ~3) | ext)
    if long_mode and (not c2 & DESC_L or c2 & DESC_B):
        raise DeliveryFault(Vector.GP, (sel & ~3) | ext)
    conforming = bool(c2 & (1 << 10))
    new_cpl = cpl if conforming else cdpl
    tr = env.tr
    tr_sel, tss_base, tss_limit = tr.selector, tr.base, tr.limit
    old_ss = env.segs[SS].selector
    loads = {}
    if long_mode:
        ist = e2 & 7
        if ist or new_cpl < cpl:
            off = 0x24 + (ist - 1) * 8 if ist else 4 + new_cpl * 8
            if off + 7 > tss_limit:
                raise DeliveryFault(Vector.TS, (tr_sel & ~3) | ext)
            rsp = struct.unpack("<Q", mem.read(tss_base + off, 8))[0]
        else:
            rsp = old_rsp
        rsp &= ~0xF
        frame = [old_ss, old_rsp, pushed, cs_sel, ret]
        if error_code is not None:
            frame.append(error_code)
        rsp -= 8 * len(frame)
        mem.write(rsp, struct.pack("<%dQ" % len(frame), *reversed(frame)))
        if new_cpl != cpl:
            loads[SS] = (new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT)
        new_sp = rsp
    else:
        wide = gtype & 0x8
        word = 4 if wide else 2
        if new_cpl < cpl:
            off = 4 + new_cpl * 8
            if off + 5 > tss_limit:
                raise DeliveryFault(Vector.TS, (tr_sel & ~3) | ext)
            esp, ss = struct.unpack("<IH", mem.read(tss_base + off, 6))
            s1, s2 = _descriptor(mem, env, ss, ext)
            if (ss & 3) != new_cpl or ((s2 >> DESC_DPL_SHIFT) & 3) != new_cpl or \
                    not s2 & DESC_S or s2 & DESC_CS or not s2 & (1 << 9):
                raise DeliveryFault(Vector.TS, (ss & ~3) | ext)
            if not s2 & DESC_P:
                raise DeliveryFault(Vector.SS, (ss & ~3) | ext)
            ss_base, ss_limit, ss_flags = descriptor_cache(s1, s2)
            loads[SS] = (ss, ss_base, ss_limit, ss_flags)
            frame = [old_ss, old_rsp & 0xFFFFFFFF, pushed, cs_sel, ret]
            sp, sp_base, sp_32 = esp, ss_base, bool(ss_flags & DESC_B)
        else:
            frame = [pushed, cs_sel, ret]
            ss_c = env.segs[SS]
            sp, sp_base, sp_32 = old_rsp, ss_c.base, bool(ss_c.flags & DESC_B)
        if error_code is not None:
            frame.append(error_code)
        mask = 0xFFFFFFFF if sp_32 else 0xFFFF
        sp = (sp - word * len(frame)) & mask
        fmt = "<%d%s" % (len(frame), "I" if wide else "H")
        mem.write(sp_base + sp, struct.pack(fmt, *[x & (0xFFFFFFFF if wide else 0xFFFF)
                                                   for x in reversed(frame)]))
        new_sp = (old_rsp & ~mask) | sp if SS not in loads else sp
        if not wide:
            offset &= 0xFFFF
    cb, cl, cf = descriptor_cache(c1, c2)
    new_cs = (sel & ~3) | new_cpl
    cur = env.segs[CS]
    if not loads and new_cs == cur.selector and (cb, cl, cf) == (cur.base, cur.limit, cur.flags):
        # the gate's code segment is the one loaded and the stack stays: only RSP, RFLAGS
        # and RIP change (batched register writes, no state write-back)
        v.set_rsp(new_sp & _MASK64)
    else:
        loads[CS] = (new_cs, cb, cl, cf)
        # the frame is written: now the new state, in one write-back (the context copy taken
        # above is still current: the frame went to memory, not to registers)
        hf = st.patch_segments(loads, cpl=new_cpl)
        env.regs[4] = new_sp & _MASK64
        st.commit()
        v.after_state_load((hf, cb, env.eflags & ~VM))
    v.set_rflags_raw(rflags & ~(TF | NT | RF | VM | (IF if not gtype & 1 else 0)))
    v.set_rip_reg(offset)
