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
