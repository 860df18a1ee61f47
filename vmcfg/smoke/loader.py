"""Reading a smoke file: shape checks with file:line:col, matrix expansion.

    [smoke]                     # optional
    name = "guest-ci"           # JUnit suite name (default: the file's stem)
    grace = 10                  # seconds past a case's timeout before it is killed

    [defaults]                  # optional: options and expectations for every case
    timeout = 10
    expect.status = "halted"

    [[case]]                    # one case
    profile = "baseline"        # a built-in profile or a path relative to this file
    guest = "builtin:cpuid"     # a bundled guest or a path relative to this file
    expect.exits = { CPUID = ">= 1" }

    [[matrix]]                  # profiles x guests
    profiles = ["baseline", "../lab/timing.toml"]
    guests = ["builtin:hello", "builtin:cpuid"]
    exclude = [{ profile = "timing", guest = "hello" }]
    [[matrix.cell]]             # per-cell options / expectations (either selector may be left out)
    profile = "baseline"
    guest = "cpuid"
    expect.exits = { CPUID = 3 }

The full format is documented in docs/smoke.md.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any

from ..profile.source import Pos, ProfileError, parse_toml, read_text, scan_positions
from .model import (DEFAULT_GRACE, DEFAULT_TIMEOUT, STATUSES, Bound, Case, Expect,
                    SmokeFileError, Suite, parse_bound, short_name)

TOP_KEYS = ("smoke", "defaults", "case", "matrix")
SMOKE_KEYS = ("name", "grace")
OPTION_KEYS = ("mode", "memory", "timeout", "max_instructions", "args")
CASE_KEYS = ("id", "profile", "guest", "skip", "expect") + OPTION_KEYS
MATRIX_KEYS = ("id", "profiles", "guests", "skip", "expect", "exclude", "cell") + OPTION_KEYS
CELL_KEYS = ("profile", "guest", "skip", "expect") + OPTION_KEYS
EXCLUDE_KEYS = ("profile", "guest")
DEFAULTS_KEYS = ("expect",) + OPTION_KEYS
EXPECT_KEYS = ("status", "exit_code", "exits", "no_other_exits", "instructions", "tsc",
               "console_contains", "console_not_contains", "console_matches")
MANAGED_FLAGS = ("--json", "--trace", "--console")
OPTION_FLAGS = {"--guest": "guest", "--mode": "mode", "--memory": "memory",
                "--timeout": "timeout", "--max-instructions": "max_instructions"}

ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+:=@,\[\]-]*$")
_ID_BAD = re.compile(r"[^A-Za-z0-9_.+:=@,\[\]-]")
DEFAULT_ID = "{profile}-x-{guest}"


# ---- the loader -----------------------------------------------------------------------

class _Ctx:
    def __init__(self, path: str, pos: dict[tuple, Pos]):
        self.path = path
        self.pos = pos
        self.base_dir = os.path.dirname(os.path.abspath(path))

    def where(self, key: tuple) -> Pos | None:
        k = tuple(key)
        while k:
            p = self.pos.get(k)
            if p is not None:
                return p
            k = k[:-1]
        return None

    def error(self, msg: str, key: tuple) -> SmokeFileError:
        p = self.where(key)
        if p:
            return SmokeFileError(msg, p.path, p.line, p.col)
        return SmokeFileError(msg, self.path)


def _label(key: tuple) -> str:
    """("case", 2, "expect", "exits") -> case[3].expect.exits (1-based like the file)."""
    out = ""
    for s in key:
        if isinstance(s, int):
            out += f"[{s + 1}]"
        else:
            out += ("." if out else "") + s
    return out


def _check_keys(ctx: _Ctx, table: Any, key: tuple, allowed: tuple[str, ...], what: str) -> dict:
    if not isinstance(table, dict):
        raise ctx.error(f"{_label(key) or what} must be a table, got {_tname(table)}", key)
    for k in table:
        if k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
            raise ctx.error(f"unknown key {k!r} in {what}{extra}", key + (k,))
    return table


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _str(ctx: _Ctx, v: Any, key: tuple) -> str:
    if not isinstance(v, str):
        raise ctx.error(f"{_label(key)} must be a string, got {_tname(v)}", key)
    if not v.strip():
        raise ctx.error(f"{_label(key)} must not be empty", key)
    return v


def _str_list(ctx: _Ctx, v: Any, key: tuple, *, allow_single: bool = True,
              allow_empty: bool = False) -> list[str]:
    if isinstance(v, str) and allow_single:
        v = [v]
    if not isinstance(v, list):
        raise ctx.error(f"{_label(key)} must be {'a string or ' if allow_single else ''}"
                        f"an array of strings, got {_tname(v)}", key)
    if not v and not allow_empty:
        raise ctx.error(f"{_label(key)} must not be empty", key)
    for x in v:
        if not isinstance(x, str):
            raise ctx.error(f"{_label(key)}: expected strings, got {_tname(x)}", key)
    return list(v)


def _number(ctx: _Ctx, v: Any, key: tuple) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ctx.error(f"{_label(key)} must be a positive number of seconds, got {v!r}", key)
    return float(v)


def _options(ctx: _Ctx, t: dict, key: tuple) -> dict[str, Any]:
    """The launch options written in one table (only the keys present)."""
    out: dict[str, Any] = {}
    if "mode" in t:
        v = t["mode"]
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v not in (16, 32, 64):
            raise ctx.error(f"{_label(key + ('mode',))} must be 16, 32 or 64, got {t['mode']!r}",
                            key + ("mode",))
        out["mode"] = v
    if "memory" in t:
        from ..vmx.sizes import parse_size
        v = t["memory"]
        try:
            n = parse_size(v)
        except ValueError as e:
            raise ctx.error(f"{_label(key + ('memory',))}: {e}", key + ("memory",)) from None
        if n <= 0:
            raise ctx.error(f"{_label(key + ('memory',))} must be positive", key + ("memory",))
        out["memory"] = str(v) if isinstance(v, str) else str(n)
    if "timeout" in t:
        out["timeout"] = _number(ctx, t["timeout"], key + ("timeout",))
    if "max_instructions" in t:
        v = t["max_instructions"]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ctx.error(f"{_label(key + ('max_instructions',))} must be a positive integer, "
                            f"got {v!r}", key + ("max_instructions",))
        out["max_instructions"] = v
    if "args" in t:
        k = key + ("args",)
        args = _str_list(ctx, t["args"], k, allow_single=False, allow_empty=True)
        for a in args:
            flag = a.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise ctx.error(f"{_label(k)}: {flag} is set by vmcfg smoke itself", k)
            if flag in OPTION_FLAGS:
                raise ctx.error(f"{_label(k)}: use the {OPTION_FLAGS[flag]!r} key instead of "
                                f"{flag}", k)
        out["args"] = tuple(args)
    if "skip" in t:
        v = t["skip"]
        k = key + ("skip",)
        if isinstance(v, bool):
            out["skip"] = "skipped in the smoke file" if v else None
        elif isinstance(v, str) and v.strip():
            out["skip"] = v.strip()
        else:
            raise ctx.error(f"{_label(k)} must be a reason (a string) or true, got {v!r}", k)
    return out


def _expect(ctx: _Ctx, t: Any, key: tuple) -> dict[str, Any]:
    """The expectations written in one `expect` table (only the keys present)."""
    from ..vmx.exits import EXIT_BY_NAME, lookup_exit
    _check_keys(ctx, t, key, EXPECT_KEYS, _label(key))
    out: dict[str, Any] = {}
    if "status" in t:
        k = key + ("status",)
        sts = _str_list(ctx, t["status"], k)
        for s in sts:
            if s not in STATUSES:
                hint = difflib.get_close_matches(s, STATUSES, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ctx.error(f"{_label(k)}: unknown status {s!r} (one of: "
                                f"{', '.join(STATUSES)}){extra}", k)
        out["status"] = tuple(dict.fromkeys(sts))
    if "exit_code" in t:
        k = key + ("exit_code",)
        v = t["exit_code"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32:
            raise ctx.error(f"{_label(k)} must be the value the guest writes to port 0xF4 "
                            f"(a non-negative integer), got {v!r}", k)
        if "status" in out and "debug-exit" not in out["status"]:
            raise ctx.error(f"{_label(k)} is the code of a debug exit, but status "
                            f"{list(out['status'])} does not include \"debug-exit\"", k)
        out["exit_code"] = v
    if "exits" in t:
        k = key + ("exits",)
        v = t["exits"]
        if not isinstance(v, dict):
            raise ctx.error(f"{_label(k)} must be a table of exit reason = count "
                            f"(e.g. {{ CPUID = 3, HLT = \">= 1\" }}), got {_tname(v)}", k)
        exits: dict[int, Bound] = {}
        for name, b in v.items():
            kk = k + (name,)
            r = lookup_exit(name)
            if r is None:
                norm = name.strip().upper().replace("-", "_")
                hint = difflib.get_close_matches(norm, list(EXIT_BY_NAME), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                if not hint:
                    extra = (" (names as in the SDM's appendix C, e.g. CPUID, HLT, "
                             "IO_INSTRUCTION, EPT_VIOLATION, or numbers)")
                raise ctx.error(f"{_label(k)}: unknown exit reason {name!r}{extra}", kk)
            if r.number in exits:
                raise ctx.error(f"{_label(k)}: exit reason {r.name} is given twice", kk)
            try:
                exits[r.number] = parse_bound(b)
            except ValueError as e:
                raise ctx.error(f"{_label(kk)}: {e}", kk) from None
        out["exits"] = exits
    if "no_other_exits" in t:
        k = key + ("no_other_exits",)
        if not isinstance(t["no_other_exits"], bool):
            raise ctx.error(f"{_label(k)} must be true or false", k)
        out["no_other_exits"] = t["no_other_exits"]
    for name in ("instructions", "tsc"):
        if name in t:
            k = key + (name,)
            try:
                out[name] = parse_bound(t[name])
            except ValueError as e:
                raise ctx.error(f"{_label(k)}: {e}", k) from None
    for name in ("console_contains", "console_not_contains", "console_matches"):
        if name in t:
            k = key + (name,)
            vals = _str_list(ctx, t[name], k, allow_empty=True)
            if name == "console_matches":
                for rx in vals:
                    try:
                        re.compile(rx, re.M)
                    except re.error as e:
                        raise ctx.error(f"{_label(k)}: bad regular expression {rx!r}: {e}",
                                        k) from None
            elif any(x == "" for x in vals):
                raise ctx.error(f"{_label(k)}: an empty string always matches", k)
            out[name] = tuple(vals)
    return out


def merge_expect(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Layer `over` on `base`: keys replace, except `exits`, merged per reason."""
    out = dict(base)
    for k, v in over.items():
        out[k] = {**base.get("exits", {}), **v} if k == "exits" else v
    if "exit_code" in over and "status" not in over:
        out["status"] = ("debug-exit",)
    if "status" in over and "exit_code" not in over and "debug-exit" not in over["status"]:
        out.pop("exit_code", None)
    return out


def _make_expect(layers: list[dict[str, Any]]) -> Expect:
    acc: dict[str, Any] = {}
    for layer in layers:
        acc = merge_expect(acc, layer)
    return Expect(**acc)


def _bundled_guests() -> list[str]:
    try:
        from ..api import guests
        return guests()
    except Exception:     # the VMM is not importable: look at the folder ourselves
        d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guests")
        try:
            return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".bin"))
        except OSError:
            return []


class _Resolver:
    """Profile and guest specs -> what `vmcfg launch` gets (cached per spec)."""

    def __init__(self, ctx: _Ctx):
        self.ctx = ctx
        self.profiles: dict[str, str] = {}
        self.guests: dict[str, str] = {}
        self._bundled: list[str] | None = None

    def bundled(self) -> list[str]:
        if self._bundled is None:
            self._bundled = _bundled_guests()
        return self._bundled

    def profile(self, spec: str, key: tuple) -> str:
        if spec in self.profiles:
            return self.profiles[spec]
        from ..profile.loader import builtin_dir, find_profile
        try:
            p = find_profile(spec, relative_to=os.path.abspath(self.ctx.path))
        except ProfileError as e:
            raise self.ctx.error(f"profile {spec!r}: {e.message}"
                                 + (f" ({e.path})" if e.path and e.path != spec else ""),
                                 key) from None
        p = os.path.abspath(p)
        if os.path.isdir(p):
            raise self.ctx.error(f"profile {spec!r}: {p} is a directory", key)
        if os.path.dirname(p) == os.path.abspath(builtin_dir()) and "/" not in spec \
                and not spec.endswith(".toml"):
            arg = short_name(spec)           # a built-in: launch finds it by name
        else:
            arg = p
        self.profiles[spec] = arg
        return arg

    def guest(self, spec: str, key: tuple) -> str:
        if spec in self.guests:
            return self.guests[spec]
        if spec.startswith("builtin:"):
            name = spec[len("builtin:"):]
            if name not in self.bundled():
                raise self.ctx.error(self._no_bundled(name), key)
            arg = spec
        else:
            p = spec if os.path.isabs(spec) else os.path.join(self.ctx.base_dir, spec)
            if os.path.isfile(p):
                arg = os.path.abspath(p)
            elif "/" not in spec and "." not in spec and spec in self.bundled():
                arg = "builtin:" + spec
            elif os.path.exists(p):
                raise self.ctx.error(f"guest {spec!r}: {p} is not a regular file", key)
            else:
                hint = ""
                if "/" not in spec and "." not in spec:
                    hint = "; " + self._no_bundled(spec)
                raise self.ctx.error(f"guest {spec!r}: no such file ({p}){hint}", key)
        self.guests[spec] = arg
        return arg

    def _no_bundled(self, name: str) -> str:
        names = self.bundled()
        hint = difflib.get_close_matches(name, names, n=1)
        if hint:
            return f"no bundled guest {name!r} (did you mean 'builtin:{hint[0]}'?)"
        return (f"no bundled guest {name!r} (bundled: "
                f"{', '.join(names) if names else 'none installed'})")


def _case_id(ctx: _Ctx, template: str, profile: str, guest: str | None, opts: dict,
             key: tuple) -> str:
    fields = {"profile": _ID_BAD.sub("_", short_name(profile)),
              "guest": _ID_BAD.sub("_", short_name(guest)) if guest else "",
              "mode": str(opts.get("mode", "")), "memory": str(opts.get("memory", ""))}
    if guest is None and template == DEFAULT_ID:
        template = "{profile}"
    try:
        cid = template.format_map(fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ctx.error(f"{_label(key)}: bad id template {template!r} ({type(e).__name__}: {e}; "
                        f"fields: {{profile}}, {{guest}}, {{mode}}, {{memory}})", key) from None
    if not ID_RE.match(cid):
        raise ctx.error(f"{_label(key)}: case id {cid!r} may only contain letters, digits and "
                        f"_ . + : = @ , [ ] - (and must not start with one of . + : = @ , [ ] -)",
                        key)
    return cid


def _selector_matches(sel: str | None, spec: str | None) -> bool:
    if sel is None:
        return True
    if spec is None:
        return False
    return sel == spec or sel == short_name(spec)


def load_smoke(path: str) -> Suite:
    """Read and check a smoke file; raise SmokeFileError (file:line:col) on any problem."""
    try:
        text = read_text(path)
        data, _ = parse_toml(text, path)
    except SmokeFileError:
        raise
    except ProfileError as e:
        raise SmokeFileError(e.message, e.path, e.line, e.col) from None
    ctx = _Ctx(path, scan_positions(text, path))
    res = _Resolver(ctx)
    _check_keys(ctx, data, (), TOP_KEYS, "a smoke file")

    smoke = _check_keys(ctx, data.get("smoke", {}), ("smoke",), SMOKE_KEYS, "[smoke]")
    name = short_name(os.path.basename(path))
    if name.endswith(".toml"):
        name = name[:-5]
    if "name" in smoke:
        name = _str(ctx, smoke["name"], ("smoke", "name"))
    grace = DEFAULT_GRACE
    if "grace" in smoke:
        grace = _number(ctx, smoke["grace"], ("smoke", "grace"))

    dflt = _check_keys(ctx, data.get("defaults", {}), ("defaults",), DEFAULTS_KEYS, "[defaults]")
    d_opts = _options(ctx, dflt, ("defaults",))
    d_exp = _expect(ctx, dflt["expect"], ("defaults", "expect")) if "expect" in dflt else {}

    for arr in ("case", "matrix"):
        if arr in data and not isinstance(data[arr], list):
            raise ctx.error(f"write [[{arr}]] (an array of tables), not [{arr}]", (arr,))

    cases: list[Case] = []
    seen: dict[str, Case] = {}

    def add(c: Case, key: tuple) -> None:
        if c.id in seen:
            first = seen[c.id]
            raise ctx.error(f"duplicate case id {c.id!r} (first defined at {first.where}); "
                            f"give one of them an explicit id", key)
        seen[c.id] = c
        cases.append(c)

    def build(profile: str, guest: str | None, opt_layers: list[dict], exp_layers: list[dict],
              template: str, key: tuple, pkey: tuple, gkey: tuple, origin: str) -> Case:
        opts: dict[str, Any] = {}
        for layer in opt_layers:
            opts.update(layer)
        p = ctx.where(key)
        c = Case(id="", profile=profile, profile_path=res.profile(profile, pkey),
                 guest=guest, guest_arg=res.guest(guest, gkey) if guest else None,
                 mode=opts.get("mode"), memory=opts.get("memory"),
                 timeout=opts.get("timeout", DEFAULT_TIMEOUT),
                 max_instructions=opts.get("max_instructions"), args=opts.get("args", ()),
                 skip=opts.get("skip"), expect=_make_expect(exp_layers),
                 where=f"{p.path}:{p.line}" if p else path, line=p.line if p else None,
                 origin=origin)
        c.id = _case_id(ctx, template, profile, guest, opts, key + ("id",))
        return c

    for i, t in enumerate(data.get("case", [])):
        key = ("case", i)
        _check_keys(ctx, t, key, CASE_KEYS, "[[case]]")
        if "profile" not in t:
            raise ctx.error("[[case]] needs a profile (a built-in name or a path)", key)
        prof = _str(ctx, t["profile"], key + ("profile",))
        guest = _str(ctx, t["guest"], key + ("guest",)) if "guest" in t else None
        template = DEFAULT_ID
        explicit = False
        if "id" in t:
            template = _str(ctx, t["id"], key + ("id",))
            explicit = "{" not in template
        exp = _expect(ctx, t["expect"], key + ("expect",)) if "expect" in t else {}
        c = build(prof, guest, [d_opts, _options(ctx, t, key)], [d_exp, exp], template, key,
                  key + ("profile",), key + ("guest",), "case")
        add(c, key + ("id",) if explicit else key)

    for i, m in enumerate(data.get("matrix", [])):
        key = ("matrix", i)
        _check_keys(ctx, m, key, MATRIX_KEYS, "[[matrix]]")
        if "profiles" not in m:
            raise ctx.error("[[matrix]] needs profiles = [...] (built-in names or paths)", key)
        profiles = _str_list(ctx, m["profiles"], key + ("profiles",))
        guests: list[str | None] = [None]
        if "guests" in m:
            guests = list(_str_list(ctx, m["guests"], key + ("guests",)))
        for lst, k in ((profiles, "profiles"), (guests, "guests")):
            dup = [x for j, x in enumerate(lst) if x in lst[:j]]
            if dup:
                raise ctx.error(f"{_label(key + (k,))}: {dup[0]!r} is listed twice", key + (k,))
        template = _str(ctx, m["id"], key + ("id",)) if "id" in m else DEFAULT_ID
        m_opts = _options(ctx, m, key)
        m_exp = _expect(ctx, m["expect"], key + ("expect",)) if "expect" in m else {}
        # validate every profile and guest once, pointing at the list
        for p in profiles:
            res.profile(p, key + ("profiles",))
        for g in guests:
            if g is not None:
                res.guest(g, key + ("guests",))

        excludes: list[tuple[str | None, str | None, tuple]] = []
        ex = m.get("exclude", [])
        if isinstance(ex, dict):
            ex = [ex]
        if not isinstance(ex, list):
            raise ctx.error(f"{_label(key + ('exclude',))} must be an array of "
                            f"{{ profile = ..., guest = ... }} tables", key + ("exclude",))
        for j, e in enumerate(ex):
            ek = key + ("exclude", j)
            _check_keys(ctx, e, ek, EXCLUDE_KEYS, "an exclude entry")
            if not e:
                raise ctx.error(f"{_label(key + ('exclude',))}: an empty entry would exclude "
                                f"every cell", ek)
            sp = _str(ctx, e["profile"], ek + ("profile",)) if "profile" in e else None
            sg = _str(ctx, e["guest"], ek + ("guest",)) if "guest" in e else None
            excludes.append((sp, sg, ek))

        cells: list[tuple[str | None, str | None, dict, dict, tuple]] = []
        cl = m.get("cell", [])
        if not isinstance(cl, list):
            raise ctx.error("write [[matrix.cell]] (an array of tables), not [matrix.cell]",
                            key + ("cell",))
        for j, c in enumerate(cl):
            ck = key + ("cell", j)
            _check_keys(ctx, c, ck, CELL_KEYS, "[[matrix.cell]]")
            sp = _str(ctx, c["profile"], ck + ("profile",)) if "profile" in c else None
            sg = _str(ctx, c["guest"], ck + ("guest",)) if "guest" in c else None
            c_exp = _expect(ctx, c["expect"], ck + ("expect",)) if "expect" in c else {}
            cells.append((sp, sg, _options(ctx, c, ck), c_exp, ck))

        used_ex: set[int] = set()
        used_cell: set[int] = set()
        for prof in profiles:
            for guest in guests:
                hit = [j for j, (sp, sg, _) in enumerate(excludes)
                       if _selector_matches(sp, prof) and _selector_matches(sg, guest)]
                if hit:
                    used_ex.update(hit)
                    continue
                opt_layers = [d_opts, m_opts]
                exp_layers = [d_exp, m_exp]
                for j, (sp, sg, c_opts, c_exp, _) in enumerate(cells):
                    if _selector_matches(sp, prof) and _selector_matches(sg, guest):
                        used_cell.add(j)
                        opt_layers.append(c_opts)
                        exp_layers.append(c_exp)
                case = build(prof, guest, opt_layers, exp_layers, template, key,
                             key + ("profiles",), key + ("guests",), "matrix")
                add(case, key + ("id",) if "id" in m else key)
        for j, (sp, sg, ek) in enumerate(excludes):
            if j not in used_ex:
                raise ctx.error(f"exclude entry {_sel_text(sp, sg)} matches no cell of this "
                                f"matrix", ek)
        for j, (sp, sg, _, _, ck) in enumerate(cells):
            if j not in used_cell:
                raise ctx.error(f"[[matrix.cell]] {_sel_text(sp, sg)} matches no cell of this "
                                f"matrix (excluded, or a typo?)", ck)

    if not cases:
        raise SmokeFileError("no cases: add a [[case]] or a [[matrix]]", path)
    return Suite(path=path, name=name, cases=cases, grace=grace)


def _sel_text(sp: str | None, sg: str | None) -> str:
    parts = []
    if sp is not None:
        parts.append(f"profile = {sp!r}")
    if sg is not None:
        parts.append(f"guest = {sg!r}")
    return "{ " + ", ".join(parts) + " }"
