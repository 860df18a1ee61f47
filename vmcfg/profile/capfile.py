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
from ..vmx.msrs import ALLOWED1_ONLY, MSR_INDEX, MSR_NAMES, parse_msr_name
from ..vmx.table import CONTROLS_BY_FIELD, FIELDS
from .source import ProfileError, load_toml

META_KEYS = {"name", "title", "source", "maxphyaddr", "partial", "year", "notes"}


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
    return CapSet(name=name, msrs=msrs, title=str(meta.get("title", "")),
                  source=str(meta.get("source", path)), maxphyaddr=mp,
                  partial=bool(meta.get("partial", False)), path=path,
                  notes=list(meta.get("notes", [])))


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


_VMXCAP_BIT = re.compile(r"^\s+(.+?)\s+(yes|no|forced|default)\s*$")
_VMXCAP_HEX = re.compile(r"^\s+Hex:\s*(0x[0-9A-Fa-f]+)")

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
    """Rebuild capability MSRs from the text printed by QEMU's vmxcap.

    Control sections list each bit as yes/no/forced/default; the MSRs are
    reconstructed as: forced -> must be 1; default -> the legacy MSR says
    must be 1, the TRUE MSR allows 0; yes -> may be 1; no -> must be 0.
    Capability sections print "Hex: 0x..." which is taken verbatim.
    Reserved default1 bits (not printed by vmxcap) are restored.
    """
    msrs: dict[int, int] = {}
    acc: dict[str, list[int]] = {}     # field -> [legacy must, true must, may]
    saw_default = False
    section: str | int | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            section = _VMXCAP_SECTIONS.get(_norm_title(line))
            if isinstance(section, str):
                acc.setdefault(section, [0, 0, 0])
            continue
        if section is None:
            continue
        h = _VMXCAP_HEX.match(line)
        if h:
            if isinstance(section, int):
                msrs[section] = int(h.group(1), 16)
            continue
        b = _VMXCAP_BIT.match(line)
        if b and isinstance(section, str):
            bit = _vmxcap_bit(section, b.group(1))
            if bit is None:
                continue
            m_ = 1 << bit
            a = acc[section]
            verdict = b.group(2)
            if verdict != "no":
                a[2] |= m_
            if verdict in ("forced", "default"):
                a[0] |= m_
            if verdict == "forced":
                a[1] |= m_
            saw_default |= verdict == "default"
    has_true = bool(msrs.get(0x480, 0) >> 55 & 1) or saw_default
    for f in FIELDS:
        if f.key not in acc:
            continue
        lmust, tmust, may = acc[f.key]
        idx = MSR_INDEX[f.cap_msr]
        if idx in ALLOWED1_ONLY:
            msrs[idx] = may
            continue
        named = sum(c.mask for c in CONTROLS_BY_FIELD[f.key])
        res = f.default1 & ~named
        msrs[idx] = make_msr(lmust | res, may | res)
        if f.true_msr and has_true:
            msrs[MSR_INDEX[f.true_msr]] = make_msr(tmust | res, may | res)
    return msrs


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
    feats = _features_from_flags(flags)
    ept = {k: 1 for fl, k in (("ept_x_only", "execute_only"), ("ept_ad", "accessed_dirty"),
                              ("ept_1gb", "pages_1g"), ("ept_5level", "walk_length_5"),
                              ("invvpid", "invvpid")) if fl in flags}
    if "ept" in flags:
        ept.update(walk_length_4=1, memtype_wb=1, invept=1)
    msrs = msrs_from_features(feats, basic=pack_bits(0x480, true_ctls=1, vmcs_size=4096,
                                                     vmcs_memory_type=6, ins_outs_info=1),
                              misc=pack_bits(0x485, cr3_targets=4, activity_hlt=1),
                              ept_vpid=pack_bits(0x48C, **ept) if ept else 0,
                              vmfunc=1 if "eptp_switching" in flags else 0)
    notes.append("partial: built from the /proc/cpuinfo 'vmx flags' line, which lists only "
                 "the controls Linux knows; BASIC/MISC/EPT details are assumed")
    return CapSet(name="host", msrs=msrs, title="this host (partial)", source=cpuinfo,
                  partial=True, notes=notes)


def _cpuinfo_vmx_flags(path: str = "/proc/cpuinfo") -> list[str] | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("vmx flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        return None
    return None


def _features_from_flags(flags: list[str]) -> dict[str, list[str]]:
    """Map Linux /proc/cpuinfo "vmx flags" names to controls via the table's aliases."""
    from ..vmx.table import resolve_control
    feats: dict[str, list[str]] = {}
    for fl in flags:
        for c, inv in resolve_control(fl):
            if not inv:
                feats.setdefault(c.field, []).append(c.key)
                break
    if feats.get("secondary"):
        feats.setdefault("primary", []).append("activate_secondary_controls")
    return feats
