"""vmcfg diff, vmcfg matrix, vmcfg profiles."""

import json

import pytest

from vmcfg.profile.loader import builtin_names
from vmcfg.vmx.models import MODEL_NAMES
from vmcfg.vmx.table import CONTROL_BY_PATH


def test_diff_equal_profiles(cli):
    r = cli("diff", "baseline", "baseline")
    assert r.exit_code == 0 and "no differences" in r.stdout
    doc = json.loads(cli("diff", "baseline", "baseline", "--json").stdout)
    assert doc["equal"] and doc["kind"] == "profile"


def test_diff_profiles_bit_by_bit_after_extends_and_forced_bits(cli, write_profile):
    a = write_profile("""
        [profile]
        extends = "baseline"
        [primary]
        hlt_exiting = true
        """, "a.toml")
    b = write_profile("""
        [profile]
        extends = "a.toml"
        [primary]
        hlt_exiting = false
        rdtsc_exiting = true
        [tsc]
        offset = -5
        [raw]
        pin = 0x1e
        """, "b.toml")
    r = cli("diff", a, b, "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    fields = {f["field"]: f for f in doc["fields"]}
    assert set(fields) == {"primary", "pin"}
    bits = {(x["control"], x["a"], x["b"]) for x in fields["primary"]["bits"]}
    assert bits == {("hlt_exiting", 1, 0), ("rdtsc_exiting", 0, 1)}
    # the raw pin value sets bit 3 (nmi_exiting); forced bits 1, 2, 4 are equal on both sides
    assert [(x["bit"], x["control"]) for x in fields["pin"]["bits"]] == [
        (CONTROL_BY_PATH["pin.nmi_exiting"].bit, "nmi_exiting")]
    assert doc["settings"] == [{"key": "tsc.offset", "a": 0, "b": -5, "a_text": "0",
                                "b_text": "-5"}]
    r = cli("diff", a, b)
    assert "hlt_exiting" in r.stdout and "on -> off" in r.stdout and "tsc.offset: 0 -> -5" in r.stdout


def test_diff_profiles_on_a_chosen_cpu(cli, write_profile):
    # cr3_load_exiting is forced on penryn (no TRUE controls) but clearable on cvmm
    a = write_profile("[primary]\nhlt_exiting = true\n", "a.toml")
    r = cli("diff", a, a, "--cpu", "penryn")
    assert r.exit_code == 0
    b = write_profile('[profile]\ncpu = "penryn"\n[primary]\nhlt_exiting = true\n', "b.toml")
    doc = json.loads(cli("diff", a, b, "--json").stdout)
    assert doc["a"]["cpu"] == "cvmm" and doc["b"]["cpu"] == "penryn"
    changed = {x["control"] for f in doc["fields"] for x in f["bits"]}
    assert {"cr3_load_exiting", "cr3_store_exiting"} <= changed


def test_diff_capability_sets(cli, tmp_path):
    r = cli("diff", "sapphirerapids", "graniterapids")
    assert r.exit_code == 0
    r = cli("diff", "cvmm", "sapphirerapids", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["kind"] == "caps"
    sec = next(f for f in doc["fields"] if f["field"] == "secondary")
    rows = {x["control"]: (x["a"], x["b"]) for x in sec["bits"]}
    assert rows["use_tsc_scaling"] == ("yes", "no")
    assert rows["enable_pml"] == ("no", "yes")
    assert any(o["key"] == "maxphyaddr" for o in doc["other"])


def test_diff_capability_file(cli, tmp_path):
    from vmcfg.profile.capfile import dump_capfile
    from vmcfg.vmx.models import get_model
    f = tmp_path / "host.toml"
    f.write_text(dump_capfile(get_model("haswell")))
    r = cli("diff", str(f), "haswell")
    assert r.exit_code == 0, r.output
    r = cli("diff", str(f), "broadwell", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["kind"] == "caps"


@pytest.mark.parametrize("args, msg", [
    (["baseline", "cvmm"], "cannot compare a profile"),
    (["nosuch", "cvmm"], "not a file, built-in profile or CPU model"),
    (["cvmm", "sapphirerapids", "--cpu", "cvmm"], "apply to profiles"),
])
def test_diff_bad_usage(cli, args, msg):
    r = cli("diff", *args)
    assert r.exit_code == 2 and msg in r.stderr


def test_matrix(cli, write_profile):
    p = write_profile("""
        [profile]
        name = "needs-pml"
        extends = "baseline"
        [secondary]
        enable_ept = true
        enable_pml = true
        """)
    r = cli("matrix", "baseline", p, "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["cpus"] == list(MODEL_NAMES)
    res = doc["results"]
    assert res["baseline"]["cvmm"]["valid"] and res["baseline"]["sapphirerapids"]["valid"]
    assert res["baseline"]["penryn"] == {**res["baseline"]["penryn"], "valid": False, "rule": "X1"}
    assert res[p]["cvmm"]["rule"] == "E3" and "enable_pml" in res[p]["cvmm"]["message"]
    assert res[p]["sapphirerapids"]["valid"]
    r = cli("matrix", "baseline", p, "--cpus", "cvmm,sapphirerapids")
    assert r.exit_code == 1
    assert "E3" in r.stdout and "needs-pml" in r.stdout
    r = cli("matrix", "baseline", "--cpus", "sapphirerapids,graniterapids,sierraforest,cvmm")
    assert r.exit_code == 0 and "4/4" in r.stdout


def test_matrix_many_profiles_and_verbose(cli):
    r = cli("matrix", *builtin_names(), "-v")
    assert r.exit_code == 1          # penryn cannot run the library
    for n in builtin_names():
        assert n in r.stdout
    assert "penryn" in r.stdout


def test_matrix_bad_usage(cli):
    assert cli("matrix", "baseline", "--cpus", "nosuch").exit_code == 2
    assert cli("matrix", "nosuch").exit_code == 2


def test_profiles_lists_the_library(cli):
    r = cli("profiles")
    assert r.exit_code == 0
    for n in builtin_names():
        assert n in r.stdout
    doc = json.loads(cli("profiles", "--json").stdout)
    assert {d["name"] for d in doc} == set(builtin_names())
    assert all(d["description"] for d in doc)
    r = cli("profiles", "io-sandbox")
    assert r.exit_code == 0 and r.stdout.startswith("# io-sandbox")
    r = cli("profiles", "io-sandbx")
    assert r.exit_code == 2 and "did you mean 'io-sandbox'" in r.stderr
