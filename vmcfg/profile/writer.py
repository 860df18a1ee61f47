"""Rendering profiles as commented TOML (for `vmcfg new`) and TOML literals for values.

Everything is derived from the control table (vmx/table.py) and the settings
table (vmx/settings.py): which tables exist, the one-line meaning of each
control, the kinds and defaults of the settings.  Values are written back from
their normalised form (as the loader produces it) into readable TOML: hex for
addresses and masks, exception names, "lo-hi" port/MSR ranges, "16M" sizes.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..vmx.caps import CapSet
from ..vmx.kinds import kind_of, toml_key, toml_string  # noqa: F401 - toml_key re-exported
from ..vmx.settings import SETTINGS_BY_TABLE, SETTING_TABLES, Setting
from ..vmx.table import CONTROLS_BY_FIELD, FIELDS, Field
from .loader import Profile

# ---- TOML literals (strings, integers and keys: vmx/kinds.py) ------------------------


def literal(s: Setting, v: Any) -> str:
    """TOML literal for the normalised value v of setting s (its kind renders it)."""
    return '""' if v is None else kind_of(s).literal(s, v)


def example_value(s: Setting) -> Any:
    """A value to show in a commented-out line for setting s."""
    from .loader import normalize_setting
    v = s.default if s.default is not None else (s.choices[0] if s.choices else None)
    if v is None:
        return None
    try:
        return normalize_setting(s, v)
    except ValueError:
        return None


# ---- rendering a new profile ------------------------------------------------------------

def _aligned(rows: list[tuple[str, str]], min_col: int = 0) -> list[str]:
    """[(code, comment)] -> lines with the comments in one column."""
    width = max([len(c) for c, m in rows if m] + [min_col])
    out = []
    for code, comment in rows:
        if comment:
            out.append(f"{code.ljust(width)}  # {comment}")
        else:
            out.append(code)
    return out


def _wrap_comment(text: str, width: int = 76) -> list[str]:
    words = text.split()
    lines: list[str] = []
    cur = ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        lines.append(cur)
    return [f"# {ln}" for ln in lines] or ["#"]


def _field_section(f: Field, prof: Profile, caps: CapSet, on: set[str]) -> list[str]:
    must, may = caps.allowed(f.key)
    written = prof.controls.get(f.key, {})
    act = f" -- used only while {f.activated_by} = true" if f.activated_by else ""
    head = [f"# {f.title} (VMCS 0x{f.encoding:04X}){act}"]
    if f.key in prof.raw:
        return head + [f"# [{f.key}] is given as a raw value in [raw]", ""]
    rows: list[tuple[str, str]] = []
    unsupported = []
    for c in CONTROLS_BY_FIELD[f.key]:
        supported = bool(may & c.mask)
        forced = bool(must & c.mask)
        if c.key in written:
            note = c.meaning
            if not supported and written[c.key] is False:
                note = f"(not supported by {caps.name}) {c.meaning}"
            rows.append((f"{c.key} = {'true' if written[c.key] else 'false'}", note))
        elif supported:
            note = (f"(always 1 on {caps.name}) " if forced else "") + c.meaning
            rows.append((f"# {c.key} = true", note))
        else:
            unsupported.append(c.key)
    if not rows:
        lines = [f"# {f.title}: {caps.name} supports none of these controls"
                 + (f" ({caps.name} has no {f.cap_msr})" if not caps.field_exists(f.key) else "")]
        return lines + [""]
    lines = head + [f"[{f.key}]"] + _aligned(rows)
    if unsupported:
        lines += _wrap_comment(f"not supported by {caps.name}: {', '.join(unsupported)}")
    return lines + [""]


def _setting_rows(table: str, prof: Profile, on: set[str]) -> list[tuple[str, str]]:
    vals = prof.settings.get(table, {})
    rows: list[tuple[str, str]] = []
    specs = SETTINGS_BY_TABLE[table]
    expert = any(s.optional and s.vmcs is not None for s in specs)
    for s in specs:
        if s.key in vals:
            rows.append((f"{toml_key(s.key)} = {literal(s, vals[s.key])}", s.meaning or s.title))
            continue
        if expert or not s.meaning or (s.needs and s.needs not in on):
            continue
        ex = example_value(s)
        if ex is None:
            continue
        rows.append((f"# {toml_key(s.key)} = {literal(s, ex)}", s.meaning))
    return rows


def _star_section(table: str, spec: Setting, value: dict) -> list[str]:
    lines = _wrap_comment(f"{spec.title}: {spec.meaning}")
    return lines + kind_of(spec).table_lines(table, value) + [""]


def render_new_profile(prof: Profile, caps: CapSet, *, on: Iterable[str] = (),
                       header: Iterable[str] = ()) -> str:
    """A complete, commented profile for `prof` (flattened: no extends).

    `on` are the control paths that are effectively 1 (to decide which
    settings are worth showing); `header` are extra comment lines.
    """
    on = set(on)
    out: list[str] = []
    title = prof.name + (f" -- {prof.description}" if prof.description else "")
    out += _wrap_comment(title)
    out.append("#")
    cpu_title = f" ({caps.title})" if caps.title else ""
    out += _wrap_comment(
        f"Written by `vmcfg new` for {caps.name}{cpu_title}. Every control {caps.name} "
        f"supports is listed: the lines this profile sets are active, the others are "
        f"commented out (remove the '# ' to use one). Check with `vmcfg validate FILE`, "
        f"change with `vmcfg set FILE KEY=VALUE` or `vmcfg edit FILE`.")
    extra = list(header)
    if extra:
        out.append("#")
        out += [f"# {h}" if h else "#" for h in extra]
    out.append("")
    meta = [("name", prof.name), ("description", prof.description), ("extends", prof.extends),
            ("cpu", prof.cpu)]
    out.append("[profile]")
    out += [f"{k} = {toml_string(v)}" for k, v in meta if v]
    out.append("")
    if prof.raw:
        out.append("# Whole control fields given as raw values (no named bits in these tables)")
        out.append("[raw]")
        out += [f"{k} = 0x{v:08x}" for k, v in prof.raw.items()]
        out.append("")
    for f in FIELDS:
        out += _field_section(f, prof, caps, on)
    for t in SETTING_TABLES:
        specs = SETTINGS_BY_TABLE[t]
        if len(specs) == 1 and specs[0].key == "*":
            v = prof.settings.get(t, {}).get("*")
            if v:
                out += _star_section(t, specs[0], v)
            continue
        rows = _setting_rows(t, prof, on)
        if not rows:
            continue
        needs = {s.needs for s in specs if s.needs}
        note = f" -- used with {', '.join(sorted(needs))}" if needs else ""
        title = specs[0].title if len(specs) == 1 else t
        out.append(f"# Settings: {title}{note}")
        out.append(f"[{t}]")
        out += _aligned(rows)
        out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"
