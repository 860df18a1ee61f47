"""vmcfg's Python API: what the CLI does, as functions (exported from `import vmcfg`).

    import vmcfg
    r = vmcfg.validate("baseline", cpu="skylake-server")        # -> Resolved (r.valid, r.errors)
    plan = vmcfg.plan("io-sandbox", guest="builtin:io")  # -> LaunchPlan (checked, not run)
    res = vmcfg.launch(plan)                             # -> RunResult (res.status, res.exits)
    vmcfg.apply("web", "io-sandbox")                     # a running named guest

Errors: ProfileError (a profile or capability file), PlanError (a launch that
cannot start: .status is "usage" or "invalid"), LiveError (a named guest that
refuses or is not there: .status is the exit status).  The status table is in
vmcfg.status.
"""

from __future__ import annotations

import os
from typing import IO, Any, Callable

from .live.client import LiveError, apply, rollback, stats, stop
from .live.target import LiveTarget
from .profile import Profile, ProfileError, Resolved
from .profile import load_profile as _load_profile
from .profile import load_caps, resolve_profile
from .vmm.plan import LaunchPlan, PlanError, build_plan

__all__ = ["LaunchPlan", "LiveError", "LiveTarget", "PlanError", "Profile", "ProfileError",
           "Resolved", "apply", "guests", "launch", "load_profile", "plan", "rollback", "stats", "stop",
           "validate"]


def guests() -> list[str]:
    """The bundled guests (for --guest builtin:NAME)."""
    from .vmm.loader import builtin_names
    return builtin_names()


def load_profile(spec: str) -> Profile:
    """Read a profile (a file or a built-in name) with its extends chain; ProfileError if bad."""
    return _load_profile(spec)


def validate(profile: str | Profile, cpu: str | None = None, caps: str | None = None, *,
             adjust: bool = False) -> Resolved:
    """Check a profile against a CPU model (or a capability file `caps`) and every rule.

    The result says `valid`, lists `errors`/`warnings` (with the rule and the fix)
    and holds the effective `config`.
    """
    prof = profile if isinstance(profile, Profile) else _load_profile(profile)
    return resolve_profile(prof, load_caps(cpu, caps, prof), do_adjust=adjust)


def plan(profile: str, **options: Any) -> LaunchPlan:
    """A checked launch (see vmm.plan.build_plan for the options); PlanError if it cannot run."""
    return build_plan(profile, **options)


def launch(what: str | LaunchPlan, *, name: str | None = None, trace: IO[str] | None = None,
           console: Callable[[str], None] | None = None,
           progress: Callable[[Any], None] | None = None, record: dict | None = None,
           trace_sample: int = 1, on_vcpu: Callable[[Any], None] | None = None,
           on_restart: Callable[[int, str], None] | None = None, **options: Any):
    """Run a guest to its end and return its RunResult (res.status, res.exit_status, ...).

    `what` is a LaunchPlan or a profile (then `options` go to plan()).  With
    `name`, the guest is reachable while it runs (apply, stats, stop, inject).
    `trace` gets one JSON line per exit (one in `trace_sample` of each reason);
    `on_vcpu(vcpu)` is called once the vCPU exists, before the guest runs (again for
    each fresh boot when the profile says `lifecycle.on_reboot = "restart"`, after
    `on_restart(n, message)`; a named guest's live session follows the new vCPU).
    """
    from .vmm.run import run_plan
    p = what if isinstance(what, LaunchPlan) else build_plan(what, **options)
    live: dict[str, Any] = {}

    def started(vcpu) -> None:
        if "session" in live:                 # a restart: the same session, the new machine
            live["session"].target.retarget(vcpu)
        elif name:
            from .live.vmm_target import make_session
            live["session"] = make_session(
                vcpu, p.caps, p.mode, name=name,
                profile_path=os.path.abspath(p.profile_path) if p.profile_path else p.profile,
                record={"guest": p.guest, **(record or {})})
        if on_vcpu is not None:
            on_vcpu(vcpu)

    res = None
    try:
        res = run_plan(p, trace=trace, trace_sample=trace_sample, console=console,
                       progress=progress, on_vcpu=started, on_restart=on_restart)
    finally:
        if "session" in live:
            s = live["session"]
            summary = res.to_json() if res is not None else {"status": "error"}
            summary["registers"] = s.target.registers()
            s.close(summary)
    return res
