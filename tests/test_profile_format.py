"""The profile format: positions in errors, extends, tri-state controls, raw fields, settings."""

import pytest

from vmcfg.profile import ProfileError, load_profile, resolve, resolve_profile
from vmcfg.vmx.models import get_model
from vmcfg.vmx.table import CONTROL_BY_PATH


def err_of(path):
    with pytest.raises(ProfileError) as e:
        resolve(path)
    return str(e.value)


@pytest.mark.parametrize("text,where,needle", [
    ("[primary]\nhlt_exitin = true\n", ":2:1:", "did you mean 'hlt_exiting'"),
    ("[secondary]\nhlt_exiting = true\n", ":2:1:", "belongs to [primary]"),
    ("[primary]\nhlt_exiting = 1\n", ":2:1:", "must be true or false"),
    ("[primary]\nhlt_exiting = \n", ":2:", "invalid TOML"),
    ("[primry]\n", ":1:2:", "did you mean 'primary'"),
    ("[tsc]\noffset = 1\nmultiplier = -1\n", ":3:1:", "out of range"),
    ("[exceptions]\nintercept = [\"PF\", \"#UX\"]\n", ":2:1:", "unknown exception '#UX'"),
    ("[exceptions]\nintercept = [32]\n", ":2:1:", "0-31"),
    ("[io]\nintercept = [\"0x70-0x60\"]\n", ":2:1:", "empty"),
    ("[io]\nintercept = [0x10000]\n", ":2:1:", "out of range"),
    ("[raw]\npin = 0x16\n[pin]\nnmi_exiting = true\n", ":4:1:", "may not be named as well"),
    ("[profile]\nnmae = \"x\"\n", ":2:1:", "did you mean 'name'"),
    ("[ept]\nmemory_type = \"wt\"\n", ":2:1:", "expected one of"),
    ("[tsc]\nofset = 3\n", ":2:1:", "did you mean 'offset'"),
    ("[primary]\nvmx-hlt-exit = true\nhlt_exiting = false\n", ":3:1:", "contradicts"),
])
def test_errors_name_file_line_column(write_profile, text, where, needle):
    p = write_profile(text)
    msg = err_of(p)
    assert msg.startswith(p + where), msg
    assert needle in msg


def test_not_utf8_and_missing_and_directory(tmp_path):
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"[pin]\n\xff\xfe = 1\n")
    assert "not valid UTF-8" in err_of(str(bad))
    assert "no such file" in err_of(str(tmp_path / "nope.toml"))
    assert "not a regular file" in err_of(str(tmp_path)) or "no such" in err_of(str(tmp_path))


def test_aliases_and_inverse_sense(write_profile):
    p = write_profile('[profile]\nextends = "baseline"\n[primary]\nvmx-hlt-exit = true\n'
                      'vmx-cr3-load-noexit = false\n')
    r = resolve(p)
    assert r.config.on("primary.hlt_exiting")
    assert r.config.on("primary.cr3_load_exiting")          # noexit = false -> exiting on
    assert r.explicit["primary.cr3_load_exiting"] is True


def test_absent_controls_forced_or_zero(write_profile):
    p = write_profile('[profile]\nextends = "baseline"\n')
    prof = load_profile(p)
    cr3 = CONTROL_BY_PATH["primary.cr3_load_exiting"]
    on_cvmm = resolve_profile(prof, get_model("cvmm"))
    assert not on_cvmm.config.controls["primary"] & cr3.mask          # TRUE MSR: may be 0
    on_penryn = resolve_profile(prof, get_model("penryn"))
    assert on_penryn.config.controls["primary"] & cr3.mask              # forced on
    assert on_penryn.forced["primary"] & cr3.mask


def test_explicit_value_never_changed_silently(write_profile):
    p = write_profile('[primary]\ncr3_load_exiting = false\n')
    r = resolve_profile(load_profile(p), get_model("penryn"))
    assert not r.valid
    (v,) = [e for e in r.errors if e.fields == ["primary.cr3_load_exiting"]]
    assert v.rule == "E2" and "forces it to 1" in v.fix


def test_raw_field_taken_exactly(write_profile):
    p = write_profile('[profile]\nextends = "baseline"\n[raw]\nprimary = 0x96006172\n')
    r = resolve(p)
    assert r.config.controls["primary"] == 0x96006172 and r.valid


def test_secondary_bits_ignored_when_not_activated(write_profile):
    p = write_profile('[profile]\nextends = "baseline"\n[primary]\nactivate_secondary_controls = false\n'
                      '[secondary]\nenable_ept = true\n')
    r = resolve(p)
    assert r.valid
    assert not r.config.on("secondary.enable_ept")
    assert r.config.controls["secondary"] == CONTROL_BY_PATH["secondary.enable_ept"].mask
    assert [w.rule for w in r.warnings] == ["E33"]


def test_extends_relative_chain_and_cycle(tmp_path):
    (tmp_path / "a.toml").write_text('[profile]\nextends = "sub/b.toml"\n[primary]\nhlt_exiting = true\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.toml").write_text('[profile]\nextends = "baseline"\ncpu = "sapphirerapids"\n'
                                             '[primary]\nhlt_exiting = false\nrdtsc_exiting = true\n')
    r = resolve(str(tmp_path / "a.toml"))
    assert r.caps.name == "sapphirerapids"
    assert r.config.on("primary.hlt_exiting") and r.config.on("primary.rdtsc_exiting")
    assert r.config.on("exit.host_address_space_size")     # from baseline
    (tmp_path / "c.toml").write_text('[profile]\nextends = "d.toml"\n')
    (tmp_path / "d.toml").write_text('[profile]\nextends = "c.toml"\n')
    assert "cycle" in err_of(str(tmp_path / "c.toml"))
    (tmp_path / "e.toml").write_text('[profile]\nextends = "missing.toml"\n')
    msg = err_of(str(tmp_path / "e.toml"))
    assert msg.startswith(str(tmp_path / "e.toml") + ":2:1:") and "missing.toml" in msg


def test_settings_normalised(write_profile):
    p = write_profile('''
        [profile]
        extends = "baseline"
        [exceptions]
        intercept = ["#PF", "UD", 3]
        [io]
        intercept = [0x60, "0x70-0x71", 0x64, 0x61]
        [msr]
        intercept_read = [0x10, "0xc0000080"]
        [tsc]
        offset = -5000
        [cpuid."0x40000000"]
        ebx = 0x1234
        [guest]
        memory = "32M"
    ''')
    r = resolve(p)
    s = r.config.settings
    assert s["exceptions"]["intercept"] == [3, 6, 14]
    assert s["io"]["intercept"] == [(0x60, 0x61), (0x64, 0x64), (0x70, 0x71)]
    assert r.config.exception_bitmap() == (1 << 3) | (1 << 6) | (1 << 14)
    a, b = r.config.io_bitmaps()
    assert a[0x60 >> 3] == 0b10011 and a[0x70 >> 3] == 0b11 and not any(b)
    assert s["tsc"]["offset"] == -5000 and s["guest"]["memory"] == 32 << 20
    assert s["cpuid"] == {"0x40000000": {"ebx": 0x1234}}
    assert r.config.msr_intercepted(0x10, write=False) and not r.config.msr_intercepted(0x10, write=True)
    assert r.config.msr_intercepted(0x40000000, write=False)     # outside bitmap ranges


def test_defaults_make_a_bits_only_profile_valid(write_profile):
    p = write_profile('[profile]\nextends = "baseline"\n[secondary]\nenable_vpid = true\nenable_ept = true\n')
    r = resolve(p)
    assert r.valid, r.errors
    assert r.config.settings["vpid"]["id"] == 1
    assert r.config.eptp() & 0x3F == 6 | (3 << 3)
