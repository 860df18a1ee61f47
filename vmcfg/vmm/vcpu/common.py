"""Constants the vCPU's parts share: virtual-time costs, the VMM's start-up areas in
guest memory, register tables and the raw Unicorn entry points."""

from __future__ import annotations

import ctypes
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib
from ...vmx.exits import CONTRIBUTORY_VECTORS, ERROR_CODE_VECTORS


_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                            ctypes.c_void_p)


_reg_read = uclib.uc_reg_read


_reg_write_batch = uclib.uc_reg_write_batch


_reg_write = uclib.uc_reg_write


_vmem_translate = uclib.uc_vmem_translate


_vmem_read = uclib.uc_vmem_read


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

