"""APIC virtualization: the virtual-APIC page and what the processor does with it.

The SDM's chapter "APIC Virtualization and Virtual Interrupts" (vol. 3C ch. 30 in
recent editions, 29 in older ones), as the controls of one profile select it:

* use TPR shadow -- VTPR (offset 0x80) and TPR virtualization: below the TPR threshold a
  trap-like TPR-below-threshold exit (reason 43), or with virtual-interrupt delivery PPR
  virtualization and the evaluation of pending virtual interrupts;
* virtualize APIC accesses -- guest accesses to the APIC-access page (by default the
  local APIC's page, 0xFEE00000) are virtualized against the virtual-APIC page or cause
  fault-like APIC-access exits (reason 44, qualification = access type << 12 | offset);
* virtualize x2APIC mode -- RDMSR/WRMSR of 0x800-0x8FF (those the MSR bitmap lets through)
  for TPR, and with virtual-interrupt delivery EOI and SELF IPI, go to the virtual-APIC page;
* APIC-register virtualization -- reads of most APIC registers come from the virtual-APIC
  page; virtualized writes other than TPR/EOI/self-IPI end in trap-like APIC-write exits
  (reason 56, qualification = the register's offset);
* virtual-interrupt delivery -- VIRR/VISR/VPPR with RVI/SVI (guest interrupt status),
  delivery through the guest IDT when RVI[7:4] > VPPR[7:4], virtual EOI and the EOI-exit
  bitmap (EOI-induced exit, reason 45, qualification = the vector);
* posted interrupts -- an external interrupt with the notification vector moves the
  descriptor's PIR into VIRR (ON cleared, the local APIC's EOI written) without an exit.

This module is the processor's side only: it never touches the guest's CPU registers.  The
vCPU asks it (`xapic_access`, `rdmsr`, `wrmsr`, `pending`, `deliver`, ...) and turns its
answers into exits, faults and interrupt deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..vmx.exits import Exit
from .devices.lapic import (APIC_BASE_DEFAULT, DFR, EOI, ESR, ICR_HI, ICR_LO, ID, IRR0, ISR0,
                            LDR, LVT_OFFSETS, PPR, SVR, TDCR, TMICT, TMR0, TPR, VERSION)

LVT_CMCI = 0x2F0
SELF_IPI_MSR, EOI_MSR, TPR_MSR = 0x83F, 0x80B, 0x808
X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF

# APIC-access exit qualification bits 15:12 (SDM "Exit Qualification for APIC-Access VM Exits")
ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH, ACCESS_EVENT_DELIVERY = 0, 1, 2, 3
ACCESS_TYPE_NAMES = {ACCESS_READ: "linear read", ACCESS_WRITE: "linear write",
                     ACCESS_FETCH: "linear instruction fetch",
                     ACCESS_EVENT_DELIVERY: "linear access during event delivery"}

# Registers whose reads APIC-register virtualization satisfies from the virtual-APIC page
# (32-bit aligned page offsets).
READ_VIRTUALIZED = frozenset(
    [ID, VERSION, TPR, EOI, LDR, DFR, SVR, ESR, LVT_CMCI, ICR_LO, ICR_HI, TMICT, TDCR,
     *LVT_OFFSETS, *range(ISR0, IRR0 + 0x80, 0x10)])
# ... and the writes it virtualizes (then APIC-write emulation decides what follows)
WRITE_VIRTUALIZED = frozenset(
    [TPR, EOI, LDR, DFR, SVR, ESR, LVT_CMCI, ICR_LO, ICR_HI, TMICT, TDCR, *LVT_OFFSETS])
# x2APIC MSRs whose RDMSR APIC-register virtualization satisfies (offset = (msr & 0xFF) << 4)
X2_READ_VIRTUALIZED = frozenset(
    [0x802, 0x803, 0x808, 0x80A, 0x80D, 0x80F, *range(0x810, 0x828), 0x828, 0x82F, 0x830,
     *range(0x832, 0x839), 0x83E])


class VirtualGp(Exception):
    """A virtualized x2APIC MSR access raises #GP(0) (reserved bits set)."""


@dataclass
class Trap:
    """A trap-like VM exit that follows a virtualized access (after the instruction)."""

    reason: Exit
    qualification: int = 0
    data: dict = field(default_factory=dict)


@dataclass
class Access:
    """What the processor does with one access to the APIC-access page.

    kind: "exit" (fault-like APIC-access exit with `qualification`), "read" (virtualized:
    `value` is the data read), "write" (virtualized: stored in the virtual-APIC page, then
    APIC-write emulation gives `trap`, possibly None)."""

    kind: str
    qualification: int = 0
    value: int = 0
    trap: Trap | None = None


def _highest(bits: int) -> int:
    return bits.bit_length() - 1 if bits else 0


class VirtualApic:
    """The virtual-APIC page, guest interrupt status (RVI/SVI), the EOI-exit bitmap and the
    posted-interrupt descriptor of one vCPU, with the processor's virtualization rules."""

    def __init__(self, config, *, read_phys: Callable[[int, int], bytes],
                 write_phys: Callable[[int, bytes], None], memory: int):
        self.page = bytearray(4096)
        self._read_phys, self._write_phys, self._memory = read_phys, write_phys, memory
        self._pid_local = bytearray(64)      # the descriptor when the VMM places it
        self.rvi = self.svi = 0
        self.virtual_eois = 0                # EOI virtualizations performed (for reports)
        self.delivered = 0                   # virtual interrupts delivered
        self.posted = 0                      # posted-interrupt notifications processed
        self.configure(config, first=True)

    # ---- configuration -------------------------------------------------------------
    def configure(self, config, *, first: bool = False, old=None) -> None:
        on = config.on
        s = config.settings
        self.tpr_shadow = on("primary.use_tpr_shadow")
        self.apic_accesses = on("secondary.virtualize_apic_accesses")
        self.x2apic = on("secondary.virtualize_x2apic_mode")
        self.register_virt = on("secondary.apic_register_virtualization")
        self.vid = on("secondary.virtual_interrupt_delivery")
        self.posted_interrupts = on("pin.process_posted_interrupts")
        self.tpr_threshold = s["apic"]["tpr_threshold"]
        self.eoi_exit = config.eoi_exit_bitmap()
        self.notification_vector = s["posted_interrupts"]["vector"] & 0xFF
        aa = s["vmcs"]["apic_access_page"]
        self.access_page = (aa if aa is not None else APIC_BASE_DEFAULT) & ~0xFFF
        self.pid_address = s["vmcs"]["posted_intr_desc"]
        if first or old is None or old["apic"]["vtpr"] != s["apic"]["vtpr"]:
            self.vtpr = s["apic"]["vtpr"] & 0xFF
        if first or old is None or (old["apic"]["rvi"], old["apic"]["svi"]) != \
                (s["apic"]["rvi"], s["apic"]["svi"]):
            self._load_interrupt_status(s["apic"]["rvi"], s["apic"]["svi"])

    def _load_interrupt_status(self, rvi: int, svi: int) -> None:
        """Guest interrupt status at VM entry: RVI/SVI, their VIRR/VISR bits, VPPR."""
        self.rvi, self.svi = rvi & 0xFF, svi & 0xFF
        if self.rvi:
            self.set_bit(IRR0, self.rvi)
        if self.svi:
            self.set_bit(ISR0, self.svi)
        self.ppr_virtualization()

    @property
    def active(self) -> bool:
        """Anything beyond the plain TPR shadow is in use."""
        return self.apic_accesses or self.x2apic or self.register_virt or self.vid

    def covers(self, address: int) -> bool:
        """`address` (guest-physical) is on the APIC-access page and accesses are virtualized."""
        return self.apic_accesses and address & ~0xFFF == self.access_page

    MIRRORED = frozenset((ID, VERSION, LDR, DFR, SVR, ESR, TMICT, TDCR, *LVT_OFFSETS))

    def load_from_lapic(self, lapic, offsets=None) -> None:
        """The VMM keeps the virtual-APIC page's copy of the local APIC's registers (ID,
        version, LDR, DFR, SVR, ESR, LVTs, timer set-up) as the guest would read them, as a
        hypervisor does; VTPR, VIRR/VISR and VPPR are the virtual ones."""
        for off in self.MIRRORED if offsets is None else (o for o in offsets if o in self.MIRRORED):
            try:
                self.set_reg(off, lapic.read(off) & 0xFFFFFFFF)
            except Exception:          # a register the device does not read in this mode
                pass

    # ---- the page ------------------------------------------------------------------
    def reg(self, off: int) -> int:
        return int.from_bytes(self.page[off:off + 4], "little")

    def set_reg(self, off: int, value: int) -> None:
        self.page[off:off + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    @property
    def vtpr(self) -> int:
        return self.page[TPR]

    @vtpr.setter
    def vtpr(self, value: int) -> None:
        self.set_reg(TPR, value & 0xFF)

    @property
    def vppr(self) -> int:
        return self.page[PPR]

    def _bits(self, base: int) -> int:
        out = 0
        for i in range(8):
            out |= self.reg(base + 0x10 * i) << (32 * i)
        return out

    def _set_bits(self, base: int, bits: int) -> None:
        for i in range(8):
            self.set_reg(base + 0x10 * i, bits >> (32 * i))

    def set_bit(self, base: int, vector: int, value: bool = True) -> None:
        off = base + 0x10 * (vector >> 5)
        r = self.reg(off)
        m = 1 << (vector & 31)
        self.set_reg(off, r | m if value else r & ~m)

    @property
    def virr(self) -> int:
        return self._bits(IRR0)

    @property
    def visr(self) -> int:
        return self._bits(ISR0)

    # ---- the processor's virtualization steps ----------------------------------------
    def ppr_virtualization(self) -> None:
        vtpr, svi = self.vtpr, self.svi
        self.set_reg(PPR, vtpr if vtpr >> 4 >= svi >> 4 else svi & 0xF0)

    def tpr_virtualization(self) -> Trap | None:
        """After VTPR was written (MOV to CR8, a TPR write on the APIC-access page, WRMSR 0x808)."""
        if self.vid:
            self.ppr_virtualization()
            return None
        if self.vtpr >> 4 < self.tpr_threshold & 0xF:
            return Trap(Exit.TPR_BELOW_THRESHOLD, 0,
                        {"vtpr": self.vtpr, "tpr_threshold": self.tpr_threshold})
        return None

    def eoi_virtualization(self) -> Trap | None:
        vector = self.svi
        self.set_bit(ISR0, vector, False)
        self.svi = _highest(self.visr)
        self.virtual_eois += 1
        if self.eoi_exit >> vector & 1:
            return Trap(Exit.EOI_INDUCED, vector, {"vector": vector})
        self.ppr_virtualization()
        return None

    def request(self, vector: int) -> None:
        """A virtual interrupt becomes requested: VIRR[vector] = 1, RVI = max(RVI, vector)
        (self-IPI virtualization, and the VMM passing an interrupt on)."""
        vector &= 0xFF
        self.set_bit(IRR0, vector)
        self.rvi = max(self.rvi, vector)

    def pending(self, interrupt_window_exiting: bool = False) -> int | None:
        """Evaluation of pending virtual interrupts: the vector recognized now, if any."""
        if not self.vid or interrupt_window_exiting:
            return None
        if self.rvi >> 4 > self.vppr >> 4:
            return self.rvi
        return None

    def deliver(self) -> int:
        """Virtual-interrupt delivery of RVI: VISR/SVI/VPPR/VIRR/RVI updated; returns the
        vector the CPU now delivers through the guest IDT."""
        vector = self.rvi
        self.set_bit(ISR0, vector)
        self.svi = vector
        self.set_reg(PPR, vector & 0xF0)
        self.set_bit(IRR0, vector, False)
        self.rvi = _highest(self.virr)
        self.delivered += 1
        return vector

    # ---- posted interrupts -----------------------------------------------------------
    def _pid_read(self) -> bytes:
        a = self.pid_address
        if a is not None and a + 64 <= self._memory:
            return self._read_phys(a, 64)
        return bytes(self._pid_local)

    def _pid_write(self, data: bytes) -> None:
        a = self.pid_address
        if a is not None and a + 64 <= self._memory:
            self._write_phys(a, data)
        else:
            self._pid_local[:] = data

    def is_notification(self, vector: int) -> bool:
        return self.posted_interrupts and vector == self.notification_vector

    def process_posted(self) -> int:
        """Posted-interrupt processing (the notification vector was acknowledged): clear ON,
        VIRR |= PIR, PIR = 0, RVI = max(RVI, highest PIR bit).  Returns the PIR that moved."""
        d = bytearray(self._pid_read())
        pir = int.from_bytes(d[:32], "little")
        d[32] &= ~1                                     # ON (bit 256)
        d[:32] = bytes(32)
        self._pid_write(bytes(d))
        if pir:
            self._set_bits(IRR0, self.virr | pir)
            self.rvi = max(self.rvi, _highest(pir))
        self.posted += 1
        return pir

    def post(self, vector: int) -> bool:
        """What a device or another CPU does to post `vector`: PIR[vector] = 1 and ON = 1.
        Returns True if a notification must be sent (ON was 0 and SN is 0)."""
        d = bytearray(self._pid_read())
        d[vector >> 3] |= 1 << (vector & 7)
        was_on, sn = d[32] & 1, d[32] >> 1 & 1
        d[32] |= 1
        self._pid_write(bytes(d))
        return not was_on and not sn

    # ---- APIC-access page (xAPIC MMIO) ------------------------------------------------
    def xapic_access(self, offset: int, size: int, write: bool, value: int = 0) -> Access:
        """One linear read or write of `size` bytes at page offset `offset`."""
        atype = ACCESS_WRITE if write else ACCESS_READ
        exit_ = Access("exit", (atype << 12) | offset)
        if not self.tpr_shadow:
            return exit_
        reg = offset & ~0xF
        if (offset & 0xF) + size > 4:          # not inside the register's low 32 bits
            return exit_
        if not write:
            ok = reg in READ_VIRTUALIZED if self.register_virt else reg == TPR
            if not ok:
                return exit_
            return Access("read", value=self.reg(reg) >> (8 * (offset & 3)) &
                          ((1 << (8 * size)) - 1))
        if self.register_virt:
            ok = reg in WRITE_VIRTUALIZED
        else:
            ok = reg == TPR or (self.vid and reg in (EOI, ICR_LO))
        if not ok:
            return exit_
        self.page[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return Access("write", trap=self._apic_write_emulation(reg))

    def _apic_write_emulation(self, reg: int) -> Trap | None:
        if reg == TPR:
            self.page[TPR + 1:TPR + 4] = bytes(3)
            return self.tpr_virtualization()
        if reg == EOI and self.vid:
            return self.eoi_virtualization()
        if reg == ICR_LO and self.vid:
            lo = self.reg(ICR_LO)
            if (lo & 0xFFF32000) == 0 and (lo >> 18) & 3 == 1 and not lo & (1 << 15) \
                    and (lo >> 8) & 7 == 0 and lo & 0xF0:
                self.request(lo & 0xFF)
                return None
        if reg == ICR_HI:               # the destination alone: no side effect, no exit
            return None
        return Trap(Exit.APIC_WRITE, reg, {"offset": reg, "value": self.reg(reg)})

    # ---- x2APIC MSRs ---------------------------------------------------------------
    def rdmsr(self, msr: int) -> int | None:
        """RDMSR of an x2APIC MSR that the MSR bitmap let through: the virtualized value, or
        None when the read goes to the local APIC as usual."""
        if not self.x2apic or not X2APIC_FIRST <= msr <= X2APIC_LAST:
            return None
        if msr == TPR_MSR or (self.register_virt and msr in X2_READ_VIRTUALIZED):
            off = (msr & 0xFF) << 4
            v = self.reg(off)
            if msr == 0x830:
                v |= self.reg(ICR_HI) << 32
            return v
        return None

    def wrmsr(self, msr: int, value: int) -> tuple[bool, Trap | None]:
        """WRMSR of an x2APIC MSR that the MSR bitmap let through: (virtualized, trap).
        Not virtualized: the write goes to the local APIC.  Raises VirtualGp."""
        if not self.x2apic or not X2APIC_FIRST <= msr <= X2APIC_LAST:
            return False, None
        if msr == TPR_MSR:
            if value >> 8:
                raise VirtualGp()
            self.vtpr = value & 0xFF
            return True, self.tpr_virtualization()
        if self.vid and msr == EOI_MSR:
            if value:
                raise VirtualGp()
            self.set_reg(EOI, 0)
            return True, self.eoi_virtualization()
        if self.vid and msr == SELF_IPI_MSR:
            if value >> 8:
                raise VirtualGp()
            self.set_reg(0x3F0, value & 0xFF)
            self.request(value & 0xFF)
            return True, None
        return False, None

    def report(self) -> dict:
        """State for the run report."""
        return {"vtpr": self.vtpr, "vppr": self.vppr, "rvi": self.rvi, "svi": self.svi,
                "virr": [v for v in range(256) if self.virr >> v & 1],
                "visr": [v for v in range(256) if self.visr >> v & 1],
                "delivered": self.delivered, "virtual_eois": self.virtual_eois,
                "posted": self.posted}


# ==================================================================== the vCPU's side
# What the vCPU does with the answers above.  Each function takes the vCPU (`v`); the vCPU
# calls them from one line each (its MMIO callbacks, its event check, its run loop).

def sync_pc_hook(uc, access, address, size, value, user_data) -> None:
    """A memory hook over the APIC-access page: its presence makes the engine keep RIP exact
    for each access there (inside an MMIO callback RIP is otherwise the block's start)."""


def _here(v) -> tuple[int, int]:
    """(RIP, instructions retired before it) inside an MMIO callback."""
    return v.rip, v._mmio_ic()


def _stop(v, ev: tuple) -> None:
    """Abandon the accessing instruction (it has not retired) and hand `ev` to the run loop;
    Unicorn restarts the instruction when the guest resumes at it."""
    if v._event is None:
        v._event = ev
    v.uc.emu_stop()


def _plain_store(v, rip: int):
    """The instruction at `rip` if it is a MOV to memory (a store with no other effect),
    else None."""
    from . import decode as D
    raw = v._code_bytes(rip)
    if raw is None:
        return None
    instr = D.decode_one(raw, rip, v.bitness)
    if instr.code == 0 or instr.mnemonic != D.M.MOV or instr.op0_kind != D.OpKind.MEMORY:
        return None
    return D.make_insn(instr, raw, v.bitness, "apic_access")


def mmio_read(v, address: int, size: int) -> int:
    """A guest read of the APIC-access page (virtualize APIC accesses is on)."""
    here = _here(v)
    if v.apicv_pass == here:
        return v.platform.mmio_read(address, size)
    a = v.apicv.xapic_access(address & 0xFFF, size, False)
    if a.kind == "read":
        return a.value
    _stop(v, ("apic_access", a.qualification, here))
    return 0


def mmio_write(v, address: int, size: int, value: int) -> bool:
    """A guest write to the APIC-access page.  Returns True when it went to the device."""
    here = _here(v)
    if v.apicv_pass == here:
        v.platform.mmio_write(address, size, value)
        if v.apicv.register_virt:
            v.apicv.load_from_lapic(v.platform.lapic, (address & 0xFF0,))
        return True
    a = v.apicv.xapic_access(address & 0xFFF, size, True, value)
    if a.kind == "exit":
        _stop(v, ("apic_access", a.qualification, here))
        return False
    ins = _plain_store(v, here[0])
    if ins is not None:
        # the store is done (in the virtual-APIC page): retire the MOV, then its trap
        _stop(v, ("apic_write", a.trap, here, ins.address + ins.length))
    elif a.trap is not None or v.apicv.pending() is not None:
        # another instruction (read-modify-write, string store): it completes; what follows
        # the write is taken at the next stop of the engine
        v.apicv_late = a.trap
        if v._event is None:
            v._event = ("resume",)
        v.counter.request_stop()
    return False


def handle_event(v, ev: tuple) -> None:
    """The run loop's part of an APIC access or write the MMIO callback stopped at."""
    from .exitinfo import VmExit
    kind, here = ev[0], ev[2]
    rip, retired = here
    v.icount = retired
    v.counter.set_count(retired)
    v.set_rip(rip)
    if kind == "apic_access":
        qual = ev[1]
        from . import decode as D
        raw = v._code_bytes(rip) or b""
        instr = D.decode_one(raw, rip, v.bitness) if raw else None
        length = instr.len if instr is not None and instr.code else 0
        ex = VmExit(Exit.APIC_ACCESS, qual, rip, length, raw[:length],
                    D.format_instr(instr) if length else "",
                    data={"offset": qual & 0xFFF,
                          "access": ACCESS_TYPE_NAMES.get(qual >> 12 & 0xF, "?")})
        v.apicv_pass = None
        v.vmexit(ex)
        v._exit_outcome()
        return
    # a virtualized MOV store: retire it, then the trap-like exit (if any) at the next RIP
    trap, nxt = ev[1], ev[3]
    v.icount = retired + 1
    v.counter.set_count(v.icount)
    v.set_rip(nxt)
    if trap is not None:
        take_trap(v, trap)


def x2apic_msr(v, ins, msr: int, write: bool, nxt: int) -> tuple[bool, int | None]:
    """RDMSR/WRMSR of an x2APIC MSR the MSR bitmap let through, under virtualize x2APIC mode:
    (virtualized, RIP to resume at).  Not virtualized: the local APIC takes it as usual."""
    from .outcome import GuestFault
    vapic = v.apicv
    if not write:
        value = vapic.rdmsr(msr)
        if value is None:
            return False, None
        v.set_gpr(0, value & 0xFFFFFFFF, 4)
        v.set_gpr(2, value >> 32, 4)
        return True, nxt
    try:
        done, trap = vapic.wrmsr(msr, (v.gpr(2, 4) << 32) | v.gpr(0, 4))
    except VirtualGp:
        raise GuestFault(13, 0) from None
    if not done:
        if not vapic.register_virt:
            return False, None
        v.emulate_msr(ins)                # the local APIC takes it; the page keeps its copy
        vapic.load_from_lapic(v.platform.lapic, ((msr & 0xFF) << 4,))
        return True, nxt
    if trap is not None:
        return True, v._trap_exit(trap.reason, ins, nxt, trap.qualification, data=dict(trap.data))
    if vapic.pending() is not None and v._event is None:
        v._event = ("resume",)            # a virtual interrupt may be delivered now
    return True, nxt


def after_tpr_write(v, ins, nxt: int) -> int | None:
    """MOV to CR8 under use TPR shadow (VTPR already written): TPR virtualization."""
    trap = v.apicv.tpr_virtualization()
    if trap is not None:
        return v._trap_exit(trap.reason, ins, nxt, trap.qualification, data=dict(trap.data))
    if v.apicv.pending() is not None and v._event is None:
        v._event = ("resume",)
    return nxt


def fetch_exit(v, rip: int) -> None:
    """An instruction fetch from the APIC-access page: an APIC-access exit (fault-like,
    access type 2) before the instruction; the default handler ends the run."""
    from .exitinfo import VmExit
    qual = (ACCESS_FETCH << 12) | (rip & 0xFFF)
    v.vmexit(VmExit(Exit.APIC_ACCESS, qual, rip,
                    data={"offset": rip & 0xFFF, "access": ACCESS_TYPE_NAMES[ACCESS_FETCH]}))
    v.set_rip(v._exit_outcome())


def take_trap(v, trap: Trap) -> None:
    """A trap-like exit after a virtualized access: RIP is already the next instruction."""
    from .exitinfo import VmExit
    v.vmexit(VmExit(trap.reason, trap.qualification, v.rip, data=dict(trap.data)))
    v._exit_outcome()


def late_exit(v):
    """The trap-like exit of a virtualized write by a read-modify-write instruction (see
    mmio_write), due at this boundary; None if there is none."""
    if v.apicv_late is None:
        return None
    from .exitinfo import VmExit
    trap, v.apicv_late = v.apicv_late, None
    return VmExit(trap.reason, trap.qualification, v.rip, data=dict(trap.data))


def pending_event(v, if_on: bool, shadow: bool) -> int | None:
    """At an instruction boundary: a virtual interrupt to deliver through the guest IDT now
    (RFLAGS.IF = 1, no STI/MOV-SS blocking, interrupt-window exiting off, RVI[7:4] >
    VPPR[7:4]), with its delivery done in the virtual APIC; None if there is none."""
    vapic = v.apicv
    if not if_on or shadow:
        return None
    if vapic.pending(v._on["primary.interrupt_window_exiting"]) is None:
        return None
    return vapic.deliver()


def posted_notification(v, vector: int) -> bool:
    """An external interrupt `vector` is pending with external-interrupt exiting: if it is
    the posted-interrupt notification vector, acknowledge it, process the descriptor and
    write the local APIC's EOI -- no VM exit.  Returns True when it was one."""
    if not v.apicv.is_notification(vector):
        return False
    v.ack_interrupt()
    v.apicv.process_posted()
    lapic = v.platform.lapic
    if lapic.isr >> vector & 1:
        lapic.eoi()
    return True


def pass_on_as_virtual(v, vector: int) -> None:
    """The default external-interrupt handler under virtual-interrupt delivery: the vector
    goes to VIRR/RVI; the local APIC gets its EOI unless the vector is level-triggered."""
    lapic = v.platform.lapic
    if lapic.isr >> vector & 1 and not lapic.tmr >> vector & 1 and \
            _highest(lapic.isr) == vector:
        lapic.eoi()
    v.apicv.request(vector)


def pass_access_on(ctx) -> None:
    from .outcome import RunEnd
    ex = ctx.exit
    v = ctx.vcpu
    if ex.qualification >> 12 & 0xF == ACCESS_FETCH:
        ctx.ended = RunEnd("error", None, f"the guest fetched code from the APIC-access page "
                                          f"at RIP {ex.rip:#x}")
        return
    if v.rip == ex.rip:             # not skipped by a handler: the access runs again, for real
        v.apicv_pass = (ex.rip, v.icount)


def pass_write_on(ctx) -> None:
    from .devices.bus import AccessFault
    v = ctx.vcpu
    off = ctx.exit.qualification & 0xFF0
    try:
        v.platform.lapic.write(off, v.apicv.reg(off))
    except AccessFault:
        pass
    v.apicv.load_from_lapic(v.platform.lapic, (off,))


def pass_eoi_on(ctx) -> None:
    v = ctx.vcpu
    vector = ctx.exit.qualification & 0xFF
    lapic = v.platform.lapic
    if lapic.isr >> vector & 1 and _highest(lapic.isr) == vector:
        lapic.eoi()
