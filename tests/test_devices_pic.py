"""The 8259 pair at its ports: initialisation, priority, EOI, masking, cascade, modes."""

from devices_helpers import Machine


def _init(m, base_m=0x20, base_s=0x28, icw4=0x01):
    for port, v in ((0x20, 0x11), (0x21, base_m), (0x21, 0x04), (0x21, icw4),
                    (0xA0, 0x11), (0xA1, base_s), (0xA1, 0x02), (0xA1, icw4)):
        m.outb(port, v)


def test_vector_base_from_icw2_and_fully_nested_priority_with_eoi():
    m = Machine()
    _init(m, 0x40, 0x48)
    b = m.board
    b.set_irq(3, True); b.set_irq(3, False)
    b.set_irq(1, True); b.set_irq(1, False)
    assert m.take() == 0x41                    # IRQ 1 beats IRQ 3
    assert m.board.pending_interrupt() is None  # IRQ 3 waits: IRQ 1 is in service
    m.outb(0x20, 0x0B)                          # OCW3: read ISR
    assert m.inb(0x20) == 0x02
    m.outb(0x20, 0x0A)                          # OCW3: read IRR
    assert m.inb(0x20) == 0x08
    m.outb(0x20, 0x20)                          # non-specific EOI
    assert m.take() == 0x43
    m.outb(0x20, 0x63)                          # specific EOI for IRQ 3
    m.outb(0x20, 0x0B)
    assert m.inb(0x20) == 0


def test_higher_priority_nests_over_lower_in_service():
    m = Machine()
    _init(m)
    m.board.set_irq(5, True); m.board.set_irq(5, False)
    assert m.take() == 0x25
    m.board.set_irq(0, True); m.board.set_irq(0, False)
    assert m.take() == 0x20                     # IRQ 0 interrupts the IRQ 5 handler


def test_imr_masks_and_unmasking_delivers_the_held_request():
    m = Machine()
    _init(m)
    m.outb(0x21, 0x01)
    assert m.inb(0x21) == 0x01
    m.board.set_irq(0, True); m.board.set_irq(0, False)
    assert m.take() is None
    m.outb(0x21, 0x00)
    assert m.take() == 0x20


def test_edge_needs_a_new_rising_edge_but_level_stays_requested():
    m = Machine()
    _init(m)
    b = m.board
    b.set_irq(3, True)
    assert m.take() == 0x23
    m.outb(0x20, 0x20)
    assert m.take() is None                     # edge: the line is still high, no new edge
    m.outb(0x4D0, 0x08)                         # ELCR: IRQ 3 level-triggered
    b.set_irq(3, False); b.set_irq(3, True)
    assert m.take() == 0x23
    m.outb(0x20, 0x20)
    assert m.take() == 0x23                     # level: still asserted after EOI
    m.outb(0x20, 0x20)
    b.set_irq(3, False)
    assert m.take() is None
    assert m.inb(0x4D0) == 0x08


def test_cascade_slave_irqs_through_master_irq2():
    m = Machine()
    _init(m)
    m.board.set_irq(8, True); m.board.set_irq(8, False)
    assert m.board.pending_interrupt() == 0x28
    assert m.board.ack_interrupt() == 0x28
    m.outb(0x20, 0x0B)
    assert m.inb(0x20) == 0x04                  # master: IRQ 2 in service
    m.outb(0xA0, 0x0B)
    assert m.inb(0xA0) == 0x01                  # slave: IRQ 0 (IRQ 8) in service


def test_auto_eoi_leaves_isr_clear():
    m = Machine()
    _init(m, icw4=0x03)                         # 8086 mode, auto-EOI
    m.board.set_irq(4, True); m.board.set_irq(4, False)
    assert m.take() == 0x24
    m.outb(0x20, 0x0B)
    assert m.inb(0x20) == 0
    m.board.set_irq(6, True); m.board.set_irq(6, False)
    assert m.take() == 0x26                     # no EOI needed


def test_spurious_irq7_when_the_request_is_gone_at_inta():
    m = Machine()
    _init(m)
    m.outb(0x4D0, 0x10)                         # IRQ 4 level
    m.board.set_irq(4, True)
    assert m.board.pending_interrupt() == 0x24
    m.board.set_irq(4, False)                   # the device drops its line before INTA
    assert m.board.pic.ack() == 0x27
    m.outb(0x20, 0x0B)
    assert m.inb(0x20) == 0                     # a spurious IRQ sets no ISR bit


def test_poll_command_returns_the_request_and_acknowledges_it():
    m = Machine()
    _init(m)
    m.board.set_irq(2 + 1, True); m.board.set_irq(3, False)
    m.outb(0x20, 0x0C)                          # OCW3 poll
    assert m.inb(0x20) == 0x83
    m.outb(0x20, 0x0B)
    assert m.inb(0x20) == 0x08


def test_rotate_on_nonspecific_eoi_makes_the_serviced_irq_lowest():
    m = Machine()
    _init(m)
    m.board.set_irq(1, True); m.board.set_irq(1, False)
    assert m.take() == 0x21
    m.outb(0x20, 0xA0)                          # rotate on non-specific EOI
    m.board.set_irq(0, True); m.board.set_irq(0, False)
    m.board.set_irq(2 + 2, True); m.board.set_irq(4, False)
    assert m.take() == 0x24                     # IRQ 2 now highest: IRQ 4 beats IRQ 0


def test_power_on_state_is_documented_base_0x20_unmasked():
    m = Machine()
    assert m.inb(0x21) == 0 and m.inb(0xA1) == 0
    m.board.set_irq(0, True); m.board.set_irq(0, False)
    assert m.take() == 0x20
