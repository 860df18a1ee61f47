"""Launching a guest: start state, loading, VM-entry checks, the run, the result."""

from __future__ import annotations

import json
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from ..vmx.config import VmxConfig
from ..vmx.registers import GPR_NAMES, gpr_count
from ..vmx.exits import ENTRY_FAILURE_BIT, Exit, exit_name, exits_json
from .entry import EntryProblem, check_entry, start_cr0, start_cr4
from .loader import Image
from ..status import LAUNCH_STATUSES, exit_code

STATUSES = LAUNCH_STATUSES


@dataclass
class RunResult:
    status: str
    guest_exit_code: int | None = None
    instructions: int = 0
    tsc: int = 0
    exits: list[dict] = field(default_factory=list)
    console: str = ""
    wall_seconds: float = 0.0
    message: str = ""
    vmm_seconds: float = 0.0
    registers: dict[str, int] | None = None     # at an error: register_state()
    entry_failure: dict | None = None
    exit_order: list[int] = field(default_factory=list)
    vpid: int | None = None          # the VPID the guest ran with (secondary.enable_vpid)
    fault_text: str | None = None    # the VMM's register dump at an error (human report only)
    apicv: dict | None = None        # the virtual APIC at the end (APIC virtualization controls)
    restarts: int | None = None      # fresh boots after a reset (lifecycle.on_reboot = "restart")

    @property
    def exit_status(self) -> int:
        return exit_code(self.status, self.guest_exit_code)

    def exit_counts(self) -> dict[str, int]:
        return {e["name"]: e["count"] for e in self.exits}

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "status": self.status, "guest_exit_code": self.guest_exit_code,
            "instructions": self.instructions, "tsc": self.tsc, "exits": self.exits,
            "console": self.console, "wall_seconds": round(self.wall_seconds, 6),
            "exit_status": self.exit_status, "message": self.message,
        }
        if self.entry_failure is not None:
            d["entry_failure"] = self.entry_failure
        if self.registers is not None:
            d["registers"] = self.registers
        if self.vpid is not None:
            d["vpid"] = self.vpid
        if self.apicv is not None:
            d["apicv"] = self.apicv
        if self.restarts is not None:
            d["restarts"] = self.restarts
        return d


class TraceWriter:
    """`--trace FILE`: one JSON object per VM exit, written once its handler has run.

    Each record carries the exit's deterministic fields (`VmExit.to_json`: seq,
    instructions, tsc, rip, reason, ...) plus two host-clock fields, the only
    ones that differ between runs:
      host_ns     nanoseconds the VMM spent handling the exit (perf_counter_ns
                  around the handler; the trace's own writing is not counted)
      host_at_ns  when the handler started, in ns since the run began
    With sample=N > 1 only the 1st, (N+1)th, (2N+1)th ... exit of each reason is
    written (with "sample": N), and `finish` appends one {"totals": ...} line
    with every reason's exact count and host time (vmcfg/trace reads both).
    """

    def __init__(self, fh: IO[str], sample: int = 1):
        self.fh = fh
        self.sample = max(1, int(sample))
        self._seen: dict[int, int] = {}
        self.t0 = time.perf_counter_ns()

    def begin(self, ex) -> dict | None:
        """The exit's record, or None when sampling leaves it out."""
        if self.sample > 1:
            n = self._seen.get(ex.reason, 0)
            self._seen[ex.reason] = n + 1
            if n % self.sample:
                return None
            d = ex.to_json()
            d["sample"] = self.sample
            return d
        return ex.to_json()

    def end(self, rec: dict, started_ns: int, host_ns: int) -> None:
        rec["host_ns"] = host_ns
        rec["host_at_ns"] = started_ns - self.t0
        self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def finish(self, exit_stats: dict) -> None:
        """After the run: the exact totals line of a sampled trace."""
        if self.sample > 1:
            tot = [{"reason": r, "name": exit_name(r), "count": exit_stats[r].count,
                    "host_ns": int(round(exit_stats[r].seconds * 1e9))}
                   for r in sorted(exit_stats)]
            self.fh.write(json.dumps({"totals": {"sample": self.sample, "exits": tot}},
                                     separators=(",", ":")) + "\n")


def open_trace_file(path: str) -> IO[str]:
    """The file `--trace PATH` writes: gzip-compressed when PATH ends in .gz."""
    if path.endswith(".gz"):
        import gzip
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=TRACE_GZIP_LEVEL)
    return open(path, "w", encoding="utf-8")


TRACE_GZIP_LEVEL = 1     # bench/bench_trace.py: level 3 and 6 save 5-20 % more, but cost more time


_BOOT_REGS = {"rax": "RAX", "rbx": "RBX", "rcx": "RCX", "rdx": "RDX", "rsi": "RSI", "rdi": "RDI",
              "rbp": "RBP", "rsp": "RSP", "cs": "CS", "ds": "DS", "es": "ES", "ss": "SS",
              "fs": "FS", "gs": "GS"}


def apply_boot_regs(vcpu, mode: int, regs: dict) -> None:
    """A boot protocol's registers on top of the start state (GDTR first, then selectors)."""
    from unicorn import x86_const as X
    uc = vcpu.uc
    if "gdtr" in regs:
        base, limit = regs["gdtr"]
        uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))
    for name, value in regs.items():
        if name == "gdtr":
            continue
        reg = _BOOT_REGS[name]
        if mode != 64 and reg.startswith("R"):
            reg = "E" + reg[1:]
        uc.reg_write(getattr(X, f"UC_X86_REG_{reg}"), value)


def setup_start_state(vcpu, mode: int, memory: int, entry: int) -> None:
    """Long mode with identity paging / flat protected mode / real mode (docs/vmm.md)."""
    from unicorn import x86_const as X
    from .cpu.state import CS, DS, ES, FS, GS, REAL_MODE_FLAGS, SS, descriptor_cache
    from .vcpu import GDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR
    uc = vcpu.uc
    descs = (0,
             0x00AF9A000000FFFF,      # 0x08: 64-bit code
             0x00CF92000000FFFF,      # 0x10: data
             0x00CF9A000000FFFF,      # 0x18: 32-bit code
             0x008F9A000000FFFF)      # 0x20: 16-bit code
    gdt = struct.pack("<5Q", *descs)

    def seg(sel: int) -> tuple[int, int, int, int]:
        d = descs[sel >> 3]
        return (sel,) + descriptor_cache(d & 0xFFFFFFFF, d >> 32)

    if mode == 64:
        uc.mem_write(GDT_ADDR, gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_ADDR, len(gdt) - 1, 0))
        gib = (memory + (1 << 30) - 1) >> 30
        uc.mem_write(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | 3))
        pt_next = PD_ADDR + gib * 0x1000
        for g in range(gib):
            pd = PD_ADDR + g * 0x1000
            uc.mem_write(PDPT_ADDR + g * 8, struct.pack("<Q", pd | 3))
            entries = []
            for i in range(512):
                base = (g << 30) | (i << 21)
                if base + (2 << 20) <= memory:
                    entries.append(base | 0x83)            # 2 MiB page, present, writable
                elif base < memory:
                    pt = pt_next
                    pt_next += 0x1000
                    ptes = [(base + (j << 12)) | 3 if base + (j << 12) < memory else 0
                            for j in range(512)]
                    uc.mem_write(pt, struct.pack("<512Q", *ptes))
                    entries.append(pt | 3)
                else:
                    entries.append(0)
            uc.mem_write(pd, struct.pack("<512Q", *entries))
        uc.reg_write(X.UC_X86_REG_CR3, PML4_ADDR)
        uc.reg_write(X.UC_X86_REG_CR4, start_cr4(64))
        vcpu.cpu_state.set_efer((1 << 8) | (1 << 10) | (1 << 11))   # LME LMA NXE
        uc.reg_write(X.UC_X86_REG_CR0, start_cr0(64))
        vcpu.cpu_state.load_segments({CS: seg(0x08), SS: seg(0x10), DS: seg(0x10),
                                      ES: seg(0x10), FS: seg(0x10), GS: seg(0x10)}, cpl=0)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
        uc.reg_write(X.UC_X86_REG_RSP, memory)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(X.UC_X86_REG_RIP, entry)
    elif mode == 32:
        uc.mem_write(GDT_ADDR, gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_ADDR, len(gdt) - 1, 0))
        vcpu.cpu_state.set_efer(0)
        uc.reg_write(X.UC_X86_REG_CR4, start_cr4(32))
        uc.reg_write(X.UC_X86_REG_CR0, start_cr0(32))
        vcpu.cpu_state.load_segments({CS: seg(0x18), SS: seg(0x10), DS: seg(0x10),
                                      ES: seg(0x10), FS: seg(0x10), GS: seg(0x10)}, cpl=0)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
        uc.reg_write(X.UC_X86_REG_RSP, memory if memory < (1 << 32) else 0xFFFFFFF0)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(X.UC_X86_REG_RIP, entry)
    else:
        if entry < 0x100000:
            cs, ip = (entry >> 4) & 0xF000, entry - ((entry >> 4) & 0xF000) * 16
        else:
            cs, ip = 0xFFFF, entry - 0xFFFF0
        vcpu.cpu_state.set_efer(0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR0, start_cr0(16))

        def real(sel: int) -> tuple[int, int, int, int]:
            return (sel, sel << 4, 0xFFFF, REAL_MODE_FLAGS)
        vcpu.cpu_state.load_segments({CS: real(cs), DS: real(cs), ES: real(cs), SS: real(cs),
                                      FS: real(0), GS: real(0)}, cpl=0)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_RSP, 0xFFFE)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(X.UC_X86_REG_RIP, ip)
    vcpu.after_state_load()


def setup_multiboot(vcpu, image: Image, memory: int, cmdline: str) -> None:
    """Multiboot (v1) hand-over: EAX = 0x2BADB002, EBX = the information structure."""
    from unicorn import x86_const as X
    from .loader import MULTIBOOT_BOOTLOADER_MAGIC, mbi_address, multiboot_info
    addr = mbi_address(image)
    info = multiboot_info(memory, cmdline, addr)
    vcpu.uc.mem_write(addr, info)
    vcpu.uc.reg_write(X.UC_X86_REG_RAX, MULTIBOOT_BOOTLOADER_MAGIC)
    vcpu.uc.reg_write(X.UC_X86_REG_RBX, addr)
    vcpu.after_state_load()


class LaunchError(Exception):
    """Bad input found before the guest starts (exit status 2)."""


def check_apic_access_page(cfg: VmxConfig, memory: int) -> None:
    """The VMM sees APIC-access-page accesses through MMIO: the page must be above RAM."""
    aa = cfg.settings["vmcs"]["apic_access_page"]
    if cfg.on("secondary.virtualize_apic_accesses") and aa is not None and aa < memory:
        raise LaunchError(f"vmcs.apic_access_page = {aa:#x} is inside guest RAM (0x0-"
                          f"{memory - 1:#x}): vmcfg's VMM virtualizes APIC accesses on a page "
                          "above RAM only; remove it (the local APIC's page 0xFEE00000) or "
                          "choose a page above RAM")


def check_layout(image: Image, memory: int, mode: int) -> None:
    from .vcpu import VMM_AREA_END
    for addr, data in image.segments:
        if addr + len(data) > memory:
            raise LaunchError(f"{image.name}: the image needs guest-physical "
                              f"{addr:#x}-{addr + len(data) - 1:#x}, outside guest RAM "
                              f"(0x0-{memory - 1:#x}); use --memory or --load-address")
        if mode == 64 and addr < VMM_AREA_END:
            raise LaunchError(f"{image.name}: the image overlaps guest-physical "
                              f"0x0-{VMM_AREA_END - 1:#x}, where the VMM keeps the GDT and "
                              "page tables of the 64-bit start state; load it higher")
    if image.multiboot:
        from .loader import MBI_SIZE, mbi_address
        if mbi_address(image) + MBI_SIZE > min(memory, 1 << 32):
            raise LaunchError(f"{image.name}: no room after the kernel for the Multiboot "
                              f"information (guest RAM ends at {memory - 1:#x}); use --memory")
    if not 0 <= image.entry < memory:
        raise LaunchError(f"{image.name}: entry point {image.entry:#x} is outside guest RAM "
                          f"(0x0-{memory - 1:#x})")
    if mode == 16 and image.entry > 0x10FFEF:
        raise LaunchError(f"{image.name}: entry point {image.entry:#x} cannot be reached in "
                          "real mode (max 0x10FFEF)")
    if memory < 0x20000 or memory & 0xFFF:
        raise LaunchError(f"guest memory {memory:#x}: must be a multiple of 4 KiB and at least 128 KiB")
    if memory > (4 << 30):
        raise LaunchError(f"guest memory {memory >> 20} MiB: at most 4 GiB")


def run_guest(cfg: VmxConfig, image: Image, *, memory: int, mode: int,
              handlers: dict[int, Callable] | None = None, trace: IO[str] | None = None,
              trace_sample: int = 1,
              max_instructions: int | None = None, timeout: float | None = None,
              console: Callable[[str], None] | None = None,
              progress: Callable[[Any], None] | None = None,
              on_vcpu: Callable[[Any], None] | None = None,
              nmi_at: int | None = None, serial_input: bytes | None = None,
              cmdline: str = "", clock: str = "virtual",
              tsc_hz: int | None = None,
              on_restart: Callable[[int, str], None] | None = None) -> RunResult:
    """Run `image` under `cfg`; never raises for guest behaviour (see RunResult.status).
    `serial_input`: bytes the guest receives on COM1 (the UART's receive path);
    `cmdline`: the command line a Multiboot image is given (a bzImage carries its own);
    `clock`: "virtual" (guest time from retired instructions and exits; deterministic) or
    "realtime" (the guest's TSC follows the host's monotonic clock); `tsc_hz`: the machine's
    TSC rate where the profile sets no tsc.frequency (a --kernel boot: vmm/linux.py).

    When the guest resets the machine and the configuration it runs with says
    `lifecycle.on_reboot = "restart"`, the same image boots again on a fresh machine
    (`on_vcpu` is called for each boot's vCPU, `on_restart(n, message)` before boot n);
    the result covers every boot: the console, instructions and exits of all of them, the
    last boot's TSC, and `restarts`.  `timeout` and `max_instructions` count over all boots;
    `serial_input` and `nmi_at` belong to the first."""
    t0 = time.perf_counter()
    check_layout(image, memory, mode)
    check_apic_access_page(cfg, memory)
    problems = check_entry(cfg, mode)
    if problems:
        return _entry_failure(problems, t0)
    writer = TraceWriter(trace, trace_sample) if trace is not None else None
    stop = threading.Event()
    wall_deadline = time.monotonic() + timeout if timeout else None
    current: list = [None]                  # the vCPU of the boot that runs now

    def watchdog() -> None:
        while not stop.wait(0.1 if progress is not None else 0.05):
            vcpu = current[0]
            if vcpu is None:
                continue
            if wall_deadline is not None and time.monotonic() >= wall_deadline:
                vcpu.counter.request_stop()
            if progress is not None:
                progress(vcpu)

    th = None
    if wall_deadline is not None or progress is not None:
        th = threading.Thread(target=watchdog, daemon=True)
        th.start()
    boots: list[_Boot] = []                 # what each finished boot leaves for the result
    run_cfg = cfg
    try:
        while True:
            first = not boots
            used = sum(b.instructions for b in boots)
            limit = None if max_instructions is None else max_instructions - used
            vcpu, plat = _boot(run_cfg, image, memory=memory, mode=mode, handlers=handlers,
                               writer=writer, max_instructions=limit, console=console,
                               nmi_at=nmi_at if first else None,
                               serial_input=serial_input if first else None,
                               cmdline=cmdline, clock=clock, tsc_hz=tsc_hz)
            current[0] = vcpu
            if on_vcpu is not None:
                on_vcpu(vcpu)                 # (drops the callers' hold on the old machine)
            if not first:
                import gc
                gc.collect()                  # the old machine's engine and RAM (cycles)
            if vcpu.status is None:
                if limit is not None and limit <= 0:
                    vcpu.status, vcpu.message = "instruction-limit", \
                        f"the guest ran {max_instructions} instructions (--max-instructions)"
                else:
                    vcpu.run_loop(wall_deadline)
            boots.append(_Boot(vcpu, plat.serial.text))
            run_cfg = vcpu.cfg                # a live apply holds across the reset
            life = run_cfg.settings.get("lifecycle") or {}
            cap = life.get("max_restarts")
            if vcpu.status != "reboot" or life.get("on_reboot") != "restart" or \
                    (cap is not None and len(boots) > cap):
                break
            if on_restart is not None:
                on_restart(len(boots), vcpu.message)
            boots[-1].vcpu = None
            current[0] = None
            del vcpu, plat                    # the old machine's memory goes before the next
    finally:
        stop.set()
        if th is not None:
            th.join()
    return _result(boots, writer, run_cfg, mode, t0)


class _Boot:
    """What a finished boot leaves for the run's result (its machine is let go, except the
    last one's vCPU: status, registers, APIC state)."""

    def __init__(self, vcpu, console: str):
        self.vcpu = vcpu
        self.instructions = vcpu.icount
        self.exits = {r: (s.count, s.seconds) for r, s in vcpu.exit_stats.items()}
        self.order = list(vcpu.exit_order)
        self.console = console


def _boot(cfg: VmxConfig, image: Image, *, memory: int, mode: int, handlers, writer,
          max_instructions: int | None, console, nmi_at: int | None,
          serial_input: bytes | None, cmdline: str, clock: str, tsc_hz: int | None):
    """A fresh machine with `image` loaded and the start state set: (vcpu, board)."""
    from .clock import Clock
    from .devices import Board
    from .vcpu import Vcpu, tsc_frequency
    from .devices.rtc import VIRTUAL_EPOCH
    plat = Board(console, memory=memory, clock=Clock(hz=tsc_frequency(cfg, tsc_hz)),
                 rtc_epoch=VIRTUAL_EPOCH if clock == "virtual" else None)
    vcpu = Vcpu(cfg, memory=memory, mode=mode, platform=plat, handlers=handlers,
                trace=writer,
                max_instructions=max_instructions, clock=clock, machine_tsc_hz=tsc_hz)
    # ACPI tables, and for guests that run real-mode code the BIOS's IVT and PIC bases (the
    # image, written next, may overwrite them)
    plat.install(vcpu.uc.mem_write, bios=mode == 16 or image.multiboot)
    if serial_input:
        plat.serial.feed(serial_input)
    for addr, data in image.segments:
        vcpu.uc.mem_write(addr, data)
    setup_start_state(vcpu, mode, memory, image.entry)
    if image.multiboot:
        setup_multiboot(vcpu, image, memory, " ".join(x for x in (image.name, cmdline) if x))
    if image.boot_regs:
        apply_boot_regs(vcpu, mode, image.boot_regs)
    vcpu.nmi_at = nmi_at
    _inject_at_entry(vcpu, cfg)
    return vcpu, plat


def _result(boots: list, writer, cfg: VmxConfig, mode: int, t0: float) -> RunResult:
    """The RunResult of one or more boots (the last one decides the status)."""
    vcpu = boots[-1].vcpu
    stats: dict[int, list] = {}
    order: list[int] = []
    for b in boots:
        for r, (n, sec) in b.exits.items():
            acc = stats.setdefault(r, [0, 0.0])
            acc[0] += n
            acc[1] += sec
        order += b.order
    if writer is not None:
        from .vcpu import ExitStats
        writer.finish({r: ExitStats(n, sec) for r, (n, sec) in stats.items()})
    wall = time.perf_counter() - t0
    exits = [{"reason": r, "name": exit_name(r), "count": stats[r][0],
              "vmm_seconds": round(stats[r][1], 6)} for r in sorted(stats)]
    res = RunResult(vcpu.status or "error", vcpu.exit_code,
                    sum(b.instructions for b in boots), vcpu.tsc,
                    [{k: e[k] for k in ("reason", "name", "count")} for e in exits],
                    "".join(b.console for b in boots), wall, vcpu.message,
                    sum(s[1] for s in stats.values()),
                    register_state(vcpu, mode) if vcpu.fault_dump else None, None, order)
    res.exit_seconds = {e["reason"]: e["vmm_seconds"] for e in exits}
    res.fault_text = vcpu.fault_dump
    if cfg.on("secondary.enable_vpid"):
        res.vpid = cfg.settings["vpid"]["id"]
    if vcpu.apicv.active or cfg.on("pin.process_posted_interrupts"):
        res.apicv = vcpu.apicv.report()
    if (cfg.settings.get("lifecycle") or {}).get("on_reboot") == "restart" or len(boots) > 1:
        res.restarts = len(boots) - 1
    return res


def register_state(vcpu, mode: int) -> dict[str, int]:
    """The guest's registers as an object: {"rax": ..., ..., "rip": ..., "rflags": ...}."""
    regs = {GPR_NAMES[i]: vcpu.gpr(i) for i in range(gpr_count(mode))}
    regs["rip"] = vcpu.rip
    regs["rflags"] = vcpu.rflags
    return regs


def run_plan(plan, *, trace: IO[str] | None = None, trace_sample: int = 1,
             console: Callable[[str], None] | None = None,
             progress: Callable[[Any], None] | None = None,
             on_vcpu: Callable[[Any], None] | None = None,
             on_restart: Callable[[int, str], None] | None = None) -> RunResult:
    """Run a LaunchPlan (vmm/plan.py); the arguments are where the run's output goes."""
    return run_guest(plan.config, plan.image, memory=plan.memory, mode=plan.mode,
                     handlers=plan.handlers, trace=trace, trace_sample=trace_sample,
                     max_instructions=plan.max_instructions, timeout=plan.timeout,
                     console=console, progress=progress, on_vcpu=on_vcpu, nmi_at=plan.nmi_at,
                     serial_input=plan.serial_input, cmdline=plan.cmdline, clock=plan.clock,
                     tsc_hz=plan.tsc_hz, on_restart=on_restart)


def _inject_at_entry(vcpu, cfg: VmxConfig) -> None:
    """VM-entry event injection ([inject] table): deliver the event before the first instruction."""
    from .exitinfo import INTR_HW_EXCEPTION, INTR_SW_INTERRUPT, INTR_SW_EXCEPTION, \
        INTR_PRIV_SW_EXCEPTION
    from ..vmx.settings import INJECT_TYPES
    inj = cfg.settings.get("inject") or {}
    if not inj.get("type"):
        return
    itype = INJECT_TYPES[inj["type"]]
    rip = vcpu.rip
    nxt = rip + inj.get("instruction_length", 0) if itype in (
        INTR_SW_INTERRUPT, INTR_SW_EXCEPTION, INTR_PRIV_SW_EXCEPTION) else None
    from .outcome import RunEnd
    try:
        vcpu.deliver(inj["vector"], inj.get("error_code") if itype == INTR_HW_EXCEPTION else None,
                     rip, itype=itype, next_rip=nxt)
    except RunEnd as e:
        vcpu.status, vcpu.exit_code, vcpu.message = e.status, e.exit_code, e.message


def _entry_failure(problems: list[EntryProblem], t0: float) -> RunResult:
    msg = "VM entry failed (exit reason 33 | bit 31, invalid guest state):\n" + "\n".join(
        f"  [{p.rule}] {p.message}\n    fix: {p.fix}" for p in problems)
    return RunResult("entry-failure", None, 0, 0,
                     exits_json({Exit.ENTRY_FAIL_GUEST_STATE: 1}), "",
                     time.perf_counter() - t0, msg, 0.0, None,
                     {"reason_field": Exit.ENTRY_FAIL_GUEST_STATE | ENTRY_FAILURE_BIT,
                      "qualification": 0, "problems": [p.to_json() for p in problems]},
                     [Exit.ENTRY_FAIL_GUEST_STATE])
