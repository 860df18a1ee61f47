"""The virtual CPU: a Unicorn guest whose VM exits follow a VmxConfig.

How instructions are trapped (shared/reference/unicorn-trapping.md):

* guest RAM is mapped readable/writable but not executable; the first fetch
  from a region (1 MiB of the engine's mapping) stops emulation and makes it
  code (executable, write-protected);
* the first time the engine runs a block, the block is decoded and a
  UC_HOOK_CODE hook is added at exactly the sensitive instructions the current
  controls trap (the hook is the native exit path's C function where it is
  built, ``native/fastexit.c``);
* a store into code from another region makes that region data again at once
  (its blocks are decoded afresh when it runs); code that writes its own region
  is single-stepped, and such a region is then protected page by page;
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
* ``fastexit``   -- the native exit path's state block and what the C helper may do;
* ``deviceio``   -- device I/O no control intercepts: from the native hook to the bus;
* ``leanexit``   -- Python exit handlers called from the native hook (no engine stop), and
  external-interrupt exits to the default handler at the soft deadline;
* ``common``     -- shared constants.
"""

from __future__ import annotations

from ..outcome import GuestFault, RunEnd
from .common import EXIT_COST, GDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR, TSC_PER_INSN, VMM_AREA_END
from .core import Vcpu
from .intercepts import ALWAYS_TRAPPED, PRIVILEGED, ExitStats, cr4_allowed, trapped_kinds
from .vtime import tsc_frequency

__all__ = ["ALWAYS_TRAPPED", "EXIT_COST", "ExitStats", "GDT_ADDR", "GuestFault", "PDPT_ADDR", "PD_ADDR", "PML4_ADDR", "PRIVILEGED", "RunEnd", "TSC_PER_INSN", "VMM_AREA_END", "Vcpu", "cr4_allowed", "trapped_kinds", "tsc_frequency"]
