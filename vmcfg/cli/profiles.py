"""vmcfg profiles [NAME]: the built-in profile library."""

from __future__ import annotations

import sys

import click

from .common import EXIT_OK, emit_json
from .report import fail, finish, out


def complete_builtin(ctx, param, incomplete):
    from ..profile.loader import builtin_names
    return [n for n in builtin_names() if n.startswith(incomplete)]


def library() -> list[dict]:
    from ..profile.loader import builtin_names, builtin_path, load_file
    out = []
    for n in builtin_names():
        p = builtin_path(n)
        try:
            prof = load_file(p)
            out.append({"name": n, "description": prof.description, "extends": prof.extends,
                        "cpu": prof.cpu, "path": p})
        except Exception as e:     # a broken built-in must not hide the others
            out.append({"name": n, "description": f"(unreadable: {e})", "extends": None,
                        "cpu": None, "path": p})
    return out


@click.command()
@click.argument("name", required=False, shell_complete=complete_builtin)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def profiles(name, as_json):
    """List the built-in profiles with their descriptions, or print one (NAME).

    \b
    Use a built-in profile by name anywhere a PROFILE is expected
    (vmcfg validate io-sandbox), extend it (extends = "io-sandbox"), or
    copy it to edit:  vmcfg new my-sandbox --from io-sandbox
    """
    items = library()
    if name:
        from ..profile.loader import builtin_path
        p = builtin_path(name)
        if p is None:
            import difflib
            hint = difflib.get_close_matches(name, [i["name"] for i in items], n=1)
            fail(f"no built-in profile {name!r}" +
                 (f" (did you mean {hint[0]!r}?)" if hint else ""))
        with open(p, encoding="utf-8") as fh:
            text = fh.read()
        if as_json:
            item = next(i for i in items if i["name"] == name)
            emit_json({**item, "text": text})
        else:
            sys.stdout.write(text)
        finish(EXIT_OK)
    if as_json:
        emit_json(items)
        finish(EXIT_OK)
    width = max([len(i["name"]) for i in items] + [4])
    for i in items:
        ext = f"  (extends {i['extends']})" if i["extends"] else ""
        out(f"{click.style(i['name'].ljust(width), bold=True)}  {i['description']}{ext}")
    finish(EXIT_OK)
