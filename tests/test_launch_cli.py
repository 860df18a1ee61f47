"""`vmcfg launch`: JSON document, exit statuses, bad input, trace and console files."""

import json
import os

from vmm_helpers import SELFTEST, data


def _doc(r):
    return json.loads(r.stdout)


def test_json_document_and_debug_exit_status(cli):
    r = cli("launch", "baseline", "--guest", "builtin:cpuid", "--json")
    assert r.exit_code == 0                      # the guest wrote 0: success
    d = _doc(r)
    assert d["status"] == "debug-exit" and d["guest_exit_code"] == 0
    assert d["exits"] == [{"reason": 10, "name": "CPUID", "count": 3}]
    assert d["console"].startswith("cpuid: vendor GenuineIntel\n")
    assert d["instructions"] > 0 and d["tsc"] == d["instructions"] + 3000
    assert isinstance(d["wall_seconds"], float)


def test_selftest_exit_code_through_port_f4(cli):
    r = cli("launch", SELFTEST, "--json")
    assert _doc(r)["guest_exit_code"] == 0 and r.exit_code == 0
    r = cli("launch", "baseline", "--guest", "builtin:selftest", "--json")
    assert _doc(r)["guest_exit_code"] == 15 and r.exit_code == 3     # guest-failure


def test_halted_is_status_0_and_human_report(cli):
    r = cli("launch", data("hlt-exit.toml"))
    assert r.exit_code == 0
    assert r.stdout == "hlt: halting\n"                 # the console
    assert "halted" in r.stderr and "HLT" in r.stderr and "time in VMM" in r.stderr


def test_trace_and_console_files(cli, tmp_path):
    tr, con = tmp_path / "t.jsonl", tmp_path / "c.txt"
    r = cli("launch", data("io-bitmap.toml"), "--trace", str(tr), "--console", str(con))
    assert r.exit_code == 0
    assert r.stdout == ""
    assert con.read_text() == "io: in 0x80 -> 000000ff\nio: lsr -> 00000060\nio: hello from rep outsb\n"
    recs = [json.loads(x) for x in tr.read_text().splitlines()]
    assert [x["name"] for x in recs] == ["IO_INSTRUCTION", "IO_INSTRUCTION"]
    assert set(recs[0]) >= {"seq", "instructions", "tsc", "rip", "reason", "name", "qualification",
                            "bytes", "disassembly"}
    assert recs[0]["bytes"] == "e480" and recs[0]["disassembly"] == "in al,80h"


def test_mode_memory_and_overrides(cli):
    r = cli("launch", data("prot32.toml"), "--json")
    assert _doc(r)["console"] == "hello from 32-bit protected mode\n"
    r = cli("launch", data("real16.toml"), "--json", "--memory", "1M")
    assert _doc(r)["console"] == "hello from 16-bit real mode\n"


def test_other_statuses(cli):
    r = cli("launch", "baseline", "--guest", "builtin:triple", "--json")
    assert r.exit_code == 6 and _doc(r)["status"] == "triple-fault"
    r = cli("launch", "baseline", "--guest", "builtin:runaway", "--json", "--max-instructions", "5000")
    assert r.exit_code == 10 and _doc(r)["instructions"] == 5000
    r = cli("launch", "baseline", "--guest", "builtin:runaway", "--json", "--timeout", "0.2")
    assert r.exit_code == 8 and _doc(r)["status"] == "timeout"
    r = cli("launch", "baseline", "--guest", "builtin:hello32", "--mode", "32", "--json")
    d = _doc(r)
    assert r.exit_code == 4 and d["status"] == "entry-failure"
    assert d["entry_failure"]["reason_field"] == 0x80000021
    assert d["exits"] == [{"reason": 33, "name": "ENTRY_FAIL_GUEST_STATE", "count": 1}]


def test_entry_failure_human_text_has_fix(cli):
    r = cli("launch", "baseline", "--guest", "builtin:hello32", "--mode", "32")
    assert r.exit_code == 4
    assert "VM entry failed" in r.stderr and "fix:" in r.stderr and "unrestricted_guest" in r.stderr


def test_guest_fault_report(cli):
    r = cli("launch", data("prot32.toml"), "--guest", "builtin:wild32", "--mode", "32")
    assert r.exit_code == 12
    assert "0xf0000000" in r.stderr and "EAX=11111111" in r.stderr and "mov ecx,[ebx]" in r.stderr


def test_handler_option(cli, tmp_path):
    (tmp_path / "myh.py").write_text(
        "def h(ctx):\n    ctx.emulate()\n    ctx.end(77)\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = cli("launch", "baseline", "--guest", "builtin:cpuid", "--handler", "CPUID=myh:h", "--json")
    finally:
        os.chdir(cwd)
    assert _doc(r)["guest_exit_code"] == 77 and r.exit_code == 3


def test_bad_inputs_are_messages_not_tracebacks(cli, tmp_path, write_profile):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(65 << 20)
    arm = tmp_path / "arm.elf"
    arm.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (2).to_bytes(2, "little")
                    + (183).to_bytes(2, "little") + b"\0" * 60)
    cases = [
        (["--guest", str(tmp_path / "missing.bin")], "no such file"),
        (["--guest", str(empty)], "empty"),
        (["--guest", str(big)], "larger than"),
        (["--guest", str(arm)], "AArch64"),
        (["--guest", "builtin:cpuid", "--load-address", "0x2000000"], "outside guest RAM"),
        (["--guest", "builtin:nosuch"], "no bundled guest"),
        (["--guest", "builtin:cpuid", "--memory", "lots"], "bad memory size"),
        (["--guest", "builtin:cpuid", "--handler", "CPUID=nomodule_xyz:f"], "cannot import"),
        (["--guest", "builtin:cpuid", "--handler", "BOGUS=x:y"], "unknown exit reason"),
        ([], "no guest image"),
    ]
    for args, text in cases:
        r = cli("launch", "baseline", *args)
        assert r.exit_code == 2, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    bad_toml = write_profile("[primary\n")
    r = cli("launch", bad_toml, "--guest", "builtin:cpuid")
    assert r.exit_code == 2 and "Traceback" not in r.stderr


def test_profile_invalid_for_cvmm_is_refused(cli, write_profile):
    p = write_profile("""
        [profile]
        name = "bad"
        extends = "baseline"
        [primary]
        activate_tertiary_controls = true
    """)
    r = cli("launch", p, "--guest", "builtin:cpuid")
    assert r.exit_code == 1
    assert "cvmm" in r.stderr and "error[" in r.stderr


def test_asm_guest_from_profile_relative_path(cli, write_profile, tmp_path):
    (tmp_path / "g.asm").write_text("mov al, 21\nout 0xf4, al\n")
    p = write_profile("""
        [profile]
        name = "rel"
        extends = "baseline"
        [guest]
        image = "g.asm"
    """)
    r = cli("launch", p, "--json")
    assert _doc(r)["guest_exit_code"] == 21
