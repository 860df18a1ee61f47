"""The machine clock: device deadlines, firing order, re-arming, unit conversions."""

import pytest

from vmcfg.vmm.clock import PIT_HZ, TSC_HZ, Clock


def test_next_deadline_is_the_earliest_armed_timer():
    c = Clock()
    a = c.timer("a", lambda now: None)
    b = c.timer("b", lambda now: None)
    assert c.next_deadline() is None
    a.arm(500)
    b.arm(300)
    assert c.next_deadline() == 300
    b.cancel()
    assert c.next_deadline() == 500 and not b.armed


def test_advance_fires_due_timers_in_deadline_order_and_lets_them_rearm():
    c = Clock()
    fired = []

    def periodic(now):
        fired.append(("p", now))
        p.arm(p_next[0])
        p_next[0] += 100

    p_next = [200]
    p = c.timer("p", periodic)
    o = c.timer("o", lambda now: fired.append(("o", now)))
    p.arm(100)
    o.arm(150)
    assert c.advance(250)
    # p at 100 re-arms for 200; o at 150; p at 200 re-arms for 300 (not yet due)
    assert [f[0] for f in fired] == ["p", "o", "p"]
    assert c.next_deadline() == 300
    assert not c.advance(299)


def test_rescheduled_flag_tells_the_run_loop_a_deadline_moved():
    c = Clock()
    t = c.timer("t", lambda now: None)
    t.arm(10)
    assert c.rescheduled
    c.rescheduled = False
    t.arm(10)
    assert not c.rescheduled                # same deadline: nothing to re-plan
    t.cancel()
    assert c.rescheduled


def test_a_timer_rearming_in_the_past_forever_is_reported():
    c = Clock()
    t = c.timer("bad", lambda now: t.arm(now))
    t.arm(0)
    with pytest.raises(RuntimeError, match="re-armed itself"):
        c.advance(5)


def test_conversions_between_device_clocks_and_tsc_ticks():
    c = Clock()
    assert TSC_HZ == PIT_HZ
    assert c.to_ticks(PIT_HZ, 1000) == 1000
    assert c.periods(3_579_545, TSC_HZ) == 3_579_545        # one virtual second
    assert c.to_ticks(32768, 1) == -(-TSC_HZ // 32768)      # rounded up
    c2 = Clock(hz=1_000_000_000, source=lambda: 42)
    assert c2.now() == 42 and c2.to_ticks(PIT_HZ, PIT_HZ) == 1_000_000_000
