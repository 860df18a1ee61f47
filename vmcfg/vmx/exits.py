"""VM-exit reasons (SDM App. C; vmx-facts.md §4.1-4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True)
class ExitReason:
    number: int
    name: str
    title: str
    trigger: str


def _r(n: int, name: str, title: str, trigger: str) -> ExitReason:
    return ExitReason(n, name, title, trigger)


EXIT_REASONS: tuple[ExitReason, ...] = (
    _r(0, "EXCEPTION_NMI", "Exception or NMI",
       "an exception whose bit is set in the exception bitmap (#PF: error-code mask/match), or an NMI with pin.nmi_exiting"),
    _r(1, "EXTERNAL_INTERRUPT", "External interrupt", "pin.external_interrupt_exiting"),
    _r(2, "TRIPLE_FAULT", "Triple fault", "unconditional"),
    _r(3, "INIT", "INIT signal", "unconditional"),
    _r(4, "SIPI", "Start-up IPI", "a SIPI while in wait-for-SIPI state"),
    _r(5, "IO_SMI", "I/O SMI", "SMM dual-monitor treatment"),
    _r(6, "OTHER_SMI", "Other SMI", "SMM dual-monitor treatment"),
    _r(7, "INTERRUPT_WINDOW", "Interrupt window",
       "primary.interrupt_window_exiting and the guest can take an interrupt"),
    _r(8, "NMI_WINDOW", "NMI window", "primary.nmi_window_exiting and no virtual-NMI blocking"),
    _r(9, "TASK_SWITCH", "Task switch", "unconditional"),
    _r(10, "CPUID", "CPUID", "unconditional"),
    _r(11, "GETSEC", "GETSEC", "unconditional (with CR4.SMXE=1; otherwise #UD)"),
    _r(12, "HLT", "HLT", "primary.hlt_exiting"),
    _r(13, "INVD", "INVD", "unconditional"),
    _r(14, "INVLPG", "INVLPG", "primary.invlpg_exiting; qualification = linear address"),
    _r(15, "RDPMC", "RDPMC", "primary.rdpmc_exiting"),
    _r(16, "RDTSC", "RDTSC", "primary.rdtsc_exiting"),
    _r(17, "RSM", "RSM", "RSM in SMM"),
    _r(18, "VMCALL", "VMCALL", "unconditional"),
    _r(19, "VMCLEAR", "VMCLEAR", "unconditional"),
    _r(20, "VMLAUNCH", "VMLAUNCH", "unconditional"),
    _r(21, "VMPTRLD", "VMPTRLD", "unconditional"),
    _r(22, "VMPTRST", "VMPTRST", "unconditional"),
    _r(23, "VMREAD", "VMREAD", "unconditional (conditional under VMCS shadowing)"),
    _r(24, "VMRESUME", "VMRESUME", "unconditional"),
    _r(25, "VMWRITE", "VMWRITE", "unconditional (conditional under VMCS shadowing)"),
    _r(26, "VMXOFF", "VMXOFF", "unconditional"),
    _r(27, "VMXON", "VMXON", "unconditional"),
    _r(28, "CR_ACCESS", "Control-register access",
       "CR0/CR4 guest/host masks and shadows, CR3 load/store exiting, CR8 load/store exiting, CLTS, LMSW"),
    _r(29, "DR_ACCESS", "MOV DR", "primary.mov_dr_exiting"),
    _r(30, "IO_INSTRUCTION", "I/O instruction",
       "primary.unconditional_io_exiting, or the I/O bitmaps with primary.use_io_bitmaps"),
    _r(31, "RDMSR", "RDMSR", "every RDMSR, or per MSR with primary.use_msr_bitmaps"),
    _r(32, "WRMSR", "WRMSR", "every WRMSR, or per MSR with primary.use_msr_bitmaps"),
    _r(33, "ENTRY_FAIL_GUEST_STATE", "VM-entry failure due to invalid guest state",
       "a VM-entry check on guest state (reported with bit 31 set)"),
    _r(34, "ENTRY_FAIL_MSR_LOADING", "VM-entry failure due to MSR loading",
       "a bad entry in the VM-entry MSR-load area (qualification: 1-based index)"),
    _r(36, "MWAIT", "MWAIT", "primary.mwait_exiting"),
    _r(37, "MONITOR_TRAP_FLAG", "Monitor trap flag",
       "primary.monitor_trap_flag: after every guest instruction"),
    _r(39, "MONITOR", "MONITOR", "primary.monitor_exiting"),
    _r(40, "PAUSE", "PAUSE", "primary.pause_exiting, or secondary.pause_loop_exiting"),
    _r(41, "ENTRY_FAIL_MACHINE_CHECK", "VM-entry failure due to machine-check event",
       "a machine check during VM entry"),
    _r(43, "TPR_BELOW_THRESHOLD", "TPR below threshold",
       "primary.use_tpr_shadow and VTPR below the TPR threshold"),
    _r(44, "APIC_ACCESS", "APIC access", "secondary.virtualize_apic_accesses"),
    _r(45, "EOI_INDUCED", "Virtualized EOI", "secondary.virtual_interrupt_delivery"),
    _r(46, "GDTR_IDTR_ACCESS", "Access to GDTR or IDTR", "secondary.descriptor_table_exiting"),
    _r(47, "LDTR_TR_ACCESS", "Access to LDTR or TR", "secondary.descriptor_table_exiting"),
    _r(48, "EPT_VIOLATION", "EPT violation", "secondary.enable_ept"),
    _r(49, "EPT_MISCONFIG", "EPT misconfiguration", "secondary.enable_ept"),
    _r(50, "INVEPT", "INVEPT", "unconditional"),
    _r(51, "RDTSCP", "RDTSCP", "secondary.enable_rdtscp and primary.rdtsc_exiting"),
    _r(52, "PREEMPTION_TIMER", "VMX-preemption timer expired",
       "pin.activate_vmx_preemption_timer"),
    _r(53, "INVVPID", "INVVPID", "unconditional"),
    _r(54, "WBINVD", "WBINVD or WBNOINVD", "secondary.wbinvd_exiting"),
    _r(55, "XSETBV", "XSETBV", "unconditional"),
    _r(56, "APIC_WRITE", "APIC write", "secondary.apic_register_virtualization"),
    _r(57, "RDRAND", "RDRAND", "secondary.rdrand_exiting"),
    _r(58, "INVPCID", "INVPCID", "secondary.enable_invpcid and primary.invlpg_exiting"),
    _r(59, "VMFUNC", "VMFUNC", "a VM function that is not enabled, or a failed EPTP switch"),
    _r(60, "ENCLS", "ENCLS", "secondary.enable_encls_exiting and the ENCLS-exiting bitmap"),
    _r(61, "RDSEED", "RDSEED", "secondary.rdseed_exiting"),
    _r(62, "PML_FULL", "Page-modification log full", "secondary.enable_pml"),
    _r(63, "XSAVES", "XSAVES", "secondary.enable_xsaves_xrstors and the XSS-exiting bitmap"),
    _r(64, "XRSTORS", "XRSTORS", "secondary.enable_xsaves_xrstors and the XSS-exiting bitmap"),
    _r(65, "PCONFIG", "PCONFIG", "secondary.enable_pconfig"),
    _r(66, "SPP_EVENT", "SPP-related event", "secondary.sub_page_write_permissions_for_ept"),
    _r(67, "UMWAIT", "UMWAIT", "secondary.enable_user_wait_and_pause and primary.rdtsc_exiting"),
    _r(68, "TPAUSE", "TPAUSE", "secondary.enable_user_wait_and_pause and primary.rdtsc_exiting"),
    _r(69, "LOADIWKEY", "LOADIWKEY", "tertiary.loadiwkey_exiting"),
    _r(70, "ENCLV", "ENCLV", "secondary.enable_enclv_exiting"),
    _r(72, "ENQCMD_PASID_FAIL", "ENQCMD PASID translation failure", "—"),
    _r(73, "ENQCMDS_PASID_FAIL", "ENQCMDS PASID translation failure", "—"),
    _r(74, "BUS_LOCK", "Bus lock", "secondary.vmm_bus_lock_detection"),
    _r(75, "NOTIFY", "Instruction timeout", "secondary.instruction_timeout"),
    _r(76, "SEAMCALL", "SEAMCALL", "—"),
    _r(77, "TDCALL", "TDCALL", "—"),
    _r(78, "RDMSRLIST", "RDMSRLIST", "tertiary.enable_msr_list_instructions and the MSR bitmap"),
    _r(79, "WRMSRLIST", "WRMSRLIST", "tertiary.enable_msr_list_instructions and the MSR bitmap"),
    _r(80, "URDMSR", "URDMSR", "the MSR bitmap"),
    _r(81, "UWRMSR", "UWRMSR", "the MSR bitmap"),
    _r(84, "RDMSR_IMM", "RDMSR with immediate", "the MSR bitmap"),
    _r(85, "WRMSRNS", "WRMSRNS", "the MSR bitmap"),
)

EXIT_BY_NUMBER: dict[int, ExitReason] = {r.number: r for r in EXIT_REASONS}
EXIT_BY_NAME: dict[str, ExitReason] = {r.name: r for r in EXIT_REASONS}
EXIT_NUMBER: dict[str, int] = {r.name: r.number for r in EXIT_REASONS}

# Bits of the 32-bit exit-reason field (vmx-facts.md §4.1).
REASON_FLAGS: tuple[tuple[int, str], ...] = (
    (26, "bus lock detected"),
    (27, "exit from enclave mode"),
    (28, "pending MTF after SMI"),
    (29, "SMI exit from VMX root"),
    (31, "VM-entry failure"),
)
ENTRY_FAILURE_BIT = 1 << 31


def lookup_exit(text: str | int) -> ExitReason | None:
    """A reason by number (decimal/hex) or by name (case-insensitive)."""
    if isinstance(text, int):
        return EXIT_BY_NUMBER.get(text)
    t = text.strip()
    try:
        return EXIT_BY_NUMBER.get(int(t, 0))
    except ValueError:
        return EXIT_BY_NAME.get(t.upper().replace("-", "_"))


def exit_name(number: int) -> str:
    r = EXIT_BY_NUMBER.get(number)
    return r.name if r else f"RESERVED_{number}"


def decode_reason_field(value: int) -> dict:
    basic = value & 0xFFFF
    return {
        "value": value,
        "basic": basic,
        "name": exit_name(basic),
        "flags": [t for b, t in REASON_FLAGS if value >> b & 1],
        "entry_failure": bool(value & ENTRY_FAILURE_BIT),
    }


# The exit reasons as an IntEnum, derived from the table above: ``Exit.RDTSC == 16``.
# The VMM, the handlers and the hardware model all name reasons through this enum.
Exit = IntEnum("Exit", [(r.name, r.number) for r in EXIT_REASONS])


class InterruptionType(IntEnum):
    """Bits 10:8 of the VM-entry/VM-exit interruption-information field (SDM 24.8.3)."""
    EXTERNAL = 0
    NMI = 2
    HW_EXCEPTION = 3
    SW_INTERRUPT = 4
    PRIV_SW_EXCEPTION = 5
    SW_EXCEPTION = 6
    OTHER = 7


class Vector(IntEnum):
    """Architectural exception vectors (SDM vol. 3A, 6.3.1)."""
    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19
    VE = 20
    CP = 21


# Exceptions that push an error code (SDM 6.15), and the contributory class (Table 6-5).
ERROR_CODE_VECTORS = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP,
                                Vector.PF, Vector.AC, Vector.CP})
CONTRIBUTORY_VECTORS = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})
# Exceptions of the fault class (SDM Table 6-1): delivered with RIP at the faulting instruction
# and RFLAGS.RF set in the image pushed (SDM 17.3.1.1), so that returning to it does not take an
# instruction breakpoint again. #DB is a fault only for an instruction breakpoint, and that
# one is delivered with RF as it was, so it is not here.
FAULT_VECTORS = frozenset({Vector.DE, Vector.BR, Vector.UD, Vector.NM, Vector.TS, Vector.NP,
                           Vector.SS, Vector.GP, Vector.PF, Vector.MF, Vector.AC, Vector.XM,
                           Vector.VE, Vector.CP})
# The lowest vector an external interrupt may use (0-31 are reserved for exceptions).
FIRST_EXTERNAL_VECTOR = 32
LAST_EXCEPTION_VECTOR = FIRST_EXTERNAL_VECTOR - 1
LAST_VECTOR = 255


def exits_json(counts: dict[int, int]) -> list[dict]:
    """The one JSON shape of exit counts: [{"reason": n, "name": NAME, "count": c}] by reason."""
    return [{"reason": int(r), "name": exit_name(r), "count": c}
            for r, c in sorted(counts.items()) if c]
