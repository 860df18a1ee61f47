"""Exports of an effective configuration: raw, JSON, a C header, QEMU -cpu flags.

All of it is derived from VmxConfig.vmcs_fields() (the values a VMM writes),
the control table (names of the bits, QEMU spellings) and the settings table.
The VMCS field names are the Linux arch/x86/include/asm/vmx.h spellings
(vmx-facts.md §1.1, S1).
"""

from __future__ import annotations

import re

from .config import VmxConfig, plain
from .settings import SETTINGS
from .vmcs import Vmcs
from .table import CONTROLS_BY_FIELD, FIELDS

# VMCS encodings -> names (Linux vmx.h enum vmcs_field); control fields come from table.py.
VMCS_NAMES: dict[int, str] = {int(v): v.name for v in Vmcs}
for _f in FIELDS:
    VMCS_NAMES[_f.encoding] = _f.c_name


# CR3_TARGET_VALUE<n> follow CR3_TARGET_VALUE0 at every second encoding (SDM: up to 256).
MAX_CR3_TARGETS = 256


def field_width(encoding: int) -> int:
    """Width in bits from encoding bits 14:13 (natural width = 64 on x86-64)."""
    return {0: 16, 1: 64, 2: 32, 3: 64}[(encoding >> 13) & 3]


def vmcs_name(encoding: int) -> str:
    if encoding in VMCS_NAMES:
        return VMCS_NAMES[encoding]
    n, odd = divmod(encoding - Vmcs.CR3_TARGET_VALUE0, 2)
    if 0 <= n < MAX_CR3_TARGETS and not odd:
        return f"CR3_TARGET_VALUE{n}"
    return f"VMCS_FIELD_{encoding:04X}"


def _hex(v: int, width: int) -> str:
    return f"0x{v & ((1 << width) - 1):0{width // 4}x}"


def vmcs_rows(cfg: VmxConfig) -> list[tuple[int, str, int, int]]:
    """[(encoding, name, width, value)] for every field the config determines."""
    return [(enc, vmcs_name(enc), field_width(enc), v & ((1 << field_width(enc)) - 1))
            for enc, v in cfg.vmcs_fields().items()]


def bits_on(cfg: VmxConfig, field: str) -> list[str]:
    v = cfg.controls.get(field, 0)
    return [c.key for c in CONTROLS_BY_FIELD[field] if v & c.mask]


def _bitmap_settings(cfg: VmxConfig) -> dict[str, bool]:
    """Which bitmaps are in use, from the settings table's `needs` controls."""
    use: dict[str, bool] = {}
    for s in SETTINGS:
        if s.table in ("io", "msr") and s.needs:
            use[s.table] = cfg.on(s.needs)
    return use


# ---- raw ------------------------------------------------------------------------------------

def export_raw(cfg: VmxConfig) -> str:
    lines = [f"# vmcfg raw export: profile {cfg.name or '?'} on {cfg.cpu}",
             "# encoding  field                           value"]
    for enc, name, width, v in vmcs_rows(cfg):
        lines.append(f"0x{enc:04x}    {name:<32}{_hex(v, width)}")
    return "\n".join(lines) + "\n"


def raw_json(cfg: VmxConfig) -> list[dict]:
    return [{"encoding": f"0x{enc:04x}", "name": name, "width": width, "value": _hex(v, width)}
            for enc, name, width, v in vmcs_rows(cfg)]


# ---- json -----------------------------------------------------------------------------------

def export_json(resolved) -> dict:
    """The effective profile: every control field bit by bit, every setting, the VMCS values."""
    from .. import __version__
    cfg: VmxConfig = resolved.config
    prof = resolved.profile
    controls = {}
    for f in FIELDS:
        v = cfg.controls[f.key]
        controls[f.key] = {
            "encoding": f"0x{f.encoding:04x}", "value": _hex(v, f.width),
            "active": (cfg.on(f.activated_by) if f.activated_by else True),
            "on": bits_on(cfg, f.key),
            "forced": [c.key for c in CONTROLS_BY_FIELD[f.key]
                       if resolved.forced.get(f.key, 0) & c.mask],
            "reserved_ones": _hex(resolved.reserved.get(f.key, 0), f.width),
        }
    return {
        "vmcfg": __version__,
        "profile": {"name": prof.name, "description": prof.description, "path": prof.path,
                    "extends": prof.extends, "chain": list(prof.chain)},
        "cpu": resolved.caps.name, "valid": resolved.valid,
        "controls": controls,
        "settings": plain(cfg.settings),
        "vmcs": raw_json(cfg),
        "eptp_note": "EPT_POINTER holds the EPTP flags; OR in the PML4 physical address",
    }


# ---- C header -------------------------------------------------------------------------------

def c_ident(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "profile"
    return s if not s[0].isdigit() else f"p_{s}"


def _c_type(width: int) -> str:
    return {16: "uint16_t", 32: "uint32_t", 64: "uint64_t"}[width]


def _c_bytes(name: str, data: bytes) -> list[str]:
    """A byte array: designated initializers for sparse data (C99), else all bytes."""
    nz = [(i, b) for i, b in enumerate(data) if b]
    lines = [f"static const uint8_t {name}[{len(data)}] = {{"]
    if (len(nz) + 5) // 6 <= (len(data) + 15) // 16:
        row: list[str] = []
        for i, b in nz:
            row.append(f"[0x{i:03x}] = 0x{b:02x}")
            if len(row) == 6:
                lines.append("    " + ", ".join(row) + ",")
                row = []
        if row:
            lines.append("    " + ", ".join(row) + ",")
        if not nz:
            lines.append("    0")
    else:
        for off in range(0, len(data), 16):
            chunk = ", ".join(f"0x{b:02x}" for b in data[off:off + 16])
            lines.append(f"    {chunk},  /* 0x{off:03x} */")
    lines.append("};")
    return lines


def export_c(resolved, source: str = "") -> str:
    from .. import __version__
    cfg: VmxConfig = resolved.config
    pid = c_ident(cfg.name or "profile")
    up = pid.upper()
    guard = f"VMCFG_{up}_H"
    lines = [
        "/*",
        f" * VMCS values for the vmcfg profile \"{cfg.name}\"" + (f" ({source})" if source else ""),
        f" * on CPU model {cfg.cpu}, generated by vmcfg {__version__} (vmcfg export --format c).",
        " * The control fields include the forced and reserved-as-1 bits; write each value with",
        " * VMWRITE to its encoding.  Addresses the profile leaves to the VMM (bitmaps, pages) are",
        " * not listed.  EPT_POINTER holds the EPTP flags only: OR in the PML4 physical address.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        "#ifndef VMCFG_VMCS_ENCODINGS",
        "#define VMCFG_VMCS_ENCODINGS",
        "/* VMCS field encodings (Intel SDM Vol. 3D, Appendix B) */",
    ]
    rows = vmcs_rows(cfg)
    for enc, name in sorted(VMCS_NAMES.items()):
        lines.append(f"#define VMCFG_ENC_{name:<34} 0x{enc:04x}u")
    lines += [
        "",
        "struct vmcfg_vmcs_field {",
        "    uint32_t encoding;",
        "    uint64_t value;",
        "};",
        "#endif /* VMCFG_VMCS_ENCODINGS */",
        "",
        f"/* Effective values of profile \"{cfg.name}\" */",
    ]
    for enc, name, width, v in rows:
        fk = next((f.key for f in FIELDS if f.encoding == enc), None)
        comment = ""
        if fk is not None:
            on = bits_on(cfg, fk)
            comment = f"  /* {' | '.join(on) if on else 'no named bits'} */"
        suffix = "ull" if width == 64 else "u"
        lines.append(f"#define VMCFG_{up}_{name:<34} {_hex(v, width)}{suffix}{comment}")
    lines += ["", f"static const struct vmcfg_vmcs_field vmcfg_{pid}_vmcs[] = {{"]
    for enc, name, width, v in rows:
        ref = f"VMCFG_ENC_{name}" if enc in VMCS_NAMES else f"0x{enc:04x}u"
        lines.append(f"    {{ {ref}, VMCFG_{up}_{name} }},")
    lines += ["};",
              f"#define VMCFG_{up}_VMCS_COUNT (sizeof(vmcfg_{pid}_vmcs) / sizeof(vmcfg_{pid}_vmcs[0]))",
              ""]
    use = _bitmap_settings(cfg)
    if use.get("io"):
        a, b = cfg.io_bitmaps()
        lines.append("/* I/O bitmaps A (ports 0x0000-0x7fff) and B (0x8000-0xffff): 1 = exit */")
        lines += _c_bytes(f"vmcfg_{pid}_io_bitmap_a", a)
        lines += _c_bytes(f"vmcfg_{pid}_io_bitmap_b", b)
        lines.append("")
    if use.get("msr"):
        lines.append("/* MSR bitmap: read-low, read-high, write-low, write-high (1 KiB each): 1 = exit */")
        lines += _c_bytes(f"vmcfg_{pid}_msr_bitmap", cfg.msr_bitmap())
        lines.append("")
    lines.append(f"#endif /* {guard} */")
    return "\n".join(lines) + "\n"


# ---- QEMU -------------------------------------------------------------------------------------

# vmcfg model name -> QEMU -cpu model name (models.py follows QEMU's names in lower case).
QEMU_MODEL_NAMES: dict[str, str] = {
    "penryn": "Penryn", "nehalem": "Nehalem", "westmere": "Westmere",
    "sandybridge": "SandyBridge", "ivybridge": "IvyBridge", "haswell": "Haswell",
    "broadwell": "Broadwell", "skylake-client": "Skylake-Client",
    "skylake-server": "Skylake-Server", "cascadelake-server": "Cascadelake-Server",
    "icelake-server": "Icelake-Server", "sapphirerapids": "SapphireRapids",
    "graniterapids": "GraniteRapids", "sierraforest": "SierraForest",
}

# Controls QEMU has no flag for but derives from a CPUID feature (QEMU target/i386/cpu.c:
# "VMX_VM_EXIT_HOST_ADDR_SPACE_SIZE is copied from the LM CPUID bit").
QEMU_FROM_CPUID: dict[str, str] = {
    "exit.host_address_space_size": "lm",
}

# CPUID features a QEMU VMX flag depends on (QEMU feature_dependencies[], vmx-facts.md §2.4):
# without them QEMU filters the VMX flag out.
QEMU_CPUID_DEPS: dict[str, str] = {
    "secondary.rdrand_exiting": "rdrand",
    "secondary.enable_invpcid": "invpcid",
    "secondary.rdseed_exiting": "rdseed",
    "secondary.enable_rdtscp": "rdtscp",
    "secondary.enable_xsaves_xrstors": "xsaves",
    "secondary.enable_user_wait_and_pause": "waitpkg",
    "entry.ia32e_mode_guest": "lm",
    "exit.clear_ia32_bndcfgs": "mpx",
    "entry.load_ia32_bndcfgs": "mpx",
}

# Controls QEMU's named models deliberately leave out because KVM's nested VMX did not
# offer them (QEMU cpu.c comment, vmx-facts.md §5.1): a flag may still be filtered by KVM.
QEMU_MODELS_OMIT: frozenset[str] = frozenset({
    "secondary.pause_loop_exiting", "secondary.ept_violation_ve",
    "secondary.conceal_vmx_from_pt", "exit.conceal_vmx_from_pt", "entry.conceal_vmx_from_pt",
    "secondary.enable_encls_exiting", "secondary.enable_enclv_exiting",
    "secondary.mode_based_execute_control_for_ept", "secondary.use_tsc_scaling",
    "secondary.pt_uses_guest_physical_addresses", "secondary.enable_user_wait_and_pause",
    "entry.load_ia32_rtit_ctl", "exit.clear_ia32_rtit_ctl",
    "secondary.sub_page_write_permissions_for_ept", "entry.entry_to_smm",
    "entry.deactivate_dual_monitor_treatment",
})

# EPT/VMFUNC capability flags (QEMU FEAT_VMX_EPT_VPID_CAPS / FEAT_VMX_VMFUNC names).
QEMU_EPT_WALK = {4: "vmx-page-walk-4", 5: "vmx-page-walk-5"}
QEMU_EPT_AD = "vmx-eptad"
QEMU_EPTP_SWITCHING = "vmx-eptp-switching"


def export_qemu(cfg: VmxConfig, model: str | None = None) -> dict:
    """The -cpu flags an L1 hypervisor needs under QEMU/KVM for `cfg` to be enterable.

    Every control that is 1 needs its `vmx-*` flag (default1 bits are always allowed);
    every default1 control that is 0 needs its inverted flag (vmx-cr3-load-noexit etc.).
    Returns {"model", "flags", "cpuid", "no_flag", "from_cpuid", "omitted_by_models",
    "cmdline"}.
    """
    qmodel = model or QEMU_MODEL_NAMES.get(cfg.cpu, "host")
    flags: list[str] = []
    why: dict[str, str] = {}
    no_flag: list[str] = []
    from_cpuid: list[dict] = []
    cpuid: list[str] = []
    omitted: list[str] = []

    def need(flag: str, reason: str) -> None:
        if flag not in why:
            flags.append(flag)
            why[flag] = reason

    for f in FIELDS:
        if f.activated_by and not cfg.on(f.activated_by):
            continue
        v = cfg.controls.get(f.key, 0)
        for c in CONTROLS_BY_FIELD[f.key]:
            on = bool(v & c.mask)
            if on and c.default1:
                continue                      # always allowed to be 1
            if not on and not c.default1:
                continue                      # always allowed to be 0
            if c.path in QEMU_FROM_CPUID and on:
                from_cpuid.append({"control": c.path, "cpuid": QEMU_FROM_CPUID[c.path]})
                if QEMU_FROM_CPUID[c.path] not in cpuid:
                    cpuid.append(QEMU_FROM_CPUID[c.path])
                continue
            if not c.qemu:
                no_flag.append(c.path)
                continue
            if not on and not c.qemu_inverted:
                no_flag.append(c.path + "=0")
                continue
            need(c.qemu, f"{c.path} = {int(on)}")
            if on and c.path in QEMU_CPUID_DEPS and QEMU_CPUID_DEPS[c.path] not in cpuid:
                cpuid.append(QEMU_CPUID_DEPS[c.path])
            if on and c.path in QEMU_MODELS_OMIT:
                omitted.append(c.path)
    # EPT and VM-function capabilities the settings rely on
    ept_ctl = next((s.needs for s in SETTINGS if s.table == "ept" and s.needs), None)
    if ept_ctl and cfg.on(ept_ctl):
        e = cfg.eptp()
        wl = ((e >> 3) & 7) + 1
        if wl in QEMU_EPT_WALK:
            need(QEMU_EPT_WALK[wl], f"EPT page-walk length {wl}")
        if e >> 6 & 1:
            need(QEMU_EPT_AD, "EPT accessed/dirty flags")
    vf_ctl = next((s.needs for s in SETTINGS if s.table == "vmfunc" and s.needs), None)
    if vf_ctl and cfg.on(vf_ctl) and cfg.vm_function_controls() & 1:
        need(QEMU_EPTP_SWITCHING, "VMFUNC EPTP switching")
    parts = [qmodel] + [f"{c}=on" for c in cpuid] + [f"{fl}=on" for fl in flags]
    return {"model": qmodel, "flags": flags, "reasons": why, "cpuid": cpuid,
            "no_flag": no_flag, "from_cpuid": from_cpuid, "omitted_by_models": omitted,
            "cmdline": "-cpu " + ",".join(parts)}


def export_qemu_text(q: dict) -> str:
    return q["cmdline"] + "\n"
