"""vmcfg export (raw, json, c, qemu), vmcfg schema, vmcfg completion."""

import json
import re
import shutil
import subprocess

import pytest

from vmcfg.profile import load_profile, resolve_profile
from vmcfg.profile.loader import builtin_names, builtin_path
from vmcfg.vmx.models import get_model
from vmcfg.vmx.table import CONTROLS, CONTROL_BY_PATH, FIELDS


def _res(spec, cpu="cvmm"):
    return resolve_profile(load_profile(spec), get_model(cpu))


# ---- raw / json -------------------------------------------------------------------------------

def test_export_raw(cli):
    r = cli("export", "io-sandbox", "--format", "raw")
    assert r.exit_code == 0, r.output
    res = _res("io-sandbox")
    rows = {}
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            continue
        enc, name, value = line.split()
        rows[int(enc, 16)] = (name, int(value, 16))
    for f in FIELDS:
        assert rows[f.encoding] == (f.c_name, res.config.controls[f.key])
    assert rows == {k: (rows[k][0], v) for k, v in res.config.vmcs_fields().items()}
    doc = json.loads(cli("export", "io-sandbox", "-f", "raw", "--json").stdout)
    assert {d["name"] for d in doc["fields"]} >= {f.c_name for f in FIELDS}


def test_export_json_is_the_effective_profile(cli):
    r = cli("export", "mtf-tracer", "-f", "json")
    doc = json.loads(r.stdout)
    res = _res("mtf-tracer")
    assert doc["valid"] and doc["cpu"] == "cvmm"
    assert doc["profile"]["extends"] == "baseline" and len(doc["profile"]["chain"]) == 2
    for f in FIELDS:
        c = doc["controls"][f.key]
        assert int(c["value"], 16) == res.config.controls[f.key]
        assert set(c["on"]) == {x.key for x in CONTROLS
                                if x.field == f.key and res.config.controls[f.key] & x.mask}
    assert "monitor_trap_flag" in doc["controls"]["primary"]["on"]
    assert doc["settings"]["exceptions"]["intercept"] == [1, 3]


def test_export_refuses_invalid_unless_force(cli, write_profile):
    p = write_profile("[pin]\nvirtual_nmis = true\n")
    r = cli("export", p)
    assert r.exit_code == 1 and "E19" in r.stderr and r.stdout == ""
    r = cli("export", p, "--force")
    assert r.exit_code == 0 and "PIN_BASED_VM_EXEC_CONTROL" in r.stdout
    assert cli("export", "nosuch").exit_code == 2
    assert cli("export", "baseline", "--cpu", "nosuch").exit_code == 2


def test_export_to_file(cli, tmp_path):
    out = tmp_path / "b.h"
    r = cli("export", "baseline", "-f", "c", "-o", str(out))
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text().startswith("/*")


# ---- C header ---------------------------------------------------------------------------------

def test_export_c_values(cli):
    r = cli("export", "msr-audit", "-f", "c")
    assert r.exit_code == 0
    text = r.stdout
    res = _res("msr-audit")
    for f in FIELDS:
        m = re.search(rf"#define VMCFG_MSR_AUDIT_{f.c_name}\s+(0x[0-9a-f]+)", text)
        assert m and int(m.group(1), 16) == res.config.controls[f.key], f.key
        assert re.search(rf"#define VMCFG_ENC_{f.c_name}\s+0x{f.encoding:04x}u", text)
    assert _c_array(text, "vmcfg_msr_audit_msr_bitmap") == bytes(res.config.msr_bitmap())
    io_text = cli("export", "io-sandbox", "-f", "c").stdout
    a, b = _res("io-sandbox").config.io_bitmaps()
    assert _c_array(io_text, "vmcfg_io_sandbox_io_bitmap_a") == a
    assert _c_array(io_text, "vmcfg_io_sandbox_io_bitmap_b") == b
    sparse = cli("export", "timing-transparent", "-f", "c").stdout
    assert _c_array(sparse, "vmcfg_timing_transparent_msr_bitmap") == \
        bytes(_res("timing-transparent").config.msr_bitmap())
    assert "[0x802] = 0x01" in sparse          # designated initializers for sparse bitmaps


def _c_array(text, name):
    """Decode a `static const uint8_t name[N] = {...};` from the header (either form)."""
    m = re.search(rf"{name}\[(\d+)\] = \{{(.*?)\}};", text, re.S)
    n, body = int(m.group(1)), re.sub(r"/\*.*?\*/", "", m.group(2), flags=re.S)
    out = bytearray(n)
    if "[0x" in body:
        for idx, val in re.findall(r"\[(0x[0-9a-f]+)\] = (0x[0-9a-f]+)", body):
            out[int(idx, 16)] = int(val, 16)
    else:
        vals = [int(v, 16) for v in re.findall(r"0x[0-9a-f]+", body)]
        out[:len(vals)] = bytes(vals)
    return bytes(out)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_export_c_compiles_and_values_match(cli, tmp_path):
    hdrs = []
    for n in ("baseline", "io-sandbox", "msr-audit", "ept-isolated"):
        out = tmp_path / f"{n}.h"
        assert cli("export", n, "-f", "c", "-o", str(out)).exit_code == 0
        hdrs.append(out.name)
    res = _res("io-sandbox")
    checks = "\n".join(
        f'    if (VMCFG_IO_SANDBOX_{f.c_name} != 0x{res.config.controls[f.key]:x}ull) return 1;'
        for f in FIELDS)
    a, b = res.config.io_bitmaps()
    src = "\n".join(f'#include "{h}"' for h in hdrs) + f"""
#include <stdio.h>
int main(void) {{
{checks}
    if (vmcfg_io_sandbox_io_bitmap_a[0x60 >> 3] != 0x{a[0x60 >> 3]:02x}) return 2;
    if (vmcfg_io_sandbox_io_bitmap_a[0x3f8 >> 3] != 0x{a[0x3f8 >> 3]:02x}) return 3;
    if (vmcfg_io_sandbox_io_bitmap_b[0] != 0x{b[0]:02x}) return 4;
    for (unsigned i = 0; i < VMCFG_IO_SANDBOX_VMCS_COUNT; i++)
        if (vmcfg_io_sandbox_vmcs[i].encoding == VMCFG_ENC_CPU_BASED_VM_EXEC_CONTROL &&
            vmcfg_io_sandbox_vmcs[i].value != VMCFG_IO_SANDBOX_CPU_BASED_VM_EXEC_CONTROL) return 5;
    printf("ok %u\\n", (unsigned)VMCFG_BASELINE_VMCS_COUNT);
    return 0;
}}
"""
    (tmp_path / "t.c").write_text(src)
    cc = subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror",
                         "-Wno-unused-const-variable", "-o", str(tmp_path / "t"),
                         str(tmp_path / "t.c")], capture_output=True, text=True, cwd=tmp_path)
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("ok ")


# ---- QEMU -------------------------------------------------------------------------------------

def test_export_qemu_flags(cli):
    r = cli("export", "timing-transparent", "-f", "qemu", "--cpu", "sapphirerapids")
    assert r.exit_code == 0
    line = r.stdout.strip()
    assert line.startswith("-cpu SapphireRapids,")
    flags = line.split(",")[1:]
    for c in ("primary.use_tsc_offsetting", "secondary.enable_rdtscp", "primary.use_io_bitmaps",
              "primary.use_msr_bitmaps", "primary.activate_secondary_controls",
              "entry.ia32e_mode_guest"):
        assert f"{CONTROL_BY_PATH[c].qemu}=on" in flags, c
    # default1 bits that are 0 need their inverted flag
    assert f"{CONTROL_BY_PATH['primary.cr3_load_exiting'].qemu}=on" in flags
    # rdtsc exiting is off and not default1: no flag
    assert not any(f.startswith(CONTROL_BY_PATH["primary.rdtsc_exiting"].qemu) for f in flags)
    # CPUID dependencies and controls QEMU derives from CPUID
    assert "rdtscp=on" in flags and "lm=on" in flags
    assert "host_address_space_size" in r.stderr


def test_export_qemu_json_and_missing_flags(cli, write_profile):
    p = write_profile("""
        [profile]
        extends = "baseline"
        [secondary]
        enable_ept = true
        pause_loop_exiting = true
        use_tsc_scaling = true
        """)
    doc = json.loads(cli("export", p, "-f", "qemu", "--json").stdout)
    assert doc["model"] == "host"                 # cvmm is not a QEMU model
    assert "vmx-ple=on" in doc["cmdline"] and "vmx-page-walk-4=on" in doc["cmdline"]
    assert set(doc["omitted_by_models"]) >= {"secondary.pause_loop_exiting",
                                              "secondary.use_tsc_scaling"}
    doc = json.loads(cli("export", "baseline", "-f", "qemu", "--json", "--qemu-model",
                         "Skylake-Server-v4").stdout)
    assert doc["cmdline"].startswith("-cpu Skylake-Server-v4,")


def test_export_qemu_names_controls_without_flags(cli, tmp_path):
    # a tertiary control has no QEMU flag at all
    from vmcfg.vmx.config import VmxConfig
    from vmcfg.vmx.export import export_qemu
    from vmcfg.vmx.settings import default_settings
    ctl = {f.key: 0 for f in FIELDS}
    ctl["primary"] = (CONTROL_BY_PATH["primary.activate_tertiary_controls"].mask
                      | FIELDS[1].default1)
    ctl["tertiary"] = CONTROL_BY_PATH["tertiary.ipi_virtualization"].mask
    q = export_qemu(VmxConfig(ctl, default_settings(), cpu="sapphirerapids"))
    assert "tertiary.ipi_virtualization" in q["no_flag"]
    assert "primary.activate_tertiary_controls" in q["no_flag"]


# ---- schema -----------------------------------------------------------------------------------

def _validate(schema, value, path="$"):
    """A small JSON Schema checker for the keywords vmcfg's schema uses."""
    errs = []
    t = schema.get("type")
    if t:
        ok = {"object": isinstance(value, dict), "array": isinstance(value, list),
              "string": isinstance(value, str), "boolean": isinstance(value, bool),
              "integer": isinstance(value, int) and not isinstance(value, bool)}[t]
        if not ok:
            return [f"{path}: expected {t}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in enum")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errs.append(f"{path}: {value!r} does not match")
    if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
        errs.append(f"{path}: below minimum")
    if "maximum" in schema and isinstance(value, int) and value > schema["maximum"]:
        errs.append(f"{path}: above maximum")
    if "anyOf" in schema and all(_validate(s, value, path) for s in schema["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{path}: too short")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(f"{path}: too long")
        if "items" in schema:
            for i, v in enumerate(value):
                errs += _validate(schema["items"], v, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}: missing {k}")
        for k, v in value.items():
            if "propertyNames" in schema:
                errs += _validate(schema["propertyNames"], k, f"{path}.<{k}>")
            if k in props:
                errs += _validate(props[k], v, f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unknown key {k!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += _validate(schema["additionalProperties"], v, f"{path}.{k}")
    return errs


@pytest.fixture(scope="module")
def schema():
    from vmcfg.vmx.schema import profile_schema
    return profile_schema()


def test_schema_command(cli, tmp_path, schema):
    r = cli("schema")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == json.loads(json.dumps(schema))
    out = tmp_path / "s.json"
    assert cli("schema", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text())["title"] == "vmcfg profile"


def test_schema_is_generated_from_the_tables(schema):
    props = schema["properties"]
    for f in FIELDS:
        canon = {c.key for c in CONTROLS if c.field == f.key}
        shown = {k for k, v in props[f.key]["properties"].items() if "x-taplo" not in v}
        assert shown == canon
    assert props["primary"]["properties"]["hlt_exiting"]["description"].startswith(
        CONTROL_BY_PATH["primary.hlt_exiting"].meaning)
    assert set(props["profile"]["properties"]["cpu"]["enum"]) >= {"cvmm", "sapphirerapids"}


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_profiles_satisfy_the_schema(schema, name):
    import tomllib
    with open(builtin_path(name), "rb") as fh:
        data = tomllib.load(fh)
    assert _validate(schema, data) == []


def test_new_profiles_satisfy_the_schema(cli, schema, tmp_path):
    import tomllib
    out = tmp_path / "n.toml"
    assert cli("new", "n", "--want", "tsc.offset=-3", "--want", "io.intercept=0x60,0x70-0x7f",
               "--want", "exceptions.intercept=PF", "-o", str(out)).exit_code == 0
    assert _validate(schema, tomllib.loads(out.read_text())) == []


@pytest.mark.parametrize("doc, where", [
    ({"primary": {"hlt_exitng": True}}, "unknown key 'hlt_exitng'"),
    ({"primary": {"hlt_exiting": 1}}, "expected boolean"),
    ({"io": {"intercept": [70000]}}, "matches none"),
    ({"tsc": {"offset": "x"}}, "expected integer"),
    ({"ept": {"memory_type": "wt"}}, "not in enum"),
    ({"profile": {"cpu": "pentium"}}, "not in enum"),
    ({"colour": {}}, "unknown key 'colour'"),
])
def test_schema_rejects_bad_profiles(schema, doc, where):
    errs = _validate(schema, doc)
    assert any(where in e for e in errs), errs


# ---- completion -------------------------------------------------------------------------------

@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"),
                                           ("zsh", "compdef"), ("fish", "complete --no-files")])
def test_completion_scripts(cli, shell, marker):
    r = cli("completion", shell)
    assert r.exit_code == 0 and marker in r.stdout and "_VMCFG_COMPLETE" in r.stdout
    doc = json.loads(cli("completion", shell, "--json").stdout)
    assert doc["shell"] == shell and doc["install"]
    assert cli("completion", "tcsh").exit_code == 2


def _complete(cli, words):
    from click.testing import CliRunner
    from vmcfg.cli.main import cli as group
    env = {"_VMCFG_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(words),
           "COMP_CWORD": str(len(words) - 1)}
    r = CliRunner().invoke(group, [], env=env, prog_name="vmcfg")
    return [ln.split(",", 1)[1] for ln in r.stdout.splitlines() if "," in ln]


def test_completion_of_commands_profiles_keys_and_cpus(cli):
    for name in ("new", "set", "unset", "edit", "diff", "export", "matrix", "profiles", "schema",
                 "completion"):
        assert name in _complete(cli, ["vmcfg", name[:2]])
    assert _complete(cli, ["vmcfg", "validate", "io-s"])[0] == "io-sandbox"
    assert _complete(cli, ["vmcfg", "validate", "--cpu", "sap"]) == ["sapphirerapids"]
    assert _complete(cli, ["vmcfg", "set", "p.toml", "primary.hlt"]) == ["primary.hlt_exiting="]
    tables = _complete(cli, ["vmcfg", "set", "p.toml", ""])
    assert "primary." in tables and "tsc." in tables and "profile." in tables
    assert "tsc.offset=" in _complete(cli, ["vmcfg", "set", "p.toml", "tsc."])
    assert _complete(cli, ["vmcfg", "set", "p.toml", "ept.memory_type="]) == [
        "ept.memory_type=uc", "ept.memory_type=wb"]
    assert _complete(cli, ["vmcfg", "new", "x", "--want", "pin.proc"]) == [
        "pin.process_posted_interrupts"]
    assert "sapphirerapids" in _complete(cli, ["vmcfg", "diff", "cvmm", "sap"])
    assert _complete(cli, ["vmcfg", "matrix", "baseline", "--cpus", "cvmm,sier"]) == [
        "cvmm,sierraforest"]


def test_bash_completion_of_values_after_wordbreak(cli):
    # bash splits KEY=VALUE at '=' (COMP_WORDBREAKS): the value is completed as its own word
    assert _complete(cli, ["vmcfg", "set", "p.toml", "ept.memory_type", "=", ""]) == ["uc", "wb"]
    assert _complete(cli, ["vmcfg", "set", "p.toml", "hlt_exiting", "=", "o"]) == ["on", "off"]
    assert "baseline" in _complete(cli, ["vmcfg", "set", "p.toml", "profile.extends", "=", "b"])
