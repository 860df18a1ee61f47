"""The run loop: virtual time, determinism, limits, live apply, handlers, modes, loaders."""

import json
import os
import struct
import threading

import pytest

from vmm_helpers import SELFTEST, data, names, run


def test_same_guest_same_trace_but_for_host_time(tmp_path):
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest

    outs = []
    for i in range(2):
        r = resolve("trap-all", cpu="cvmm")
        p = tmp_path / f"t{i}.jsonl"
        with open(p, "w") as fh:
            res = run_guest(r.config, load_image("builtin:exits-all"), memory=16 << 20, mode=64,
                            trace=fh)
        recs = [json.loads(ln) for ln in p.read_text().splitlines()]
        host = [(r.pop("host_ns"), r.pop("host_at_ns")) for r in recs]
        # the host clock fields are the only ones that vary; handling takes time, in order
        assert all(ns > 0 for ns, _ in host)
        assert all(a[1] + a[0] <= b[1] for a, b in zip(host, host[1:]))
        outs.append((recs, res.instructions, res.tsc, res.console))
    assert outs[0] == outs[1]
    assert len(outs[0][0]) > 300


def test_instruction_limit_is_exact():
    res, _ = run("baseline", "builtin:runaway", max_instructions=123_457)
    assert res.status == "instruction-limit" and res.exit_status == 10
    assert res.instructions == 123_457
    res2, _ = run("baseline", "builtin:runaway", max_instructions=5_000_001)
    assert res2.instructions == 5_000_001


def test_retired_count_matches_guest_arithmetic():
    res, _ = run("baseline", "builtin:compute", max_instructions=None)
    # 4 setup + 5 per iteration x 20M + printing; the loop alone is 100M instructions
    assert res.status == "debug-exit"
    assert 100_000_000 < res.instructions < 100_010_000
    again, _ = run("baseline", "builtin:compute", max_instructions=None)
    assert again.instructions == res.instructions and again.console == res.console


def test_timeout_status():
    res, _ = run("baseline", "builtin:runaway", max_instructions=None, timeout=0.3)
    assert res.status == "timeout" and res.exit_status == 8
    # never before the timeout; how many instructions fit in 0.3 s depends on the load
    assert res.wall_seconds >= 0.3


def test_live_apply_from_another_thread():
    """request_apply swaps the config between two instructions of a guest running natively.

    The guest spins (RDTSC in a loop, no exit under baseline) until the apply arrives,
    however late another thread gets the CPU on a busy machine; then RDTSC exits, and a
    handler ends the run after 1,000 of them."""
    from conftest import wait_until
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    from vmcfg.vmx.exits import Exit

    base = resolve("baseline", cpu="cvmm").config
    trap = resolve(data("rdtsc-exit.toml"), cpu="cvmm").config
    asm = "mov rsi, 0x4000000000000000\nl:\n rdtsc\n dec rsi\n jnz l\n hlt\n"
    holder, seen = {}, []

    def on_rdtsc(ctx):
        seen.append(ctx.instructions)
        ctx.emulate()
        if len(seen) == 1000:
            ctx.end(3)

    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".asm", delete=False) as f:
        f.write(asm)
    try:
        def flip():
            v = wait_until(lambda: holder.get("v"), "the vCPU", step=0.001)
            wait_until(lambda: v.counter.count >= 100_000, "100,000 instructions", step=0.001)
            v.request_apply(trap)
        th = threading.Thread(target=flip)
        th.start()
        res = run_guest(base, load_image(f.name), memory=16 << 20, mode=64,
                        on_vcpu=lambda v: holder.setdefault("v", v),
                        handlers={int(Exit.RDTSC): on_rdtsc})
        th.join()
    finally:
        os.unlink(f.name)
    assert res.status == "debug-exit" and res.guest_exit_code == 3, res.message
    assert res.exit_counts() == {"RDTSC": 1000}
    # exits began mid-run, at an instruction boundary: one RDTSC every 3 instructions
    assert seen[0] >= 100_000
    assert [b - a for a, b in zip(seen, seen[1:])] == [3] * 999


def test_handlers_from_profile_emulate_and_change_controls():
    res, recs = run(data("handlers.toml"))
    assert res.console.startswith("cpuid: vendor FakeCPU!!!!!\n")
    res2, recs2 = run(data("handlers.toml"), "builtin:rdtsc")
    assert names(recs2) == ["RDTSC"]            # the handler turned RDTSC exiting off
    assert "rdtsc: first  0x00000000000003e9\n" in res2.console


def test_handler_api_inject_and_end():
    def inject_ud(ctx):
        ctx.inject(6)

    res, recs = run("baseline", "builtin:triple", handlers={10: inject_ud})
    assert res.status == "triple-fault"

    def stop(ctx):
        assert ctx.name == "CPUID" and ctx.instruction_length == 2
        assert ctx.regs.rip == ctx.exit.rip
        ctx.end(42)

    res, recs = run("baseline", "builtin:cpuid", handlers={10: stop})
    assert res.status == "debug-exit" and res.guest_exit_code == 42
    assert res.console == "cpuid: vendor "


def test_failing_handler_is_reported_not_raised():
    def boom(ctx):
        raise ValueError("nope")

    res, _ = run("baseline", "builtin:cpuid", handlers={10: boom})
    assert res.status == "error" and res.exit_status == 12
    assert "CPUID raised ValueError: nope" in res.message


def test_selftest_passes_under_its_profile_and_fails_otherwise():
    res, _ = run(SELFTEST)
    assert res.status == "debug-exit" and res.guest_exit_code == 0
    assert res.console.endswith("selftest: all passed\n")
    res, _ = run("baseline", "builtin:selftest")
    assert res.guest_exit_code == 0b01111      # all but the hypervisor-leaf check fail


def test_real_and_protected_mode_guests():
    res, recs = run(data("real16.toml"))
    assert res.console == "hello from 16-bit real mode\n" and names(recs) == ["CPUID"]
    res, recs = run(data("prot32.toml"))
    assert res.console == "hello from 32-bit protected mode\n" and names(recs) == ["CPUID"]


@pytest.mark.parametrize("profile,mode,rule", [
    ("baseline", 32, "G2"),
    (data("prot32.toml"), 64, "G2"),
])
def test_entry_failures(profile, mode, rule):
    res, _ = run(profile, "builtin:hello32", mode=mode)
    assert res.status == "entry-failure" and res.exit_status == 4
    assert res.entry_failure["reason_field"] == 0x80000021
    assert rule in [p["rule"] for p in res.entry_failure["problems"]]


def test_unrestricted_guest_needed_for_paging_off(write_profile):
    p = write_profile("""
        [profile]
        name = "noug"
        extends = "baseline"
        [entry]
        ia32e_mode_guest = false
    """)
    res, _ = run(p, "builtin:hello32", mode=32)
    assert res.status == "entry-failure"
    prob = {x["rule"]: x for x in res.entry_failure["problems"]}
    assert "unrestricted_guest" in prob["G3"]["fix"]


def test_ept_violation_stop_and_map(write_profile):
    import tempfile
    src = "mov rax, [0x300000]\nmov al, 9\nout 0xf4, al\n"
    with tempfile.NamedTemporaryFile("w", suffix=".asm", delete=False) as f:
        f.write(src)
    try:
        res, recs = run(data("ept-stop.toml"), f.name)
        assert res.status == "error" and names(recs) == ["EPT_VIOLATION"]
        assert recs[0]["guest_physical_address"] == 0x300000
        assert recs[0]["qualification"] & 0x7 == 1          # a read
        assert recs[0]["qualification"] & 0x38 == 0         # page not mapped at all
        assert "EPT violation" in res.message
        p = write_profile(open(data("ept-stop.toml")).read().replace('"stop"', '"map"')
                          .replace('extends = "baseline"', 'extends = "baseline"'))
        res, recs = run(p, f.name)
        assert res.guest_exit_code == 9 and names(recs) == ["EPT_VIOLATION"]
    finally:
        os.unlink(f.name)


def test_elf_loader_and_asm_source(tmp_path):
    code = bytes.fromhex("b00c e6f4 f4")            # mov al, 12; out 0xf4, al; hlt
    entry = 0x200000
    eh = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                     2, 62, 1, entry, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, entry, entry, len(code), len(code), 0x1000)
    elf = eh + ph + b"\0" * (0x1000 - len(eh) - len(ph)) + code
    p = tmp_path / "g.elf"
    p.write_bytes(elf)
    res, _ = run("baseline", str(p))
    assert res.guest_exit_code == 12
    a = tmp_path / "g.asm"
    a.write_text("mov al, 13\nout 0xf4, al\n")
    res, _ = run("baseline", str(a))
    assert res.guest_exit_code == 13


def test_guest_fault_outside_ram_has_register_dump():
    res, _ = run(data("prot32.toml"), "builtin:wild32", mode=32)
    assert res.status == "error" and res.exit_status == 12
    assert "0xf0000000" in res.message and "outside guest RAM" in res.message
    assert "EAX=11111111" in res.fault_text and "EBX=f0000000" in res.fault_text
    # the report's registers are an object (one JSON shape)
    assert res.registers["rax"] == 0x11111111 and res.registers["rbx"] == 0xF0000000
    assert res.to_json()["registers"]["rip"] == res.registers["rip"]


def test_python_fallback_counter_gives_same_counts():
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm import run as R
    from vmcfg.vmm.devices import Board as Platform
    from vmcfg.vmm.vcpu import Vcpu

    counts = []
    for native in (True, False):
        cfg = resolve("trap-all", cpu="cvmm").config
        img = load_image("builtin:exits-all")
        v = Vcpu(cfg, memory=16 << 20, mode=64, platform=Platform(), native_counter=native)
        for addr, d in img.segments:
            v.uc.mem_write(addr, d)
        R.setup_start_state(v, 64, 16 << 20, img.entry)
        v.run_loop()
        counts.append((v.status, v.icount, v.tsc, dict((k, s.count) for k, s in v.exit_stats.items())))
    assert counts[0] == counts[1]


def test_self_modifying_code_is_rescanned(tmp_path):
    a = tmp_path / "smc.asm"
    a.write_text(
        "mov byte [rel target], 0x0f\n"
        "mov byte [rel target + 1], 0xa2\n"      # nop; nop -> cpuid
        "mov byte [rel gone], 0x90\n"
        "mov byte [rel gone + 1], 0x90\n"        # cpuid -> nop; nop
        "target: nop\n nop\n"
        "gone: cpuid\n"
        "mov al, 5\n out 0xf4, al\n")
    res, recs = run("baseline", str(a))
    assert res.guest_exit_code == 5
    assert names(recs) == ["CPUID"]
    assert recs[0]["rip"] == 0x100000 + 4 * 7


def test_data_on_a_code_page_still_counts_exactly(tmp_path):
    a = tmp_path / "mixed.asm"
    a.write_text(
        "mov esi, 1000\n"
        "mov r8, 0x100800\n"                          # a counter on the code page
        "l: inc qword [r8]\n"                     # 1000 stores into the code page
        "cpuid\n"
        "dec esi\n"
        "jnz l\n"
        "mov rax, qword [r8]\n"
        "out 0xf4, al\n")
    res, recs = run("baseline", str(a))
    assert res.guest_exit_code == 1000 & 0xFF
    assert names(recs) == ["CPUID"] * 1000
    assert res.instructions == 2 + 4 * 1000 + 2
