"""Booting the stock Debian 12 kernel with the busybox initramfs (issue 13's acceptance runs).

The end-to-end boots take many minutes of emulation: they are marked `slow` and `linux` and
run only with VMCFG_SLOW=1 (the default run has the bounded boot test in
test_linux_loader.py).  See README "Booting Linux" for what a boot costs.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("VMCFG_SLOW") != "1",
                                reason="a full Linux boot takes many minutes: VMCFG_SLOW=1 runs it")

from linux_fixtures import linux_inputs, linux_inputs_or_skip

APPEND = "console=ttyS0 panic=-1 quiet"


@pytest.mark.linux
@pytest.mark.slow
def test_boot_to_userspace_and_poweroff(cli):
    inp = linux_inputs_or_skip()
    r = cli("launch", "baseline", "--kernel", str(inp.kernel), "--initrd", str(inp.initrd),
            "--append", APPEND, "--memory", "256M", "--timeout", "900", "--json")
    d = json.loads(r.stdout)
    assert linux_inputs.EXPECTED_LINE in d["console"], d["console"][-2000:]
    assert d["status"] == "poweroff" and r.exit_code == 0


@pytest.mark.linux
@pytest.mark.slow
def test_boot_is_deterministic_with_the_virtual_clock(cli):
    """Two runs of the same boot, bounded by instructions, give the same console bytes."""
    inp = linux_inputs_or_skip()
    args = ("launch", "baseline", "--kernel", str(inp.kernel), "--initrd", str(inp.initrd),
            "--append", "console=ttyS0 earlyprintk=serial,ttyS0", "--clock", "virtual",
            "--max-instructions", "6000000000", "--json")
    a, b = json.loads(cli(*args).stdout), json.loads(cli(*args).stdout)
    assert a["console"] == b["console"] and a["exits"] == b["exits"]
    assert a["instructions"] == b["instructions"]


@pytest.mark.linux
@pytest.mark.slow
def test_named_detached_boot_with_trap_all_applied_during_it(rundir, tmp_path):
    """Issue 13's live acceptance: the boot as a named, detached guest, `vmcfg apply trap-all`
    while it runs; the line still appears, the guest powers off, and its stats show RDTSC
    and I/O exits."""
    import subprocess
    import sys

    from conftest import ROOT, wait_until

    def vmcfg(*args):
        return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    inp = linux_inputs_or_skip()
    con = tmp_path / "console.txt"
    r = vmcfg("launch", "baseline", "--kernel", str(inp.kernel), "--initrd", str(inp.initrd),
              "--append", APPEND, "--memory", "256M", "--timeout", "900", "--name", "lx",
              "--detach", "--console", str(con))
    assert r.returncode == 0, r.stderr
    try:
        def running():
            s = vmcfg("stats", "lx", "--json")
            return s.returncode == 0 and json.loads(s.stdout)["instructions"] > 1_000_000
        wait_until(running, "the kernel to run", timeout=300, step=1.0)
        r = vmcfg("apply", "trap-all", "--to", "lx", "--json")
        assert r.returncode == 0, r.stderr
        seen = {}

        def exits():
            s = vmcfg("stats", "lx", "--json")
            if s.returncode != 0:
                return None
            seen.update({e["name"]: e["count"] for e in json.loads(s.stdout)["exits"]})
            return "RDTSC" in seen and "IO_INSTRUCTION" in seen
        wait_until(exits, "RDTSC and I/O exits after the apply", timeout=600, step=1.0)
        from vmcfg.live.runtime import read_summary
        summ = wait_until(lambda: read_summary("lx"), "the guest to end", timeout=900, step=2.0)
        assert summ["summary"]["status"] == "poweroff", summ["summary"]
        assert linux_inputs.EXPECTED_LINE in con.read_text(encoding="latin-1")
    finally:
        vmcfg("stop", "lx")


@pytest.mark.linux
@pytest.mark.slow
def test_a_line_typed_on_the_terminal_reaches_the_busybox_shell(tmp_path):
    """Item 2 of issue 13 end to end: vmcfg with a terminal on stdin; the kernel's 8250 driver
    takes the keys on its receive interrupt, the tty echoes them, busybox `read` gets the line
    (Enter arrives as CR, the tty makes it a newline) and the shell answers."""
    import pty
    import subprocess
    import sys
    import threading

    from conftest import ROOT
    inp = linux_inputs_or_skip()
    init = ('#!/bin/sh\necho "type a line:"\nread line\necho "you typed: $line $((6*7))"\n'
            '/bin/busybox poweroff -f\n')
    rd = tmp_path / "initrd-read.gz"
    rd.write_bytes(linux_inputs.build_initramfs(inp.busybox.read_bytes(), init))
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "vmcfg.cli", "launch", "baseline",
                              "--kernel", str(inp.kernel), "--initrd", str(rd), "--append", APPEND,
                              "--memory", "256M", "--timeout", "900"], cwd=ROOT, stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killer = threading.Timer(1200, p.kill)
        killer.daemon = True
        killer.start()
        try:
            out = b""

            def upto(needle: bytes) -> None:
                nonlocal out
                while needle not in out:
                    b = p.stdout.read1(4096)
                    assert b, f"vmcfg ended before {needle!r}: {out[-1000:]!r}"
                    out += b
            upto(b"type a line:")
            os.write(master, b"hello vmcfg\r")
            upto(b"you typed: hello vmcfg 42")
            rest, err = p.communicate(timeout=300)
        finally:
            killer.cancel()
            p.kill()
        assert p.returncode == 0 and b"poweroff" in err, err[-1000:]
    finally:
        os.close(master)
        os.close(slave)
