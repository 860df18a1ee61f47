"""vmcfg export PROFILE --format raw|json|c|qemu [-o FILE]"""

from __future__ import annotations

import os
import sys

import click

from .common import (EXIT_INVALID, EXIT_OK, check_cpu_caps, complete_profile, cpu_options,
                     emit_json, err, render_violations)
from .report import fail, finish

FORMATS = ("raw", "json", "c", "qemu")


@click.command()
@click.argument("profile", metavar="PROFILE", shell_complete=complete_profile)
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="raw", show_default=True,
              help="raw: hex value per VMCS field; json: the effective profile; c: a C header; "
                   "qemu: the -cpu flags for nested KVM.")
@cpu_options
@click.option("-o", "--output", metavar="FILE", help="Write to FILE (atomically) instead of stdout.")
@click.option("--qemu-model", metavar="NAME",
              help="QEMU -cpu model for --format qemu (default: the QEMU name of the CPU model, "
                   "else 'host').")
@click.option("--force", is_flag=True, help="Export even if the profile is invalid on the CPU.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable form of the chosen format on stdout (for c: the text in a "
                   "JSON document).")
def export(profile, fmt, cpu, caps_file, output, qemu_model, force, as_json):
    """Export PROFILE's effective values for use outside vmcfg.

    \b
    raw   one line per VMCS field: encoding, name, value (hex)
    json  the effective profile: every control field bit by bit, the
          forced bits, all settings, the VMCS values
    c     a C header: VMCS field encodings, the 16/32/64-bit values, a
          {encoding, value} table and the I/O and MSR bitmaps as byte arrays
    qemu  the `-cpu MODEL,vmx-...=on` flags an L1 hypervisor must be given
          under QEMU/KVM nested virtualization for this profile to be
          enterable there; controls without a QEMU flag are listed
    The profile is validated first (--cpu/--caps, else its cpu, else cvmm);
    an invalid profile is not exported unless --force.
    Exit status: 0 exported, 1 invalid profile, 2 bad usage or unreadable input.
    """
    from ..profile import ProfileError, load_caps, load_profile, resolve_profile
    from ..vmx import export as ex

    check_cpu_caps(cpu, caps_file)
    try:
        prof = load_profile(profile)
        caps = load_caps(cpu, caps_file, prof)
        res = resolve_profile(prof, caps)
    except ProfileError as e:
        fail(str(e))
    if not res.valid:
        render_violations(res)
        if not force:
            err(click.style(f"vmcfg: {prof.path}: not exported: invalid on {caps.name} "
                            f"(use --force to export anyway)", fg="red", bold=True))
            finish(EXIT_INVALID)
        err(click.style(f"vmcfg: {prof.path}: exporting an INVALID profile (--force)",
                        fg="yellow", bold=True))
    cfg = res.config
    notes: list[str] = []
    if fmt == "raw":
        text = ex.export_raw(cfg)
        doc = {"format": "raw", "profile": prof.path, "cpu": caps.name,
               "fields": ex.raw_json(cfg)}
    elif fmt == "json":
        doc = ex.export_json(res)
        import json
        text = json.dumps(doc, indent=2) + "\n"
    elif fmt == "c":
        text = ex.export_c(res, os.path.basename(prof.path or profile))
        doc = {"format": "c", "profile": prof.path, "cpu": caps.name, "text": text}
    else:
        q = ex.export_qemu(cfg, qemu_model)
        text = ex.export_qemu_text(q)
        doc = {"format": "qemu", "profile": prof.path, "cpu": caps.name, **q}
        if q["no_flag"]:
            notes.append("no QEMU flag for: " + ", ".join(q["no_flag"]) +
                         " (QEMU cannot be told to offer these; the L1 hypervisor gets them "
                         "only if the host and KVM provide them)")
        for fc in q["from_cpuid"]:
            notes.append(f"{fc['control']} has no vmx-* flag: QEMU derives it from the CPUID "
                         f"flag '{fc['cpuid']}' (included)")
        if q["omitted_by_models"]:
            notes.append("QEMU's CPU models leave out " + ", ".join(q["omitted_by_models"]) +
                         " (KVM's nested VMX may not offer them; check the L1's vmxcap)")
        if q["model"] == "host":
            notes.append("no QEMU model for cpu " + caps.name + ": using -cpu host "
                         "(use --cpu MODEL or --qemu-model NAME)")
    if output and output != "-":
        from ..profile.atomic import WriteError, atomic_write
        try:
            atomic_write(output, (json_text(doc) if as_json else text))
        except WriteError as e:
            fail(str(e))
        err(f"wrote {output} ({fmt})")
    elif as_json:
        emit_json(doc)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    for n in notes:
        err(f"note: {n}", fg="yellow")
    finish(EXIT_OK)


def json_text(doc) -> str:
    import json
    return json.dumps(doc, indent=2) + "\n"
