"""Local APIC (xAPIC MMIO and x2APIC MSRs) and IOAPIC at their register interfaces."""

import pytest

from devices_helpers import Machine
from vmcfg.vmm.devices import AccessFault

LAPIC = 0xFEE00000
IOAPIC = 0xFEC00000


def rd(m, off):
    return m.board.mmio_read(LAPIC + off, 4)


def wr(m, off, v):
    m.board.mmio_write(LAPIC + off, 4, v)


def _enable(m):
    wr(m, 0xF0, 0x1FF)                          # SVR: software enable, spurious vector 0xFF


def test_power_on_registers():
    m = Machine()
    assert m.board.msr_read(0x1B) == 0xFEE00900
    assert rd(m, 0x20) == 0 and rd(m, 0x30) == 0x00050014
    assert rd(m, 0xF0) == 0xFF and rd(m, 0xE0) == 0xFFFFFFFF
    assert rd(m, 0x320) == 0x10000 and rd(m, 0x350) == 0x700


def test_self_ipi_priority_tpr_ppr_and_eoi():
    m = Machine()
    _enable(m)
    wr(m, 0x300, 0x40000 | 0x51)                # ICR: self, fixed, vector 0x51
    wr(m, 0x300, 0x40000 | 0x92)
    assert rd(m, 0x200 + 0x10 * (0x51 // 32)) & (1 << (0x51 % 32))
    assert m.take() == 0x92                     # highest vector first
    assert rd(m, 0xA0) == 0x90                  # PPR: the in-service class
    assert m.take() is None                     # 0x51 is below the PPR class
    wr(m, 0xB0, 0)                              # EOI
    wr(m, 0x80, 0x60)                           # TPR above 0x51's class
    assert m.board.pending_interrupt() is None and rd(m, 0xA0) == 0x60
    wr(m, 0x80, 0x40)
    assert m.take() == 0x51
    assert rd(m, 0x100 + 0x10 * (0x51 // 32)) & (1 << (0x51 % 32))   # ISR
    wr(m, 0xB0, 0)
    assert rd(m, 0x100 + 0x10 * (0x51 // 32)) == 0


def test_software_disabled_apic_delivers_nothing_and_masks_lvts():
    m = Machine()
    wr(m, 0x300, 0x40000 | 0x51)
    assert m.board.pending_interrupt() is None  # SVR bit 8 clear
    _enable(m)
    wr(m, 0x320, 0x40)                          # unmask the timer LVT
    wr(m, 0xF0, 0x0FF)                          # software disable
    assert rd(m, 0x320) & 0x10000


def test_illegal_vector_sets_esr_after_write():
    m = Machine()
    _enable(m)
    wr(m, 0x300, 0x40000 | 0x05)                # a vector below 16
    wr(m, 0x280, 0)
    assert rd(m, 0x280) & (1 << 5)              # send illegal vector


def test_timer_one_shot_expires_and_delivers_its_vector():
    m = Machine()
    _enable(m)
    wr(m, 0x3E0, 0x0B)                          # divide by 1
    wr(m, 0x320, 0x40)                          # one-shot, vector 0x40
    wr(m, 0x380, 1000)
    m.now = 400
    assert rd(m, 0x390) == 600
    assert m.board.next_event() == 1000
    m.run_to(999)
    assert m.take() is None
    m.run_to(1000)
    assert m.take() == 0x40
    assert rd(m, 0x390) == 0 and m.board.next_event() is None


def test_timer_periodic_with_divider():
    m = Machine()
    _enable(m)
    wr(m, 0x3E0, 0x01)                          # divide by 4
    wr(m, 0x320, 0x20041)                       # periodic, vector 0x41
    wr(m, 0x380, 100)                           # 400 TSC ticks per period
    m.now = 500
    assert rd(m, 0x390) == 100 - (500 // 4) % 100
    m.run_to(400)
    assert m.take() == 0x41
    wr(m, 0xB0, 0)
    m.run_to(800)
    assert m.take() == 0x41


def test_timer_mode_changes_keep_the_one_counter():
    """A mode change does not restart the count (kvm-unit-tests apic, test_apic_change_mode):
    periodic -> one-shot counts on from where it was and stops at 0; a count that ended in
    one-shot mode stays 0 when the mode becomes periodic, until TMICT is written again."""
    m = Machine()
    _enable(m)
    wr(m, 0x3E0, 0x0B)                          # divide by 1
    wr(m, 0x320, 0x20040)                       # periodic, vector 0x40
    wr(m, 0x380, 1000)
    m.run_to(1000)
    assert m.take() == 0x40
    wr(m, 0xB0, 0)
    m.now = 1300
    assert rd(m, 0x390) == 700                  # reloaded at 1000
    wr(m, 0x320, 0x40)                          # one-shot now: 700 to go
    assert rd(m, 0x390) == 700 and m.board.next_event() == 2000
    m.run_to(2000)
    assert m.take() == 0x40 and rd(m, 0x390) == 0
    wr(m, 0xB0, 0)
    m.now = 2500
    wr(m, 0x320, 0x20040)                       # periodic again: the ended count stays 0
    assert rd(m, 0x390) == 0 and m.board.next_event() is None
    assert rd(m, 0x380) == 1000                 # TMICT reads back
    wr(m, 0x380, 1000)                          # a new count runs, periodic
    m.now = 2600
    assert rd(m, 0x390) == 900 and m.board.next_event() == 3500


def test_masked_timer_runs_without_interrupts():
    m = Machine()
    _enable(m)
    wr(m, 0x3E0, 0x0B)
    wr(m, 0x320, 0x10042)
    wr(m, 0x380, 50)
    m.run_to(60)
    assert m.take() is None


def test_tsc_deadline_mode():
    m = Machine()
    _enable(m)
    wr(m, 0x320, 0x40043)                       # TSC-deadline, vector 0x43
    wr(m, 0x380, 5)                             # ignored in this mode
    assert rd(m, 0x380) == 0 and m.board.next_event() is None
    m.board.msr_write(0x6E0, 700)
    assert m.board.msr_read(0x6E0) == 700 and m.board.next_event() == 700
    m.run_to(700)
    assert m.take() == 0x43
    assert m.board.msr_read(0x6E0) == 0         # cleared when it fires
    m.board.msr_write(0x6E0, 900)
    m.board.msr_write(0x6E0, 0)                 # disarm
    assert m.board.next_event() is None
    wr(m, 0x320, 0x43)                          # back to one-shot: the MSR reads 0
    m.board.msr_write(0x6E0, 5000)
    assert m.board.msr_read(0x6E0) == 0 and m.board.next_event() is None


def test_x2apic_msrs_and_their_faults():
    m = Machine()
    with pytest.raises(AccessFault):
        m.board.msr_read(0x802)                 # not in x2APIC mode
    with pytest.raises(AccessFault):
        m.board.msr_write(0x1B, 0xFEE00000 | (1 << 10))   # EXTD without EN
    m.board.msr_write(0x1B, 0xFEE00000 | (1 << 11) | (1 << 10))
    assert m.board.msr_read(0x1B) == 0xFEE00D00
    assert m.board.msr_read(0x802) == 0
    assert m.board.msr_read(0x80D) == 1         # LDR derived from the ID
    assert rd(m, 0x30) == 0xFFFFFFFF            # the xAPIC page is off in x2APIC mode
    m.board.msr_write(0x80F, 0x1FF)
    m.board.msr_write(0x83F, 0x61)              # SELF IPI
    assert m.take() == 0x61
    m.board.msr_write(0x80B, 0)
    m.board.msr_write(0x830, (0 << 32) | 0x62)  # ICR, physical destination 0
    assert m.take() == 0x62
    for bad in (lambda: m.board.msr_read(0x80B),          # EOI is write-only
                lambda: m.board.msr_write(0x80B, 1),      # nonzero EOI
                lambda: m.board.msr_write(0x802, 5),      # ID is read-only
                lambda: m.board.msr_read(0x80E),          # no DFR in x2APIC mode
                lambda: m.board.msr_write(0x808, 0x100),  # TPR reserved bits
                lambda: m.board.msr_read(0x831),          # no ICR high half
                lambda: m.board.msr_write(0x1B, 0xFEE00000 | (1 << 11))):  # x2 -> xAPIC
        with pytest.raises(AccessFault):
            bad()


def test_icr_nmi_to_self():
    m = Machine()
    _enable(m)
    wr(m, 0x300, 0x40000 | 0x400)
    assert m.nmis == 1


def test_disabling_the_apic_passes_the_pic_through_and_resets_it():
    m = Machine()
    _enable(m)
    m.board.msr_write(0x1B, 0xFEE00000)         # EN = 0
    assert rd(m, 0xF0) == 0xFFFFFFFF            # the page is gone
    m.board.set_irq(0, True); m.board.set_irq(0, False)
    assert m.take() == 0x20                     # the PIC reaches the CPU directly
    m.board.msr_write(0x1B, 0xFEE00800)
    assert rd(m, 0xF0) == 0xFF                  # registers back at their reset values


# ---- IOAPIC ---------------------------------------------------------------------------
def io_wr(m, reg, v):
    m.board.mmio_write(IOAPIC, 4, reg)
    m.board.mmio_write(IOAPIC + 0x10, 4, v)


def io_rd(m, reg):
    m.board.mmio_write(IOAPIC, 4, reg)
    return m.board.mmio_read(IOAPIC + 0x10, 4)


def test_ioapic_version_and_masked_entries_at_power_on():
    m = Machine()
    assert io_rd(m, 1) == 0x00170020
    assert all(io_rd(m, 0x10 + 2 * i) & 0x10000 for i in range(24))


def test_ioapic_routes_the_pit_on_gsi2_to_the_lapic():
    m = Machine()
    _enable(m)
    m.outb(0x21, 0x01)                          # PIC: IRQ 0 masked
    io_wr(m, 0x10 + 2 * 2, 0x30)                # GSI 2 -> vector 0x30, edge, unmasked
    io_wr(m, 0x11 + 2 * 2, 0)
    m.outb(0x43, 0x34); m.outb(0x40, 100); m.outb(0x40, 0)
    m.run_to(100)
    assert m.take() == 0x30


def test_ioapic_level_remote_irr_until_eoi_then_redelivery():
    m = Machine()
    _enable(m)
    m.outb(0xA1, 0xFF)
    io_wr(m, 0x10 + 2 * 9, 0x8000 | 0x35)       # GSI 9: level, vector 0x35
    m.board.set_irq(9, True)
    assert m.take() == 0x35
    assert io_rd(m, 0x10 + 2 * 9) & (1 << 14)   # remote IRR
    assert rd(m, 0x180 + 0x10 * (0x35 // 32)) & (1 << (0x35 % 32))   # TMR: level
    wr(m, 0xB0, 0)                              # EOI: line still high -> again
    assert m.take() == 0x35
    m.board.set_irq(9, False)
    wr(m, 0xB0, 0)
    assert not io_rd(m, 0x10 + 2 * 9) & (1 << 14)
    assert m.take() is None


def test_ioapic_masked_entry_and_logical_destination():
    m = Machine()
    _enable(m)
    m.outb(0x21, 0xFF)
    io_wr(m, 0x10 + 2 * 4, 0x10000 | 0x36)      # masked
    m.board.set_irq(4, True); m.board.set_irq(4, False)
    assert m.take() is None
    wr(m, 0xD0, 0x01000000)                     # LDR: logical ID bit 0 (flat model)
    io_wr(m, 0x11 + 2 * 4, 0x02000000)          # logical destination 0x02: not us
    io_wr(m, 0x10 + 2 * 4, 0x800 | 0x36)
    m.board.set_irq(4, True); m.board.set_irq(4, False)
    assert m.take() is None
    io_wr(m, 0x11 + 2 * 4, 0x01000000)
    m.board.set_irq(4, True); m.board.set_irq(4, False)
    assert m.take() == 0x36
