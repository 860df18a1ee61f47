"""The control channel and the live commands, against stand-in guest processes
(tests/fake_guest.py); the emulated VMM's own live tests are in test_live_vmm.py."""

import json

import jsonschema
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from conftest import HERE, PATIENCE, ROOT, read_until, wait_until

RDTSC_ON = '[profile]\nextends = "baseline"\n[primary]\nrdtsc_exiting = true\n'
RDTSC_OFF = '[profile]\nextends = "baseline"\n'


@pytest.fixture
def guest(rundir, write_profile):
    procs = []

    def start(name="g1", text=RDTSC_OFF, slow="0"):
        prof = write_profile(text, f"{name}.toml")
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_guest.py"), name, prof,
                              "--slow", slow], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
        return p, prof
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})},
                          timeout=PATIENCE)


def test_permissions_of_dir_and_socket(guest, rundir):
    guest("perm")
    d = rundir / "vmcfg"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / "perm.sock").st_mode) == 0o600


def test_ps_apply_history_rollback_stop(guest, write_profile):
    _, prof = guest("g1")
    r = run("ps", "--json")
    (row,) = json.loads(r.stdout)
    assert row["name"] == "g1" and row["state"] == "running" and row["profile"] == prof
    on = write_profile(RDTSC_ON, "on.toml")
    r = run("apply", on, "--to", "g1", "--dry-run", "--json")
    assert r.returncode == 0
    plan = json.loads(r.stdout)
    assert plan["would_apply"] and [d["key"] for d in plan["plan"]] == ["primary.rdtsc_exiting"]
    r = run("apply", on, "--to", "g1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["applied"] and res["instructions"] > 0 and res["latency_ms"] >= 0
    assert res["diff"] == [{"kind": "control", "key": "primary.rdtsc_exiting", "old": 0, "new": 1, "live": True}]
    from vmcfg.live.channel import request
    from vmcfg.live.runtime import paths
    wait_until(lambda: {e["name"]: e["count"] for e in request(
        paths("g1").sock, "stats", timeout=PATIENCE)["exits"]}.get("RDTSC"),
               "RDTSC exits after the apply")
    s = json.loads(run("stats", "g1", "--json").stdout)
    assert {e["name"]: e["count"] for e in s["exits"]}["RDTSC"] > 0
    h = json.loads(run("history", "g1", "--json").stdout)
    assert [e["kind"] for e in h] == ["launch", "apply"]
    r = run("apply", "--rollback", "--to", "g1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["diff"][0]["new"] == 0
    h = json.loads(run("history", "g1", "--json").stdout)
    assert [e["kind"] for e in h] == ["launch", "apply", "rollback to #0"]
    r = run("stop", "g1", "--json")
    assert r.returncode == 0
    summ = json.loads(r.stdout)
    assert summ["summary"]["status"] == "stopped" and len(summ["summary"]["history"]) == 3
    assert json.loads(run("ps", "--json").stdout) == []


def test_refusals_leave_guest_unchanged(guest, write_profile):
    guest("g2")
    bad = write_profile('[profile]\nextends = "baseline"\n[pin]\nvirtual_nmis = true\n', "bad.toml")
    r = run("apply", bad, "--to", "g2", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["errors"][0]["rule"] == "E19"
    newguest = write_profile('[profile]\nextends = "baseline"\n[guest]\nmemory = "64M"\n', "mem.toml")
    r = run("apply", newguest, "--to", "g2")
    assert r.returncode == 1 and "guest.memory" in r.stderr and "needs a new guest" in r.stderr
    badcpu = write_profile('[profile]\nextends = "baseline"\n[primary]\nactivate_tertiary_controls = true\n', "tpr.toml")
    assert run("apply", badcpu, "--to", "g2").returncode == 1
    syntax = write_profile('[primary\n', "syn.toml")
    r = run("apply", syntax, "--to", "g2")
    assert r.returncode == 2 and "syn.toml:1" in r.stderr
    h = json.loads(run("history", "g2", "--json").stdout)
    assert len(h) == 1                      # nothing was applied
    assert run("apply", bad, "--to", "nosuch").returncode == 2
    assert run("apply", bad, "--to", "../evil").returncode == 2
    assert run("apply", "--rollback", "5", "--to", "g2").returncode == 1


def test_hostile_requests(guest, rundir):
    guest("g3")
    sock = str(rundir / "vmcfg" / "g3.sock")

    def raw(data: bytes, shutdown=True):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(PATIENCE)
        s.connect(sock)
        s.sendall(data)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        out = s.recv(1 << 20)
        s.close()
        return json.loads(out)

    assert raw(b"not json\n")["error"] == "request is not valid JSON"
    assert "unknown op" in raw(b'{"op": "format_disk"}\n')["error"]
    assert "must be str" in raw(b'{"op": "apply", "profile": 5}\n')["error"]
    assert "unknown argument" in raw(b'{"op": "stats", "x": 1}\n')["error"]
    assert "larger than" in raw(b"[" * (200 * 1024), shutdown=False)["error"]
    assert raw(b"\xff\xfe\n")["status"] == 2


def test_an_idle_client_does_not_block_others(rundir, monkeypatch):
    """A client that connects and says nothing: the server answers the next one at once.
    The server drops a silent client after CLIENT_TIMEOUT; here that is made far longer
    than the reply may take, so a server that waited for the idle client would fail."""
    import vmcfg.live.channel as ch
    monkeypatch.setattr(ch, "CLIENT_TIMEOUT", 2 * PATIENCE)
    path = str(rundir / "idle.sock")
    srv = ch.ControlServer(path, lambda op, args: {"state": "running"})
    srv.start()
    idle = socket.socket(socket.AF_UNIX)
    try:
        idle.connect(path)
        assert ch.request(path, "stats", timeout=PATIENCE)["state"] == "running"
    finally:
        idle.close()
        srv.close()


def test_foreign_uid_refused(rundir):
    """A peer whose uid is not the owner's is refused (simulated: the server
    expects another uid than the one connecting)."""
    from vmcfg.live.channel import ChannelError, ControlServer, request
    path = str(rundir / "f.sock")
    srv = ControlServer(path, lambda op, args: {"hello": 1})
    srv.start()
    try:
        assert request(path, "stats")["hello"] == 1
        srv.allowed_uid = os.getuid() + 1
        with pytest.raises(ChannelError) as e:
            request(path, "stats")
        assert "permission denied" in e.value.message
    finally:
        srv.close()


def test_crash_leaves_nothing_stale(guest, rundir):
    p, prof = guest("g4")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    d = rundir / "vmcfg"
    assert (d / "g4.json").exists()                 # left behind by the crash
    assert json.loads(run("ps", "--json").stdout) == []
    assert not (d / "g4.json").exists() and not (d / "g4.sock").exists()
    guest("g4")                                     # the name can be used again
    assert [g["name"] for g in json.loads(run("ps", "--json").stdout)] == ["g4"]


def test_kill_mid_apply(guest, write_profile, rundir):
    p, _ = guest("g5", slow="2")
    on = write_profile(RDTSC_ON, "on.toml")
    client = subprocess.Popen([sys.executable, "-m", "vmcfg.cli", "apply", on, "--to", "g5", "--json"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until(p.stdout, "applying")                # the guest is inside the apply
    os.kill(p.pid, signal.SIGKILL)
    out, errout = client.communicate(timeout=PATIENCE)
    assert client.returncode == 2 and "Traceback" not in errout
    assert json.loads(run("ps", "--json").stdout) == []


def test_duplicate_name_refused(guest, rundir, write_profile):
    guest("dup")
    prof = write_profile(RDTSC_OFF, "x.toml")
    r = subprocess.run([sys.executable, os.path.join(HERE, "fake_guest.py"), "dup", prof],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=PATIENCE)
    assert r.returncode != 0 and "already running" in r.stderr


def test_watch_survives_invalid_save(guest, write_profile, rundir):
    guest("g6")
    path = write_profile(RDTSC_OFF, "w.toml")
    w = subprocess.Popen([sys.executable, "-m", "vmcfg.cli", "watch", path, "--to", "g6", "--json",
                          "--interval", "0.05", "--max-events", "3"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    read_until(w.stderr, "watching")                # it has read the file as it is now
    events = []
    for text in (RDTSC_ON, "[primary\n", RDTSC_OFF):
        with open(path + ".tmp", "w") as fh:      # saved the way editors do: write, rename
            fh.write(text)
        os.replace(path + ".tmp", path)
        events.append(json.loads(w.stdout.readline()))   # its answer to this save
    w.communicate(timeout=PATIENCE)
    assert [e["event"] for e in events] == ["applied", "refused", "applied"]
    from vmcfg.report_schemas import schema
    for e in events:
        jsonschema.validate(e, schema("watch"))
    assert events[0]["diff"][0]["new"] == 1 and events[2]["diff"][0]["new"] == 0
