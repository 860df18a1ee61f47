"""Running to a virtual-time deadline natively: the block counter's hard and soft deadlines,
and timer interrupts taken at block boundaries without single-stepping."""

import pytest

LOOP = bytes.fromhex("48ffc0" "48ffc3" "48ffc1" "ebf5")   # inc rax; inc rbx; inc rcx; jmp back
BASE = 0x1000


def _engine(native):
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    from vmcfg.vmm.counter import BlockCounter
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(BASE, LOOP)
    seen = []

    def count_block(address, size):
        seen.append((address, size))
        assert (address, size) == (BASE, len(LOOP))
        return 4
    c = BlockCounter(uc, count_block, 0, 0x10000, native=native)
    return uc, c


@pytest.mark.parametrize("native", [True, False])
def test_soft_deadline_lets_the_crossing_block_finish(native):
    from unicorn import x86_const as X
    uc, c = _engine(native)
    if native and not c.native:
        pytest.skip("no native block stub on this host")
    c.set_count(0)
    c.set_soft_deadline(10)
    uc.emu_start(BASE, 0xFFFF_FFFF)
    assert c.clear_stop()
    # blocks start at 0, 4, 8 (< 10: they run); the one starting at 12 does not
    assert c.count == 12
    assert uc.reg_read(X.UC_X86_REG_RAX) == 3 and uc.reg_read(X.UC_X86_REG_RIP) == BASE
    # a hard deadline at the same count stops before the block that would cross it
    c.set_soft_deadline(None)
    c.set_deadline(12 + 10)
    uc.emu_start(BASE, 0xFFFF_FFFF)
    assert c.clear_stop()
    assert c.count == 20 and uc.reg_read(X.UC_X86_REG_RAX) == 5
    # a soft deadline already reached stops before the first block
    c.set_deadline(None)
    c.set_soft_deadline(20)
    uc.emu_start(BASE, 0xFFFF_FFFF)
    assert c.clear_stop() and c.count == 20 and uc.reg_read(X.UC_X86_REG_RAX) == 5
