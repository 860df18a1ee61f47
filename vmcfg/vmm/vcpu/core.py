"""The vCPU: one guest CPU on Unicorn under a VmxConfig, composed of its parts."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable
from unicorn import (UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_UNMAPPED, UC_MODE_64,
                     Uc, x86_const as X)
from .. import decode as D
from ...vmx.config import VmxConfig
from ..counter import BlockCounter
from ..cpu.state import CpuState, unicorn_cpu_model
from ..devices import Board
from ..platform import MsrFile
from .common import _CODE_CB, _GPR64, UNTIL
from .intercepts import ExitStats, trapped_kinds
from .codepages import CodePagesMixin
from .deviceio import DeviceIoMixin
from .events import EventsMixin
from .fastexit import FastExitMixin
from .intercepts import InterceptsMixin
from .leanexit import LeanExitMixin
from .memory import MemoryMixin
from .reconfig import ReconfigMixin
from .registers import RegistersMixin
from .runloop import RunLoopMixin
from .stopstats import StopStats
from .vtime import TimeMixin


class Vcpu(RunLoopMixin, ReconfigMixin, EventsMixin, InterceptsMixin, CodePagesMixin, TimeMixin, MemoryMixin, RegistersMixin, FastExitMixin,
           DeviceIoMixin, LeanExitMixin):
    """One guest vCPU on Unicorn under a VmxConfig.

    Each part of its state has one module (see the package docstring).
    """

    def __init__(self, config: VmxConfig, *, memory: int, mode: int,
                 platform: Board | None = None,
                 handlers: dict[int, Callable] | None = None,
                 trace: Any = None,       # a vmm.run.TraceWriter (begin/end per exit)
                 max_instructions: int | None = None,
                 native_counter: bool | None = None, clock: str = "virtual",
                 native_exit: bool | None = None, machine_tsc_hz: int | None = None):
        # the machine's TSC rate where the profile sets none (it outlives live applies)
        self.machine_tsc_hz = machine_tsc_hz
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
        # Exits mode, with no exit address but while a store to a code page is stepped: at the
        # end of every emu_start Unicorn drops the translated block at (`until` - 1) with a
        # *faulting* lookup, and the "run for ever" until (2**64 - 1) is never mapped -- each
        # run left CR2 = 2**64 - 2 and QEMU's #DF bookkeeping behind (codepages._tb_drop)
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self._exits: tuple[int, ...] = ()
        self._uch = self.uc._uch
        self.cpu_state = CpuState(self.uc)
        self._rbuf = ctypes.c_uint64()
        self._rref = ctypes.byref(self._rbuf)
        self._cr2buf = ctypes.c_uint64()
        self._cr2ref = ctypes.byref(self._cr2buf)
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
        # the exit fast path's state block (fastexit.py): exit count, idle ticks, TSC words
        self._fx_init(native_exit)
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
        self._hflags = 0                 # the engine's hflags at the last _sync_mode
        self._stub_stopped = False       # the block counter stopped the last engine run
        self._in_hook = False
        self._input_wake = False         # serial input arrived during a hook (events.py)
        # a terminal feeds COM1 (launch): a HLT that only the UART's receive interrupt can
        # end waits for a key instead of ending the run
        self.interactive = False
        self._deadline_kind: str | None = None
        self._exc_dirty = False
        self._stray_fault = False          # codepages._tb_drop: one engine #PF report to ignore
        self._tb_flush_pending = False
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
        self._code_units: set[int] = set()            # engine regions that are code (RX)
        self._data_frame: int | None = None           # a page known data (_frame_check)
        self._unit_lins: dict[int, set[int]] = {}     # region -> linear pages run from it
        self._unit_bounds: list[tuple[int, int]] | None = None
        self._unit_starts: list[int] = []
        self._fine: set[int] = set()                  # regions (by MAP chunk) protected by page
        self._own_stores: dict[int, int] = {}         # region -> stores by its own code
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
        self.irqs_in_engine = 0                 # of those, taken inside the engine (events.py)
        self._trapped = trapped_kinds(config)
        self._trap_cfunc = _CODE_CB(self._raw_trap)
        self._trap_fn = ctypes.cast(self._trap_cfunc, ctypes.c_void_p)
        # --- hooks ---
        self.counter = BlockCounter(self.uc, self._count_block, 0, min(memory, 256 << 20),
                                    native=native_counter)
        # memory hooks only where they are needed: Unicorn keeps every store to a page that
        # any memory hook covers on its slow path for ever (codepages.py, "_guard_unit")
        self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped, None, memory, UNTIL)
        self._unit_hooks: dict[int, int] = {}         # code region -> its store hook
        self._prot_global = False
        if self._ept_regions is not None:
            self._global_prot_hooks()
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.uc.hook_add(UC_HOOK_INSN, self._on_fastcall, "syscall", 1, 0, X.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN, self._on_fastcall, "sysenter", 1, 0, X.UC_X86_INS_SYSENTER)
        self.msrs = MsrFile(self._cpu_msr_read, self._cpu_msr_write, self._tsc_msr_read,
                            self._tsc_msr_write, devices=self.platform,
                            cpuid=lambda leaf, sub: self.cpuid.query(leaf, sub))
        self.cpuid = self._make_cpuid(config)
        self.wall_in_vmm = 0.0
        self.stops = StopStats()          # engine runs by cause, host time in the engine
        self._fx_attach()
        self._dio_attach()
        self._lean_attach()
        self._apicv_attach()
