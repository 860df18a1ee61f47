"""The client side of the control channel: talk to a running named guest (light imports)."""

from __future__ import annotations

import os

from ..status import USAGE
from .channel import ChannelError as LiveError


def call(name: str, op: str, timeout: float = 10.0, **args) -> dict:
    """One request to guest `name`; LiveError (with .status, .detail) if refused or absent."""
    from .channel import request
    from .runtime import RuntimeError_, check_name, clean_stale, is_alive, paths
    try:
        check_name(name)
        p = paths(name)
        if not is_alive(p):
            clean_stale(p)
            raise LiveError(f"no running guest named {name!r} (see 'vmcfg ps')", USAGE)
        return request(p.sock, op, timeout=timeout, **args)
    except RuntimeError_ as e:
        raise LiveError(str(e), USAGE) from None


def apply(name: str, profile: str, *, dry_run: bool = False) -> dict:
    """Apply a profile to the running guest `name` (all or nothing); LiveError if refused."""
    spec = os.path.abspath(profile) if os.path.exists(profile) else profile
    return call(name, "plan" if dry_run else "apply", profile=spec)


def rollback(name: str, steps: int = 1) -> dict:
    """Return guest `name` to the configuration `steps` applies back."""
    return call(name, "rollback", steps=steps)


def stats(name: str) -> dict:
    """Live counters of guest `name`: state, instructions, tsc, exits [{reason, name, count}]."""
    return call(name, "stats")


def stop(name: str) -> dict:
    """Ask guest `name` to end cleanly."""
    return call(name, "stop")
