"""Guest registers through batched raw access, the current mode, control and
segment registers, and the CPU-side MSRs."""

from __future__ import annotations

from unicorn import x86_const as X
from ..cpu.state import HF_PE, mode_of
from ..outcome import RunEnd
from .common import MASK64, _CR, _GPR64, _reg_read, _reg_write, _reg_write_batch


class RegistersMixin:
    """Guest registers, the current mode, control registers and CPU MSRs (see the module doc)."""

    def rr(self, reg: int) -> int:
        v = self._pend.get(reg)
        if v is None:
            v = self._rcache.get(reg)
            if v is None:
                b = self._rbuf
                b.value = 0
                _reg_read(self._uch, reg, self._rref)
                v = self._rcache[reg] = b.value
        return v

    def rw(self, reg: int, value: int) -> None:
        """Register writes are batched; `flush()` sends them to the emulator."""
        self._pend[reg] = value & MASK64

    def flush(self) -> None:
        pend = self._pend
        if pend:
            # the PC goes last, through uc_reg_write: only that redirects a running guest
            pc = pend.pop(self._pc_reg, None)
            n = len(pend)
            if n:
                ids, vals = self._wids, self._wvals
                for i, (r, v) in enumerate(pend.items()):
                    ids[i] = r
                    vals[i].value = v
                _reg_write_batch(self._uch, ids, self._wptrs, n)
                pend.clear()
            if pc is not None:
                b = self._pcbuf
                b.value = pc
                _reg_write(self._uch, self._pc_reg, self._pcref)
        self._rcache.clear()

    def gpr(self, i: int, size: int = 8) -> int:
        v = self.rr(self._gprs[i] if i < len(self._gprs) else _GPR64[i])
        if size == 8 and self.mode != 64:
            size = 4
        return v & ((1 << (8 * size)) - 1)

    def set_gpr(self, i: int, value: int, size: int = 8) -> None:
        reg = self._gprs[i] if i < len(self._gprs) else _GPR64[i]
        if self.mode != 64 and size == 8:
            size = 4
        if size == 8 or (size == 4 and self.mode == 64):
            self.rw(reg, value & ((1 << (8 * size)) - 1))
        else:
            m = (1 << (8 * size)) - 1
            self.rw(reg, (self.rr(reg) & ~m) | (value & m))

    def _sync_mode(self) -> None:
        """Read the CPU's mode, CPL and CS base (after the guest ran: it may have switched
        between real, protected and long mode, or to another code segment)."""
        self.flush()
        hf, self.cs_base, eflags = self.cpu_state.mode_bits()
        self._hflags = hf
        self.mode = self.bitness = mode_of(hf, eflags)
        self._fxs.bits = self.bitness          # the native I/O path's sized forms follow it
        self.cpl = hf & 3
        self.real = not hf & HF_PE

    def _ip_mask(self) -> int:
        return MASK64 if self.mode == 64 else 0xFFFFFFFF if self.mode == 32 else 0xFFFF

    @property
    def rip(self) -> int:
        """Linear address of the next instruction."""
        ip = self.rr(self._rip_reg)
        if self.real:
            return ((self.rr(X.UC_X86_REG_CS) << 4) + (ip & 0xFFFF)) & 0xFFFFF
        return (self.cs_base + ip) & (MASK64 if self.mode == 64 else 0xFFFFFFFF)

    def _rip_value(self, linear: int) -> int:
        base = (self.rr(X.UC_X86_REG_CS) << 4) if self.real else self.cs_base
        return (linear - base) & self._ip_mask()

    def set_rip(self, linear: int) -> None:
        self.rw(self._rip_reg, self._rip_value(linear))

    def gdtr(self) -> tuple[int, int]:
        self.flush()
        g = self.uc.reg_read(X.UC_X86_REG_GDTR)
        return g[1], g[2]

    def idtr(self) -> tuple[int, int]:
        self.flush()
        g = self.uc.reg_read(X.UC_X86_REG_IDTR)
        return g[1], g[2]

    def efer(self) -> int:
        self.flush()
        return self.uc.msr_read(0xC0000080)

    def rr_rflags(self) -> int:
        return self.rr(self._rflags_reg)

    def rsp(self) -> int:
        return self.rr(X.UC_X86_REG_RSP)

    def set_rsp(self, v: int) -> None:
        self.rw(X.UC_X86_REG_RSP, v)

    def set_rflags_raw(self, v: int) -> None:
        self.rw(self._rflags_reg, v | 2)

    def rr_rip_reg(self) -> int:
        return self.rr(self._rip_reg)

    def set_rip_reg(self, v: int) -> None:
        self.rw(self._rip_reg, v)

    def after_state_load(self, mode_bits: tuple[int, int, int] | None = None) -> None:
        """The hidden state was rewritten (cpu.state): forget cached registers, re-read the mode
        (or take it from `mode_bits` = (hflags, CS base, EFLAGS) the writer already knows)."""
        self._rcache.clear()
        self._pend.clear()
        if mode_bits is None:
            self._sync_mode()
            return
        hf, self.cs_base, eflags = mode_bits
        self._hflags = hf
        self.mode = self.bitness = mode_of(hf, eflags)
        self._fxs.bits = self.bitness          # the native I/O path's sized forms follow it
        self.cpl = hf & 3
        self.real = not hf & HF_PE

    def unsupported(self, what: str) -> None:
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None, f"the guest needs {what}, which vmcfg does not emulate")

    @property
    def rflags(self) -> int:
        return self.rr(self._rflags_reg)

    def set_rflags(self, v: int) -> None:
        self.rw(self._rflags_reg, v | 2)

    def cr(self, n: int) -> int:
        if n == 8:      # devices: CR8 is TPR[7:4], the virtual TPR under use-TPR-shadow
            if self._on["primary.use_tpr_shadow"]:
                return self.vtpr >> 4
            return self.platform.lapic.tpr >> 4
        return self.rr(_CR[n])

    def set_cr(self, n: int, v: int) -> None:
        if n == 8:
            if self._on["primary.use_tpr_shadow"]:
                self.vtpr = (v & 0xF) << 4
            else:
                self.platform.lapic.write(0x80, (v & 0xF) << 4)
            return
        self.rw(_CR[n], v)

    def _cpu_msr_read(self, msr: int) -> int:
        self.flush()
        return self.uc.msr_read(msr)

    def _cpu_msr_write(self, msr: int, value: int) -> None:
        self.flush()
        self.uc.msr_write(msr, value)
