"""vmcfg schema: the JSON Schema of the profile format (generated from the tables)."""

from __future__ import annotations

import json
import sys

import click

from .common import EXIT_OK, err
from .report import fail, finish


@click.command()
@click.option("-o", "--output", metavar="FILE", help="Write the schema to FILE instead of stdout.")
@click.option("--json", "as_json", is_flag=True, help="Accepted for uniformity (the output is JSON).")
def schema(output, as_json):
    """Print a JSON Schema of the profile format for editors' TOML plug-ins.

    \b
    Generated from the same control and settings tables vmcfg validates
    with.  For Taplo / Even Better TOML either put
        #:schema ./vmcfg-profile.schema.json
    as the first line of a profile, or add to .taplo.toml:
        [[rule]]
        include = ["profiles/**/*.toml"]
        [rule.schema]
        path = "./vmcfg-profile.schema.json"
    """
    from ..vmx.schema import profile_schema
    text = json.dumps(profile_schema(), indent=2) + "\n"
    if output and output != "-":
        from ..profile.atomic import WriteError, atomic_write
        try:
            atomic_write(output, text)
        except WriteError as e:
            fail(str(e))
        err(f"wrote {output}")
    else:
        sys.stdout.write(text)
    finish(EXIT_OK)
