"""vmcfg completion bash|zsh|fish: print click's shell-completion script."""

from __future__ import annotations

import sys

import click

from .common import EXIT_OK, emit_json
from .report import finish

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_VMCFG_COMPLETE"

HOWTO = {
    "bash": 'eval "$(vmcfg completion bash)"          # in ~/.bashrc',
    "zsh": 'eval "$(vmcfg completion zsh)"           # in ~/.zshrc (after compinit)',
    "fish": "vmcfg completion fish > ~/.config/fish/completions/vmcfg.fish",
}


def completion_script(shell: str) -> str:
    from click.shell_completion import get_completion_class
    from .main import cli
    cls = get_completion_class(shell)
    comp = cls(cli, {}, "vmcfg", COMPLETE_VAR)
    return comp.source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.option("--json", "as_json", is_flag=True,
              help="JSON {shell, script, install} on stdout instead of the bare script.")
def completion(shell, as_json):
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    Completes commands, options, built-in profile names, CPU models and, for
    `vmcfg set`/`unset`/`new --want`, control and setting keys from the tables.
        bash:  eval "$(vmcfg completion bash)"     (add to ~/.bashrc)
        zsh:   eval "$(vmcfg completion zsh)"      (add to ~/.zshrc)
        fish:  vmcfg completion fish > ~/.config/fish/completions/vmcfg.fish
    """
    script = completion_script(shell)
    if as_json:
        emit_json({"shell": shell, "script": script, "install": HOWTO[shell]})
    else:
        sys.stdout.write(script if script.endswith("\n") else script + "\n")
    finish(EXIT_OK)
