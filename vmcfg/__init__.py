"""vmcfg: craft, check, export and run Intel VT-x execution environments.

The Python API (documented in README "Python API"; defined in vmcfg/api.py):

    import vmcfg
    r = vmcfg.validate("baseline", cpu="skylake-server")          # Resolved: r.valid, r.errors
    plan = vmcfg.plan("baseline", guest="builtin:cpuid")   # LaunchPlan, checked
    res = vmcfg.launch(plan)                               # RunResult: res.status, res.exits
    vmcfg.apply("web", "io-sandbox")                       # a running named guest

Names are imported on first use, so `import vmcfg` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LaunchPlan", "LiveError", "LiveTarget", "PlanError", "Profile", "ProfileError",
           "Resolved", "apply", "guests", "launch", "load_profile", "plan", "rollback", "stats", "stop",
           "validate", "__version__"]


def __getattr__(name: str):
    if name in __all__ and name != "__version__":
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'vmcfg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
