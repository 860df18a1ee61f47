"""A LaunchPlan: everything a guest run needs, checked, built by one function.

`build_plan()` reads the profile, checks it against the emulated VMM's
capability set (cvmm), loads the guest image, resolves exit handlers and the
machine options (mode, memory, addresses, limits).  Every problem is found
here, before anything runs, and raised as a PlanError that says which outcome
it is (vmcfg.status: "usage" or "invalid").  `vmm.run.run_plan()` runs a plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .. import status as S
from ..vmx.config import VmxConfig
from ..vmx.sizes import parse_size
from .loader import Image

DEFAULT_LOAD_ADDRESS = 0x100000
DEFAULT_MEMORY = 16 << 20
DEFAULT_MODE = 64
LINUX_MEMORY = 256 << 20              # --kernel without --memory or [guest] memory
VMM_CPU = "cvmm"


class PlanError(Exception):
    """A launch that cannot start: `status` is a vmcfg.status name ("usage", "invalid")."""

    def __init__(self, message: str, status: str = "usage", resolved: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = S.BY_NAME[status].code
        self.resolved = resolved       # the profile's Resolved when it is invalid


@dataclass
class LaunchPlan:
    """A validated launch: the profile's effective configuration, the guest, the machine."""

    config: Any                          # VmxConfig
    caps: Any                            # CapSet (cvmm)
    profile: str                         # the profile as named (file path or built-in name)
    profile_path: str | None             # its file
    image: Image
    guest: str                           # the guest spec as given (builtin:NAME or a path)
    mode: int = DEFAULT_MODE
    memory: int = DEFAULT_MEMORY
    handlers: dict[int, Callable] = field(default_factory=dict)
    max_instructions: int | None = None
    timeout: float | None = None
    nmi_at: int | None = None
    serial_input: bytes | None = None    # what the guest receives on COM1
    cmdline: str = ""                    # the command line a Multiboot image is given
    clock: str = "virtual"               # guest time: "virtual" (deterministic) or "realtime"
    linux: Any = None                    # vmm.linux.LinuxBoot for a --kernel bzImage
    tsc_hz: int | None = None            # the machine's TSC rate where the profile sets none


def _number(text: str | int | None, what: str) -> int | None:
    if text is None or isinstance(text, int):
        return text
    try:
        return int(str(text).replace("_", ""), 0)
    except ValueError:
        raise PlanError(f"{what}: {text!r} is not a number") from None


def build_plan(profile: str, *, guest: str | None = None, mode: int | str | None = None,
               memory: int | str | None = None, load_address: int | str | None = None,
               entry: int | str | None = None, handlers: Iterable[str] = (),
               max_instructions: int | None = None, timeout: float | None = None,
               nmi_at: int | None = None, serial_input: bytes | None = None,
               cmdline: str | None = None, cwd: str | None = None,
               kernel: str | None = None, initrd: str | None = None,
               clock: str | None = None, kernel_entry: str | None = None) -> LaunchPlan:
    """Check everything a launch of `profile` needs; options override the profile's [guest].

    `handlers` are "REASON=module:function" strings (relative to `cwd`); the
    profile's [handlers] table is relative to the profile's folder.  `kernel` (a bzImage),
    `initrd` and `cmdline` boot Linux by the x86 boot protocol (vmm/linux.py) instead of a
    guest image.
    """
    from ..profile import ProfileError, resolve
    from .handlers import HandlerError, resolve_handlers
    from .loader import ImageError, load_image

    try:
        r = resolve(profile, cpu=VMM_CPU)
    except ProfileError as e:
        raise PlanError(str(e)) from None
    if not r.valid:
        raise PlanError(f"{r.profile_path or profile}: not valid for the {VMM_CPU} capability "
                        "set (the emulated VMM); nothing was launched", "invalid", r)
    cfg = r.config
    gs = cfg.settings.get("guest", {})
    written = (getattr(r.profile, "settings", None) or {}).get("guest", {})
    base_dir = os.path.dirname(os.path.abspath(r.profile_path)) if r.profile_path else None

    if kernel and guest:
        raise PlanError("--kernel and --guest exclude each other")
    if initrd and not kernel:
        raise PlanError("--initrd needs --kernel")
    if kernel_entry and not kernel:
        raise PlanError("--kernel-entry needs --kernel")
    if clock not in (None, "virtual", "realtime"):
        raise PlanError(f"--clock {clock!r}: 'virtual' or 'realtime'")
    spec = kernel or guest or gs.get("image")
    if not spec:
        raise PlanError("no guest image: give --guest SPEC or set [guest] image in the profile "
                        "(bundled guests: builtin:NAME)")
    run_mode = int(mode) if mode else int(gs.get("mode") or DEFAULT_MODE)
    try:
        mem = parse_size(memory if memory is not None else gs.get("memory") or DEFAULT_MEMORY)
    except ValueError as e:
        raise PlanError(f"bad memory size: {e}") from None
    la = _number(load_address, "--load-address")
    la = la if la is not None else gs.get("load_address", DEFAULT_LOAD_ADDRESS)
    ent = _number(entry, "--entry")
    ent = ent if ent is not None else gs.get("entry")
    boot = None
    try:
        if kernel:
            from .linux import kernel_mode, load_linux
            if load_address is not None or entry is not None:
                raise PlanError("--load-address/--entry do not apply to --kernel (the boot "
                                "protocol places the kernel)")
            run_mode = int(mode) if mode else kernel_mode(cfg, written.get("mode"))
            try:
                mem = parse_size(memory if memory is not None
                                 else written.get("memory") or LINUX_MEMORY)
            except ValueError as e:
                raise PlanError(f"bad memory size: {e}") from None
            image, boot = load_linux(kernel, memory=mem, mode=run_mode, initrd=initrd,
                                     cmdline=cmdline or "",
                                     entry_kind=kernel_entry or "bzimage")
        else:
            image = load_image(spec, base_dir=None if guest else base_dir, load_address=la,
                               entry=ent, mode=run_mode)
    except ImageError as e:
        raise PlanError(str(e)) from None
    if image.mode is not None and not mode and "mode" not in written and image.kind != "flat":
        run_mode = image.mode
    if image.multiboot and run_mode != 32:
        raise PlanError(f"{image.name}: a Multiboot kernel is entered in 32-bit protected mode; "
                        f"--mode {run_mode} does not apply (drop --mode or use --mode 32)")
    if cmdline is not None and not image.multiboot and image.kind != "linux":
        raise PlanError(f"--append: {image.name} is not a Multiboot kernel and not a --kernel "
                        "bzImage (only those take a command line)")

    hmap: dict[int, Callable] = {}
    try:
        for k, v in (cfg.settings.get("handlers") or {}).items():
            hmap.update(resolve_handlers({k: v}, base_dir))
        for h in handlers:
            if "=" not in h:
                raise PlanError(f"--handler {h!r}: expected REASON=module:function")
            k, v = h.split("=", 1)
            hmap.update(resolve_handlers({k.strip(): v.strip()}, cwd or os.getcwd()))
    except HandlerError as e:
        raise PlanError(str(e)) from None

    # the configuration the guest runs with says what it was launched as (options and
    # --kernel override the profile's [guest]): a live apply compares its [guest] with these
    settings = {t: dict(v) for t, v in cfg.settings.items()}
    settings["guest"].update(memory=mem, mode=run_mode)
    cfg = VmxConfig(controls=dict(cfg.controls), settings=settings, cpu=cfg.cpu, name=cfg.name)
    plan = LaunchPlan(cfg, r.caps, profile, r.profile_path, image, spec, run_mode, mem, hmap,
                      max_instructions, timeout, nmi_at, serial_input, cmdline or "",
                      clock or "virtual", boot)
    if boot is not None:
        from .linux import LINUX_TSC_HZ
        plan.tsc_hz = LINUX_TSC_HZ
    from .run import LaunchError, check_apic_access_page, check_layout
    try:
        check_layout(image, mem, run_mode)
        check_apic_access_page(cfg, mem)
    except LaunchError as e:
        raise PlanError(str(e)) from None
    return plan
