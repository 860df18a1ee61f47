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
