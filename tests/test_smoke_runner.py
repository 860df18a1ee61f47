"""vmcfg smoke: runner, reports, JUnit XML and exit statuses, against a fake `vmcfg launch`.

The fake launcher speaks the `vmcfg launch --json` contract; what it does is
read from the "guest" file (a JSON recipe), so every way a case can end --
pass, fail, crash, hang past its timeout, garbage on stdout -- is quick and
deterministic.  tests/test_smoke_launch.py runs the real emulator.
"""

import json
import os
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

import vmcfg.smoke.runner as runner_mod
from vmcfg.smoke.loader import load_smoke
from vmcfg.smoke.runner import MARKER, Runner

FAKE_LAUNCH = r'''
import argparse, json, os, sys, time
ap = argparse.ArgumentParser()
ap.add_argument("profile")
for o in ("--guest", "--mode", "--memory", "--trace", "--console", "--max-instructions", "--cpu"):
    ap.add_argument(o)
ap.add_argument("--timeout", type=float)
ap.add_argument("--json", action="store_true")
a = ap.parse_args()
spec = json.load(open(a.guest))
if "record" in spec:
    with open(spec["record"], "a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "start": time.time(),
                            "pid": os.getpid()}) + "\n")
if spec.get("hang"):                     # ignores its own --timeout
    parent = os.getppid()
    while os.getppid() == parent:        # ...but not the death of vmcfg smoke (a failed test)
        time.sleep(0.1)
    sys.exit(99)
if spec.get("crash"):
    raise RuntimeError("emulator exploded")
if spec.get("garbage"):
    print("this is not JSON")
    sys.exit(0)
if spec.get("invalid"):                  # what launch --json prints for an invalid profile
    err = {"rule": "E19", "title": "Virtual NMIs need NMI exiting",
           "message": "pin.virtual_nmis is set but pin.nmi_exiting is not",
           "location": {"file": a.profile, "line": 4, "column": 1}}
    print(json.dumps({"profile": a.profile, "valid": False, "errors": [err, err],
                      "status": "invalid-profile"}))
    sys.exit(1)
if spec.get("usage"):
    sys.stderr.write("vmcfg: guest image nosuch.bin: no such file\n")
    sys.exit(2)
doc = {"status": "halted", "guest_exit_code": None, "instructions": 100, "tsc": 1000,
       "exits": [], "console": "", "wall_seconds": 0.01}
if "barrier" in spec:                    # wait until this many launches have started
    end = time.monotonic() + a.timeout
    while open(spec["record"]).read().count("\n") < spec["barrier"]:
        if time.monotonic() > end:
            doc["status"] = "timeout"
            break
        time.sleep(0.01)
if "sleep" in spec:
    s = min(spec["sleep"], a.timeout)
    time.sleep(s)
    if spec["sleep"] > a.timeout:
        doc["status"] = "timeout"
doc.update(spec.get("result", {}))
with open(a.console, "w") as fh:
    fh.write(doc["console"])
with open(a.trace, "w") as fh:
    for e in doc["exits"]:
        for _ in range(e["count"]):
            fh.write(json.dumps({"reason": e["reason"], "name": e["name"]}) + "\n")
print(json.dumps(doc))
code = {"halted": 0, "timeout": 8, "triple-fault": 6}.get(doc["status"], 0)
if doc["status"] == "debug-exit":
    code = (doc["guest_exit_code"] << 1) | 1
sys.exit(code)
'''

GUESTS = {
    "ok": {"result": {"exits": [{"reason": 10, "name": "CPUID", "count": 3}],
                      "console": "hello from the guest\n"}},
    "three": {"result": {"status": "debug-exit", "guest_exit_code": 3, "console": "bye\n"}},
    "hang": {"hang": True},
    "crash": {"crash": True},
    "garbage": {"garbage": True},
    "invalid": {"invalid": True},
    "usage": {"usage": True},
    "spin": {"sleep": 30},
    "ctl": {"result": {"console": "bad\x01byte <&>\n"}},
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake launcher, recipe guests in tmp_path, cwd = tmp_path; returns a smoke-file writer."""
    script = tmp_path / "fake_launch.py"
    script.write_text(FAKE_LAUNCH)
    for name, recipe in GUESTS.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(recipe))
    monkeypatch.setattr(runner_mod, "DEFAULT_LAUNCHER", (sys.executable, str(script)))
    monkeypatch.chdir(tmp_path)

    def _w(text: str, name: str = "smoke.toml") -> str:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return name
    return _w


MIXED = """
    [smoke]
    name = "fake"
    grace = 0.5
    [defaults]
    timeout = 60                   # far more than a busy machine needs to start a launch
    [[case]]
    id = "good"
    profile = "baseline"
    guest = "ok.json"
    expect.exits = { CPUID = 3 }
    expect.console_contains = "hello"
    [[case]]
    id = "wrong-code"
    profile = "baseline"
    guest = "three.json"
    expect.exit_code = 0
    [[case]]
    id = "runaway"
    profile = "baseline"
    guest = "hang.json"
    timeout = 0.5                  # killed at 0.5 + 0.5 s: no earlier, whatever the load
    [[case]]
    id = "crashes"
    profile = "baseline"
    guest = "crash.json"
    [[case]]
    id = "later"
    profile = "baseline"
    guest = "ok.json"
    skip = "not today"
    """


def test_mixed_run_outcomes_table_artefacts_and_junit(cli, fake, tmp_path):
    f = fake(MIXED)
    r = cli("smoke", f, "-j", "2", "--junit", "out/junit.xml")
    assert r.exit_code == 1
    err = r.stderr
    assert r.stdout == ""
    assert "smoke: smoke.toml: 5 cases, 2 workers" in err
    # one plain progress line per case (no terminal here)
    assert "PASS  good (" in err
    assert "FAIL  wrong-code (" in err and "exit code: expected 0, got 3" in err
    assert "ERROR runaway (" in err and \
        "killed: no result 1 s after start (launch --timeout 0.5 s + 0.5 s grace)" in err
    assert "ERROR crashes (" in err and \
        "vmcfg launch exited 1 without a result: crashed: RuntimeError: emulator exploded" in err
    assert "SKIP  later: not today" in err
    assert all(f"/5] " in ln for ln in err.splitlines() if ln.startswith("["))
    # summary table: one row per case, reasons in the last column
    table = err[err.index("case "):]
    assert table.splitlines()[0].split() == ["case", "result", "status", "code",
                                             "instructions", "exits", "time", "reason"]
    row = next(ln for ln in table.splitlines() if ln.startswith("wrong-code"))
    assert row.split()[:5] == ["wrong-code", "FAIL", "debug-exit", "3", "100"]
    # the closing line, last
    assert err.rstrip().splitlines()[-1].startswith("1 passed, 1 failed, 2 errors, 1 skipped in ")
    # artefacts of failing cases only, named in the output
    res = tmp_path / "smoke-results"
    assert "artefacts of 3 failing cases" in err and "smoke-results/" in err
    assert sorted(os.listdir(res)) == sorted([MARKER, "report.json", "wrong-code", "runaway",
                                              "crashes"])
    assert sorted(os.listdir(res / "wrong-code")) == ["command.txt", "console.txt", "stderr.txt",
                                                      "summary.json", "trace.jsonl"]
    assert (res / "wrong-code" / "console.txt").read_text() == "bye\n"
    summ = json.loads((res / "wrong-code" / "summary.json").read_text())
    assert summ["verdict"]["failures"][0]["expected"] == "0"
    assert summ["result"]["guest_exit_code"] == 3
    assert (res / "wrong-code" / "command.txt").read_text().startswith("vmcfg launch baseline "
                                                                       "--guest ")
    assert "RuntimeError: emulator exploded" in (res / "crashes" / "stderr.txt").read_text()
    # JUnit XML
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root
    assert {k: suite.get(k) for k in ("name", "tests", "failures", "errors", "skipped")} == \
        {"name": "fake", "tests": "5", "failures": "1", "errors": "2", "skipped": "1"}
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert list(cases) == ["good", "wrong-code", "runaway", "crashes", "later"]
    assert cases["good"].get("classname") == "fake.baseline"
    assert cases["good"].find("failure") is None
    assert cases["good"].find("system-out").text == "hello from the guest\n"
    fail = cases["wrong-code"].find("failure")
    assert fail.get("message") == "exit code: expected 0, got 3"
    assert "artefacts: smoke-results/wrong-code" in fail.text
    assert "rerun: vmcfg launch baseline" in fail.text
    assert cases["runaway"].find("error").get("message").startswith("killed: no result")
    assert cases["crashes"].find("system-err").text.rstrip().endswith("emulator exploded")
    assert cases["later"].find("skipped").get("message") == "not today"
    assert cases["wrong-code"].get("file") == "smoke.toml" and \
        cases["wrong-code"].get("line") == "12"


def test_all_pass_exit_0_results_folder_removed_and_keep(cli, fake, tmp_path):
    f = fake("""
        [[matrix]]
        profiles = ["baseline"]
        guests = ["ok.json", "three.json"]
        [[matrix.cell]]
        guest = "three"
        expect.exit_code = 3
        expect.console_contains = "bye"
        """)
    r = cli("smoke", f)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("2 passed, 0 failed in ")
    assert not (tmp_path / "smoke-results").exists()
    assert "artefacts" not in r.stderr
    r = cli("smoke", f, "--keep", "--results", "keep")
    assert r.exit_code == 0
    assert sorted(os.listdir(tmp_path / "keep")) == [MARKER, "baseline-x-ok", "baseline-x-three",
                                                     "report.json"]
    assert (tmp_path / "keep" / "baseline-x-ok" / "trace.jsonl").read_text().count("\n") == 3
    # a second run empties the folder first
    r = cli("smoke", f, "--results", "keep", "-k", "ok")
    assert r.exit_code == 0
    assert not (tmp_path / "keep").exists()


def test_json_document(cli, fake):
    f = fake(MIXED)
    r = cli("smoke", f, "--json", "-k", "good or wrong or later")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["summary"] == {**doc["summary"], "total": 3, "passed": 1, "failed": 1,
                              "errors": 0, "skipped": 1, "deselected": 2, "not_run": 0,
                              "ok": False}
    assert doc["results_dir"] == "smoke-results"
    by_id = {c["id"]: c for c in doc["cases"]}
    assert by_id["good"]["outcome"] == "passed" and by_id["good"]["exits"] == [{"reason": 10, "name": "CPUID", "count": 3}]
    assert by_id["good"]["artifacts"] is None
    w = by_id["wrong-code"]
    assert w["outcome"] == "failed" and w["status"] == "debug-exit"
    assert w["failures"] == [{"what": "exit code", "expected": "0", "actual": "3",
                              "message": "exit code: expected 0, got 3"}]
    assert w["artifacts"] == os.path.join("smoke-results", "wrong-code")
    assert by_id["later"]["outcome"] == "skipped" and by_id["later"]["skip"] == "not today"
    assert "1 passed, 1 failed, 1 skipped, 2 deselected in" in r.stderr


def test_runaway_case_killed_without_holding_up_the_others(fake, tmp_path):
    """A launch that ignores its own timeout is killed at timeout + grace; the rest run on.

    The grace is generous so that, on a busy machine, the honest cases (a python process
    each) surely finish while the runaway one is still alive: that is what is checked."""
    f = fake("""
        [smoke]
        grace = 4
        [[case]]
        id = "runaway"
        profile = "baseline"
        guest = "hang.json"
        timeout = 0.5
        [[case]]
        id = "a"
        profile = "baseline"
        guest = "ok.json"
        [[case]]
        id = "b"
        profile = "baseline"
        guest = "ok.json"
        [[case]]
        id = "honoured"
        profile = "baseline"
        guest = "spin.json"
        timeout = 0.3
        expect.status = "timeout"
        """)
    rec = tmp_path / "hang.jsonl"
    (tmp_path / "hang.json").write_text(json.dumps({"hang": True, "record": str(rec)}))
    suite = load_smoke(str(tmp_path / f))
    done = []
    runner = Runner(suite, suite.cases, jobs=2, results_dir="res",
                    on_done=lambda r: done.append(r.case.id))
    results = runner.run()
    assert [r.outcome for r in results] == ["error", "passed", "passed", "passed"]
    assert results[0].error.startswith("killed: no result 4.5 s after start")
    assert results[0].seconds >= 4.5                # never before timeout + grace
    # the other cases finished while the runaway one was still running
    assert done[-1] == "runaway"
    assert results[3].result["status"] == "timeout"
    # the runaway process is gone, and the runner tracks no process any more
    pid = json.loads(rec.read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not runner._procs


def test_cases_run_in_parallel_worker_processes(fake, tmp_path):
    rec = tmp_path / "starts.jsonl"
    # each launch waits until both have started: run one after the other, the first
    # would wait out its timeout and fail
    (tmp_path / "slow.json").write_text(json.dumps({"barrier": 2, "record": str(rec)}))
    f = fake("""
        [[matrix]]
        id = "{guest}-{profile}"
        profiles = ["baseline", "sub.toml"]
        guests = ["slow.json"]
        timeout = 120
        """)
    (tmp_path / "sub.toml").write_text('[profile]\nextends = "baseline"\n')
    suite = load_smoke(str(tmp_path / f))
    results = Runner(suite, suite.cases, jobs=2, results_dir="res").run()
    assert [r.outcome for r in results] == ["passed", "passed"], [r.reasons for r in results]
    pids = {json.loads(ln)["pid"] for ln in rec.read_text().splitlines()}
    assert len(pids) == 2 and os.getpid() not in pids
    argv = json.loads(rec.read_text().splitlines()[0])["argv"]
    assert "--json" in argv and "--trace" in argv and "--console" in argv


def test_exitfirst_starts_nothing_after_a_failure(cli, fake):
    f = fake("""
        [[case]]
        id = "fails"
        profile = "baseline"
        guest = "three.json"
        [[case]]
        id = "never"
        profile = "baseline"
        guest = "ok.json"
        """)
    r = cli("smoke", f, "-j", "1", "-x")
    assert r.exit_code == 1
    assert "never" not in r.stderr.split("case ")[-1]
    assert "1 case not run" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("0 passed, 1 failed, 1 not run in ")


def test_launch_problems_are_errors_with_the_launch_message(cli, fake):
    f = fake("""
        [[case]]
        id = "garbage"
        profile = "baseline"
        guest = "garbage.json"
        [[case]]
        id = "invalid"
        profile = "baseline"
        guest = "invalid.json"
        [[case]]
        id = "usage"
        profile = "baseline"
        guest = "usage.json"
        """)
    r = cli("smoke", f, "--json")
    assert r.exit_code == 1
    by_id = {c["id"]: c for c in json.loads(r.stdout)["cases"]}
    assert by_id["garbage"]["error"] == ("vmcfg launch exited 0 without a result: its output "
                                         "is not a launch --json document")
    assert by_id["invalid"]["error"] == (
        "invalid profile: baseline:4:1: error[E19] Virtual NMIs need NMI exiting: "
        "pin.virtual_nmis is set but pin.nmi_exiting is not (+1 more)")
    assert by_id["usage"]["error"] == ("vmcfg launch exited 2 without a result: vmcfg: guest "
                                       "image nosuch.bin: no such file")
    assert "0 passed, 0 failed, 3 errors in" in r.stderr


def test_junit_escapes_control_characters(cli, fake, tmp_path):
    f = fake("""
        [[case]]
        profile = "baseline"
        guest = "ctl.json"
        expect.console_contains = "never printed"
        """)
    r = cli("smoke", f, "--junit", "j.xml")
    assert r.exit_code == 1
    tc = ET.parse(tmp_path / "j.xml").getroot().find(".//testcase")
    assert tc.find("system-out").text == "bad\\x01byte <&>\n"
    assert tc.find("failure").get("message").startswith("console: expected to contain "
                                                        "'never printed'")


def test_list_and_k(cli, fake):
    f = fake(MIXED)
    r = cli("smoke", f, "--list", "-k", "not runaway and not crash")
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if not ln.startswith(" ")] == [
        "good", "wrong-code", "later  [skip: not today]", "3 cases, 2 deselected"]
    assert lines[1].strip().startswith("vmcfg launch baseline --guest ")
    r = cli("smoke", f, "--list", "--json")
    assert [c["id"] for c in json.loads(r.stdout)["cases"]] == \
        ["good", "wrong-code", "runaway", "crashes", "later"]
    r = cli("smoke", f, "-k", "nothing-like-this")
    assert r.exit_code == 2
    assert "-k 'nothing-like-this' matches none of the 5 cases of smoke.toml" in r.stderr
    r = cli("smoke", f, "-k", "good and")
    assert r.exit_code == 2 and "expression ends unexpectedly" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["missing.toml"], "missing.toml: no such file"),
    (["bad.toml"], "bad.toml:2:1: unknown key 'profil' in [[case]] (did you mean 'profile'?)"),
    (["good.toml", "-j", "0"], "Invalid value for '-j'"),
    (["good.toml", "--junit", "."], "--junit .: is a folder"),
    (["good.toml", "--results", "foreign"], "not made by vmcfg smoke"),
    ([], "Missing argument 'FILE'"),
])
def test_usage_errors_exit_2_without_traceback(cli, fake, tmp_path, args, msg):
    fake('[[case]]\nprofil = "baseline"\n', "bad.toml")
    fake('[[case]]\nprofile = "baseline"\nguest = "ok.json"\n', "good.toml")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("mine")
    r = cli("smoke", *args)
    assert r.exit_code == 2
    assert msg in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert (tmp_path / "foreign" / "precious.txt").exists()


def test_huge_traces_of_failing_cases_are_trimmed(tmp_path):
    from vmcfg.smoke.runner import _trim_trace
    p = tmp_path / "trace.jsonl"
    lines = [json.dumps({"seq": i, "reason": 10, "name": "CPUID"}) for i in range(20000)]
    p.write_text("\n".join(lines) + "\n")
    _trim_trace(str(p), limit=64 * 1024)
    kept = p.read_text().splitlines()
    assert 30 * 1024 < p.stat().st_size <= 64 * 1024 + 200
    docs = [json.loads(ln) for ln in kept]          # still valid JSON Lines
    assert docs[0]["seq"] == 0 and docs[-1]["seq"] == 19999
    (marker,) = [d for d in docs if d.get("truncated")]
    assert marker["bytes_left_out"] > 0


def test_a_case_that_cannot_even_start_is_an_error_not_a_crash(cli, fake, tmp_path, monkeypatch):
    f = fake('[[case]]\nprofile = "baseline"\nguest = "ok.json"\n')
    monkeypatch.setattr(runner_mod, "DEFAULT_LAUNCHER", (str(tmp_path / "no-such-program"),))
    r = cli("smoke", f, "--json")
    assert r.exit_code == 1
    (c,) = json.loads(r.stdout)["cases"]
    assert c["outcome"] == "error" and c["error"].startswith("cannot start vmcfg launch: ")
    assert "Traceback" not in r.stderr
