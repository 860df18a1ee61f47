"""Dependency closures: from "I want X" to every control X needs.

Three sources, all data:

* the `requires(...)` rules of rules.py (``Rule.requires`` = ((when-any-of...),
  need)): a control in a rule's when-list pulls in the rule's need;
* the activation of the secondary/tertiary fields (``Field.activated_by``):
  a secondary/tertiary control pulls in its activate control (rule E33 says
  those bits are ignored otherwise);
* the settings table's ``needs``: a setting pulls in the control without
  which it has no effect (rule W6), and a few value rules that make one
  setting require a control (``SETTING_RULE_NEEDS``).

`closure()` also checks the result against a capability set and the
``excludes(...)`` rules and raises ClosureError naming the missing capability
or the conflicting rule.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field as _dcf

from .caps import CapSet
from .msrs import MSR_NAMES
from .rules import RULE_BY_ID, RULES
from .settings import SETTING_BY_PATH, SETTINGS
from .table import ALIASES, CONTROL_BY_PATH, FIELD_BY_KEY, resolve_control

# Value rules that make a setting require a control (not expressible as requires()).
SETTING_RULE_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "vmfunc.eptp_switching": (("secondary.enable_ept", "E31"),),
}


class ClosureError(Exception):
    """The wanted set cannot be provided (capability missing, conflict, bad name)."""

    def __init__(self, message: str, problems: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []

    def __str__(self) -> str:
        return self.message


@dataclass
class Want:
    path: str              # control path or setting path
    kind: str              # "control" or "setting"
    value: object = True   # bool for controls, a TOML value (None: default) for settings
    spelled: str = ""


@dataclass
class Added:
    path: str              # control added
    rule: str              # rule id
    title: str             # rule title
    because: str           # the control/setting that needed it

    def to_json(self) -> dict:
        return {"control": self.path, "rule": self.rule, "title": self.title,
                "required_by": self.because}


@dataclass
class Closure:
    controls: dict[str, bool] = _dcf(default_factory=dict)   # path -> value (wanted + added)
    settings: dict[str, object] = _dcf(default_factory=dict)  # path -> value (None: default)
    added: list[Added] = _dcf(default_factory=list)
    wanted: list[Want] = _dcf(default_factory=list)
    satisfied: list[Added] = _dcf(default_factory=list)   # requirements already on in the base

    def chain(self, path: str) -> list[Added]:
        """How `path` came in: [the added step that brought it, its parent's step, ...]."""
        by = {a.path: a for a in self.added}
        out = []
        seen = set()
        while path in by and path not in seen:
            seen.add(path)
            out.append(by[path])
            path = by[path].because
        return out


def resolve_want(name: str) -> Want:
    """A --want argument: control (any spelling), setting path, optionally =VALUE."""
    raw = name
    value: object = None
    if "=" in name:
        name, text = name.split("=", 1)
        value = text.strip()
    name = name.strip()
    if not name:
        raise ClosureError(f"--want {raw!r}: empty name")
    if name in SETTING_BY_PATH and SETTING_BY_PATH[name].key != "*":
        return Want(name, "setting", value, raw)
    hits = resolve_control(name)
    if "." in name and not hits:
        fk, key = name.split(".", 1)
        if fk in FIELD_BY_KEY:
            hits = resolve_control(key, fk)
    if len(hits) > 1:
        raise ClosureError(f"--want {name!r} is ambiguous: "
                           f"{' or '.join(c.path for c, _ in hits)} (write the table, e.g. {hits[0][0].path})")
    if hits:
        ctl, inverted = hits[0]
        on = True
        if value is not None:
            on = _truth(str(value), raw)
        return Want(ctl.path, "control", (not on) if inverted else on, raw)
    choices = list(ALIASES) + [p for p, s in SETTING_BY_PATH.items() if s.key != "*"]
    hint = difflib.get_close_matches(name.lower(), choices, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ClosureError(f"--want {name!r}: not a control or setting{extra}")


def _truth(text: str, raw: str) -> bool:
    from .kinds import parse_truth
    try:
        return parse_truth(text)
    except ValueError:
        raise ClosureError(f"--want {raw!r}: a control takes on/off (true/false), "
                           f"not {text!r}") from None


def _requirements(path: str) -> list[tuple[str, str]]:
    """[(needed control, rule id)] that `path` (a control) pulls in."""
    out: list[tuple[str, str]] = []
    for r in RULES:
        if r.alias_of:
            continue
        for whens, need in r.requires:
            if path in whens:
                out.append((need, r.id))
    c = CONTROL_BY_PATH[path]
    act = FIELD_BY_KEY[c.field].activated_by
    if act:
        out.append((act, "E33"))
    return out


def _setting_requirements(path: str) -> list[tuple[str, str]]:
    s = SETTING_BY_PATH[path]
    out = [(s.needs, "W6")] if s.needs else []
    out += list(SETTING_RULE_NEEDS.get(path, ()))
    return out


def missing_capability(caps: CapSet, path: str) -> str:
    """Why `caps` cannot set control `path` to 1 (the MSR and bit)."""
    c = CONTROL_BY_PATH[path]
    f = FIELD_BY_KEY[c.field]
    idx = caps.field_msr(f)
    msr = MSR_NAMES.get(idx, hex(idx))
    if not caps.field_exists(c.field):
        return f"{caps.name} has no {f.title.lower()} ({f.cap_msr} does not exist)"
    return f"{msr} allowed-1 bit {c.bit} is 0 on {caps.name}"


def closure(wants: list[Want], caps: CapSet, base: dict[str, bool] | None = None) -> Closure:
    """Everything `wants` needs on top of `base` (control path -> value already set).

    Raises ClosureError when caps cannot provide a control the closure needs,
    when two controls of the closure exclude each other, or when a wanted
    "off" is needed by another part of the closure.
    """
    base = dict(base or {})
    res = Closure(wanted=list(wants))
    queue: list[str] = []
    explicit_off: dict[str, str] = {}
    for w in wants:
        if w.kind == "control":
            res.controls[w.path] = bool(w.value)
            if w.value:
                queue.append(w.path)
            else:
                explicit_off[w.path] = w.spelled or w.path
        else:
            res.settings[w.path] = w.value
            for need, rid in _setting_requirements(w.path):
                _add(res, need, rid, w.path, queue, base)
    while queue:
        p = queue.pop(0)
        for need, rid in _requirements(p):
            _add(res, need, rid, p, queue, base)
    # conflicts with explicit offs
    problems = []
    for p, spelled in explicit_off.items():
        needed_by = [a for a in res.added if a.path == p]
        if needed_by:
            a = needed_by[0]
            problems.append({"control": p, "rule": a.rule,
                             "message": f"{p} is wanted off, but {a.because} needs it "
                                        f"(rule {a.rule}: {a.title})"})
    final_on = {p for p, v in base.items() if v}
    final_on |= {p for p, v in res.controls.items() if v}
    final_on -= {p for p, v in res.controls.items() if not v}
    for r in RULES:
        for a, b in r.excludes:
            if a in final_on and b in final_on:
                problems.append({"control": b, "rule": r.id,
                                 "message": f"{a} and {b} exclude each other (rule {r.id}: "
                                            f"{r.title}); clear one of them"})
    order = [w.path for w in wants if w.kind == "control"] + [a.path for a in res.added]
    for p in dict.fromkeys(order):
        if not res.controls.get(p) or caps.supports(p):
            continue
        cap = missing_capability(caps, p)
        steps = res.chain(p)
        if steps:
            via = " <- ".join(f"{s.because} [rule {s.rule}]" for s in steps)
            msg = f"{caps.name} cannot provide {p} (needed by {via}): {cap}"
        else:
            msg = f"{caps.name} cannot provide {p}: {cap}"
        problems.append({"control": p, "rule": steps[0].rule if steps else None,
                         "message": msg, "capability": cap})
    if problems:
        raise ClosureError("; ".join(x["message"] for x in problems), problems)
    return res


def _add(res: Closure, need: str, rid: str, because: str, queue: list[str],
         base: dict[str, bool]) -> None:
    if res.controls.get(need):
        return
    if need in res.controls and res.controls[need] is False:
        # wanted off explicitly: record the conflict (reported by closure())
        res.added.append(Added(need, rid, RULE_BY_ID[rid].title, because))
        return
    if base.get(need):
        if not any(a.path == need for a in res.satisfied):
            res.satisfied.append(Added(need, rid, RULE_BY_ID[rid].title, because))
        return
    res.controls[need] = True
    res.added.append(Added(need, rid, RULE_BY_ID[rid].title, because))
    queue.append(need)


def all_wantable() -> list[str]:
    """Every canonical control path and setting path (for completion)."""
    return [c for c in CONTROL_BY_PATH] + [s.path for s in SETTINGS if s.key != "*"]
