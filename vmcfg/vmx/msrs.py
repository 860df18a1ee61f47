"""VMX capability MSRs: indices, names and the layout of the non-control MSRs.

Facts: vmx-facts.md §2 (SDM App. A; QEMU scripts/kvm/vmxcap; Linux vmx.h).
"""

from __future__ import annotations

from dataclasses import dataclass

MSR_NAMES: dict[int, str] = {
    0x480: "IA32_VMX_BASIC",
    0x481: "IA32_VMX_PINBASED_CTLS",
    0x482: "IA32_VMX_PROCBASED_CTLS",
    0x483: "IA32_VMX_EXIT_CTLS",
    0x484: "IA32_VMX_ENTRY_CTLS",
    0x485: "IA32_VMX_MISC",
    0x486: "IA32_VMX_CR0_FIXED0",
    0x487: "IA32_VMX_CR0_FIXED1",
    0x488: "IA32_VMX_CR4_FIXED0",
    0x489: "IA32_VMX_CR4_FIXED1",
    0x48A: "IA32_VMX_VMCS_ENUM",
    0x48B: "IA32_VMX_PROCBASED_CTLS2",
    0x48C: "IA32_VMX_EPT_VPID_CAP",
    0x48D: "IA32_VMX_TRUE_PINBASED_CTLS",
    0x48E: "IA32_VMX_TRUE_PROCBASED_CTLS",
    0x48F: "IA32_VMX_TRUE_EXIT_CTLS",
    0x490: "IA32_VMX_TRUE_ENTRY_CTLS",
    0x491: "IA32_VMX_VMFUNC",
    0x492: "IA32_VMX_PROCBASED_CTLS3",
    0x493: "IA32_VMX_EXIT_CTLS2",
}
MSR_INDEX: dict[str, int] = {v: k for k, v in MSR_NAMES.items()}

# MSRs whose 64 bits are all allowed-1 settings (no allowed-0 half).
ALLOWED1_ONLY = frozenset({0x491, 0x492, 0x493})


@dataclass(frozen=True)
class CapBit:
    """A bit or bit range of a non-control capability MSR."""

    key: str
    lo: int
    hi: int
    title: str
    cpuinfo: str = ""     # Linux /proc/cpuinfo "vmx flags" name, if Linux shows one

    @property
    def is_flag(self) -> bool:
        return self.lo == self.hi

    def get(self, value: int) -> int:
        return (value >> self.lo) & ((1 << (self.hi - self.lo + 1)) - 1)

    def put(self, value: int, v: int) -> int:
        m = ((1 << (self.hi - self.lo + 1)) - 1) << self.lo
        return (value & ~m) | ((v << self.lo) & m)


def _b(key: str, lo: int, hi: int | None, title: str, cpuinfo: str = "") -> CapBit:
    return CapBit(key, lo, lo if hi is None else hi, title, cpuinfo)


BASIC_BITS: tuple[CapBit, ...] = (
    _b("revision", 0, 30, "VMCS revision identifier"),
    _b("vmcs_size", 32, 44, "VMCS size"),
    _b("phys_addr_32bit", 48, None, "VMCS restricted to 32 bit addresses"),
    _b("dual_monitor", 49, None, "Dual-monitor support"),
    _b("vmcs_memory_type", 50, 53, "VMCS memory type"),
    _b("ins_outs_info", 54, None, "INS/OUTS instruction information"),
    _b("true_ctls", 55, None, "IA32_VMX_TRUE_*_CTLS support"),
    _b("any_errcode", 56, None, "Skip checks on event error code"),
    _b("nested_exception", 58, None, "VMX nested exception support"),
)

MISC_BITS: tuple[CapBit, ...] = (
    _b("preemption_timer_rate", 0, 4, "VMX-preemption timer scale (log2)"),
    _b("store_lma", 5, None, "Store EFER.LMA into IA-32e mode guest control"),
    _b("activity_hlt", 6, None, "HLT activity state"),
    _b("activity_shutdown", 7, None, "Shutdown activity state"),
    _b("activity_wait_sipi", 8, None, "Wait-for-SIPI activity state"),
    _b("pt_in_vmx", 14, None, "PT in VMX operation"),
    _b("smbase_rdmsr", 15, None, "IA32_SMBASE support"),
    _b("cr3_targets", 16, 24, "Number of CR3-target values"),
    _b("msr_list_multiplier", 25, 27, "MSR-load/store count recommendation"),
    _b("smm_monitor_ctl_b2", 28, None, "IA32_SMM_MONITOR_CTL[2] can be set to 1"),
    _b("vmwrite_any", 29, None, "VMWRITE to VM-exit information fields"),
    _b("zero_len_inject", 30, None, "Inject event with insn length=0"),
    _b("mseg_revision", 32, 63, "MSEG revision identifier"),
)

EPT_VPID_BITS: tuple[CapBit, ...] = (
    _b("execute_only", 0, None, "Execute-only EPT translations", "ept_x_only"),
    _b("walk_length_4", 6, None, "Page-walk length 4"),
    _b("walk_length_5", 7, None, "Page-walk length 5", "ept_5level"),
    _b("memtype_uc", 8, None, "Paging-structure memory type UC"),
    _b("memtype_wb", 14, None, "Paging-structure memory type WB"),
    _b("pages_2m", 16, None, "2MB EPT pages"),
    _b("pages_1g", 17, None, "1GB EPT pages", "ept_1gb"),
    _b("invept", 20, None, "INVEPT supported"),
    _b("accessed_dirty", 21, None, "EPT accessed and dirty flags", "ept_ad"),
    _b("advanced_exit_info", 22, None, "Advanced VM-exit information for EPT violations"),
    _b("invept_single", 25, None, "Single-context INVEPT"),
    _b("invept_all", 26, None, "All-context INVEPT"),
    _b("invvpid", 32, None, "INVVPID supported", "invvpid"),
    _b("invvpid_address", 40, None, "Individual-address INVVPID"),
    _b("invvpid_single", 41, None, "Single-context INVVPID"),
    _b("invvpid_all", 42, None, "All-context INVVPID"),
    _b("invvpid_single_globals", 43, None, "Single-context-retaining-globals INVVPID"),
)

VMFUNC_BITS: tuple[CapBit, ...] = (
    _b("eptp_switching", 0, None, "EPTP Switching", "eptp_switching"),
)

CAP_LAYOUTS: dict[int, tuple[CapBit, ...]] = {
    0x480: BASIC_BITS,
    0x485: MISC_BITS,
    0x48C: EPT_VPID_BITS,
    0x491: VMFUNC_BITS,
}


def cap_bit(msr: int, key: str) -> CapBit:
    for b in CAP_LAYOUTS[msr]:
        if b.key == key:
            return b
    raise KeyError(key)


def parse_msr_name(text: str) -> int | None:
    """'0x481', '481h', '1153' or 'IA32_VMX_PINBASED_CTLS' -> index (None if unknown)."""
    t = text.strip()
    up = t.upper()
    if up in MSR_INDEX:
        return MSR_INDEX[up]
    if not up.startswith("IA32_") and ("IA32_" + up) in MSR_INDEX:
        return MSR_INDEX["IA32_" + up]
    try:
        if up.endswith("H"):
            return int(up[:-1], 16)
        return int(t, 0)
    except ValueError:
        return None
