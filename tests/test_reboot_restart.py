"""A guest that resets the machine: status `reboot` (exit 14), or a fresh boot when the
profile's `lifecycle.on_reboot = "restart"` says so (vmm/run.py, launch, the live session).

The guests are small NASM sources that print a line and reset the machine the ways a PC
offers (what Linux does on `reboot` and after a panic with panic=-1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from conftest import PATIENCE, ROOT, wait_until

RESETS = {
    "kbc": "mov al, 0xFE\n        out 0x64, al",                 # keyboard controller pulse
    "cf9": "mov dx, 0xCF9\n        mov al, 0x06\n        out dx, al",   # hard reset, port 0xCF9
}


def _guest(tmp_path, how: str = "kbc", spin: int = 2000) -> str:
    p = tmp_path / f"reset-{how}.asm"
    p.write_text(f"""bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "booted", 10
        mov rcx, {spin}
.spin:  dec rcx
        jnz .spin
        {RESETS[how]}
        exit 1
""")
    return str(p)


def _profile(write_profile, body: str = "", name: str = "p.toml") -> str:
    return write_profile('[profile]\nextends = "baseline"\n' + body, name)


RESTART = '[lifecycle]\non_reboot = "restart"\n'


@pytest.mark.parametrize("how", sorted(RESETS))
def test_a_reset_ends_the_run_as_reboot_by_default(cli, tmp_path, how):
    r = cli("launch", "baseline", "--guest", _guest(tmp_path, how), "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "reboot" and r.exit_code == 14 and d["exit_status"] == 14
    assert d["console"] == "booted\n"
    assert "restarts" not in d                       # baseline does not restart
    assert "reset the machine" in d["message"]


def test_restart_boots_the_guest_again_up_to_max_restarts(cli, tmp_path, write_profile):
    p = _profile(write_profile, RESTART + "max_restarts = 2\n")
    r = cli("launch", p, "--guest", _guest(tmp_path), "--json")
    d = json.loads(r.stdout)
    # three boots (the first and two restarts); the third reset ends the run
    assert d["status"] == "reboot" and r.exit_code == 14
    assert d["restarts"] == 2 and d["console"] == "booted\n" * 3
    one = json.loads(cli("launch", "baseline", "--guest", _guest(tmp_path), "--json").stdout)
    # the report covers every boot: three times the instructions and exits of one
    assert d["instructions"] == 3 * one["instructions"]
    assert {e["name"]: 3 * e["count"] for e in one["exits"]} == \
        {e["name"]: e["count"] for e in d["exits"]}
    from vmcfg.report_schemas import schema
    jsonschema.validate(d, schema("launch"))
    # without --json: the console on stdout, a line per restart and the boots on stderr
    r = cli("launch", p, "--guest", _guest(tmp_path, "cf9"))
    assert r.exit_code == 14 and r.stdout == "booted\n" * 3
    assert "restarting (boot 2)" in r.stderr and "restarting (boot 3)" in r.stderr
    assert "0xcf9" in r.stderr and "over 3 boots" in r.stderr


def test_limits_count_over_all_boots(cli, tmp_path, write_profile):
    """No max_restarts: the guest reboots until --max-instructions (summed over the boots)."""
    p = _profile(write_profile, RESTART)
    one = json.loads(cli("launch", "baseline", "--guest", _guest(tmp_path), "--json").stdout)
    n = one["instructions"]
    r = cli("launch", p, "--guest", _guest(tmp_path), "--max-instructions", str(4 * n + n // 2),
            "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "instruction-limit" and r.exit_code == 10
    assert d["restarts"] == 4 and d["console"] == "booted\n" * 5
    assert d["instructions"] == 4 * n + n // 2


def test_a_triple_fault_is_not_a_reboot(cli, write_profile):
    p = _profile(write_profile, RESTART)
    r = cli("launch", p, "--guest", "builtin:triple", "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "triple-fault" and r.exit_code == 6 and d["restarts"] == 0


def test_bad_lifecycle_values_are_reported_at_their_key(cli, write_profile):
    p = _profile(write_profile, '[lifecycle]\non_reboot = "reboot"\n')
    r = cli("launch", p, "--guest", "builtin:hlt")
    assert r.exit_code == 2 and "p.toml:4:" in r.stderr and "restart" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("explain", "lifecycle.on_reboot")
    assert r.exit_code == 0 and "restart" in r.stdout and "stop" in r.stdout


def test_the_profile_schema_offers_the_lifecycle_table(cli):
    r = cli("schema")
    s = json.loads(r.stdout)
    life = s["properties"]["lifecycle"]["properties"]
    assert life["on_reboot"]["enum"] == ["stop", "restart"]
    assert "max_restarts" in life


def _vmcfg(*args):
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=PATIENCE)


def test_a_named_guest_restarts_and_an_apply_reaches_the_new_machine(rundir, tmp_path,
                                                                       write_profile):
    """The live session follows the guest onto each fresh machine: an apply after a restart
    turning on_reboot back to "stop" takes effect, and the next reset ends the run."""
    from vmcfg.live.runtime import read_summary
    restart = _profile(write_profile, RESTART, "restart.toml")
    stop = _profile(write_profile, '[lifecycle]\non_reboot = "stop"\n', "stop.toml")
    con = tmp_path / "console.txt"
    # about 40M instructions per boot: long enough for an apply to land inside one
    r = _vmcfg("launch", restart, "--guest", _guest(tmp_path, spin=20_000_000), "--name", "rb",
               "--detach", "--console", str(con))
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: con.exists() and con.read_text().count("booted") >= 2,
                   "the guest to restart once")
        r = _vmcfg("stats", "rb", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["restarts"] >= 1, r.stdout
        r = _vmcfg("apply", stop, "--to", "rb", "--json")
        assert r.returncode == 0, r.stderr
        assert [d["key"] for d in json.loads(r.stdout)["diff"]] == ["lifecycle.on_reboot"]
        summ = wait_until(lambda: read_summary("rb"), "the guest to end")["summary"]
        assert summ["status"] == "reboot" and summ["restarts"] >= 1
        assert con.read_text().count("booted") == summ["restarts"] + 1
        assert [h["kind"] for h in summ["history"]] == ["launch", "apply"]
    finally:
        _vmcfg("stop", "rb")


def test_a_kernel_that_reboots_restarts_with_the_same_command_line(cli, tmp_path, write_profile):
    """--kernel: each fresh boot gets the same kernel, initrd and command line (the boot
    protocol's zero page is written again).  startup_64 of this bzImage prints its command
    line (boot_params.hdr.cmd_line_ptr) and resets through the keyboard controller."""
    from linux_fixtures import linux_inputs, synthetic_bzimage
    code = bytes.fromhex("8bbe28020000" "66baf803" "8a07" "84c0" "7406" "ee" "48ffc7" "ebf4"
                         "b00a" "ee" "b0fe" "e664" "f4")
    k = tmp_path / "bzImage"
    k.write_bytes(synthetic_bzimage(payload=b"\x90" * 0x200 + code + b"\x90" * 0x100))
    rd = tmp_path / "initrd.gz"
    rd.write_bytes(linux_inputs.build_initramfs(b"not-busybox"))
    p = _profile(write_profile, RESTART + "max_restarts = 1\n")
    r = cli("launch", p, "--kernel", str(k), "--initrd", str(rd), "--append",
            "console=ttyS0 panic=-1", "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "reboot" and r.exit_code == 14 and d["restarts"] == 1
    assert d["console"] == "console=ttyS0 panic=-1\n" * 2


def test_set_and_completion_know_the_lifecycle_keys(cli, tmp_path, write_profile):
    from click.testing import CliRunner
    from vmcfg.cli.main import cli as group

    def complete(*words):
        env = {"_VMCFG_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(("vmcfg",) + words),
               "COMP_CWORD": str(len(words))}
        r = CliRunner().invoke(group, [], env=env, prog_name="vmcfg")
        return [ln.split(",", 1)[1] for ln in r.stdout.splitlines() if "," in ln]
    assert complete("set", "p.toml", "lifecycle.on") == ["lifecycle.on_reboot="]
    assert complete("set", "p.toml", "lifecycle.on_reboot=") == [
        "lifecycle.on_reboot=stop", "lifecycle.on_reboot=restart"]
    p = _profile(write_profile)
    r = cli("set", p, "lifecycle.on_reboot=restart", "lifecycle.max_restarts=1")
    assert r.exit_code == 0, r.stderr
    r = cli("launch", p, "--guest", _guest(tmp_path), "--json")
    assert json.loads(r.stdout)["restarts"] == 1 and r.exit_code == 14


TOUCH_AND_RESET = """bits 64
org 0x100000
        mov rdi, 0x400000
        mov rcx, (48 << 20) / 8
        mov rax, 0x1234
        rep stosq                    ; touch 48 MiB of guest RAM
        mov al, 0xFE
        out 0x64, al
"""


def test_each_restart_lets_the_old_machine_go(tmp_path, write_profile):
    """Eight restarts of a guest that touches 48 MiB per boot stay near the peak memory of one
    boot: the old machine's RAM is given back before the next boot runs."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_vmm",
                                                  os.path.join(ROOT, "bench", "bench_vmm.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    src = tmp_path / "touch.asm"
    src.write_text(TOUCH_AND_RESET)

    def peak(restarts: int) -> int:
        p = _profile(write_profile, RESTART + f"max_restarts = {restarts}\n", f"r{restarts}.toml")
        rc, rss, err = bench.grandchild_peak_rss(
            [sys.executable, "-c", "from vmcfg.cli.main import main; main()", "launch", p,
             "--guest", str(src), "--memory", "64M", "--console", str(tmp_path / "c.txt")])
        assert rc == 14, err
        return rss
    one, nine = peak(0), peak(8)
    assert nine < one + 40 * (1 << 20), (one >> 20, nine >> 20)   # not 8 x 48 MiB more
