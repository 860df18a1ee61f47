"""The control table, capability semantics and the CPU model database."""

import os
import re

import pytest

from conftest import DATA
from vmcfg.profile.capfile import parse_msr_dump, parse_vmxcap
from vmcfg.vmx.caps import CapSet
from vmcfg.vmx.models import MODEL_NAMES, UnknownModel, get_model
from vmcfg.vmx.table import CONTROL_BY_PATH, CONTROLS, FIELDS, resolve_control

REQUIRED_MODELS = ["penryn", "nehalem", "westmere", "sandybridge", "ivybridge", "haswell",
                   "broadwell", "skylake-client", "skylake-server", "cascadelake-server",
                   "icelake-server", "sapphirerapids", "graniterapids", "sierraforest"]


def controls_md():
    """(table, bit, key, qemu alias) rows of the canonical names document."""
    rows = []
    table = None
    for line in open(os.path.join(DATA, "controls.md")):
        m = re.match(r"## \[(\w+)\]", line)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"\| (\d+) \| (\w+)(?: \(default1\))? \|(?: ([^|]+) \|)?", line)
        if m and table:
            alias = (m.group(3) or "").strip().split(" ")[0]
            rows.append((table, int(m.group(1)), m.group(2), alias if alias.startswith("vmx-") else None))
    return rows


def test_table_matches_canonical_names():
    rows = controls_md()
    assert len(rows) > 90
    for table, bit, key, alias in rows:
        c = CONTROL_BY_PATH.get(f"{table}.{key}")
        assert c is not None, f"{table}.{key} missing"
        assert c.bit == bit
        if alias:
            assert c.qemu == alias
    assert {(c.field, c.key) for c in CONTROLS} == {(t, k) for t, _, k, _ in rows}


def test_bits_and_keys_unique_per_field():
    for f in FIELDS:
        cs = [c for c in CONTROLS if c.field == f.key]
        assert len({c.bit for c in cs}) == len(cs)
        assert len({c.key for c in cs}) == len(cs)


def test_aliases_resolve_with_sense():
    (c, inv), = resolve_control("vmx-cr3-load-noexit")
    assert c.path == "primary.cr3_load_exiting" and inv
    (c, inv), = resolve_control("VMX-HLT-EXIT")
    assert c.path == "primary.hlt_exiting" and not inv
    assert {h[0].field for h in resolve_control("conceal_vmx_from_pt")} == {"secondary", "exit", "entry"}


def test_model_database():
    assert len(MODEL_NAMES) >= 15
    for n in REQUIRED_MODELS + ["cvmm"]:
        m = get_model(n.upper())
        assert m.name == n and m.source
    with pytest.raises(UnknownModel) as e:
        get_model("skylake")
    assert "did you mean" in str(e.value)


def test_skylake_x_dump_decodes_as_documented():
    m = get_model("skylake-server")
    assert m.basic("revision") == 4 and m.basic("vmcs_size") == 1024
    assert m.basic("vmcs_memory_type") == 6 and m.basic("dual_monitor") and m.basic("ins_outs_info")
    assert m.has_true_ctls()
    assert m.misc("preemption_timer_rate") == 7 and m.misc("cr3_targets") == 4
    for k in ("activity_hlt", "activity_shutdown", "activity_wait_sipi", "store_lma", "pt_in_vmx",
              "vmwrite_any", "zero_len_inject"):
        assert m.misc(k), k
    may = m.allowed("secondary")[1]
    assert [b for b in range(32) if may >> b & 1] == list(range(14)) + [16, 18, 19, 20, 22, 25]
    for k in ("execute_only", "walk_length_4", "memtype_uc", "memtype_wb", "pages_2m", "pages_1g",
              "invept", "accessed_dirty", "advanced_exit_info", "invept_single", "invept_all",
              "invvpid", "invvpid_address", "invvpid_single", "invvpid_all", "invvpid_single_globals"):
        assert m.ept(k), k
    assert not m.supports("secondary.vmcs_shadowing") and not m.supports("secondary.enable_pml")


def test_penryn_dump_decodes_as_documented():
    m = get_model("penryn")
    assert m.basic("revision") == 13 and m.basic("vmcs_size") == 2048
    assert not m.has_true_ctls() and not m.msr_exists(0x48D)
    assert not m.msr_exists(0x48C)                       # no EPT, no VPID
    assert m.misc("preemption_timer_rate") == 0 and not m.misc("store_lma")
    assert m.allowed("secondary")[1] == 0x41
    assert m.support("primary", CONTROL_BY_PATH["primary.monitor_trap_flag"].bit) == "no"
    assert m.support("primary", CONTROL_BY_PATH["primary.cr3_load_exiting"].bit) == "forced"


def test_true_msrs_make_default1_bits_clearable():
    m = get_model("sandybridge")
    bit = CONTROL_BY_PATH["primary.cr3_load_exiting"].bit
    assert m.support("primary", bit) == "default"
    assert m.allowed("primary")[0] == 0x04006172
    assert m.allowed("primary", use_true=False)[0] == 0x0401E172
    assert m.allowed("exit")[0] == 0x00036DFB and m.allowed("entry")[0] == 0x000011FB


@pytest.mark.parametrize("section,model", [
    ("core2_penryn_t9600", "penryn"), ("corei5_arrandale_m520", "westmere"),
    ("corei7_sandy_bridge_2600K", "sandybridge"), ("corei7_ivy_bridge_3770K", "ivybridge"),
    ("broadwell_ult", "broadwell"), ("corei7_skylake-x", "skylake-server"),
])
def test_models_equal_the_recorded_dumps(section, model):
    sections = parse_msr_dump(open(os.path.join(DATA, "real-msr-dumps.txt")).read())
    (key,) = [s for s in sections if section in s]
    assert sections[key] == get_model(model).msrs


def test_existence_rules():
    # no secondary controls at all -> no PROCBASED_CTLS2, no EPT caps
    m = CapSet("x", {0x480: 1 << 55, 0x482: 0x0401E172, 0x48B: 0xFF << 32, 0x48C: 0x4141})
    assert not m.msr_exists(0x48B) and not m.msr_exists(0x48C) and not m.field_exists("secondary")
    assert m.allowed("secondary") == (0, 0)
    assert m.allowed("pin") == (0, 0)          # TRUE_PINBASED (0x48D) absent -> nothing allowed


def test_vmxcap_text_round_trips():
    msrs = parse_vmxcap(open(os.path.join(DATA, "vmxcap-skylake-x.txt")).read())
    got = CapSet("imported", msrs)
    ref = get_model("skylake-server")
    for c in CONTROLS:
        if c.field == "tertiary":
            continue
        assert got.support(c.field, c.bit) == ref.support(c.field, c.bit), c.path
    assert got.misc("preemption_timer_rate") == 7


def test_cvmm_is_valid_for_its_own_baseline():
    from vmcfg.profile import resolve
    r = resolve("baseline")
    assert r.valid and r.caps.name == "cvmm"
    assert r.config.controls["pin"] == 0x16


def test_host_import_from_msr_device_and_cpuinfo(tmp_path, monkeypatch):
    import errno
    import struct
    import vmcfg.profile.capfile as capfile
    from vmcfg.profile.capfile import host_caps
    from vmcfg.profile.source import ProfileError
    # a fake /dev/cpu/0/msr: pread(fd, 8, index) returns the MSR, EIO when absent
    ref = get_model("broadwell")
    dev = tmp_path / "msr"
    dev.write_bytes(b"")

    def pread(fd, n, off):
        if off not in ref.msrs:
            raise OSError(errno.EIO, "Input/output error")
        return struct.pack("<Q", ref.msrs[off])
    monkeypatch.setattr(capfile.os, "pread", pread)
    cs = host_caps(dev=str(dev), cpuinfo=str(tmp_path / "none"))
    monkeypatch.undo()
    assert not cs.partial and cs.msrs[0x481] == ref.msrs[0x481] and cs.msrs[0x48C] == ref.msrs[0x48C]
    # no MSR device: the vmx flags line of /proc/cpuinfo, marked partial
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only "
                    "ept_ad ept_1gb flexpriority apicv tsc_offset vtpr mtf vapic ept vpid "
                    "unrestricted_guest vapic_reg vid ple shadow_vmcs pml tsc_scaling\n")
    cs = host_caps(dev=str(tmp_path / "nodev"), cpuinfo=str(info))
    assert cs.partial and cs.notes
    for path in ("pin.virtual_nmis", "pin.process_posted_interrupts", "primary.use_tpr_shadow",
                 "primary.monitor_trap_flag", "secondary.enable_ept", "secondary.unrestricted_guest",
                 "secondary.use_tsc_scaling", "primary.activate_secondary_controls"):
        assert cs.supports(path), path
    assert cs.ept("accessed_dirty") and cs.ept("execute_only")
    # Linux shows no flag for XSAVES: unknown, not unsupported; a flag Linux shows but this
    # line lacks means unsupported
    assert cs.support("secondary", 20) == "unknown" and "secondary.enable_xsaves_xrstors" in cs.unknown
    assert cs.support("secondary", 26) == "no"          # usr_wait_pause not listed
    info.write_text("processor\t: 0\n")
    with pytest.raises(ProfileError) as e:
        host_caps(dev=str(tmp_path / "nodev"), cpuinfo=str(info))
    assert "no VMX capabilities" in str(e.value)
