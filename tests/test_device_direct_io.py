"""Device I/O that no control intercepts, without a VM exit (issue 14, vcpu/deviceio.py).

The native hook hands IN/OUT to unintercepted ports straight to the device; MMIO goes from
Unicorn's callback straight to the bus.  Every guest here runs with the C helper and with
VMCFG_NO_NATIVE=1 (the trap path in intercepts.py): what the guest reads, the devices' state
afterwards, the interrupts it takes, the instruction count, the virtual TSC and the exits must
be the same, exits must be none where nothing intercepts and exact where a control does.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import pytest

from vmcfg.vmm import native
from vmcfg.vmx.exits import Exit

BUILT = native._load() is not None
N = 200


def _cfg(profile: str = "baseline", *, io_ports=None, on=(), off=()):
    from vmcfg.profile import resolve
    from vmcfg.vmx.table import CONTROL_BY_PATH
    cfg = resolve(profile, cpu="cvmm").config
    for path, want in [(p, True) for p in on] + [(p, False) for p in off]:
        c = CONTROL_BY_PATH[path]
        v = cfg.controls.get(c.field, 0)
        cfg.controls[c.field] = (v | c.mask) if want else (v & ~c.mask)
    cfg._active.clear()
    if io_ports is not None:
        cfg.settings["io"]["intercept"] = io_ports
    return cfg


def _image(src: str, mode: int = 64, org: int = 0x100000):
    from vmcfg.vmm.loader import load_image
    with tempfile.NamedTemporaryFile("w", suffix=".asm", delete=False) as f:
        f.write(f"bits {mode}\norg {org:#x}\n" + src)
    try:
        return load_image(f.name, load_address=org, mode=mode)
    finally:
        os.unlink(f.name)


REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
        "r12", "r13", "r14", "r15")


def _run(cfg, image, monkeypatch, *, python: bool, mode: int = 64, handlers=None):
    from vmcfg.vmm.run import run_guest
    if python:
        monkeypatch.setenv("VMCFG_NO_NATIVE", "1")
    else:
        monkeypatch.delenv("VMCFG_NO_NATIVE", raising=False)
    seen = {}
    res = run_guest(cfg, image, memory=16 << 20, mode=mode, handlers=handlers,
                    max_instructions=2_000_000, on_vcpu=lambda v: seen.setdefault("v", v))
    v = seen["v"]
    assert v.fx.native == (BUILT and not python)
    return res, {n: v.gpr(i, 8) for i, n in enumerate(REGS)}, v


def _both(cfg, image, monkeypatch, **kw):
    """Natively and in Python: the same run; returns the native one."""
    rp, gp, vp = _run(cfg, image, monkeypatch, python=True, **kw)
    rn, gn, vn = _run(cfg, image, monkeypatch, python=False, **kw)
    assert (rn.status, rn.guest_exit_code, rn.instructions, rn.tsc) == \
        (rp.status, rp.guest_exit_code, rp.instructions, rp.tsc), (rn.message, rp.message)
    assert rn.exits == rp.exits
    assert gn == gp
    assert vn.platform.pic.master.imr == vp.platform.pic.master.imr
    assert vn.platform.rtc.cmos[0x40] == vp.platform.rtc.cmos[0x40]
    assert vn.platform.testdev.scratch == vp.platform.testdev.scratch
    return rn, gn, vn


# The 8259 pair initialised (ICW1-ICW4: edge, base 0x20, 8086 mode), every line masked.
PIC_MASKED = """\
        mov al, 0x11                ; PIC: ICW1-ICW4, edge, base 0x20, every line masked
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x01
        out 0x21, al
        mov al, 0xff
        out 0x21, al
"""


# The devices a guest talks to all the time, in one loop of N iterations.
DEVICES = f"""
{PIC_MASKED}        mov al, 0xb4                ; PIT channel 2: lo/hi, mode 2, count 0x1000, gate on
        out 0x43, al
        xor al, al
        out 0x42, al
        mov al, 0x10
        out 0x42, al
        mov al, 1
        out 0x61, al
        xor r8, r8
        xor r9, r9
        xor r10, r10
        xor r12, r12
        xor r13, r13
        xor r14, r14
        mov rsi, {N}
l:      mov eax, esi                ; PIC IMR: write i * 7 | 0xf8 (lines 0-2 masked), read back
        imul eax, 7
        or al, 0xf8
        out 0x21, al
        xor eax, eax
        in al, 0x21
        add r8, rax
        mov al, 0x40                ; CMOS RAM byte 0x40: write i, read back
        out 0x70, al
        mov eax, esi
        out 0x71, al
        xor eax, eax
        in al, 0x71
        add r9, rax
        mov dx, 0x3fd               ; UART line status: THR empty, idle
        in al, dx
        add r10, rax
        mov rax, -1                 ; ACPI PM timer, 32-bit: zero-extends in 64-bit code
        mov dx, 0x608
        in eax, dx
        mov r11, rax
        shr rax, 32
        add r12, rax
        mov rax, -1                 ; ... 16-bit: RAX[63:16] stay
        in ax, dx
        shr rax, 16
        add r13, rax
        mov al, 0x80                ; PIT channel 2: latch, read lo then hi
        out 0x43, al
        in al, 0x42
        mov cl, al
        in al, 0x42
        mov ch, al
        movzx ecx, cx
        add r14, rcx
        mov r15, rcx
        xor eax, eax                ; fw_cfg: 16-bit selector 0 (signature), 4 data bytes
        mov dx, 0x510
        out dx, ax
        inc dx
        in al, dx
        mov bl, al
        in al, dx
        mov bh, al
        shl ebx, 16
        in al, dx
        mov bl, al
        in al, dx
        mov bh, al
        rol ebx, 16
        mov eax, 0x12345678         ; pc-testdev scratch: 32-bit write, 16-bit read
        add eax, esi
        out 0xe0, eax
        mov rax, -1
        in ax, 0xe0
        mov rdi, rax
        in al, 0x64                 ; keyboard controller status
        dec rsi
        jnz l
        mov al, 0
        out 0xf4, al
"""
# I/O instructions per iteration, and before the loop (the debug-exit OUT not counted)
PER_ITER, BEFORE = 19, 9


def _expect_values(g, v):
    assert g["r8"] == sum((i * 7 | 0xF8) & 0xFF for i in range(1, N + 1))
    assert g["r9"] == sum(range(1, N + 1))
    assert g["r10"] == N * 0x60
    assert g["r12"] == 0 and g["r13"] == N * 0xFFFFFFFFFFFF
    assert 0 < g["r11"] <= 0xFFFFFF                        # a 24-bit PM timer, running
    assert 0 < g["r15"] <= 0x1000                          # channel 2 counting down
    assert g["rbx"] == int.from_bytes(b"QEMU", "little")
    assert g["rdi"] == 0xFFFFFFFFFFFF0000 | 0x5679         # 0x12345678 + 1 (last i = 1)
    assert v.platform.pic.master.imr == 0xFF                # 1 * 7 | 0xf8
    assert v.platform.rtc.cmos[0x40] == 1
    assert v.platform.testdev.scratch == 0x12345679


def test_unintercepted_device_io_makes_no_exit_and_reads_the_devices(monkeypatch):
    res, g, v = _both(_cfg(), _image(DEVICES), monkeypatch)
    assert res.status == "debug-exit", res.message
    assert res.exits == []
    _expect_values(g, v)
    if BUILT:                                # served by the direct path, not the trap path
        assert v.fx.state.io_direct >= (N - 2) * PER_ITER
        assert v.fx.state.slow < 3 * (PER_ITER + BEFORE)


def _io_log():
    """A user handler for I/O exits: records (port, size, in?) from the qualification (SDM
    "exit qualification for I/O instructions") and emulates the access."""
    log = Counter()

    def h(ctx):
        q = ctx.exit.qualification
        log[(q >> 16, (q & 7) + 1, bool(q & 8))] += 1
        ctx.emulate()
    return log, {Exit.IO_INSTRUCTION: h}


@pytest.mark.parametrize("handler", [False, True])
def test_intercepted_ports_exit_exactly_beside_direct_ones(monkeypatch, handler):
    """I/O bitmaps on 0x21 and 0x511: those accesses exit (a 16-bit OUT to 0x510 too: its
    second byte is 0x511), with their qualifications; every other port stays exit-free and
    the guest sees the same values."""
    cfg = _cfg(io_ports=[(0x21, 0x21), (0x511, 0x511)])
    log, handlers = _io_log() if handler else (None, None)
    res, g, v = _both(cfg, _image(DEVICES), monkeypatch, handlers=handlers)
    assert res.status == "debug-exit", res.message
    assert res.exit_counts() == {"IO_INSTRUCTION": 4 + N * (2 + 1 + 4)}
    _expect_values(g, v)
    if handler:                              # (both runs log)
        assert log == {(0x21, 1, False): 2 * (4 + N), (0x21, 1, True): 2 * N,
                       (0x510, 2, False): 2 * N, (0x511, 1, True): 2 * 4 * N}
    if BUILT:
        assert v.fx.state.io_direct >= (N - 1) * (PER_ITER - 7)


def test_unconditional_io_exiting_makes_every_access_an_exit(monkeypatch):
    cfg = _cfg(on=("primary.unconditional_io_exiting",), off=("primary.use_io_bitmaps",))
    res, g, v = _both(cfg, _image(DEVICES), monkeypatch)
    assert res.status == "debug-exit", res.message
    assert res.exit_counts() == {"IO_INSTRUCTION": BEFORE + N * PER_ITER + 1}
    _expect_values(g, v)
    if BUILT:
        assert v.fx.state.io_direct == 0


def test_live_apply_turns_io_exiting_on_at_once(monkeypatch):
    """A CPUID handler turns unconditional I/O exiting on after the 10th CPUID: from the
    next IN on, each one exits -- the direct path follows the controls in force."""
    def h(ctx):
        ctx.emulate()
        if ctx.exit.seq == 10:
            ctx.set_control("primary.use_io_bitmaps", False)
            ctx.set_control("primary.unconditional_io_exiting", True)
    src = f"mov al, 0x5a\nout 0x21, al\nmov rsi, {N}\nl:\nxor eax, eax\ncpuid\n" \
          "in al, 0x21\nadd r8, rax\ndec rsi\njnz l\nmov al, 0\nout 0xf4, al\n"
    for python in (True, False):
        res, g, v = _run(_cfg(), _image(src), monkeypatch, python=python,
                         handlers={Exit.CPUID: h})
        assert res.status == "debug-exit", res.message
        # the IN after the 10th CPUID and every one after it, then the debug-exit OUT
        assert res.exit_counts() == {"CPUID": N, "IO_INSTRUCTION": N - 9 + 1}
        assert g["r8"] == N * 0x5A


INTERRUPTS = PIC_MASKED + """
        lea rdi, [rel idt + 0x23 * 16]
        lea rax, [rel isr3]
        call gate
        lea rdi, [rel idt + 0x24 * 16]
        lea rax, [rel isr4]
        call gate
        lidt [rel idtr]
        sti
        mov r15, 5
again:  mov al, 0xff                ; mask every line
        out 0x21, al
        mov dx, 0x2003              ; pc-testdev: an edge on lines 3 and 4 (held in IRR)
        xor eax, eax
        out dx, al
        inc eax
        out dx, al
        mov dx, 0x2004
        dec eax
        out dx, al
        inc eax
        out dx, al
        xor r12, r12
        mov al, 0xe7                ; unmask 3 and 4: IRQ 3 is taken right after this OUT
        out 0x21, al
        mov r12, 1
        dec r15
        jnz again
        mov al, [rel seen3]         ; 5 + 5, and no interrupt came late
        shl al, 4
        add al, [rel took3]
        add al, [rel took4]
        mov bl, [rel seen4]
        shl bl, 5
        add al, bl
        out 0xf4, al
        hlt

isr3:   or [rel seen3], r12b        ; 0: before the instruction after the unmask
        inc byte [rel took3]
        sti
        xor r13, r13
        mov al, 0x20                ; EOI: IRQ 4 is taken right after this OUT
        out 0x20, al
        mov r13, 1
        iretq

isr4:   or [rel seen4], r13b        ; 0: before the instruction after the EOI
        inc byte [rel took4]
        mov al, 0x20
        out 0x20, al
        iretq

gate:   mov [rdi], ax
        mov word [rdi + 2], 0x08
        mov word [rdi + 4], 0x8e00
        shr rax, 16
        mov [rdi + 6], ax
        shr rax, 16
        mov [rdi + 8], eax
        mov dword [rdi + 12], 0
        ret

align 4096                          ; data on a page of its own (stores into code
seen3:  db 0                        ; pages make the VMM decode them again)
seen4:  db 0
took3:  db 0
took4:  db 0
align 8
idtr:   dw 256 * 16 - 1
        dq idt
align 16
idt:    times 256 * 16 db 0
"""


def test_unmask_and_eoi_deliver_before_the_next_instruction(monkeypatch):
    """An OUT that unmasks a held request, and an EOI that lets a lower-priority one through
    (with IF = 1): the interrupt is taken right after the OUT, before the next instruction --
    five times over, so that the direct path (from the second time an address runs) does it."""
    res, g, v = _both(_cfg(), _image(INTERRUPTS), monkeypatch)
    assert res.status == "debug-exit", res.message
    assert res.guest_exit_code == 10      # 5 interrupts each on lines 3 and 4, none late
    assert res.exits == []
    assert v.platform.pic.master.isr == 0 and v.platform.pic.master.imr == 0xE7


MMIO = f"""
        jmp start
%include "lib64.inc"
start:
        map_lapic                   ; the local APIC's page; RBX = 0xFEE00000
        mov dword [rbx + 0xf0], 0x1ff          ; SVR: software-enabled
        mov dword [rbx + 0x3e0], 0xb           ; divide by 1
        mov dword [rbx + 0x320], 0x10040       ; LVT timer masked, one-shot
        mov dword [rbx + 0x380], 0x100000      ; initial count
        mov rsi, {N}
l:      mov eax, [rbx + 0x30]                  ; version
        add r8, rax
        mov eax, esi                           ; TPR: write, read back
        and eax, 0xf0
        mov [rbx + 0x80], eax
        mov eax, [rbx + 0x80]
        add r9, rax
        mov eax, [rbx + 0x390]                 ; current count: falls with virtual time
        mov r10, rax
        dec rsi
        jnz l
        mov eax, [rbx + 0x390]
        sub r10, rax
        mov al, 0
        out 0xf4, al
"""


def test_lapic_mmio_reads_and_writes_without_exits(monkeypatch):
    res, g, v = _both(_cfg(), _image(MMIO), monkeypatch)
    assert res.status == "debug-exit", res.message
    assert res.exits == []
    assert g["r8"] == N * 0x50014
    assert g["r9"] == sum(i & 0xF0 for i in range(1, N + 1))
    assert g["r10"] > 0                        # the count went down between two reads
    assert v.platform.lapic.tpr == 1 & 0xF0


SIZES = """
        mov eax, 0x12345678 + {m}
        mov dx, 0xe0
        out dx, eax
        in ax, dx
        mov ebx, eax
        in eax, dx
        mov ecx, eax
        in al, dx
        mov edi, eax
        mov al, 0
        out 0xf4, al
        hlt
"""


@pytest.mark.parametrize("mode", [16, 32, 64])
def test_io_sizes_follow_the_code_size(monkeypatch, mode):
    """IN AX / IN EAX / OUT EAX encode with or without 0x66 depending on the code size; the
    direct path uses the size the instruction has in the mode it runs in."""
    org = 0x7C00 if mode == 16 else 0x100000
    im = _image(SIZES.format(m=mode), mode=mode, org=org)
    cfg = _cfg("baseline" if mode == 64 else "real-mode")     # (unrestricted guest)
    res, g, v = _both(cfg, im, monkeypatch, mode=mode)
    assert res.status == "debug-exit", res.message
    assert res.exits == []
    want = 0x12345678 + mode
    assert v.platform.testdev.scratch == want
    assert g["rbx"] & 0xFFFF == want & 0xFFFF and g["rcx"] & 0xFFFFFFFF == want
    assert g["rdi"] & 0xFF == want & 0xFF
