"""The HPET at 0xFED00000: capabilities, the main counter on virtual time, status, interrupts."""

from __future__ import annotations

import json

from devices_helpers import Machine

from vmcfg.vmm.clock import TSC_HZ

BASE = 0xFED00000
CAP, CFG, STS, CNT = 0x000, 0x010, 0x020, 0x0F0
SECOND = TSC_HZ                                 # virtual TSC ticks in one second


def _counts(ticks: int) -> int:
    """Main-counter periods (100 MHz) in `ticks` of virtual TSC."""
    return ticks * 100_000_000 // TSC_HZ


def _t(n: int, reg: int = 0) -> int:
    return 0x100 + 0x20 * n + reg


class Hpet:
    def __init__(self) -> None:
        self.m = Machine()
        self.b = self.m.board
        self.m.outb(0x21, 0xFF)                      # PIC lines masked: the IOAPIC's only
        self.m.outb(0xA1, 0xFF)
        self.b.mmio_write(0xFEE000F0, 4, 0x1FF)     # LAPIC software-enabled

    def r64(self, off: int) -> int:
        return self.b.mmio_read(BASE + off, 8)

    def r32(self, off: int) -> int:
        return self.b.mmio_read(BASE + off, 4)

    def w64(self, off: int, v: int) -> None:
        self.b.mmio_write(BASE + off, 8, v)

    def w32(self, off: int, v: int) -> None:
        self.b.mmio_write(BASE + off, 4, v)

    def ioapic_route(self, pin: int, vector: int, level: bool = False) -> None:
        self.b.mmio_write(0xFEC00000, 4, 0x10 + 2 * pin)
        self.b.mmio_write(0xFEC00010, 4, vector | (0x8000 if level else 0))
        self.b.mmio_write(0xFEC00000, 4, 0x11 + 2 * pin)
        self.b.mmio_write(0xFEC00010, 4, 0)

    def take(self) -> int | None:
        v = self.m.take()
        if v is not None:
            self.b.mmio_write(0xFEE000B0, 4, 0)     # EOI
        return v


def test_capabilities_describe_a_100mhz_64bit_hpet_with_three_timers():
    h = Hpet()
    cap = h.r64(CAP)
    assert cap >> 32 == 10_000_000                   # femtoseconds per tick: 100 MHz
    assert (cap >> 16) & 0xFFFF == 0x8086
    assert cap & (1 << 15) and cap & (1 << 13)       # legacy route capable, 64-bit counter
    assert (cap >> 8) & 0x1F == 2                    # three timers
    assert cap & 0xFF == 1
    assert h.r32(CAP + 4) == 10_000_000 and h.r32(CAP) == cap & 0xFFFFFFFF
    h.w64(CAP, 0)
    assert h.r64(CAP) == cap                         # read-only
    t0, t1 = h.r64(_t(0)), h.r64(_t(1))
    assert t0 & (1 << 4) and t0 & (1 << 5)           # timer 0: periodic and 64-bit capable
    assert not t1 & (1 << 4) and t1 & (1 << 5)
    assert t0 >> 32 != 0                             # some IOAPIC route is offered
    assert h.r64(_t(0, 8)) == (1 << 64) - 1          # comparators start all ones


def test_counter_is_halted_until_enabled_then_counts_virtual_time_at_100mhz():
    h = Hpet()
    h.m.now = 5 * SECOND
    assert h.r64(CNT) == 0
    h.w32(CFG, 1)
    assert h.r64(CFG) & 1
    h.m.now += SECOND
    assert h.r64(CNT) == 100_000_000
    h.m.now += SECOND // 2
    assert abs(h.r64(CNT) - 150_000_000) <= 100      # within one TSC tick's worth
    h.w32(CFG, 0)                                    # halt: the counter keeps its value
    held = h.r64(CNT)
    h.m.now += 10 * SECOND
    assert h.r64(CNT) == held
    h.w32(CFG, 1)
    h.m.now += SECOND
    assert h.r64(CNT) == held + 100_000_000          # and resumes from it


def test_counter_reads_as_two_halves_and_takes_writes_while_halted():
    h = Hpet()
    h.w64(CNT, 0x1234_5678_FFFF_FF00)
    assert h.r32(CNT) == 0xFFFF_FF00 and h.r32(CNT + 4) == 0x1234_5678
    h.w32(CNT + 4, 0xAB)                             # one half: the other stays
    assert h.r64(CNT) == 0x0000_00AB_FFFF_FF00
    h.w32(CNT, 0x10)
    assert h.r64(CNT) == 0xAB_0000_0010
    h.w32(CFG, 1)
    h.m.now += SECOND // 100                         # ~10 ms: ~1,000,000 counts
    assert h.r64(CNT) == 0xAB_0000_0010 + _counts(SECOND // 100)
    assert abs(_counts(SECOND // 100) - 1_000_000) < 100
    h.w64(CNT, 0xFFFF_FFFF_FFFF_FFFF - 99)           # the 64-bit counter wraps to 0
    h.m.now += SECOND // 100
    assert h.r64(CNT) == _counts(SECOND // 100) - 100


def test_level_timer_sets_status_until_written_one_and_interrupts_through_the_ioapic():
    h = Hpet()
    h.ioapic_route(20, 0x41, level=True)
    h.w64(_t(2, 8), 1_000_000)                       # 10 ms
    h.w64(_t(2), (20 << 9) | (1 << 2) | (1 << 1))    # route 20, enabled, level
    assert h.r64(_t(2)) & 0x3E06 == (20 << 9) | 6
    assert h.b.next_event() is None                  # halted: no deadline
    h.w32(CFG, 1)
    assert h.b.next_event() == -(-SECOND // 100)
    h.m.run_to(SECOND // 200)
    assert h.r64(STS) == 0 and h.take() is None
    h.m.run_to(SECOND // 50)
    assert h.r64(STS) == 1 << 2
    assert h.m.take() == 0x41
    h.b.mmio_write(0xFEE000B0, 4, 0)                 # EOI while still asserted:
    assert h.m.take() == 0x41                        # level-triggered, delivered again
    h.w32(STS, 1 << 1)                               # another bit: nothing cleared
    assert h.r64(STS) == 1 << 2
    h.w32(STS, 1 << 2)                               # the line drops
    assert h.r64(STS) == 0
    h.b.mmio_write(0xFEE000B0, 4, 0)
    assert h.take() is None and h.b.next_event() is None   # one-shot, 64-bit: done


def test_periodic_timer_interrupts_every_period_and_collapses_missed_ones():
    h = Hpet()
    h.ioapic_route(16, 0x50)
    h.w64(_t(0), (16 << 9) | (1 << 6) | (1 << 3) | (1 << 2))   # periodic, VAL_SET, enabled
    h.w64(_t(0, 8), 100_000)                         # 1 ms period
    h.w32(CFG, 1)
    ms = SECOND / 1000
    h.m.run_to(int(1.5 * ms))
    assert h.take() == 0x50 and h.take() is None
    assert h.r64(_t(0, 8)) == 200_000                # the comparator moved on by the period
    h.m.run_to(int(2.5 * ms))
    assert h.take() == 0x50
    h.m.run_to(int(7.5 * ms))                        # five periods unseen: one interrupt
    assert h.take() == 0x50 and h.take() is None
    assert h.r64(_t(0, 8)) == 800_000


def test_a_comparator_written_in_two_halves_gets_both_with_val_set():
    """A 64-bit store reaches MMIO as two 32-bit writes, low half first: VAL_SET holds for
    both, and the comparator and the period get the whole value."""
    h = Hpet()
    h.w32(_t(0), (1 << 6) | (1 << 3))                # periodic, VAL_SET
    h.w32(_t(0) + 4, 0)
    h.w32(_t(0, 8), 0x2000)
    h.w32(_t(0, 8) + 4, 0x1)
    assert h.r64(_t(0, 8)) == 0x1_0000_2000
    assert not h.r64(_t(0)) & (1 << 6)               # VAL_SET reads as 0
    h.w32(_t(0, 8), 0x3000)                          # without VAL_SET: the period only
    h.w32(_t(0, 8) + 4, 0)
    assert h.r64(_t(0, 8)) == 0x1_0000_2000
    assert h.b.hpet.timers[0].period == 0x3000
    h.w32(_t(1, 8), 0x500)                           # one-shot: the low half keeps the high
    assert h.r64(_t(1, 8)) == 0xFFFF_FFFF_0000_0500


def test_legacy_route_takes_irq0_from_the_pit():
    h = Hpet()
    h.ioapic_route(2, 0x30)
    h.m.outb(0x43, 0x34)                             # PIT channel 0, mode 2, count 100
    h.m.outb(0x40, 100)
    h.m.outb(0x40, 0)
    h.w32(CFG, 3)                                    # enabled, legacy replacement
    h.w64(_t(0, 8), 500_000)                         # 5 ms
    h.w64(_t(0), 1 << 2)
    h.m.run_to(SECOND // 1000)                       # PIT periods pass: no IRQ 0 from it
    assert h.take() is None
    h.m.run_to(SECOND // 100)
    assert h.take() == 0x30                          # timer 0 on IOAPIC pin 2
    h.w32(CFG, 1)                                    # legacy off: the PIT's IRQ 0 again
    h.m.run_to(SECOND // 50)
    assert h.take() == 0x30


def test_32bit_mode_truncates_the_comparator_and_matches_the_low_half():
    h = Hpet()
    h.ioapic_route(17, 0x60)
    h.w64(CNT, 0x5_FFFF_0000)
    h.w64(_t(1), (17 << 9) | (1 << 8) | (1 << 2))   # 32-bit mode, enabled
    h.w64(_t(1, 8), 0x1_0000_1000)
    assert h.r64(_t(1, 8)) == 0x1000
    h.w32(CFG, 1)
    # the low half 0xFFFF0000 reaches 0x1000 after 0x11000 counts
    assert h.b.next_event() == -(-0x11000 * SECOND // 100_000_000)
    h.m.run_to(h.b.next_event())
    assert h.take() == 0x60


GUEST = """BITS 64
lea rax, [rel pd3]          ; map 0xFEC00000-0xFEDFFFFF (a 2 MiB page, uncached) via PDPT[3]
or rax, 3
mov rbx, cr3
mov rbx, [rbx]
and rbx, ~0xFFF
mov [rbx + 3 * 8], rax
lea rdi, [rel pd3]
mov rax, 0xFEC00000 | 0x93
mov [rdi + 0x1F6 * 8], rax
mov rax, cr3
mov cr3, rax
mov rdi, 0xFED00000
mov rax, [rdi]              ; capabilities
shr rax, 32
cmp eax, 10000000
jne fail
mov rax, [rdi + 0xF0]       ; halted: still 0
test rax, rax
jnz fail
mov dword [rdi + 0x10], 1   ; ENABLE_CNF
mov rbx, [rdi + 0xF0]
mov ecx, 20000
spin: dec ecx
jnz spin
mov rdx, [rdi + 0xF0]
cmp rdx, rbx
jbe fail
mov eax, [rdi + 0xF0]       ; the low half agrees with the 64-bit read
mov esi, [rdi + 0xF4]
shl rsi, 32
or rax, rsi
cmp rax, rdx
jb fail
mov al, 0
out 0xf4, al
hlt
fail: mov al, 1
out 0xf4, al
hlt
align 4096
pd3: times 4096 db 0
"""


def test_guest_enables_the_hpet_and_sees_its_counter_advance(tmp_path, cli):
    p = tmp_path / "hpet.asm"
    p.write_text(GUEST)
    r = cli("launch", "baseline", "--guest", str(p), "--json")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc.get("message")
    assert doc["guest_exit_code"] == 0


IRQ_GUEST = """BITS 64
org 0x100000
lea rax, [rel pd3]          ; map the IOAPIC, HPET and LAPIC (2 MiB pages, uncached)
or rax, 3
mov rbx, cr3
mov rbx, [rbx]
and rbx, ~0xFFF
mov [rbx + 3 * 8], rax
lea rdi, [rel pd3]
mov rax, 0xFEC00000 | 0x93
mov [rdi + 0x1F6 * 8], rax
mov rax, 0xFEE00000 | 0x93
mov [rdi + 0x1F7 * 8], rax
mov rax, cr3
mov cr3, rax
lea rax, [rel tick]         ; IDT gate 0x40 -> tick
mov rdi, idt + 0x40 * 16
mov word [rdi], ax
mov word [rdi + 2], 0x08
mov word [rdi + 4], 0x8E00
shr rax, 16
mov word [rdi + 6], ax
shr rax, 16
mov dword [rdi + 8], eax
lidt [rel idtr]
mov al, 0xFF                ; PICs masked: the IOAPIC delivers
out 0x21, al
out 0xA1, al
mov rdi, 0xFEE00000
mov dword [rdi + 0xF0], 0x1FF          ; LAPIC software-enabled
mov rdi, 0xFEC00000
mov dword [rdi], 0x14                  ; IOAPIC pin 2 -> vector 0x40, edge
mov dword [rdi + 0x10], 0x40
mov dword [rdi], 0x15
mov dword [rdi + 0x10], 0
mov rdi, 0xFED00000
mov qword [rdi + 0x100], 0x4C          ; timer 0: periodic, VAL_SET, interrupts on
mov qword [rdi + 0x108], 100000        ; 1 ms at 100 MHz
mov dword [rdi + 0x10], 3              ; enabled, legacy route: timer 0 -> IRQ 0
sti
idle: hlt
cmp dword [rel ticks], 5
jb idle
cli
mov rax, [rdi + 0xF0]
mov al, 1
cmp rax, 5 * 100000         ; five periods of the main counter have passed
jb done
mov eax, [rdi + 0x108]      ; and the comparator moved on by the period
cmp eax, 6 * 100000
mov al, 2
jb done
mov al, 0
done: out 0xf4, al
hlt
tick: inc dword [rel ticks]
push rdi
mov rdi, 0xFEE00000
mov dword [rdi + 0xB0], 0              ; EOI (edge: the HPET's status stays clear)
pop rdi
iretq
ticks: dd 0
idtr: dw 256 * 16 - 1
dq idt
align 4096
pd3: times 4096 db 0
idt: times 256 * 16 db 0
"""


def test_guest_takes_periodic_hpet_interrupts_on_the_legacy_route(tmp_path, cli):
    """Timer 0, periodic, legacy replacement route: IRQ 0 through IOAPIC pin 2 to the
    guest's handler five times, while it waits in HLT."""
    p = tmp_path / "hpet_irq.asm"
    p.write_text(IRQ_GUEST)
    r = cli("launch", "baseline", "--guest", str(p), "--json", "--max-instructions", "2000000")
    doc = json.loads(r.stdout)
    assert doc["status"] == "debug-exit", doc.get("message")
    assert doc["guest_exit_code"] == 0
