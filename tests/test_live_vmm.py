"""Live reconfiguration of guests running on the emulated VMM: launch --name
--detach, apply, stats, history, rollback, stop, several guests at once, and
the soak test (1,000 applies while a guest computes a checksum)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import PATIENCE, ROOT, wait_until

BASE = '[profile]\nextends = "baseline"\n'
RDTSC_ON = BASE + "[primary]\nrdtsc_exiting = true\n"
IO_80 = BASE + "[io]\nintercept = [0x80]\n"
RDTSC_AND_IO = BASE + "[primary]\nrdtsc_exiting = true\n[io]\nintercept = [0x80]\n"

# the soak guest's loop: 7 instructions per iteration; RDTSC is the 5th, OUT the 6th
LOOP_LEN, RDTSC_AT, OUT_AT = 7, 4, 5


def _counts(doc) -> dict:
    """{NAME: count} from a report's exits list [{reason, name, count}]."""
    return {e["name"]: e["count"] for e in doc["exits"]}


def vmcfg(*args, check=False, timeout=PATIENCE):
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def stats(name: str) -> dict:
    """A guest's live counters, asked over its socket (no process start per poll)."""
    from vmcfg.live.channel import request
    from vmcfg.live.runtime import paths
    return request(paths(name).sock, "stats", timeout=PATIENCE)


@pytest.fixture
def launched(rundir):
    names = []

    def start(name, profile, guest="builtin:soak", extra=()):
        r = vmcfg("launch", profile, "--guest", guest, "--name", name, "--detach", *extra)
        assert r.returncode == 0, r.stderr
        names.append(name)
        return r
    yield start
    for n in names:
        vmcfg("stop", n)


LOOP_BYTES = bytes.fromhex("48ffc1" "4889c8" "480fafc1" "4801c3" "0f31" "e680")
LOOP_OFFSETS = [0, 3, 6, 10, 13, 15, 17]     # inc, mov, imul, add, rdtsc, out, jmp


def soak_loop_address() -> int:
    img = open(os.path.join(ROOT, "vmcfg", "guests", "soak.bin"), "rb").read()
    return 0x100000 + img.index(LOOP_BYTES)


def predicted(windows, final, first_loop_insn, offset):
    """How many loop instructions at `offset` ran inside the 'on' windows."""
    def upto(n):  # instructions with index < n at that offset
        k = n - first_loop_insn - offset
        return 0 if k <= 0 else (k + LOOP_LEN - 1) // LOOP_LEN
    total = 0
    for (a, b, on) in windows:
        if on:
            total += upto(b) - upto(a)
    return total


def test_launch_detach_apply_stop(launched, write_profile):
    a = write_profile(BASE, "a.toml")
    b = write_profile(RDTSC_ON, "b.toml")
    launched("g1", a)
    rows = json.loads(vmcfg("ps", "--json", check=True).stdout)
    assert [r["name"] for r in rows] == ["g1"] and rows[0]["state"] == "running"
    s0 = wait_until(lambda: (lambda s: s if s["instructions"] > 0 else None)(stats("g1")),
                    "the guest to run")
    assert "RDTSC" not in _counts(s0)
    r = vmcfg("apply", b, "--to", "g1", "--json", check=True)
    res = json.loads(r.stdout)
    assert res["applied"] and res["instructions"] > 0
    assert [d["key"] for d in res["diff"]] == ["primary.rdtsc_exiting"]
    wait_until(lambda: _counts(stats("g1")).get("RDTSC"), "RDTSC exits after the apply")
    r = vmcfg("apply", "--rollback", "--to", "g1", "--json", check=True)
    assert json.loads(r.stdout)["diff"][0]["new"] == 0
    r = vmcfg("stop", "g1", "--json", check=True)
    summ = json.loads(r.stdout)
    assert summ["summary"]["status"] == "stopped"
    assert [h["kind"] for h in summ["summary"]["history"]] == ["launch", "apply", "rollback to #0"]
    assert json.loads(vmcfg("ps", "--json").stdout) == []


def test_refused_apply_leaves_guest_running(launched, write_profile):
    a = write_profile(BASE, "a.toml")
    launched("g2", a)
    mem = write_profile(BASE + '[guest]\nmemory = "32M"\n', "mem.toml")
    r = vmcfg("apply", mem, "--to", "g2")
    assert r.returncode == 1 and "needs a new guest" in r.stderr
    bad = write_profile(BASE + "[primary]\nactivate_tertiary_controls = true\n", "bad.toml")
    r = vmcfg("apply", bad, "--to", "g2", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["errors"][0]["rule"] == "E2"
    before = stats("g2")["instructions"]
    wait_until(lambda: stats("g2")["instructions"] > before, "the guest to run on")
    assert len(json.loads(vmcfg("history", "g2", "--json", check=True).stdout)) == 1


def test_two_guests_independent(launched, write_profile):
    a = write_profile(BASE, "a.toml")
    b = write_profile(IO_80, "b.toml")
    launched("ga", a)
    launched("gb", a)
    vmcfg("apply", b, "--to", "gb", check=True)
    wait_until(lambda: _counts(stats("gb")).get("IO_INSTRUCTION"), "I/O exits in gb")
    sa = stats("ga")
    assert sa["instructions"] > 0 and "IO_INSTRUCTION" not in _counts(sa)
    assert len(json.loads(vmcfg("history", "ga", "--json", check=True).stdout)) == 1


@pytest.mark.parametrize("applies", [250, pytest.param(1000, marks=[pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("VMCFG_SLOW") != "1", reason="1,000 applies take half a minute: VMCFG_SLOW=1")])])
def test_soak_many_applies_exact_exit_counts(launched, write_profile, applies):
    """Many applies (250; 1,000 under VMCFG_SLOW=1) alternating two profiles while the soak
    guest runs; then the checksum is right and every exit count matches the windows in the
    history."""
    p_on = write_profile(RDTSC_AND_IO, "on.toml")
    p_off = write_profile(BASE, "off.toml")
    launched("soak", p_off)
    from vmcfg.live.channel import request
    from vmcfg.live.runtime import paths
    sock = paths("soak").sock
    for i in range(applies):
        res = request(sock, "apply", profile=p_on if i % 2 == 0 else p_off)
        assert res["applied"], res
    r = vmcfg("stop", "soak", "--json", check=True)
    summ = json.loads(r.stdout)["summary"]
    hist = summ["history"]
    assert len(hist) == applies + 1
    final = summ["instructions"]
    # instruction windows and which profile was in force
    starts = [h["instructions"] for h in hist] + [final]
    windows = [(starts[i], starts[i + 1], i % 2 == 1) for i in range(len(hist))]
    assert all(a <= b for a, b, _ in windows)
    # where the guest stopped: RIP names the next loop instruction j, RCX the iteration
    regs = summ["registers"]
    n, j = regs["rcx"], LOOP_OFFSETS.index(regs["rip"] - soak_loop_address())
    in_loop = LOOP_LEN * n if j == 0 else LOOP_LEN * (n - 1) + j
    first = final - in_loop
    exits = {e["name"]: e["count"] for e in summ["exits"]}
    assert exits.get("RDTSC", 0) == predicted(windows, final, first, RDTSC_AT)
    assert exits.get("IO_INSTRUCTION", 0) == predicted(windows, final, first, OUT_AT)
    # the checksum: rbx = sum of squares up to the iteration in rcx (or one behind
    # if the guest stopped between 'inc rcx' and 'add rbx')
    sq = lambda k: (k * (k + 1) * (2 * k + 1) // 6) % (1 << 64)  # noqa: E731
    assert regs["rbx"] == (sq(n - 1) if j in (1, 2, 3) else sq(n))
    assert n > 1000


def test_demo_shows_the_statistics_change(rundir):
    # the demo watches each phase for a wall-clock time (that is what it shows); a second is
    # ample for the guest process to get some CPU, even on a crowded machine
    r = vmcfg("demo", "--json", "--seconds", "1")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["phase1"]["instructions"] > 0 and d["phase1"]["exits"] == []
    assert _counts(d["phase2"])["RDTSC"] > 0 and _counts(d["phase2"])["IO_INSTRUCTION"] > 0
    assert "primary.rdtsc_exiting" in {c["key"] for c in d["apply"]["diff"]}
    assert d["final"] == {"status": "stopped", "instructions": d["final"]["instructions"], "applies": 1}
    assert json.loads(vmcfg("ps", "--json").stdout) == []


def test_demo_into_a_pipe_closed_early_still_stops_its_guest(rundir):
    """`vmcfg demo | head -1`: the reader goes away after the first line; the demo ends
    quietly and leaves no guest running."""
    p = subprocess.Popen([sys.executable, "-m", "vmcfg.cli", "demo", "--seconds", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert p.stdout.readline().startswith(b"1. launch")
    p.stdout.close()                       # the reader is gone
    _, err = p.communicate(timeout=PATIENCE)
    assert b"Traceback" not in err, err
    assert json.loads(vmcfg("ps", "--json").stdout) == []


def test_inject_nmi_into_running_guest(launched, write_profile):
    """An NMI injected live exits with nmi_exiting; the default handler then delivers
    it to the guest, which (the soak guest has no IDT) ends in a triple fault."""
    from vmcfg.live.runtime import read_summary
    p = write_profile(BASE + "[pin]\nnmi_exiting = true\n", "nmi.toml")
    launched("gi", p)
    r = vmcfg("inject", "gi", "irq", "7")
    assert r.returncode == 2 and "32-255" in r.stderr
    r = vmcfg("inject", "gi", "nmi", "--json", check=True)
    assert json.loads(r.stdout)["queued"] == "nmi"
    summ = wait_until(lambda: read_summary("gi"), "the guest's summary")
    exits = {e["name"]: e["count"] for e in summ["summary"]["exits"]}
    assert exits["EXCEPTION_NMI"] == 1
    assert summ["summary"]["status"] == "triple-fault"


def test_halted_named_guest_waits_for_live_events(launched, write_profile):
    """A named guest in HLT with nothing on its platform to wake it waits (state
    'halted') instead of ending; a change applied meanwhile leaves it halted at the
    same instruction; a live NMI wakes it (here: an NMI exit, then -- the guest has
    no IDT -- a triple fault)."""
    from vmcfg.live.runtime import read_summary
    launched("gh", write_profile(BASE, "a.toml"), guest="builtin:hlt")
    s = wait_until(lambda: (lambda s: s if s["state"] == "halted" else None)(stats("gh")),
                   "the guest to wait in HLT")
    at = s["instructions"]
    res = json.loads(vmcfg("apply", write_profile(BASE + "[pin]\nnmi_exiting = true\n", "nmi.toml"),
                           "--to", "gh", "--json", check=True).stdout)
    assert res["applied"] and res["instructions"] == at
    s = json.loads(vmcfg("stats", "gh", "--json", check=True).stdout)
    assert s["state"] == "halted" and s["instructions"] == at
    vmcfg("inject", "gh", "nmi", check=True)
    summ = wait_until(lambda: read_summary("gh"), "the guest's summary")
    assert [e["name"] for e in summ["summary"]["exits"]] == ["EXCEPTION_NMI", "TRIPLE_FAULT"]
    assert summ["summary"]["status"] == "triple-fault"
