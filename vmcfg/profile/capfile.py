"""Capability files (`--caps FILE`) and `vmcfg caps import` sources.

A capability file is TOML:

    [capabilities]            # optional metadata
    name = "my-host"
    maxphyaddr = 46
    partial = false
    source = "..."

    [msr]
    0x481 = 0x0000007F00000016
    IA32_VMX_PROCBASED_CTLS = 0xFFF9FFFE0401E172

Import sources: a raw MSR dump in the format of real-msr-dumps.txt, the text
printed by QEMU's scripts/kvm/vmxcap, or this host (/dev/cpu/N/msr, else the
"vmx flags" line of /proc/cpuinfo, marked partial).
"""

from __future__ import annotations

import os
import re
import struct

from ..vmx.caps import CapSet, make_msr, msrs_from_features, pack_bits
from ..vmx.msrs import ALLOWED1_ONLY, CAP_LAYOUTS, MSR_INDEX, MSR_NAMES, parse_msr_name
from ..vmx.table import CONTROLS, CONTROLS_BY_FIELD, CPUINFO_AGGREGATES, FIELDS
from .source import ProfileError, load_toml

META_KEYS = {"name", "title", "source", "maxphyaddr", "partial", "year", "notes", "unknown"}


def _unknown_names() -> set[str]:
    from ..vmx.table import CONTROL_BY_PATH
    names = set(CONTROL_BY_PATH)
    for idx, layout in CAP_LAYOUTS.items():
        names |= {f"{MSR_NAMES[idx]}.{b.key}" for b in layout}
    return names


def load_capfile(path: str) -> CapSet:
    data, pos = load_toml(path)

    def at(*k):
        p = pos.get(tuple(k)) or pos.get(tuple(k[:1]))
        return (p.line, p.col) if p else (None, None)

    for top in data:
        if top not in ("msr", "capabilities"):
            raise ProfileError(f"unknown table {top!r} in a capability file (expected [msr] "
                               f"and optionally [capabilities])", path, *at(top))
    if "msr" not in data or not isinstance(data["msr"], dict):
        raise ProfileError("a capability file needs an [msr] table", path)
    msrs: dict[int, int] = {}
    for k, v in data["msr"].items():
        idx = parse_msr_name(str(k))
        if idx is None or idx not in MSR_NAMES:
            raise ProfileError(f"unknown VMX capability MSR {k!r} (expected 0x480-0x493 or a "
                               f"name like IA32_VMX_PINBASED_CTLS)", path, *at("msr", k))
        if isinstance(v, str):
            try:
                v = int(v.replace("_", "").replace(":", ""), 16 if ":" in v else 0)
            except ValueError:
                raise ProfileError(f"msr {k}: expected a 64-bit integer, got {v!r}", path,
                                   *at("msr", k)) from None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
            raise ProfileError(f"msr {k}: expected a 64-bit unsigned integer", path, *at("msr", k))
        msrs[idx] = v
    meta = data.get("capabilities", {})
    for k in meta:
        if k not in META_KEYS:
            raise ProfileError(f"unknown key {k!r} in [capabilities]", path, *at("capabilities", k))
    name = str(meta.get("name") or os.path.splitext(os.path.basename(path))[0])
    mp = meta.get("maxphyaddr", 46)
    if isinstance(mp, bool) or not isinstance(mp, int) or not 32 <= mp <= 52:
        raise ProfileError("capabilities.maxphyaddr must be an integer 32-52", path,
                           *at("capabilities", "maxphyaddr"))
    unknown = meta.get("unknown", [])
    valid = _unknown_names()
    if not isinstance(unknown, list) or any(not isinstance(u, str) or u not in valid
                                            for u in unknown):
        bad = [u for u in unknown if u not in valid] if isinstance(unknown, list) else [unknown]
        raise ProfileError(f"capabilities.unknown must list control paths (pin.nmi_exiting) or "
                           f"capability fields (IA32_VMX_MISC.cr3_targets); not {bad[0]!r}",
                           path, *at("capabilities", "unknown"))
    return CapSet(name=name, msrs=msrs, title=str(meta.get("title", "")),
                  source=str(meta.get("source", path)), maxphyaddr=mp,
                  partial=bool(meta.get("partial", False)) or bool(unknown), path=path,
                  notes=list(meta.get("notes", [])), unknown=set(unknown))


def dump_capfile(caps: CapSet) -> str:
    """TOML text of a capability file (comments name each MSR)."""
    lines = ["# vmcfg capability file", "[capabilities]", f'name = "{caps.name}"']
    if caps.title:
        lines.append(f'title = "{caps.title}"')
    if caps.source:
        lines.append(f"source = {_q(caps.source)}")
    lines.append(f"maxphyaddr = {caps.maxphyaddr}")
    lines.append(f"partial = {'true' if caps.partial else 'false'}")
    if caps.notes:
        lines.append("notes = [" + ", ".join(_q(n) for n in caps.notes) + "]")
    if caps.unknown:
        lines.append("# not reported by the source: left open, and not checked by validate")
        lines.append("unknown = [" + ",".join(f"\n    {_q(u)}" for u in sorted(caps.unknown))
                     + ",\n]")
    lines += ["", "[msr]"]
    for idx in sorted(caps.msrs):
        lines.append(f"0x{idx:X} = 0x{caps.msrs[idx]:016X}  # {MSR_NAMES.get(idx, '?')}")
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- import parsers ------------------------------------------------------------------

_DUMP_LINE = re.compile(
    r"MSR\s+0*([0-9A-Fa-f]{3,8})\s*:\s*([0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}|"
    r"[0-9A-Fa-f]{1,8}\s+[0-9A-Fa-f]{1,8}|[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,8})")


def parse_msr_dump(text: str) -> dict[str, dict[int, int]]:
    """Parse raw MSR dumps ("MSR 00000481 : 0000007F 00000016" and variants).

    Returns {section title: {index: value}}; sections are introduced by lines
    starting with "==" (as in real-msr-dumps.txt); a plain dump is one section "".
    """
    sections: dict[str, dict[int, int]] = {}
    cur = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("=="):
            cur = s.strip("= ").strip()
            continue
        m = _DUMP_LINE.search(s)
        if not m:
            continue
        idx = int(m.group(1), 16)
        val = m.group(2)
        if "-" in val:
            v = int(val.replace("-", ""), 16)
        else:
            hi, lo = re.split(r"[\s:]+", val)
            v = (int(hi, 16) << 32) | int(lo, 16)
        if idx in MSR_NAMES:
            sections.setdefault(cur, {})[idx] = v
    return sections


_VMXCAP_LINE = re.compile(r"^\s+(.+?)\s+(\S+)\s*$")
_VMXCAP_HEX = re.compile(r"^\s+Hex:\s*(0x[0-9A-Fa-f]+)\s*$")
_VERDICTS = ("yes", "no", "forced", "default")

# vmxcap's section names (scripts/kvm/vmxcap) -> control field or capability MSR.
_VMXCAP_SECTIONS: dict[str, str | int] = {
    "basic vmx information": 0x480,
    "pin based controls": "pin",
    "primary processor based controls": "primary",
    "secondary processor based controls": "secondary",
    "tertiary processor based controls": "tertiary",
    "vm exit controls": "exit",
    "secondary vm exit controls": 0x493,
    "vm entry controls": "entry",
    "miscellaneous data": 0x485,
    "vpid and ept capabilities": 0x48C,
    "vm functions": 0x491,
}


def parse_vmxcap(text: str) -> dict[int, int]:
    """Rebuild capability MSRs from the text printed by QEMU's vmxcap."""
    return vmxcap_caps(text).msrs


def vmxcap_caps(text: str, name: str = "imported", source: str = "vmxcap output") -> CapSet:
    """A capability set from vmxcap's text, with or without its `Hex:` lines.

    Control sections list each bit as yes/no/forced/default; the MSRs are
    reconstructed as: forced -> must be 1; default -> the legacy MSR says
    must be 1, the TRUE MSR allows 0; yes -> may be 1; no -> must be 0.
    Reserved default1 bits (not printed by vmxcap) are restored.  A control
    of a printed section that the text does not list (vmxcap knows fewer
    controls than vmcfg) is "unknown".

    BASIC, MISC, EPT/VPID and VMFUNC are taken from their `Hex:` line when
    there is one; without it (older vmxcap, or a capture with the lines cut)
    they are rebuilt from the field lines (`Revision 4`, `HLT activity state
    yes`, ...).  Fields that neither says are "unknown".
    """
    msrs: dict[int, int] = {}
    notes: list[str] = []
    unknown: set[str] = set()
    acc: dict[str, list[int]] = {}     # field -> [legacy must, true must, may, listed]
    fields: dict[int, dict[str, int]] = {}   # capability MSR -> {layout key: value}
    hexes: dict[int, int] = {}
    saw_default = False
    section: str | int | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            section = _VMXCAP_SECTIONS.get(_norm_title(line))
            if isinstance(section, str):
                acc.setdefault(section, [0, 0, 0, 0])
            elif isinstance(section, int):
                fields.setdefault(section, {})
            continue
        if section is None:
            continue
        h = _VMXCAP_HEX.match(line)
        if h:
            if isinstance(section, int):
                hexes[section] = int(h.group(1), 16)
            continue
        m = _VMXCAP_LINE.match(line)
        if not m:
            continue
        title, value = m.group(1), m.group(2).lower()
        if isinstance(section, str):
            if value not in _VERDICTS:
                continue
            bit = _vmxcap_bit(section, title)
            if bit is None:
                continue
            m_ = 1 << bit
            a = acc[section]
            a[3] |= m_
            if value != "no":
                a[2] |= m_
            if value in ("forced", "default"):
                a[0] |= m_
            if value == "forced":
                a[1] |= m_
            saw_default |= value == "default"
        elif section in CAP_LAYOUTS:
            b = _vmxcap_capbit(section, title)
            if b is None:
                continue
            if value in ("yes", "no"):
                v = int(value == "yes")
            else:
                try:
                    v = int(value, 0)
                except ValueError:
                    continue
            fields[section][b.key] = v
    for idx, got in fields.items():
        if idx not in CAP_LAYOUTS:
            continue
        layout = CAP_LAYOUTS[idx]
        if idx in hexes:
            v = hexes[idx]
            bad = [b.key for b in layout if b.key in got and b.get(v) != got[b.key]]
            if bad:
                notes.append(f"{MSR_NAMES[idx]}: the Hex: line disagrees with the lines for "
                             f"{', '.join(bad)}; the Hex: value was kept")
            msrs[idx] = v
            continue
        v = 0
        for b in layout:
            if b.key in got:
                v = b.put(v, got[b.key])
            else:
                unknown.add(f"{MSR_NAMES[idx]}.{b.key}")
        msrs[idx] = v
        notes.append(f"{MSR_NAMES[idx]} rebuilt from vmxcap's field lines (no Hex: line; "
                     f"bits vmxcap does not print are taken as 0)")
    for idx in (0x493,):
        if idx in hexes:
            msrs[idx] = hexes[idx]
    basic = msrs.get(0x480, 0)
    true_known = "IA32_VMX_BASIC.true_ctls" not in unknown and 0x480 in msrs
    has_true = bool(basic >> 55 & 1) if true_known else saw_default
    for f in FIELDS:
        if f.key not in acc:
            continue
        lmust, tmust, may, listed = acc[f.key]
        for c in CONTROLS_BY_FIELD[f.key]:
            if not listed & c.mask:
                unknown.add(c.path)
        idx = MSR_INDEX[f.cap_msr]
        if idx in ALLOWED1_ONLY:
            msrs[idx] = may
            continue
        named = sum(c.mask for c in CONTROLS_BY_FIELD[f.key])
        res = f.default1 & ~named
        msrs[idx] = make_msr(lmust | res, may | res)
        if f.true_msr and has_true:
            msrs[MSR_INDEX[f.true_msr]] = make_msr(tmust | res, may | res)
    unk_ctl = sorted(u for u in unknown if "." in u and not u.startswith("IA32_"))
    if unk_ctl:
        notes.append(f"{len(unk_ctl)} controls are not listed in this vmxcap output "
                     f"(reported as unknown)")
    return CapSet(name=name, msrs=msrs, source=source, notes=notes, unknown=unknown,
                  partial=bool(unknown))


def _vmxcap_capbit(index: int, title: str):
    t = _norm_title(title)
    t = _VMXCAP_FIELD_ALIASES.get(t, t)
    for b in CAP_LAYOUTS[index]:
        if _norm_title(b.title) == t or b.key == t.replace(" ", "_"):
            return b
    return None


# vmxcap's titles for capability-MSR fields that differ from vmcfg's.
_VMXCAP_FIELD_ALIASES = {"revision": "vmcs revision identifier"}


def _norm_title(t: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", t.lower()).strip()


# vmxcap's printed titles differ from the SDM titles in a few places.
_VMXCAP_TITLE_ALIASES = {
    "interrupt window exiting": "interrupt-window exiting",
    "apic register emulation": "apic-register virtualization",
    "virtual interrupt delivery": "virtual-interrupt delivery",
    "activate secondary control": "activate secondary controls",
    "enable ipi virtualization": "ipi virtualization",
    "conceal non root operation from pt": "conceal vmx from pt",
    "conceal vm exits from pt": "conceal vmx from pt",
    "conceal vm entries from pt": "conceal vmx from pt",
    "mode based execute control xs xu": "mode-based execute control for ept",
    "sub page write permissions": "sub-page write permissions for ept",
    "gpa translation for pt": "intel pt uses guest physical addresses",
    "tsc scaling": "use tsc scaling",
    "enclv exiting": "enable enclv exiting",
    "user wait and pause": "enable user wait and pause",
    "external interrupt exiting": "external-interrupt exiting",
    "rdtsc exiting": "rdtsc exiting",
}


def _vmxcap_bit(field: str, title: str) -> int | None:
    t = _norm_title(title)
    t = _norm_title(_VMXCAP_TITLE_ALIASES.get(t, t))
    for c in CONTROLS_BY_FIELD[field]:
        if _norm_title(c.title) == t:
            return c.bit
    return None


def host_caps(cpu: int = 0, *, dev: str | None = None, cpuinfo: str = "/proc/cpuinfo") -> CapSet:
    """This machine's VMX capabilities: /dev/cpu/N/msr, else /proc/cpuinfo (partial)."""
    dev = dev or f"/dev/cpu/{cpu}/msr"
    msrs: dict[int, int] = {}
    notes: list[str] = []
    try:
        fd = os.open(dev, os.O_RDONLY)
        try:
            for idx in MSR_NAMES:
                try:
                    raw = os.pread(fd, 8, idx)
                except OSError:
                    continue          # MSR not implemented on this CPU
                if len(raw) == 8:
                    msrs[idx] = struct.unpack("<Q", raw)[0]
        finally:
            os.close(fd)
    except OSError as e:
        notes.append(f"{dev} not readable ({e.strerror}); used /proc/cpuinfo vmx flags")
    if msrs.get(0x480):
        return CapSet(name="host", msrs=msrs, title="this host", source=dev)
    flags = _cpuinfo_vmx_flags(cpuinfo)
    if flags is None:
        raise ProfileError("this host reports no VMX capabilities: /dev/cpu/0/msr is not "
                           "readable (try 'modprobe msr' as root) and /proc/cpuinfo has no "
                           "'vmx flags' line (no VT-x, or not exposed to this machine)")
    cs = cpuinfo_caps(flags, name="host", source=cpuinfo)
    cs.notes[:0] = notes
    return cs


def cpuinfo_caps(flags: list[str], *, name: str = "host", source: str = "/proc/cpuinfo") -> CapSet:
    """A partial capability set from Linux's /proc/cpuinfo "vmx flags".

    Linux shows only some controls there (those with a quoted name in
    vmxfeatures.h; the table's `cpuinfo` names).  A control with a flag is
    supported when the flag is listed and unsupported when it is not; every
    other control -- and BASIC/MISC/EPT fields without a flag -- is unknown:
    its settings are left open (may be 1, need not be 1) and validation
    checks only what is known.
    """
    fl = set(flags)
    unknown: set[str] = set()
    feats: dict[str, list[str]] = {}
    known_missing = 0
    for f in FIELDS:
        for c in CONTROLS_BY_FIELD[f.key]:
            if c.cpuinfo:
                if c.cpuinfo in fl:
                    feats.setdefault(f.key, []).append(c.key)
                else:
                    known_missing += 1
            else:
                unknown.add(c.path)
    for agg, paths in CPUINFO_AGGREGATES.items():
        if agg in fl:
            for p in paths:
                fk, key = p.split(".")
                if key not in feats.get(fk, []):
                    feats.setdefault(fk, []).append(key)
    if feats.get("secondary"):
        feats.setdefault("primary", []).append("activate_secondary_controls")
        unknown.discard("primary.activate_secondary_controls")
    if feats.get("tertiary"):
        feats.setdefault("primary", []).append("activate_tertiary_controls")
        unknown.discard("primary.activate_tertiary_controls")
    caps_bits: dict[int, dict[str, int]] = {0x480: {}, 0x485: {}, 0x48C: {}, 0x491: {}}
    for idx, layout in CAP_LAYOUTS.items():
        for b in layout:
            if b.cpuinfo:
                caps_bits[idx][b.key] = int(b.cpuinfo in fl)
            else:
                unknown.add(f"{MSR_NAMES[idx]}.{b.key}")
    # BASIC says TRUE MSRs exist (the field is unknown: permissive either way) so that
    # default1 controls whose clearability is unknown are not forced to 1.
    basic = pack_bits(0x480, true_ctls=1)
    ept = pack_bits(0x48C, **caps_bits[0x48C])
    msrs = msrs_from_features(feats, basic=basic, misc=0, ept_vpid=ept,
                              vmfunc=pack_bits(0x491, **caps_bits[0x491]))
    for idx in (0x486, 0x487, 0x488, 0x489, 0x48A):
        msrs.pop(idx, None)
    n_ctl = sum(1 for u in unknown if not u.startswith("IA32_"))
    notes = [f"built from the /proc/cpuinfo 'vmx flags' line, which shows "
             f"{sum(1 for c in CONTROLS if c.cpuinfo)} of {len(CONTROLS)} controls; the other "
             f"{n_ctl} controls and most BASIC/MISC/EPT fields are unknown (not checked)"]
    return CapSet(name=name, msrs=msrs, title=f"{name} (partial: /proc/cpuinfo)", source=source,
                  partial=True, notes=notes, unknown=unknown)


def parse_cpuinfo(text: str) -> list[str] | None:
    """The "vmx flags" of a saved /proc/cpuinfo (first CPU), or None."""
    for line in text.splitlines():
        if line.startswith("vmx flags"):
            return line.split(":", 1)[1].split()
    return None


def _cpuinfo_vmx_flags(path: str = "/proc/cpuinfo") -> list[str] | None:
    try:
        with open(path) as fh:
            return parse_cpuinfo(fh.read())
    except OSError:
        return None


def detect_format(text: str) -> str:
    """"cpuinfo", "vmxcap" or "dump" for the text of an import source."""
    if parse_cpuinfo(text) is not None:
        return "cpuinfo"
    if "MSR 0" not in text.upper() and re.search(r"^(pin[- ]based|primary processor)", text,
                                                   re.I | re.M):
        return "vmxcap"
    return "dump"


def import_text(text: str, source: str, *, fmt: str = "auto", section: str | None = None,
                name: str | None = None) -> CapSet:
    """A capability set from the text of an MSR dump, vmxcap output or a saved
    /proc/cpuinfo (`fmt` auto-detects).  Raises ProfileError naming `source`."""
    if fmt == "auto":
        fmt = detect_format(text)
    base = name or (os.path.splitext(os.path.basename(source))[0] if source != "-" else "imported")
    if fmt == "cpuinfo":
        flags = parse_cpuinfo(text)
        if flags is None:
            raise ProfileError("no 'vmx flags' line (expected a saved /proc/cpuinfo of an "
                               "Intel CPU with VT-x)", source)
        return cpuinfo_caps(flags, name=base, source=f"/proc/cpuinfo: {source}")
    if fmt == "vmxcap":
        cs = vmxcap_caps(text, base, f"vmxcap output: {source}")
        if 0x481 not in cs.msrs:
            raise ProfileError("no vmxcap control sections found", source)
    else:
        sections = parse_msr_dump(text)
        if not sections:
            raise ProfileError("no VMX capability MSR lines found (expected lines like "
                               "'MSR 00000481: 0000007F 00000016')", source)
        if section is None and len(sections) > 1:
            raise ProfileError("several dumps in this file; choose one with --section: "
                               + ", ".join(repr(s) for s in sections), source)
        key = section if section is not None else next(iter(sections))
        match = [s for s in sections if key and key in s] if key not in sections else [key]
        if not match:
            raise ProfileError(f"no section {section!r}; sections: "
                               + ", ".join(repr(s) for s in sections), source)
        cs = CapSet(name=name or (os.path.splitext(os.path.basename(match[0]))[0]
                                  if match[0] else base),
                    msrs=sections[match[0]],
                    source=f"MSR dump: {source}" + (f" [{match[0]}]" if match[0] else ""))
    if 0x480 not in cs.msrs:
        cs.partial = True
        cs.notes.append("no IA32_VMX_BASIC in the source")
    return cs
