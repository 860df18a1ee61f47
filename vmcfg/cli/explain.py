"""vmcfg explain NAME"""

from __future__ import annotations


import click

from .common import complete_control, emit_json
from .report import fail, out


@click.command()
@click.argument("name", shell_complete=complete_control)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def explain(name, as_json):
    """Explain a control (canonical name or alias), a setting, a rule id (E19),
    an exit reason (number or name) or a raw exit-reason value (0x80000021)."""
    from ..vmx.explain import explain as lookup, suggestions

    doc = lookup(name)
    if doc is None:
        s = suggestions(name)
        fail(f"nothing called {name!r}" + (f"; did you mean {', '.join(s)}?" if s else ""))
    if as_json:
        emit_json(doc)
        return
    _render(doc)


def _render(d: dict) -> None:
    k = d["kind"]
    b = lambda s: click.style(s, bold=True)  # noqa: E731
    if k == "ambiguous":
        out(f"{d['name']!r} names several controls: {', '.join(d['candidates'])}")
        out("use the dotted form, e.g. " + d["candidates"][0])
    elif k == "control":
        out(b(f"{d['control']}") + f" — {d['title']}")
        out(f"  {d['meaning']}")
        out(f"  field: {d['field_title']} (VMCS {d['vmcs_encoding']}), bit {d['bit']} ({d['mask']})"
            + (", default1 (reserved-as-1 without TRUE MSRs)" if d["default1"] else ""))
        if d["activated_by"]:
            out(f"  acts only while {d['activated_by']} is 1")
        al = d["aliases"]
        names = [n for n in [al["qemu"] and (al["qemu"] + (" (inverse sense)" if al["qemu_inverted"] else "")),
                             al["linux"]] + al["other"] if n]
        if names:
            out(f"  aliases: {', '.join(names)}")
        if d["queried_alias_inverted"]:
            out(click.style("  note: the name you gave has the inverse sense (true = may be 0)",
                            fg="yellow"))
        if d["exits"]:
            out("  exits: " + ", ".join(f"{e['reason']} {e['name']}" for e in d["exits"]))
        for r in d["requires"]:
            out(f"  requires {r['control']} ({r['rule']}: {r['title']})")
        for r in d["required_by"]:
            out(f"  required by {r['control']} ({r['rule']})")
        groups: dict[str, list[str]] = {}
        for m, v in d["support"].items():
            groups.setdefault(v, []).append(m)
        for v in ("yes", "default", "forced", "no"):
            if v in groups:
                out(f"  {v:8s}{', '.join(groups[v])}")
    elif k == "rule":
        out(b(f"{d['rule']}") + f" — {d['title']}" + (f" ({d['severity']})" if d["severity"] != "error" else ""))
        out(f"  must hold: {d['holds']}")
        out(f"  from: {d['sdm']}; checked by: {d['source']}" + (f"; stage: {d['stage']}" if d["stage"] != "profile" else ""))
        if d["note"]:
            out(f"  note: {d['note']}")
        if d["alias_of"]:
            out(f"  same check as {d['alias_of']}")
        out(f"  involves: {', '.join(d['fields'])}")
    elif k in ("exit", "exit-reason-value"):
        if k == "exit-reason-value":
            f = d["field"]
            out(b(f"{f['value']:#x}") + f": basic exit reason {f['basic']} ({f['name']})"
                + (f"; flags: {', '.join(f['flags'])}" if f["flags"] else ""))
        out(b(f"exit reason {d['reason']} {d['name']}") + f" — {d['title']}")
        if d["trigger"]:
            out(f"  when: {d['trigger']}")
        if d["controls"]:
            out(f"  controls: {', '.join(d['controls'])}")
    elif k == "setting":
        out(b(d["setting"]) + f" — {d['title']}")
        out(f"  {d['meaning']}")
        out(f"  type: {d['type']}; default: {d['default']!r}"
            + (f"; VMCS {d['vmcs_encoding']}" if d["vmcs_encoding"] else ""))
        if d["needs"]:
            out(f"  takes effect with {d['needs']}")
    elif k == "flag":
        out(b(d["flag"]) + f" — {d['meaning']}")
        out(f"  controls: {', '.join(d['controls'])}")
    elif k == "cpu":
        out(b(d["cpu"]) + f" — {d['title']} ({d['year'] or 'n/a'})")
        out(f"  source: {d['source']}; {d['controls_supported']} controls supported")
        out(f"  see: vmcfg caps {d['cpu']}")
