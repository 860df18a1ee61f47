"""Exit rates over time (issue 17): `vmcfg stats NAME -f` as a chart on a terminal,
lines in a pipe, JSON lines; `vmcfg demo`'s before/after chart; the rate maths."""

import json

import jsonschema
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from vmcfg.trace.rates import BARS, RateHistory, before_after_lines, chart_lines, sparkline


def vmcfg(*args, check=False, timeout=60):
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def guest(rundir):
    names = []

    def start(name, profile="trap-all"):
        vmcfg("launch", profile, "--guest", "builtin:soak", "--name", name, "--detach", check=True)
        names.append(name)
    yield start
    for n in names:
        vmcfg("stop", n)


def _follow(name, *extra, **kw):
    return subprocess.Popen([sys.executable, "-m", "vmcfg.cli", "stats", name, "-f",
                             "--interval", "0.2", *extra], cwd=ROOT, text=True,
                            stderr=subprocess.PIPE, **kw)


def test_rates_and_charts_from_counter_snapshots():
    h = RateHistory(length=5)
    assert h.add(0.0, {"RDTSC": 0}) is None                      # the baseline
    assert h.add(0.5, {"RDTSC": 100}) == {"RDTSC": 200.0}
    r = h.add(1.0, {"RDTSC": 100, "CPUID": 10})                    # a new reason appears
    assert r == {"RDTSC": 0.0, "CPUID": 20.0}
    for i in range(10):
        h.add(1.5 + i, {"RDTSC": 100 + 50 * (i + 1), "CPUID": 10})
    assert len(h.series["RDTSC"]) == 5 and len(h.total) == 5      # bounded
    assert sparkline([0, 1, 2, 4, 8]) == " ▂▃▅█"
    assert sparkline([0, 0]) == "  "
    lines = chart_lines(h)
    assert lines[0].startswith("all exits") and "50/s" in lines[0]
    assert lines[1].startswith("RDTSC") and "█████" in lines[1]
    assert lines[2].startswith("CPUID") and "     " in lines[2]
    b, a = RateHistory(3), RateHistory(3)
    for i in range(4):
        b.add(i, {"IO": 0})
        a.add(i, {"IO": 1000 * i})
    out = before_after_lines(b, a, name_width=4)
    assert out[1] == "IO   " + "   " + "│" + "███" + "         0/s -> 1.0k/s"


def test_stats_follow_in_a_pipe_prints_a_line_per_sample(guest):
    guest("gp")
    p = _follow("gp", stdout=subprocess.PIPE)
    try:
        lines = [p.stdout.readline() for _ in range(3)]
        for ln in lines:
            m = re.match(r"^\d\d:\d\d:\d\d total=(\d+)/s (.*)$", ln)
            assert m, ln
            rates = dict(x.split("=") for x in m.group(2).split())
            assert set(rates) == {"RDTSC", "IO_INSTRUCTION"}
            assert all(v.endswith("/s") and int(v[:-2]) > 0 for v in rates.values())
        vmcfg("stop", "gp", check=True)
        assert p.wait(timeout=30) == 0                    # ends with the guest
    finally:
        p.kill()
        p.wait()


def test_stats_follow_json_lines_carry_rates(guest):
    guest("gj")
    p = _follow("gj", "--json", stdout=subprocess.PIPE)
    try:
        first, second = json.loads(p.stdout.readline()), json.loads(p.stdout.readline())
        assert "rates" not in first and first["state"] == "running"
        assert set(second["rates"]) == {"RDTSC", "IO_INSTRUCTION"}
        from vmcfg.report_schemas import schema
        for doc in (first, second):
            jsonschema.validate(doc, schema("stats-follow"))
        assert all(v > 0 for v in second["rates"].values())
    finally:
        p.kill()
        p.wait()


def test_stats_follow_on_a_terminal_draws_a_chart(guest):
    guest("gt")
    master, slave = pty.openpty()
    p = _follow("gt", stdout=slave, env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            text = seen.decode("utf-8", "replace")
            if "exit rates" in text and any(c in text for c in BARS) and \
                    re.search(r"IO_INSTRUCTION +\S+ +[\d.]+[kMG]?/s", text):
                break
        text = seen.decode("utf-8", "replace")
        assert "gt: running" in text and "RDTSC" in text
        assert any(c in text for c in BARS), text[-2000:]
    finally:
        p.kill()
        p.wait()
        os.close(master)


def test_demo_draws_the_rate_chart_before_and_after_the_apply(rundir):
    # each phase lasts a wall-clock second: ample CPU for the guest even on a busy machine
    r = vmcfg("demo", "--seconds", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "exit rates before │ after the apply" in r.stdout
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()
            if ln.strip().startswith(("RDTSC", "IO_INSTRUCTION")) and "│" in ln}
    assert set(rows) == {"RDTSC", "IO_INSTRUCTION"}
    for ln in rows.values():
        before, after = ln.split("│")
        assert not any(c in before for c in BARS)         # baseline: no exits before
        assert any(c in after for c in BARS)              # trap-all: exits after
        assert re.search(r"0/s -> [\d.]+[kMG]?/s$", ln)
    d = json.loads(vmcfg("demo", "--json", "--seconds", "1", timeout=120).stdout)
    assert d["phase1"]["rates"] == {}
    assert len(d["phase2"]["rates"]["RDTSC"]) == 12 and max(d["phase2"]["rates"]["RDTSC"]) > 0
