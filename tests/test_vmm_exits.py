"""VM exits happen exactly as the controls say: counts, order, qualifications."""

from vmm_helpers import data, names, run


def test_cpuid_unconditional_exits_and_console():
    res, recs = run("baseline", "builtin:cpuid")
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert res.exit_status == 0
    assert names(recs) == ["CPUID", "CPUID", "CPUID"]
    assert [r["bytes"] for r in recs] == ["0fa2"] * 3
    assert all(r["length"] == 2 and r["disassembly"] == "cpuid" for r in recs)
    assert res.console == ("cpuid: vendor GenuineIntel\n"
                           "cpuid: hypervisor vmcfg cvmm\0\0\n"
                           "cpuid: leaf 1 eax=00050654 ecx=c5b82203\n")


def test_trace_records_instruction_count_and_tsc():
    res, recs = run("baseline", "builtin:cpuid")
    # TSC = retired instructions + 1000 per earlier exit (docs/vmm.md "Virtual time")
    for i, r in enumerate(recs):
        assert r["seq"] == i + 1
        assert r["tsc"] == r["instructions"] + 1000 * (i + 1)
    assert recs[0]["instructions"] < recs[1]["instructions"] < recs[2]["instructions"]
    assert res.tsc == res.instructions + 1000 * 3


def test_io_bitmap_exits_only_for_listed_port_with_qualification():
    res, recs = run(data("io-bitmap.toml"))
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert names(recs) == ["IO_INSTRUCTION", "IO_INSTRUCTION"]
    # IN AL, 0x80: size 1 (0), IN (bit 3), immediate (bit 6), port 0x80
    assert recs[0]["qualification"] == (0x80 << 16) | (1 << 6) | (1 << 3)
    assert recs[0]["data"] == {"port": 0x80, "size": 1, "direction": "in"}
    # OUT 0x80, AL: no IN bit
    assert recs[1]["qualification"] == (0x80 << 16) | (1 << 6)
    assert recs[1]["data"]["value"] == 0x42
    assert "io: in 0x80 -> 000000ff\nio: lsr -> 00000060\nio: hello from rep outsb\n" == res.console


def test_unconditional_io_exiting_covers_string_io():
    res, recs = run("trap-all", "builtin:io")
    io = [r for r in recs if r["name"] == "IO_INSTRUCTION"]
    rep = [r for r in io if r["disassembly"].startswith("rep outsb")]
    assert len(rep) == 1
    q = rep[0]["qualification"]
    assert q & 0x10 and q & 0x20 and not q & 0x8 and q >> 16 == 0x3F8   # string, REP, OUT
    assert rep[0]["guest_linear_address"] > 0x100000
    assert res.console.endswith("io: hello from rep outsb\n")


def test_rdtsc_exiting_and_deterministic_values():
    res, recs = run(data("rdtsc-exit.toml"))
    assert names(recs) == ["RDTSC", "RDTSC"]
    assert "rdtsc: first  0x00000000000003e9\n" in res.console
    assert "rdtsc: delta  0x0000000000000451\n" in res.console
    plain, recs2 = run("baseline", "builtin:rdtsc")
    assert recs2 == []
    assert "rdtsc: first  0x0000000000000001\n" in plain.console


def test_cr_shadows_and_cr3_target_list():
    res, recs = run(data("cr-shadow.toml"))
    assert recs == []                       # writes equal the shadows, CR3 value is a target
    assert "cr: cr0 0x00000000a0010033\n" in res.console    # NW from the read shadow
    assert "cr: cr4 0x0000000000000620\n" in res.console


def test_cr_access_exits_with_qualification(write_profile):
    p = write_profile("""
        [profile]
        name = "crx"
        extends = "baseline"
        [primary]
        cr3_load_exiting = true
        cr3_store_exiting = true
        cr8_load_exiting = true
        cr8_store_exiting = true
        [cr0]
        mask = 0x8          # TS owned, shadow 1: CLTS exits
        shadow = 0x8
        [cr4]
        mask = 0x20         # PAE owned, shadow 0: writing CR4 (PAE=1) exits
        shadow = 0
    """)
    res, recs = run(p, "builtin:cr")
    cr = [r for r in recs if r["name"] == "CR_ACCESS"]
    quals = [r["qualification"] for r in cr]
    # The guest writes back what it read: the shadowed values equal the shadows, so
    # MOV to CR0/CR4 and LMSW do not exit; CR3/CR8 accesses and CLTS (TS owned,
    # shadow TS = 1) do.
    assert quals == [0x13, 0x03, 0x18, 0x08, 0x20]
    assert [r["disassembly"] for r in cr] == ["mov rax,cr3", "mov cr3,rax", "mov rax,cr8",
                                              "mov cr8,rax", "clts"]
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    # the read shadow shows TS (bit 3) and hides PAE (bit 5)
    assert "cr: cr0 0x000000008001003b\n" in res.console
    assert "cr: cr4 0x0000000000000600\n" in res.console


def test_msr_bitmap_and_unknown_msr_gp(write_profile):
    res, recs = run("msr-audit", "builtin:msr")
    assert names([r for r in recs if r["name"] in ("RDMSR", "WRMSR")]) == \
        ["RDMSR", "RDMSR", "WRMSR", "RDMSR", "RDMSR"]
    msrs = [r["data"]["msr"] for r in recs if r["name"] in ("RDMSR", "WRMSR")]
    assert msrs == [0x1B, 0x277, 0xC0000103, 0xC0000103, 0x12345]
    assert "msr: unknown 0x12345 -> #GP\n" in res.console
    base, recs2 = run("baseline", "builtin:msr")
    # empty bitmap: only the MSR outside both bitmap ranges exits
    assert [r["data"]["msr"] for r in recs2 if r["name"] == "RDMSR"] == [0x12345]
    assert base.console == res.console


def test_exceptions_bitmap_with_pf_mask_match():
    res, recs = run(data("exceptions.toml"))
    ex = [r for r in recs if r["name"] == "EXCEPTION_NMI"]
    assert [r["interruption_info"] for r in ex] == [0x80000306, 0x80000B0E]
    assert ex[1]["error_code"] == 0 and ex[1]["qualification"] == 0x40000000
    assert res.console == ("exceptions: #UD\nexceptions: #BP\nexceptions: #DE\n"
                           "exceptions: #PF cr2=0x0000000040000000 error=0x0000000000000000\n"
                           "exceptions: done\n")


def test_pf_mask_match_inverts_with_bitmap_bit_clear(write_profile):
    p = write_profile("""
        [profile]
        name = "pfx"
        extends = "baseline"
        [exceptions]
        intercept = []
        pf_error_code_mask = 1
        pf_error_code_match = 1
    """)
    # bit 14 clear: #PF exits when the error code does NOT match (P=0 vs match P=1)
    res, recs = run(p, "builtin:exceptions")
    assert names(recs) == ["EXCEPTION_NMI"]
    assert recs[0]["interruption_info"] == 0x80000B0E


def test_exits_all_trap_all_every_class():
    res, recs = run("trap-all", "builtin:exits-all")
    counts = res.exit_counts()
    for name, n in {"CPUID": 1, "RDTSC": 1, "RDPMC": 1, "RDMSR": 1, "WRMSR": 1, "INVLPG": 1,
                    "WBINVD": 1, "INVD": 1, "DR_ACCESS": 2, "LDTR_TR_ACCESS": 2,
                    "GDTR_IDTR_ACCESS": 5, "PAUSE": 1, "RDRAND": 1, "RDSEED": 1, "MONITOR": 1,
                    "MWAIT": 1, "XSETBV": 1, "VMCALL": 1, "HLT": 1, "EXCEPTION_NMI": 2,
                    "CR_ACCESS": 4}.items():
        assert counts.get(name) == n, (name, counts)
    inv = next(r for r in recs if r["name"] == "INVLPG")
    assert inv["qualification"] == 0x200000
    dr = [r["qualification"] for r in recs if r["name"] == "DR_ACCESS"]
    assert dr == [0x17, 0x07]            # mov rax, dr7 (from) ; mov dr7, rax (to)
    assert res.status == "halted"
    base, _ = run("baseline", "builtin:exits-all")
    assert base.console == res.console       # same results under any profile


def test_hlt_exit_then_halted():
    res, recs = run(data("hlt-exit.toml"))
    assert names(recs) == ["HLT"]
    assert res.status == "halted" and res.exit_status == 0
    assert res.console == "hlt: halting\n"


def test_preemption_timer_slices_and_wakes_hlt():
    res, recs = run(data("preempt.toml"))
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert res.console == "preempt: loop done\npreempt: woke from hlt\n"
    pt = [r for r in recs if r["name"] == "PREEMPTION_TIMER"]
    assert len(pt) == 7
    # the timer counts 1000 ticks of TSC bit 5 from each VM entry (Bochs:
    # fire = ((entry_tsc >> 5) + value) << 5); the exit itself costs 1000 ticks
    assert pt[0]["tsc"] == 32000 + 1000
    pairs = [(a, b) for a, b in zip(recs, recs[1:])
             if a["name"] == b["name"] == "PREEMPTION_TIMER"]
    assert len(pairs) == 6
    for a, b in pairs:
        assert b["tsc"] == (((a["tsc"] >> 5) + 1000) << 5) + 1000


def test_triple_fault():
    res, recs = run("baseline", "builtin:triple")
    assert res.status == "triple-fault" and res.exit_status == 6
    assert names(recs) == ["TRIPLE_FAULT"]
    assert "RIP=" in res.fault_text and res.registers["rip"] > 0


def test_mtf_exits_after_every_instruction():
    res, recs = run(data("mtf.toml"))
    mtf = [r for r in recs if r["name"] == "MONITOR_TRAP_FLAG"]
    assert res.status == "debug-exit"
    assert len(mtf) == res.instructions - 1     # not after the final OUT that ends the run
    assert [r["instructions"] for r in mtf[:3]] == [1, 2, 3]


def test_interrupt_window_default_handler_turns_it_off(write_profile):
    p = write_profile("""
        [profile]
        name = "iw"
        extends = "baseline"
        [primary]
        interrupt_window_exiting = true
    """, "iw.toml")
    import os
    asm = os.path.join(os.path.dirname(p), "sti.asm")
    open(asm, "w").write("nop\nsti\nnop\nnop\ncli\nmov al, 7\nout 0xf4, al\n")
    res, recs = run(p, asm)
    assert names(recs) == ["INTERRUPT_WINDOW"]
    # STI blocks interrupts for one instruction: the exit comes after the NOP that follows it
    assert recs[0]["instructions"] == 3
    assert res.guest_exit_code == 7
