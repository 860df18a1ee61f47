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
@click.option("--report", metavar="NAME",
              help="The schema of a command's --json report instead (NAME: a command, "
                   "'error' for the error object; 'list' lists them).")
def schema(output, as_json, report):
    """Print a JSON Schema of the profile format for editors' TOML plug-ins
    (or, with --report NAME, of a command's --json report).

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
    if report:
        from ..report_schemas import REPORTS, schema as report_schema
        if report == "list":
            doc = sorted(REPORTS)
        elif report in REPORTS:
            doc = report_schema(report)
        else:
            fail(f"no report schema {report!r} (one of: {', '.join(sorted(REPORTS))})")
    else:
        from ..vmx.schema import profile_schema
        doc = profile_schema()
    text = json.dumps(doc, indent=2) + "\n"
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
