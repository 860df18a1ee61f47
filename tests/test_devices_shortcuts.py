"""The devices' shortcuts on the timer-interrupt and direct-I/O paths give what the general
code gives: one edge (pulse) against a rise and a fall, INTA against pending + ack, the
clock's remembered earliest deadline against a scan, the PM timer's port reader against
timer(), a PIT rate generator's deadlines and latched counts at a clock rate other than the
PIT's."""

import random

from devices_helpers import Machine

from vmcfg.vmm.clock import PIT_HZ, Clock
from vmcfg.vmm.devices.ioapic import IoApic
from vmcfg.vmm.devices.pic import I8259, PicPair
from vmcfg.vmm.devices.pm import PM_TMR, PM_TIMER_HZ


def _chip_state(c: I8259):
    return (c.irr, c.isr, c.imr, c.last_level, c.priority_add)


def test_pic_pulse_is_a_rise_then_a_fall_on_every_line_and_trigger_mode():
    rng = random.Random(7)
    for _ in range(400):
        a, b = PicPair(), PicPair()
        seed = rng.random()
        for pair in (a, b):
            rng2 = random.Random(seed)
            for chip in (pair.master, pair.slave):
                chip.elcr = rng2.randrange(256) & chip.elcr_mask
                chip.irr, chip.isr, chip.imr = (rng2.randrange(256) for _ in range(3))
                chip.last_level = rng2.randrange(256)
                chip.priority_add = rng2.randrange(8)
        irq = rng.randrange(16)
        a.pulse(irq)
        b.set_irq(irq, True)
        b.set_irq(irq, False)
        assert _chip_state(a.master) == _chip_state(b.master)
        assert _chip_state(a.slave) == _chip_state(b.slave)
        assert a.pending() == b.pending()


def test_ioapic_pulse_is_a_rise_then_a_fall():
    for entry in (0x30, 0x30 | 1 << 16, 0x30 | 1 << 15, 0x30 | 1 << 15 | 1 << 14):
        for was_high in (False, True):
            sent = {"a": [], "b": []}
            apics = {k: IoApic(lambda *args, k=k: sent[k].append(args)) for k in sent}
            for k, io in apics.items():
                io.redir[2] = entry
                if was_high:
                    io.levels |= 1 << 2
            apics["a"].pulse(2)
            apics["b"].set_irq(2, True)
            apics["b"].set_irq(2, False)
            assert sent["a"] == sent["b"]
            assert apics["a"].redir == apics["b"].redir
            assert apics["a"].levels == apics["b"].levels


def test_pit_expiry_raises_irq0_once_per_period_and_inta_takes_it():
    m = Machine()
    m.outb(0x43, 0x34)                 # channel 0, lobyte/hibyte, mode 2
    m.outb(0x40, 1000 & 0xFF)
    m.outb(0x40, 1000 >> 8)
    taken = []
    for t in range(1000, 5001, 1000):
        m.run_to(t)
        taken.append(m.take())
        assert m.board.pending_interrupt() is None
        m.outb(0x20, 0x20)             # EOI
    assert taken == [0x20] * 5
    assert m.board.ack_interrupt() is None        # nothing pending: nothing taken
    m.outb(0x21, 0x01)                 # mask IRQ 0: the edge is latched, not presented
    m.run_to(6000)
    assert m.board.pending_interrupt() is None
    assert m.board.pic.master.irr & 1


def test_the_pit_does_not_raise_irq0_while_the_hpet_has_it():
    m = Machine()
    m.board.hpet.config |= 2           # LEG_RT_CNF
    m.outb(0x43, 0x34)
    m.outb(0x40, 100)
    m.outb(0x40, 0)
    m.run_to(1000)
    assert m.board.pic.master.irr & 1 == 0 and m.board.pending_interrupt() is None


def test_rate_generator_deadlines_at_another_clock_rate_match_the_conversions():
    hz = 3 * PIT_HZ + 17               # a TSC rate that is no multiple of the PIT's
    clock = Clock(hz)
    m = Machine(clock=clock)
    m.outb(0x43, 0x34)
    m.outb(0x40, 0x39)
    m.outb(0x40, 0x30)                 # 0x3039 = 12345
    n = 0x3039
    for k in range(1, 6):
        assert m.board.next_event() == clock.to_ticks(PIT_HZ, k * n)
        m.run_to(m.board.next_event())
        m.take()
        m.outb(0x20, 0x20)
    now = m.now + 777
    m.now = now
    m.outb(0x43, 0x00)                 # latch channel 0
    lo, hi = m.inb(0x40), m.inb(0x40)
    d = clock.periods(PIT_HZ, now)
    assert lo | hi << 8 == n - d % n


def test_clock_remembers_the_earliest_deadline_through_arm_cancel_and_advance():
    rng = random.Random(3)
    c = Clock()
    fired = []
    timers = [c.timer(f"t{i}", lambda now, i=i: fired.append(i)) for i in range(6)]
    for _ in range(2000):
        t = rng.choice(timers)
        op = rng.randrange(3)
        if op == 0:
            t.arm(rng.randrange(1000))
        elif op == 1:
            t.cancel()
        else:
            before = [x.deadline for x in timers]
            now = rng.randrange(1000)
            fired.clear()
            c.advance(now)
            due = sorted((d, i) for i, d in enumerate(before) if d is not None and d <= now)
            assert fired == [i for _d, i in due]          # earliest first, then creation order
        scan = min((x.deadline for x in timers if x.deadline is not None), default=None)
        assert c.next_deadline() == scan


def test_pm_timer_port_reader_is_timer():
    m = Machine()
    for t in (0, 1, 12345, 10 ** 9 + 7, 5 * 10 ** 10):
        m.now = t
        v = m.board.io_read(PM_TMR, 4)
        assert v == m.board.pm.timer() == (t * PM_TIMER_HZ // m.board.clock.hz) & 0xFFFFFF
    m.now = 10 ** 9 + 7
    assert m.board.io_read(PM_TMR + 1, 1) == (m.board.pm.timer() >> 8) & 0xFF


def test_an_imr_write_of_the_same_mask_changes_nothing_another_mask_does():
    m = Machine()
    b = m.board
    m.outb(0x21, 0x05)
    b.changed = False
    m.outb(0x21, 0x05)
    assert not b.changed and m.inb(0x21) == 0x05
    m.outb(0x21, 0x04)
    assert b.changed and m.inb(0x21) == 0x04
