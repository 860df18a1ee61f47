"""Resolve a profile against a capability set: effective values + validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field as _dcf
from typing import Any

from ..vmx import rules as _rules
from ..vmx.caps import CapSet
from ..vmx.config import VmxConfig
from ..vmx.models import DEFAULT_CPU, UnknownModel, get_model
from ..vmx.settings import default_settings
from ..vmx.table import CONTROLS_BY_FIELD, FIELDS, NAMED_MASK
from .loader import Profile, load_profile
from .source import Pos, ProfileError


@dataclass
class BitChange:
    field: str
    bit: int
    control: str | None
    new: int
    reason: str

    def to_json(self) -> dict:
        return {"field": self.field, "bit": self.bit, "control": self.control,
                "value": self.new, "reason": self.reason}


@dataclass
class Resolved:
    profile: Profile
    caps: CapSet
    config: VmxConfig
    errors: list = _dcf(default_factory=list)
    warnings: list = _dcf(default_factory=list)
    forced: dict[str, int] = _dcf(default_factory=dict)     # field -> bits filled in as forced
    reserved: dict[str, int] = _dcf(default_factory=dict)   # field -> reserved default1 bits
    explicit: dict[str, bool] = _dcf(default_factory=dict)  # control path -> value written
    adjusted: list[BitChange] | None = None

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def unchecked(self) -> list[str]:
        """Controls this profile sets to 1 whose support the capability set does not
        report (a partial set, e.g. from /proc/cpuinfo): validation did not check them."""
        if not self.caps.unknown:
            return []
        out = []
        for f in FIELDS:
            if f.activated_by and not self.config.on(f.activated_by):
                continue
            v = self.config.controls[f.key]
            out += [c.path for c in CONTROLS_BY_FIELD[f.key]
                    if v & c.mask and c.path in self.caps.unknown]
        return out

    @property
    def profile_path(self) -> str | None:
        return self.profile.path

    @property
    def settings(self) -> dict[str, dict[str, Any]]:
        return self.config.settings

    def position(self, v) -> Pos | None:
        for f in v.fields:
            p = self.profile.pos.get(f)
            if p:
                return p
        for f in v.fields:
            fk = f.split(".")[0]
            p = self.profile.pos.get(f"raw.{fk}") or self.profile.pos.get(fk)
            if p:
                return p
        return None

    def to_json(self) -> dict:
        def vj(v):
            d = v.to_json()
            p = self.position(v)
            if p:
                d["location"] = {"file": p.path, "line": p.line, "column": p.col}
            return d
        out = {"profile": self.profile.path, "valid": self.valid, "cpu": self.caps.name,
               "controls": {f.key: self.config.controls[f.key] for f in FIELDS},
               "errors": [vj(v) for v in self.errors],
               "warnings": [vj(v) for v in self.warnings]}
        if self.caps.unknown:
            out["unchecked"] = self.unchecked
        if self.adjusted is not None:
            out["adjusted"] = [c.to_json() for c in self.adjusted]
        return out


def load_caps(cpu: str | None = None, caps_file: str | None = None,
              profile: Profile | None = None) -> CapSet:
    if caps_file:
        from .capfile import load_capfile
        return load_capfile(caps_file)
    name = cpu or (profile.cpu if profile else None) or DEFAULT_CPU
    try:
        return get_model(name)
    except UnknownModel as e:
        if cpu is None and profile is not None and profile.cpu:
            p = profile.pos.get("profile.cpu")
            raise ProfileError(str(e), p.path if p else profile.path,
                               p.line if p else None, p.col if p else None) from None
        raise ProfileError(str(e)) from None


def effective(profile: Profile, caps: CapSet) -> tuple[VmxConfig, dict, dict, dict]:
    controls: dict[str, int] = {}
    forced: dict[str, int] = {}
    reserved: dict[str, int] = {}
    explicit: dict[str, bool] = {}
    for f in FIELDS:
        if f.key in profile.raw:
            controls[f.key] = profile.raw[f.key]
            continue
        must, _ = caps.allowed(f.key)
        named = NAMED_MASK[f.key]
        res = (must | f.default1) & ~named
        v = res
        written = profile.controls.get(f.key, {})
        fb = 0
        for c in CONTROLS_BY_FIELD[f.key]:
            if c.key in written:
                explicit[c.path] = written[c.key]
                if written[c.key]:
                    v |= c.mask
            elif must & c.mask:
                v |= c.mask
                fb |= c.mask
        controls[f.key] = v
        forced[f.key] = fb
        reserved[f.key] = res
    settings = default_settings()
    for t, vals in profile.settings.items():
        if "*" in vals:
            settings[t] = copy.deepcopy(vals["*"])
        else:
            settings[t].update(copy.deepcopy(vals))
    cfg = VmxConfig(controls=controls, settings=settings, cpu=caps.name,
                    name=profile.name)
    return cfg, forced, reserved, explicit


def adjust(cfg: VmxConfig, caps: CapSet) -> tuple[VmxConfig, list[BitChange]]:
    """The usual hypervisor coercion (value | allowed0) & allowed1, made visible."""
    from ..vmx.table import CONTROL_BY_FIELD_BIT
    changes: list[BitChange] = []
    new = dict(cfg.controls)
    for f in FIELDS:
        if f.activated_by and not cfg.on(f.activated_by):
            continue
        must, may = caps.allowed(f.key)
        v = cfg.controls[f.key]
        a = (v | must) & may
        for bit in range(f.width):
            m = 1 << bit
            if (v ^ a) & m:
                c = CONTROL_BY_FIELD_BIT[f.key].get(bit)
                reason = (f"forced on ({caps.name} requires it)" if a & m
                          else f"dropped ({caps.name} does not support it)")
                changes.append(BitChange(f.key, bit, c.path if c else None, 1 if a & m else 0,
                                         reason))
        new[f.key] = a
    return VmxConfig(controls=new, settings=cfg.settings, cpu=cfg.cpu, name=cfg.name), changes


def resolve_profile(profile: Profile, caps: CapSet, *, do_adjust: bool = False) -> Resolved:
    cfg, forced, reserved, explicit = effective(profile, caps)
    changes = None
    if do_adjust:
        cfg, changes = adjust(cfg, caps)
    errors, warnings = _rules.check(cfg, caps, explicit)
    return Resolved(profile, caps, cfg, errors, warnings, forced, reserved, explicit, changes)


def resolve(spec: str, cpu: str | None = None, caps_file: str | None = None, *,
            do_adjust: bool = False) -> Resolved:
    """Load a profile (file or built-in name), pick its capability set, validate."""
    prof = load_profile(spec)
    caps = load_caps(cpu, caps_file, prof)
    return resolve_profile(prof, caps, do_adjust=do_adjust)
