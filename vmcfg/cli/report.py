"""How commands speak: results on stdout, progress/warnings/errors on stderr, JSON, failures.

- `out()` / `console()` write a command's result (tables, documents) to stdout;
  `err()` / `console(stderr=True)` write messages and progress to stderr.
- When the stream is not a terminal there is no colour and no wrapping (unless
  COLUMNS says a width); NO_COLOR and FORCE_COLOR are respected.
- `emit_json()` writes one JSON document to stdout.
- `fail(message, code)` ends a command with an error: a message on stderr and,
  under --json, a JSON error object on stdout.  `finish(code)` ends it with a
  status after its result was written.  Neither exits the process: the one
  place that does is `vmcfg.cli.main` (LazyGroup.main).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from .. import status as S

EXIT_OK = S.OK
EXIT_INVALID = S.INVALID
EXIT_USAGE = S.USAGE

_state = {"json": False}


def set_json_mode(on: bool) -> None:
    _state["json"] = on


def json_mode() -> bool:
    return _state["json"]


# ---- streams ---------------------------------------------------------------------------------

def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def color_enabled(stream) -> bool:
    """Colour on `stream`: FORCE_COLOR forces it, NO_COLOR forbids it, else a terminal has it."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return _is_tty(stream)


def _columns() -> int | None:
    c = os.environ.get("COLUMNS", "")
    return int(c) if c.isdigit() and int(c) > 0 else None


def console(stderr: bool = False, **kw: Any):
    """A rich Console for stdout (results) or stderr (messages) that follows the conventions."""
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    tty = _is_tty(stream)
    color = color_enabled(stream)
    width = _columns() or (None if tty else 10_000)
    return Console(file=stream, width=width, force_terminal=color if color else None,
                   no_color=not color, color_system="auto" if color else None,
                   soft_wrap=not tty and _columns() is None, highlight=False, **kw)


def _echo(msg: str, stream, style: dict) -> None:
    if not color_enabled(stream):
        msg = click.unstyle(msg)
    elif style:
        msg = click.style(msg, **style)
    stream.write(msg + "\n")
    stream.flush()


def out(msg: str = "", **style: Any) -> None:
    """A line of a command's result, on stdout."""
    _echo(msg, sys.stdout, style)


def err(msg: str = "", **style: Any) -> None:
    """A message (progress, warning, error) on stderr."""
    _echo(msg, sys.stderr, style)


def styled(msg: str, stream=None, **style: Any) -> str:
    """`msg` with click styles when `stream` (default stdout) shows colour."""
    return click.style(msg, **style) if color_enabled(stream or sys.stdout) else msg


def emit_json(doc: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def emit_json_line(doc: Any) -> None:
    """One JSON document on one line of stdout (streams of events)."""
    sys.stdout.write(json.dumps(doc, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_json"):
        return o.to_json()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(type(o).__name__)


# ---- ends of a command -----------------------------------------------------------------------

def error_doc(message: str, code: int, error: dict | None = None, **detail: Any) -> dict:
    """The JSON error object every --json command prints on failure:
    {"ok": false, "status": NAME, "exit_status": N, "error": {"message", [file, line, column]}}."""
    return {"ok": False, "status": S.name_of(code), "exit_status": code,
            "error": {"message": message, **(error or {})}, **detail}


class Failure(click.ClickException):
    """A command ended with an error: message on stderr, JSON error object under --json."""

    def __init__(self, message: str, code: int = EXIT_USAGE, detail: dict | None = None,
                 quiet: bool = False, error: dict | None = None):
        super().__init__(message)
        self.exit_code = code
        self.detail = detail or {}
        self.error = error
        self.quiet = quiet            # the message was already shown in detail

    def show(self, file=None) -> None:  # noqa: ARG002 - click's signature
        if not self.quiet:
            err(f"vmcfg: {self.message}", fg="red")
        if json_mode():
            emit_json(error_doc(self.message, self.exit_code, self.error, **self.detail))


def fail(msg: Any, code: int = EXIT_USAGE, *, quiet: bool = False, **detail: Any) -> NoReturn:
    """End the command with an error; `msg` is a string or an error with to_json() (a
    ProfileError: its file, line and column go into the JSON error object)."""
    error = msg.to_json() if hasattr(msg, "to_json") else None
    if error is not None:
        error = {k: v for k, v in error.items() if v is not None}
    raise Failure(str(msg), code, detail, quiet, error)


def finish(code: int = EXIT_OK) -> NoReturn:
    """End the command with `code` (its result is already written)."""
    raise click.exceptions.Exit(code)
