"""The `vmcfg` command: a click group whose subcommands are imported lazily.

Each command group lives in its own module under vmcfg/cli/; only the module
of the command being run is imported, so `vmcfg validate` never loads the
emulator (unicorn, the decoder) or rich.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__

# command name -> "module:attribute" (relative to vmcfg.cli)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("validate", "validate", "Check profiles against a CPU's capabilities and every VM-entry rule."),
    "show": ("show", "show", "Show a profile's effective controls bit by bit."),
    "explain": ("explain", "explain", "Explain a control, rule, exit reason or exit-reason value."),
    "caps": ("caps", "caps", "Decode, import and compare capability sets."),
    "cpus": ("caps", "cpus", "List the built-in CPU models."),
    "launch": ("launch", "launch", "Run a guest on vmcfg's emulated VMM under a profile."),
    "new": ("new", "new", "Write a new, valid, commented profile (optionally from goals: --want)."),
    "set": ("set_", "set_", "Set keys in a profile in place, keeping its formatting."),
    "unset": ("set_", "unset", "Remove keys from a profile in place, keeping its formatting."),
    "edit": ("edit", "edit", "Edit a profile in $EDITOR with validation before saving."),
    "diff": ("diff", "diff", "Compare two profiles or two capability sets bit by bit."),
    "export": ("export", "export", "Export a profile: raw, json, C header or QEMU flags."),
    "matrix": ("matrix", "matrix", "Which CPU models each profile is valid on."),
    "profiles": ("profiles", "profiles", "List the built-in profiles."),
    "schema": ("schema", "schema", "Print the JSON Schema of the profile format."),
    "completion": ("completion", "completion", "Print the shell-completion script (bash, zsh, fish)."),
    "demo": ("demo", "demo", "Launch a guest, apply a profile live, show the exit statistics change."),
    "ps": ("live", "ps", "List this user's running guests."),
    "apply": ("live", "apply", "Apply a profile to a running guest (or --rollback)."),
    "watch": ("watch", "watch", "Apply a profile to a running guest every time it is saved."),
    "stats": ("live", "stats", "Live exit counters of a running guest."),
    "history": ("live", "history", "Every change applied to a running guest."),
    "stop": ("live", "stop", "End a running guest cleanly and show its summary."),
    "inject": ("live", "inject", "Deliver an NMI or interrupt to a running guest."),
    "trace": ("trace", "trace", "Summarise a launch trace, or export it for Perfetto."),
    "guest": ("guest", "guest", "Build guest images from NASM sources; list the bundled guests."),
    "smoke": ("smoke", "smoke", "Run a matrix of profiles × guests with expectations; JUnit XML."),
}


def _unavailable(name: str, e: ImportError) -> click.Command:
    """A command whose module cannot be imported (a missing dependency): say so, exit 2."""
    def run(**_kw):
        from .report import fail
        fail(f"the '{name}' command is unavailable: {e}")
    return click.Command(name, callback=run, help=f"(unavailable: {e})",
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})


def _wants_json(args: list[str]) -> bool:
    """--json among the options (before a lone '--')."""
    for a in args:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


class LazyGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """The one place that turns an outcome into the process exit status (vmcfg.status)."""
        from . import report
        args = list(sys.argv[1:] if args is None else args)
        report.set_json_mode(_wants_json(args))
        code = report.EXIT_OK
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else report.EXIT_OK
        except click.exceptions.Exit as e:
            code = e.exit_code
        except report.Failure as e:
            e.show()
            code = e.exit_code
        except click.ClickException as e:          # usage errors and bad parameters
            e.show()
            if report.json_mode():
                report.emit_json(report.error_doc(e.format_message(), e.exit_code))
            code = e.exit_code
        except BrokenPipeError:                    # `vmcfg show x | head`: the reader left
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = report.EXIT_OK
        except (click.exceptions.Abort, KeyboardInterrupt):
            report.err("vmcfg: interrupted")
            if report.json_mode():
                report.emit_json(report.error_doc("interrupted", report.S.INTERRUPTED))
            code = report.S.INTERRUPTED
        finally:
            report.set_json_mode(False)
        if standalone_mode:
            sys.exit(code)
        return code

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        try:
            mod = importlib.import_module(f"vmcfg.cli.{spec[0]}")
        except ImportError as e:
            return _unavailable(name, e)
        return getattr(mod, spec[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx, args):  # did-you-mean for commands
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            import difflib
            if args and args[0] not in COMMANDS:
                hint = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
                if hint:
                    raise click.UsageError(f"{e.message} Did you mean {hint[0]!r}?", ctx) from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmcfg")
def cli() -> None:
    """vmcfg: craft, check and run Intel VT-x execution environments.

    \b
    Exit status: 0 ok; 1 invalid profile / differences / refused;
    2 bad usage or unreadable input (see README for launch's codes).
    """


def main() -> None:
    """Entry point (the console script)."""
    cli.main(prog_name="vmcfg")
