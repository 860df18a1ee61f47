"""Where a launched guest's console goes, as a user sees it: stdout as it comes, stderr as it
comes with --json (whose document takes stdout, with the whole console in "console"), a file
with --console; and what a user types on a terminal reaches the guest's COM1."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading

import pytest

from conftest import FOREGROUND, PATIENCE, ROOT, read_until

# echoes what arrives on COM1 (polling the line status register) until it receives 'q'
ECHO = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        print "echo: ready", 10
.poll:  mov dx, 0x3FD
        in al, dx
        test al, 1
        jz .poll
        mov dx, 0x3F8
        in al, dx
        cmp al, 'q'
        je .done
        out dx, al
        jmp .poll
.done:  print 10, "echo: bye", 10
        exit 0
"""


# the same with the UART's receive interrupt (IRQ 4 through the 8259): the guest sleeps in HLT
# between keys with nothing else that could wake it
ECHO_IRQ = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x24, serial_rx
        lidt [idtr]
        pic_init
        mov al, 0xEF                    ; IMR: only IRQ 4 (COM1)
        out 0x21, al
        mov dx, COM1 + 1
        mov al, 1                       ; IER: received data available
        out dx, al
        print "echo: ready", 10
.idle:  sti
        hlt
        cli
        cmp byte [rel quit], 0
        je .idle
        print 10, "echo: bye", 10
        exit 0

serial_rx:
        push rax
        push rdx
.more:  mov dx, COM1 + 5
        in al, dx
        test al, 1
        jz .done
        mov dx, COM1
        in al, dx
        cmp al, 'q'
        jne .echo
        mov byte [rel quit], 1
        jmp .more
.echo:  out dx, al
        jmp .more
.done:  mov al, 0x20                    ; EOI
        out 0x20, al
        pop rdx
        pop rax
        iretq

        idt_table
quit:   db 0
"""


def _popen(args, **kw):
    """vmcfg in a process that takes SIGINT as a terminal's foreground job does; killed if it
    is still running after PATIENCE seconds (the test then fails instead of hanging)."""
    p = subprocess.Popen(FOREGROUND + ["-m", "vmcfg.cli", *args], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, **kw)
    t = threading.Timer(PATIENCE, p.kill)
    t.daemon = True
    t.start()
    return p


def test_json_streams_the_console_to_stderr_while_the_guest_runs():
    p = _popen(["launch", "baseline", "--guest", "builtin:runaway", "--json"],
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_until(p.stderr, "runaway: spinning")
        assert p.poll() is None              # the line came while the guest still runs
        p.send_signal(signal.SIGINT)
        out, rest = p.communicate(timeout=PATIENCE)
    finally:
        p.kill()
    d = json.loads(out)                      # stdout: the document and nothing else
    assert d["status"] == "interrupted" and p.returncode == 130
    assert d["console"] == "runaway: spinning\n"
    assert "Traceback" not in rest


def test_json_with_a_console_file_keeps_the_console_off_the_terminal(cli, tmp_path):
    con = tmp_path / "console.txt"
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", "launch", "baseline", "--guest",
                        "builtin:cpuid", "--json", "--console", str(con)], cwd=ROOT,
                       capture_output=True, text=True, timeout=PATIENCE)
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["console"].startswith("cpuid: vendor GenuineIntel")
    assert con.read_text() == d["console"] and "cpuid:" not in r.stderr


def test_without_json_the_console_is_stdout_and_the_summary_stderr():
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", "launch", "baseline", "--guest",
                        "builtin:cpuid"], cwd=ROOT, capture_output=True, text=True,
                       timeout=PATIENCE)
    assert r.returncode == 0 and r.stdout.startswith("cpuid: vendor GenuineIntel")
    assert "debug-exit" in r.stderr and "cpuid:" not in r.stderr


# a VMX-preemption timer about a day away (2^32 x 32 ticks): a halted guest has a wake-up
# armed, but far beyond the test
FAR_TIMER = ('[profile]\nextends = "baseline"\n[pin]\nactivate_vmx_preemption_timer = true\n'
             '[preemption_timer]\nvalue = 0xFFFFFFFF\n')


@pytest.mark.parametrize("source, clock", [
    pytest.param(ECHO, "virtual", id="polling"),
    pytest.param(ECHO_IRQ, "virtual", id="interrupt-virtual"),
    pytest.param(ECHO_IRQ, "realtime", id="interrupt-realtime"),
])
def test_keys_typed_on_a_terminal_reach_the_guest(tmp_path, source, clock):
    """Keys go to COM1 as they are typed: to a guest polling the UART, and to one halted
    until the UART's receive interrupt (it waits for the key instead of ending 'halted')."""
    guest = tmp_path / "echo.asm"
    guest.write_text(source)
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        p = _popen(["launch", "baseline", "--guest", str(guest), "--clock", clock],
                   stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            read_until(p.stdout, "echo: ready")
            os.write(master, b"hi there")
            got = b""
            while b"hi there" not in got:      # the guest echoes each key as it comes
                b = p.stdout.read(1)
                assert b, "vmcfg ended before echoing the keys"
                got += b
            assert p.poll() is None
            os.write(master, b"q")
            out, err = p.communicate(timeout=PATIENCE)
        finally:
            p.kill()
        assert p.returncode == 0, err
        assert b"echo: bye" in out and b"debug-exit" in err
        assert termios.tcgetattr(slave) == before     # vmcfg gave the terminal back as it was
    finally:
        os.close(master)
        os.close(slave)


def test_a_detached_guest_writes_its_console_to_its_log(rundir):
    def vmcfg(*args):
        return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=PATIENCE)
    r = vmcfg("launch", "baseline", "--guest", "builtin:runaway", "--name", "bg", "--detach",
              "--json")
    try:
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["name"] == "bg" and doc["console"].startswith(str(rundir))
        assert "runaway" not in r.stdout + r.stderr      # nothing of the console here
        from conftest import wait_until
        wait_until(lambda: os.path.exists(doc["console"]) and
                   open(doc["console"]).read() == "runaway: spinning\n",
                   "the console line in the guest's log")
    finally:
        vmcfg("stop", "bg")


def test_with_the_host_clock_a_key_ends_a_halt_before_its_far_timer(tmp_path):
    """--clock realtime: a guest halted until a timer about a day away (its VMX-preemption
    timer) takes a key's UART interrupt when the key comes; the timer neither fires early nor
    holds the key back.  (In process, feeding COM1 as the terminal does.)"""
    from conftest import wait_until
    from vmcfg.vmm.plan import build_plan
    from vmcfg.vmm.run import run_plan
    (tmp_path / "echo.asm").write_text(ECHO_IRQ)
    (tmp_path / "p.toml").write_text(FAR_TIMER)
    plan = build_plan(str(tmp_path / "p.toml"), guest=str(tmp_path / "echo.asm"),
                      clock="realtime", timeout=PATIENCE)
    out: list[str] = []

    def typist(vcpu):
        text = lambda: "".join(out)          # noqa: E731
        wait_until(lambda: "echo: ready" in text(), "the guest to start")
        vcpu.platform.serial.feed(b"a")
        wait_until(lambda: "ready\na" in text(), "the echo of the first key")
        vcpu.platform.serial.feed(b"q")

    def on_vcpu(vcpu):
        vcpu.interactive = True
        threading.Thread(target=typist, args=(vcpu,), daemon=True).start()
    res = run_plan(plan, console=out.append, on_vcpu=on_vcpu)
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.message
    assert res.console == "echo: ready\na\necho: bye\n" and res.exits == []
