"""Shared helpers for the emulated-VMM tests."""

from __future__ import annotations

import io
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
VMM_DATA = os.path.join(HERE, "data", "vmm")


# the self-test guest's profile ships with the bundled guests (vmcfg/guests/selftest.toml)
SELFTEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vmcfg",
                        "guests", "selftest.toml")


def data(name: str) -> str:
    return os.path.join(VMM_DATA, name)


def run(profile: str, guest: str | None = None, *, mode: int | None = None, memory: int = 16 << 20,
        max_instructions: int | None = 5_000_000, timeout: float | None = None,
        handlers=None, trace: bool = True, load_address: int | None = None):
    """Resolve `profile` for cvmm and run `guest` (default: the profile's image).

    Returns (RunResult, [trace records]).
    """
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest

    r = resolve(profile, cpu="cvmm")
    assert r.valid, [v.message for v in r.errors]
    gs = r.config.settings["guest"]
    base = os.path.dirname(r.profile_path) if guest is None and r.profile_path else None
    img = load_image(guest or gs["image"], base_dir=base,
                     load_address=load_address if load_address is not None else gs["load_address"],
                     mode=mode or gs["mode"])
    if handlers is None and r.config.settings.get("handlers"):
        from vmcfg.vmm.handlers import resolve_handlers
        handlers = resolve_handlers(r.config.settings["handlers"], os.path.dirname(r.profile_path))
    buf = io.StringIO() if trace else None
    res = run_guest(r.config, img, memory=memory, mode=mode or gs["mode"], handlers=handlers,
                    trace=buf, max_instructions=max_instructions, timeout=timeout)
    recs = [json.loads(line) for line in buf.getvalue().splitlines()] if trace else []
    return res, recs


def names(recs) -> list[str]:
    return [r["name"] for r in recs]
