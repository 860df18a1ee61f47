"""The emulated platform: serial console, debug-exit port, CPUID model, MSR file.

* COM1, a 16550-style UART at I/O 0x3F8-0x3FF: a write to THR (0x3F8 with
  DLAB=0) appends a byte to the console; LSR (0x3FD) always reports the
  transmitter empty and holding register empty (0x60); reads of RBR return 0;
  the other registers read back what was written.
* isa-debug-exit at I/O 0xF4 (QEMU-compatible): a write of value v ends the
  run with guest exit code v and process exit status (v << 1) | 1.
* an 8259-style interrupt controller (PIC) at I/O 0x20/0x21: vector base 0x20
  (ICW2 of an ICW1..ICW4 init sequence changes it), IMR at 0x21 (all IRQs
  unmasked at start), OCW2 non-specific EOI (0x20 to port 0x20), OCW3 reads of
  IRR/ISR; fully nested priority (IRQ0 highest);
* an 8254-style PIT, channel 0 at I/O 0x40 (command 0x43), wired to IRQ0: its
  input clock is the virtual TSC (one count per TSC tick); modes 2 and 3
  (periodic: an IRQ0 every N ticks) and mode 0 (one shot); lobyte/hibyte
  access; a count of 0 means 65536.  Programming starts the count at the
  current virtual TSC.
* Every other port reads as all ones and ignores writes (no device).
"""

from __future__ import annotations

import struct
from typing import Callable

SERIAL_BASE = 0x3F8
DEBUG_EXIT_PORT = 0xF4


class DebugExit(Exception):
    """Raised by the platform when the guest writes the debug-exit port."""

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value


class Serial:
    def __init__(self, sink: Callable[[str], None] | None = None):
        self.regs = bytearray(8)
        self.regs[3] = 0x03     # LCR: 8N1
        self.out = bytearray()
        self.sink = sink

    def read(self, off: int) -> int:
        if off == 5:            # LSR: THR empty | transmitter empty
            return 0x60
        if off == 0 and not self.regs[3] & 0x80:
            return 0            # RBR: nothing received
        if off == 2:            # IIR: no interrupt pending
            return 0x01
        return self.regs[off]

    def write(self, off: int, value: int) -> None:
        if off == 0 and not self.regs[3] & 0x80:
            self.out.append(value & 0xFF)
            if self.sink is not None:
                self.sink(chr(value & 0xFF))
            return
        if off != 5:
            self.regs[off] = value & 0xFF

    @property
    def text(self) -> str:
        return self.out.decode("latin-1")


class MachineEnd(Exception):
    """Raised by the platform when the guest powers off or resets the machine."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status            # "poweroff" or "reboot"
        self.message = message


KBC_COMMAND_PORT = 0x64          # 8042 keyboard controller: command 0xFE pulses the reset line
KBC_RESET = 0xFE
RESET_CONTROL_PORT = 0xCF9       # PIIX/ICH reset control register: bit 2 = do the reset


def check_machine_end(port: int, size: int, value: int) -> None:
    """The reset writes every PC knows (ACPI poweroff is the ACPI device's)."""
    if port == KBC_COMMAND_PORT and value & 0xFF == KBC_RESET:
        raise MachineEnd("reboot", "the guest reset the machine (keyboard controller "
                         "command 0xFE)")
    if port == RESET_CONTROL_PORT and size == 1 and value & 0x04:
        raise MachineEnd("reboot", f"the guest reset the machine (wrote {value & 0xFF:#x} "
                         "to the reset control register 0xCF9)")


PIC_PORTS = (0x20, 0x21)
PIT_PORTS = (0x40, 0x41, 0x42, 0x43)


class Pic:
    """The part of an 8259A a single-CPU guest needs: IRR/ISR/IMR, vector base, EOI."""

    def __init__(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.base = 0x20
        self._init_step = 0          # 0 = operational; 2..4 = expecting ICW2..ICW4
        self._icw4 = False
        self._read_isr = False

    def raise_irq(self, irq: int) -> None:
        self.irr |= 1 << irq

    def pending(self) -> int | None:
        """Vector of the highest-priority deliverable IRQ, or None."""
        req = self.irr & ~self.imr & 0xFF
        if not req:
            return None
        irq = (req & -req).bit_length() - 1
        if self.isr and (self.isr & -self.isr).bit_length() - 1 <= irq:
            return None              # an equal or higher-priority IRQ is in service
        return self.base + irq

    def ack(self) -> int | None:
        """INTA: move the highest-priority IRQ from IRR to ISR; returns its vector."""
        v = self.pending()
        if v is None:
            return None
        irq = v - self.base
        self.irr &= ~(1 << irq)
        self.isr |= 1 << irq
        return v

    def read(self, port: int) -> int:
        if port == 0x21:
            return self.imr
        return self.isr if self._read_isr else self.irr

    def write(self, port: int, value: int) -> None:
        value &= 0xFF
        if port == 0x20:
            if value & 0x10:                       # ICW1
                self._init_step, self._icw4 = 2, bool(value & 1)
                self.imr = self.isr = self.irr = 0
            elif value & 0x08:                     # OCW3
                if value & 2:
                    self._read_isr = bool(value & 1)
            elif (value >> 5) & 7 == 1:            # non-specific EOI
                if self.isr:
                    self.isr &= self.isr - 1       # clear the highest-priority in-service bit
            elif (value >> 5) & 7 == 3:            # specific EOI
                self.isr &= ~(1 << (value & 7))
            return
        if self._init_step == 2:
            self.base = value & 0xF8
            self._init_step = 3
        elif self._init_step == 3:
            self._init_step = 4 if self._icw4 else 0
        elif self._init_step == 4:
            self._init_step = 0
        else:
            self.imr = value


class Pit:
    """8254 channel 0 on the virtual TSC (one count per tick), wired to IRQ0."""

    def __init__(self) -> None:
        self.mode = 0
        self.reload = 0
        self.next_fire: int | None = None   # virtual TSC of the next IRQ0
        self._latch_lo: int | None = None
        self._access = 3

    def write(self, port: int, value: int, now: int) -> None:
        value &= 0xFF
        if port == 0x43:
            if value >> 6 == 0:                    # channel 0
                self._access = (value >> 4) & 3 or 3
                self.mode = (value >> 1) & 7
                self._latch_lo = None
                self.next_fire = None
            return
        if port != 0x40:
            return
        if self._access == 3 and self._latch_lo is None:
            self._latch_lo = value
            return
        if self._access == 3:
            n = self._latch_lo | (value << 8)
            self._latch_lo = None
        elif self._access == 1:
            n = value
        else:
            n = value << 8
        self.reload = n or 0x10000
        self.next_fire = now + self.reload

    def read(self, now: int) -> int:
        if self.next_fire is None:
            return 0
        return max(0, self.next_fire - now) & 0xFF

    def tick(self, now: int, pic: "Pic") -> None:
        """Raise IRQ0 for every expiry up to `now` (periods missed collapse into one IRR bit)."""
        if self.next_fire is None or now < self.next_fire:
            return
        pic.raise_irq(0)
        if self.mode in (2, 3, 6, 7):
            self.next_fire += ((now - self.next_fire) // self.reload + 1) * self.reload
        else:
            self.next_fire = None


class Platform:
    """Port I/O dispatch for the emulated board."""

    def __init__(self, console_sink: Callable[[str], None] | None = None):
        self.serial = Serial(console_sink)
        self.pic = Pic()
        self.pit = Pit()
        self.clock: Callable[[], int] = lambda: 0     # the virtual TSC (set by the vCPU)
        self.changed = False                          # interrupt state touched by I/O

    def tick(self, now: int) -> None:
        self.pit.tick(now, self.pic)

    def next_event(self) -> int | None:
        """Virtual TSC of the next device interrupt, or None."""
        return self.pit.next_fire

    def io_read(self, port: int, size: int) -> int:
        v = 0
        for i in range(size):
            p = (port + i) & 0xFFFF
            if SERIAL_BASE <= p < SERIAL_BASE + 8:
                b = self.serial.read(p - SERIAL_BASE)
            elif p in PIC_PORTS:
                b = self.pic.read(p)
            elif p == 0x40:
                b = self.pit.read(self.clock())
            else:
                b = 0xFF
            v |= b << (8 * i)
        return v

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == DEBUG_EXIT_PORT:
            raise DebugExit(value & ((1 << (8 * size)) - 1))
        if port in (KBC_COMMAND_PORT, RESET_CONTROL_PORT):
            check_machine_end(port, size, value)
        for i in range(size):
            p = (port + i) & 0xFFFF
            b = (value >> (8 * i)) & 0xFF
            if SERIAL_BASE <= p < SERIAL_BASE + 8:
                self.serial.write(p - SERIAL_BASE, b)
            elif p in PIC_PORTS:
                self.pic.write(p, b)
                self.changed = True
            elif p in PIT_PORTS:
                self.pit.write(p, b, self.clock())
                self.changed = True


# ---- CPUID ------------------------------------------------------------------------

def _regs(s: str) -> tuple[int, int, int]:
    b = s.encode().ljust(12, b"\0")[:12]
    return struct.unpack("<III", b)


HYPERVISOR_SIGNATURE = "vmcfg cvmm"
BRAND = "vmcfg cvmm virtual CPU @ 1 instruction/tick"


class CpuidModel:
    """CPUID of the cvmm virtual CPU plus the profile's ``[cpuid]`` overrides.

    Reports what the emulator implements: GenuineIntel family 6, x87/SSE..SSE4.2,
    TSC, MSR, PAE, CX8/CX16, CMOV, POPCNT, RDRAND/RDSEED (deterministic),
    the hypervisor bit, long mode, NX, RDTSCP (when secondary.enable_rdtscp is
    on) and INVPCID (when secondary.enable_invpcid is on).  VMX is not
    offered to the guest.  Leaf 0x40000000 names the hypervisor
    ("vmcfg cvmm"); 0x40000001 reports the virtual TSC rate (ticks per
    retired instruction) and the cost of one VM exit in ticks.
    """

    def __init__(self, overrides: dict | None = None, *, rdtscp: bool = False,
                 invpcid: bool = False, tsc_per_insn: int = 1, exit_cost: int = 0,
                 tsc_hz: int = 1_000_000_000):
        v = _regs("GenuineIntel")
        self.max_basic = 0x16
        t: dict[tuple[int, int], list[int]] = {}
        t[(0, 0)] = [self.max_basic, v[0], v[2], v[1]]
        fms = (6 << 8) | (0x5 << 4) | 4 | (0x5 << 16)          # family 6, model 0x55, stepping 4
        ecx1 = (1 << 0) | (1 << 1) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23) \
            | (1 << 30) | (1 << 31)
        edx1 = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 13) | (1 << 15) \
            | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
        t[(1, 0)] = [fms, (1 << 16) | (8 << 8), ecx1, edx1]
        ebx7 = (1 << 18)                                      # RDSEED
        if invpcid:
            ebx7 |= 1 << 10
        t[(7, 0)] = [0, ebx7, 0, 0]
        # TSC and core crystal clock: TSC = ECX * EBX / EAX = the profile's tsc.frequency
        # (the crystal runs at the TSC rate), so a kernel takes the frequency without calibrating
        k = 1 if tsc_hz < (1 << 32) else 1000
        t[(0x15, 0)] = [1, k, (tsc_hz // k) & 0xFFFFFFFF, 0]
        mhz = max(1, tsc_hz // 1_000_000) & 0xFFFF
        t[(0x16, 0)] = [mhz, mhz, 100, 0]                       # base, max, bus MHz
        ext_max = 0x80000008
        t[(0x80000000, 0)] = [ext_max, 0, 0, 0]
        edx_ext = (1 << 11) | (1 << 20) | (1 << 29)             # SYSCALL, NX, LM
        if rdtscp:
            edx_ext |= 1 << 27
        t[(0x80000001, 0)] = [0, 0, 1, edx_ext]                 # LAHF/SAHF in 64-bit
        brand = BRAND.encode().ljust(48, b"\0")
        for i in range(3):
            t[(0x80000002 + i, 0)] = list(struct.unpack("<IIII", brand[16 * i:16 * i + 16]))
        t[(0x80000007, 0)] = [0, 0, 0, 1 << 8]                  # invariant TSC
        t[(0x80000008, 0)] = [0x3027, 0, 0, 0]                  # 39-bit physical, 48-bit linear
        h = _regs(HYPERVISOR_SIGNATURE)
        t[(0x40000000, 0)] = [0x40000001, h[0], h[1], h[2]]
        t[(0x40000001, 0)] = [tsc_per_insn, exit_cost, 0, 0]
        self.table = t
        self.subleaf_leaves = {4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F}
        for key, regs in (overrides or {}).items():
            leaf, sub = _parse_leaf(key)
            cur = list(self.table.get((leaf, sub), [0, 0, 0, 0]))
            for i, r in enumerate(("eax", "ebx", "ecx", "edx")):
                if r in regs and regs[r] is not None:
                    cur[i] = int(regs[r]) & 0xFFFFFFFF
            self.table[(leaf, sub)] = cur
            if "." in str(key):
                self.subleaf_leaves.add(leaf)
            if leaf == 0:
                self.max_basic = cur[0]

    def query(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        leaf &= 0xFFFFFFFF
        sub = subleaf & 0xFFFFFFFF if leaf in self.subleaf_leaves else 0
        r = self.table.get((leaf, sub))
        if r is not None:
            return tuple(r)
        ext_max = self.table.get((0x80000000, 0), [0])[0]
        hv_max = self.table.get((0x40000000, 0), [0])[0]
        in_range = (leaf <= self.max_basic or 0x80000000 <= leaf <= ext_max
                    or 0x40000000 <= leaf <= hv_max)
        if in_range:
            return (0, 0, 0, 0)
        # Intel: a leaf above the maximum returns the highest basic leaf's data.
        return tuple(self.table.get((self.max_basic, 0), [0, 0, 0, 0]))


def _parse_leaf(key) -> tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    if isinstance(key, int):
        return key, 0
    s = str(key).strip()
    if "." in s:
        a, b = s.split(".", 1)
        return int(a, 0), int(b, 0)
    return int(s, 0), 0


# ---- the virtual MSR file -----------------------------------------------------------

class MsrFault(Exception):
    """RDMSR/WRMSR of an MSR the virtual CPU does not have (#GP(0))."""


class MsrFile:
    """MSRs of the cvmm virtual CPU.

    Plain storage for the architectural MSRs a small kernel touches; MSRs that
    live in the emulated CPU (EFER, FS/GS base, SYSENTER, STAR...) are
    forwarded to it; IA32_TSC reads and writes the virtual TSC.  Any other
    index raises #GP(0), like real hardware.
    """

    STORED: dict[int, int] = {
        0x1B: 0xFEE00900,          # IA32_APIC_BASE (BSP, enabled)
        0x3A: 0x1,                 # IA32_FEATURE_CONTROL (locked, VMX off)
        0x8B: 0,                   # IA32_BIOS_SIGN_ID
        0xFE: 0x508,               # IA32_MTRRCAP
        0x1A0: 0x1,                # IA32_MISC_ENABLE (fast strings)
        0x277: 0x0007040600070406,  # IA32_PAT
        0x2FF: 0xC06,              # IA32_MTRR_DEF_TYPE
        0x48: 0,                   # IA32_SPEC_CTRL
        0x10A: 0,                  # IA32_ARCH_CAPABILITIES
        0xC0000103: 0,             # IA32_TSC_AUX
    }
    CPU: frozenset[int] = frozenset({0x174, 0x175, 0x176, 0xC0000080, 0xC0000081, 0xC0000082,
                                     0xC0000083, 0xC0000084, 0xC0000100, 0xC0000101,
                                     0xC0000102})
    READ_ONLY: frozenset[int] = frozenset({0xFE, 0x10A, 0x3A})
    TSC = 0x10

    def __init__(self, cpu_read: Callable[[int], int], cpu_write: Callable[[int, int], None],
                 tsc_read: Callable[[], int], tsc_write: Callable[[int], None]):
        self.values = dict(self.STORED)
        self._cpu_read, self._cpu_write = cpu_read, cpu_write
        self._tsc_read, self._tsc_write = tsc_read, tsc_write

    def read(self, msr: int) -> int:
        if msr == self.TSC:
            return self._tsc_read()
        if msr in self.CPU:
            return self._cpu_read(msr)
        if msr in self.values:
            return self.values[msr]
        raise MsrFault(msr)

    def write(self, msr: int, value: int) -> None:
        value &= (1 << 64) - 1
        if msr == self.TSC:
            self._tsc_write(value)
        elif msr in self.CPU:
            if msr == 0xC0000080 and value & ~0xD01:
                raise MsrFault(msr)     # reserved EFER bits
            self._cpu_write(msr, value)
        elif msr in self.values and msr not in self.READ_ONLY:
            self.values[msr] = value
        else:
            raise MsrFault(msr)

    def known(self, msr: int) -> bool:
        return msr == self.TSC or msr in self.CPU or msr in self.values
