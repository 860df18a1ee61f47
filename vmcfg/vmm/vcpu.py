"""The virtual CPU: a Unicorn guest whose VM exits follow a VmxConfig.

How instructions are trapped (shared/reference/unicorn-trapping.md):

* guest RAM is mapped readable/writable but not executable; the first fetch
  from a page stops emulation, the page is decoded (``decode.scan_page``) and
  a UC_HOOK_CODE hook is added at exactly the addresses of the sensitive
  instructions the current controls trap; then the page is made executable,
  its cached translations dropped, and the guest resumes;
* a write hook per scanned page re-decodes the written window; when the set
  of sensitive instructions on the page changes, the page is dropped (hooks
  removed, made non-executable again) and rescanned on its next execution;
* retired instructions are counted per block (``counter.BlockCounter``),
  without a Python call per instruction or block;
* controls change only between two ``emu_start`` calls (``request_apply``).

Virtual time: the TSC advances by ``TSC_PER_INSN`` per retired instruction,
by ``EXIT_COST`` per VM exit, and jumps forward when a halted guest waits for
its preemption timer.  Everything is deterministic.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from unicorn import (UC_HOOK_INSN, UC_ARCH_X86, UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED,
                     UC_ERR_INSN_INVALID, UC_ERR_READ_PROT, UC_ERR_READ_UNMAPPED,
                     UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED, UC_HOOK_CODE, UC_HOOK_INTR,
                     UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_UNMAPPED,
                     UC_HOOK_MEM_WRITE, UC_HOOK_MEM_WRITE_PROT, UC_MEM_WRITE_PROT, UC_MODE_16,
                     UC_MODE_32,
                     UC_MODE_64, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc,
                     UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib
import iced_x86 as ix

_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                            ctypes.c_void_p)
_reg_read = uclib.uc_reg_read
_reg_write_batch = uclib.uc_reg_write_batch
_reg_write = uclib.uc_reg_write
_vmem_translate = uclib.uc_vmem_translate
_vmem_read = uclib.uc_vmem_read

from ..vmx.config import VmxConfig
from ..vmx.registers import GPR_NAMES
from ..vmx.exits import CONTRIBUTORY_VECTORS, ERROR_CODE_VECTORS
from . import decode as D
from .counter import BlockCounter
from ..vmx.exits import Exit
from .exitinfo import descriptor_table_info, ldt_tr_info, rdrand_info
from .exitinfo import (CR_CLTS, CR_LMSW, CR_MOV_FROM, CR_MOV_TO, INTR_EXTERNAL,
                       INTR_HW_EXCEPTION, INTR_NMI,
                       INTR_PRIV_SW_EXCEPTION, INTR_SW_EXCEPTION, INTR_SW_INTERRUPT, VmExit,
                       cr_qualification, dr_qualification, interruption_info, io_qualification)
from .handlers import DEFAULT_HANDLERS, ExitContext
from .cpu.delivery import DeliveryFault, deliver_event, nested
from .cpu.state import HF_PE, CpuState, mode_of, unicorn_cpu_model
from .devices import Board, DebugExit, SystemReset
from .platform import CpuidModel, MsrFault, MsrFile

TSC_PER_INSN = 1
EXIT_COST = 1000
PAGE = 0x1000
MASK64 = (1 << 64) - 1
UNTIL = 0xFFFF_FFFF_FFFF_FFFF
SMC_HOT_LIMIT = 4              # stores to a code page before it gets a write hook instead
DEADLINE_MARGIN = 600          # > TCG_MAX_INSNS (512): a block never crosses it
MAP_CHUNK = 1 << 20            # guest RAM is mapped in regions of at least this size (see _map_memory)
MAP_REGIONS = 256              # ... and in at most about this many regions
VMM_AREA_END = 0x10000         # guest-physical area the VMM uses for start-up tables

# Where the VMM puts its start-up structures in guest memory (documented in docs/vmm.md)
GDT_ADDR = 0x0800
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000               # one page directory per GiB, then page tables

_GPR64 = [X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
          X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
          X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
          X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15]
_GPR32 = [X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
          X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI]
_SEGS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
         "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_CR = {0: X.UC_X86_REG_CR0, 2: X.UC_X86_REG_CR2, 3: X.UC_X86_REG_CR3, 4: X.UC_X86_REG_CR4,
       8: X.UC_X86_REG_CR8}
_ERROR_CODE_VECTORS = ERROR_CODE_VECTORS
_CONTRIBUTORY = CONTRIBUTORY_VECTORS
_UD_MNEMONICS = frozenset({ix.Mnemonic.UD0, ix.Mnemonic.UD1, ix.Mnemonic.UD2})
_MODE_FREE = frozenset({b"\x0f\x31", b"\x0f\xa2"})     # RDTSC, CPUID: same in every mode
_UNCONDITIONAL = {"cpuid": 10, "invd": 13, "xsetbv": 55, "vmcall": 18, "getsec": 11}

# kinds always trapped: unconditional exits, and instructions whose results the
# VMM must produce itself (virtual TSC, MSR file, platform I/O, deterministic RNG)
ALWAYS_TRAPPED = frozenset({"cpuid", "invd", "xsetbv", "vmcall", "vmx", "getsec", "hlt",
                            "rdtsc", "rdtscp", "rdmsr", "wrmsr", "io", "rdrand", "rdseed",
                            "rdpmc", "mwait", "monitor", "invpcid",
                            "mov_to_cr4",       # CR4 bits the CPU model lacks: #GP (cr4_allowed)
                            "mov_to_cr8", "mov_from_cr8"})   # devices: CR8 is the LAPIC TPR

# Instruction kinds that raise #GP(0) at CPL > 0 (this check comes before any VM exit)
PRIVILEGED = frozenset({"rdmsr", "wrmsr", "hlt", "invd", "wbinvd", "xsetbv", "invlpg", "invpcid",
                        "mov_dr", "clts", "lmsw", "mov_to_cr0", "mov_from_cr0", "mov_to_cr3",
                        "mov_from_cr3", "mov_to_cr4", "mov_from_cr4", "mov_to_cr8",
                        "mov_from_cr8", "monitor", "mwait"})


def cr4_allowed(cpuid) -> int:
    """CR4 bits the CPU model supports (the rest are reserved: MOV to CR4 raises #GP(0))."""
    _a, _b, ecx1, edx1 = cpuid.query(1, 0)
    _a, ebx7, ecx7, _d = cpuid.query(7, 0)
    bits = 0x7FF & ~(1 << 7 if not edx1 & (1 << 13) else 0)     # VME..OSXMMEXCPT (PGE per CPUID)
    for cond, bit in ((ecx7 & (1 << 2), 11), (ebx7 & 1, 16), (ecx1 & (1 << 17), 17),
                      (ecx1 & (1 << 26), 18), (ebx7 & (1 << 7), 20), (ebx7 & (1 << 20), 21),
                      (ecx7 & (1 << 3), 22), (ecx7 & (1 << 31), 24), (ecx7 & (1 << 16), 12)):
        if cond:
            bits |= 1 << bit
    return bits


_OLD_EXC_OFFSET: dict[int, int | None] = {}


def old_exception_offset(mode: int) -> int | None:
    """Offset of QEMU's ``env->old_exception`` inside a Unicorn CPU context.

    Unicorn reports CPU exceptions to UC_HOOK_INTR but never delivers them, so
    QEMU's double-fault bookkeeping (old_exception) is never reset and the
    next contributory exception would turn into #DF or a triple fault.  The
    field is located once per process by diffing two contexts around a #DE in
    a scratch engine (-1 before, 0 after); the vCPU resets it after it has
    handled an exception.  None if it cannot be found (then nothing is patched).
    """
    if mode in _OLD_EXC_OFFSET:
        return _OLD_EXC_OFFSET[mode]
    off = None
    try:
        code = {64: b"\x31\xd2\x31\xc9\xb8\x01\x00\x00\x00\xf7\xf1\xf4",
                32: b"\x31\xd2\x31\xc9\xb8\x01\x00\x00\x00\xf7\xf1\xf4",
                16: b"\x66\x31\xd2\x66\x31\xc9\x66\xb8\x01\x00\x00\x00\x66\xf7\xf1\xf4"}[mode]
        uc = Uc(UC_ARCH_X86, {16: UC_MODE_16, 32: UC_MODE_32, 64: UC_MODE_64}[mode])
        uc.mem_map(0, 0x10000)
        uc.mem_write(0x1000, code)
        uc.hook_add(UC_HOOK_INTR, lambda u, n, d: u.emu_stop())
        size = uclib.uc_context_size(uc._uch)
        a = uc.context_save()
        uc.emu_start(0x1000, 0x1000 + len(code))
        b = uc.context_save()
        ba = ctypes.string_at(a.context, size)
        bb = ctypes.string_at(b.context, size)
        hits = [i for i in range(0, size - 3, 4)
                if ba[i:i + 4] == b"\xff\xff\xff\xff" and bb[i:i + 4] == b"\0\0\0\0"]
        if len(hits) == 1:
            off = hits[0]
    except Exception:  # pragma: no cover - a Unicorn build we do not know
        off = None
    _OLD_EXC_OFFSET[mode] = off
    return off


def tsc_frequency(cfg: VmxConfig) -> int:
    """The TSC rate in Hz: the profile's tsc.frequency, else the machine clock's default."""
    from .clock import TSC_HZ
    return int((cfg.settings.get("tsc") or {}).get("frequency") or TSC_HZ)


def _prefixes(ins: D.Insn) -> bytes:
    """The legacy/REX prefix bytes of a two-byte-opcode (0F xx) instruction."""
    i = ins.raw.find(b"\x0f")
    return ins.raw[:i] if i > 0 else b""


def _address_size(ins: D.Insn, mode: int) -> int:
    """Address size of a memory operand in bytes (the 0x67 prefix flips the default)."""
    default = 8 if mode == 64 else 4 if mode == 32 else 2
    if 0x67 in _prefixes(ins):
        return 4 if mode == 64 else 2 if mode == 32 else 4
    return default


class RunEnd(Exception):
    """Ends the run (raised inside the VMM, caught by the run loop)."""

    def __init__(self, status: str, exit_code: int | None = None, message: str = ""):
        super().__init__(message or status)
        self.status = status
        self.exit_code = exit_code
        self.message = message


class GuestFault(Exception):
    """An exception raised while emulating a guest instruction (#GP, #UD...)."""

    def __init__(self, vector: int, error_code: int | None = None):
        super().__init__(vector)
        self.vector = vector
        self.error_code = error_code


def trapped_kinds(cfg: VmxConfig) -> frozenset[str]:
    """Instruction kinds the VMM must see under `cfg` (the rest run natively)."""
    k = set(ALWAYS_TRAPPED)
    on = cfg.on
    s = cfg.settings
    if on("primary.invlpg_exiting"):
        k.add("invlpg")
    if on("primary.pause_exiting") or on("secondary.pause_loop_exiting"):
        k.add("pause")
    if on("secondary.wbinvd_exiting"):
        k.add("wbinvd")
    if on("secondary.descriptor_table_exiting"):
        k |= {"gdt_idt", "ldt_tr"}
    if on("primary.mov_dr_exiting"):
        k.add("mov_dr")
    if s["cr0"]["mask"]:
        k |= {"mov_to_cr0", "mov_from_cr0", "smsw"}
        if s["cr0"]["mask"] & 0x8:
            k.add("clts")
        if s["cr0"]["mask"] & 0xF:
            k.add("lmsw")
    if s["cr4"]["mask"]:
        k |= {"mov_to_cr4", "mov_from_cr4"}
    if on("primary.cr3_load_exiting"):
        k.add("mov_to_cr3")
    if on("primary.cr3_store_exiting"):
        k.add("mov_from_cr3")
    if on("primary.cr8_load_exiting"):
        k.add("mov_to_cr8")
    if on("primary.cr8_store_exiting"):
        k.add("mov_from_cr8")
    if on("primary.interrupt_window_exiting"):
        k |= {"sti", "popf", "iret"}
    return frozenset(k)


# Instruction kinds that exit when one control is on and are otherwise emulated by
# one method (or simply retire): kind -> (control, basic exit reason, emulator).
SIMPLE_EXITS: dict[str, tuple[str, int, str | None]] = {
    "hlt": ("primary.hlt_exiting", 12, "emulate_hlt"),
    "rdrand": ("secondary.rdrand_exiting", 57, "emulate_rdrand"),
    "rdseed": ("secondary.rdseed_exiting", 61, "emulate_rdrand"),
    "rdpmc": ("primary.rdpmc_exiting", 15, "emulate_rdpmc"),
    "mwait": ("primary.mwait_exiting", 36, None),
    "monitor": ("primary.monitor_exiting", 39, None),
}


@dataclass
class ExitStats:
    count: int = 0
    seconds: float = 0.0


class Vcpu:
    """One guest vCPU on Unicorn under a VmxConfig."""

    def __init__(self, config: VmxConfig, *, memory: int, mode: int,
                 platform: Board | None = None,
                 handlers: dict[int, Callable] | None = None,
                 trace: Any = None,       # a vmm.run.TraceWriter (begin/end per exit)
                 max_instructions: int | None = None,
                 native_counter: bool | None = None, clock: str = "virtual"):
        if mode not in (16, 32, 64):
            raise ValueError(f"mode must be 16, 32 or 64, not {mode}")
        self._set_cfg(config)
        self.start_mode = mode
        self.mode = mode                 # the current code size (16/32/64), see _sync_mode
        self.bitness = mode
        self.cs_base = 0
        self.cpl = 0
        self.real = mode == 16
        self.memory = memory
        self.platform = platform or Board(memory=memory)
        self.user_handlers = dict(handlers or {})
        self.trace = trace
        self.max_instructions = max_instructions
        # always a 64-bit engine: the guest may switch modes itself (real -> protected -> long);
        # the start mode is the CPU state run.setup_start_state writes (cpu.state)
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.ctl_set_cpu_model(unicorn_cpu_model())
        self._uch = self.uc._uch
        self.cpu_state = CpuState(self.uc)
        self._rbuf = ctypes.c_uint64()
        self._rref = ctypes.byref(self._rbuf)
        self._pend: dict[int, int] = {}
        self._rcache: dict[int, int] = {}
        self._pcbuf = ctypes.c_uint64()
        self._pcref = ctypes.byref(self._pcbuf)
        self._pc_reg = X.UC_X86_REG_RIP
        self._wids = (ctypes.c_int * 64)()
        self._wvals = [ctypes.c_uint64() for _ in range(64)]
        self._wptrs = (ctypes.c_void_p * 64)(*[ctypes.addressof(v) for v in self._wvals])
        self._gprs = _GPR64
        self._rip_reg = X.UC_X86_REG_RIP
        self._rflags_reg = X.UC_X86_REG_RFLAGS
        # --- virtual time and state ---
        self.icount = 0
        self.idle_ticks = 0
        if clock not in ("virtual", "realtime"):
            raise ValueError(f"clock must be 'virtual' or 'realtime', not {clock!r}")
        self.clock = clock
        self._rt0 = time.perf_counter_ns()     # realtime clock: host time at TSC 0
        self.tsc_adjust = 0
        self.exit_count = 0
        self.exit_stats: dict[int, ExitStats] = {}
        self.exit_order: list[int] = []
        self.status: str | None = None
        self.exit_code: int | None = None
        self.message = ""
        self.fault_dump: str | None = None
        self._rng = 0x9E3779B97F4A7C15
        self._ple_first = self._ple_last = None
        self._pending_cfg: VmxConfig | None = None
        self._cfg_lock = threading.Lock()
        # live reconfiguration: waiters learn when (instructions, tsc) a change took effect
        self.apply_cond = threading.Condition()
        self.apply_seq = 0
        self.applied_at: tuple[int, int] = (0, 0)
        self._end_request: tuple[str, str] | None = None
        # a named guest can be woken from HLT by a live event (vmcfg inject)
        self.live_wakeable = False
        self.halted = False
        self._rehalt = False
        self._event: tuple | None = None
        self._skip_once: int | None = None
        self._iw_steps = 0
        self._in_hook = False
        self._deadline_kind: str | None = None
        self._exc_dirty = False
        self._count_mode = False
        self._force_count = False
        # runtime copies of the VMCS fields the guest's actions change
        self._load_vmcs_fields(config)
        # --- memory ---
        self._ept_regions = self._ept_layout(config)
        self._map_memory()
        self._scanned: dict[int, dict[int, tuple[str, Any]]] = {}
        self._smc_count: dict[int, int] = {}
        self._hot_pages: set[int] = set()     # (reserved: pages guarded by a write hook)
        # code pages: scanned (hooked) by linear page, protected by physical page -- the
        # engine reports the physical address of a fetch or store fault
        self._code_phys: dict[int, int] = {}          # scanned linear page -> physical page
        self._phys_code: dict[int, set[int]] = {}     # physical page -> scanned linear pages
        self._xlat = ctypes.c_uint64()
        self._smc_page: int | None = None
        self._smc_before: bytes | None = None
        self._monitor_armed = False             # MONITOR armed the address-monitoring hardware
        self._smc_retry = False
        self._hooks: dict[int, int] = {}
        self._wguard: dict[int, int] = {}
        self._insns: dict[int, D.Insn] = {}
        self._prefix_cache: dict[tuple[int, int], int] = {}
        # --- events (docs/vmm.md "Events, time and memory") ---
        # devices: the board reads virtual time from the vCPU and raises NMIs on it
        self._mmio_icount: int | None = None
        self.platform.attach_cpu(now=self._device_now, nmi=self._device_nmi, wake=self._device_wake)
        self.nmi_at: int | None = None          # --nmi-at: NMI when this many have retired
        self._nmi_pending = False               # an NMI the CPU has not taken yet
        self._nmi_reflect = False               # an NMI the VMM re-injects (after an NMI exit)
        self._nmi_blocked = False               # blocking by NMI / virtual-NMI blocking (to IRET)
        self._live_nmi = False
        self._live_irqs: list[int] = []         # queue_event("irq", v): external interrupts
        self._virq: list[int] = []              # interrupts the VMM reflects into the guest
        self._entry_inject: tuple | None = None  # (itype, vector, error_code, length)
        self._extra_trap: frozenset[str] = frozenset()
        self._iret_unblock = False
        self.events_delivered = 0
        self._trapped = trapped_kinds(config)
        self._trap_cfunc = _CODE_CB(self._raw_trap)
        self._trap_fn = ctypes.cast(self._trap_cfunc, ctypes.c_void_p)
        # --- hooks ---
        self.counter = BlockCounter(self.uc, self._count_block, 0, min(memory, 256 << 20),
                                    native=native_counter)
        self.uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch_prot)
        self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.uc.hook_add(UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT, self._on_prot)
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.uc.hook_add(UC_HOOK_INSN, self._on_fastcall, "syscall", 1, 0, X.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN, self._on_fastcall, "sysenter", 1, 0, X.UC_X86_INS_SYSENTER)
        self.msrs = MsrFile(self._cpu_msr_read, self._cpu_msr_write, self._tsc_msr_read,
                            self._tsc_msr_write, devices=self.platform)
        self.cpuid = self._make_cpuid(config)
        self.wall_in_vmm = 0.0

    # ================================================================ set-up
    def _set_cfg(self, cfg: VmxConfig) -> None:
        from ..vmx.table import CONTROLS
        self.cfg = cfg
        self._on = {c.path: cfg.on(c.path) for c in CONTROLS}
        on = self._on
        self._reentry = (on["pin.activate_vmx_preemption_timer"]
                         or on["primary.interrupt_window_exiting"]
                         or on["primary.nmi_window_exiting"] or on["primary.monitor_trap_flag"])

    def _load_vmcs_fields(self, cfg: VmxConfig) -> None:
        s = cfg.settings
        self.cr0_mask, self.cr0_shadow = s["cr0"]["mask"], s["cr0"]["shadow"]
        self.cr4_mask, self.cr4_shadow = s["cr4"]["mask"], s["cr4"]["shadow"]
        self.tsc_offset = s["tsc"]["offset"]
        self.tsc_multiplier = s["tsc"]["multiplier"]
        self.tsc_hz = tsc_frequency(cfg)
        self.cr3_targets = list(s["cr3"]["targets"])
        self.ptimer_value = s["preemption_timer"]["value"]
        self.ptimer_rate = 5          # IA32_VMX_MISC[4:0] of the cvmm capability set
        self._ptimer_fire: int | None = None
        # use TPR shadow: the virtual-APIC page's VTPR lives in the VMM (devices/controls)
        self.vtpr = s["apic"]["vtpr"] & 0xFF
        self.tpr_threshold = s["apic"]["tpr_threshold"]

    def _make_cpuid(self, cfg: VmxConfig) -> CpuidModel:
        return CpuidModel(cfg.settings.get("cpuid") or {},
                          rdtscp=cfg.on("secondary.enable_rdtscp"),
                          invpcid=cfg.on("secondary.enable_invpcid"),
                          tsc_per_insn=TSC_PER_INSN, exit_cost=EXIT_COST,
                          tsc_hz=tsc_frequency(cfg),
                          apic_enabled=lambda: self.platform.lapic.enabled)

    def _ept_layout(self, cfg: VmxConfig) -> list[tuple[int, int, str]] | None:
        if not cfg.on("secondary.enable_ept"):
            return None
        regions = cfg.settings["ept"]["regions"] or []
        if not regions:
            return None
        out = []
        for r in regions:
            from .loader import parse_size
            base, size = parse_size(r["base"]), parse_size(r["size"])
            out.append((base & ~0xFFF, (base + size + 0xFFF) & ~0xFFF, str(r.get("access", "rwx"))))
        return out

    def _ept_access(self, page: int) -> str | None:
        """EPT permissions of a guest-physical page ('' = not mapped); None = no EPT limits."""
        if self._ept_regions is None:
            return None
        for lo, hi, acc in self._ept_regions:
            if lo <= page < hi:
                return acc
        return ""

    def _map_memory(self) -> None:
        # in 1 MiB regions: Unicorn's mem_protect on part of a region copies the whole region
        # (2.5 s per code page on a 256 MiB guest mapped as one region, and the copy makes the
        # region resident). But each mem_map costs time growing with the number of regions
        # (4096 regions for a 4 GiB guest: over 100 s), so large guests get larger regions:
        # at most about MAP_REGIONS of them (16 MiB each for 4 GiB). Memory stays lazy either way.
        chunk = MAP_CHUNK
        while self.memory > chunk * MAP_REGIONS:
            chunk <<= 1
        for lo in range(0, self.memory, chunk):
            self.uc.mem_map(lo, min(chunk, self.memory - lo), UC_PROT_READ | UC_PROT_WRITE)
        if self._ept_regions is not None:
            # one mem_protect per run of pages with equal EPT permissions
            bounds = sorted({0, self.memory} | {min(max(x, 0), self.memory)
                                                for lo, hi, _a in self._ept_regions
                                                for x in (lo, hi)})
            for lo, hi in zip(bounds, bounds[1:]):
                if hi <= lo:
                    continue
                acc = self._ept_access(lo)
                perms = (UC_PROT_READ if "r" in acc else 0) | (UC_PROT_WRITE if "w" in acc else 0)
                if perms != UC_PROT_READ | UC_PROT_WRITE:
                    self.uc.mem_protect(lo, hi - lo, perms)
        # devices: the LAPIC and IOAPIC pages (above RAM) go to the board's MMIO bus
        for base, size in self.platform.mmio_ranges():
            if base >= self.memory:
                self.uc.mmio_map(base, size, self._mmio_read, base, self._mmio_write, base)

    # ================================================================ registers
    def rr(self, reg: int) -> int:
        v = self._pend.get(reg)
        if v is None:
            v = self._rcache.get(reg)
            if v is None:
                b = self._rbuf
                b.value = 0
                _reg_read(self._uch, reg, self._rref)
                v = self._rcache[reg] = b.value
        return v

    def rw(self, reg: int, value: int) -> None:
        """Register writes are batched; `flush()` sends them to the emulator."""
        self._pend[reg] = value & MASK64

    def flush(self) -> None:
        pend = self._pend
        if pend:
            # the PC goes last, through uc_reg_write: only that redirects a running guest
            pc = pend.pop(self._pc_reg, None)
            n = len(pend)
            if n:
                ids, vals = self._wids, self._wvals
                for i, (r, v) in enumerate(pend.items()):
                    ids[i] = r
                    vals[i].value = v
                _reg_write_batch(self._uch, ids, self._wptrs, n)
                pend.clear()
            if pc is not None:
                b = self._pcbuf
                b.value = pc
                _reg_write(self._uch, self._pc_reg, self._pcref)
        self._rcache.clear()

    def gpr(self, i: int, size: int = 8) -> int:
        v = self.rr(self._gprs[i] if i < len(self._gprs) else _GPR64[i])
        if size == 8 and self.mode != 64:
            size = 4
        return v & ((1 << (8 * size)) - 1)

    def set_gpr(self, i: int, value: int, size: int = 8) -> None:
        reg = self._gprs[i] if i < len(self._gprs) else _GPR64[i]
        if self.mode != 64 and size == 8:
            size = 4
        if size == 8 or (size == 4 and self.mode == 64):
            self.rw(reg, value & ((1 << (8 * size)) - 1))
        else:
            m = (1 << (8 * size)) - 1
            self.rw(reg, (self.rr(reg) & ~m) | (value & m))

    # ---- the current mode (the guest changes it itself) ---------------------------
    def _sync_mode(self) -> None:
        """Read the CPU's mode, CPL and CS base (after the guest ran: it may have switched
        between real, protected and long mode, or to another code segment)."""
        self.flush()
        hf, self.cs_base, eflags = self.cpu_state.mode_bits()
        self.mode = self.bitness = mode_of(hf, eflags)
        self.cpl = hf & 3
        self.real = not hf & HF_PE

    def _ip_mask(self) -> int:
        return MASK64 if self.mode == 64 else 0xFFFFFFFF if self.mode == 32 else 0xFFFF

    @property
    def rip(self) -> int:
        """Linear address of the next instruction."""
        ip = self.rr(self._rip_reg)
        if self.real:
            return ((self.rr(X.UC_X86_REG_CS) << 4) + (ip & 0xFFFF)) & 0xFFFFF
        return (self.cs_base + ip) & (MASK64 if self.mode == 64 else 0xFFFFFFFF)

    def _rip_value(self, linear: int) -> int:
        base = (self.rr(X.UC_X86_REG_CS) << 4) if self.real else self.cs_base
        return (linear - base) & self._ip_mask()

    def set_rip(self, linear: int) -> None:
        self.rw(self._rip_reg, self._rip_value(linear))

    # ---- what cpu.delivery needs -----------------------------------------------------
    def read_phys(self, addr: int, size: int) -> bytes:
        if addr + size > self.memory:
            raise UcError(UC_ERR_READ_UNMAPPED)
        return bytes(self.uc.mem_read(addr, size))

    def write_phys(self, addr: int, data: bytes) -> None:
        if addr + len(data) > self.memory:
            raise UcError(UC_ERR_WRITE_UNMAPPED)
        for ppage in range(addr & ~0xFFF, addr + len(data), PAGE):
            for lp in list(self._phys_code.get(ppage, ())):
                if lp != ppage:
                    self._drop_page(lp)       # code seen at another linear address
        self.write_mem(addr, data)

    # ---- guest-linear code -----------------------------------------------------------
    def _paging(self) -> bool:
        return bool(self.rr(X.UC_X86_REG_CR0) & (1 << 31))

    def _sync_paging(self) -> None:
        """Pending CR0/CR3/CR4 writes reach the engine before it walks the page tables."""
        pend = self._pend
        if pend and (X.UC_X86_REG_CR3 in pend or X.UC_X86_REG_CR0 in pend
                     or X.UC_X86_REG_CR4 in pend):
            self.flush()

    def lin2phys(self, lin: int, prot: int = UC_PROT_READ) -> int | None:
        """Guest-physical address of a linear one through the guest's paging (None: unmapped)."""
        if not self._paging():
            return lin
        self._sync_paging()
        err = _vmem_translate(self._uch, ctypes.c_uint64(lin & MASK64), ctypes.c_int(prot),
                              ctypes.byref(self._xlat))
        return None if err else self._xlat.value

    def read_code(self, lin: int, size: int) -> bytes:
        """Guest code at a linear address (through the guest's paging)."""
        if not self._paging():
            return bytes(self.uc.mem_read(lin, size))
        self._sync_paging()
        buf = ctypes.create_string_buffer(size)
        err = _vmem_read(self._uch, ctypes.c_uint64(lin & MASK64), ctypes.c_int(UC_PROT_READ),
                         buf, ctypes.c_size_t(size))
        if err:
            raise UcError(err)
        return buf.raw

    def _phys_page(self, page: int) -> int | None:
        """The physical page under a code page (linear)."""
        p = self._code_phys.get(page)
        if p is None:
            p = self.lin2phys(page)
        return None if p is None else p & ~0xFFF

    def gdtr(self) -> tuple[int, int]:
        self.flush()
        g = self.uc.reg_read(X.UC_X86_REG_GDTR)
        return g[1], g[2]

    def idtr(self) -> tuple[int, int]:
        self.flush()
        g = self.uc.reg_read(X.UC_X86_REG_IDTR)
        return g[1], g[2]

    def efer(self) -> int:
        self.flush()
        return self.uc.msr_read(0xC0000080)

    def rr_rflags(self) -> int:
        return self.rr(self._rflags_reg)

    def rsp(self) -> int:
        return self.rr(X.UC_X86_REG_RSP)

    def set_rsp(self, v: int) -> None:
        self.rw(X.UC_X86_REG_RSP, v)

    def set_rflags_raw(self, v: int) -> None:
        self.rw(self._rflags_reg, v | 2)

    def rr_rip_reg(self) -> int:
        return self.rr(self._rip_reg)

    def set_rip_reg(self, v: int) -> None:
        self.rw(self._rip_reg, v)

    def after_state_load(self) -> None:
        """The hidden state was rewritten (cpu.state): forget cached registers, re-read the mode."""
        self._rcache.clear()
        self._pend.clear()
        self._sync_mode()

    def unsupported(self, what: str) -> None:
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None, f"the guest needs {what}, which vmcfg does not emulate")

    @property
    def rflags(self) -> int:
        return self.rr(self._rflags_reg)

    def set_rflags(self, v: int) -> None:
        self.rw(self._rflags_reg, v | 2)

    def cr(self, n: int) -> int:
        if n == 8:      # devices: CR8 is TPR[7:4], the virtual TPR under use-TPR-shadow
            if self._on["primary.use_tpr_shadow"]:
                return self.vtpr >> 4
            return self.platform.lapic.tpr >> 4
        return self.rr(_CR[n])

    def set_cr(self, n: int, v: int) -> None:
        if n == 8:
            if self._on["primary.use_tpr_shadow"]:
                self.vtpr = (v & 0xF) << 4
            else:
                self.platform.lapic.write(0x80, (v & 0xF) << 4)
            return
        self.rw(_CR[n], v)

    def read_mem(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        for page in range(addr & ~0xFFF, addr + len(data), PAGE):
            if page in self._scanned:         # the VMM wrote guest code: rescan it later
                self._drop_page(page)
        self.uc.mem_write(addr, data)

    def _cpu_msr_read(self, msr: int) -> int:
        self.flush()
        return self.uc.msr_read(msr)

    def _cpu_msr_write(self, msr: int, value: int) -> None:
        self.flush()
        self.uc.msr_write(msr, value)

    # ================================================================ virtual time
    @property
    def tsc(self) -> int:
        """The VMM's (host) virtual TSC."""
        return self._tsc_at(self.icount)

    def _tsc_at(self, icount: int) -> int:
        if self.clock == "realtime":
            # host nanoseconds at tsc.frequency ticks per second (plus HLT waits and guest writes)
            return ((time.perf_counter_ns() - self._rt0) * self.tsc_hz // 1_000_000_000
                    + self.tsc_adjust) & MASK64
        return (icount * TSC_PER_INSN + self.exit_count * EXIT_COST + self.idle_ticks
                + self.tsc_adjust) & MASK64

    def _insns_for(self, ticks: int) -> int:
        """Instructions to run before `ticks` TSC ticks have passed (a budget for deadlines)."""
        if ticks <= 0:
            return 0
        if self.clock == "realtime":
            # the measured rate so far; the run loop re-checks, so a low guess only costs a turn
            el = max(1, (time.perf_counter_ns() - self._rt0) * self.tsc_hz // 1_000_000_000)
            rate = max(self.icount, 1) / el
            return max(1, int(ticks * rate))
        return (ticks + TSC_PER_INSN - 1) // TSC_PER_INSN

    def guest_tsc(self, raw: int | None = None) -> int:
        """What RDTSC returns in the guest when it does not exit (§4.5)."""
        t = self.tsc if raw is None else raw
        if self._on["primary.use_tsc_offsetting"]:
            if self._on["secondary.use_tsc_scaling"]:
                t = (t * self.tsc_multiplier) >> 48
            t = t + self.tsc_offset
        return t & MASK64

    def _tsc_msr_read(self) -> int:
        return self.guest_tsc()

    def _tsc_msr_write(self, value: int) -> None:
        cur = self.guest_tsc()
        self.tsc_adjust += value - cur

    # ================================================================ devices (board wiring)
    def _device_now(self) -> int:
        """Virtual TSC for the devices; inside an MMIO access, the instructions the current
        block has retired so far count too."""
        ic = self._mmio_icount
        if ic is None:
            return self.tsc
        return self.tsc + (ic - self.icount) * TSC_PER_INSN

    def _device_nmi(self) -> None:
        self._nmi_pending = True

    def _device_wake(self) -> None:
        """Serial input arrived (another thread): take it at the next boundary."""
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _mmio_enter(self) -> None:
        self._rcache.clear()
        self._mmio_icount = max(self.icount, self._retired_at(self.rip))

    def _mmio_read(self, uc, offset: int, size: int, base: int) -> int:
        try:
            self._mmio_enter()
            return self.platform.mmio_read(base + offset, size)
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            uc.emu_stop()
            return 0
        finally:
            self._mmio_icount = None
            self._rcache.clear()       # values read mid-block must not outlive the access

    def _mmio_write(self, uc, offset: int, size: int, value: int, base: int) -> None:
        try:
            self._mmio_enter()
            self.platform.mmio_write(base + offset, size, value)
            if self.platform.changed and self._event is None:
                # interrupt state changed: re-check before the next block.  Not emu_stop: a
                # stop requested inside an MMIO store makes Unicorn restart the store
                self._event = ("resume",)
                self.counter.request_stop()
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            uc.emu_stop()
        finally:
            self._mmio_icount = None
            self._rcache.clear()       # values read mid-block must not outlive the access

    # ================================================================ code pages
    def _count_block(self, address: int, size: int) -> int:
        self._sync_mode()            # a new block: the guest may have switched modes natively
        try:
            data = self.read_code(address, size)
        except UcError:
            return 1
        return max(1, D.count_instructions(data, address, self.bitness))

    def _prefix(self, block: int, addr: int) -> int:
        """Instructions from block start up to (not including) addr."""
        if addr <= block:
            return 0
        key = (block, addr)
        n = self._prefix_cache.get(key)
        if n is None:
            try:
                data = self.read_code(block, addr - block)
            except UcError:
                return 0
            n = D.count_instructions(data, block, self.bitness, stop=addr)
            self._prefix_cache[key] = n
        return n

    def _retired_at(self, addr: int) -> int:
        """Retired instructions before the instruction at `addr`, inside the current block."""
        a, size, n = self.counter.last_block()
        c = self.counter.count
        if size and a <= addr < a + size:
            return c - n + self._prefix(a, addr)
        return c

    def _scan(self, page: int) -> None:
        try:
            data = self.read_code(page, PAGE)
        except UcError:
            return
        try:
            data += self.read_code(page + PAGE, 15)
        except UcError:
            pass
        found = self._scan_bytes(data, page)
        self._scanned[page] = found
        for addr, (kind, _instr) in found.items():
            if kind in self._trapped:
                self._hook(addr)
        if page in self._hot_pages and page not in self._wguard:
            self._wguard[page] = self.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_code_write,
                                                  begin=page, end=page + PAGE - 1)

    def _scan_bytes(self, data: bytes, base: int, lo: int = 0, hi: int | None = None) -> dict:
        """Sensitive instructions in `data`, decoded in the current code size and in the one
        the guest may switch to without the VMM seeing it (32 <-> 64, 16 -> 32): a hook sits at
        each; at the trap the instruction is decoded again in the mode the CPU is in then."""
        other = 64 if self.bitness == 32 else 32
        found = D.scan_page(data, base, other, lo, hi)
        found.update(D.scan_page(data, base, self.bitness, lo, hi))
        return found

    def _hook(self, addr: int) -> None:
        # registered straight with the C API: one shared ctypes callback, no binding wrapper
        if addr not in self._hooks:
            hh = ctypes.c_size_t()
            err = uclib.uc_hook_add(self._uch, ctypes.byref(hh), UC_HOOK_CODE, self._trap_fn,
                                    None, ctypes.c_uint64(addr), ctypes.c_uint64(addr))
            if err:
                raise UcError(err)
            self._hooks[addr] = hh.value

    def _unhook(self, addr: int) -> None:
        h = self._hooks.pop(addr, None)
        if h is not None:
            uclib.uc_hook_del(self._uch, ctypes.c_size_t(h))

    def _drop_page(self, page: int) -> None:
        found = self._scanned.pop(page, {})
        for addr in list(found):
            self._unhook(addr)
            self._insns.pop(addr, None)
        for a in [a for a in self._insns if page <= a < page + PAGE]:
            self._insns.pop(a, None)
        h = self._wguard.pop(page, None)
        if h is not None:
            self.uc.hook_del(h)
        self._make_data_page(page)

    def _rescan(self, page: int) -> None:
        """A guarded (hot) code page whose sensitive instructions changed: re-decode it in
        place, keeping it executable and writable; its cached translations are dropped."""
        found = self._scanned.pop(page, {})
        for addr in list(found):
            self._unhook(addr)
        for a in [a for a in self._insns if page <= a < page + PAGE]:
            self._insns.pop(a, None)
        self._scan(page)
        self.counter.invalidate(page, page + PAGE)
        self._prefix_cache.clear()
        self.uc.ctl_remove_cache(page, page + PAGE)

    def _make_data_page(self, page: int) -> None:
        """Back to readable/writable, not executable (within its EPT rights): the next
        fetch rescans it; its cached translations and block counts are dropped."""
        ppage = self._code_phys.pop(page, None)
        if ppage is None:
            ppage = page if not self._paging() else None
        else:
            lins = self._phys_code.get(ppage, set())
            lins.discard(page)
            if lins:
                ppage = None                  # another linear view still runs code from it
            else:
                self._phys_code.pop(ppage, None)
        if ppage is not None and ppage < self.memory:
            acc = self._ept_access(ppage)
            perms = UC_PROT_READ | UC_PROT_WRITE if acc is None else \
                (UC_PROT_READ if "r" in acc else 0) | (UC_PROT_WRITE if "w" in acc else 0)
            self.uc.mem_protect(ppage, PAGE, perms)
        self.counter.invalidate(page, page + PAGE)
        self._prefix_cache.clear()
        self._remove_cache(page)

    def _remove_cache(self, page: int) -> None:
        try:
            self.uc.ctl_remove_cache(page, page + PAGE)
        except UcError:                       # not mapped at that linear address any more
            self.uc.ctl_flush_tb()

    def _on_code_write(self, uc, access, address, size, value, _ud):
        page = address & ~0xFFF
        found = self._scanned.get(page)
        if found is None:
            return
        # fast path: no sensitive instruction overlaps the store and the stored bytes
        # cannot start one -> nothing to rescan
        trig = D.TRIGGER_BYTES
        if not any((value >> (8 * i)) & 0xFF in trig for i in range(size)) and \
                not any(a in found for a in range(address - 14, address + size)):
            return
        lo = max(address - 15, page)
        hi = min(address + size + 15, page + PAGE + 15)
        try:
            window = bytearray(self.read_mem(lo, hi - lo))
        except UcError:
            return
        before = bytes(window)
        for i in range(size):
            j = address - lo + i
            if 0 <= j < len(window):
                window[j] = (value >> (8 * i)) & 0xFF
        # the window decoded before and after the store from the same first byte (a window
        # may begin inside an instruction: only a difference between the two counts)
        lim = min(len(window), page + PAGE - lo)
        old = {a: k for a, (k, _i) in self._scan_bytes(before, lo, 0, lim).items()}
        newk = {a: k for a, (k, _i) in self._scan_bytes(bytes(window), lo, 0, lim).items()}
        end = address + size
        changed = old != newk or any(a < end and address < a + ins.length
                                     for a, ins in self._insns.items() if lo <= a < hi)
        if changed:
            # hooks cannot change inside a running callback: stop (at the end of this block,
            # or at the next trapped instruction, which keeps the count exact) and rescan
            if self._event is None:
                self._event = ("dirty", page)
            uc.emu_stop()

    def _rehook_all(self) -> None:
        for page, found in self._scanned.items():
            for addr, (kind, _i) in found.items():
                if kind in self._trapped:
                    self._hook(addr)
                else:
                    self._unhook(addr)
        self.uc.ctl_flush_tb()

    # ================================================================ hooks
    def _on_fetch_prot(self, uc, access, address, size, value, _ud):
        self._event = ("fetch", address)
        return False

    def _on_unmapped(self, uc, access, address, size, value, _ud):
        self._rcache.clear()
        self._sync_mode()
        self._event = ("unmapped", access, address, size, self._retired_at(self.rip), self.rip)
        return False

    def _on_prot(self, uc, access, address, size, value, _ud):
        self._rcache.clear()
        self._sync_mode()
        page = address & ~0xFFF                 # physical: the engine reports those
        lins = self._phys_code.get(page)
        if access == UC_MEM_WRITE_PROT and lins and page not in self._hot_pages:
            acc = self._ept_access(page)
            if acc is None or "w" in acc:
                rip = self.rip
                self._event = ("smc", min(lins), rip, self._retired_at(rip))
                return False
        self._event = ("prot", access, address, size, self._retired_at(self.rip), self.rip)
        return False

    def _on_intr(self, uc, intno, _ud):
        self._rcache.clear()
        self._sync_mode()
        rip = self.rip
        # CR2 now: after this hook Unicorn jumps to a stale "next EIP", which may fault again
        self._event = ("intr", intno, rip, self._retired_at(rip), self.cr(2) if intno == 14 else None)
        uc.emu_stop()

    def _on_fastcall(self, uc, which):
        # Unicorn skips SYSCALL/SYSENTER after this hook: stop there (RIP = the next
        # instruction, the instruction retired) and do what the CPU does (cpu.fastcall)
        self._rcache.clear()
        self._sync_mode()
        rip = self.rip
        if self._event is None:
            self._event = ("fastcall", which, rip, self._retired_at(rip))
        uc.emu_stop()

    def _raw_trap(self, _uch, address, size, _ud):
        try:
            self._on_trap(self.uc, address, size, None)
        except BaseException as e:       # pragma: no cover - never let it reach C
            self._event = ("error", e)
            self.uc.emu_stop()

    def _on_trap(self, uc, address, size, _ud):
        if self._in_hook:
            return
        if self._skip_once == address:
            self._skip_once = None
            return
        self._rcache.clear()
        ins = self._insns.get(address)
        # the mode decides how the bytes decode; RDTSC/CPUID without prefixes decode the same
        # in every mode and need no CPL unless CR4.TSD: skip reading the mode for them
        if ins is None or ins.raw not in _MODE_FREE or (ins.kind == "rdtsc" and
                                                         self.cr(4) & 4):
            self._sync_mode()
        if ins is None or (ins.bitness != self.bitness and ins.raw not in _MODE_FREE):
            ins = self._decode_at(address)
            if ins is None:
                return
        if ins.kind not in self._trapped:
            return
        self._in_hook = True
        try:
            self.icount = self._retired_at(address)
            exits_before = self.exit_count
            nxt = self._instruction(ins)
            if nxt is not None:
                self.icount += 1
                self.counter.set_count(self.icount)
                self._pend[self._pc_reg] = self._rip_value(nxt)
                if self._pending_cfg is not None or self._event is not None or \
                        self.platform.changed or (
                        self.exit_count != exits_before and self._reentry_needed()):
                    if self._event is None:
                        self._event = ("resume",)
                    uc.emu_stop()
            else:
                # not retired: stop here, the run loop takes over (fault/end/single-step)
                self.counter.set_count(self.icount)
                uc.emu_stop()
        except RunEnd as e:
            self._event = ("end", e)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except DebugExit as d:
            self.icount += 1
            self._event = ("end", RunEnd("debug-exit", d.value,
                                         f"the guest wrote {d.value:#x} to the debug-exit port"))
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except SystemReset as r:          # devices: reset (0x64, 0xCF9) or ACPI power-off
            self.icount += 1
            self._event = ("end", RunEnd(r.status, None, r.message))
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except GuestFault as f:
            self._event = ("fault", f.vector, f.error_code, address, self.icount)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        except BaseException as e:    # a bug or a user handler error: never lose it
            self._event = ("error", e)
            self.counter.set_count(self.icount)
            uc.emu_stop()
        finally:
            self.flush()
            self._in_hook = False

    def _reentry_needed(self) -> bool:
        return self._reentry or self.platform.next_event() is not None or bool(self._virq) \
            or self._nmi_reflect or self._nmi_pending

    def _code_bytes(self, address: int) -> bytes | None:
        """Up to 15 bytes of guest code at `address` (fewer at the end of RAM)."""
        try:
            return self.read_code(address, 15)
        except UcError:
            try:
                return self.read_code(address, PAGE - (address & 0xFFF))
            except UcError:
                return None

    def _decode_at(self, address: int) -> D.Insn | None:
        raw = self._code_bytes(address)
        if raw is None:
            return None
        instr = D.decode_one(raw, address, self.bitness)
        kind = D.classify(instr)
        if kind is None:
            self._insns.pop(address, None)
            return None
        ins = D.make_insn(instr, raw, self.bitness, kind)
        self._insns[address] = ins
        return ins

    # ================================================================ exits
    def vmexit(self, ex: VmExit) -> None:
        """Record an exit, run its handler (user or default)."""
        self.exit_count += 1
        ex.seq = self.exit_count
        ex.instructions = ic = self.icount
        ex.tsc = self._tsc_at(ic)
        if self._on["pin.activate_vmx_preemption_timer"] and self._ptimer_fire is not None \
                and self._on["exit.save_vmx_preemption_timer_value"]:
            now = self.tsc - EXIT_COST
            left = (self._ptimer_fire >> self.ptimer_rate) - (now >> self.ptimer_rate)
            self.ptimer_value = max(0, left) & 0xFFFFFFFF
        st = self.exit_stats.get(ex.reason)
        if st is None:
            st = self.exit_stats[ex.reason] = ExitStats()
            self.exit_order.append(ex.reason)
        st.count += 1
        # -- trace hook (issue 17): the record is taken before the handler and written after it
        #    with the handler's host time; with no trace nothing extra runs.
        tr = self.trace
        rec = tr.begin(ex) if tr is not None else None
        t0 = time.perf_counter_ns()
        try:
            ctx = ExitContext(self, ex)
            h = self.user_handlers.get(ex.reason)
            if h is not None:
                try:
                    h(ctx)
                except (RunEnd, GuestFault):
                    raise
                except Exception as e:
                    raise RunEnd("error", None,
                                 f"exit handler for {ex.name} raised {type(e).__name__}: {e}") from e
            else:
                DEFAULT_HANDLERS[ex.reason](ctx)
            self._last_ctx = ctx
        finally:
            dt = time.perf_counter_ns() - t0
            st.seconds += dt * 1e-9
            if rec is not None:
                tr.end(rec, t0, dt)
        # -- end of trace hook
        self._ptimer_fire = None     # re-armed at the next VM entry

    def _exit(self, reason: int, ins: D.Insn | None, qual: int = 0, **kw) -> int | None:
        """A VM exit caused by `ins`; returns the linear RIP to resume at."""
        ex = VmExit(reason, qual, ins.address if ins else self.rip,
                    ins.length if ins else 0, ins.raw if ins else b"",
                    ins.text if ins else "", insn=ins, **kw)
        self.vmexit(ex)
        return self._exit_outcome()

    def _exit_outcome(self) -> int | None:
        """What the handler of the last exit decided: end the run, fault, or resume at an RIP."""
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        if ctx.fault is not None:
            raise ctx.fault
        return ctx.resume_rip

    def _trap_exit(self, reason: int, ins: D.Insn, nxt: int, **kw) -> int | None:
        """A trap-like VM exit after `ins` completed: RIP is the next instruction."""
        self.icount += 1                 # the instruction has retired before the exit
        self.counter.set_count(self.icount)
        self.set_rip(nxt)
        ex = VmExit(reason, 0, nxt, 0, b"", "", insn=None, **kw)
        self.vmexit(ex)
        self.icount -= 1                 # _on_trap counts the instruction when it resumes
        self.counter.set_count(self.icount)
        return self._exit_outcome()

    # ---- instruction semantics (exit or not, per the controls) ---------------
    def _instruction(self, ins: D.Insn) -> int | None:
        cfg = self.cfg
        on = self._on.__getitem__
        k = ins.kind
        nxt = ins.address + ins.length
        if self.cpl and (k in PRIVILEGED or (k == "gdt_idt" and ins.mnemonic in (D.M.LGDT, D.M.LIDT))
                         or (k == "ldt_tr" and ins.mnemonic in (D.M.LLDT, D.M.LTR))
                         or (k == "rdpmc" and not self.cr(4) & (1 << 8))
                         or (k in ("rdtsc", "rdtscp") and self.cr(4) & (1 << 2))):
            raise GuestFault(13, 0)
        if k in _UNCONDITIONAL:
            if k == "getsec" and not self.cr(4) & (1 << 14):
                raise GuestFault(6)
            if k == "xsetbv" and not self.cr(4) & (1 << 18):
                raise GuestFault(6)
            return self._exit(_UNCONDITIONAL[k], ins)
        if k == "vmx":
            return self._exit(ins.reason_of_vmx, ins)
        if k == "rdtsc":
            if on("primary.rdtsc_exiting"):
                return self._exit(16, ins)
            self.emulate_rdtsc(ins)
            return nxt
        if k == "rdtscp":
            if not on("secondary.enable_rdtscp"):
                raise GuestFault(6)
            if on("primary.rdtsc_exiting"):
                return self._exit(51, ins)
            self.emulate_rdtsc(ins)
            return nxt
        if k in ("rdmsr", "wrmsr"):
            msr = self.gpr(1, 4)
            write = k == "wrmsr"
            if cfg.msr_intercepted(msr, write):
                data = {"msr": msr}
                if write:
                    data["value"] = (self.gpr(2, 4) << 32) | self.gpr(0, 4)
                return self._exit(32 if write else 31, ins, data=data)
            self.emulate_msr(ins)
            return nxt
        if k == "io":
            port, size, qual, gla = self._io_params(ins)
            if self._io_exits(port, size):
                data = {"port": port, "size": size, "direction": "in" if ins.io_in else "out"}
                if not ins.io_in and not ins.io_string:
                    data["value"] = self.gpr(0, size)
                return self._exit(30, ins, qual, guest_linear_address=gla, data=data)
            self.emulate_io(ins)
            return nxt
        simple = SIMPLE_EXITS.get(k)
        if simple is not None:
            control, reason, emulate = simple
            if on(control):
                if k in ("rdrand", "rdseed"):
                    return self._exit(reason, ins, instruction_info=rdrand_info(ins))
                if k == "mwait":
                    # qualification bit 0: the monitoring hardware is armed (MONITOR ran)
                    return self._exit(reason, ins, 1 if self._monitor_armed else 0)
                if k == "monitor":
                    self._monitor_armed = True
                return self._exit(reason, ins)
            if k == "monitor":
                self._monitor_armed = True
            elif k == "mwait":
                self._monitor_armed = False
            if emulate is not None:
                getattr(self, emulate)(ins)
            return nxt
        if k == "invpcid":
            if not on("secondary.enable_invpcid"):
                raise GuestFault(6)
            if on("primary.invlpg_exiting"):
                return self._exit(58, ins, self._mem_displacement(ins))
            self.uc.ctl_flush_tlb() if hasattr(self.uc, "ctl_flush_tlb") else None
            return nxt
        if k == "invlpg":
            return self._exit(14, ins, self.effective_address(ins))
        if k == "pause":
            if on("primary.pause_exiting"):
                return self._exit(40, ins)
            if self._ple_check():
                return self._exit(40, ins)
            return nxt
        if k == "wbinvd":
            return self._exit(54, ins)
        if k == "gdt_idt":
            m = ins.mnemonic
            ident = {D.M.SGDT: 0, D.M.SIDT: 1, D.M.LGDT: 2, D.M.LIDT: 3}[m]
            asz = _address_size(ins, self.mode)
            osz = 2 if self.mode != 64 and (self.mode == 16) != (0x66 in _prefixes(ins)) else 4
            return self._exit(Exit.GDTR_IDTR_ACCESS, ins, self._mem_displacement(ins),
                              instruction_info=descriptor_table_info(ins, ident, asz, osz),
                              guest_linear_address=self.effective_address(ins))
        if k == "ldt_tr":
            m = ins.mnemonic
            ident = {D.M.SLDT: 0, D.M.STR: 1, D.M.LLDT: 2, D.M.LTR: 3}[m]
            info = ldt_tr_info(ins, ident, _address_size(ins, self.mode))
            return self._exit(Exit.LDTR_TR_ACCESS, ins, self._mem_displacement(ins) if ins.has_mem else 0,
                              instruction_info=info,
                              guest_linear_address=self.effective_address(ins) if ins.has_mem else None)
        if k == "mov_dr":
            return self._exit(29, ins, dr_qualification(ins.dr, ins.io_in, ins.gpr))
        if k.startswith("mov_") or k in ("clts", "lmsw", "smsw"):
            return self._cr_access(ins)
        if k in ("sti", "popf", "iret", "ss_load"):
            # interrupt-window exiting / a blocked pending event: let the instruction run,
            # then look at RFLAGS.IF (and STI / MOV SS blocking); IRET ends blocking by NMI
            if k == "iret":
                self._iret_unblock = self._nmi_blocked
            self._skip_once = ins.address
            self._iw_steps = 2 if k in ("sti", "ss_load") else 1
            if self._event is None:
                self._event = ("resume",)    # not retired: a single step must not count it
            return None
        raise GuestFault(6)

    # ---- CR accesses (§4.4) ---------------------------------------------------
    def _cr_access(self, ins: D.Insn) -> int | None:
        k = ins.kind
        nxt = ins.address + ins.length
        if k in ("mov_to_cr0", "mov_to_cr4"):
            n = ins.cr
            val = self.gpr(ins.gpr, ins.gpr_size)
            if n == 4 and val & ~cr4_allowed(self.cpuid):
                raise GuestFault(13, 0)
            mask, shadow = (self.cr0_mask, self.cr0_shadow) if n == 0 else (self.cr4_mask, self.cr4_shadow)
            if (mask & val) != (mask & shadow):
                return self._exit(28, ins, cr_qualification(n, CR_MOV_TO, ins.gpr), data={"value": val})
            self.set_cr(n, (self.cr(n) & mask) | (val & ~mask))
            return nxt
        if k in ("mov_from_cr0", "mov_from_cr4"):
            n = ins.cr
            mask, shadow = (self.cr0_mask, self.cr0_shadow) if n == 0 else (self.cr4_mask, self.cr4_shadow)
            self.set_gpr(ins.gpr, (self.cr(n) & ~mask) | (shadow & mask), 8)
            return nxt
        if k == "smsw":
            v = ((self.cr(0) & ~self.cr0_mask) | (self.cr0_shadow & self.cr0_mask)) & 0xFFFF
            if ins.has_mem:
                self.write_mem(self.effective_address(ins), v.to_bytes(2, "little"))
            else:
                self.set_gpr(ins.gpr, v, ins.gpr_size)
            return nxt
        if k == "clts":
            if self.cr0_mask & 8 and self.cr0_shadow & 8:
                return self._exit(28, ins, cr_qualification(0, CR_CLTS))
            if not self.cr0_mask & 8:
                self.set_cr(0, self.cr(0) & ~8)
            return nxt
        if k == "lmsw":
            src = self.lmsw_source(ins)
            mask, shadow = self.cr0_mask, self.cr0_shadow
            if (mask & 0xE & src) != (mask & 0xE & shadow) or \
                    (mask & 1 and not shadow & 1 and src & 1):
                return self._exit(28, ins, cr_qualification(0, CR_LMSW, 0, ins.has_mem, src),
                                  guest_linear_address=self.effective_address(ins) if ins.has_mem else None)
            cr0 = self.cr(0)
            low = (cr0 & 0xF & mask) | (src & 0xF & ~mask)
            low |= cr0 & 1           # LMSW cannot clear PE
            self.set_cr(0, (cr0 & ~0xF) | low)
            return nxt
        if k == "mov_to_cr3":
            val = self.gpr(ins.gpr, ins.gpr_size)
            n_targets = len(self.cr3_targets)
            if val in self.cr3_targets[:n_targets]:
                self.set_cr(3, val)
                return nxt
            return self._exit(28, ins, cr_qualification(3, CR_MOV_TO, ins.gpr), data={"value": val})
        if k == "mov_from_cr3":
            return self._exit(28, ins, cr_qualification(3, CR_MOV_FROM, ins.gpr))
        if k == "mov_to_cr8":
            val = self.gpr(ins.gpr, 8)
            if self._on["primary.cr8_load_exiting"]:
                return self._exit(28, ins, cr_qualification(8, CR_MOV_TO, ins.gpr),
                                  data={"value": val})
            if val >> 4:
                raise GuestFault(13, 0)          # bits 63:4 of CR8 are reserved
            self.set_cr(8, val)
            if self._on["primary.use_tpr_shadow"]:
                # SDM 29.3: VTPR[7:4] <- CR8[3:0], then TPR virtualization (29.1.2): below
                # the threshold, a trap-like TPR-below-threshold exit after the instruction
                if val & 0xF < self.tpr_threshold & 0xF:
                    return self._trap_exit(43, ins, nxt, data={
                        "vtpr": self.vtpr, "tpr_threshold": self.tpr_threshold})
            return nxt
        if k == "mov_from_cr8":
            if self._on["primary.cr8_store_exiting"]:
                return self._exit(28, ins, cr_qualification(8, CR_MOV_FROM, ins.gpr))
            self.set_gpr(ins.gpr, self.cr(8), 8)
            return nxt
        raise GuestFault(6)

    def lmsw_source(self, ins: D.Insn) -> int:
        if ins.has_mem:
            return int.from_bytes(self.read_mem(self.effective_address(ins), 2), "little")
        return self.gpr(ins.gpr, 2)

    # ---- I/O (§4.6) -------------------------------------------------------------
    def _io_params(self, ins: D.Insn) -> tuple[int, int, int, int | None]:
        port = ins.port_imm if ins.port_imm is not None else self.gpr(2, 2)
        size = ins.io_size
        qual = io_qualification(size, ins.io_in, ins.io_string, ins.io_rep,
                                ins.port_imm is not None, port)
        gla = None
        if ins.io_string:
            gla = self.gpr(7 if ins.io_in else 6, 8 if self.mode == 64 else 4)
            if self.mode == 16:
                seg = "es" if ins.io_in else "ds"
                gla = (self.rr(_SEGS[seg]) << 4) + (gla & 0xFFFF)
        return port, size, qual, gla

    def _io_exits(self, port: int, size: int) -> bool:
        on = self.cfg.on
        if on("primary.use_io_bitmaps"):
            if port + size - 1 > 0xFFFF:
                return True
            return any(self.cfg.io_port_intercepted(port + i) for i in range(size))
        return on("primary.unconditional_io_exiting")

    # ---- PAUSE-loop exiting -------------------------------------------------------
    def _ple_check(self) -> bool:
        if not self.cfg.on("secondary.pause_loop_exiting"):
            return False
        now = self.tsc
        gap, window = self.cfg.settings["ple"]["gap"], self.cfg.settings["ple"]["window"]
        if self._ple_last is None or now - self._ple_last > gap:
            self._ple_first = now
        self._ple_last = now
        if now - self._ple_first > window:
            self._ple_first = self._ple_last = None
            return True
        return False

    # ---- emulation used by both the non-exiting paths and default handlers --------
    def emulate_rdtsc(self, ins: D.Insn) -> None:
        t = self.guest_tsc()
        self.set_gpr(0, t & 0xFFFFFFFF, 4 if self.mode == 64 else 4)
        self.set_gpr(2, t >> 32, 4)
        if ins is not None and ins.kind == "rdtscp":
            self.set_gpr(1, self.msrs.values.get(0xC0000103, 0) & 0xFFFFFFFF, 4)

    def emulate_msr(self, ins: D.Insn) -> None:
        msr = self.gpr(1, 4)
        try:
            if ins.kind == "rdmsr":
                v = self.msrs.read(msr)
                self.set_gpr(0, v & 0xFFFFFFFF, 4)
                self.set_gpr(2, v >> 32, 4)
            else:
                self.msrs.write(msr, (self.gpr(2, 4) << 32) | self.gpr(0, 4))
        except MsrFault:
            raise GuestFault(13, 0) from None

    def emulate_io(self, ins: D.Insn) -> None:
        port, size, _q, _g = self._io_params(ins)
        p = self.platform
        if not ins.io_string:
            if ins.io_in:
                self.set_gpr(0, p.io_read(port, size), size)
            else:
                p.io_write(port, size, self.gpr(0, size))
            return
        asz = 8 if self.mode == 64 else 4 if self.mode == 32 else 2
        count = self.gpr(1, asz) if ins.io_rep else 1
        step = -size if self.rflags & (1 << 10) else size
        idx_reg = 7 if ins.io_in else 6
        ptr = self.gpr(idx_reg, asz)
        seg_base = 0
        if self.mode == 16:
            seg_base = self.rr(_SEGS["es" if ins.io_in else "ds"]) << 4
        try:
            while count:
                lin = seg_base + (ptr & ((1 << (8 * asz)) - 1))
                if ins.io_in:
                    self.write_mem(lin, p.io_read(port, size).to_bytes(size, "little"))
                else:
                    p.io_write(port, size, int.from_bytes(self.read_mem(lin, size), "little"))
                ptr = (ptr + step) & ((1 << (8 * asz)) - 1)
                count -= 1
        finally:
            self.set_gpr(idx_reg, ptr, asz)
            if ins.io_rep:
                self.set_gpr(1, count, asz)

    def emulate_hlt(self, ins: D.Insn | None) -> None:
        """Wait in virtual time for the next event that can wake the CPU.

        Wakes: the preemption timer; an NMI (pending, --nmi-at, live); with
        RFLAGS.IF = 1 or external-interrupt exiting, a pending or reflected
        interrupt or the next PIT interrupt.  Nothing can come: 'halted'.
        """
        now = self.tsc + TSC_PER_INSN      # the HLT retires, then the CPU waits
        self.platform.advance(now)         # devices: what is due now (timers, serial input)
        cands: list[tuple[int, str]] = []
        if self.cfg.on("pin.activate_vmx_preemption_timer") and self._ptimer_fire is not None:
            cands.append((self._ptimer_fire, "ptimer"))
        if self._nmi_pending or self._nmi_reflect or self._live_nmi or self.nmi_at is not None:
            cands.append((now, "resume"))
        if self.rflags & (1 << 9) or self._on["pin.external_interrupt_exiting"]:
            if self._live_irqs or self.platform.pending_interrupt() is not None or (
                    self._virq and self.rflags & (1 << 9)):
                cands.append((now, "resume"))
            nf = self.platform.next_event()
            if nf is not None:
                cands.append((nf, "resume"))
        if not cands:
            if self.live_wakeable:
                self._wait_live()
                self._event = ("resume",)
                return
            raise RunEnd("halted", None, "the guest halted with no event that could wake it")
        t, kind = min(cands)
        if t > now:
            if self.clock == "realtime":
                self._sleep_until(t)
            else:
                self.idle_ticks += t - now
        self._event = (kind,)

    def _sleep_until(self, tsc: int) -> None:
        """Realtime clock: wait on the host until the TSC reaches `tsc` (or a stop request)."""
        while not self.counter.stop_pending() and self._end_request is None:
            left = tsc - self.tsc
            if left <= 0:
                return
            time.sleep(min(left / self.tsc_hz, 0.05))

    def _rand(self) -> int:
        x = self._rng
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        self._rng = x
        return x

    def emulate_rdrand(self, ins: D.Insn) -> None:
        self.set_gpr(ins.gpr, self._rand(), ins.gpr_size)
        self.set_rflags((self.rflags & ~0x8D5) | 1)      # CF=1, OF/SF/ZF/AF/PF = 0

    def emulate_rdpmc(self, ins: D.Insn) -> None:
        ecx = self.gpr(1, 4)
        if ecx == 0x40000000:
            v = self.icount                               # fixed counter 0: instructions retired
        elif ecx < 4 or ecx in (0x40000001, 0x40000002):
            v = 0
        else:
            raise GuestFault(13, 0)
        self.set_gpr(0, v & 0xFFFFFFFF, 4)
        self.set_gpr(2, (v >> 32) & 0xFFFF, 4)

    # ---- effective addresses -------------------------------------------------------
    def effective_address(self, ins: D.Insn) -> int:
        i = ins.instr
        if i is None or not ins.has_mem:
            return 0
        from iced_x86 import Register as R
        addr = i.memory_displacement
        if i.memory_base not in (R.NONE, R.RIP, R.EIP):
            idx = D.gpr_index(i.memory_base)
            addr += self.gpr(idx, D.gpr_size(i.memory_base)) if idx is not None else 0
        if i.memory_index != R.NONE:
            idx = D.gpr_index(i.memory_index)
            addr += (self.gpr(idx, D.gpr_size(i.memory_index)) if idx is not None else 0) \
                * i.memory_index_scale
        seg = i.memory_segment
        if self.mode == 64:
            if seg == R.FS:
                addr += self.uc.msr_read(0xC0000100)
            elif seg == R.GS:
                addr += self.uc.msr_read(0xC0000101)
            return addr & MASK64
        if self.mode == 16:
            name = {R.ES: "es", R.CS: "cs", R.SS: "ss", R.DS: "ds", R.FS: "fs", R.GS: "gs"}.get(seg, "ds")
            return ((self.rr(_SEGS[name]) << 4) + (addr & 0xFFFF)) & 0xFFFFF
        return addr & 0xFFFFFFFF

    def _mem_displacement(self, ins: D.Insn) -> int:
        i = ins.instr
        if i is None or not ins.has_mem:
            return 0
        return i.memory_displacement & MASK64

    # ================================================================ exceptions
    def _pf_error_code(self, cr2: int, rip: int) -> int:
        """Reconstruct the #PF error code by walking the guest page tables."""
        present = True
        cr0, cr4 = self.cr(0), self.cr(4)
        try:
            if cr0 & (1 << 31):
                if self.mode == 64 or cr4 & 0x20:
                    table = self.cr(3) & 0x000FFFFFFFFFF000
                    levels = (39, 30, 21, 12) if self.mode == 64 else (30, 21, 12)
                    for sh in levels:
                        idx = (cr2 >> sh) & (0x1FF if not (self.mode != 64 and sh == 30) else 3)
                        e = struct.unpack("<Q", self.read_mem(table + idx * 8, 8))[0]
                        if not e & 1:
                            present = False
                            break
                        if sh in (30, 21) and e & 0x80:
                            break
                        table = e & 0x000FFFFFFFFFF000
                else:
                    pde = struct.unpack("<I", self.read_mem((self.cr(3) & ~0xFFF) + ((cr2 >> 22) << 2), 4))[0]
                    if not pde & 1:
                        present = False
                    elif not pde & 0x80:
                        pte = struct.unpack("<I", self.read_mem((pde & ~0xFFF) + (((cr2 >> 12) & 0x3FF) << 2), 4))[0]
                        present = bool(pte & 1)
        except UcError:
            present = False
        ec = 1 if present else 0
        fetch = False
        write = False
        ins = self._decode_any(rip)
        if ins is not None:
            if ins.len and rip <= cr2 < rip + ins.len or cr2 == rip:
                fetch = True
            else:
                import iced_x86 as ix
                info = ix.InstructionInfoFactory().info(ins)
                for m in info.used_memory():
                    if m.access in (ix.OpAccess.WRITE, ix.OpAccess.READ_WRITE,
                                    ix.OpAccess.COND_WRITE, ix.OpAccess.READ_COND_WRITE):
                        write = True
        else:
            fetch = True
        if write:
            ec |= 2
        if (self.rr(X.UC_X86_REG_CS) & 3) == 3:
            ec |= 4
        if fetch and self.msrs and self.uc.msr_read(0xC0000080) & (1 << 11):
            ec |= 0x10
        return ec

    def _decode_any(self, rip: int):
        raw = self._code_bytes(rip)
        if raw is None:
            return None
        i = D.decode_one(raw, rip, self.bitness)
        return None if i.code == 0 else i

    def _exception_exits(self, vector: int, error_code: int | None) -> bool:
        bm = self.cfg.exception_bitmap()
        bit = bool(bm >> vector & 1)
        if vector == 14:
            s = self.cfg.settings["exceptions"]
            match = ((error_code or 0) & s["pf_error_code_mask"]) == s["pf_error_code_match"]
            return match == bit
        return bit

    def raise_exception(self, vector: int, error_code: int | None, rip: int, *,
                        itype: int = INTR_HW_EXCEPTION, next_rip: int | None = None,
                        cr2: int | None = None, _depth: int = 0) -> None:
        """An exception in the guest at `rip`: a VM exit or delivery through the guest IDT."""
        if error_code is None and vector in _ERROR_CODE_VECTORS and itype == INTR_HW_EXCEPTION:
            error_code = 0
        if itype != INTR_SW_INTERRUPT and self._exception_exits(vector, error_code):
            ins_len = (next_rip - rip) if next_rip is not None else 0
            ins = self._insns.get(rip)
            raw = b""
            text = ""
            dec = self._decode_any(rip)
            if dec is not None:
                raw = self.read_code(rip, dec.len)
                text = D.format_instr(dec)
            qual = 0
            if vector == 14:
                qual = cr2 if cr2 is not None else self.cr(2)
            ex = VmExit(0, qual, rip, ins_len if itype in (INTR_SW_EXCEPTION, INTR_PRIV_SW_EXCEPTION) else 0,
                        raw, text, interruption_info(vector, itype, error_code is not None),
                        error_code, insn=ins,
                        data={"vector": vector, "next_rip": next_rip})
            self.vmexit(ex)
            ctx = self._last_ctx
            if ctx.ended is not None:
                raise ctx.ended
            if ctx.fault is not None:
                f = ctx.fault
                ctx.fault = None
                self.deliver(f.vector, f.error_code, rip, itype=INTR_HW_EXCEPTION, depth=_depth)
                return
            self.set_rip(ctx.resume_rip)
            return
        self.deliver(vector, error_code, rip, itype=itype, next_rip=next_rip, depth=_depth)

    def deliver(self, vector: int, error_code: int | None, rip: int, *,
                itype: int = INTR_HW_EXCEPTION, next_rip: int | None = None,
                depth: int = 0) -> None:
        """Deliver an event through the guest IDT (or IVT in real mode): cpu.delivery.

        A fault while delivering becomes what SDM table 6-5 says: #DF for two
        contributory faults or a #PF followed by a #PF or a contributory fault,
        a triple fault when delivering #DF faults, else the second fault itself."""
        ret = next_rip if itype in (INTR_SW_INTERRUPT, INTR_SW_EXCEPTION, INTR_PRIV_SW_EXCEPTION) \
            and next_rip is not None else rip
        try:
            deliver_event(self, vector, itype, error_code if itype == INTR_HW_EXCEPTION else None,
                          ret)
            return
        except DeliveryFault as f:
            fault = f
        self._rcache.clear()
        self._pend.clear()
        first = vector if itype == INTR_HW_EXCEPTION else -1
        how = nested(first, fault.vector)
        if how == "triple" or depth >= 3:
            self.triple_fault(rip)
            return
        if fault.vector == 14 and fault.cr2 is not None:
            self.set_cr(2, fault.cr2)
        if how == "double":
            self.raise_exception(8, 0, rip, _depth=depth + 1)
        else:
            self.raise_exception(fault.vector, fault.error_code, rip, cr2=fault.cr2,
                                 _depth=depth + 1)

    def triple_fault(self, rip: int) -> None:
        ex = VmExit(2, 0, rip)
        self.vmexit(ex)
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        self.set_rip(ctx.resume_rip)

    # ================================================================ control changes
    def request_apply(self, new_config: VmxConfig) -> None:
        """Swap the VmxConfig at the next instruction boundary (thread-safe).

        The run loop stops emulation before the next block, re-hooks every
        scanned page for the new trapped kinds, flushes cached translations
        and resumes.  Called from inside an exit handler, it takes effect
        before the guest resumes.
        """
        with self._cfg_lock:
            self._pending_cfg = new_config
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _wake(self) -> None:
        """Wake a guest waiting in HLT for a live event (see _wait_live)."""
        with self.apply_cond:
            self.apply_cond.notify_all()

    def _wait_live(self) -> None:
        """HLT with nothing on the platform that could wake it, in a named guest:
        wait (in wall time; virtual time stands still) for a live event -- an NMI,
        an interrupt the guest can take, a configuration change or `vmcfg stop`.
        A change alone leaves the guest halted: it is applied, then HLT goes on."""
        def woken() -> bool:
            can_irq = bool(self.rflags & (1 << 9)) or self._on["pin.external_interrupt_exiting"]
            return bool(self._live_nmi or (self._live_irqs and can_irq) or
                        self._end_request is not None or self._pending_cfg is not None or
                        self.platform.serial.input_waiting)
        self.halted = True
        try:
            with self.apply_cond:
                self.apply_cond.wait_for(woken)
        finally:
            self.halted = False
        if self._end_request is not None:
            raise RunEnd(self._end_request[0], None, self._end_request[1])
        if not (self._live_nmi or self._live_irqs):
            self._rehalt = True          # only a change: apply it, then keep halting

    def request_end(self, status: str, message: str) -> None:
        """End the run at the next instruction boundary (thread-safe): `vmcfg stop`."""
        self._end_request = (status, message)
        with self._cfg_lock:             # take the same path as a live apply
            if self._pending_cfg is None:
                self._pending_cfg = self.cfg
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _apply_pending(self) -> bool:
        if self._end_request is not None:
            raise RunEnd(self._end_request[0], None, self._end_request[1])
        with self._cfg_lock:
            cfg, self._pending_cfg = self._pending_cfg, None
        if cfg is None:
            return False
        old = self.cfg
        self._set_cfg(cfg)
        s_old, s_new = old.settings, cfg.settings
        for table, attr in (("cr0", "cr0"), ("cr4", "cr4")):
            if s_old[table] != s_new[table]:
                setattr(self, f"{attr}_mask", s_new[table]["mask"])
                setattr(self, f"{attr}_shadow", s_new[table]["shadow"])
        if s_old["tsc"] != s_new["tsc"]:
            self.tsc_offset, self.tsc_multiplier = s_new["tsc"]["offset"], s_new["tsc"]["multiplier"]
        if s_old["cr3"] != s_new["cr3"]:
            self.cr3_targets = list(s_new["cr3"]["targets"])
        if s_old["preemption_timer"] != s_new["preemption_timer"]:
            self.ptimer_value = s_new["preemption_timer"]["value"]
        if s_old["apic"] != s_new["apic"]:
            self.tpr_threshold = s_new["apic"]["tpr_threshold"]
            if s_old["apic"]["vtpr"] != s_new["apic"]["vtpr"]:
                self.vtpr = s_new["apic"]["vtpr"] & 0xFF
        if s_old.get("cpuid") != s_new.get("cpuid") or \
                old.on("secondary.enable_rdtscp") != cfg.on("secondary.enable_rdtscp") or \
                old.on("secondary.enable_invpcid") != cfg.on("secondary.enable_invpcid"):
            self.cpuid = self._make_cpuid(cfg)
        trapped = trapped_kinds(cfg) | self._extra_trap
        if trapped != self._trapped:
            self._trapped = trapped
            self._rehook_all()
        with self.apply_cond:
            self.apply_seq += 1
            self.applied_at = (self.icount, self.tsc)
            self.apply_cond.notify_all()
        return True

    # ================================================================ run loop
    def _pc_now(self) -> int:
        self._rcache.clear()
        return self._pc_begin()

    def _pc_begin(self) -> int:
        """Where emu_start begins: the RIP register (an offset in CS; `until` is linear)."""
        return self.rr(self._rip_reg)

    def _arm_entry_events(self) -> VmExit | None:
        """Events due at VM entry, before any guest instruction."""
        if self._on["pin.activate_vmx_preemption_timer"]:
            if self._ptimer_fire is None:
                now = self.tsc
                self._ptimer_fire = ((now >> self.ptimer_rate) + self.ptimer_value) << self.ptimer_rate
                if self.ptimer_value == 0:
                    self._ptimer_fire = now
        else:
            self._ptimer_fire = None
        if self._entry_inject is not None:
            inj, self._entry_inject = self._entry_inject, None
            self._deliver_event(*inj)
        # priority (vmx-facts 4.8): preemption timer > NMI-window > NMI > interrupt-window
        # > external interrupt
        if self._ptimer_fire is not None and self._ptimer_fire <= self.tsc:
            return VmExit(52, 0, self.rip)
        return self._events()

    # ================================================================ events
    def _events(self) -> VmExit | None:
        """Pending NMIs and interrupts at an instruction boundary: exit, deliver or wait."""
        on = self._on
        plat = self.platform
        plat.advance(self.tsc)
        plat.changed = False
        if self.nmi_at is not None and self.icount >= self.nmi_at:
            self.nmi_at = None
            self._nmi_pending = True
        if self._live_nmi or self._live_irqs:
            with self._cfg_lock:
                if self._live_nmi:
                    self._live_nmi = False
                    self._nmi_pending = True
        shadow = self._iw_steps > 0
        if_on = bool(self.rflags & (1 << 9))
        if on["primary.nmi_window_exiting"] and on["pin.virtual_nmis"] and not self._nmi_blocked:
            return VmExit(8, 0, self.rip)
        if self._nmi_pending and on["pin.nmi_exiting"]:
            self._nmi_pending = False
            return VmExit(0, 0, self.rip, interruption_info=interruption_info(2, INTR_NMI, False),
                          data={"vector": 2, "nmi": True})
        if (self._nmi_pending or self._nmi_reflect) and not self._nmi_blocked:
            if self._nmi_reflect:
                self._nmi_reflect = False
            else:
                self._nmi_pending = False
            self._deliver_event(INTR_NMI, 2)
            return None
        if on["primary.interrupt_window_exiting"] and if_on and not shadow:
            return VmExit(7, 0, self.rip)
        live = self._live_irqs[0] if self._live_irqs else None
        vec = live if live is not None else plat.pending_interrupt()
        ext_exit = on["pin.external_interrupt_exiting"]
        if vec is not None:
            if ext_exit:
                if on["exit.acknowledge_interrupt_on_exit"]:
                    self.ack_interrupt()
                    return VmExit(1, 0, self.rip,
                                  interruption_info=interruption_info(vec, INTR_EXTERNAL, False),
                                  data={"vector": vec, "acknowledged": True})
                return VmExit(1, 0, self.rip, data={"vector": vec, "acknowledged": False})
            if if_on and not shadow:
                self.ack_interrupt()
                self._deliver_event(INTR_EXTERNAL, vec)
                return None
        elif self._virq and if_on and not shadow:
            self._deliver_event(INTR_EXTERNAL, self._virq.pop(0))
            return None
        # something waits for RFLAGS.IF or for IRET: watch STI/POPF/IRET
        waiting = ((vec is not None and not ext_exit) or self._virq) and not if_on
        nmi_wait = (self._nmi_pending or self._nmi_reflect or self._nmi_blocked)
        # an interrupt may become deliverable at any boundary while the timer runs: watch
        # MOV SS / POP SS, whose blocking covers the instruction after them
        armed = plat.next_event() is not None or bool(self._live_irqs)
        extra = frozenset(("sti", "popf", "iret") if waiting else ()) | \
            frozenset(("iret",) if nmi_wait else ()) | frozenset(("ss_load",) if armed else ())
        if extra != self._extra_trap:
            self._extra_trap = extra
            trapped = trapped_kinds(self.cfg) | extra
            if trapped != self._trapped:
                self._trapped = trapped
                self._rehook_all()
        return None

    def ack_interrupt(self) -> int | None:
        """INTA: take the highest-priority external interrupt (live queue first, then the
        board: LAPIC, or the PIC through LINT0)."""
        if self._live_irqs:
            with self._cfg_lock:
                return self._live_irqs.pop(0) if self._live_irqs else None
        return self.platform.ack_interrupt()

    def reflect_interrupt(self, vector: int) -> None:
        """The VMM (a default handler) gives the guest this interrupt when RFLAGS.IF allows."""
        self._virq.append(vector & 0xFF)

    def reflect_nmi(self) -> None:
        self._nmi_reflect = True

    def inject_event(self, itype: int, vector: int, error_code: int | None = None,
                     instruction_length: int = 0) -> None:
        """Event injection on the next VM entry (delivered before any guest instruction)."""
        self._entry_inject = (itype, vector & 0xFF, error_code, instruction_length)
        if self._in_hook and self._event is None:
            self._event = ("resume",)

    def _deliver_event(self, itype: int, vector: int, error_code: int | None = None,
                       length: int = 0) -> None:
        rip = self.rip
        if itype == INTR_NMI:
            self._nmi_blocked = True
        nxt = rip + length if itype in (INTR_SW_INTERRUPT, INTR_SW_EXCEPTION,
                                        INTR_PRIV_SW_EXCEPTION) else None
        self.events_delivered += 1
        self.deliver(vector, error_code if itype == INTR_HW_EXCEPTION else None, rip,
                     itype=itype, next_rip=nxt)

    def queue_event(self, kind: str, vector: int = 2) -> None:
        """A live NMI ("nmi") or external interrupt ("irq", vector); thread-safe, taken at
        the next instruction boundary (like request_apply)."""
        if kind not in ("nmi", "irq"):
            raise ValueError(f"event kind must be 'nmi' or 'irq', not {kind!r}")
        if kind == "irq" and not 32 <= vector <= 255:
            raise ValueError(f"external interrupt vector must be 32-255, not {vector}")
        with self._cfg_lock:
            if kind == "nmi":
                self._live_nmi = True
            else:
                self._live_irqs.append(vector)
            if self._pending_cfg is None:   # take the live-apply path out of a hook, too
                self._pending_cfg = self.cfg
        self._wake()
        if not self._in_hook:
            self.counter.request_stop()

    def _deadline(self) -> tuple[int | None, str | None]:
        best, kind = None, None
        if self.max_instructions is not None:
            best, kind = self.max_instructions, "limit"
        if self._ptimer_fire is not None:
            d = self.icount + self._insns_for(self._ptimer_fire - self.tsc)
            if best is None or d < best:
                best, kind = d, "ptimer"
        nf = self.platform.next_event()
        if nf is not None:
            d = self.icount + self._insns_for(nf - self.tsc)
            if best is None or d < best:
                best, kind = d, "irq"
        if self.nmi_at is not None and (best is None or self.nmi_at < best):
            best, kind = max(self.nmi_at, self.icount), "nmi"
        return best, kind

    def _entry_exit(self, ex: VmExit) -> None:
        self.vmexit(ex)
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        if ctx.fault is not None:
            f = ctx.fault
            self.raise_exception(f.vector, f.error_code, self.rip)
            return
        self.set_rip(ctx.resume_rip)

    def run_loop(self, wall_deadline: float | None = None) -> None:
        """Run until the guest ends; sets self.status/exit_code/message."""
        uc = self.uc
        counter = self.counter
        try:
            while True:
                self._apply_pending()
                if self._rehalt:
                    self._rehalt = False
                    self.emulate_hlt(None)   # still in HLT after a change
                if wall_deadline is not None and time.monotonic() >= wall_deadline:
                    raise RunEnd("timeout", None, "the run reached its wall-clock timeout")
                ev = self._arm_entry_events()
                if ev is not None:
                    self._entry_exit(ev)
                    continue
                deadline, dkind = self._deadline()
                count = 0
                if self._iw_steps or self._on["primary.monitor_trap_flag"] or \
                        self._smc_page is not None:
                    count = 1
                if deadline is not None:
                    left = deadline - self.icount
                    if left <= 0:
                        self._deadline_reached(dkind)
                        continue
                    if left <= 2 * DEADLINE_MARGIN or self._force_count:
                        count = left if not count else min(count, left)
                        counter.set_deadline(None)
                    else:
                        counter.set_deadline(deadline - DEADLINE_MARGIN)
                else:
                    counter.set_deadline(None)
                self._event = None
                start_icount = self.icount
                counter.set_count(self.icount)
                err = None
                begin = self._pc_begin()
                begin_lin = self.rip
                if self._exc_dirty:
                    # Unicorn raised a CPU exception internally (fetch protection is a #PF
                    # to it): clear QEMU's double-fault bookkeeping before resuming
                    self._reset_old_exception()
                    self._exc_dirty = False
                self.flush()
                if count and not self._count_mode:
                    # Unicorn adds its per-instruction count hook only to blocks translated
                    # from now on: drop the cached ones (it flushes them itself on the way back)
                    uc.ctl_flush_tb()
                self._count_mode = bool(count)
                until = UNTIL
                if self._smc_page is not None:
                    # the store that hit a code page, alone: QEMU may restart it once when it
                    # writes into its own block, so stop at the next instruction, not by count
                    dec = self._decode_any(self.rip)
                    until = (self.rip + (dec.len if dec is not None else 1))
                    count = 2
                try:
                    uc.emu_start(begin, until, 0, count)
                except UcError as e:
                    err = e
                self._sync_mode()
                smc_step = self._smc_page is not None
                if smc_step:
                    self._end_smc_step()
                    if err is None and self._event is None and self.rip == until:
                        self.icount = start_icount + 1
                        counter.set_count(self.icount)
                        self._after_step()
                        continue
                stopped_by_stub = counter.clear_stop()
                # a stub stop without progress: approach the deadline in count mode
                self._force_count = stopped_by_stub and counter.count == start_icount
                if counter.stop_pending():
                    counter.clear_stop_request()
                ev = self._event
                self._event = None
                if err is not None or (ev is not None and ev[0] not in ("resume", "end")):
                    self._exc_dirty = True
                if ev is None and err is None and self._stopped_at_invalid(
                        begin_lin, start_icount, count):
                    continue
                if ev is None and err is None and count and not stopped_by_stub:
                    # count budget used up exactly
                    self.icount = start_icount + count
                    counter.set_count(self.icount)
                    self._after_step()
                    continue
                if ev is None:
                    self.icount = counter.count
                    if err is not None:
                        self._uc_error(err)
                    continue
                if ev[0] == "resume" and count == 1 and self.icount == start_icount + 1:
                    self._after_step()          # the single step was an emulated instruction
                    continue
                self._handle_event(ev, err)
        except RunEnd as e:
            self.status, self.exit_code = e.status, e.exit_code
            self.message = e.message
        with self.apply_cond:           # wake anyone waiting for an apply that cannot come
            self.apply_cond.notify_all()

    def _stopped_at_invalid(self, begin_lin: int, start_icount: int, count: int) -> bool:
        """Unicorn sometimes stops *before* an invalid opcode instead of raising it: under an
        instruction budget (count=) as if the budget were used up, and when emu_start begins
        at it after the native block stub counted it.  A single step on UD2 then went on for
        ever (MTF) and a run re-entered after an exit lost the #UD (preemption timer).  Seen
        here: raise #UD at that instruction, with the count of what really retired."""
        rip = self.rip
        if not count and rip != begin_lin:
            return False
        dec = self._decode_any(rip)
        if dec is not None and dec.mnemonic not in _UD_MNEMONICS:
            return False
        done = start_icount if rip == begin_lin else self._retired_at(rip)
        if count and done - start_icount >= count:
            return False                  # the budget really ended just before it
        self.icount = done
        self.counter.set_count(done)
        self.raise_exception(6, None, rip)
        return True

    def _after_step(self) -> None:
        """After a counted single step: MTF and interrupt-window checks."""
        if self._iret_unblock:
            self._iret_unblock = False        # the IRET has completed: NMIs unblocked
            self._nmi_blocked = False
        if self._iw_steps:
            self._iw_steps -= 1
            if not self._iw_steps and self.cfg.on("primary.interrupt_window_exiting") \
                    and self.rflags & (1 << 9):
                self._entry_exit(VmExit(7, 0, self.rip))
                return
        if self.cfg.on("primary.monitor_trap_flag"):
            self._entry_exit(VmExit(37, 0, self.rip))

    def _deadline_reached(self, kind: str | None) -> None:
        if kind == "limit":
            raise RunEnd("instruction-limit", None,
                         f"the guest ran {self.icount} instructions (--max-instructions)")
        if kind == "ptimer":
            self._ptimer_exit()

    def _ptimer_exit(self) -> None:
        now = self.tsc
        if self._ptimer_fire is not None and self._ptimer_fire > now:
            if self.clock == "realtime":
                self._sleep_until(self._ptimer_fire)
            else:
                self.idle_ticks += self._ptimer_fire - now
        self._entry_exit(VmExit(52, 0, self.rip))

    def _handle_event(self, ev: tuple, err: UcError | None) -> None:
        kind = ev[0]
        if kind == "fetch":
            a = ev[1]
            rip = self.rip
            la, lsize, ln = self.counter.last_block()
            c = self.counter.count
            if lsize and la < rip < la + lsize:
                c = c - ln + self._prefix(la, rip)
            self.icount = c
            self._fetch_page(a & ~0xFFF, rip)
            return
        if kind == "end":
            raise ev[1]
        if kind == "error":
            e = ev[1]
            if isinstance(e, RunEnd):
                raise e
            raise RunEnd("error", None, f"internal error while handling the guest: "
                                        f"{type(e).__name__}: {e}") from e
        if kind == "ptimer":
            self._ptimer_exit()
            return
        if kind == "resume":
            return
        if kind == "fastcall":
            from .cpu import fastcall
            _k, which, rip, ic = ev
            self.icount = self.counter.count
            length = 2
            fault = (fastcall.syscall if which == "syscall" else fastcall.sysenter)(self)
            if fault is not None:
                self.icount -= 1                  # faulted: not retired
                self.counter.set_count(self.icount)
                self.set_rip(self.rip - length)
                self.flush()
                self.raise_exception(fault[0], fault[1], self.rip)
            return
        if kind == "dirty":
            self.icount = self.counter.count
            self._rescan(ev[1])
            return
        if kind == "smc":
            self._code_page_written(ev[1], ev[2], ev[3])
            return
        if kind == "fault":
            _k, vector, ec, rip, ic = ev
            self.icount = ic
            self.counter.set_count(ic)
            self.raise_exception(vector, ec, rip)
            return
        if kind == "intr":
            _k, vector, rip, ic, cr2_now = ev
            soft = self._soft_int_before(rip, vector)
            if soft is not None:
                # software INT n / INT3 / INTO / INT1: Unicorn reports RIP after the instruction
                length, itype = soft
                start = rip - length
                self.icount = ic
                self.counter.set_count(self.icount)
                self.set_rip(start)
                self.raise_exception(vector, None, start, itype=itype, next_rip=rip)
            else:
                self.icount = ic
                self.counter.set_count(ic)
                self.set_rip(rip)
                cr2 = cr2_now
                if cr2 is not None:
                    self.set_cr(2, cr2)
                ec = self._pf_error_code(cr2, rip) if vector == 14 else None
                self.raise_exception(vector, ec, rip, cr2=cr2)
            return
        if kind in ("unmapped", "prot"):
            _k, access, address, size, ic, rip = ev
            self.icount = ic
            self.counter.set_count(ic)
            self._memory_fault(kind, access, address, size, rip)
            return
        raise RunEnd("error", None, f"unexpected VMM event {ev!r}")

    def _soft_int_before(self, rip: int, vector: int) -> tuple[int, int] | None:
        try:
            pre = self.read_code(rip - 2, 2) if rip >= 2 else b"\0" + self.read_code(rip - 1, 1)
        except UcError:
            return None
        if pre[0] == 0xCD and pre[1] == vector:
            return 2, INTR_SW_INTERRUPT
        if vector == 3 and pre[1] == 0xCC:
            return 1, INTR_SW_EXCEPTION
        if vector == 4 and pre[1] == 0xCE:
            return 1, INTR_SW_EXCEPTION
        if vector == 1 and pre[1] == 0xF1:
            return 1, INTR_PRIV_SW_EXCEPTION
        return None

    def _reset_old_exception(self) -> None:
        off = old_exception_offset(64)
        if off is None:
            return
        self.flush()
        ctx = self.uc.context_save()
        base = ctypes.cast(ctx.context, ctypes.c_void_p).value
        ctypes.memmove(base + off, b"\xff\xff\xff\xff", 4)
        self.uc.context_restore(ctx)

    def _fetch_page(self, ppage: int, rip: int) -> None:
        """The first fetch from physical page `ppage` (as the engine reports it); the linear
        page is RIP's, or the next one for a block or instruction crossing into it."""
        if ppage >= self.memory:
            self._memory_fault("unmapped", 16 + 2, ppage, 1, rip)   # fetch
            return
        acc = self._ept_access(ppage)
        if acc is not None and "x" not in acc:
            self._ept_violation(rip, ppage if ppage > rip else rip, "fetch", acc)
            return
        page = ppage
        if self._paging():
            for cand in (rip & ~0xFFF, (rip & ~0xFFF) + PAGE):
                phys = self.lin2phys(cand, UC_PROT_EXEC)
                if phys is not None and phys & ~0xFFF == ppage:
                    page = cand
                    break
        if page in self._scanned:
            # executable already: a stale translation; drop and rescan
            self._drop_page(page)
        self._scan(page)
        self._code_phys[page] = ppage
        self._phys_code.setdefault(ppage, set()).add(page)
        # code pages are write-protected: a store to one is caught (UC_HOOK_MEM_WRITE_PROT)
        # at no cost to other stores; pages that keep being written get a write hook instead
        writable = (acc is None or "w" in acc) and page in self._hot_pages
        perms = UC_PROT_EXEC | (UC_PROT_READ if acc is None or "r" in acc else 0) | \
            (UC_PROT_WRITE if writable else 0)
        self.uc.mem_protect(ppage, PAGE, perms)
        self._remove_cache(page)

    def _code_page_written(self, page: int, rip: int, ic: int) -> None:
        """A guest store hit a write-protected code page.

        The page's scan is dropped, the store is single-stepped with the page
        writable (and executable: the store may be on that very page), then the
        page goes back to "not yet executed" and is rescanned at its next fetch.
        """
        self.icount = ic
        self.counter.set_count(ic)
        self._smc_count[page] = self._smc_count.get(page, 0) + 1
        ppage = self._phys_page(page)
        if ppage is None:
            ppage = page
        try:
            self._smc_before = self.read_code(page, PAGE + 15 if ppage + PAGE + 15 <= self.memory
                                              else PAGE)
        except UcError:
            self._smc_before = None
        for other in list(self._phys_code.get(ppage, ())):
            if other != page:
                self._drop_page(other)
        if self._smc_before is None or page not in self._scanned:
            self._drop_page(page)
        acc = self._ept_access(ppage)
        self.uc.mem_protect(ppage, PAGE, UC_PROT_ALL if acc is None else
                            UC_PROT_EXEC | UC_PROT_WRITE | (UC_PROT_READ if "r" in acc else 0))
        self._remove_cache(page)
        self._smc_page = page
        self._smc_phys = ppage
        self.set_rip(rip)

    def _end_smc_step(self) -> None:
        """After the store: if it changed no sensitive instruction (the bytes around every
        changed byte decode to the same trapped instructions before and after, from the same
        first byte), the page keeps its scan and hooks and only its translations go;
        otherwise it is dropped and rescanned at its next fetch."""
        page, self._smc_page = self._smc_page, None
        ppage = getattr(self, "_smc_phys", page)
        before, self._smc_before = self._smc_before, None
        if page in self._scanned and before is not None:
            try:
                after = self.read_code(page, len(before))
            except UcError:
                after = None
            if after is not None and self._same_sensitive(page, before, after):
                acc = self._ept_access(ppage)
                self.uc.mem_protect(ppage, PAGE, UC_PROT_EXEC | (
                    UC_PROT_READ if acc is None or "r" in acc else 0))
                self.counter.invalidate(page, page + PAGE)
                self._prefix_cache.clear()
                self._remove_cache(page)
                return
            self._drop_page(page)
        if page in self._code_phys:
            self._make_data_page(page)
        elif ppage < self.memory:
            acc = self._ept_access(ppage)
            self.uc.mem_protect(ppage, PAGE, UC_PROT_READ | UC_PROT_WRITE if acc is None else
                                (UC_PROT_READ if "r" in acc else 0)
                                | (UC_PROT_WRITE if "w" in acc else 0))
            self.counter.invalidate(page, page + PAGE)
            self._prefix_cache.clear()
            self._remove_cache(page)

    def _same_sensitive(self, page: int, before: bytes, after: bytes) -> bool:
        if before == after:
            return True
        n = len(before)
        first = next(i for i in range(n) if before[i] != after[i])
        last = next(i for i in range(n - 1, -1, -1) if before[i] != after[i])
        lo, hi = max(0, first - 15), min(n, last + 16)
        if any(page + lo <= a + ins.length and a < page + hi for a, ins in self._insns.items()
               if page <= a < page + PAGE + 15):
            return False
        lim = min(hi, PAGE) - lo
        if lim <= 0:
            return True
        old = {a: k for a, (k, _i) in self._scan_bytes(before[lo:hi], page + lo, 0, lim).items()}
        new = {a: k for a, (k, _i) in self._scan_bytes(after[lo:hi], page + lo, 0, lim).items()}
        return old == new

    def _memory_fault(self, kind: str, access: int, address: int, size: int, rip: int) -> None:
        from unicorn import UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT, \
            UC_MEM_FETCH_PROT
        what = "fetch" if access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT) else \
            "write" if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT) else "read"
        if self.cfg.on("secondary.enable_ept"):
            acc = self._ept_access(address & ~0xFFF) if address < self.memory else ""
            self._ept_violation(rip, address, what, acc or "")
            return
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None,
                     f"guest {what} of guest-physical address {address:#x} outside guest RAM "
                     f"(0x0-{self.memory - 1:#x}) at RIP {rip:#x}")

    def _ept_violation(self, rip: int, gpa: int, what: str, acc: str) -> None:
        qual = {"read": 1, "write": 2, "fetch": 4}[what]
        qual |= (8 if "r" in acc else 0) | (16 if "w" in acc else 0) | (32 if "x" in acc else 0)
        qual |= 1 << 7      # guest linear address valid
        qual |= 1 << 8      # the access was to the translation of that linear address
        ex = VmExit(48, qual, rip, guest_physical_address=gpa, guest_linear_address=gpa,
                    data={"access": what, "permissions": acc or "---"})
        dec = self._decode_any(rip)
        if dec is not None:
            ex.instruction_bytes = self.read_code(rip, dec.len)
            ex.disassembly = D.format_instr(dec)
        self.vmexit(ex)
        ctx = self._last_ctx
        if ctx.ended is not None:
            raise ctx.ended
        self.set_rip(ctx.resume_rip)

    def ept_map(self, gpa: int, access: str = "rwx") -> None:
        """Give a guest-physical page EPT permissions (used by the EPT handler)."""
        page = gpa & ~0xFFF
        if page >= self.memory:
            raise RunEnd("error", None, f"EPT mapping of {gpa:#x}: outside guest RAM")
        self._ept_regions = [(page, page + PAGE, access)] + (self._ept_regions or [])
        perms = (UC_PROT_READ if "r" in access else 0) | (UC_PROT_WRITE if "w" in access else 0)
        if page in self._scanned and "x" in access:
            perms |= UC_PROT_EXEC
        elif page in self._scanned:
            self._drop_page(page)
        self.uc.mem_protect(page, PAGE, perms)
        self.uc.ctl_remove_cache(page, page + PAGE)

    def _uc_error(self, err: UcError) -> None:
        rip = self.rip
        if err.errno == UC_ERR_INSN_INVALID:
            self.icount = self._retired_at(rip)
            self.counter.set_count(self.icount)
            self.raise_exception(6, None, rip)
            return
        if err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                         UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT):
            self.fault_dump = self.register_dump()
            raise RunEnd("error", None, f"guest memory access fault at RIP {rip:#x}: {err}")
        self.fault_dump = self.register_dump()
        raise RunEnd("error", None, f"the emulator stopped at RIP {rip:#x}: {err}")

    # ================================================================ reports
    def register_dump(self) -> str:
        lines = []
        names = GPR_NAMES if self.mode == 64 else GPR_NAMES[:8]
        regs = [(n if self.mode == 64 else "e" + n[1:], self.gpr(i)) for i, n in enumerate(names)]
        w = 16 if self.mode == 64 else 8
        for i in range(0, len(regs), 4):
            lines.append("  ".join(f"{n.upper():>3}={v:0{w}x}" for n, v in regs[i:i + 4]))
        lines.append(f"RIP={self.rip:0{w}x}  RFLAGS={self.rflags:08x}  "
                     f"CS={self.rr(X.UC_X86_REG_CS):04x} SS={self.rr(X.UC_X86_REG_SS):04x} "
                     f"DS={self.rr(X.UC_X86_REG_DS):04x}")
        lines.append(f"CR0={self.cr(0):08x} CR2={self.cr(2):x} CR3={self.cr(3):x} CR4={self.cr(4):x}")
        try:
            code = self.read_code(self.rip, 15)
            dec = D.decode_one(code, self.rip, self.bitness)
            lines.append(f"at RIP: {code[:dec.len].hex()}  {D.format_instr(dec)}")
        except UcError:
            lines.append("at RIP: (not in guest RAM)")
        return "\n".join(lines)
