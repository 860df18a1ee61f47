"""vmcfg set PROFILE KEY=VALUE... / vmcfg unset PROFILE KEY...

Edits a profile file in place, format-preserving: the edits are staged in one
ProfileTransaction (profile/transaction.py), checked, and written atomically under
the file's lock unless the result is invalid.  This module parses the arguments and
renders the changes; it also holds the completion callbacks for keys.
"""

from __future__ import annotations

import sys

import click

from .common import (EXIT_INVALID, EXIT_OK, complete_profile_file, cpu_options, emit_json, err,
                     fail, load_shared_caps,
                     profile_file, render_violations)
from .report import finish


# ---- helpers shared by new / set / unset / edit ------------------------------------------------

def complete_assignment(ctx, param, incomplete):
    """KEY=VALUE completion for `set`: keys from the tables, then values of that key."""
    from click.shell_completion import CompletionItem
    from ..profile.keys import set_key_names, value_choices
    # bash splits "KEY=VALUE" at '=' (COMP_WORDBREAKS): the words before are KEY and '='
    prior = list((ctx.params or {}).get("assignments") or ())
    if prior and prior[-1] == "=" and len(prior) >= 2:
        key = prior[-2].rstrip("+-")
        return [CompletionItem(v) for v in value_choices(key) if v.startswith(incomplete)]
    if "=" in incomplete:
        key, _, val = incomplete.partition("=")
        key = key.rstrip("+-")
        op = incomplete[len(key):incomplete.index("=") + 1]
        return [CompletionItem(f"{key}{op}{v}") for v in value_choices(key) if v.startswith(val)]
    keys = [k for k in set_key_names() if k.startswith(incomplete)]
    if not incomplete or "." not in incomplete:
        tables = sorted({k.split(".")[0] + "." for k in keys})
        if len(tables) > 1:
            return [CompletionItem(t, type="plain") for t in tables]
    return [CompletionItem(k + "=") for k in keys]


def complete_key(ctx, param, incomplete):
    from click.shell_completion import CompletionItem
    from ..profile.keys import set_key_names
    from ..vmx.settings import SETTING_TABLES
    from ..vmx.table import FIELD_KEYS
    keys = set_key_names() + list(FIELD_KEYS) + list(SETTING_TABLES)
    return [CompletionItem(k) for k in keys if k.startswith(incomplete)]


# ---- set / unset ------------------------------------------------------------------------------

def _fmt(key: str, v) -> str:
    from ..profile.keys import display_value
    return display_value(key, v)


def run_edit(path: str, ops: list[tuple], *, cpu, caps_file, force: bool, dry_run: bool,
             as_json: bool) -> int:
    """Stage `ops` (("set", key, op, value) / ("unset", key)) in one ProfileTransaction,
    check, commit unless refused or a dry run; render the report."""
    from ..profile.source import ProfileError
    from ..profile.values import EditError
    from ..profile.transaction import ProfileTransaction, Refused, WriteError

    caps = load_shared_caps(cpu, caps_file)
    try:
        with ProfileTransaction.open(path, caps=caps, hold_lock=True) as tx:
            try:
                for op in ops:
                    if op[0] == "unset":
                        tx.unset(op[1])
                    else:
                        tx.set(op[1], op[2], op[3])
            except EditError as e:
                fail(f"{path}: {e}")
            v = tx.check()
            doc = {"profile": path, "changes": [c.to_json() for c in tx.changes],
                   "changed": tx.changed, "written": False, "valid": v.valid, "cpu": v.cpu}
            doc["errors"], doc["warnings"] = v.problems()
            if not as_json:
                for ch in tx.changes:
                    _render_change(ch)
            try:
                doc["written"] = tx.commit(force=force, dry_run=dry_run)
            except Refused:
                doc["refused"] = True
                if not as_json:
                    _render_refusal(tx, v)
            if dry_run:
                doc["dry_run"] = True
                doc["text"] = tx.text
    except (ProfileError, WriteError) as e:
        fail(str(e))
    if as_json:
        emit_json(doc)
    else:
        _summary(path, doc, v.resolved, dry_run)
        if dry_run:
            import difflib
            sys.stdout.writelines(difflib.unified_diff(
                tx.original.splitlines(True), tx.text.splitlines(True), path, f"{path} (new)"))
    return EXIT_INVALID if doc.get("refused") else EXIT_OK


def _render_refusal(tx, v) -> None:
    if v.load_error is not None:
        err(f"{v.load_error}", fg="red")
    else:
        render_violations(v.resolved)
    old = tx.before().resolved
    was = ""
    if old is not None and not old.valid:
        was = f" (it was already invalid: {len(old.errors)} error(s))"
    err(click.style(f"{tx.path}: refused: the result would be invalid{was}; "
                    f"nothing written (use --force to write it anyway)", fg="red", bold=True))


def _render_change(ch) -> None:
    before, after = _fmt(ch.key, ch.before), _fmt(ch.key, ch.after)
    what = {"unchanged": "unchanged", "removed": "removed", "uncommented": "set (uncommented)",
            "added": "set", "changed": "set"}.get(ch.how, ch.how)
    line = f"{ch.key}: {before} -> {after}" if before != after else f"{ch.key}: {after}"
    if ch.how == "unchanged" or ch.how == "removed":
        line = f"{ch.key}: {what}" + (f" (now {after})" if ch.how == "removed" else "")
    err(line + (f"  [{ch.note}]" if ch.note else ""))


def _summary(path: str, doc: dict, res, dry_run: bool) -> None:
    if doc.get("refused"):
        return
    if res is not None and (res.warnings or res.errors):
        render_violations(res)
    state = (f"valid on {doc['cpu']}" if doc["valid"]
             else click.style("INVALID (written with --force)" if doc["written"]
                              else "INVALID", fg="red", bold=True))
    if dry_run:
        err(f"{path}: dry run, nothing written; the result is {state}")
    elif doc["written"]:
        err(click.style(f"{path}: written", fg="green") + f"; {state}")
    else:
        err(f"{path}: no change; {state}")


def edit_options(f):
    """--cpu/--caps, --force, --dry-run and --json, as `set` and `unset` take them."""
    f = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")(f)
    f = click.option("-n", "--dry-run", is_flag=True,
                     help="Validate and print the change as a diff (stdout); write nothing.")(f)
    f = click.option("--force", is_flag=True, help="Write the result even if it is invalid.")(f)
    return cpu_options(f)


@click.command("set")
@click.argument("profile", metavar="PROFILE", shell_complete=complete_profile_file)
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...",
                shell_complete=complete_assignment)
@edit_options
def set_(profile, assignments, cpu, caps_file, force, dry_run, as_json):
    """Set KEY=VALUE in PROFILE in place, keeping every other byte of the file.

    \b
    KEY is dotted: a control (TABLE.CONTROL, or any alias: the bare name, its
    QEMU vmx-* or Linux spelling), a setting (tsc.offset, io.intercept),
    profile.<name|description|extends|cpu>, raw.<field>, cpuid."LEAF".REG or
    handlers.REASON.  VALUE: on/off/true/false for controls; integers in any
    base (0x60, -5000); lists as 0x60,0x64 or [0x60, "0x70-0x7f"].  Lists
    also take KEY+=VALUE and KEY-=VALUE (port/MSR ranges are split).

    \b
    The result is validated (against --cpu/--caps, else the profile's cpu,
    else cvmm) before it is written; an invalid result is refused unless
    --force.  Writes are atomic and serialized with a lock file.
    Exit status: 0 written or nothing to do, 1 refused (invalid result),
    2 bad key/value or unreadable file.
    """
    from ..profile.keys import EditError, split_assignment
    path = profile_file(profile, "set")
    ops = []
    for a in assignments:
        try:
            key, op, value = split_assignment(a)
        except EditError as e:
            fail(str(e))
        ops.append(("set", key, op, value))
    finish(run_edit(path, ops, cpu=cpu, caps_file=caps_file, force=force, dry_run=dry_run,
                      as_json=as_json))


@click.command()
@click.argument("profile", metavar="PROFILE", shell_complete=complete_profile_file)
@click.argument("keys", nargs=-1, required=True, metavar="KEY...", shell_complete=complete_key)
@edit_options
def unset(profile, keys, cpu, caps_file, force, dry_run, as_json):
    """Remove KEYs from PROFILE in place (the value falls back to the parent's or
    the default).

    KEY is as for `vmcfg set`, or a whole table (e.g. `tsc`).  Removing a key
    that is not in the file is not an error.  Exit status as for `vmcfg set`.
    """
    path = profile_file(profile, "unset")
    ops = [("unset", k) for k in keys]
    finish(run_edit(path, ops, cpu=cpu, caps_file=caps_file, force=force, dry_run=dry_run,
                      as_json=as_json))
