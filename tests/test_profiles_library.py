"""The built-in profile library: every profile valid on cvmm and the newest CPU models."""

import os

import pytest

from vmcfg.profile import load_profile, resolve_profile
from vmcfg.profile.loader import builtin_names, builtin_path
from vmcfg.vmx.models import get_model
from vmcfg.vmx.rules import check_entry_state

CPUS = ("cvmm", "sapphirerapids", "graniterapids", "sierraforest")
NAMES = builtin_names()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _res(name, cpu="cvmm"):
    return resolve_profile(load_profile(name), get_model(cpu))


def test_library_size():
    assert len(NAMES) >= 9          # baseline + at least 8
    assert "baseline" in NAMES


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("name", NAMES)
def test_valid_without_warnings_and_launchable(name, cpu):
    r = _res(name, cpu)
    assert r.valid, [f"{v.rule}: {v.message}" for v in r.errors]
    assert not r.warnings, [f"{v.rule}: {v.message}" for v in r.warnings]
    mode = r.config.settings["guest"]["mode"]
    assert check_entry_state(r.config, r.caps, mode) == []


@pytest.mark.parametrize("name", NAMES)
def test_documented(name):
    with open(builtin_path(name), encoding="utf-8") as fh:
        text = fh.read()
    head = text.split("[profile]")[0]
    assert head.startswith(f"# {name} ")
    assert len([ln for ln in head.splitlines() if ln.startswith("#")]) >= 4
    prof = load_profile(name)
    assert prof.name == name and prof.description
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme.split("### The built-in profile library", 1)[1].split("\n### ", 1)[0]
    assert f"| `{name}` |" in table, f"{name} is not in the README's library table"


def test_profiles_are_all_different():
    seen = {}
    for n in NAMES:
        r = _res(n)
        key = (tuple(sorted(r.config.controls.items())), repr(r.config.settings))
        assert key not in seen, f"{n} has the same effective values as {seen.get(key)}"
        seen[key] = n


def test_characteristics():
    on = lambda n, p: _res(n).config.on(p)          # noqa: E731
    cfg = lambda n: _res(n).config                  # noqa: E731
    # trap-all: every I/O, every MSR, every exception, the instruction exits
    t = cfg("trap-all")
    assert t.on("primary.unconditional_io_exiting") and not t.on("primary.use_io_bitmaps")
    assert t.msr_intercepted(0xC0000080, write=False) and t.msr_intercepted(0x10, write=True)
    assert t.exception_bitmap() & (1 << 14) and t.exception_bitmap() & (1 << 6)
    for p in ("primary.hlt_exiting", "primary.rdtsc_exiting", "primary.cr3_load_exiting",
              "secondary.descriptor_table_exiting", "pin.external_interrupt_exiting"):
        assert t.on(p), p
    # timing-transparent: native RDTSC with offsetting
    assert on("timing-transparent", "primary.use_tsc_offsetting")
    assert not on("timing-transparent", "primary.rdtsc_exiting")
    assert cfg("timing-transparent").msr_intercepted(0x10, write=True)
    assert not cfg("timing-transparent").msr_intercepted(0x10, write=False)
    # io-sandbox: allow-list
    io = cfg("io-sandbox")
    for port in (0x40, 0x43, 0x70, 0x71, 0x80, 0x3F8, 0x3FF):
        assert not io.io_port_intercepted(port), hex(port)
    for port in (0x20, 0x60, 0x64, 0xCF8, 0xCFC, 0x3F7, 0x400, 0xFFFF):
        assert io.io_port_intercepted(port), hex(port)
    # msr-audit: every write, selected reads
    m = cfg("msr-audit")
    assert m.msr_intercepted(0x10, write=True) and m.msr_intercepted(0xC0000100, write=True)
    assert m.msr_intercepted(0xC0000080, write=False) and m.msr_intercepted(0x3A, write=False)
    assert not m.msr_intercepted(0x10, write=False)
    # mtf-tracer
    assert on("mtf-tracer", "primary.monitor_trap_flag")
    assert cfg("mtf-tracer").exception_bitmap() == (1 << 1) | (1 << 3)
    # ept-isolated
    e = cfg("ept-isolated")
    assert e.on("secondary.enable_ept") and e.on("secondary.enable_vpid")
    assert e.settings["ept"]["on_violation"] == "stop"
    assert e.settings["ept"]["regions"] == [{"base": 0, "size": e.settings["guest"]["memory"],
                                              "access": "rwx"}]
    # low-exit: EPT, no CR3 exits, native TSC
    lo = cfg("low-exit")
    assert lo.on("secondary.enable_ept") and not lo.on("primary.cr3_load_exiting")
    assert not lo.on("primary.rdtsc_exiting") and lo.on("primary.use_tsc_offsetting")
    assert not lo.msr_intercepted(0xC0000080, write=True)
    # preemption-sliced
    ps = cfg("preemption-sliced")
    assert ps.on("pin.activate_vmx_preemption_timer") and ps.settings["preemption_timer"]["value"]
    assert ps.on("exit.save_vmx_preemption_timer_value")
    # real-mode
    rm = cfg("real-mode")
    assert rm.settings["guest"]["mode"] == 16 and rm.on("secondary.unrestricted_guest")
    assert not rm.on("entry.ia32e_mode_guest")


def test_every_library_profile_can_be_copied_and_edited(cli, tmp_path):
    for n in NAMES:
        out = tmp_path / f"{n}.toml"
        r = cli("new", f"my-{n}", "--from", n, "-o", str(out))
        assert r.exit_code == 0, (n, r.output)
        a, b = _res(n), resolve_profile(load_profile(str(out)), get_model("cvmm"))
        assert a.config.controls == b.config.controls and a.config.settings == b.config.settings
