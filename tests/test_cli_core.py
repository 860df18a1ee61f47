"""validate / show / explain / caps / cpus as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT

VALID = '[profile]\nextends = "baseline"\n[primary]\nrdtsc_exiting = true\n'
INVALID = '[profile]\nextends = "baseline"\n[pin]\nvirtual_nmis = true\n'


def test_validate_ok_and_json(cli, write_profile):
    p = write_profile(VALID)
    r = cli("validate", p, "--json")
    assert r.exit_code == 0
    (doc,) = json.loads(r.stdout)
    assert doc["valid"] is True and doc["cpu"] == "cvmm" and doc["errors"] == []
    assert set(doc["controls"]) == {"pin", "primary", "secondary", "tertiary", "exit", "entry"}
    assert doc["controls"]["primary"] & (1 << 12)


def test_validate_invalid_names_rule_location_and_fix(cli, write_profile):
    p = write_profile(INVALID)
    r = cli("validate", p)
    assert r.exit_code == 1
    assert f"{p}:4:1: error[E19]" in r.stderr
    assert "fix: set pin.nmi_exiting, or clear pin.virtual_nmis" in r.stderr
    r = cli("validate", p, "--json")
    (doc,) = json.loads(r.stdout)
    assert doc["valid"] is False
    (e,) = doc["errors"]
    assert e["rule"] == "E19" and e["fields"] == ["pin.virtual_nmis", "pin.nmi_exiting"]
    assert e["location"] == {"file": p, "line": 4, "column": 1}
    assert e["title"] and e["message"] and e["fix"]


def test_validate_many_mixed_exit_codes(cli, write_profile, tmp_path):
    good = write_profile(VALID, "good.toml")
    bad = write_profile(INVALID, "bad.toml")
    r = cli("validate", good, bad, "--json")
    assert r.exit_code == 1
    assert [d["valid"] for d in json.loads(r.stdout)] == [True, False]
    r = cli("validate", good, str(tmp_path / "missing.toml"), "--json")
    assert r.exit_code == 2
    docs = json.loads(r.stdout)
    assert docs[1]["error"]["message"].startswith("no such file")


def test_validate_cpu_and_caps(cli, write_profile, tmp_path):
    p = write_profile(VALID)
    r = cli("validate", p, "--cpu", "penryn")
    assert r.exit_code == 1 and "penryn does not support exit.load_ia32_efer" in r.stderr
    r = cli("validate", p, "--cpu", "pentium")
    assert r.exit_code == 2 and "unknown CPU model" in r.stderr
    r = cli("validate", p, "--cpu", "penryn", "--caps", "x.toml")
    assert r.exit_code == 2
    capfile = tmp_path / "c.toml"
    r = cli("caps", "import", os.path.join(DATA, "real-msr-dumps.txt"), "--section", "skylake-x",
            "-o", str(capfile))
    assert r.exit_code == 0, r.stderr
    r = cli("validate", p, "--caps", str(capfile), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["cpu"] == "corei7_skylake-x"


def test_validate_adjust_shows_coercion(cli, write_profile):
    p = write_profile(VALID)
    r = cli("validate", p, "--cpu", "penryn", "--adjust", "--json")
    assert r.exit_code == 0
    (doc,) = json.loads(r.stdout)
    dropped = {(c["control"], c["value"]) for c in doc["adjusted"]}
    assert ("exit.load_ia32_efer", 0) in dropped and ("entry.load_ia32_efer", 0) in dropped
    assert ("primary.cr3_load_exiting", 1) not in dropped   # forced bits were already filled in
    r = cli("validate", p, "--cpu", "penryn", "--adjust")
    assert "adjust: exit.load_ia32_efer -> 0: dropped (penryn does not support it)" in r.stdout
    assert "valid on penryn after adjustment" in r.stdout


def test_adjust_still_checks_inter_control_rules(cli, write_profile):
    p = write_profile(INVALID)
    r = cli("validate", p, "--adjust", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["errors"][0]["rule"] == "E19"


def test_show(cli):
    r = cli("show", "baseline", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    states = {b["control"]: b["state"] for b in doc["bits"]["primary"] if b["control"]}
    assert states["primary.use_io_bitmaps"] == "on"
    assert states["primary.activate_tertiary_controls"].startswith("unsupported")
    r = cli("show", "baseline", "--cpu", "penryn", "--json")
    states = {b["control"]: b["state"] for b in json.loads(r.stdout)["bits"]["primary"] if b["control"]}
    assert states["primary.cr3_load_exiting"] == "forced"
    r = cli("show", "baseline")
    assert "[primary]" in r.stdout and "use_io_bitmaps" in r.stdout


@pytest.mark.parametrize("name,kind,check", [
    ("vmx-vnmi", "control", lambda d: d["control"] == "pin.virtual_nmis"
     and {"control": "pin.nmi_exiting", "rule": "E19", "title": "Virtual NMIs need NMI exiting"} in d["requires"]),
    ("hlt_exiting", "control", lambda d: d["exits"] == [{"reason": 12, "name": "HLT"}]
     and d["support"]["penryn"] == "yes"),
    ("e29B", "rule", lambda d: d["rule"] == "E29b" and "Bochs" in d["note"]),
    ("10", "exit", lambda d: d["name"] == "CPUID"),
    ("rdtsc", "exit", lambda d: d["reason"] == 16 and "primary.rdtsc_exiting" in d["controls"]),
    ("0x80000021", "exit-reason-value", lambda d: d["reason"] == 33 and d["field"]["entry_failure"]),
    ("tsc.offset", "setting", lambda d: d["vmcs_encoding"] == "0x2010"),
])
def test_explain(cli, name, kind, check):
    r = cli("explain", name, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kind"] == kind and check(d)


def test_explain_unknown(cli):
    r = cli("explain", "hlt-exitng")
    assert r.exit_code == 2 and "did you mean hlt_exiting" in r.stderr


def test_caps_decode_and_diff(cli):
    r = cli("caps", "skylake-server", "--json")
    d = json.loads(r.stdout)
    assert d["controls"]["primary"]["bits"]["cr3_load_exiting"] == "default"
    assert d["IA32_VMX_MISC"]["preemption_timer_rate"] == 7
    r = cli("caps", "penryn")
    assert "Monitor trap flag" not in r.stdout and "monitor_trap_flag" in r.stdout
    r = cli("caps", "diff", "sapphirerapids", "graniterapids", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["equal"]
    r = cli("caps", "diff", "sapphirerapids", "sierraforest", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["fields"] == []                      # same controls
    assert {"key": "IA32_VMX_EPT_VPID_CAP.walk_length_5", "a": True, "b": False} in doc["other"]
    r = cli("caps", "diff", "skylake-server", "sapphirerapids", "--json")
    bits = {(f["field"], b["control"]): (b["a"], b["b"]) for f in json.loads(r.stdout)["fields"]
            for b in f["bits"]}
    assert bits[("secondary", "enable_pml")] == ("no", "yes")


def test_caps_import_formats(cli, tmp_path):
    out = tmp_path / "v.toml"
    r = cli("caps", "import", os.path.join(DATA, "vmxcap-skylake-x.txt"), "-o", str(out))
    assert r.exit_code == 0
    r = cli("caps", "diff", str(out), "skylake-server", "--json")
    # the only differences: controls this vmxcap version does not print are "unknown"
    rows = [(f["field"], b["control"], b["a"], b["b"]) for f in json.loads(r.stdout)["fields"]
            for b in f["bits"]]
    assert rows and all(a == "unknown" and b == "no" for _f, _c, a, b in rows), rows
    assert ("secondary", "enable_pconfig", "unknown", "no") in rows
    r = cli("caps", "import", os.path.join(DATA, "vmxcap-skylake-x.txt"), "-o", str(out))
    assert r.exit_code == 2 and "exists" in r.stderr
    r = cli("caps", "import", os.path.join(DATA, "real-msr-dumps.txt"))
    assert r.exit_code == 2 and "--section" in r.stderr
    garbage = tmp_path / "g.txt"
    garbage.write_text("hello\n")
    r = cli("caps", "import", str(garbage), "--format", "dump")
    assert r.exit_code == 2 and "no VMX capability MSR lines" in r.stderr


def test_caps_file_errors(cli, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[msr]\n0x481 = 1\n0x999 = 2\n")
    r = cli("caps", "--caps", str(f))
    assert r.exit_code == 2 and f"{f}:3:1:" in r.stderr


def test_cpus(cli):
    rows = json.loads(cli("cpus", "--json").stdout)
    assert len(rows) >= 15 and rows[0]["name"] == "penryn"
    assert all(r["controls"] > 0 for r in rows)


def test_real_process_no_traceback(tmp_path):
    """The installed console script, on hostile input: a message, a status, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[pin\x00]\n")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "vmcfg.cli", "validate", str(bad)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(bad) in r.stderr
