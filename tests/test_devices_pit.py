"""The 8254 at its ports: counting in modes 0/2/3, latch, read-back, channel 2 gate, IRQ 0."""

from devices_helpers import Machine


def _program(m, ch, mode, count, rw=3):
    m.outb(0x43, (ch << 6) | (rw << 4) | (mode << 1))
    if rw in (1, 3):
        m.outb(0x40 + ch, count & 0xFF)
    if rw in (2, 3):
        m.outb(0x40 + ch, count >> 8)


def _read16(m, ch):
    lo = m.inb(0x40 + ch)
    return lo | (m.inb(0x40 + ch) << 8)


def test_mode2_counts_down_and_reloads_with_an_irq0_each_period():
    m = Machine()
    _program(m, 0, 2, 1000)
    m.now = 300
    m.outb(0x43, 0x00)                          # latch channel 0
    assert _read16(m, 0) == 700
    m.now = 1250
    m.outb(0x43, 0x00)
    assert _read16(m, 0) == 750                 # reloaded at 1000
    assert m.board.next_event() == 1000
    m.run_to(1000)
    assert m.take() == 0x20
    m.board.io_write(0x20, 1, 0x20)
    assert m.board.next_event() == 2000


def test_missed_periods_collapse_into_one_interrupt():
    m = Machine()
    _program(m, 0, 2, 100)
    m.run_to(1050)                              # ten periods while the CPU did not look
    assert m.take() == 0x20
    m.board.io_write(0x20, 1, 0x20)
    assert m.take() is None
    assert m.board.next_event() == 1100


def test_mode0_interrupts_once_at_terminal_count_and_out_goes_high():
    m = Machine()
    _program(m, 0, 0, 500)
    m.outb(0x43, 0xE2)                          # read-back: status of channel 0
    st = m.inb(0x40)
    assert st & 0x80 == 0 and (st >> 1) & 7 == 0 and (st >> 4) & 3 == 3
    m.run_to(500)
    assert m.take() == 0x20
    assert m.board.next_event() is None         # one shot
    m.outb(0x43, 0xE2)
    assert m.inb(0x40) & 0x80                   # OUT high after terminal count


def test_mode3_square_wave_counts_by_two():
    m = Machine()
    _program(m, 0, 3, 1000)
    m.now = 100
    m.outb(0x43, 0x00)
    assert _read16(m, 0) == 800
    m.outb(0x43, 0xE2)
    assert m.inb(0x40) & 0x80                   # first half: OUT high
    m.now = 700
    m.outb(0x43, 0xE2)
    assert not m.inb(0x40) & 0x80               # second half: OUT low


def test_latch_freezes_the_value_until_both_bytes_are_read():
    m = Machine()
    _program(m, 0, 2, 5000)
    m.now = 1000
    m.outb(0x43, 0x00)
    m.now = 3000
    assert _read16(m, 0) == 4000                # the value at latch time
    assert _read16(m, 0) == 2000                # live again


def test_read_back_latches_count_and_status_of_several_channels():
    m = Machine()
    _program(m, 0, 2, 4000)
    _program(m, 1, 0, 3000)
    m.now = 1000
    m.outb(0x43, 0xC6)                          # count + status of channels 0 and 1
    assert (m.inb(0x40) >> 1) & 7 == 2          # status first
    assert _read16(m, 0) == 3000
    assert (m.inb(0x41) >> 1) & 7 == 0
    assert _read16(m, 1) == 2000


def test_lobyte_only_access_and_bcd():
    m = Machine()
    _program(m, 0, 2, 200, rw=1)
    m.now = 50
    assert m.inb(0x40) == 150
    m.outb(0x43, 0x35)                          # BCD, mode 2, lobyte/hibyte
    m.outb(0x40, 0x00)
    m.outb(0x40, 0x10)                          # 1000 in BCD
    m.now = 50 + 1
    m.outb(0x43, 0x00)
    assert _read16(m, 0) == 0x0999


def test_channel2_gate_and_out_through_port_0x61():
    m = Machine()
    m.outb(0x61, 0x00)                          # gate low
    _program(m, 2, 0, 1000)
    m.now = 5000
    assert not m.inb(0x61) & 0x20               # gate low: mode 0 does not count
    m.outb(0x61, 0x01)                          # gate high: counting starts
    m.now = 5999
    assert not m.inb(0x61) & 0x20
    m.now = 6000
    assert m.inb(0x61) & 0x20                   # terminal count: OUT2 high
    a, b = m.inb(0x61) & 0x10, m.inb(0x61) & 0x10
    assert a != b                               # the refresh bit toggles
    assert m.board.next_event() is None         # channel 2 raises no IRQ
