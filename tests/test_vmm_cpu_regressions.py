"""Issue 12 regressions: #UD under single-stepping and re-entry, profiles that never finished."""

from __future__ import annotations

import pytest

from vmm_helpers import names, run

UD_GUEST = """
bits 64
  mov rax, handler
  mov rdi, 0x200000
  mov word [rdi+6*16], ax
  mov word [rdi+6*16+2], 0x08
  mov word [rdi+6*16+4], 0x8E00
  shr rax, 16
  mov word [rdi+6*16+6], ax
  mov dword [rdi+6*16+8], 0
  mov word [0x201000], 0xfff
  mov dword [0x201002], 0x200000
  mov dword [0x201006], 0
  lidt [0x201000]
  cpuid
  cpuid
  cpuid
  ud2
  mov al, 1
  out 0xf4, al
handler:
  mov rax, qword [rsp]
  mov al, byte [rax]
  out 0xf4, al
"""


@pytest.mark.parametrize("profile", ["baseline", "mtf-tracer", "preemption-sliced"])
def test_ud2_raises_ud_single_stepped_and_after_exits(profile, tmp_path):
    """The #UD handler sees RIP at the UD2 (0x0F first byte): under MTF the step on UD2 used
    to repeat for ever, and with the preemption timer a run re-entered at UD2 lost the #UD."""
    g = tmp_path / "ud.asm"
    g.write_text(UD_GUEST)
    res, recs = run(profile, str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0x0F), res.message
    assert names(recs).count("CPUID") == 3


@pytest.mark.parametrize("profile,status", [("mtf-tracer", "halted"),
                                            ("preemption-sliced", "debug-exit")])
def test_tracing_profiles_finish_exits_all(profile, status):
    """exits-all used to hang at its UD2 under both profiles.  It ends in HLT: with nothing
    to wake it (mtf-tracer) the run ends halted; under preemption-sliced the default
    preemption-timer handler wakes the halted guest, which then exits with 0."""
    res, recs = run(profile, "builtin:exits-all", mode=64, max_instructions=None, timeout=120)
    assert res.status == status, res.message
    assert res.console.rstrip().endswith("hlt")
    assert res.guest_exit_code in (None, 0)
    assert "TRIPLE_FAULT" not in names(recs)



SMSW32 = """bits 32
org 0x100000
        mov eax, cr0
        or eax, 0x40000000             ; CD: a bit above 15
        mov cr0, eax
        mov ebx, eax
        mov eax, 0x11111111
        smsw eax                       ; CR0[31:0] as Intel CPUs store it
        cmp eax, ebx
        jne bad
        mov edx, 0x33333333
        smsw dx                        ; only the low 16 bits change
        mov esi, 0x33330000
        movzx edi, bx
        or esi, edi
        cmp edx, esi
        jne bad2
        mov al, 0
        out 0xf4, al
bad:    mov al, 1
        out 0xf4, al
bad2:   mov al, 2
        out 0xf4, al
"""

SMSW64 = """bits 64
org 0x100000
        mov rax, cr0
        or eax, 0x40000000             ; CD: a bit above 15
        mov cr0, rax
        mov rbx, rax
        mov rax, 0x1111111111111111
        smsw eax                       ; zero-extended CR0[31:0]
        cmp rax, rbx
        jne bad
        mov rcx, 0x2222222222222222
        smsw rcx
        cmp rcx, rbx
        jne bad
        mov rdx, 0x3333333333333333
        smsw dx                        ; only the low 16 bits change
        mov rsi, 0x3333333333330000
        movzx edi, bx
        or rsi, rdi
        cmp rdx, rsi
        jne bad
        mov al, 0
        out 0xf4, al
bad:    mov al, 1
        out 0xf4, al
"""

KUT_LIKE = """
[profile]
name = "kut-like"
extends = "baseline"
[primary]
activate_secondary_controls = true
[secondary]
enable_ept = true
unrestricted_guest = true
[entry]
ia32e_mode_guest = false
"""


@pytest.mark.parametrize("bits", [32, 64])
def test_smsw_to_a_wide_register_stores_cr0(bits, tmp_path):
    """SMSW r32 stores CR0[31:0] (the engine stored only bits 15:0), SMSW r64 all of CR0,
    SMSW r16 only the low word; exit codes 1/2 name the check that failed."""
    g = tmp_path / "smsw.asm"
    g.write_text(SMSW32 if bits == 32 else SMSW64)
    if bits == 32:
        p = tmp_path / "kut.toml"
        p.write_text(KUT_LIKE)
        res, _ = run(str(p), str(g), mode=32)
    else:
        res, _ = run("baseline", str(g))
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console



RF16 = """bits 16
org 0x7c00
        pushfd
        pop eax
        and eax, ~2
        or eax, 0xffc18028
        push eax
        push dword 0
        push dword after
        iretd
after:  nop
        nop
        pushfd
        pop ebx
        test ebx, 0x10000
        jnz bad
        mov al, 0
        out 0xf4, al
bad:    mov al, 1
        out 0xf4, al
"""


def test_pushf_after_iret_does_not_store_rf(tmp_path):
    """IRETD in real mode loads RF from its image; the next instruction clears it and PUSHF
    never stores it (the engine's 16/32-bit PUSHF stored RF, and RF stayed set)."""
    g = tmp_path / "rf.asm"
    g.write_text(RF16)
    p = tmp_path / "kut.toml"
    p.write_text(KUT_LIKE)
    res, _ = run(str(p), str(g), mode=16, load_address=0x7C00)
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert res.instructions == 16


@pytest.mark.parametrize("profile", ["baseline", "preemption-sliced"])
def test_instruction_the_cpu_model_lacks_raises_ud(profile, tmp_path):
    """RDPRU (0F 01 FD: AMD only) decodes but the emulated Intel CPU does not have it: the
    engine returned at it without running or raising anything, and the run loop re-entered
    it for ever (kvm-unit-tests `rdpru`); it is #UD at its address.  (Under MTF single
    steps it still repeats: a step that ends where it began is also what one iteration of
    a REP string instruction looks like.)"""
    g = tmp_path / "rdpru.asm"
    g.write_text(UD_GUEST.replace("  ud2\n", "  db 0x0f, 0x01, 0xfd\n"))
    res, recs = run(profile, str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0x0F), res.message
    assert names(recs).count("CPUID") == 3


def test_divide_error_in_a_block_run_for_the_first_time_is_de(tmp_path):
    """A #DE in the first block of a fresh code page (restarted once to hook its trapped
    instructions) is delivered as #DE, not as a double fault or a triple fault (the engine
    still held the fetch fault that made the page code)."""
    g = tmp_path / "de.asm"
    src = UD_GUEST.replace("[rdi+6*16", "[rdi+0*16").replace(
        "  ud2\n", "  xor edx, edx\n  mov eax, 5\n  xor ecx, ecx\n  div ecx\n")
    g.write_text(src)
    res, _ = run("baseline", str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0xF7), res.message


CR2_GUEST = """\
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
; Two #PFs (reads above the identity map); the handler reads CR2 only after running code
; from a page it has not run before, and the second fault comes after another such page:
; each first run of a page is a stop and a restart of the engine.
start:
        gate 8, df_handler
        gate 14, pf_handler
        lidt [idtr]
        mov qword [expect], 0x40000000
        mov rax, [0x40000000]
        jmp page2
df_handler:
        exit 8
pf_handler:
        jmp page1
        times 0x100000 - ($ - $$) db 0  ; each page below in a 1 MiB region of its own:
page1:  mov rax, cr2
        cmp rax, [expect]
        jne .bad
        inc qword [faults]
        add rsp, 8                      ; the error code
        add qword [rsp], 8              ; mov rax, [abs32] is 8 bytes
        iretq
.bad:   exit 15
        times 0x200000 - ($ - $$) db 0  ; its first run is a stop of the engine
page2:  mov qword [expect], 0x40001000
        mov rax, [0x40001000]
        cmp qword [faults], 2
        jne .bad
        exit 14
.bad:   exit 16
expect: dq 0
faults: dq 0
        idt_table
"""


@pytest.mark.parametrize("profile", ["baseline", "trap-all"])
def test_cr2_and_the_next_page_fault_survive_engine_restarts(profile, tmp_path):
    """The guest's #PF handler reads CR2 only after code the engine stops at (the first
    run of a page in a memory region of its own); then a second #PF comes after another
    such stop.  Unicorn ended every run by dropping the block at `until` - 1 =
    2**64 - 2 with a faulting lookup: CR2 read 0xfffffffffffffffe, and QEMU's #DF
    bookkeeping made the next #PF a double fault (the Linux boot's panic at /init)."""
    g = tmp_path / "cr2.asm"
    g.write_text(CR2_GUEST)
    res, _ = run(profile, str(g), mode=64, timeout=120)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 14), res.message


DT_GUEST = """\
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
; SGDT/LGDT/SIDT with operands at a linear address that is not the physical one
; (PT[0] maps LIN to `buf`), and one at an unmapped address (the guest's own #PF).
%define TABLES 0x800000
%define LIN 0x40200000
%define UNMAPPED 0x40400000
start:
        gate 14, pf_handler
        lidt [idtr]
        mov rdi, TABLES
        xor eax, eax
        mov ecx, 5 * 512
        rep stosq
        mov qword [TABLES], TABLES + 0x1003
        mov qword [TABLES + 0x1000], TABLES + 0x2003
        mov qword [TABLES + 0x1008], TABLES + 0x3003
        xor ecx, ecx
.pd:    mov rax, rcx
        shl rax, 21
        or rax, 0x83
        mov [TABLES + 0x2000 + rcx * 8], rax
        inc ecx
        cmp ecx, 8
        jb .pd
        mov qword [TABLES + 0x3008], TABLES + 0x4003
        mov qword [TABLES + 0x4000], buf + 3
        mov rax, TABLES
        mov cr3, rax
        sgdt [gdt_copy]                 ; through the identity map
        mov rbx, LIN
        sgdt [rbx]                      ; stored through LIN into buf
        mov ax, [buf]
        cmp ax, [gdt_copy]              ; the limit SGDT stored
        jne .bad
        sidt [rbx + 16]
        mov rax, [buf + 18]
        cmp rax, idt                    ; the IDT base SIDT stored
        jne .bad
        mov word [buf + 32], 0x1234     ; a new IDTR image at LIN + 32
        mov rax, idt
        mov [buf + 34], rax
        lidt [rbx + 32]
        sidt [out]
        cmp word [out], 0x1234
        jne .bad
        lidt [idtr]
        mov rcx, UNMAPPED
        sgdt [rcx]                      ; #PF, CR2 = UNMAPPED
        exit 2
.bad:   exit 1
pf_handler:
        mov rax, cr2
        mov rcx, UNMAPPED
        cmp rax, rcx
        jne .no
        exit 14
.no:    exit 15
gdt_copy: times 16 db 0
out:    times 16 db 0
align 4096
buf:    times 4096 db 0
        idt_table
"""


@pytest.mark.parametrize("exiting", [True, False])
def test_descriptor_table_exits_use_linear_operands(exiting, tmp_path):
    """With descriptor-table exiting the VMM performs SGDT/SIDT/LGDT/LIDT itself: their memory
    operands are linear addresses, translated through the guest's paging (an operand
    at a page mapped elsewhere, and one at an unmapped page: the guest's #PF with CR2).  The
    handler read and wrote them as physical addresses: a Linux kernel's early LGDT at its
    high-half address under `trap-all` ended the run with an internal error."""
    g = tmp_path / "dt.asm"
    g.write_text(DT_GUEST)
    p = tmp_path / "dt.toml"
    p.write_text('[profile]\nname = "dt"\nextends = "baseline"\n'
                 f'[secondary]\ndescriptor_table_exiting = {str(exiting).lower()}\n')
    res, recs = run(str(p), str(g), mode=64, timeout=120)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 14), res.message
    assert names(recs).count("GDTR_IDTR_ACCESS") == (8 if exiting else 0)


INVPCID_GUEST = """\
bits 64
org 0x100000
        jmp start
%include "lib64.inc"
; INVPCID (type 2: all contexts), which the engine cannot run: exit 0 after it, 6 on #UD
start:
        gate 6, ud_handler
        lidt [idtr]
        mov eax, 2
        invpcid rax, [desc]
        invpcid rax, [desc]
        exit 0
ud_handler:
        exit 6
desc:   dq 0, 0
        idt_table
"""


@pytest.mark.parametrize("body, code, exits", [
    ("", 6, 0),                                                     # not enabled: #UD
    ("[secondary]\nenable_invpcid = true\n", 0, 0),                # the VMM performs it
    ("[secondary]\nenable_invpcid = true\n[primary]\ninvlpg_exiting = true\n", 0, 2)])
def test_invpcid_the_engine_cannot_run(body, code, exits, tmp_path):
    """The engine has no INVPCID and calls no code hook for it: with enable_invpcid the
    VMM performs it (or its INVPCID exit) where the engine stops, instead of the #UD the
    engine raised (Linux uses INVPCID where CPUID reports it: a boot under trap-all, or
    with trap-all applied during the decompressor, stopped at its first TLB flush)."""
    g = tmp_path / "ip.asm"
    g.write_text(INVPCID_GUEST)
    p = tmp_path / "ip.toml"
    p.write_text('[profile]\nname = "ip"\nextends = "baseline"\n' + body)
    res, recs = run(str(p), str(g), mode=64, timeout=120)
    assert (res.status, res.guest_exit_code) == ("debug-exit", code), res.message
    assert names(recs).count("INVPCID") == exits


# A fault pushes RFLAGS with RF set (SDM 17.3.1.1: returning to the faulting instruction
# does not take an instruction breakpoint there again); a trap (INT3) and an interrupt do not.
# kvm-unit-tests' idt_test checks it for #GP and #UD. Exit code: bit 0 #UD, bit 1 #GP, bit 2
# #BP saw RF; RF was clear before each (a POPF at the start).
RF_GUEST = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 6, ud_h
        gate 13, gp_h
        gate 3, bp_h
        lidt [idtr]
        push 0x2
        popf
        xor ebx, ebx
        ud2
        mov rax, 0xffffffffffffffff
        mov cr4, rax
        nop                             ; RF (from the #GP frame) ends with this instruction
        int3
        mov al, bl
        out DEBUG_EXIT, al
        hlt
ud_h:   bt qword [rsp + 16], 16
        adc ebx, 0
        add qword [rsp], 2
        iretq
gp_h:   bt qword [rsp + 24], 16
        jnc .n
        or ebx, 2
.n:     add qword [rsp + 8], 3
        add rsp, 8
        iretq
bp_h:   bt qword [rsp + 16], 16
        jnc .n
        or ebx, 4
.n:     iretq
idt_table
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_fault_pushes_rflags_with_rf_set_a_trap_does_not(native, tmp_path, monkeypatch):
    if native:
        monkeypatch.delenv("VMCFG_NO_NATIVE", raising=False)
    else:
        monkeypatch.setenv("VMCFG_NO_NATIVE", "1")
    g = tmp_path / "rf.asm"
    g.write_text(RF_GUEST)
    res, recs = run("baseline", str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0b011), res.message


def _kut(tmp_path, name: str):
    """Run kvm-unit-tests' image `name` from ../shared (skip where it is not) with the
    profile of its README."""
    import os
    import tarfile
    from conftest import ROOT
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    shared = os.path.join(ROOT, "..", "shared", "kvm-unit-tests")
    tars = sorted(f for f in os.listdir(shared) if f.endswith(".tgz")) if os.path.isdir(shared) else []
    if not tars:
        pytest.skip("kvm-unit-tests images not found in ../shared/kvm-unit-tests")
    with tarfile.open(os.path.join(shared, tars[0])) as t:
        t.extract(f"{name}.flat", tmp_path, filter="data")
    prof = tmp_path / "kut.toml"
    prof.write_text('[profile]\nname = "kut"\nextends = "baseline"\n[primary]\n'
                    'activate_secondary_controls = true\n[secondary]\nenable_ept = true\n'
                    'unrestricted_guest = true\n[entry]\nia32e_mode_guest = false\n')
    cfg = resolve(str(prof), cpu="cvmm").config
    return run_guest(cfg, load_image(str(tmp_path / f"{name}.flat")), memory=256 << 20, mode=32,
                     timeout=60)


def test_kut_idt_test_passes(tmp_path):
    """kvm-unit-tests' idt_test: #GP and #UD through the IDT, each with RF in the pushed
    RFLAGS (QEMU TCG fails the two RF checks)."""
    res = _kut(tmp_path, "idt_test")
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.console[-400:]
    assert "PASS: Testing #GP rflags.rf" in res.console
    assert "PASS: Testing #UD rflags.rf" in res.console


def test_kut_msr_passes(tmp_path):
    """kvm-unit-tests' msr: WRMSR of a non-canonical address to FS/GS/KERNEL_GS base, LSTAR,
    CSTAR is #GP (it was taken, and the guest's next GS access triple-faulted); IA32_MCG_CAP
    reads (no banks); SPEC_CTRL is #GP where CPUID does not enumerate it."""
    res = _kut(tmp_path, "msr")
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.console[-400:]
    assert "PASS: Expected #GP on WRMSR(MSR_GS_BASE, 0xaaaaaaaaaaaaaaaa), got vector 13" \
        in res.console
    assert "PASS: Expected #GP on RDMSR(SPEC_CTRL), got vector 13" in res.console


INT1_GUEST = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 1, db_h
        gate 6, ud_h
        lidt [idtr]
        xor ebx, ebx
        int1
after:  mov al, bl
        out DEBUG_EXIT, al
        hlt
db_h:   lea rcx, [rel after]            ; the return address: after the one-byte INT1
        cmp [rsp], rcx
        jne .n
        or ebx, 1
.n:     iretq
ud_h:   or ebx, 2
        add qword [rsp], 1
        iretq
idt_table
"""


def test_int1_raises_db_and_returns_after_it(tmp_path):
    """INT1 (ICEBP, F1) is #DB, a privileged software exception whose frame returns after
    it (the engine stopped with an invalid-instruction error and the guest got #UD;
    kvm-unit-tests' debug uses it)."""
    g = tmp_path / "int1.asm"
    g.write_text(INT1_GUEST)
    res, recs = run("baseline", str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 1), res.message


SS_GUEST = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 12, ss_h
        gate 13, gp_h
        lidt [idtr]
        xor ebx, ebx
        mov rcx, 0x8000000000000000
        lea r8, [rel n1]
        or qword [rsp + rcx], 0         ; through SS: #SS(0)
n1:     lea r8, [rel n2]
        or qword [rbp + rcx], 0         ; through SS: #SS(0)
n2:     lea r8, [rel n3]
        or qword [rcx], 0               ; through DS: #GP(0)
n3:     mov al, bl
        out DEBUG_EXIT, al
        hlt
ss_h:   add ebx, 1
        jmp skip
gp_h:   add ebx, 0x10
skip:   cmp qword [rsp], 0              ; the error code: 0
        jne .bad
        add rsp, 8
        mov [rsp], r8                   ; return after the faulting instruction
        iretq
.bad:   mov al, 0xee
        out DEBUG_EXIT, al
        hlt
idt_table
"""


def test_a_non_canonical_stack_reference_is_ss_not_gp(tmp_path):
    """In 64-bit code a non-canonical address through SS (RSP or RBP as base) raises #SS(0);
    through another segment #GP(0) (the engine raised #GP for both; kvm-unit-tests'
    emulator checks it)."""
    g = tmp_path / "ss.asm"
    g.write_text(SS_GUEST)
    res, recs = run("baseline", str(g), mode=64, timeout=60)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0x12), res.message
