"""vmcfg validate PROFILE... [--cpu MODEL | --caps FILE] [--adjust] [--json]"""

from __future__ import annotations


import click

from .common import (EXIT_INVALID, EXIT_OK, EXIT_USAGE, check_cpu_caps, complete_profile,
                     cpu_options, emit_json, err, render_violations)
from .report import fail, finish, out


@click.command()
@click.argument("profiles", nargs=-1, required=True, metavar="PROFILE...",
                shell_complete=complete_profile)
@cpu_options
@click.option("--adjust", is_flag=True,
              help="Show what the usual coercion (value | allowed0) & allowed1 would do instead "
                   "of rejecting capability violations.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no summary.")
def validate(profiles, cpu, caps_file, adjust, as_json, quiet):
    """Check PROFILE(s) against a CPU's capabilities and every VM-entry rule.

    PROFILE is a file or a built-in profile name.  Exit status: 0 all valid,
    1 some profile invalid, 2 bad usage or unreadable input.
    """
    from ..profile import ProfileError, load_caps, load_profile, resolve_profile

    check_cpu_caps(cpu, caps_file)
    results = []
    unreadable = 0
    invalid = 0
    shared_caps = None
    if caps_file or cpu:
        try:
            shared_caps = load_caps(cpu, caps_file)
        except ProfileError as e:
            fail(str(e))
    for spec in profiles:
        try:
            prof = load_profile(spec)
            caps = shared_caps or load_caps(None, None, prof)
            r = resolve_profile(prof, caps, do_adjust=adjust)
        except ProfileError as e:
            unreadable += 1
            results.append({"profile": spec, "valid": False, "error": e.to_json()})
            if not as_json:
                err(f"{e}", fg="red")
            continue
        if not r.valid:
            invalid += 1
        results.append(r.to_json())
        if not as_json:
            _render(r, adjust, quiet)
    if as_json:
        emit_json(results)
    elif not quiet and len(profiles) > 1:
        ok = len(profiles) - invalid - unreadable
        out(f"{ok} valid, {invalid} invalid, {unreadable} unreadable")
    finish(EXIT_USAGE if unreadable else EXIT_INVALID if invalid else EXIT_OK)


def _render(r, adjust: bool, quiet: bool) -> None:
    from ..vmx.table import FIELDS
    path = r.profile.path
    if adjust and r.adjusted:
        for c in r.adjusted:
            name = c.control or f"{c.field} bit {c.bit}"
            out(f"{path}: adjust: {name} -> {c.new}: {c.reason}", fg="magenta")
    render_violations(r)
    if quiet:
        return
    unchecked = r.unchecked
    if unchecked:
        err(f"{path}: not checked: {r.caps.name} does not report whether it supports "
            f"{len(unchecked)} control{'s' if len(unchecked) != 1 else ''} this profile sets "
            f"({', '.join(unchecked)})", fg="yellow")
    values = " ".join(f"{f.key}={r.config.controls[f.key]:#x}" for f in FIELDS)
    if r.valid:
        w = f" ({len(r.warnings)} warning{'s' if len(r.warnings) != 1 else ''})" if r.warnings else ""
        how = " after adjustment" if adjust and r.adjusted else ""
        if unchecked:
            w += f" ({len(unchecked)} control{'s' if len(unchecked) != 1 else ''} not checked)"
        out(click.style(f"{path}: valid on {r.caps.name}{how}{w}", fg="green") + f"  [{values}]")
    else:
        n = len(r.errors)
        out(click.style(f"{path}: INVALID on {r.caps.name}: {n} error{'s' if n != 1 else ''}",
                        fg="red", bold=True))
