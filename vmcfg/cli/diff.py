"""vmcfg diff A B: two profiles (effective values) or two capability sets, bit by bit."""

from __future__ import annotations

import os

import click

from .common import EXIT_INVALID, EXIT_OK, check_cpu_caps, cpu_options, emit_json
from .report import fail, finish, out


def complete_diff_arg(ctx, param, incomplete):
    from click.shell_completion import CompletionItem
    from ..profile.loader import builtin_names
    from ..vmx.models import MODEL_NAMES
    items = [CompletionItem(n) for n in list(builtin_names()) + list(MODEL_NAMES)
             if n.startswith(incomplete)]
    items.append(CompletionItem(incomplete, type="file"))
    return items


# ---- classification -------------------------------------------------------------------------

def classify(spec: str):
    """('profile', spec) or ('caps', CapSet); raises ProfileError if neither."""
    from ..profile import ProfileError
    from ..profile.capfile import load_capfile
    from ..profile.loader import builtin_path
    from ..profile.source import load_toml
    from ..vmx.models import UnknownModel, get_model
    from ..vmx.msrs import parse_msr_name
    if os.path.isfile(spec):
        data, _ = load_toml(spec)
        msr = data.get("msr")
        if "capabilities" in data or (isinstance(msr, dict) and msr and all(
                parse_msr_name(str(k)) is not None for k in msr)):
            return "caps", load_capfile(spec)
        return "profile", spec
    if os.path.exists(spec):
        raise ProfileError("not a regular file", spec)
    if spec.startswith("builtin:") or builtin_path(spec):
        return "profile", spec
    try:
        return "caps", get_model(spec)
    except UnknownModel:
        pass
    from ..vmx.models import MODEL_NAMES
    from ..profile.loader import builtin_names
    import difflib
    hint = difflib.get_close_matches(spec.lower(), list(MODEL_NAMES) + builtin_names(), n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ProfileError(f"not a file, built-in profile or CPU model{extra}", spec)


# ---- profile diff ---------------------------------------------------------------------------

def _bit_rows(field: str, a: int, b: int, width: int, verdict=None) -> list[dict]:
    from ..vmx.table import CONTROL_BY_FIELD_BIT
    rows = []
    for bit in range(width):
        m = 1 << bit
        if (a ^ b) & m or (verdict and verdict(bit)):
            c = CONTROL_BY_FIELD_BIT[field].get(bit)
            rows.append({"bit": bit, "control": c.key if c else None,
                         "a": 1 if a & m else 0, "b": 1 if b & m else 0})
    return rows


def diff_profiles(ra, rb, spec_a: str | None = None, spec_b: str | None = None) -> dict:
    from ..profile.keys import display_value
    from ..vmx.table import FIELDS
    fields = []
    for f in FIELDS:
        a, b = ra.config.controls[f.key], rb.config.controls[f.key]
        if a != b:
            fields.append({"field": f.key, "encoding": f"0x{f.encoding:04x}",
                           "a": f"0x{a:x}", "b": f"0x{b:x}",
                           "bits": _bit_rows(f.key, a, b, f.width)})
    from ..vmx.configdiff import diff_configs
    settings = [{"key": d["key"], "a": d["old"], "b": d["new"],
                 "a_text": display_value(d["key"], d["old"]),
                 "b_text": display_value(d["key"], d["new"])}
                for d in diff_configs(ra.config, rb.config) if d["kind"] == "setting"]
    return {"kind": "profile", "equal": not fields and not settings,
            "a": {"spec": spec_a or ra.profile.path, "path": ra.profile.path,
                  "cpu": ra.caps.name, "valid": ra.valid},
            "b": {"spec": spec_b or rb.profile.path, "path": rb.profile.path,
                  "cpu": rb.caps.name, "valid": rb.valid},
            "fields": fields, "settings": settings}


def _v(x) -> str:
    if x is None:
        return "(absent)"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int) and x > 0xFFFF:
        return f"0x{x:x}"
    return str(x)


# ---- rendering --------------------------------------------------------------------------------

def _render(d: dict) -> None:
    a, b = d["a"], d["b"]
    if d["kind"] == "profile":
        out(click.style(f"--- {a['spec']} (on {a['cpu']})", fg="red"))
        out(click.style(f"+++ {b['spec']} (on {b['cpu']})", fg="green"))
        for f in d["fields"]:
            out(click.style(f"[{f['field']}] {f['a']} -> {f['b']}", bold=True))
            for r in f["bits"]:
                name = r["control"] or "(unnamed bit)"
                old, new = ("on" if r["a"] else "off"), ("on" if r["b"] else "off")
                sign = "+" if r["b"] else "-"
                out(click.style(f"  {sign} bit {r['bit']:2d}  {name:<38} {old} -> {new}",
                                fg="green" if r["b"] else "red"))
        for s in d["settings"]:
            out(f"  ~ {s['key']}: {s['a_text']} -> {s['b_text']}")
    else:
        out(click.style(f"--- {a['spec']}", fg="red"))
        out(click.style(f"+++ {b['spec']}", fg="green"))
        for f in d["fields"]:
            ex = "" if f["exists"][0] == f["exists"][1] else \
                f" (field exists: {f['exists'][0]} -> {f['exists'][1]})"
            out(click.style(f"[{f['field']}] allowed0 {f['a']['allowed0']} -> {f['b']['allowed0']}, "
                            f"allowed1 {f['a']['allowed1']} -> {f['b']['allowed1']}{ex}",
                            bold=True))
            for r in f["bits"]:
                name = r["control"] or "(unnamed bit)"
                out(f"  bit {r['bit']:2d}  {name:<38} {r['a']} -> {r['b']}")
        for o in d["other"]:
            out(f"  ~ {o['key']}: {_v(o['a'])} -> {_v(o['b'])}")
    if d["equal"]:
        out(click.style("no differences", fg="green"))
    else:
        nb = sum(len(f["bits"]) for f in d["fields"])
        extra = len(d.get("settings", d.get("other", [])))
        what = "setting(s)" if d["kind"] == "profile" else "other capabilities"
        out(f"{len(d['fields'])} field(s), {nb} bit(s), {extra} {what} differ")


@click.command()
@click.argument("a", metavar="A", shell_complete=complete_diff_arg)
@click.argument("b", metavar="B", shell_complete=complete_diff_arg)
@cpu_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def diff(a, b, cpu, caps_file, as_json):
    """Compare two profiles, or two capability sets, field by field and bit by bit.

    \b
    Profiles (files or built-in names) are compared by their effective values
    -- after `extends`, with forced and reserved bits filled in -- and by
    every setting.  Each is resolved on its own cpu unless --cpu/--caps
    picks one for both.  Capability sets (CPU model names or capability
    files) are compared by what each control bit may be (yes/no/forced/
    default) and by the other capability MSRs.
    Exit status: 0 equal, 1 different, 2 bad usage or unreadable input.
    """
    from ..profile import ProfileError, load_caps, load_profile, resolve_profile
    check_cpu_caps(cpu, caps_file)
    try:
        ka, xa = classify(a)
        kb, xb = classify(b)
        if ka != kb:
            what = {"profile": "a profile", "caps": "a capability set"}
            fail(f"cannot compare {what[ka]} ({a}) with {what[kb]} ({b})")
        if ka == "profile":
            shared = load_caps(cpu, caps_file) if (cpu or caps_file) else None
            pa, pb = load_profile(xa), load_profile(xb)
            ra = resolve_profile(pa, shared or load_caps(None, None, pa))
            rb = resolve_profile(pb, shared or load_caps(None, None, pb))
            d = diff_profiles(ra, rb, a, b)
        else:
            if cpu or caps_file:
                fail("--cpu/--caps apply to profiles, not to capability sets")
            from ..vmx.capdiff import diff_caps
            d = diff_caps(xa, xb)
    except ProfileError as e:
        fail(str(e))
    if as_json:
        emit_json(d)
    else:
        _render(d)
    finish(EXIT_OK if d["equal"] else EXIT_INVALID)
