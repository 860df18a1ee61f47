"""Interrupts and exceptions the guest takes through its own IDT (issue 14): what the guest
sees -- the vector, the frame the CPU pushed (RIP, CS, RFLAGS, RSP, SS, error code), RSP
aligned to 16 bytes in 64-bit mode, IF cleared by an interrupt gate and kept by a trap
gate, the STI shadow, the EOI and the number of interrupts -- is the same whether the C
delivery (fastexit.c fx_deliver) or the Python one (cpu/delivery.py, VMCFG_NO_NATIVE=1)
does it; where the helper is built, the native run must really have delivered in C.

The guests check the frames themselves and count every mismatch in `bad`; the tests read
the counters back from guest registers.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from vmcfg.vmm import native

BUILT = native._load() is not None

# results the guest leaves in registers at its exit (see GUEST64)
RESULTS = ("rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12")
REG_INDEX = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7,
             "r8": 8, "r9": 9, "r10": 10, "r11": 11, "r12": 12}

# PIT channel 0 in mode 2, period 3000 (both guests' timer)
PIT_3000 = """\
        mov al, 0x34                ; PIT channel 0, mode 2, period 3000
        out 0x43, al
        mov ax, 3000
        out 0x40, al
        mov al, ah
        out 0x40, al
"""

GUEST64 = r"""
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
%macro check 0                 ; ZF clear: one more mismatch
        jz %%ok
        inc qword [rel bad]
%%ok:
%endmacro
start:
        gate 0x20, timer
        gate 3, bp_handler
        gate 6, ud_handler
        gate 13, gp_handler
        gate 0x40, int40
        mov word [idt + 0x40 * 16 + 4], 0x8F00      ; vector 0x40: a trap gate
        lidt [idtr]
%PIT%
        sub rsp, 8                  ; RSP not 16-byte aligned: the CPU aligns it for a frame
        mov [rel base_rsp], rsp
        sti
.busy:  cmp qword [rel ticks], 10
        jb .busy
        ; the STI shadow: with IF = 0 wait until the PIT has requested IRQ 0 (the PIC's IRR),
        ; then STI: the interrupt comes after the one instruction that follows STI
        cli
        mov al, 0x0A                ; OCW3: read the IRR
        out 0x20, al
.irr:   in al, 0x20
        test al, 1
        jz .irr
        xor r12, r12
        sti
        inc r12                     ; in the shadow: runs before the interrupt
shadow_end:
        nop
        lea rax, [rel shadow_end]
        cmp rax, [rel last_rip]     ; the frame of that interrupt returns here
        check
        cmp qword [rel r12_at_irq], 1   ; and the INC had run
        check
        ; software exception through an interrupt gate: returns after INT3, IF cleared
        int3
after_int3:
        lea rax, [rel after_int3]
        cmp rax, [rel bp_rip]
        check
        ; software interrupt through a trap gate: IF stays set in the handler
        int 0x40
after_int40:
        lea rax, [rel after_int40]
        cmp rax, [rel int40_rip]
        check
        ; a fault: the frame returns to the faulting instruction (the handler skips it)
ud_at:  ud2
        lea rax, [rel ud_at]
        cmp rax, [rel ud_rip]
        check
        ; a fault with an error code: a selector past the GDT limit
        mov ax, 0x7FF8
gp_at:  mov ds, ax
        lea rax, [rel gp_at]
        cmp rax, [rel gp_rip]
        check
        cli
        mov rbx, [rel ticks]
        mov rcx, [rel bad]
        mov rdx, [rel bp_count]
        mov rsi, [rel int40_count]
        mov rdi, [rel ud_count]
        mov r8, [rel gp_count]
        mov r9, [rel gp_ec]
        mov r10, [rel frames]
        mov r11, [rel eoi_check]
        exit 0

; every handler: the frame is at RSP (after the pushes it names), the old RSP was base_rsp
; (or base_rsp - 8 for nothing: all events here come from code running at base_rsp)
%macro frame_checks 1          ; %1: bytes pushed by the handler before the checks
        mov rax, [rsp + %1 + 8]     ; CS
        cmp rax, 0x08
        check
        mov rax, [rsp + %1 + 24]    ; RSP before the event
        cmp rax, [rel base_rsp]
        check
        mov rax, [rsp + %1 + 32]    ; SS
        mov bx, ss
        movzx rbx, bx
        cmp rax, rbx
        check
        lea rax, [rsp + %1 + 40]    ; the frame ends at the old RSP aligned down to 16
        mov rbx, [rel base_rsp]
        and rbx, -16
        cmp rax, rbx
        check
        inc qword [rel frames]
%endmacro

timer:
        push rax
        push rbx
        frame_checks 16
        pushfq                      ; an interrupt gate: IF clear in the handler
        pop rax
        test eax, 0x200
        check
        mov rax, [rsp + 16 + 16]    ; the interrupted code ran with IF set
        not rax
        test eax, 0x200
        check
        mov rax, [rsp + 16]
        mov [rel last_rip], rax
        mov [rel r12_at_irq], r12
        inc qword [rel ticks]
        mov al, 0x0B                ; OCW3: read the ISR -- IRQ 0 is in service
        out 0x20, al
        in al, 0x20
        cmp al, 1
        check
        mov al, 0x20                ; non-specific EOI
        out 0x20, al
        in al, 0x20                 ; ... and nothing is in service any more
        test al, al
        check
        inc qword [rel eoi_check]
        mov al, 0x0A                ; back to reading the IRR (the busy wait above)
        out 0x20, al
        pop rbx
        pop rax
        iretq

bp_handler:
        push rax
        push rbx
        frame_checks 16
        pushfq
        pop rax
        test eax, 0x200             ; interrupt gate: IF clear
        check
        mov rax, [rsp + 16]
        mov [rel bp_rip], rax
        inc qword [rel bp_count]
        pop rbx
        pop rax
        iretq

int40:
        push rax
        push rbx
        frame_checks 16
        pushfq
        pop rax
        not rax
        test eax, 0x200             ; trap gate: IF still set
        check
        mov rax, [rsp + 16]
        mov [rel int40_rip], rax
        inc qword [rel int40_count]
        pop rbx
        pop rax
        iretq

ud_handler:
        push rax
        push rbx
        frame_checks 16
        mov rax, [rsp + 16]
        mov [rel ud_rip], rax
        add qword [rsp + 16], 2     ; skip the UD2
        inc qword [rel ud_count]
        pop rbx
        pop rax
        iretq

gp_handler:
        push rax
        push rbx
        frame_checks 24             ; the error code sits below the frame
        mov rax, [rsp + 16]
        mov [rel gp_ec], rax
        mov rax, [rsp + 24]
        mov [rel gp_rip], rax
        add qword [rsp + 24], 2     ; skip the MOV DS
        inc qword [rel gp_count]
        pop rbx
        pop rax
        add rsp, 8                  ; the error code
        iretq

        idt_table
ticks:  dq 0                    ; data on its own page, not the code page
bad:    dq 0
base_rsp: dq 0
last_rip: dq 0
bp_rip: dq 0
bp_count: dq 0
int40_rip: dq 0
int40_count: dq 0
ud_rip: dq 0
ud_count: dq 0
gp_rip: dq 0
gp_count: dq 0
gp_ec:  dq 0
frames: dq 0
eoi_check: dq 0
r12_at_irq: dq 0
""".replace("%PIT%\n", PIT_3000)


def _cfg():
    from vmcfg.profile import resolve
    r = resolve("baseline", cpu="cvmm")
    assert r.valid
    return r.config


def _image(src: str, mode: int):
    from vmcfg.vmm.loader import load_image
    with tempfile.NamedTemporaryFile("w", suffix=".asm", delete=False) as f:
        f.write(src)
    try:
        return load_image(f.name, load_address=0x100000, mode=mode)
    finally:
        os.unlink(f.name)


def _run(cfg, image, mode, monkeypatch, *, python: bool, max_instructions=2_000_000):
    from vmcfg.vmm.run import run_guest
    if python:
        monkeypatch.setenv("VMCFG_NO_NATIVE", "1")
    else:
        monkeypatch.delenv("VMCFG_NO_NATIVE", raising=False)
    seen = {}
    res = run_guest(cfg, image, memory=16 << 20, mode=mode, max_instructions=max_instructions,
                    on_vcpu=lambda v: seen.setdefault("v", v))
    v = seen["v"]
    regs = {n: v.gpr(REG_INDEX[n]) for n in RESULTS}
    c_delivered = v._fx_dlv[1].delivered if v._fx_dlv is not None else 0
    return res, regs, c_delivered, v


def _in_engine(monkeypatch, image, mode=64, **kw) -> int:
    """Interrupts the native run took without leaving the engine (the soft deadline)."""
    _r, _g, _c, v = _run(_cfg(), image, mode, monkeypatch, python=False, **kw)
    return v.irqs_in_engine


def _both(cfg, image, mode, monkeypatch, **kw):
    rp, gp, cp, vp = _run(cfg, image, mode, monkeypatch, python=True, **kw)
    rn, gn, cn, vn = _run(cfg, image, mode, monkeypatch, python=False, **kw)
    assert vp._fx_dlv is None and cp == 0          # VMCFG_NO_NATIVE: Python delivers
    assert (rn.status, rn.guest_exit_code, rn.instructions, rn.tsc, rn.exits) == \
        (rp.status, rp.guest_exit_code, rp.instructions, rp.tsc, rp.exits), \
        (rn.message, rp.message)
    assert gn == gp
    assert vn.events_delivered == vp.events_delivered
    if BUILT:
        assert cn > 0, "the native run delivered nothing in C"
    return rn, gn, cn


def test_64_bit_gates_frames_and_counts_agree(monkeypatch):
    img = _image(GUEST64, 64)
    res, g, in_c = _both(_cfg(), img, 64, monkeypatch)
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.message
    assert res.exits == []                     # nothing intercepted: the guest's own IDT
    assert g["rcx"] == 0, f"{g['rcx']} frame or flag mismatches seen by the guest"
    ticks = g["rbx"]
    assert ticks in (11, 12)                   # 10 in the busy loop, the STI shadow's last
    assert g["r11"] == ticks                   # every handler saw IRQ 0 in service, then EOI'd
    assert (g["rdx"], g["rsi"], g["rdi"], g["r8"]) == (1, 1, 1, 1)   # #BP, INT 0x40, #UD, #GP
    assert g["r10"] == ticks + 4               # frames checked
    if BUILT:
        assert in_c == ticks + 4               # every one of them delivered in C
        # the timer's interrupts in the busy loop were taken at the soft deadline without
        # leaving the engine (the one after the STI shadow needs the run loop)
        assert _in_engine(monkeypatch, img) >= 9


def test_a_guest_taking_interrupts_for_ever_still_times_out(monkeypatch):
    """Interrupts taken inside the engine do not keep the run from its wall-clock timeout."""
    from vmcfg.vmm.run import run_guest
    src = GUEST64.replace("cmp qword [rel ticks], 10\n        jb .busy", "jmp .busy", 1)
    img = _image(src, 64)
    for python in (True, False):
        if python:
            monkeypatch.setenv("VMCFG_NO_NATIVE", "1")
        else:
            monkeypatch.delenv("VMCFG_NO_NATIVE", raising=False)
        seen = {}
        res = run_guest(_cfg(), img, memory=16 << 20, mode=64, timeout=0.5,
                        on_vcpu=lambda v: seen.setdefault("v", v))
        assert res.status == "timeout", res.message
        v = seen["v"]
        assert v.events_delivered > 0
        if BUILT and not python:
            assert v.irqs_in_engine > 0


@pytest.mark.parametrize("ack", [True, False])
def test_external_interrupt_exiting_then_reflected_agree(monkeypatch, ack):
    """External-interrupt exiting with the default handler (it reflects the interrupt): one
    EXTERNAL_INTERRUPT exit per timer interrupt, then delivery through the guest IDT -- the
    same exits, frames and counts in both modes, and natively without leaving the engine."""
    from vmcfg.vmx.table import CONTROL_BY_PATH
    cfg = _cfg()
    paths = ["pin.external_interrupt_exiting"] + (["exit.acknowledge_interrupt_on_exit"]
                                                  if ack else [])
    for path in paths:
        c = CONTROL_BY_PATH[path]
        cfg.controls[c.field] = cfg.controls.get(c.field, 0) | c.mask
    cfg._active.clear()
    img = _image(GUEST64, 64)
    res, g, in_c = _both(cfg, img, 64, monkeypatch)
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.message
    # at most one guest check differs from a run without exiting: IRQ 0, requested again
    # while the guest waited with IF = 0 for the STI test, exits and is acknowledged at the
    # boundary right after that handler's EOI, so its ISR read there shows it in service
    assert g["rcx"] <= 1
    ticks = g["rbx"]
    assert ticks in (11, 12) and g["r11"] == ticks
    assert res.exits == [{"reason": 1, "name": "EXTERNAL_INTERRUPT", "count": ticks}]
    if BUILT:
        assert in_c == ticks + 4
        _r, _g, _c, v = _run(cfg, img, 64, monkeypatch, python=False)
        assert v.irqs_in_engine >= 9
        if ack and v._fx_soft is not None:
            # the exit, the reflection and the delivery in one turn in C (fastexit.c c_turn)
            assert v._fx_soft.turns > 0


def test_32_bit_interrupt_gates_agree(monkeypatch):
    from vmcfg.profile import resolve
    from test_vmm_events import IRQ32
    from vmcfg.vmx.table import CONTROL_BY_PATH
    cfg = resolve("baseline", cpu="cvmm").config
    for path, on in (("secondary.enable_ept", True), ("secondary.unrestricted_guest", True),
                     ("entry.ia32e_mode_guest", False)):
        c = CONTROL_BY_PATH[path]
        cfg.controls[c.field] = (cfg.controls.get(c.field, 0) | c.mask) if on else \
            (cfg.controls.get(c.field, 0) & ~c.mask)
    cfg._active.clear()
    img = _image(IRQ32, 32)
    res, _g, in_c = _both(cfg, img, 32, monkeypatch, max_instructions=100_000)
    assert res.status == "debug-exit" and res.guest_exit_code == 3
    assert res.instructions == 6025
    if BUILT:
        assert in_c == 3


@pytest.mark.parametrize("ist", [False, True])
def test_gates_the_c_path_leaves_to_python_still_deliver(monkeypatch, ist):
    """An IST stack (64-bit TSS) is left to the Python path: the same result either way."""
    src = GUEST64
    if ist:
        # vector 0x20 on IST1 of a TSS whose IST1 is the current stack's top (same frame)
        src = src.replace("        lidt [idtr]\n", TSS_SETUP + "        lidt [idtr]\n", 1)
        src = src.replace("r12_at_irq: dq 0\n", "r12_at_irq: dq 0\n" + TSS_DATA, 1)
    img = _image(src, 64)
    res, g, in_c = _both(_cfg(), img, 64, monkeypatch)
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.message
    ticks = g["rbx"]
    assert ticks in (11, 12) and g["r11"] == ticks
    if ist:
        assert g["rcx"] == ticks               # each timer frame is on the IST stack
        if BUILT:
            assert in_c == 4                   # the exceptions only: IST gates go to Python
    else:
        assert g["rcx"] == 0


# a 64-bit TSS in a new GDT (the VMM's CS 0x08 / SS 0x10 descriptors copied), IST1 = ist_top;
# gate 0x20 uses IST1
TSS_SETUP = r"""
        sgdt [rel gdtr_old]
        mov rsi, [rel gdtr_old + 2]
        lea rdi, [rel gdt_new]
        movzx rcx, word [rel gdtr_old]
        inc rcx
        cmp rcx, 0x30
        jbe .copy
        mov rcx, 0x30
.copy:  rep movsb
        lea rax, [rel tss]
        lea rdi, [rel gdt_new + 0x30]
        mov word [rdi], 0x67
        mov [rdi + 2], ax
        shr rax, 16
        mov [rdi + 4], al
        mov byte [rdi + 5], 0x89
        mov [rdi + 7], ah
        shr rax, 16
        mov [rdi + 8], eax
        lea rax, [rel ist_top]
        mov [rel tss + 0x24], rax
        mov word [rel gdtr_new], 0x3F
        lea rax, [rel gdt_new]
        mov [rel gdtr_new + 2], rax
        lgdt [rel gdtr_new]
        mov ax, 0x30
        ltr ax
        mov byte [idt + 0x20 * 16 + 4], 1
"""
TSS_DATA = r"""
align 16
gdtr_old: times 16 db 0
gdtr_new: times 16 db 0
align 16
gdt_new: times 0x40 db 0
tss:    times 0x68 db 0
align 16
        times 512 db 0
ist_top:
"""


def _native_twice(monkeypatch, src: str, taker):
    """The guest `src` run natively as built, then again with the soft-deadline function
    `taker(real soft_taker)` gives (skipped without the C helper or its C API)."""
    if not BUILT:
        pytest.skip("the C helper is not built")
    import vmcfg.vmm.vcpu.fastexit as fxmod
    img = _image(src, 64)
    first = _run(_cfg(), img, 64, monkeypatch, python=False)
    if first[3]._fx_soft is None:
        pytest.skip("this build has no C API: the ctypes soft-deadline function is the one")
    monkeypatch.setattr(fxmod, "soft_taker", taker(fxmod.soft_taker))
    return first, _run(_cfg(), img, 64, monkeypatch, python=False)


def test_the_soft_deadline_turn_in_c_and_in_python_agree(monkeypatch):
    """A device timer's interrupt at the soft deadline: fastexit.c's fx_soft_deadline (the
    turn in C, Python called through the C API) and the ctypes soft-deadline function of a
    build without the C API take the same interrupts at the same instructions."""
    (rc, gc, _cc, vc), (rp, gp, _cp, vp) = _native_twice(monkeypatch, GUEST64,
                                                        lambda real: lambda *a: None)
    assert vp._fx_soft is None
    assert rc.status == rp.status == "debug-exit", (rc.message, rp.message)
    assert (rc.instructions, rc.tsc, rc.exits) == (rp.instructions, rp.tsc, rp.exits)
    assert gc == gp and gc["rcx"] == 0
    assert vc.events_delivered == vp.events_delivered
    assert vc.irqs_in_engine == vp.irqs_in_engine >= 9
    assert vc._fx_soft.taken == vc.irqs_in_engine    # every one of them by the C turn


NESTED64 = r"""
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x20, timer
        gate 0x23, irq3
        lidt [idtr]
%PIT%
        sti
.busy:  cmp qword [rel ticks], 12
        jb .busy
        cli
        mov rbx, [rel ticks]
        mov rcx, [rel irq3_at]
        mov rdx, [rel irq3_count]
        mov rsi, [rel isr_bad]
        exit 0
timer:
        push rax
        push rdx
        inc qword [rel ticks]
        cmp qword [rel ticks], 5
        jne .eoi
        mov dx, 0x2003              ; pc-testdev: IRQ 3 up while IRQ 0 is in service
        mov al, 1
        out dx, al
.eoi:   mov al, 0x20                ; non-specific EOI: IRQ 3 is then the one pending
        out 0x20, al
        pop rdx
        pop rax
        iretq
irq3:
        push rax
        push rdx
        mov rax, [rel ticks]        ; taken right after the timer's IRET: still tick 5
        mov [rel irq3_at], rax
        inc qword [rel irq3_count]
        mov al, 0x0B                ; OCW3: read the ISR -- only IRQ 3 in service
        out 0x20, al
        in al, 0x20
        cmp al, 8
        je .ok
        inc qword [rel isr_bad]
.ok:    mov dx, 0x2003
        xor al, al
        out dx, al                  ; the line down (edge-triggered: already latched)
        mov al, 0x0A                ; back to reading the IRR
        out 0x20, al
        mov al, 0x20
        out 0x20, al
        pop rdx
        pop rax
        iretq
        idt_table
ticks:  dq 0
irq3_at: dq 0
irq3_count: dq 0
isr_bad: dq 0
""".replace("%PIT%\n", PIT_3000)


def test_the_eoi_in_c_leaves_a_second_request_to_the_run_loop(monkeypatch):
    """The master 8259's plain EOI is done in C (fastexit.c pic_eoi) only when nothing is left
    to deliver: an IRQ raised inside the timer's handler is pending at its EOI, so that EOI
    takes the Python path and the interrupt is taken right after the handler's IRET -- the
    same instructions, registers and counts as the pure-Python VMM."""
    img = _image(NESTED64, 64)
    res, g, _c = _both(_cfg(), img, 64, monkeypatch)
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.message
    assert g["rbx"] == 12 and g["rdx"] == 1
    assert g["rcx"] == 5                    # taken before the busy loop ran again
    assert g["rsi"] == 0
    if BUILT:
        _r, _g, _c2, v = _run(_cfg(), img, 64, monkeypatch, python=False)
        if v._fx_soft is not None:
            # plain EOIs were done in C (the first ones, while the run loop still steps
            # around the start-up, take the trap path)
            assert v._fx_soft.eoi_done > 0
            assert v._fx_soft.taken > 0


def test_the_eoi_in_c_and_the_python_path_agree(monkeypatch):
    """The same run with the EOI and the whole PIT -> 8259 turn in C (fastexit.c pic_eoi,
    c_turn) and with both through the Python devices."""
    # (the taker without the vCPU and its board: no c_turn, no pic_eoi)
    (rc, gc, _cc, vc), (rp, gp, _cp, vp) = _native_twice(
        monkeypatch, NESTED64,
        lambda real: lambda fx, dlv, tick, acked, *_a: real(fx, dlv, tick, acked))
    assert vp._fx_soft.eoi_done == 0 and vc._fx_soft.eoi_done > 0
    assert vp._fx_soft.turns == 0 and vc._fx_soft.turns > 0     # the whole turn in C too
    assert (rc.status, rc.instructions, rc.tsc, rc.exits) == (rp.status, rp.instructions, rp.tsc, rp.exits)
    assert gc == gp
    assert vc.events_delivered == vp.events_delivered
