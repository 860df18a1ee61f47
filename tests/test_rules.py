"""Every VM-entry rule with a passing and a failing profile."""

import textwrap

import pytest

from vmcfg.profile import resolve_profile
from vmcfg.profile.loader import from_document, load_profile
from vmcfg.profile.source import parse_toml
from vmcfg.vmx.caps import CapSet
from vmcfg.vmx.models import get_model
from vmcfg.vmx.msrs import MSR_INDEX
from vmcfg.vmx.rules import RULES, check_entry_state
from vmcfg.vmx.table import CONTROL_BY_PATH, FIELD_BY_KEY


def custom(model: str, *allow: str, msrs: dict | None = None) -> CapSet:
    """A model with extra controls allowed (and extra MSRs)."""
    base = get_model(model)
    m = dict(base.msrs)
    for path in allow:
        c = CONTROL_BY_PATH[path]
        f = FIELD_BY_KEY[c.field]
        for name in (f.cap_msr, f.true_msr):
            if name is None:
                continue
            idx = MSR_INDEX[name]
            if idx in (0x492, 0x493):
                m[idx] = m.get(idx, 0) | c.mask
            elif idx in m or name == f.cap_msr:
                m[idx] = m.get(idx, 0) | (c.mask << 32)
    m.update(msrs or {})
    return CapSet(name=f"{model}+", msrs=m, maxphyaddr=base.maxphyaddr)


SPR = "sapphirerapids"
SKX = "skylake-server"
TPR = "[primary]\nuse_tpr_shadow = true\n"
PI_ALL = """
[pin]
process_posted_interrupts = true
external_interrupt_exiting = true
[primary]
use_tpr_shadow = true
[secondary]
virtual_interrupt_delivery = true
[exit]
acknowledge_interrupt_on_exit = true
"""
EPT = "[secondary]\nenable_ept = true\n"

# rule, capability set, passing snippet, failing snippet
CASES = [
    ("E1", "cvmm", "[raw]\npin = 0x16", "[raw]\npin = 0x0"),
    ("E1", "nehalem", "[pin]\nnmi_exiting = true", "[pin]\nprocess_posted_interrupts = true"),
    ("E2", "cvmm", "[primary]\nhlt_exiting = true", "[primary]\nactivate_tertiary_controls = true"),
    ("E3", "cvmm", "[secondary]\nenable_rdtscp = true", "[secondary]\nenable_pml = true"),
    ("E4", lambda: custom(SPR, "primary.activate_tertiary_controls", "tertiary.ipi_virtualization"),
     "[primary]\nactivate_tertiary_controls = true\n[tertiary]\nipi_virtualization = true",
     "[primary]\nactivate_tertiary_controls = true\n[tertiary]\nloadiwkey_exiting = true"),
    ("X1", "cvmm", "[exit]\nload_ia32_efer = true", "[exit]\nload_ia32_perf_global_ctrl = true"),
    ("N1", "cvmm", "[entry]\nload_ia32_pat = true\n[exit]\nload_ia32_pat = true",
     "[entry]\nload_ia32_bndcfgs = true"),
    ("E5", "cvmm", "[primary]\ncr3_load_exiting = true\n[cr3]\ntargets = [1, 2, 3, 4]",
     "[primary]\ncr3_load_exiting = true\n[cr3]\ntargets = [1, 2, 3, 4, 5]"),
    ("E6", "cvmm", "[vmcs]\nio_bitmap_a = 0x1000", "[vmcs]\nio_bitmap_a = 0x1001"),
    ("E7", "cvmm", "[vmcs]\nmsr_bitmap = 0x2000", "[vmcs]\nmsr_bitmap = 0x8000000000"),
    ("E8", SPR, TPR + "[vmcs]\nvirtual_apic_page = 0x3000", TPR + "[vmcs]\nvirtual_apic_page = 0x3001"),
    ("E9", SPR, TPR + "[apic]\ntpr_threshold = 2\nvtpr = 0x20", TPR + "[apic]\ntpr_threshold = 0x10"),
    ("E10", SPR, TPR + "[apic]\ntpr_threshold = 3\nvtpr = 0x30", TPR + "[apic]\ntpr_threshold = 3\nvtpr = 0x20"),
    ("E11", SPR, "[secondary]\nvirtualize_apic_accesses = true\n[vmcs]\napic_access_page = 0x5000",
     "[secondary]\nvirtualize_apic_accesses = true\n[vmcs]\napic_access_page = 0x5008"),
    ("E12", SPR, TPR + "[secondary]\nvirtualize_x2apic_mode = true",
     TPR + "[secondary]\nvirtualize_x2apic_mode = true\nvirtualize_apic_accesses = true"),
    ("E13", SPR, TPR + "[pin]\nexternal_interrupt_exiting = true\n[secondary]\nvirtual_interrupt_delivery = true",
     TPR + "[secondary]\nvirtual_interrupt_delivery = true"),
    ("E14", SPR, TPR + "[secondary]\napic_register_virtualization = true",
     "[secondary]\napic_register_virtualization = true"),
    ("E15", SPR, PI_ALL, "[pin]\nprocess_posted_interrupts = true\n[exit]\nacknowledge_interrupt_on_exit = true"),
    ("E16", SPR, PI_ALL, PI_ALL.replace("acknowledge_interrupt_on_exit = true", "")),
    ("E17", SPR, PI_ALL + "[posted_interrupts]\nvector = 0xf2", PI_ALL + "[posted_interrupts]\nvector = 0x100"),
    ("E18", SPR, PI_ALL + "[vmcs]\nposted_intr_desc = 0x1040", PI_ALL + "[vmcs]\nposted_intr_desc = 0x1008"),
    ("E19", "cvmm", "[pin]\nvirtual_nmis = true\nnmi_exiting = true", "[pin]\nvirtual_nmis = true"),
    ("E20", "cvmm", "[pin]\nvirtual_nmis = true\nnmi_exiting = true\n[primary]\nnmi_window_exiting = true",
     "[pin]\nnmi_exiting = true\n[primary]\nnmi_window_exiting = true"),
    ("E21", SPR, "[secondary]\nenable_pml = true\nenable_ept = true", "[secondary]\nenable_pml = true"),
    ("E21a", SPR, "[secondary]\nenable_pml = true\nenable_ept = true\n[vmcs]\npml_address = 0x1000",
     "[secondary]\nenable_pml = true\nenable_ept = true\n[vmcs]\npml_address = 0x1001"),
    ("E22", "cvmm", "[secondary]\nunrestricted_guest = true\nenable_ept = true",
     "[secondary]\nunrestricted_guest = true"),
    ("E23", SKX, "[secondary]\nmode_based_execute_control_for_ept = true\nenable_ept = true",
     "[secondary]\nmode_based_execute_control_for_ept = true"),
    ("E24", lambda: custom(SKX, "secondary.sub_page_write_permissions_for_ept"),
     "[secondary]\nsub_page_write_permissions_for_ept = true\nenable_ept = true",
     "[secondary]\nsub_page_write_permissions_for_ept = true"),
    ("E24a", lambda: custom(SKX, "secondary.sub_page_write_permissions_for_ept"),
     "[secondary]\nsub_page_write_permissions_for_ept = true\nenable_ept = true\n[vmcs]\nspptp = 0x4000",
     "[secondary]\nsub_page_write_permissions_for_ept = true\nenable_ept = true\n[vmcs]\nspptp = 0x4100"),
    ("E25", SPR, "[secondary]\nvmcs_shadowing = true\n[vmcs]\nvmread_bitmap = 0x1000",
     "[secondary]\nvmcs_shadowing = true\n[vmcs]\nvmread_bitmap = 0x1001"),
    ("E26", SKX, EPT + "ept_violation_ve = true\n[vmcs]\nve_info_address = 0x1000",
     EPT + "ept_violation_ve = true\n[vmcs]\nve_info_address = 0x1010"),
    ("E27", "cvmm", "[secondary]\nenable_vpid = true\n[vpid]\nid = 1",
     "[secondary]\nenable_vpid = true\n[vpid]\nid = 0"),
    ("E28", "cvmm", "[pin]\nactivate_vmx_preemption_timer = true\n[exit]\nsave_vmx_preemption_timer_value = true",
     "[exit]\nsave_vmx_preemption_timer_value = true"),
    ("E29a", "cvmm", EPT + "[ept]\nmemory_type = \"uc\"", EPT + "[vmcs]\neptp = 0x1019"),
    ("E29a", lambda: custom("cvmm", msrs={0x48C: get_model("cvmm").msr(0x48C) & ~(1 << 8)}),
     EPT + "[ept]\nmemory_type = \"wb\"", EPT + "[ept]\nmemory_type = \"uc\""),
    ("E29b", "cvmm", EPT + "[ept]\nwalk_length = 4", EPT + "[ept]\nwalk_length = 5"),
    ("E29c", "cvmm", EPT + "[ept]\naccessed_dirty = false", EPT + "[ept]\naccessed_dirty = true"),
    ("E29d", "cvmm", EPT + "[vmcs]\neptp = 0x101e", EPT + "[vmcs]\neptp = 0x109e"),
    ("E29e", "cvmm", EPT + "[vmcs]\neptp = 0x10001e", EPT + "[vmcs]\neptp = 0x1000000001e"),
    ("E30", SKX, "[secondary]\nenable_vm_functions = true\nenable_ept = true\n[vmfunc]\neptp_switching = false",
     "[secondary]\nenable_vm_functions = true\nenable_ept = true\n[vmfunc]\neptp_switching = true"),
    ("E31", SPR, "[secondary]\nenable_vm_functions = true\nenable_ept = true\n[vmfunc]\neptp_switching = true",
     "[secondary]\nenable_vm_functions = true\n[vmfunc]\neptp_switching = true"),
    ("E32", "cvmm", "[secondary]\nuse_tsc_scaling = true",
     "[secondary]\nuse_tsc_scaling = true\n[tsc]\nmultiplier = 0"),
    ("E33", "cvmm", "[secondary]\nenable_rdtscp = true",
     "[primary]\nactivate_secondary_controls = false\n[secondary]\nenable_rdtscp = true"),
    ("X2", lambda: custom("cvmm", "exit.activate_secondary_controls"),
     "[exit]\nactivate_secondary_controls = false", "[exit]\nactivate_secondary_controls = true"),
    ("X4", "cvmm", "[vmcs]\nexit_msr_store_address = 0x1010\nexit_msr_store_count = 2",
     "[vmcs]\nexit_msr_store_address = 0x1008\nexit_msr_store_count = 2"),
    ("X5", "cvmm", "[vmcs]\nexit_msr_load_address = 0x1000\nexit_msr_load_count = 4",
     "[vmcs]\nexit_msr_load_address = 0x7ffffffff0\nexit_msr_load_count = 4"),
    ("N2", SKX, "[entry]\nentry_to_smm = false", "[entry]\nentry_to_smm = true"),
    ("N3", "cvmm", "[inject]\ntype = \"other\"\nvector = 0", "[inject]\ninfo = 0x80000100"),
    ("N3", lambda: custom("penryn", "exit.load_ia32_efer"), "[inject]\ntype = \"nmi\"\nvector = 2",
     "[inject]\ntype = \"other\"\nvector = 0"),
    ("N4", "cvmm", "[inject]\ntype = \"nmi\"\nvector = 2", "[inject]\ntype = \"nmi\"\nvector = 3"),
    ("N4", "cvmm", "[inject]\ntype = \"hw_exception\"\nvector = 6", "[inject]\ntype = \"hw_exception\"\nvector = 40"),
    ("N5", "cvmm", "[inject]\ntype = \"hw_exception\"\nvector = 13\nerror_code = 0",
     "[inject]\ntype = \"hw_exception\"\nvector = 13"),
    ("N5", "cvmm", "[inject]\ntype = \"hw_exception\"\nvector = 6",
     "[inject]\ntype = \"hw_exception\"\nvector = 6\nerror_code = 0"),
    ("N6", "cvmm", "[inject]\ntype = \"hw_exception\"\nvector = 13\nerror_code = 0xffff",
     "[inject]\ntype = \"hw_exception\"\nvector = 13\nerror_code = 0x10000"),
    ("N7", "cvmm", "[inject]\ninfo = 0x80000306", "[inject]\ninfo = 0x80001306"),
    ("N8", SPR, "[inject]\ntype = \"sw_interrupt\"\nvector = 0x80\ninstruction_length = 2",
     "[inject]\ntype = \"sw_interrupt\"\nvector = 0x80"),
    ("N9", "cvmm", "[vmcs]\nentry_msr_load_address = 0x2000\nentry_msr_load_count = 1",
     "[vmcs]\nentry_msr_load_address = 0x2004\nentry_msr_load_count = 1"),
    ("W1", "cvmm", "[entry]\nload_ia32_efer = true", "[exit]\nload_ia32_efer = false"),
    ("W2", "cvmm", "[entry]\nload_ia32_pat = true\n[exit]\nload_ia32_pat = true", "[entry]\nload_ia32_pat = true"),
    ("W3", SPR, "[entry]\nload_ia32_perf_global_ctrl = true\n[exit]\nload_ia32_perf_global_ctrl = true",
     "[exit]\nload_ia32_perf_global_ctrl = true"),
    ("W4", SKX, "[entry]\nload_ia32_bndcfgs = true\n[exit]\nclear_ia32_bndcfgs = true",
     "[entry]\nload_ia32_bndcfgs = true"),
    ("W5", lambda: custom(SKX, "entry.load_ia32_rtit_ctl", "exit.clear_ia32_rtit_ctl"),
     "[entry]\nload_ia32_rtit_ctl = true\n[exit]\nclear_ia32_rtit_ctl = true",
     "[exit]\nclear_ia32_rtit_ctl = true"),
    ("W6", "cvmm", "[primary]\nuse_tsc_offsetting = true\n[tsc]\noffset = -5000", "[tsc]\noffset = -5000"),
    ("W7", "cvmm", "[msr]\nintercept_read = [0x10, 0xc0000080]", "[msr]\nintercept_read = [0x40000000]"),
    ("W8", "cvmm", "[primary]\nunconditional_io_exiting = false", "[primary]\nunconditional_io_exiting = true"),
]


def _resolve(snippet: str, caps, tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[profile]\nextends = "baseline"\n' + textwrap.dedent(snippet) + "\n")
    prof = load_profile(str(p))
    cs = caps() if callable(caps) else get_model(caps)
    return resolve_profile(prof, cs)


def _ids(r):
    return {v.rule for v in r.errors} | {v.rule for v in r.warnings}


@pytest.mark.parametrize("rule,caps,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_pass_and_fail(rule, caps, good, bad, tmp_path):
    ok = _resolve(good, caps, tmp_path)
    assert rule not in _ids(ok), [v.message for v in ok.errors + ok.warnings]
    ko = _resolve(bad, caps, tmp_path)
    hits = [v for v in ko.errors + ko.warnings if v.rule == rule]
    assert hits, f"{rule} not reported; got {[v.rule for v in ko.errors + ko.warnings]}"
    for v in hits:
        assert v.message and v.fix and v.fields
        # the violation points into the file
        assert ko.position(v) is not None


def test_every_profile_rule_has_cases():
    covered = {c[0] for c in CASES}
    missing = [r.id for r in RULES if r.stage == "profile" and r.alias_of is None and r.id not in covered]
    assert missing == []


def test_warnings_do_not_invalidate(tmp_path):
    r = _resolve("[tsc]\noffset = 5", "cvmm", tmp_path)
    assert r.valid and [w.rule for w in r.warnings] == ["W6"]


def test_fix_names_both_alternatives(tmp_path):
    r = _resolve("[pin]\nvirtual_nmis = true", "cvmm", tmp_path)
    (v,) = [e for e in r.errors if e.rule == "E19"]
    assert v.fix == "set pin.nmi_exiting, or clear pin.virtual_nmis"
    assert v.fields == ["pin.virtual_nmis", "pin.nmi_exiting"]


@pytest.mark.parametrize("mode,snippet,expect", [
    (64, "", set()),
    (64, "[entry]\nia32e_mode_guest = false\n[exit]\nload_ia32_efer = false\n[entry]\nload_ia32_efer = false", {"G2"}),
    (32, "", {"G2", "G3"}),
    (32, "[entry]\nia32e_mode_guest = false\n[secondary]\nunrestricted_guest = true\nenable_ept = true", set()),
    (16, "[entry]\nia32e_mode_guest = false", {"G3"}),
    (64, "[exit]\nhost_address_space_size = false", {"H1"}),
])
def test_launch_state_rules(mode, snippet, expect, tmp_path):
    # a TOML table may appear once per file: merge duplicate headers for the test
    parts: dict[str, list[str]] = {}
    cur = None
    for line in snippet.splitlines():
        if line.startswith("["):
            cur = line
            parts.setdefault(cur, [])
        elif cur:
            parts[cur].append(line)
    text = "\n".join(h + "\n" + "\n".join(ls) for h, ls in parts.items())
    r = _resolve(text, "cvmm", tmp_path)
    got = {v.rule for v in check_entry_state(r.config, r.caps, mode)}
    assert got == expect
