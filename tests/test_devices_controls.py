"""VMX controls that meet the platform's devices: an intercepted device access exits first;
the device sees only what the VMM passes on.  Interrupts from the LAPIC, IOAPIC and PIC
take the one external-interrupt path."""

from __future__ import annotations

import textwrap

from vmm_helpers import run

PLATFORM_OK = ["LAPIC one-shot timer fired, current count 0", "x2APIC self IPI delivered",
               "TSC-deadline timer fired, MSR cleared", "PIT interrupt through the IOAPIC"]


def _profile(tmp_path, body: str) -> str:
    p = tmp_path / "p.toml"
    p.write_text('[profile]\nname = "p"\nextends = "baseline"\n' + textwrap.dedent(body))
    return str(p)


def _lines(res):
    return res.console.splitlines()


def test_msr_bitmap_on_x2apic_msrs_exits_then_the_apic_sees_the_access(tmp_path):
    prof = _profile(tmp_path, """
        [msr]
        intercept_read = [0x802]
        intercept_write = [0x83F, 0x80B]
        """)
    res, recs = run(prof, "builtin:platform")
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    msr = [(r["name"], r["data"]["msr"]) for r in recs if r["name"] in ("RDMSR", "WRMSR")]
    # the x2APIC ID read, the self IPI, then one EOI per interrupt taken in x2APIC mode
    assert msr[:2] == [("RDMSR", 0x802), ("WRMSR", 0x83F)]
    assert msr[2:] == [("WRMSR", 0x80B)] * 3
    assert all(r["qualification"] == 0 for r in recs if r["name"] in ("RDMSR", "WRMSR"))
    # MSRs outside the bitmap (APIC_BASE, the LVT timer, TSC_DEADLINE) did not exit
    for c in PLATFORM_OK:
        assert f"platform: {c} ok" in _lines(res)


def test_an_intercepted_self_ipi_the_vmm_drops_never_reaches_the_apic(tmp_path):
    prof = _profile(tmp_path, """
        [msr]
        intercept_write = [0x83F]
        """)
    seen = []

    def drop(ctx):
        seen.append((ctx.regs.rcx & 0xFFFFFFFF, ctx.regs.rax & 0xFF))
        ctx.skip()                          # do not pass the write on

    res, recs = run(prof, "builtin:platform", handlers={32: drop})
    assert seen == [(0x83F, 0x41)]
    assert "platform: x2APIC self IPI delivered FAIL" in _lines(res)
    assert res.status == "debug-exit" and res.guest_exit_code == 1
    assert [r["name"] for r in recs] == ["WRMSR"]


def test_io_bitmap_on_the_pit_exits_with_its_qualification_and_gates_the_device(tmp_path):
    prof = _profile(tmp_path, """
        [io]
        intercept = [0x40]
        """)
    res, recs = run(prof, "builtin:platform")
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    io = [r for r in recs if r["name"] == "IO_INSTRUCTION"]
    assert [r["qualification"] for r in io] == [(0x40 << 16) | (1 << 6)] * 2   # OUT imm8, 1 byte
    assert [r["data"] for r in io] == [{"port": 0x40, "size": 1, "direction": "out", "value": v}
                                       for v in (0x00, 0x10)]
    # a handler that keeps the count from the PIT: channel 0 never starts, nothing can
    # wake the guest's HLT, and the run ends "halted" before the IOAPIC check
    res, recs = run(prof, "builtin:platform", handlers={30: lambda ctx: ctx.skip()})
    assert res.status == "halted"
    assert len(recs) == 2
    assert "PIT interrupt through the IOAPIC" not in res.console


def test_external_interrupt_exiting_takes_lapic_and_ioapic_vectors_the_same_way(tmp_path):
    prof = _profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        [exit]
        acknowledge_interrupt_on_exit = true
        """)
    res, recs = run(prof, "builtin:platform")
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    ext = [r for r in recs if r["name"] == "EXTERNAL_INTERRUPT"]
    # LAPIC timer 0x40, x2APIC self IPI 0x41, TSC deadline 0x42, PIT via IOAPIC 0x43
    assert [r["data"]["vector"] for r in ext] == [0x40, 0x41, 0x42, 0x43]
    assert [r["interruption_info"] for r in ext] == [0x80000040, 0x80000041, 0x80000042,
                                                     0x80000043]
    for c in PLATFORM_OK:
        assert f"platform: {c} ok" in _lines(res)


TPR_GUEST = """BITS 64
        mov rax, cr8
        mov r8, rax
        mov rax, 6
        mov cr8, rax
        mov rax, 3
        mov cr8, rax
        mov rax, cr8
        mov r9, rax
        mov ecx, 0x1B
        rdmsr
        or eax, 0x400
        wrmsr
        mov ecx, 0x808
        rdmsr
        shl r8, 4
        or r8, r9
        or r8, rax
        mov rax, r8
        out 0xf4, al
        hlt
"""


def test_use_tpr_shadow_virtualizes_cr8_and_exits_below_the_threshold(tmp_path):
    """CR8 reads and writes VTPR (start value apic.vtpr), not the local APIC's TPR; a MOV to
    CR8 below apic.tpr_threshold exits (reason 43) after it has completed."""
    prof = _profile(tmp_path, """
        [primary]
        use_tpr_shadow = true
        [apic]
        tpr_threshold = 4
        vtpr = 0x50
        [vmcs]
        virtual_apic_page = 0x5000
        """)
    g = tmp_path / "tpr.asm"
    g.write_text(TPR_GUEST)
    seen = []

    def on_tpr(ctx):
        seen.append((ctx.vcpu.vtpr, ctx.read(ctx.exit.rip, 4), ctx.instructions))

    res, recs = run(prof, str(g), handlers={43: on_tpr})
    # exit code: VTPR 5 at start (high nibble), CR8 reads 3 after the write, LAPIC TPR 0
    assert res.status == "debug-exit" and res.guest_exit_code == 0x53
    (r,) = recs
    assert r["name"] == "TPR_BELOW_THRESHOLD" and r["qualification"] == 0
    assert r["data"] == {"vtpr": 0x30, "tpr_threshold": 4}
    # trap-like: six instructions retired (the MOV to CR8 included); RIP is the next
    # instruction, MOV RAX, CR8 (44 0f 20 c0)
    assert seen == [(0x30, bytes.fromhex("440f20c0"), 6)]
    assert r["length"] == 0
    # without the control CR8 is the LAPIC's TPR: 3 reads back through the x2APIC MSR
    plain = _profile(tmp_path, "")
    res, recs = run(plain, str(g))
    assert res.guest_exit_code == 0x33 and recs == []


def test_cr8_load_exiting_wins_over_tpr_virtualization_and_the_handler_sets_vtpr(tmp_path):
    prof = _profile(tmp_path, """
        [primary]
        use_tpr_shadow = true
        cr8_load_exiting = true
        [apic]
        tpr_threshold = 4
        vtpr = 0x50
        [vmcs]
        virtual_apic_page = 0x5000
        """)
    g = tmp_path / "tpr.asm"
    g.write_text(TPR_GUEST)
    res, recs = run(prof, str(g))
    # both MOVs to CR8 exit as CR accesses (no TPR-below-threshold exit); the default
    # handler writes the virtual TPR, which CR8 then reads; the LAPIC's TPR stays 0
    assert [r["name"] for r in recs] == ["CR_ACCESS", "CR_ACCESS"]
    assert [r["data"]["value"] for r in recs] == [6, 3]
    assert res.status == "debug-exit" and res.guest_exit_code == 0x53
