"""`vmcfg caps import` of real data, run as a user would (a subprocess, output in a pipe).

vmxcap captures of three real CPUs (tests/data/vmxcap/, with and without their Hex: lines)
must rebuild the twelve capability MSRs vmxcap shows -- BASIC, the four control MSRs, MISC,
PROCBASED_CTLS2, EPT_VPID_CAP and the four TRUE MSRs -- exactly as the real dumps have them
(tests/data/real-msr-dumps.txt).  A /proc/cpuinfo "vmx flags" line says nothing about most
controls: those are "unknown", not unsupported, and validation checks only what is known.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
DUMPS = os.path.join(DATA, "real-msr-dumps.txt")

# capture file -> its section in real-msr-dumps.txt
CAPTURES = {"skylake-x": "skylake-x", "broadwell-ult": "broadwell_ult", "penryn": "penryn"}
# the twelve MSRs vmxcap shows (it does not print CR0/CR4 fixed bits or VMCS_ENUM)
SHOWN = (0x480, 0x481, 0x482, 0x483, 0x484, 0x485, 0x48B, 0x48C, 0x48D, 0x48E, 0x48F, 0x490)
# vmxcap's printed fields of BASIC / MISC / EPT_VPID_CAP (the bits the text carries)
PRINTED = {0x480: (0x7FFFFFFF | 0x1FFF << 32 | 1 << 48 | 1 << 49 | 0xF << 50 | 1 << 54 | 1 << 55
                   | 1 << 56),
           0x485: (0x1F | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 14 | 1 << 15 | 0x1FF << 16
                   | 7 << 25 | 1 << 28 | 1 << 29 | 1 << 30 | 0xFFFFFFFF << 32),
           0x48C: sum(1 << b for b in (0, 6, 7, 8, 14, 16, 17, 20, 21, 22, 25, 26, 32, 40, 41,
                                       42, 43))}


def vmcfg(*args, input=None):
    """Run the CLI in a subprocess with pipes for stdin/stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "vmcfg.cli", *args], input=input,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})


def imported(*args) -> dict:
    r = vmcfg("caps", "import", *args, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return doc


def reference(*args) -> dict:
    """The same import in-process (for the reference side of a comparison: quicker)."""
    from click.testing import CliRunner
    from vmcfg.cli.main import cli
    r = CliRunner().invoke(cli, ["caps", "import", *args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def msrs(doc: dict) -> dict[int, int]:
    return {int(k, 16): int(v, 16) for k, v in doc["msrs"].items()}


@pytest.fixture(scope="module")
def real():
    out = {}
    for cap, sec in CAPTURES.items():
        out[cap] = msrs(reference(DUMPS, "--section", sec))
    return out


@pytest.mark.parametrize("hexlines", [True, False], ids=["with-hex", "without-hex"])
@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_vmxcap_capture_rebuilds_all_twelve_msrs(capture, hexlines, real, tmp_path):
    text = open(os.path.join(DATA, "vmxcap", f"{capture}.txt")).read()
    if not hexlines:
        text = "".join(l for l in text.splitlines(True) if "Hex:" not in l)
        assert "Hex:" not in text
    src = tmp_path / f"{capture}.txt"
    src.write_text(text)
    doc = imported(str(src))
    got, ref = msrs(doc), real[capture]
    held = []
    for idx in SHOWN:
        want = ref.get(idx, 0)
        have = got.get(idx, 0)
        if idx in PRINTED and not hexlines:
            # without Hex: lines only what vmxcap prints can come back; the rest is 0
            want &= PRINTED[idx]
            assert have & ~PRINTED[idx] == 0
        held.append((hex(idx), want == have, hex(want), hex(have)))
    assert [h for h in held if not h[1]] == [], held
    assert len(held) == 12
    if not hexlines:
        assert any("rebuilt from vmxcap's field lines" in n for n in doc["notes"])
        # decoded fields, as vmcfg shows them, are those of the real CPU
        dump = reference(DUMPS, "--section", CAPTURES[capture])
        for k in ("vmcs_size", "vmcs_memory_type", "revision", "true_ctls"):
            assert doc["IA32_VMX_BASIC"][k] == dump["IA32_VMX_BASIC"][k], k
        for k in ("cr3_targets", "preemption_timer_rate", "activity_hlt"):
            assert doc["IA32_VMX_MISC"][k] == dump["IA32_VMX_MISC"][k], k


def test_vmxcap_import_writes_a_file_and_decodes_the_same(tmp_path):
    text = open(os.path.join(DATA, "vmxcap", "broadwell-ult.txt")).read()
    nohex = "".join(l for l in text.splitlines(True) if "Hex:" not in l)
    out = tmp_path / "bdw.toml"
    r = vmcfg("caps", "import", "-", "-o", str(out), input=nohex)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and f"wrote {out}" in r.stderr
    a = json.loads(vmcfg("caps", "--caps", str(out), "--json").stdout)
    assert a["IA32_VMX_EPT_VPID_CAP"]["accessed_dirty"] is True
    assert a["IA32_VMX_BASIC"]["vmcs_size"] == 1024 and a["partial"] is True   # no bit 58 line


def _linux_vmx_flags(m: dict[int, int]) -> str:
    """The "vmx flags" line Linux prints for these MSRs (arch/x86/kernel/cpu/feat_ctl.c and
    the quoted names of vmxfeatures.h), written independently of vmcfg's table."""
    def hi(i):
        return m.get(i, 0) >> 32
    pin, pri, sec = hi(0x481), hi(0x482), hi(0x48B) if hi(0x482) >> 31 & 1 else 0
    ept = m.get(0x48C, 0)
    flags = []
    for word, bit, name in ((pin, 5, "vnmi"), (pin, 6, "preemption_timer"),
                            (pin, 7, "posted_intr"), (pri, 3, "tsc_offset"), (pri, 21, "vtpr"),
                            (pri, 27, "mtf"), (sec, 0, "vapic"), (sec, 1, "ept"),
                            (sec, 5, "vpid"), (sec, 7, "unrestricted_guest"),
                            (sec, 8, "vapic_reg"), (sec, 9, "vid"), (sec, 10, "ple"),
                            (sec, 14, "shadow_vmcs"), (sec, 17, "pml"),
                            (sec, 18, "ept_violation_ve"), (sec, 22, "ept_mode_based_exec"),
                            (sec, 25, "tsc_scaling"), (sec, 26, "usr_wait_pause"),
                            (sec, 31, "notify_vm_exiting"), (ept, 0, "ept_x_only"),
                            (ept, 21, "ept_ad"), (ept, 17, "ept_1gb"), (ept, 7, "ept_5level"),
                            (ept, 32, "invvpid")):
        if word >> bit & 1:
            flags.append(name)
    if pri >> 21 & 1 and sec & 1:
        flags.append("flexpriority")
    if pri >> 21 & 1 and sec >> 8 & 1 and sec >> 9 & 1 and pin >> 7 & 1:
        flags.append("apicv")
    return " ".join(flags)


@pytest.fixture
def skylake_cpuinfo(real, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx\n"
                    f"vmx flags\t: {_linux_vmx_flags(real['skylake-x'])}\n\nprocessor\t: 1\n")
    return info


def test_cpuinfo_import_says_unknown_not_unsupported(skylake_cpuinfo, real):
    doc = imported(str(skylake_cpuinfo))
    assert doc["partial"] is True
    ref = reference(DUMPS, "--section", "skylake-x")
    unknown = counts = 0
    for field, ctl in doc["controls"].items():
        for key, verdict in ctl["bits"].items():
            want = ref["controls"][field]["bits"][key]
            if verdict == "unknown":
                unknown += 1
                continue
            counts += 1
            # everything the line does say matches the real CPU
            assert (verdict == "no") == (want == "no"), (field, key, verdict, want)
    assert counts >= 20 and unknown > 50
    # the controls of the 7 false errors the old import reported on `baseline`
    for path in ("primary.use_io_bitmaps", "primary.use_msr_bitmaps",
                 "exit.host_address_space_size", "exit.save_ia32_efer", "exit.load_ia32_efer",
                 "entry.ia32e_mode_guest", "entry.load_ia32_efer"):
        f, k = path.split(".")
        assert doc["controls"][f]["bits"][k] == "unknown", path
        assert path in doc["unknown"]
    assert doc["IA32_VMX_EPT_VPID_CAP"]["accessed_dirty"] is True     # ept_ad is listed
    assert doc["IA32_VMX_EPT_VPID_CAP"]["walk_length_4"] is None       # not said: unknown


def test_validate_against_cpuinfo_checks_only_what_is_known(skylake_cpuinfo, tmp_path):
    capfile = tmp_path / "host.toml"
    r = vmcfg("caps", "import", str(skylake_cpuinfo), "-o", str(capfile))
    assert r.returncode == 0, r.stderr
    assert "unknown" in capfile.read_text()
    r = vmcfg("validate", "baseline", "--caps", str(capfile))
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr
    assert "not checked" in r.stderr and "primary.use_io_bitmaps" in r.stderr
    r = vmcfg("validate", "baseline", "--caps", str(capfile), "--json")
    (doc,) = json.loads(r.stdout)
    assert doc["valid"] and doc["errors"] == []
    assert "exit.load_ia32_efer" in doc["unchecked"]
    # what the line does say is still checked: Skylake-X has no user wait/pause
    prof = tmp_path / "uwait.toml"
    prof.write_text('[profile]\nextends = "baseline"\n[primary]\nactivate_secondary_controls = true\n'
                    '[secondary]\nenable_user_wait_and_pause = true\n')
    r = vmcfg("validate", str(prof), "--caps", str(capfile))
    assert r.returncode == 1
    assert "does not support secondary.enable_user_wait_and_pause" in r.stderr


def test_caps_import_json_errors_are_json(tmp_path):
    garbage = tmp_path / "g.txt"
    garbage.write_text("hello\n")
    r = vmcfg("caps", "import", str(garbage), "--format", "dump", "--json")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert "no VMX capability MSR lines" in doc["error"]["message"]
    r = vmcfg("caps", "import", str(garbage), "--format", "cpuinfo", "--json")
    assert r.returncode == 2 and "vmx flags" in json.loads(r.stdout)["error"]["message"]
    out = tmp_path / "x.toml"
    out.write_text("keep me\n")
    r = vmcfg("caps", "import", DUMPS, "--section", "penryn", "-o", str(out), "--json")
    assert r.returncode == 2 and "exists" in json.loads(r.stdout)["error"]["message"]
    assert out.read_text() == "keep me\n"
