"""The PC's two cascaded 8259A programmable interrupt controllers.

Master at I/O 0x20/0x21 (IRQ 0-7), slave at 0xA0/0xA1 (IRQ 8-15) on the
master's IRQ 2; the edge/level control registers (ELCR) at 0x4D0/0x4D1.
Implemented: the ICW1-ICW4 initialisation sequence (vector base, single or
cascade, auto-EOI, special fully nested mode), IMR (OCW1), OCW2 (non-specific,
specific and rotating EOI, set priority, rotate in auto-EOI), OCW3 (read IRR or
ISR, poll, special mask mode), edge and level triggering, fully nested
priority with rotation, and the spurious IRQ 7/15 on an INTA with nothing left
to acknowledge.

At start the chips are in the state vmcfg's firmware leaves them (as earlier
vmcfg releases documented): initialised in cascade mode, master vector base
0x20, slave 0x28, every line unmasked; for real-mode and Multiboot guests the
real-mode BIOS (bios.py) sets the PC BIOS bases 0x08 and 0x70 instead.  A
guest's ICW1 starts over.
"""

from __future__ import annotations

from typing import Callable

# _PRIO[priority_add << 8 | mask]: the priority (0 highest .. 7) of the highest-priority bit
# of an 8-bit `mask` when line `priority_add` has the highest priority; 8 when mask is empty
_PRIO = tuple(next((p for p in range(8) if m & (1 << ((p + r) & 7))), 8)
              for r in range(8) for m in range(256))


class I8259:
    """One 8259A."""

    def __init__(self, base: int, imr: int, *, master: bool):
        self.master = master
        self.irr = 0
        self.isr = 0
        self.imr = imr
        self.base = base
        self.elcr = 0               # 1 = level-triggered line
        self.elcr_mask = 0xF8 if master else 0xDE
        self.last_level = 0         # input line levels (edge detection)
        self.priority_add = 0       # the line with the highest priority (rotation)
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.special_fully_nested = False
        self.auto_eoi = False
        self.rotate_on_aeoi = False
        self.single = False
        self.init_step = 0          # 0: operational; 1..3: expecting ICW2..ICW4
        self.icw4 = False

    # ---- lines -----------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        m = 1 << irq
        if self.elcr & m:
            if level:
                self.irr |= m
                self.last_level |= m
            else:
                self.irr &= ~m
                self.last_level &= ~m
        elif level:
            if not self.last_level & m:
                self.irr |= m               # rising edge
            self.last_level |= m
        else:
            self.last_level &= ~m

    def pulse(self, irq: int) -> None:
        """set_irq(irq, True) then set_irq(irq, False): one edge (the PIT's IRQ 0)."""
        m = 1 << irq
        if self.elcr & m:
            self.irr &= ~m
        elif not self.last_level & m:
            self.irr |= m
        self.last_level &= ~m

    def _priority(self, mask: int) -> int:
        """0 (highest) .. 7 for the highest-priority bit in `mask` (8 bits); 8 when empty."""
        return _PRIO[self.priority_add << 8 | mask]

    def output(self) -> int | None:
        """The IRQ this chip presents to the CPU (or to the master), or None."""
        req = self.irr & ~self.imr
        if not req:
            return None
        r = self.priority_add << 8
        p = _PRIO[r | req]
        in_service = self.isr
        if in_service:
            if self.special_mask:
                in_service &= ~self.imr
            if self.master and self.special_fully_nested:
                in_service &= ~(1 << 2)     # the slave may nest over its own in-service IRQ
            if p >= _PRIO[r | in_service]:
                return None
        return (p + self.priority_add) & 7

    def acknowledge(self, irq: int) -> None:
        m = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= m
        if not self.elcr & m:
            self.irr &= ~m

    # ---- registers -------------------------------------------------------------------
    def _reset_for_init(self) -> None:
        self.last_level = 0
        self.irr &= self.elcr
        self.imr = self.isr = 0
        self.priority_add = 0
        self.read_isr = self.poll = self.special_mask = self.special_fully_nested = False
        self.auto_eoi = self.rotate_on_aeoi = False

    def write_command(self, value: int) -> None:
        if value & 0x10:                                    # ICW1
            self._reset_for_init()
            self.icw4 = bool(value & 1)
            self.single = bool(value & 2)
            self.init_step = 1
        elif value & 0x08:                                  # OCW3
            if value & 0x04:
                self.poll = True
            if value & 0x02:
                self.read_isr = bool(value & 1)
            if value & 0x40:
                self.special_mask = bool(value & 0x20)
        else:                                               # OCW2
            cmd = value >> 5
            if cmd in (0, 4):
                self.rotate_on_aeoi = cmd == 4
            elif cmd in (1, 5):                             # non-specific EOI (and rotate)
                p = _PRIO[self.priority_add << 8 | self.isr]
                if p != 8:
                    irq = (p + self.priority_add) & 7
                    self.isr &= ~(1 << irq)
                    if cmd == 5:
                        self.priority_add = (irq + 1) & 7
            elif cmd in (3, 7):                             # specific EOI (and rotate)
                irq = value & 7
                self.isr &= ~(1 << irq)
                if cmd == 7:
                    self.priority_add = (irq + 1) & 7
            elif cmd == 6:                                  # set priority
                self.priority_add = (value + 1) & 7

    def write_data(self, value: int) -> None:
        if self.init_step == 1:                             # ICW2
            self.base = value & 0xF8
            self.init_step = 0 if self.single and not self.icw4 else (3 if self.single else 2)
        elif self.init_step == 2:                           # ICW3
            self.init_step = 3 if self.icw4 else 0
        elif self.init_step == 3:                           # ICW4
            self.special_fully_nested = bool(value & 0x10)
            self.auto_eoi = bool(value & 0x02)
            self.init_step = 0
        else:                                               # OCW1
            self.imr = value

    def read_command(self) -> int:
        return self.isr if self.read_isr else self.irr


class PicPair:
    """Master and slave 8259A as wired in a PC."""

    MASTER_PORT, SLAVE_PORT = 0x20, 0xA0         # command; data at +1
    PORTS = ((MASTER_PORT, 2), (SLAVE_PORT, 2), (0x4D0, 2))

    def __init__(self, changed: Callable[[], None] = lambda: None):
        self.master = I8259(0x20, 0x00, master=True)
        self.slave = I8259(0x28, 0x00, master=False)
        self._changed = changed

    def set_bases(self, master: int, slave: int) -> None:
        """The vector bases firmware programmed (ICW2) before the guest starts."""
        self.master.base = master & 0xF8
        self.slave.base = slave & 0xF8

    # ---- the interface the interrupt router uses ---------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        if irq >= 8:
            self.slave.set_irq(irq - 8, level)
        else:
            self.master.set_irq(irq, level)
            if irq != 2:
                return          # the cascade line follows the slave only: it stays as it is
        self._cascade()

    def pulse(self, irq: int) -> None:
        """set_irq(irq, True) then set_irq(irq, False): one edge on a line (the PIT's IRQ 0)."""
        if irq < 8 and irq != 2:
            self.master.pulse(irq)          # no cascade: the slave's output did not change
        else:
            self.set_irq(irq, True)
            self.set_irq(irq, False)

    def _cascade(self) -> None:
        self.master.set_irq(2, self.slave.output() is not None)

    def pending(self) -> int | None:
        """The vector an INTA would return now, or None when the INTR line is low."""
        irq = self.master.output()
        if irq is None:
            return None
        if irq == 2 and not self.master.single:
            s = self.slave.output()
            return self.slave.base + (7 if s is None else s)
        return self.master.base + irq

    def ack(self) -> int:
        """INTA: the vector of the highest-priority request (IRR -> ISR); a spurious
        IRQ 7 (or 15) when the request went away."""
        v = self.ack_pending()
        return self.master.base + 7 if v is None else v

    def ack_pending(self) -> int | None:
        """ack() when the INTR line is up (pending() is not None), else None and nothing
        changes."""
        master = self.master
        irq = master.output()
        if irq is None:
            return None
        master.acknowledge(irq)
        if irq != 2 and not self.slave.irr:
            # the slave has nothing to present: the cascade line stays low (_cascade; the
            # master's IRQ 2 is edge-triggered, ELCR bit 2 is reserved)
            master.last_level &= ~4
            return master.base + irq
        if irq == 2 and not master.single:
            s = self.slave.output()
            if s is None:
                vec = self.slave.base + 7
            else:
                self.slave.acknowledge(s)
                vec = self.slave.base + s
        else:
            vec = self.master.base + irq
        self._cascade()
        return vec

    def _poll(self, chip: I8259) -> int:
        chip.poll = False
        irq = chip.output()
        if irq is None:
            return 0
        chip.acknowledge(irq)
        if chip is self.master and irq == 2:
            self._cascade()
        elif chip is self.slave:
            self._cascade()
        return 0x80 | irq

    # ---- port I/O --------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port in (0x4D0, 0x4D1):
            v = self.master.elcr if port == 0x4D0 else self.slave.elcr
            return v if size == 1 else v | (self.slave.elcr << 8)
        chip = self.master if port < 0xA0 else self.slave
        if chip.poll:
            v = self._poll(chip)
        elif port & 1:
            v = chip.imr
        else:
            v = chip.read_command()
        return v if size == 1 else v | (0xFF00 if size == 2 else 0xFFFFFF00)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port in (0x4D0, 0x4D1):
            for i in range(min(size, 0x4D2 - port)):
                chip = self.master if port + i == 0x4D0 else self.slave
                chip.elcr = (value >> (8 * i)) & chip.elcr_mask
            self._changed()
            return
        chip = self.master if port < 0xA0 else self.slave
        value &= 0xFF
        if port & 1:
            if not chip.init_step:                      # OCW1
                if chip.imr == value:
                    return                              # the same mask: nothing changes
                chip.imr = value
            else:
                chip.write_data(value)
        else:
            chip.write_command(value)
        # the slave's output (the master's IRQ 2) moves only with the slave's state, and
        # the master forgets the line's level only at ICW1
        if chip is self.slave or value & 0x10 and not port & 1:
            self._cascade()
        self._changed()
