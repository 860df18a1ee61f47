"""vmcfg new: commented profiles, --from, --want dependency closures."""

import json
import os

import pytest

from vmcfg.profile import load_profile, resolve_profile
from vmcfg.vmx.caps import CapSet, msrs_from_features, pack_bits
from vmcfg.vmx.closure import ClosureError, Want, closure, resolve_want
from vmcfg.vmx.models import MODEL_NAMES, get_model
from vmcfg.vmx.rules import RULES, check
from vmcfg.vmx.table import CONTROLS, CONTROL_BY_PATH, FIELDS


def _resolve(path, cpu):
    return resolve_profile(load_profile(str(path)), get_model(cpu))


def test_new_lists_every_supported_control_with_its_meaning(cli, tmp_path):
    out = tmp_path / "fresh.toml"
    r = cli("new", "fresh", "-o", str(out), "--cpu", "sapphirerapids", "-d", "a test")
    assert r.exit_code == 0, r.output
    text = out.read_text()
    caps = get_model("sapphirerapids")
    for c in CONTROLS:
        line = next((ln for ln in text.splitlines()
                     if ln.lstrip("# ").startswith(f"{c.key} = ")
                     and c.meaning in ln), None)
        if caps.supports(c.path):
            assert line is not None, c.path
        if line is not None and not line.startswith("#"):
            assert line.startswith(f"{c.key} = true") or line.startswith(f"{c.key} = false")
    assert 'cpu = "sapphirerapids"' in text and 'description = "a test"' in text
    res = _resolve(out, "sapphirerapids")
    assert res.valid and not res.warnings
    # a new profile starts from baseline's essentials: a runnable 64-bit guest
    assert res.config.on("entry.ia32e_mode_guest")
    assert res.config.on("exit.host_address_space_size")
    assert "wrote" in r.stderr


def test_new_default_file_name_and_no_overwrite(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("new", "alpha").exit_code == 0
    assert (tmp_path / "alpha.toml").is_file()
    (tmp_path / "alpha.toml").write_text("# mine\n")
    r = cli("new", "alpha")
    assert r.exit_code == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "alpha.toml").read_text() == "# mine\n"
    assert cli("new", "alpha", "--force").exit_code == 0
    assert "[profile]" in (tmp_path / "alpha.toml").read_text()
    # NAME may be a path
    assert cli("new", "sub.toml").exit_code == 0
    assert 'name = "sub"' in (tmp_path / "sub.toml").read_text()


def test_new_to_stdout(cli):
    r = cli("new", "x", "-o", "-", "--want", "mtf")
    assert r.exit_code == 0
    assert r.stdout.startswith("# x\n") and "monitor_trap_flag = true" in r.stdout


def test_new_on_old_cpu_leaves_out_what_it_lacks(cli, tmp_path):
    out = tmp_path / "old.toml"
    r = cli("new", "old", "--cpu", "penryn", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "left out" in r.stderr
    assert _resolve(out, "penryn").valid


def test_new_from_copies_effective_settings(cli, tmp_path):
    out = tmp_path / "copy.toml"
    r = cli("new", "copy", "--from", "io-sandbox", "-o", str(out))
    assert r.exit_code == 0, r.output
    a = resolve_profile(load_profile("io-sandbox"), get_model("cvmm"))
    b = _resolve(out, "cvmm")
    assert a.config.controls == b.config.controls
    assert a.config.settings == b.config.settings
    assert "extends" not in out.read_text().split("[pin]")[0].replace("# ", "")  # flattened
    # --from an invalid-for-this-CPU profile: refused, nothing written
    out2 = tmp_path / "nope.toml"
    r = cli("new", "nope", "--from", "trap-all", "--cpu", "penryn", "-o", str(out2))
    assert r.exit_code == 1 and "E3" in r.stderr and not out2.exists()


def test_want_closure_posted_interrupts(cli, tmp_path):
    out = tmp_path / "posted.toml"
    r = cli("new", "posted", "--cpu", "sapphirerapids", "--want", "process_posted_interrupts",
            "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    added = {a["control"]: a["rule"] for a in doc["added"]}
    assert added == {"secondary.virtual_interrupt_delivery": "E15",
                     "exit.acknowledge_interrupt_on_exit": "E16",
                     "pin.external_interrupt_exiting": "E13",
                     "primary.use_tpr_shadow": "E14"}
    # activate_secondary_controls is needed too; baseline already has it
    assert {a["control"] for a in doc["already_on"]} == {"primary.activate_secondary_controls"}
    res = _resolve(out, "sapphirerapids")
    assert res.valid
    for p in ["pin.process_posted_interrupts", *added, "primary.activate_secondary_controls"]:
        assert res.config.on(p), p
    text = out.read_text()
    assert "+ secondary.virtual_interrupt_delivery: required by pin.process_posted_interrupts (rule E15" in text


def test_want_human_output_names_rules(cli, tmp_path):
    r = cli("new", "p", "--cpu", "sapphirerapids", "--want", "posted_intr", "-o",
            str(tmp_path / "p.toml"))
    assert r.exit_code == 0
    assert "+ primary.use_tpr_shadow" in r.stderr and "rule E14" in r.stderr


def test_want_fails_naming_the_missing_capability(cli, tmp_path):
    out = tmp_path / "no.toml"
    r = cli("new", "no", "--want", "process_posted_interrupts", "--cpu", "nehalem", "-o", str(out))
    assert r.exit_code == 1
    assert not out.exists()
    assert "nehalem cannot provide pin.process_posted_interrupts" in r.stderr
    assert "IA32_VMX_TRUE_PINBASED_CTLS allowed-1 bit 7 is 0" in r.stderr
    # a dependency the CPU lacks is named with the chain that needs it
    assert ("cannot provide secondary.virtual_interrupt_delivery "
            "(needed by pin.process_posted_interrupts") in r.stderr
    r = cli("new", "no", "--want", "tsc.multiplier", "--cpu", "sapphirerapids", "-o", str(out),
            "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["errors"][0]["control"] == "secondary.use_tsc_scaling"
    assert "PROCBASED_CTLS2" in doc["errors"][0]["capability"]


def test_want_settings_with_values(cli, tmp_path):
    out = tmp_path / "t.toml"
    r = cli("new", "t", "--want", "tsc.offset=-5000", "--want", "io.intercept=0x60,0x64",
            "--want", "enable_ept,vpid", "-o", str(out))
    assert r.exit_code == 0, r.output
    res = _resolve(out, "cvmm")
    assert res.valid and not res.warnings
    assert res.config.settings["tsc"]["offset"] == -5000
    assert res.config.on("primary.use_tsc_offsetting")
    assert res.config.settings["io"]["intercept"] == [(0x60, 0x60), (0x64, 0x64)]
    assert res.config.on("secondary.enable_ept") and res.config.on("secondary.enable_vpid")


def test_want_eptp_switching_pulls_in_ept(cli, tmp_path):
    out = tmp_path / "v.toml"
    r = cli("new", "v", "--cpu", "haswell", "--want", "vmfunc.eptp_switching", "-o", str(out),
            "--json")
    assert r.exit_code == 0, r.output
    added = {a["control"]: a["rule"] for a in json.loads(r.stdout)["added"]}
    assert added == {"secondary.enable_vm_functions": "W6", "secondary.enable_ept": "E31"}
    assert _resolve(out, "haswell").valid


@pytest.mark.parametrize("args, code, msg", [
    (["--want", "nosuch"], 2, "not a control or setting"),
    (["--want", "hlt_exitin"], 2, "did you mean"),
    (["--want", "load_ia32_pat"], 2, "ambiguous"),
    (["--want", "vmcs.eptp"], 2, "needs a value"),
    (["--want", "tsc.offset=abc"], 2, "expected an integer"),
    (["--cpu", "nosuch"], 2, "unknown CPU model"),
    (["--from", "nosuch"], 2, "no such file"),
    (["--want", "virtualize_x2apic_mode,virtualize_apic_accesses", "--cpu", "sapphirerapids"],
     1, "E12"),
    (["--want", "vnmi", "--want", "nmi_exiting=off"], 1, "wanted off"),
])
def test_new_bad_input(cli, tmp_path, args, code, msg):
    out = tmp_path / "x.toml"
    r = cli("new", "x", "-o", str(out), *args)
    assert r.exit_code == code, r.output
    assert msg in r.stderr
    assert not out.exists()
    assert "Traceback" not in r.output


@pytest.mark.parametrize("cpu", MODEL_NAMES)
def test_want_every_supported_control_gives_a_valid_profile(cli, tmp_path, cpu):
    """For every control the CPU supports, `new --want` it: the profile validates and has it on.

    The only exceptions are the controls a non-`requires` rule forbids outright
    (entry to SMM / dual-monitor treatment, rule N2): there `new` must refuse
    with the rule named and write nothing.
    """
    caps = get_model(cpu)
    done = 0
    for c in CONTROLS:
        if not caps.supports(c.path):
            continue
        out = tmp_path / f"{c.field}-{c.key}.toml"
        r = cli("new", "w", "--cpu", cpu, "--want", c.path, "-o", str(out))
        if r.exit_code == 1 and "error[N2]" in r.stderr:
            assert not out.exists()
            continue
        assert r.exit_code == 0, (c.path, r.output)
        res = _resolve(out, cpu)
        assert res.valid, (c.path, [v.message for v in res.errors])
        f = next(f for f in FIELDS if f.key == c.field)
        assert res.config.controls[c.field] & c.mask, c.path
        if f.activated_by:
            assert res.config.on(c.path), c.path
        done += 1
    assert done > 10


# ---- the closure itself, checked against the rules ------------------------------------------

def _everything_caps() -> CapSet:
    """A capability set that allows every named control (to test the closure alone)."""
    feats = {f.key: [c.key for c in CONTROLS if c.field == f.key] for f in FIELDS}
    basic = pack_bits(0x480, revision=1, vmcs_size=4096, vmcs_memory_type=6, true_ctls=1)
    msrs = msrs_from_features(feats, basic=basic, misc=pack_bits(0x485, cr3_targets=4),
                              ept_vpid=pack_bits(0x48C, walk_length_4=1, memtype_wb=1),
                              vmfunc=1)
    msrs[0x492] = sum(c.mask for c in CONTROLS if c.field == "tertiary")
    return CapSet(name="everything", msrs=msrs)


def test_closure_satisfies_every_requires_rule_for_every_control():
    from vmcfg.profile.loader import Profile
    from vmcfg.profile.resolve import effective
    caps = _everything_caps()
    requires_ids = {r.id for r in RULES if r.requires}
    for c in CONTROLS:
        cl = closure([Want(c.path, "control", True)], caps)
        assert cl.controls[c.path] is True
        prof = Profile(path=None)
        for p, v in cl.controls.items():
            cc = CONTROL_BY_PATH[p]
            prof.controls.setdefault(cc.field, {})[cc.key] = v
        cfg, _, _, explicit = effective(prof, caps)
        errors, _ = check(cfg, caps, explicit)
        assert not [e for e in errors if e.rule in requires_ids], (c.path, errors)
        assert cfg.on(c.path), c.path
        # every addition is justified by a rule that names the control that needed it
        for a in cl.added:
            assert a.because in cl.controls or a.because == c.path
            assert a.rule


def test_closure_is_transitive_and_minimal():
    caps = _everything_caps()
    cl = closure([resolve_want("posted_interrupts")], caps)
    assert set(cl.controls) == {
        "pin.process_posted_interrupts", "secondary.virtual_interrupt_delivery",
        "exit.acknowledge_interrupt_on_exit", "pin.external_interrupt_exiting",
        "primary.use_tpr_shadow", "primary.activate_secondary_controls"}
    # nothing to add for a control without requirements
    assert closure([resolve_want("hlt_exiting")], caps).added == []


def test_closure_errors():
    caps = _everything_caps()
    with pytest.raises(ClosureError, match="E12"):
        closure([resolve_want("virtualize_x2apic_mode"), resolve_want("virtualize_apic_accesses")],
                caps)
    with pytest.raises(ClosureError, match="ambiguous"):
        resolve_want("conceal_vmx_from_pt")
    w = resolve_want("vmx-cr3-load-noexit")          # inverted QEMU spelling: off
    assert w.path == "primary.cr3_load_exiting" and w.value is False


def test_from_keeps_relative_guest_image_pointing_at_the_same_file(cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = tmp_path / "a" / "p.toml"
    src.write_text('[profile]\nextends = "baseline"\n[guest]\nimage = "g.bin"\n')
    out = tmp_path / "b" / "q.toml"
    assert cli("new", "q", "--from", str(src), "-o", str(out)).exit_code == 0
    prof = load_profile(str(out))
    assert os.path.normpath(os.path.join(out.parent, prof.settings["guest"]["image"])) == \
        os.path.normpath(tmp_path / "a" / "g.bin")
