"""vmcfg show PROFILE [--cpu MODEL | --caps FILE] [--json]"""

from __future__ import annotations


import click

from .common import EXIT_OK, check_cpu_caps, complete_profile, cpu_options, emit_json
from .report import fail, finish, console


def bit_states(r) -> dict[str, list[dict]]:
    """Per field, every named bit: on / off / forced / unsupported (+ reserved bits)."""
    from ..vmx.table import CONTROLS_BY_FIELD, FIELDS, NAMED_MASK
    out: dict[str, list[dict]] = {}
    for f in FIELDS:
        v = r.config.controls[f.key]
        must, may = r.caps.allowed(f.key)
        rows = []
        for c in CONTROLS_BY_FIELD[f.key]:
            on = bool(v & c.mask)
            if r.forced.get(f.key, 0) & c.mask:
                state = "forced"
            elif not may & c.mask:
                state = "unsupported" + (" (set!)" if on else "")
            else:
                state = "on" if on else "off"
            rows.append({"control": c.path, "bit": c.bit, "value": int(on), "state": state,
                         "explicit": r.explicit.get(c.path)})
        res = v & ~NAMED_MASK[f.key]
        if res:
            rows.append({"control": None, "bit": None, "value": res, "state": "reserved",
                         "explicit": None})
        out[f.key] = rows
    return out


@click.command()
@click.argument("profile", shell_complete=complete_profile)
@cpu_options
@click.option("--all", "show_all", is_flag=True, help="Also list controls that are off.")
@click.option("--json", "as_json", is_flag=True)
def show(profile, cpu, caps_file, show_all, as_json):
    """Show a profile's effective controls field by field with raw values."""
    from ..profile import ProfileError, resolve
    from ..vmx.table import FIELDS

    check_cpu_caps(cpu, caps_file)
    try:
        r = resolve(profile, cpu, caps_file)
    except ProfileError as e:
        fail(str(e))
    states = bit_states(r)
    if as_json:
        doc = r.to_json()
        doc["bits"] = states
        doc["settings"] = r.config.to_json()["settings"]
        emit_json(doc)
        return
    from rich.table import Table
    con = console()
    colors = {"on": "green", "forced": "yellow", "off": "dim", "reserved": "blue"}
    con.print(f"[bold]{r.profile.path}[/] on [bold]{r.caps.name}[/]: "
              + ("[green]valid[/]" if r.valid else f"[red]INVALID ({len(r.errors)} errors)[/]"))
    for f in FIELDS:
        v = r.config.controls[f.key]
        act = "" if not f.activated_by or r.config.on(f.activated_by) else " [yellow](inactive)[/]"
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column("bit", justify="right")
        t.add_column("control")
        t.add_column("state")
        shown = 0
        for row in states[f.key]:
            if row["state"] == "off" and not show_all:
                continue
            if row["state"].startswith("unsupported") and not row["value"] and not show_all:
                continue
            shown += 1
            st = row["state"]
            color = colors.get(st, "red")
            if row["control"] is None:
                t.add_row("", "reserved default1 bits", f"[{color}]{row['value']:#x}[/]")
            else:
                t.add_row(str(row["bit"]), row["control"].split(".", 1)[1], f"[{color}]{st}[/]")
        con.print(f"[bold]\\[{f.key}][/] {f.title} = [bold]{v:#010x}[/]{act}"
                  + ("" if shown else "  (all off)"))
        if shown:
            con.print(t)
    defaults = __import__("vmcfg.vmx.settings", fromlist=["default_settings"]).default_settings()
    changed = [(t, k, val) for t, kv in r.config.settings.items() for k, val in kv.items()
               if defaults.get(t, {}).get(k) != val]
    if changed:
        con.print("[bold]settings[/] (non-default)")
        for t, k, val in changed:
            con.print(f"  {t}.{k} = {val!r}")
    finish(EXIT_OK)
