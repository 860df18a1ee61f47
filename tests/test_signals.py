"""Ctrl-C (SIGINT) and SIGTERM at every point of a run: `vmcfg smoke`, `vmcfg launch`
in the foreground, `vmcfg watch`.

Each test delivers the signal at a point the program announces itself -- a line
"vmcfg-hook: NAME" on stderr where VMCFG_TEST_HOOKS names the point (the program
then waits for the signal), a line the guest prints, a file that appears -- never
after a sleep.  The programs must then end with 128 + the signal (130, 143), kill
every process they started, write what finished, and print no traceback.

bench/signals_loop.py runs this file many times in a row under load.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import FOREGROUND, HERE, PATIENCE, ROOT, read_until, wait_until
from test_smoke_runner import FAKE_LAUNCH

# Both signals take the same path (vmcfg/interrupt.py); the points that only differ in the
# number take one of them, alternately, to keep the suite quick.
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
ONLY_INT, ONLY_TERM = SIGNALS[:1], SIGNALS[1:]


class Child:
    """A vmcfg process with pipes; killed (so the test fails instead of hanging) if it
    is still running PATIENCE seconds after it started."""

    def __init__(self, argv, *, cwd=ROOT, env=None, hooks=()):
        e = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
        e.pop("VMCFG_TEST_HOOKS", None)
        if hooks:
            e["VMCFG_TEST_HOOKS"] = ",".join(hooks)
        self.p = subprocess.Popen(FOREGROUND + list(argv), cwd=cwd, env=e,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err = []
        self.hung = False
        self._timer = threading.Timer(PATIENCE, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self):
        self.hung = True
        self.p.kill()

    def stderr_until(self, needle):
        self.err += read_until(self.p.stderr, needle)

    def stdout_until(self, needle):
        read_until(self.p.stdout, needle)

    def hook(self, name):
        self.stderr_until(f"vmcfg-hook: {name}")

    def finish(self, sig):
        """Send sig; return (returncode, stdout, stderr) once the program has ended."""
        t0 = time.monotonic()
        self.p.send_signal(sig)
        out, err = self.p.communicate()
        self._timer.cancel()
        log = os.environ.get("VMCFG_SIGNAL_TIMES")   # bench/signals_loop.py: never asserted
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", ""),
                                     "seconds": time.monotonic() - t0}) + "\n")
        err = "".join(self.err) + err
        assert not self.hung, f"still running {PATIENCE:g} s after the signal:\n{err}"
        assert "Traceback" not in err, err
        return self.p.returncode, out, err

    def close(self):
        self._timer.cancel()
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


@pytest.fixture
def spawn():
    children = []

    def _spawn(*a, **kw):
        c = Child(*a, **kw)
        children.append(c)
        return c
    yield _spawn
    for c in children:
        c.close()


def dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- vmcfg smoke ------------------------------------------------------------------------

@pytest.fixture
def smoke_dir(tmp_path):
    """A fake `vmcfg launch` (see test_smoke_runner), recipes and a driver script that
    runs `vmcfg smoke` with it."""
    (tmp_path / "fake_launch.py").write_text(FAKE_LAUNCH)
    rec = tmp_path / "launched.jsonl"
    (tmp_path / "ok.json").write_text(json.dumps({"record": str(rec)}))
    (tmp_path / "hang.json").write_text(json.dumps({"hang": True, "record": str(rec)}))
    (tmp_path / "driver.py").write_text(
        "import sys\nimport vmcfg.smoke.runner as r\n"
        f"r.DEFAULT_LAUNCHER = (sys.executable, {str(tmp_path / 'fake_launch.py')!r})\n"
        "from vmcfg.cli.main import main\nsys.argv = ['vmcfg', 'smoke'] + sys.argv[1:]\nmain()\n")
    return tmp_path


def smoke_file(d, guests: list[str]) -> str:
    """Cases c0, c1, ... in this order, one per guest recipe; the timeouts are far away, so
    only the signal can end a hanging case."""
    text = "[defaults]\ntimeout = 3600\n"
    for i, g in enumerate(guests):
        text += f'[[case]]\nid = "c{i}"\nprofile = "baseline"\nguest = "{g}.json"\n'
    (d / "smoke.toml").write_text(text)
    return "smoke.toml"


def launched(d) -> list[dict]:
    rec = d / "launched.jsonl"
    return [json.loads(ln) for ln in rec.read_text().splitlines()] if rec.exists() else []


def junit_cases(d) -> dict[str, str]:
    """case id -> passed | failure | error | skipped, from the JUnit file."""
    root = ET.parse(d / "junit.xml").getroot()
    out = {}
    for tc in root.iter("testcase"):
        kinds = [c.tag for c in tc if c.tag in ("failure", "error", "skipped")]
        out[tc.get("name")] = kinds[0] if kinds else "passed"
    return out


def run_smoke(spawn, d, guests, hooks=()):
    f = smoke_file(d, guests)
    return spawn([str(d / "driver.py"), f, "-j", "2", "--junit", "junit.xml", "--json"],
                 cwd=d, hooks=hooks)


def check_ended(d, rc, err, sig):
    name = signal.Signals(sig).name
    assert rc == 128 + sig, err
    assert f"interrupted by {name}" in err
    for rec in launched(d):
        assert dead(rec["pid"]), f"launch {rec['argv'][0]} (pid {rec['pid']}) still runs"


@pytest.mark.parametrize("sig", ONLY_TERM)
def test_smoke_signal_before_any_worker_starts(spawn, smoke_dir, sig):
    c = run_smoke(spawn, smoke_dir, ["ok", "hang", "hang"], hooks=["smoke:start"])
    c.hook("smoke:start")
    rc, out, err = c.finish(sig)
    check_ended(smoke_dir, rc, err, sig)
    assert launched(smoke_dir) == []
    assert "3 cases not run" in err
    doc = json.loads(out)
    assert doc["summary"]["not_run"] == 3 and doc["summary"]["interrupted"] \
        == f"interrupted by {signal.Signals(sig).name}" and doc["summary"]["ok"] is False
    assert junit_cases(smoke_dir) == {}


@pytest.mark.parametrize("sig", ONLY_INT)
def test_smoke_signal_while_workers_start(spawn, smoke_dir, sig):
    """Both workers stand just before starting their launch process."""
    c = run_smoke(spawn, smoke_dir, ["hang", "hang", "ok"], hooks=["smoke:worker-start"])
    c.hook("smoke:worker-start")
    rc, out, err = c.finish(sig)
    check_ended(smoke_dir, rc, err, sig)
    assert launched(smoke_dir) == []            # cancelled before any process started
    assert json.loads(out)["summary"]["not_run"] == 3


@pytest.mark.parametrize("sig", SIGNALS)
def test_smoke_signal_while_cases_run(spawn, smoke_dir, sig):
    c = run_smoke(spawn, smoke_dir, ["hang", "hang", "ok"])
    wait_until(lambda: len(launched(smoke_dir)) == 2, "both hanging launches to start")
    rc, out, err = c.finish(sig)
    check_ended(smoke_dir, rc, err, sig)
    name = signal.Signals(sig).name
    assert junit_cases(smoke_dir) == {"c0": "error", "c1": "error"}
    doc = json.loads(out)
    assert [x["error"] for x in doc["cases"]] == [f"interrupted by {name}"] * 2
    assert doc["summary"]["not_run"] == 1
    for case in ("c0", "c1"):           # what the killed cases had: kept for a look
        assert (smoke_dir / "smoke-results" / case / "summary.json").exists()


@pytest.mark.parametrize("sig", ONLY_TERM)
def test_smoke_signal_while_a_case_finishes(spawn, smoke_dir, sig):
    """c0 has ended and its worker stands between the process's end and its verdict;
    c1 hangs; c2 waits for a worker."""
    c = run_smoke(spawn, smoke_dir, ["ok", "hang", "ok"], hooks=["smoke:case-done"])
    c.hook("smoke:case-done")
    wait_until(lambda: len(launched(smoke_dir)) == 2, "the hanging launch to start")
    rc, out, err = c.finish(sig)
    check_ended(smoke_dir, rc, err, sig)
    assert junit_cases(smoke_dir) == {"c0": "passed", "c1": "error"}
    assert len(launched(smoke_dir)) == 2        # c2 never started
    assert "1 passed" in err and "1 not run" in err


@pytest.mark.parametrize("sig", ONLY_INT)
def test_smoke_signal_while_the_report_is_written(spawn, smoke_dir, sig):
    """Every case has finished: the report is complete, the status still says why it ended."""
    c = run_smoke(spawn, smoke_dir, ["ok", "ok"], hooks=["smoke:report"])
    c.hook("smoke:report")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    assert junit_cases(smoke_dir) == {"c0": "passed", "c1": "passed"}
    assert json.loads(out)["summary"]["passed"] == 2


def test_smoke_second_ctrl_c_exits_at_once(spawn, smoke_dir):
    """A second signal while the first is being handled ends the process immediately."""
    c = run_smoke(spawn, smoke_dir, ["ok", "ok"], hooks=["smoke:report"])
    c.hook("smoke:report")
    c.p.send_signal(signal.SIGINT)
    rc, out, err = c.finish(signal.SIGINT)
    assert rc == 130
    # either the report finished before the second signal, or "again: exiting now"
    assert "passed" in err or "SIGINT again: exiting now" in err


# ---- vmcfg launch in the foreground -------------------------------------------------------

@pytest.mark.parametrize("sig", SIGNALS)
def test_launch_signal_while_a_guest_spins_without_exits(spawn, sig):
    """The runaway guest loops in native code (no VM exit, no Python) after its banner."""
    c = spawn(["-m", "vmcfg.cli", "launch", "baseline", "--guest", "builtin:runaway"])
    c.stdout_until("runaway: spinning")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    assert f"interrupted: interrupted by {signal.Signals(sig).name}" in err
    assert "instructions" in err                # the report of the run so far


@pytest.mark.parametrize("sig", ONLY_TERM)
def test_launch_signal_before_the_guest_starts(spawn, sig):
    c = spawn(["-m", "vmcfg.cli", "launch", "baseline", "--guest", "builtin:runaway", "--json"],
              hooks=["launch:start"])
    c.hook("launch:start")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    doc = json.loads(out)
    assert doc["status"] == "interrupted" and doc["instructions"] == 0
    assert doc["exit_status"] == 128 + sig


def test_launch_signal_after_the_guest_ended(spawn):
    c = spawn(["-m", "vmcfg.cli", "launch", "baseline", "--guest", "builtin:hlt", "--json"],
              hooks=["launch:report"])
    c.hook("launch:report")
    rc, out, err = c.finish(signal.SIGTERM)
    assert rc == 143, err
    doc = json.loads(out)
    assert doc["status"] == "halted" and doc["exit_status"] == 143


@pytest.mark.parametrize("sig", ONLY_INT)
def test_named_guest_waiting_in_hlt_ends_on_a_signal(spawn, rundir, sig):
    """A named foreground guest halted with nothing to wake it waits on a condition
    variable; the signal still ends it, and its summary is recorded."""
    from vmcfg.live.channel import ChannelError, request
    from vmcfg.live.runtime import paths, read_summary
    c = spawn(["-m", "vmcfg.cli", "launch", "baseline", "--guest", "builtin:hlt", "--name", "gs",
               "--json"], env={"XDG_RUNTIME_DIR": str(rundir)})

    def halted():
        try:
            return request(paths("gs").sock, "status", timeout=PATIENCE)["state"] == "halted"
        except (ChannelError, OSError):
            return False
    wait_until(halted, "the guest to wait in HLT")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    assert json.loads(out)["status"] == "interrupted"
    assert read_summary("gs")["summary"]["status"] == "interrupted"


# ---- vmcfg watch --------------------------------------------------------------------------

@pytest.fixture
def fake_guest(rundir, write_profile, spawn):
    prof = write_profile('[profile]\nextends = "baseline"\n', "w.toml")
    g = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_guest.py"), "gw", prof],
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert g.stdout.readline().strip() == "ready"
        yield prof
    finally:
        g.kill()
        g.communicate()


@pytest.mark.parametrize("sig", ONLY_INT)
def test_watch_signal_while_watching(spawn, fake_guest, sig):
    c = spawn(["-m", "vmcfg.cli", "watch", fake_guest, "--to", "gw"])
    c.stderr_until("Ctrl-C to stop")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err


@pytest.mark.parametrize("sig", ONLY_TERM)
def test_watch_signal_before_it_watches(spawn, fake_guest, sig):
    c = spawn(["-m", "vmcfg.cli", "watch", fake_guest, "--to", "gw"], hooks=["watch:start"])
    c.hook("watch:start")
    rc, out, err = c.finish(sig)
    assert rc == 128 + sig, err
    assert "watching" not in err
