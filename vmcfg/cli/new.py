"""vmcfg new NAME [--from PROFILE] [--cpu MODEL] [--want KEY ...] [-o FILE] [--force]"""

from __future__ import annotations

import copy
import os
import sys

import click

from .common import (EXIT_INVALID, EXIT_OK, complete_profile, cpu_options, emit_json, err, fail,
                     load_shared_caps, render_violations)
from .report import finish

DEFAULT_BASE = "baseline"


def complete_want(ctx, param, incomplete):
    from ..vmx.closure import all_wantable
    return [k for k in all_wantable() if k.startswith(incomplete)]


def _split_wants(wants: tuple[str, ...]) -> list[str]:
    out = []
    for w in wants:
        head, eq, val = w.partition("=")
        parts = [p.strip() for p in head.split(",")]
        if eq:
            parts[-1] = f"{parts[-1]}={val}"
        out += [p for p in parts if p]
    return out


def _flatten(prof, name: str):
    """A copy of a loaded (merged) profile as a standalone one named `name`."""
    from ..profile.loader import Profile
    return Profile(path=None, name=name, description=prof.description, extends=None,
                   cpu=prof.cpu, controls=copy.deepcopy(prof.controls), raw=dict(prof.raw),
                   settings=copy.deepcopy(prof.settings))


@click.command()
@click.argument("name")
@click.option("--from", "from_", metavar="PROFILE", shell_complete=complete_profile,
              help=f"Start from this profile (file or built-in name; default: the built-in "
                   f"'{DEFAULT_BASE}', minus anything the CPU lacks). Its effective settings "
                   f"are copied (the new file does not 'extends' it).")
@cpu_options
@click.option("-w", "--want", "wants", multiple=True, metavar="KEY[=VALUE]",
              shell_complete=complete_want,
              help="A control or setting you want (repeatable; comma-separated names allowed). "
                   "Everything it needs is added from the VM-entry rules.")
@click.option("-d", "--description", help="profile.description of the new profile.")
@click.option("-o", "--output", metavar="FILE",
              help="File to write (default: NAME.toml; '-' for stdout).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def new(name, from_, cpu, caps_file, wants, description, output, force, as_json):
    """Write a new, valid, commented profile NAME.

    \b
    Every control the target CPU supports is listed with its one-line
    meaning, set or commented out.  --want (TABLE.CONTROL, any alias of a
    control, or a setting such as tsc.offset=-5000) resolves the dependency
    closure from the inter-control rules and prints each control it added
    and the rule that required it.  When the CPU cannot provide something,
    nothing is written and the missing capability is named.
    Exit status: 0 written, 1 impossible (CPU lacks a capability, conflicting
    rules, the result would be invalid) or the file exists (without --force),
    2 bad usage or unreadable input.
    """
    from ..profile import ProfileError, load_caps, load_profile, resolve_profile
    from ..profile.atomic import WriteError, atomic_write
    from ..profile.keys import EditError, SettingTarget, parse_value
    from ..profile.loader import load_profile_text
    from ..profile.loader import builtin_path, normalize_setting
    from ..profile.resolve import effective
    from ..profile.writer import render_new_profile
    from ..vmx.closure import ClosureError, closure, resolve_want
    from ..vmx.kinds import kind_of
    from ..vmx.settings import SETTING_BY_PATH
    from ..vmx.table import CONTROL_BY_PATH

    # ---- names and paths
    if name.endswith(".toml") or "/" in name:
        out_path = output or name
        name = os.path.splitext(os.path.basename(name))[0]
    else:
        out_path = output or f"{name}.toml"
    if not name:
        fail("NAME must not be empty")
    to_stdout = out_path == "-"
    if to_stdout and as_json:
        fail("--json and -o - both use stdout; choose one")
    if not to_stdout and os.path.exists(out_path) and not force:
        fail(f"{out_path} exists; use --force to overwrite it (or -o FILE)",
                   EXIT_INVALID)
    if not to_stdout and os.path.isdir(out_path):
        fail(f"{out_path} is a directory")

    # ---- wants (syntax first: exit 2 on bad names)
    try:
        want_list = [resolve_want(w) for w in _split_wants(wants)]
    except ClosureError as e:
        fail(str(e))

    # ---- base profile and capability set
    caps = load_shared_caps(cpu, caps_file)
    notes: list[str] = []
    try:
        if from_:
            base = load_profile(from_)
            src = base.chain[0] if base.chain else from_
        else:
            bp = builtin_path(DEFAULT_BASE)
            base = load_profile(bp) if bp else None
            src = None
        if caps is None:
            caps = load_caps(None, None, base) if base is not None else load_caps()
    except ProfileError as e:
        fail(str(e))
    from ..profile.loader import Profile
    if base is None:
        prof = Profile(path=None, name=name)
    else:
        prof = _flatten(base, name)
    prof.name = name
    if description is not None:
        prof.description = description
    elif from_:
        prof.description = base.description
    else:
        prof.description = ""
    if cpu:
        prof.cpu = caps.name
    elif caps_file:
        prof.cpu = None
    if base is not None and not to_stdout:
        _rebase_paths(prof, base, out_path)
    if not from_ and base is not None:
        # the implicit starting point: drop what this CPU cannot do
        for fk, vals in list(prof.controls.items()):
            for k, on in list(vals.items()):
                path = f"{fk}.{k}"
                if on and not caps.supports(path):
                    del vals[k]
                    notes.append(f"left out {path} ({caps.name} does not support it)")

    # ---- closure
    explicit = {f"{fk}.{k}": v for fk, vals in prof.controls.items() for k, v in vals.items()}
    _, forced, _, _ = effective(prof, caps)
    base_on = dict(explicit)
    for fk, bits in forced.items():
        for c in CONTROL_BY_PATH.values():
            if c.field == fk and bits & c.mask:
                base_on.setdefault(c.path, True)
    try:
        cl = closure(want_list, caps, base_on)
    except ClosureError as e:
        return _fail_closure(e, caps, as_json)
    for path, v in cl.controls.items():
        c = CONTROL_BY_PATH[path]
        if c.field in prof.raw:
            m = c.mask
            prof.raw[c.field] = (prof.raw[c.field] | m) if v else (prof.raw[c.field] & ~m)
        else:
            prof.controls.setdefault(c.field, {})[c.key] = bool(v)
    for path, v in cl.settings.items():
        s = SETTING_BY_PATH[path]
        if v is None:
            v = kind_of(s).implied(s)
            if v is None:
                fail(f"--want {path} needs a value: --want {path}=VALUE "
                           f"({s.title}; it has no default)")
            norm = normalize_setting(s, v)
        else:
            try:
                tv, _ = parse_value(SettingTarget(s.table, s.key, setting=s), str(v))
            except EditError as e:
                fail(f"--want {path}: {e}")
            norm = normalize_setting(s, tv)
        prof.settings.setdefault(s.table, {})[s.key] = norm

    # ---- render, check, write
    cfg, _, _, _ = effective(prof, caps)
    on = {p for p in CONTROL_BY_PATH if cfg.on(p)}
    header = []
    if from_:
        header.append(f"Started from {from_} ({src}).")
    if cl.wanted:
        header.append("Wanted: " + ", ".join(w.path + ("" if w.kind == "control" and w.value
                                                       else f" = {w.value}" if w.value is not None
                                                       else "") for w in cl.wanted))
    for a in cl.added:
        header.append(f"  + {a.path}: required by {a.because} (rule {a.rule}: {a.title})")
    for a in cl.satisfied:
        header.append(f"  = {a.path}: already on; required by {a.because} (rule {a.rule})")
    if caps_file:
        header.append(f"Checked against the capability file {caps_file}.")
    text = render_new_profile(prof, caps, on=on, header=header)
    check_path = os.path.abspath(out_path if not to_stdout else f"{name}.toml")
    try:
        res = resolve_profile(load_profile_text(text, check_path), caps)
    except ProfileError as e:   # a bug if it happens: never write what cannot be read back
        fail(f"internal error: the generated profile does not load: {e}", EXIT_INVALID)
    doc = {"profile": None if to_stdout else out_path, "name": name, "cpu": caps.name,
           "from": from_, "wanted": [w.path for w in cl.wanted],
           "added": [a.to_json() for a in cl.added],
           "already_on": [a.to_json() for a in cl.satisfied], "notes": notes,
           "valid": res.valid, "written": False,
           "errors": res.to_json()["errors"], "warnings": res.to_json()["warnings"]}
    if not as_json:
        for n in notes:
            err(f"note: {n}", fg="yellow")
        for w in cl.wanted:
            err(f"want {w.path}" + ("" if w.kind == "control" and w.value
                                    else f" = {w.value}" if w.value is not None else ""))
        for a in cl.added:
            err(click.style(f"  + {a.path}", fg="green") +
                f"  (rule {a.rule}: {a.title}; required by {a.because})")
        for a in cl.satisfied:
            err(f"  = {a.path}  (already on; rule {a.rule}: {a.title}; required by {a.because})")
    if not res.valid:
        if as_json:
            emit_json(doc)
        else:
            render_violations(res)
            src_hint = f" --from {from_}" if from_ else ""
            err(click.style(f"vmcfg: not written: the profile would be invalid on {caps.name}"
                            f"{src_hint}", fg="red", bold=True))
        finish(EXIT_INVALID)
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            atomic_write(out_path, text, exclusive=not force)
        except WriteError as e:
            fail(str(e), EXIT_INVALID if e.exists else 2)
        doc["written"] = True
    if as_json:
        emit_json(doc)
    else:
        if res.warnings:
            render_violations(res)
        where = "stdout" if to_stdout else out_path
        w = f" ({len(res.warnings)} warning{'s' if len(res.warnings) != 1 else ''})" \
            if res.warnings else ""
        err(click.style(f"wrote {where}", fg="green") + f": valid on {caps.name}{w}")
    finish(EXIT_OK)


# settings whose value is a file name relative to the profile that sets it
RELATIVE_PATH_SETTINGS = ("guest.image",)


def _rebase_paths(prof, base, out_path: str) -> None:
    """Keep relative file names (guest.image) pointing at the same file from the new place."""
    for path in RELATIVE_PATH_SETTINGS:
        table, key = path.split(".")
        v = prof.settings.get(table, {}).get(key)
        pos = base.pos.get(path)
        if not isinstance(v, str) or ":" in v or os.path.isabs(v) or pos is None or not pos.path:
            continue
        target = os.path.join(os.path.dirname(os.path.abspath(pos.path)), v)
        prof.settings[table][key] = os.path.relpath(
            target, os.path.dirname(os.path.abspath(out_path)))


def _fail_closure(e, caps, as_json: bool):
    if as_json:
        emit_json({"profile": None, "cpu": caps.name, "valid": False, "written": False,
                   "errors": [{"rule": p.get("rule"), "control": p.get("control"),
                               "message": p["message"], "capability": p.get("capability")}
                              for p in e.problems] or [{"message": str(e)}]})
    else:
        for p in e.problems or [{"message": str(e)}]:
            err(f"vmcfg: {p['message']}", fg="red")
        err(click.style("vmcfg: not written", fg="red", bold=True))
    finish(EXIT_INVALID)
