"""vmcfg set / unset: format-preserving, validated, atomic, serialized edits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vmcfg.profile import load_profile, resolve_profile
from vmcfg.profile.resolve import load_caps

COMMENTED = textwrap.dedent("""\
    # My profile -- hand-written, with comments that must survive.
    [profile]
    name = "mine"          # the name
    extends = "baseline"   # start from the built-in minimal profile

    [primary]
    hlt_exiting = true            # HLT exits
    # invlpg_exiting = true       # INVLPG exits (commented out on purpose)
    vmx-rdtsc-exit = false        # a vendor alias, kept as written

    # a trailing comment of [primary]

    [io]
    intercept = [
      0x60,          # keyboard data
      "0x70-0x7f",   # CMOS and friends
    ]

    [tsc]
    offset   =   0x10   # odd spacing
    """)


def _write(tmp_path, text=COMMENTED, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _effective(path):
    prof = load_profile(str(path))
    return resolve_profile(prof, load_caps(None, None, prof))


def _changed_lines(a: str, b: str):
    al, bl = a.splitlines(True), b.splitlines(True)
    import difflib
    sm = difflib.SequenceMatcher(a=al, b=bl)
    return [(tag, al[i1:i2], bl[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes()
            if tag != "equal"]


def test_set_keeps_every_other_byte(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("set", str(p), "tsc.offset=-5000")
    assert r.exit_code == 0, r.output
    new = p.read_text()
    assert new == COMMENTED.replace("offset   =   0x10   # odd spacing",
                                    "offset   =   -5000   # odd spacing")
    assert _effective(p).config.settings["tsc"]["offset"] == -5000


def test_set_existing_control_in_place(cli, tmp_path):
    p = _write(tmp_path)
    assert cli("set", str(p), "primary.hlt_exiting=off").exit_code == 0
    assert p.read_text() == COMMENTED.replace("hlt_exiting = true            # HLT exits",
                                              "hlt_exiting = false            # HLT exits")


def test_set_alias_written_under_existing_spelling_and_canonical_when_new(cli, tmp_path):
    p = _write(tmp_path)
    # the file spells rdtsc_exiting as vmx-rdtsc-exit: that line is changed, nothing else
    assert cli("set", str(p), "rdtsc_exiting=on").exit_code == 0
    diff = _changed_lines(COMMENTED, p.read_text())
    assert diff == [("replace", ["vmx-rdtsc-exit = false        # a vendor alias, kept as written\n"],
                     ["vmx-rdtsc-exit = true        # a vendor alias, kept as written\n"])]
    # a new control given by a QEMU alias is written under its canonical key
    assert cli("set", str(p), "vmx-nmi-exit=on").exit_code == 0
    text = p.read_text()
    assert "[pin]\nnmi_exiting = true\n" in text
    assert "vmx-nmi-exit" not in text


def test_set_inverted_qemu_alias(cli, tmp_path):
    p = _write(tmp_path)
    # vmx-cr3-load-noexit=on means cr3_load_exiting = false
    assert cli("set", str(p), "vmx-cr3-load-noexit=on").exit_code == 0
    assert "cr3_load_exiting = false" in p.read_text()
    assert cli("set", str(p), "vmx-cr3-load-noexit=off").exit_code == 0
    assert "cr3_load_exiting = true" in p.read_text()


def test_set_uncomments_a_commented_out_key(cli, tmp_path):
    p = _write(tmp_path)
    assert cli("set", str(p), "invlpg_exiting=on").exit_code == 0
    diff = _changed_lines(COMMENTED, p.read_text())
    assert len(diff) == 1
    tag, old, new = diff[0]
    assert old == ["# invlpg_exiting = true       # INVLPG exits (commented out on purpose)\n"]
    assert new[0].startswith("invlpg_exiting = true")
    assert new[0].rstrip().endswith("# INVLPG exits (commented out on purpose)")
    # the comment stays in its column
    assert new[0].index("# INVLPG") == old[0].index("# INVLPG")


def test_set_new_key_goes_after_the_last_key_of_its_table(cli, tmp_path):
    p = _write(tmp_path)
    assert cli("set", str(p), "primary.mwait_exiting=yes").exit_code == 0
    text = p.read_text()
    assert "vmx-rdtsc-exit = false        # a vendor alias, kept as written\nmwait_exiting = true\n" in text
    assert len(_changed_lines(COMMENTED, text)) == 1


def test_set_new_table_appended(cli, tmp_path):
    p = _write(tmp_path)
    assert cli("set", str(p), "preemption_timer.value=0x1000", "pin.preemption_timer=on").exit_code == 0
    text = p.read_text()
    assert text.startswith(COMMENTED)
    assert "[preemption_timer]\nvalue = 0x1000\n" in text
    assert "[pin]\nactivate_vmx_preemption_timer = true\n" in text
    assert _effective(p).config.on("pin.activate_vmx_preemption_timer")


def test_list_append_and_remove_with_range_split(cli, tmp_path):
    p = _write(tmp_path)
    assert cli("set", str(p), "io.intercept+=0x64").exit_code == 0
    assert cli("set", str(p), "io.intercept-=0x75").exit_code == 0
    text = p.read_text()
    assert "  0x60,          # keyboard data\n" in text        # untouched element and comment
    r = _effective(p)
    ranges = r.config.settings["io"]["intercept"]
    ports = {x for lo, hi in ranges for x in range(lo, hi + 1)}
    assert ports == {0x60, 0x64} | set(range(0x70, 0x80)) - {0x75}
    # += of something already covered is a no-op
    before = p.read_text()
    r = cli("set", str(p), "--json", "io.intercept+=0x71")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["changed"] is False and doc["changes"][0]["action"] == "unchanged"
    assert p.read_text() == before


def test_list_ops_on_inherited_and_missing_lists(cli, tmp_path):
    parent = _write(tmp_path, textwrap.dedent("""\
        [profile]
        extends = "baseline"
        [io]
        intercept = [0x3f8]
        """), "parent.toml")
    child = _write(tmp_path, '[profile]\nextends = "parent.toml"\n', "child.toml")
    assert cli("set", str(child), "io.intercept+=0x2f8").exit_code == 0
    ranges = _effective(child).config.settings["io"]["intercept"]
    assert ranges == [(0x2F8, 0x2F8), (0x3F8, 0x3F8)]    # inherited value kept
    assert parent.read_text().count("0x3f8") == 1
    r = cli("set", str(child), "exceptions.intercept+=PF,#UD")
    assert r.exit_code == 0
    assert _effective(child).config.settings["exceptions"]["intercept"] == [6, 14]
    r = cli("set", str(child), "exceptions.intercept-=14")
    assert _effective(child).config.settings["exceptions"]["intercept"] == [6]


def test_values_by_kind(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("set", str(p), "ept.walk_length=4", "ept.memory_type=WB", "guest.memory=32M",
            "vpid.id=7", "exceptions.intercept=PF,UD", "msr.intercept_write=[0x10, \"0x174-0x176\"]",
            "profile.description=hello world", "cpuid.\"0x40000000\".eax=0x1234",
            "handlers.CPUID=mymod:on_cpuid", "--force")
    assert r.exit_code == 0, r.output
    text = p.read_text()
    assert 'memory_type = "wb"' in text
    assert 'memory = "32M"' in text
    assert 'intercept = ["PF", "UD"]' in text
    assert 'intercept_write = [0x10, "0x174-0x176"]' in text
    assert 'description = "hello world"' in text
    assert "eax = 0x1234" in text and 'CPUID = "mymod:on_cpuid"' in text
    prof = load_profile(str(p))
    assert prof.settings["cpuid"]["*"] == {"0x40000000": {"eax": 0x1234}}
    assert prof.settings["guest"]["memory"] == 32 << 20


def test_one_key_written_two_ways_is_edited_in_place(cli, tmp_path):
    """cpuid."1" is the leaf the file spells "0x1"; handlers.CPUID the reason it spells 10."""
    p = _write(tmp_path, textwrap.dedent("""\
        [profile]
        extends = "baseline"

        [cpuid."0x1"]
        ecx = 0x1   # kept

        [handlers]
        10 = "m:f"
        """))
    r = cli("set", str(p), 'cpuid."1".eax=5', "handlers.cpuid=a:b", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["written"] and [c["after"] for c in doc["changes"]] == [5, "a:b"]
    assert doc["changes"][0]["before"] is None and doc["changes"][1]["before"] == "m:f"
    assert "cpuid.0x1.eax" in doc["changes"][0]["note"]
    text = p.read_text()
    assert text.count("[cpuid.") == 1 and "ecx = 0x1   # kept" in text
    assert '10 = "a:b"' in text and "CPUID" not in text
    assert load_profile(str(p)).settings["cpuid"]["*"] == {"0x1": {"ecx": 1, "eax": 5}}
    r = cli("unset", str(p), 'cpuid."1".ecx', "handlers.CPUID")
    assert r.exit_code == 0, r.output
    prof = load_profile(str(p))
    assert prof.settings["cpuid"]["*"] == {"0x1": {"eax": 5}}
    assert not prof.settings.get("handlers", {}).get("*")


def test_raw_field_bits_are_edited_in_the_raw_value(cli, tmp_path):
    from vmcfg.vmx.table import CONTROL_BY_PATH
    p = _write(tmp_path, textwrap.dedent("""\
        [profile]
        extends = "baseline"
        [raw]
        pin = 0x00000016   # as dumped
        """))
    assert cli("set", str(p), "pin.nmi_exiting=on").exit_code == 0
    m = CONTROL_BY_PATH["pin.nmi_exiting"].mask
    assert f"pin = 0x{0x16 | m:08x}   # as dumped" in p.read_text()
    r = cli("unset", str(p), "pin.nmi_exiting")
    assert r.exit_code == 2 and "raw" in r.stderr


def test_invalid_result_refused_unless_force(cli, tmp_path):
    p = _write(tmp_path)
    before = p.read_text()
    r = cli("set", str(p), "pin.virtual_nmis=on")          # needs nmi_exiting (E19)
    assert r.exit_code == 1
    assert "E19" in r.stderr and "refused" in r.stderr
    assert p.read_text() == before
    r = cli("set", str(p), "--json", "pin.virtual_nmis=on")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["refused"] and doc["errors"][0]["rule"] == "E19"
    assert doc["errors"][0]["location"]["line"]
    r = cli("set", str(p), "pin.virtual_nmis=on", "--force")
    assert r.exit_code == 0 and "INVALID" in r.stderr
    assert "virtual_nmis = true" in p.read_text()
    # both in one call: valid
    p2 = _write(tmp_path, COMMENTED, "p2.toml")
    assert cli("set", str(p2), "pin.virtual_nmis=on", "pin.nmi_exiting=on").exit_code == 0


def test_validated_against_cpu_option(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("set", str(p), "--cpu", "nehalem", "process_posted_interrupts=on", "vid=on",
            "ack_intr_on_exit=on", "intr_exiting=on", "tpr_shadow=on")
    assert r.exit_code == 1 and "nehalem" in r.stderr       # Nehalem has no posted interrupts
    r = cli("set", str(p), "--cpu", "sapphirerapids", "process_posted_interrupts=on", "vid=on",
            "ack_intr_on_exit=on", "intr_exiting=on", "tpr_shadow=on")
    assert r.exit_code == 0, r.stderr
    r = cli("set", str(p), "--cpu", "nosuchcpu", "hlt_exiting=on")
    assert r.exit_code == 2 and "unknown CPU model" in r.stderr


def test_dry_run_writes_nothing_and_prints_diff(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("set", str(p), "-n", "hlt_exiting=off")
    assert r.exit_code == 0
    assert p.read_text() == COMMENTED
    assert "-hlt_exiting = true" in r.stdout and "+hlt_exiting = false" in r.stdout


@pytest.mark.parametrize("args, msg", [
    (["nosuchkey=1"], "unknown key"),
    (["primary.hlt_exitin=on"], "did you mean primary.hlt_exiting"),
    (["pin.hlt_exiting=on"], "is not a control of [pin]"),
    (["hlt_exiting=maybe"], "expected on/off"),
    (["tsc.offset=abc"], "expected an integer"),
    (["vpid.id=70000"], "out of range"),
    (["ept.memory_type=wt"], "expected one of"),
    (["load_ia32_pat=on"], "ambiguous"),
    (["tsc.offset+=1"], "works on lists only"),
    (["=1"], "expected KEY=VALUE"),
    (["+=1"], "missing key"),
    (["hlt_exiting"], "expected KEY=VALUE"),
    (["io.intercept=0x10000"], "out of range"),
    (["profile.colour=red"], "unknown key profile.colour"),
])
def test_bad_keys_and_values_exit_2_and_write_nothing(cli, tmp_path, args, msg):
    p = _write(tmp_path)
    r = cli("set", str(p), *args)
    assert r.exit_code == 2, r.output
    assert msg in r.stderr
    assert "Traceback" not in r.output
    assert p.read_text() == COMMENTED


def test_unreadable_inputs(cli, tmp_path):
    r = cli("set", str(tmp_path / "missing.toml"), "hlt_exiting=on")
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = cli("set", "baseline", "hlt_exiting=on")
    assert r.exit_code == 2 and "built-in" in r.stderr and "vmcfg new" in r.stderr
    bad = _write(tmp_path, "[primary\nhlt_exiting = true\n", "bad.toml")
    r = cli("set", str(bad), "hlt_exiting=on")
    assert r.exit_code == 2 and "bad.toml" in r.stderr
    assert bad.read_text() == "[primary\nhlt_exiting = true\n"


def test_unset(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("unset", str(p), "primary.hlt_exiting", "tsc")
    assert r.exit_code == 0, r.output
    text = p.read_text()
    assert "hlt_exiting" not in text and "[tsc]" not in text and "offset" not in text
    assert "# invlpg_exiting = true" in text and "# a trailing comment of [primary]" in text
    # unsetting something absent is fine and says so; an inherited value is explained
    r = cli("unset", str(p), "--json", "primary.use_io_bitmaps")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["changed"] is False
    assert "inherited" in doc["changes"][0]["note"]
    # unset an alias spelling removes the control whatever it is called in the file
    assert cli("unset", str(p), "primary.rdtsc_exiting").exit_code == 0
    assert "vmx-rdtsc-exit" not in p.read_text()


def test_set_json_document(cli, tmp_path):
    p = _write(tmp_path)
    r = cli("set", str(p), "--json", "tsc.offset=-1", "primary.hlt_exiting=off")
    doc = json.loads(r.stdout)
    assert doc["written"] and doc["valid"] and doc["cpu"] == "cvmm"
    assert [c["key"] for c in doc["changes"]] == ["tsc.offset", "primary.hlt_exiting"]
    assert doc["changes"][0]["before"] == 16 and doc["changes"][0]["after"] == -1
    assert doc["changes"][1]["before"] is True and doc["changes"][1]["after"] is False


def test_write_keeps_mode_and_symlink_and_leaves_no_temp_files(cli, tmp_path):
    p = _write(tmp_path)
    os.chmod(p, 0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(p.name)
    assert cli("set", str(link), "hlt_exiting=off").exit_code == 0
    assert link.is_symlink()
    assert "hlt_exiting = false" in p.read_text()
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o640)
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert leftovers == []


def test_twenty_concurrent_set_processes_lose_nothing(tmp_path):
    p = _write(tmp_path, '[profile]\nextends = "baseline"\n\n[io]\nintercept = []  # ports\n')
    exe = os.path.join(os.path.dirname(sys.executable), "vmcfg")
    if not os.path.exists(exe):
        pytest.skip("vmcfg entry point not installed next to the interpreter")
    ports = [0x100 + 3 * i for i in range(20)]
    procs = [subprocess.Popen([exe, "set", str(p), f"io.intercept+={port:#x}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for port in ports]
    for pr in procs:
        out, errs = pr.communicate(timeout=120)
        assert pr.returncode == 0, errs.decode()
    prof = load_profile(str(p))
    got = {lo for lo, hi in prof.settings["io"]["intercept"]}
    assert got == set(ports)
    assert p.read_text().startswith('[profile]\nextends = "baseline"\n\n[io]\nintercept = [')
    assert p.read_text().rstrip().endswith("]  # ports")
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
