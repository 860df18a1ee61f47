"""vmcfg matrix PROFILE... [--cpus LIST] [--json]: which CPUs each profile is valid on."""

from __future__ import annotations

import os

import click

from .common import EXIT_INVALID, EXIT_OK, complete_profile, emit_json
from .report import fail, finish, console as rich_console


def complete_cpus(ctx, param, incomplete):
    from ..vmx.models import MODEL_NAMES
    head, _, last = incomplete.rpartition(",")
    pre = head + "," if head else ""
    return [pre + n for n in MODEL_NAMES if n.startswith(last.lower())]


def _caps_list(spec: str | None):
    from ..profile import ProfileError
    from ..profile.capfile import load_capfile
    from ..vmx.models import MODEL_NAMES, get_model, UnknownModel
    if not spec:
        return [get_model(n) for n in MODEL_NAMES]
    out = []
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        if item == "all":
            out += [get_model(n) for n in MODEL_NAMES]
            continue
        if os.path.isfile(item):
            out.append(load_capfile(item))
            continue
        try:
            out.append(get_model(item))
        except UnknownModel as e:
            raise ProfileError(str(e)) from None
    seen, uniq = set(), []
    for c in out:
        key = c.path or c.name
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    return uniq


def cell(res) -> dict:
    if res.valid:
        return {"valid": True, "warnings": len(res.warnings), "rule": None, "message": None}
    v = res.errors[0]
    return {"valid": False, "warnings": len(res.warnings), "rule": v.rule,
            "fields": list(v.fields), "message": v.message, "errors": len(res.errors)}


@click.command()
@click.argument("profiles", nargs=-1, required=True, metavar="PROFILE...",
                shell_complete=complete_profile)
@click.option("--cpus", metavar="LIST", shell_complete=complete_cpus,
              help="Comma-separated CPU models and/or capability files (default: every "
                   "built-in model, see `vmcfg cpus`).")
@click.option("-v", "--verbose", is_flag=True, help="Also print the first failing rule's message "
              "for every invalid cell.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def matrix(profiles, cpus, verbose, as_json):
    """Validate every PROFILE on every CPU model: valid, or the first failing rule.

    Answers "which CPUs will my hypervisor's configuration run on".  A
    profile's own `cpu` key is ignored here.  Exit status: 0 every profile
    is valid on every CPU listed, 1 some cell is invalid, 2 bad usage or
    unreadable input.
    """
    from ..profile import ProfileError, load_profile, resolve_profile
    try:
        caps_list = _caps_list(cpus)
        profs = [(spec, load_profile(spec)) for spec in profiles]
    except ProfileError as e:
        fail(str(e))
    if not caps_list:
        fail("--cpus is empty")
    results: dict[str, dict[str, dict]] = {}
    for spec, prof in profs:
        results[spec] = {c.name: cell(resolve_profile(prof, c)) for c in caps_list}
    all_ok = all(c["valid"] for row in results.values() for c in row.values())
    if as_json:
        emit_json({"cpus": [c.name for c in caps_list],
                   "profiles": [{"spec": s, "path": p.path, "name": p.name} for s, p in profs],
                   "results": results, "all_valid": all_ok})
    else:
        _render(profs, caps_list, results, verbose)
    finish(EXIT_OK if all_ok else EXIT_INVALID)


def _label(spec: str, prof) -> str:
    return prof.name or os.path.splitext(os.path.basename(spec))[0]


def _render(profs, caps_list, results, verbose: bool) -> None:
    from rich.table import Table
    console = rich_console()
    labels = [_label(spec, prof) for spec, prof in profs]
    wide = len(profs) <= 3
    need = max(len(c.name) for c in caps_list) + 4 + sum(
        max(len(lb), 24 if wide else 5) + 3 for lb in labels)
    if need <= console.width:
        t = Table(title="ok = valid; else the first failing rule", title_justify="left")
        t.add_column("CPU", style="bold")
        for lb in labels:
            t.add_column(lb, justify="center")
        for c in caps_list:
            row = [c.name]
            for spec, _ in profs:
                r = results[spec][c.name]
                if r["valid"]:
                    row.append("[green]ok[/green]" + (f" [yellow]({r['warnings']}w)[/yellow]"
                                                      if r["warnings"] else ""))
                else:
                    what = ""
                    if wide and r.get("fields"):
                        what = " " + r["fields"][0]
                    row.append(f"[red]{r['rule']}{what}[/red]")
            t.add_row(*row)
        console.print(t)
        for (spec, prof), lb in zip(profs, labels):
            ok = [c.name for c in caps_list if results[spec][c.name]["valid"]]
            console.print(f"{lb}: valid on {len(ok)}/{len(caps_list)} CPU models")
    else:
        # too many profiles for a grid: one line per profile
        t = Table(title="valid on / first failing rule per CPU", title_justify="left")
        t.add_column("profile", style="bold")
        t.add_column("valid", justify="right")
        t.add_column("invalid on (first failing rule)")
        for (spec, prof), lb in zip(profs, labels):
            row = results[spec]
            ok = sum(1 for r in row.values() if r["valid"])
            bad = [f"{c.name} [red]{row[c.name]['rule']}[/red]" for c in caps_list
                   if not row[c.name]["valid"]]
            t.add_row(lb, f"{ok}/{len(caps_list)}", ", ".join(bad) or "[green]-[/green]")
        console.print(t)
    if verbose:
        for (spec, prof), lb in zip(profs, labels):
            for c in caps_list:
                r = results[spec][c.name]
                if not r["valid"]:
                    console.print(f"{lb} on {c.name}: [red]{r['rule']}[/red] {r['message']}")
