"""vmcfg smoke with the real `vmcfg launch` and the bundled guests."""

import json
import os
import textwrap
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

EXAMPLE = os.path.join(ROOT, "examples", "smoke.toml")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_example_smoke_file_passes(cli, in_tmp):
    r = cli("smoke", EXAMPLE, "--junit", "junit.xml", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["summary"]
    assert s["ok"] is True and s["failed"] == s["errors"] == 0
    assert s["passed"] == s["total"] >= 20
    ids = [c["id"] for c in doc["cases"]]
    assert "baseline-x-cpuid" in ids and "trap-all-x-exits-all" in ids
    runaway = next(c for c in doc["cases"] if c["id"] == "runaway-is-stopped")
    assert runaway["status"] == "instruction-limit" and runaway["instructions"] == 100000
    cpuid = next(c for c in doc["cases"] if c["id"] == "baseline-x-cpuid")
    assert cpuid["status"] == "debug-exit" and cpuid["exits"] == [{"reason": 10, "name": "CPUID", "count": 3}]
    last = r.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"{s['total']} passed, 0 failed in ")
    suite = ET.parse(in_tmp / "junit.xml").getroot().find("testsuite")
    assert suite.get("name") == "examples" and suite.get("tests") == str(s["total"])
    assert suite.get("failures") == suite.get("errors") == "0"
    assert not (in_tmp / "smoke-results").exists()


def test_failing_runaway_and_invalid_cases_do_not_disturb_the_others(cli, in_tmp):
    (in_tmp / "bad.toml").write_text('[profile]\nextends = "baseline"\n[pin]\n'
                                     'virtual_nmis = true\n')
    (in_tmp / "smoke.toml").write_text(textwrap.dedent("""
        [smoke]
        grace = 120                     # the safety net only: never reached by these cases
        [[case]]
        id = "runaway"                  # spins until launch's --timeout stops it
        profile = "baseline"
        guest = "builtin:runaway"
        timeout = 2
        [[case]]
        id = "passes"
        profile = "baseline"
        guest = "builtin:hlt"
        [[case]]
        id = "deliberately-fails"
        profile = "baseline"
        guest = "builtin:cpuid"
        expect.exit_code = 0
        expect.exits = { CPUID = 2 }
        expect.console_contains = "AuthenticAMD"
        [[case]]
        id = "also-passes"
        profile = "trap-all"
        guest = "builtin:hlt"
        expect.exits = { HLT = 1 }
        [[case]]
        id = "invalid-profile"
        profile = "bad.toml"
        guest = "builtin:hlt"
        [[case]]
        id = "runaway-expected"
        profile = "baseline"
        guest = "builtin:runaway"
        timeout = 1
        expect.status = "timeout"
        expect.console_contains = "runaway: spinning"
        """).lstrip())
    r = cli("smoke", "smoke.toml", "-j", "2", "--junit", "junit.xml", "--json")
    assert r.exit_code == 1
    err = r.stderr
    assert err.rstrip().splitlines()[-1].startswith("3 passed, 2 failed, 1 error in ")
    cases = {c["id"]: c for c in json.loads(r.stdout)["cases"]}
    assert {k: c["outcome"] for k, c in cases.items()} == {
        "runaway": "failed", "passes": "passed", "deliberately-fails": "failed",
        "also-passes": "passed", "invalid-profile": "error", "runaway-expected": "passed"}
    # expected vs actual, for each unmet expectation
    m1, m2 = [f["message"] for f in cases["deliberately-fails"]["failures"]]
    assert m1 == "exits.CPUID: expected 2, got 3"
    assert m2.startswith("console: expected to contain 'AuthenticAMD', got console "
                         "'cpuid: vendor GenuineIntel")
    (f,) = cases["runaway"]["failures"]
    assert f["what"] == "status" and f["expected"] == '"halted"'
    assert f["actual"].startswith("timeout")
    # the timeout was launch's own: a result with status timeout (a kill has none)
    assert cases["runaway"]["status"] == "timeout" and cases["runaway"]["seconds"] >= 2
    assert cases["runaway-expected"]["status"] == "timeout"
    assert cases["runaway-expected"]["seconds"] >= 1
    assert cases["invalid-profile"]["error"].startswith(
        "invalid profile: ") and "error[E19] Virtual NMIs need NMI exiting" in \
        cases["invalid-profile"]["error"]
    # (that cases run side by side is shown, without timing, in test_smoke_runner.py)
    # artefacts of the failing cases, named in the output
    res = in_tmp / "smoke-results"
    assert "smoke-results/" in err
    assert sorted(p for p in os.listdir(res) if not p.startswith(".")) == \
        ["deliberately-fails", "invalid-profile", "report.json", "runaway"]
    d = res / "deliberately-fails"
    assert "GenuineIntel" in (d / "console.txt").read_text()
    trace = [json.loads(ln) for ln in (d / "trace.jsonl").read_text().splitlines()]
    assert [t["name"] for t in trace] == ["CPUID"] * 3
    assert json.loads((d / "summary.json").read_text())["result"]["exits"] == \
        [{"reason": 10, "name": "CPUID", "count": 3}]
    assert (res / "runaway" / "console.txt").read_text() == "runaway: spinning\n"
    assert (d / "command.txt").read_text().startswith("vmcfg launch baseline --guest "
                                                      "builtin:cpuid --timeout 10")
    # JUnit XML
    suite = ET.parse(in_tmp / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "2", "1")
    tcs = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert tcs["deliberately-fails"].find("failure").get("message").startswith(
        "2 expectations failed: exits.CPUID: expected 2, got 3; console: expected to contain")
    assert "GenuineIntel" in tcs["deliberately-fails"].find("system-out").text
    assert tcs["invalid-profile"].find("error") is not None
    assert tcs["passes"].find("failure") is None and tcs["passes"].find("error") is None
