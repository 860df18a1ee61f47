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

The package, one module per part of the state the vCPU owns:

* ``core``       -- ``Vcpu``: construction, composing the parts below;
* ``registers``  -- guest registers (batched raw access), the current mode, CRs, CPU MSRs;
* ``memory``     -- RAM layout, EPT permissions, physical/linear access, MMIO wiring;
* ``codepages``  -- code-page scanning and hooks, self-modifying code, instruction counting;
* ``intercepts`` -- trapped kinds, instruction semantics, VM exits and their handlers;
* ``events``     -- exceptions, event injection and delivery, NMIs and interrupts;
* ``vtime``      -- virtual time, the guest TSC, deadlines;
* ``reconfig``   -- the controls in force and live changes;
* ``runloop``    -- the run loop and the run's outcome;
* ``common``     -- shared constants.
"""

from __future__ import annotations

from ..outcome import GuestFault, RunEnd
from .common import EXIT_COST, GDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR, TSC_PER_INSN, VMM_AREA_END
from .core import Vcpu
from .intercepts import ALWAYS_TRAPPED, PRIVILEGED, ExitStats, cr4_allowed, trapped_kinds
from .vtime import tsc_frequency

__all__ = ["ALWAYS_TRAPPED", "EXIT_COST", "ExitStats", "GDT_ADDR", "GuestFault", "PDPT_ADDR", "PD_ADDR", "PML4_ADDR", "PRIVILEGED", "RunEnd", "TSC_PER_INSN", "VMM_AREA_END", "Vcpu", "cr4_allowed", "trapped_kinds", "tsc_frequency"]
