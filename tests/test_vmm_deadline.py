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


LATE_GUEST = """
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x20, tick
        lidt [idtr]
        pic_init
        xor al, al
        out 0x21, al
        mov al, 0x34                    ; PIT ch0 mode 2, period 1000 ticks
        out 0x43, al
        mov ax, 1000
        out 0x40, al
        mov al, ah
        out 0x40, al                    ; the PIT counts from here
        rdtsc
        mov [rel t0], eax
        sti
.busy:                                  ; one long block: 32 INCs and the loop test
%rep 32
        inc rbx
%endrep
        cmp qword [rel ticks], 12
        jb .busy
        cli
        mov eax, [rel t0]
        call puthex
        xor ecx, ecx
.out:   mov rax, [rel stamps + rcx * 8]
        call puthex
        inc ecx
        cmp ecx, 12
        jb .out
        call newline
        exit 0
tick:   push rax
        push rdx
        push rcx
        rdtsc                           ; the handler's first instruction
        mov rcx, [rel ticks]
        mov [rel stamps + rcx * 8], rax
        inc qword [rel ticks]
        mov al, 0x20
        out 0x20, al
        pop rcx
        pop rdx
        pop rax
        iretq
align 16
idtr:   dw 256 * 16 - 1
        dq idt
align 4096
idt:    times 256 * 16 db 0
ticks:  dq 0
t0:     dq 0
stamps: times 16 dq 0
"""


def _late_run(tmp_path):
    from vmm_helpers import run
    g = tmp_path / "late.asm"
    g.write_text(LATE_GUEST)
    res, _recs = run("baseline", str(g), max_instructions=2_000_000)
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.message
    vals = [int(x, 16) for x in res.console.replace("0x", " ").split()]
    return res, vals[0], vals[1:]


def test_timer_interrupt_is_taken_at_the_first_block_boundary_after_it(tmp_path):
    """PIT period 1000 ticks, a guest loop made of one 34-instruction block: every interrupt
    is taken at or after its deadline (never early), within one block of it, and the same
    run gives the same instants."""
    res, t0, stamps = _late_run(tmp_path)
    assert len(stamps) == 12
    # t0 is RDTSC one instruction after the OUT that started the PIT
    start = t0 - 1
    late = [s - (start + 1000 * (k + 1)) for k, s in enumerate(stamps)]
    assert all(0 <= x <= 34 for x in late), late
    again, t0b, stamps_b = _late_run(tmp_path)
    assert (t0b, stamps_b) == (t0, stamps) and again.instructions == res.instructions


SHADOW_GUEST = """
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x20, tick
        lidt [idtr]
        pic_init
        xor al, al
        out 0x21, al
        mov al, 0x34                    ; PIT ch0 mode 2, period 997 ticks
        out 0x43, al
        mov ax, 997
        out 0x40, al
        mov al, ah
        out 0x40, al
again:                                  ; the timer expires in the CLI section; the engine
        cli                             ; stops at the block end, which is right after STI
%rep 20
        inc rbx
%endrep
        sti
shadow: inc rcx                         ; STI's shadow: never interrupted before this one
        inc rdx
        cmp qword [rel ticks], 30
        jb again
        cli
        mov al, [rel bad]
        out 0xf4, al
tick:   push rax
        lea rax, [rel shadow]
        cmp [rsp + 8], rax              ; the return RIP: the instruction after STI?
        jne .ok
        mov byte [rel bad], 1           ; taken inside the shadow
.ok:    inc qword [rel ticks]
        mov al, 0x20
        out 0x20, al
        pop rax
        iretq
align 16
idtr:   dw 256 * 16 - 1
        dq idt
align 4096
idt:    times 256 * 16 db 0
ticks:  dq 0
bad:    db 0
"""


def test_timer_interrupt_waits_for_the_sti_shadow(tmp_path):
    """Interrupts requested while IF = 0 are taken after the instruction that follows STI,
    also when the engine stops at the block boundary right after the STI."""
    from vmm_helpers import run
    g = tmp_path / "shadow.asm"
    g.write_text(SHADOW_GUEST)
    res, _ = run("baseline", str(g), max_instructions=2_000_000)
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert res.instructions > 30 * 25
