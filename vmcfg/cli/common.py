"""Shared CLI plumbing: options, completions, profile arguments (no heavy imports).

Output and the ends of commands are in report.py (re-exported here)."""

from __future__ import annotations

import os
import sys
from typing import Callable

import click

from .report import (EXIT_INVALID, EXIT_OK, EXIT_USAGE, emit_json, err, fail,  # noqa: F401
                     finish, out, styled)


def load_shared_caps(cpu: str | None, caps_file: str | None):
    """--cpu/--caps -> CapSet (None when neither is given); exits 2 on a bad one."""
    from ..profile import ProfileError, load_caps
    check_cpu_caps(cpu, caps_file)
    if not (cpu or caps_file):
        return None
    try:
        return load_caps(cpu, caps_file)
    except ProfileError as e:
        fail(str(e))


def profile_file(spec: str, what: str = "edit") -> str:
    """The file a PROFILE argument names; built-in profiles are read-only."""
    from ..profile.loader import builtin_path
    if os.path.exists(spec):
        if not os.path.isfile(spec):
            fail(f"{spec}: not a regular file")
        return spec
    if "/" not in spec and not spec.endswith(".toml") and builtin_path(spec):
        fail(f"{spec!r} is a built-in profile and cannot be changed in place; copy it "
                   f"first: vmcfg new my-{spec} --from {spec}")
    fail(f"{spec}: no such file (create one with: vmcfg new NAME)")


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `default`
    (`vmcfg caps MODEL` is `vmcfg caps show MODEL`; `vmcfg smoke FILE` is `smoke run FILE`)."""

    default = ""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = [self.default] + list(args)
        return super().parse_args(ctx, args)


def default_group(default: str) -> type[DefaultGroup]:
    return type(f"DefaultGroup_{default}", (DefaultGroup,), {"default": default})


def cpu_options(f: Callable) -> Callable:
    f = click.option("--caps", "caps_file", metavar="FILE",
                     type=click.Path(dir_okay=False),
                     help="Capability file (TOML [msr] table) instead of a CPU model.")(f)
    f = click.option("--cpu", metavar="MODEL", shell_complete=complete_cpu,
                     help="CPU model to check against (default: the profile's cpu, else cvmm).")(f)
    return f


def check_cpu_caps(cpu: str | None, caps_file: str | None) -> None:
    if cpu and caps_file:
        raise click.UsageError("--cpu and --caps are mutually exclusive")


def complete_cpu(ctx, param, incomplete):
    from ..vmx.models import MODEL_NAMES
    return [n for n in MODEL_NAMES if n.startswith(incomplete.lower())]


def complete_profile(ctx, param, incomplete):
    from click.shell_completion import CompletionItem
    from ..profile.loader import builtin_names
    items = [CompletionItem(n) for n in builtin_names() if n.startswith(incomplete)]
    items.append(CompletionItem(incomplete, type="file"))
    return items


def complete_profile_file(ctx, param, incomplete):
    from click.shell_completion import CompletionItem
    return [CompletionItem(incomplete, type="file")]


def complete_control(ctx, param, incomplete):
    from ..vmx.settings import SETTINGS
    from ..vmx.table import CONTROLS
    names = [c.path for c in CONTROLS] + [s.path for s in SETTINGS if s.key != "*"]
    return [n for n in names if n.startswith(incomplete)]


def format_location(pos) -> str:
    return f"{pos.path}:{pos.line}:{pos.col}" if pos else ""


def render_violations(resolved, *, color: bool | None = None) -> None:
    """file:line:col: error[RULE] title: message / fix: ... (to stderr)."""
    for sev, items, fg in (("error", resolved.errors, "red"), ("warning", resolved.warnings, "yellow")):
        for v in items:
            pos = resolved.position(v)
            loc = format_location(pos) or (resolved.profile.path or "")
            head = styled(f"{sev}[{v.rule}]", sys.stderr, fg=fg, bold=True)
            err(f"{loc}: {head} {v.title}: {v.message}")
            err(f"    fix: {v.fix}", fg="cyan")
