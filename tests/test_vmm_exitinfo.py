"""VM-exit information the SDM defines for descriptor-table, RDRAND/RDSEED and MWAIT exits
(issue 12: wrong or missing before)."""

from __future__ import annotations

from vmm_helpers import run


def _run(write_profile, tmp_path, body: str, controls: str):
    prof = write_profile(f"""
        [profile]
        name = "x"
        extends = "baseline"
        [primary]
        activate_secondary_controls = true
        {controls}
        """)
    g = tmp_path / "g.asm"
    g.write_text("bits 64\n" + body + "\nmov al, 0\nout 0xf4, al\n")
    return run(prof, str(g), mode=64)


def _info(recs, name):
    return [r.get("instruction_info") for r in recs if r["name"] == name]


def test_descriptor_table_exits_carry_the_operand_in_instruction_information(write_profile,
                                                                             tmp_path):
    res, recs = _run(write_profile, tmp_path, """
        mov rbx, 0x200000
        mov rcx, 2
        sgdt [rbx + rcx*8 + 0x10]
        sidt [rbx]
        sldt ax
        str word [rbx + 0x40]
        """, "[secondary]\ndescriptor_table_exiting = true")
    assert res.status == "debug-exit", res.message
    sgdt, sidt = _info(recs, "GDTR_IDTR_ACCESS")
    # SGDT [rbx+rcx*8+0x10]: scale 8 (3), 64-bit address (2 << 7), operand size bit 11,
    # segment DS (3 << 15), index RCX (1 << 18), base RBX (3 << 23), identity 0
    assert sgdt == 3 | (2 << 7) | (1 << 11) | (3 << 15) | (1 << 18) | (3 << 23)
    # SIDT [rbx]: no index (bit 22), identity 1
    assert sidt == (2 << 7) | (1 << 11) | (3 << 15) | (1 << 22) | (3 << 23) | (1 << 28)
    sldt, str_ = _info(recs, "LDTR_TR_ACCESS")
    assert sldt == (1 << 10) | (0 << 3) | (2 << 7)                 # register operand RAX
    assert str_ == (2 << 7) | (3 << 15) | (1 << 22) | (3 << 23) | (1 << 28)


def test_rdrand_rdseed_exits_name_the_destination_register(write_profile, tmp_path):
    res, recs = _run(write_profile, tmp_path, """
        rdrand ebx
        rdseed r9
        rdrand si
        """, "[secondary]\nrdrand_exiting = true\nrdseed_exiting = true")
    assert res.status == "debug-exit", res.message
    assert _info(recs, "RDRAND") == [(3 << 3) | (1 << 11), (6 << 3) | (0 << 11)]
    assert _info(recs, "RDSEED") == [(9 << 3) | (2 << 11)]


def test_mwait_qualification_says_whether_monitor_armed(write_profile, tmp_path):
    res, recs = _run(write_profile, tmp_path, """
        xor ecx, ecx
        xor edx, edx
        mwait
        mov rax, 0x200000
        monitor
        mwait
        """, "mwait_exiting = true")
    assert res.status == "debug-exit", res.message
    assert [r["qualification"] for r in recs if r["name"] == "MWAIT"] == [0, 1]
