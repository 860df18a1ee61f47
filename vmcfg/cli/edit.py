"""vmcfg edit PROFILE: $VISUAL/$EDITOR on a copy, validated before it is saved.

Like `crontab -e` and `virsh edit`: the editor works on a temporary copy
(with a .toml suffix, so editors pick TOML mode); after it exits the copy is
validated; on errors they are shown with line numbers and you choose to edit
again, discard, or force-save.  The profile itself is only ever replaced
atomically, under the same lock `vmcfg set` uses, and not if it changed on
disk while you were editing (unless you confirm).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile

import click

from .common import (EXIT_INVALID, EXIT_OK, complete_profile_file, cpu_options, emit_json, err,
                     fail, load_shared_caps,
                     profile_file, render_violations)
from .report import finish


def editor_command() -> list[str]:
    cmd = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        fail(f"cannot parse the editor command {cmd!r}: {e}")
    if not argv:
        fail("$VISUAL/$EDITOR is empty")
    return argv


def _ask(question: str, choices: list[str], default: str) -> str | None:
    """Prompt on the terminal/stdin; None when there is no answer (EOF)."""
    try:
        return click.prompt(question, type=click.Choice(choices, case_sensitive=False),
                            default=default, show_choices=True, err=True).lower()
    except (click.exceptions.Abort, EOFError):
        err("")
        return None


@click.command()
@click.argument("profile", metavar="PROFILE", shell_complete=complete_profile_file)
@cpu_options
@click.option("--force", is_flag=True, help="Save the result even if it is invalid (no prompt).")
@click.option("-y", "--yes", is_flag=True,
              help="Overwrite the profile even if it changed on disk while you were editing.")
@click.option("--no-input", is_flag=True,
              help="Never prompt (for scripts): an invalid result is discarded unless --force, "
                   "a profile changed meanwhile is kept unless --yes; the edited copy is kept "
                   "and its path printed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def edit(profile, cpu, caps_file, force, yes, no_input, as_json):
    """Edit PROFILE in $VISUAL / $EDITOR, validating before it is saved.

    \b
    After the editor exits the edited copy is validated (--cpu/--caps, else
    the profile's cpu, else cvmm).  If it is invalid the errors are shown
    with line numbers and you choose:  e  edit again,  d  discard the
    changes,  f  force-save the invalid profile.  Without an answer (stdin
    at end of file) the changes are discarded and the copy is kept.  If the
    file changed on disk while you were editing you are asked before it is
    overwritten.  The editor may be any program or script: it is run as
    `$EDITOR FILE.toml` and must exit 0.
    Exit status: 0 saved or no change, 1 discarded / refused / editor failed,
    2 bad usage or unreadable file.
    """
    from ..profile.source import ProfileError
    from ..profile.transaction import ProfileTransaction

    path = profile_file(profile, "edit")
    caps = load_shared_caps(cpu, caps_file)
    try:
        with ProfileTransaction.open(path, caps=caps) as tx:
            _edit_loop(tx, editor_command(), force=force, yes=yes, no_input=no_input,
                       as_json=as_json)
    except ProfileError as e:
        fail(str(e))


def _edit_loop(tx, argv: list[str], *, force: bool, yes: bool, no_input: bool,
               as_json: bool) -> None:
    """Editor -> check -> (edit again | discard | force) -> commit, on a temporary copy."""
    from ..profile.transaction import Conflict, WriteError
    path, original = tx.path, tx.original
    tmpdir = tempfile.mkdtemp(prefix="vmcfg-edit-")
    base = os.path.basename(path)
    copy = os.path.join(tmpdir, base if base.endswith(".toml") else base + ".toml")
    with open(copy, "w", encoding="utf-8") as fh:
        fh.write(original)
    os.chmod(copy, 0o600)
    keep = False
    doc = {"profile": path, "changed": False, "saved": False, "valid": None, "forced": False,
           "action": None, "errors": [], "warnings": [], "kept_copy": None}

    def done(code: int, action: str, message: str | None = None, fg: str | None = None):
        doc["action"] = action
        if keep:
            doc["kept_copy"] = copy
        if as_json:
            emit_json(doc)
        else:
            if message:
                err(message, fg=fg) if fg else err(message)
            if keep:
                err(f"your edited copy is kept in {copy}")
        finish(code)

    try:
        while True:
            try:
                # with --json, stdout carries the JSON document: the editor writes to fd 2
                rc = subprocess.call(argv + [copy], stdout=(2 if as_json else None))
            except FileNotFoundError:
                fail(f"cannot run the editor {argv[0]!r}: not found (set $VISUAL or $EDITOR)")
            except OSError as e:
                fail(f"cannot run the editor {argv[0]!r}: {e.strerror}")
            if rc != 0:
                try:
                    with open(copy, encoding="utf-8") as fh:
                        keep = fh.read() != original
                except (OSError, UnicodeDecodeError):
                    keep = False
                done(EXIT_INVALID, "editor-failed",
                       f"vmcfg: the editor exited with status {rc}; {path} unchanged", "red")
            try:
                with open(copy, encoding="utf-8") as fh:
                    tx.replace(fh.read())
            except (OSError, UnicodeDecodeError) as e:
                keep = True
                done(EXIT_INVALID, "unreadable-copy",
                       f"vmcfg: cannot read the edited copy: {e}; {path} unchanged", "red")
            if not tx.changed:
                done(EXIT_OK, "unchanged", f"{path}: no changes")
            doc["changed"] = True
            v = tx.check()
            doc["valid"] = v.valid
            doc["errors"], doc["warnings"] = v.problems(located_message=False)
            if v.valid:
                if v.resolved.warnings and not as_json:
                    render_violations(v.resolved)
                break
            if not as_json:
                err(click.style(f"{path}: the edited profile is invalid "
                                f"(line numbers refer to your edit):", fg="red", bold=True))
                if v.load_error is not None:
                    err(str(v.load_error), fg="red")
                else:
                    render_violations(v.resolved)
            if force:
                doc["forced"] = True
                break
            if no_input:
                keep = True
                done(EXIT_INVALID, "discarded",
                       f"vmcfg: {path} unchanged (invalid edit discarded; --force saves it)", "red")
            choice = _ask("e: edit again, d: discard changes, f: force-save invalid profile",
                          ["e", "d", "f"], "e")
            if choice == "e":
                continue
            if choice == "f":
                doc["forced"] = True
                break
            keep = choice is None   # no answer: keep the work
            done(EXIT_INVALID, "discarded", f"vmcfg: {path} unchanged (changes discarded)",
                   "red")
        # ---- save: compare-and-swap under the lock

        def overwrite() -> bool:
            if not as_json:
                err(click.style(f"{path} changed on disk while you were editing.",
                                fg="yellow", bold=True))
            if yes or no_input:
                return yes
            return _ask("Overwrite the changes made meanwhile? (y/n)", ["y", "n"], "n") == "y"

        try:
            tx.commit(force=doc["forced"], overwrite=overwrite)
        except Conflict:
            keep = True
            done(EXIT_INVALID, "conflict",
                   f"vmcfg: {path} not overwritten (it changed meanwhile; --yes overwrites)", "red")
        except WriteError as e:
            keep = True
            done(EXIT_INVALID, "write-failed", f"vmcfg: {e}", "red")
        doc["saved"] = True
        if doc["forced"] and not doc["valid"]:
            done(EXIT_OK, "saved",
                   click.style(f"{path}: saved INVALID profile (forced)", fg="red", bold=True))
        done(EXIT_OK, "saved", click.style(f"{path}: saved", fg="green") + f"; valid on {v.cpu or '?'}")
    finally:
        if not keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
