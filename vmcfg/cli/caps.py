"""vmcfg caps [MODEL | --caps FILE] / caps import / caps diff; vmcfg cpus"""

from __future__ import annotations

import sys

import click

from .common import EXIT_INVALID, EXIT_OK, complete_cpu, default_group, emit_json, err
from .report import fail, finish, out


def _load(spec: str | None, caps_file: str | None):
    """A CPU model name or a capability file path."""
    import os

    from ..profile.capfile import load_capfile
    from ..profile.source import ProfileError
    from ..vmx.models import MODEL_NAMES, UnknownModel, get_model
    try:
        if caps_file:
            return load_capfile(caps_file)
        if spec is None:
            return get_model("cvmm")
        if spec.lower() not in MODEL_NAMES and os.path.exists(spec):
            return load_capfile(spec)
        return get_model(spec)
    except UnknownModel as e:
        err(f"vmcfg: {e} (or give a capability file)", fg="red")
    except ProfileError as e:
        fail(str(e))


@click.group(cls=default_group("show"))
def caps():
    """Decode, import and compare VMX capability sets.

    \b
    vmcfg caps [MODEL | --caps FILE] [--json]   decode like QEMU's vmxcap
    vmcfg caps import SOURCE -o FILE            write a capability file
    vmcfg caps diff A B                         compare control by control
    """


@caps.command("show")
@click.argument("model", required=False, shell_complete=complete_cpu)
@click.option("--caps", "caps_file", metavar="FILE", help="A capability file.")
@click.option("--json", "as_json", is_flag=True)
def show_caps(model, caps_file, as_json):
    """Decode a capability set (yes / no / forced / default per control)."""
    cs = _load(model, caps_file)
    if as_json:
        emit_json(cs.decode())
        return
    _render_caps(cs)


def _render_caps(cs) -> None:
    from ..vmx.msrs import CAP_LAYOUTS, MSR_NAMES
    from ..vmx.table import CONTROLS_BY_FIELD, FIELDS
    colors = {"yes": "green", "no": "red", "forced": "yellow", "default": "cyan",
              "unknown": "magenta"}
    head = f"{cs.name}" + (f" — {cs.title}" if cs.title else "") + (f" ({cs.year})" if cs.year else "")
    out(click.style(head, bold=True))
    if cs.source:
        out(f"source: {cs.source}")
    if cs.partial:
        out(click.style("partial: " + "; ".join(cs.notes or ["incomplete information"]), fg="yellow"))
    for f in FIELDS:
        idx = cs.field_msr(f)
        exists = cs.field_exists(f.key)
        out(click.style(f"\n{f.title} ({MSR_NAMES[idx]} {idx:#x})"
                        + ("" if exists else ": not present"), bold=True))
        if not exists:
            continue
        for c in CONTROLS_BY_FIELD[f.key]:
            v = cs.support(f.key, c.bit)
            out(f"  {c.key:42s} {click.style(v, fg=colors[v])}")
    for idx, layout in CAP_LAYOUTS.items():
        present = cs.msr_exists(idx) and idx in cs.msrs
        out(click.style(f"\n{MSR_NAMES[idx]} ({idx:#x})" + ("" if present else ": not present"),
                        bold=True))
        if not present:
            continue
        v = cs.msr(idx)
        out(f"  Hex: {v:#x}")
        for b in layout:
            x = b.get(v)
            shown = ("unknown" if not cs.is_known(f"{MSR_NAMES[idx]}.{b.key}")
                     else ("yes" if x else "no") if b.is_flag else str(x))
            out(f"  {b.title:52s} {shown}")
    for idx in (0x486, 0x487, 0x488, 0x489, 0x48A):
        if idx in cs.msrs:
            out(f"{MSR_NAMES[idx]:24s} {cs.msr(idx):#x}")
    out(f"MAXPHYADDR {cs.maxphyaddr}")


@caps.command("import")
@click.argument("source", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--host", is_flag=True, help="Read this host's MSRs (/dev/cpu/N/msr or /proc/cpuinfo).")
@click.option("--cpu-index", default=0, show_default=True, help="CPU number for --host.")
@click.option("--format", "fmt", type=click.Choice(["auto", "dump", "vmxcap", "cpuinfo"]),
              default="auto", show_default=True, help="Format of SOURCE.")
@click.option("--section", help="For a file with several dumps ('== name' lines): which one.")
@click.option("--name", help="Name of the capability set (default: from the file name).")
@click.option("-o", "--output", metavar="FILE",
              help="Capability file to write ('-' = stdout; the default without --json).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the imported set decoded as JSON (what `caps --json` shows) instead of "
                   "the capability file; with -o FILE the file is written as well.")
def import_caps(source, host, cpu_index, fmt, section, name, output, force, as_json):
    """Write a capability file from an MSR dump, vmxcap output (with or without its Hex:
    lines), a saved /proc/cpuinfo, or this host.

    What the source does not report (a /proc/cpuinfo lists only some controls) is marked
    unknown: validation checks only what is known and says what it did not check.
    """
    import os

    from ..profile.capfile import dump_capfile, host_caps, import_text
    from ..profile.source import ProfileError, read_text

    if bool(source) == bool(host):
        raise click.UsageError("give exactly one of SOURCE or --host")
    try:
        if host:
            cs = host_caps(cpu_index)
            if name:
                cs.name = name
        else:
            text = sys.stdin.read() if source == "-" else read_text(source)
            cs = import_text(text, source, fmt=fmt, section=section, name=name)
    except ProfileError as e:
        fail(e)
    if output is None and not as_json:
        output = "-"
    text = dump_capfile(cs)
    if output == "-":
        if not as_json:
            sys.stdout.write(text)
            return
        output = None
    if output:
        if os.path.exists(output) and not force:
            fail(ProfileError(f"{output} exists (use --force to overwrite)"))
        from ..profile.atomic import WriteError, atomic_write
        try:
            atomic_write(output, text)
        except WriteError as e:
            fail(ProfileError(e.message, e.path))
        err(f"wrote {output} ({len(cs.msrs)} MSRs{', partial' if cs.partial else ''}"
            f"{f', {len(cs.unknown)} fields unknown' if cs.unknown else ''})")
    for n in cs.notes:
        err(f"note: {n}", fg="yellow")
    if as_json:
        doc = cs.decode()
        doc["output"] = output
        emit_json(doc)


@caps.command("diff")
@click.argument("a", shell_complete=complete_cpu)
@click.argument("b", shell_complete=complete_cpu)
@click.option("--json", "as_json", is_flag=True)
def diff_caps_cmd(a, b, as_json):
    """Compare two capability sets (models or files). Exit 1 when they differ.

    The same comparison as `vmcfg diff A B` on two capability sets."""
    from ..vmx.capdiff import diff_caps
    from .diff import _render
    d = diff_caps(_load(a, None), _load(b, None))
    if as_json:
        emit_json(d)
    else:
        _render(d)
    finish(EXIT_OK if d["equal"] else EXIT_INVALID)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def cpus(as_json):
    """List the built-in CPU models with their year and number of supported controls."""
    from ..vmx.models import all_models
    rows = [{"name": m.name, "title": m.title, "year": m.year,
             "controls": len(m.supported_controls()), "true_ctls": m.has_true_ctls(),
             "source": m.source} for m in all_models()]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out(f"{r['name']:20s} {str(r['year'] or '-'):5s} {r['controls']:3d} controls  {r['title']}")
