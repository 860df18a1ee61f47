"""vmcfg guest build SOURCE [-o FILE] [--assembler auto|nasm|keystone] [--json]; vmcfg guest list"""

from __future__ import annotations

import os
import sys

import click

from .common import EXIT_OK, emit_json, err
from .report import fail, finish


@click.group()
def guest():
    """Build and list guest images.

    \b
    vmcfg guest build SOURCE [-o FILE]   assemble a NASM-syntax source to a flat binary
    vmcfg guest list                     the bundled guests, their sources and profiles
    """


@guest.command("build")
@click.argument("source", metavar="SOURCE")
@click.option("-o", "--output", metavar="FILE",
              help="The flat binary to write (default: NAME.bin in the current folder; "
                   "'-' = stdout).")
@click.option("--assembler", type=click.Choice(["auto", "nasm", "keystone"]), default="auto",
              show_default=True,
              help="nasm, vmcfg's NASM front end over keystone, or auto: $VMCFG_ASSEMBLER, "
                   "else nasm when installed, else keystone (both give the same bytes).")
@click.option("-I", "--include", "include", multiple=True, metavar="DIR",
              help="Another folder for %include (the source's folder and the bundled "
                   "sources are searched too).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print what was built as JSON.")
def build(source, output, assembler, include, force, as_json):
    """Assemble SOURCE (NASM syntax) into a flat binary guest image.

    SOURCE is a file or a bundled guest source `builtin:NAME` (vmcfg guest list).
    Errors name the file and line.  Exit status: 0 built; 2 the source does not
    assemble, or bad usage.
    """
    from ..guests.asm import AsmError, assemble
    from ..guests.build import source_path

    try:
        path = source_path(source)
    except FileNotFoundError as e:
        fail(str(e))
    try:
        res = assemble(path, include=tuple(include), backend=assembler)
    except AsmError as e:
        fail(e)
    if not res.data:
        fail(f"{path}: the source assembled to nothing")
    if output is None:
        output = os.path.splitext(os.path.basename(path))[0] + ".bin"
    doc = {"source": str(path), "output": output, "bytes": len(res.data),
           "origin": res.origin, "bits": res.bits, "assembler": res.backend}
    if output == "-":
        if as_json:
            fail("--json prints a report on stdout: give -o FILE for the image")
        sys.stdout.buffer.write(res.data)
        sys.stdout.flush()
        return
    from ..profile.atomic import WriteError, atomic_write
    try:
        atomic_write(output, res.data, exclusive=not force)
    except WriteError as e:
        fail(str(e))
    if as_json:
        emit_json(doc)
    else:
        err(f"wrote {output} ({len(res.data)} bytes at {res.origin:#x}, {res.bits}-bit, "
            f"assembled with {res.backend})")
    finish(EXIT_OK)


@guest.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json):
    """The bundled guests: image, NASM source, and profile (when the guest has one)."""
    from ..guests.build import bundled
    rows = bundled()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        extra = f"  profile: {r['profile']}" if r["profile"] else ""
        click.echo(f"{r['name']:12s} {r['source'] or '-'}{extra}")
