"""The execution-environment settings that live beside the control bits.

One declarative table: profile table, key, kind, default, the VMCS field it
ends up in, and its meaning.  The profile loader, validation, `explain`, the
exports and the JSON Schema all derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .exits import InterruptionType, Vector
from .vmcs import Vmcs

# Exception vector names (SDM vol. 3A table 6-1, from the Vector enum); accepted with or
# without '#'.
VECTOR_NAMES: dict[str, int] = {v.name: int(v) for v in Vector}
# Profile names of the VM-entry interruption types (the InterruptionType enum, lower case).
INJECT_TYPES: dict[str, int] = {t.name.lower(): int(t) for t in InterruptionType}


@dataclass(frozen=True)
class Setting:
    table: str
    key: str
    kind: str                 # u8 u16 u32 u64 i64 bool enum vectors ports msrs irq_vectors u64list
                              # size str cpuid handlers regions
    default: Any
    title: str
    meaning: str
    vmcs: int | None = None   # VMCS field encoding, where there is one
    choices: tuple = ()
    optional: bool = False    # None allowed (absent means "not used / VMM chooses")
    needs: str | None = None  # the control without which this setting has no effect

    @property
    def path(self) -> str:
        return f"{self.table}.{self.key}"


_NEEDS: dict[str, str] = {
    "io": "primary.use_io_bitmaps",
    "msr": "primary.use_msr_bitmaps",
    "cr3": "primary.cr3_load_exiting",
    "tsc.offset": "primary.use_tsc_offsetting",
    "tsc.multiplier": "secondary.use_tsc_scaling",
    "preemption_timer": "pin.activate_vmx_preemption_timer",
    "ple": "secondary.pause_loop_exiting",
    "vpid": "secondary.enable_vpid",
    "ept": "secondary.enable_ept",
    "posted_interrupts": "pin.process_posted_interrupts",
    "vmfunc": "secondary.enable_vm_functions",
    "apic": "primary.use_tpr_shadow",
    "apic.eoi_exit": "secondary.virtual_interrupt_delivery",
    "apic.rvi": "secondary.virtual_interrupt_delivery",
    "apic.svi": "secondary.virtual_interrupt_delivery",
}


def _s(table: str, key: str, kind: str, default: Any, title: str, meaning: str,
       vmcs: int | None = None, choices: tuple = (), optional: bool = False) -> Setting:
    needs = _NEEDS.get(f"{table}.{key}", _NEEDS.get(table))
    return Setting(table, key, kind, default, title, meaning, vmcs, choices, optional, needs)


SETTINGS: tuple[Setting, ...] = (
    _s("exceptions", "intercept", "vectors", [], "Exception bitmap",
       "Exception vectors (names like \"PF\"/\"#UD\" or numbers 0-31) that cause VM exits.",
       Vmcs.EXCEPTION_BITMAP),
    _s("exceptions", "pf_error_code_mask", "u32", 0, "Page-fault error-code mask",
       "#PF exits iff ((error_code & mask) == match) equals exception-bitmap bit 14.", Vmcs.PAGE_FAULT_ERROR_CODE_MASK),
    _s("exceptions", "pf_error_code_match", "u32", 0, "Page-fault error-code match",
       "See pf_error_code_mask.", Vmcs.PAGE_FAULT_ERROR_CODE_MATCH),
    _s("io", "intercept", "ports", [], "I/O bitmaps A/B",
       "Ports (numbers or \"lo-hi\" ranges) whose accesses exit when primary.use_io_bitmaps is on.",
       Vmcs.IO_BITMAP_A),
    _s("msr", "intercept_read", "msrs", [], "MSR bitmap (read)",
       "MSRs whose RDMSR exits when primary.use_msr_bitmaps is on.", Vmcs.MSR_BITMAP),
    _s("msr", "intercept_write", "msrs", [], "MSR bitmap (write)",
       "MSRs whose WRMSR exits when primary.use_msr_bitmaps is on.", Vmcs.MSR_BITMAP),
    _s("cr0", "mask", "u64", 0, "CR0 guest/host mask",
       "CR0 bits owned by the host: guest writes that change them exit; reads return the shadow.",
       Vmcs.CR0_GUEST_HOST_MASK),
    _s("cr0", "shadow", "u64", 0, "CR0 read shadow",
       "Values the guest reads for host-owned CR0 bits.", Vmcs.CR0_READ_SHADOW),
    _s("cr4", "mask", "u64", 0, "CR4 guest/host mask",
       "CR4 bits owned by the host: guest writes that change them exit; reads return the shadow.",
       Vmcs.CR4_GUEST_HOST_MASK),
    _s("cr4", "shadow", "u64", 0, "CR4 read shadow",
       "Values the guest reads for host-owned CR4 bits.", Vmcs.CR4_READ_SHADOW),
    _s("cr3", "targets", "u64list", [], "CR3-target values",
       "MOV to CR3 with one of these values does not exit under CR3-load exiting "
       "(CR3_TARGET_COUNT = number of entries).", Vmcs.CR3_TARGET_VALUE0),
    _s("tsc", "offset", "i64", 0, "TSC offset",
       "Added to the TSC the guest reads when primary.use_tsc_offsetting is on.", Vmcs.TSC_OFFSET),
    _s("tsc", "multiplier", "u64", 1 << 48, "TSC multiplier",
       "Fixed-point multiplier with 48 fraction bits used with secondary.use_tsc_scaling "
       "(1.0 = 0x1000000000000).", Vmcs.TSC_MULTIPLIER),
    _s("tsc", "frequency", "u64", None, "TSC frequency (Hz)",
       "The guest's TSC frequency: the machine clock's rate (the local APIC timer counts at it), "
       "reported in CPUID leaves 0x15/0x16 so a kernel need not calibrate.  With the virtual "
       "clock one tick is one retired instruction, so this also sets how many instructions "
       "make a guest second.  Absent: the PIT's 1.193182 MHz (one PIT count per tick).",
       None, optional=True),
    _s("preemption_timer", "value", "u32", 0, "VMX-preemption timer value",
       "Initial count; decremented at TSC / 2^X (X = IA32_VMX_MISC[4:0]).", Vmcs.VMX_PREEMPTION_TIMER_VALUE),
    _s("ple", "gap", "u32", 128, "PLE_Gap",
       "Max TSC ticks between two PAUSEs of one loop (pause-loop exiting).", Vmcs.PLE_GAP),
    _s("ple", "window", "u32", 4096, "PLE_Window",
       "TSC ticks a PAUSE loop may last before it exits (pause-loop exiting).", Vmcs.PLE_WINDOW),
    _s("vpid", "id", "u16", 1, "Virtual-processor identifier",
       "VPID used with secondary.enable_vpid (must not be 0).", Vmcs.VIRTUAL_PROCESSOR_ID),
    _s("ept", "memory_type", "enum", "wb", "EPTP memory type",
       "Memory type of the EPT paging structures (EPTP bits 2:0).", Vmcs.EPT_POINTER, ("uc", "wb")),
    _s("ept", "walk_length", "enum", 4, "EPTP page-walk length",
       "Levels of the EPT page walk (EPTP bits 5:3 = length - 1).", Vmcs.EPT_POINTER, (4, 5)),
    _s("ept", "accessed_dirty", "bool", False, "EPTP accessed/dirty flags",
       "Enable EPT accessed and dirty flags (EPTP bit 6).", Vmcs.EPT_POINTER),
    _s("ept", "regions", "regions", [], "EPT regions",
       "Guest-physical regions mapped by EPT: [{base, size, access = \"rwx\"}] "
       "(empty: all guest RAM, rwx).", None),
    _s("ept", "on_violation", "enum", "stop", "EPT-violation default policy",
       "What the default handler does on an EPT violation: map the page on demand, or stop with a report.",
       None, ("stop", "map")),
    _s("posted_interrupts", "vector", "u16", 0xF2, "Posted-interrupt notification vector",
       "Vector that signals posted interrupts (must be 0-255).", Vmcs.POSTED_INTR_NV),
    _s("vmfunc", "eptp_switching", "bool", False, "VM-function control: EPTP switching",
       "Enables VMFUNC leaf 0 (EPTP switching) when secondary.enable_vm_functions is on.", Vmcs.VM_FUNCTION_CONTROL),
    _s("apic", "tpr_threshold", "u32", 0, "TPR threshold",
       "VM exit when the virtual TPR drops below this value (use TPR shadow).", Vmcs.TPR_THRESHOLD),
    _s("apic", "vtpr", "u8", 0, "Virtual TPR",
       "Initial VTPR byte (offset 0x80 of the virtual-APIC page).", None),
    _s("apic", "eoi_exit", "irq_vectors", [], "EOI-exit bitmap",
       "Vectors (numbers 0-255 or \"lo-hi\" ranges) whose virtual EOI causes an EOI-induced "
       "VM exit (reason 45, qualification = the vector) under virtual-interrupt delivery.",
       Vmcs.EOI_EXIT_BITMAP0),
    _s("apic", "rvi", "u8", 0, "Requesting virtual interrupt (RVI)",
       "Guest interrupt status bits 7:0 at the first VM entry: the highest vector requested in "
       "VIRR (virtual-interrupt delivery; its VIRR bit is set too).", Vmcs.GUEST_INTR_STATUS),
    _s("apic", "svi", "u8", 0, "Servicing virtual interrupt (SVI)",
       "Guest interrupt status bits 15:8 at the first VM entry: the vector in service in VISR "
       "(virtual-interrupt delivery; its VISR bit is set too).", Vmcs.GUEST_INTR_STATUS),
    # Addresses the VMM chooses unless the profile pins them (for exports and checks).
    _s("vmcs", "eptp", "u64", None, "EPT pointer (raw)",
       "A raw EPTP value; overrides ept.memory_type/walk_length/accessed_dirty.", Vmcs.EPT_POINTER,
       optional=True),
    _s("vmcs", "io_bitmap_a", "u64", None, "I/O bitmap A address", "", Vmcs.IO_BITMAP_A, optional=True),
    _s("vmcs", "io_bitmap_b", "u64", None, "I/O bitmap B address", "", Vmcs.IO_BITMAP_B, optional=True),
    _s("vmcs", "msr_bitmap", "u64", None, "MSR bitmap address", "", Vmcs.MSR_BITMAP, optional=True),
    _s("vmcs", "virtual_apic_page", "u64", None, "Virtual-APIC page address", "", Vmcs.VIRTUAL_APIC_PAGE_ADDR,
       optional=True),
    _s("vmcs", "apic_access_page", "u64", None, "APIC-access page address", "", Vmcs.APIC_ACCESS_ADDR,
       optional=True),
    _s("vmcs", "posted_intr_desc", "u64", None, "Posted-interrupt descriptor address", "",
       Vmcs.POSTED_INTR_DESC_ADDR, optional=True),
    _s("vmcs", "pml_address", "u64", None, "PML address", "", Vmcs.PML_ADDRESS, optional=True),
    _s("vmcs", "vmread_bitmap", "u64", None, "VMREAD bitmap address", "", Vmcs.VMREAD_BITMAP,
       optional=True),
    _s("vmcs", "vmwrite_bitmap", "u64", None, "VMWRITE bitmap address", "", Vmcs.VMWRITE_BITMAP,
       optional=True),
    _s("vmcs", "ve_info_address", "u64", None, "Virtualization-exception information address",
       "", Vmcs.VE_INFORMATION_ADDRESS, optional=True),
    _s("vmcs", "eptp_list_address", "u64", None, "EPTP-list address", "", Vmcs.EPTP_LIST_ADDRESS,
       optional=True),
    _s("vmcs", "spptp", "u64", None, "Sub-page-permission-table pointer", "", Vmcs.SPPT_POINTER,
       optional=True),
    _s("vmcs", "exit_msr_store_address", "u64", None, "VM-exit MSR-store address", "", Vmcs.VM_EXIT_MSR_STORE_ADDR,
       optional=True),
    _s("vmcs", "exit_msr_store_count", "u32", 0, "VM-exit MSR-store count", "", Vmcs.VM_EXIT_MSR_STORE_COUNT),
    _s("vmcs", "exit_msr_load_address", "u64", None, "VM-exit MSR-load address", "", Vmcs.VM_EXIT_MSR_LOAD_ADDR,
       optional=True),
    _s("vmcs", "exit_msr_load_count", "u32", 0, "VM-exit MSR-load count", "", Vmcs.VM_EXIT_MSR_LOAD_COUNT),
    _s("vmcs", "entry_msr_load_address", "u64", None, "VM-entry MSR-load address", "", Vmcs.VM_ENTRY_MSR_LOAD_ADDR,
       optional=True),
    _s("vmcs", "entry_msr_load_count", "u32", 0, "VM-entry MSR-load count", "", Vmcs.VM_ENTRY_MSR_LOAD_COUNT),
    # Event injection on the first VM entry (VM-entry interruption-information field).
    _s("inject", "info", "u32", None, "VM-entry interruption information (raw)",
       "A raw interruption-information value; overrides inject.type/vector/error_code presence.",
       Vmcs.VM_ENTRY_INTR_INFO_FIELD, optional=True),
    _s("inject", "type", "enum", None, "VM-entry interruption type",
       "Event injected at VM entry.", Vmcs.VM_ENTRY_INTR_INFO_FIELD, tuple(INJECT_TYPES), optional=True),
    _s("inject", "vector", "u8", 0, "VM-entry interruption vector", "", Vmcs.VM_ENTRY_INTR_INFO_FIELD),
    _s("inject", "error_code", "u32", None, "VM-entry exception error code",
       "Present: deliver an error code (bit 11 of the interruption information).", Vmcs.VM_ENTRY_EXCEPTION_ERROR_CODE,
       optional=True),
    _s("inject", "instruction_length", "u32", 0, "VM-entry instruction length",
       "Length for software interrupts/exceptions.", Vmcs.VM_ENTRY_INSTRUCTION_LEN),
    # The guest and the emulated platform (used by `vmcfg launch`).
    _s("guest", "image", "str", None, "Guest image",
       "Flat binary, ELF, assembly source (.asm/.s) or builtin:NAME; relative to the profile.",
       optional=True),
    _s("guest", "mode", "enum", 64, "Guest mode", "16, 32 or 64-bit start state.", None,
       (16, 32, 64)),
    _s("guest", "memory", "size", 16 << 20, "Guest RAM", "Guest RAM size (e.g. \"16M\").", None),
    _s("guest", "load_address", "u64", 0x100000, "Load address",
       "Guest-physical address of a flat image.", None),
    _s("guest", "entry", "u64", None, "Entry point",
       "Guest start address (default: the load address, or the ELF entry).", optional=True),
    # What the VMM does when the guest ends its machine (read when it happens: live).
    _s("lifecycle", "on_reboot", "enum", "stop", "On reboot",
       "When the guest resets the machine (0xFE to the keyboard controller's port 0x64, a "
       "reset through port 0xCF9 or the FADT's reset register: Linux rebooting, or panicking "
       "with panic=-1): \"stop\" ends the run with status reboot (exit status 14); "
       "\"restart\" boots the same guest again (the same image, or kernel, initrd and command "
       "line) on a fresh machine, and the run goes on; the report counts the restarts.",
       None, ("stop", "restart")),
    _s("lifecycle", "max_restarts", "u32", None, "Most restarts",
       "With on_reboot = \"restart\": the reset after this many restarts ends the run with "
       "status reboot (absent: no limit; --timeout and --max-instructions count over all "
       "boots).", None, optional=True),
    _s("cpuid", "*", "cpuid", {}, "CPUID overrides",
       "Override CPUID leaves, one sub-table per leaf: [cpuid.\"0x1\"] or [cpuid.\"0x7.0\"] "
       "(leaf.subleaf) with eax/ebx/ecx/edx = 0..0xffffffff; registers not written keep the "
       "CPU model's value.", None),
    _s("handlers", "*", "handlers", {}, "Exit handlers",
       "Python exit handlers: CPUID = \"module:function\" (key: exit-reason name or number).", None),
)

SETTING_BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}
SETTINGS_BY_TABLE: dict[str, tuple[Setting, ...]] = {}
for _st in SETTINGS:
    SETTINGS_BY_TABLE[_st.table] = SETTINGS_BY_TABLE.get(_st.table, ()) + (_st,)
SETTING_TABLES: tuple[str, ...] = tuple(SETTINGS_BY_TABLE)

INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "u64": (0, (1 << 64) - 1),
    "i64": (-(1 << 63), (1 << 63) - 1),
}


def _defaults() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        out.setdefault(s.table, {})
        if s.key != "*":
            out[s.table][s.key] = s.default
    return out


_DEFAULTS = _defaults()
_MUTABLE = [(s.table, s.key, type(s.default)) for s in SETTINGS
            if s.key != "*" and isinstance(s.default, (list, dict))]


def default_settings() -> dict[str, dict[str, Any]]:
    """A fresh copy of every setting's default (mutable values copied)."""
    out = {t: dict(v) for t, v in _DEFAULTS.items()}
    for t, k, typ in _MUTABLE:
        out[t][k] = typ()
    return out
