"""The one declarative table of every VMX control field and bit.

Everything else in vmcfg (validation, explain, encode/decode, exports, the JSON
Schema, shell completion, the emulated VMM) derives from the tables in this
module.  No bit position or control name is written anywhere else.

Facts: Intel SDM Vol. 3C ch. 25 / App. A, as summarised in
shared/reference/vmx-facts.md §1 (Linux vmxfeatures.h, Bochs vmx_ctrls.h,
QEMU target/i386/cpu.c for the vendor spellings).
"""

from __future__ import annotations

from dataclasses import dataclass

from .exits import Exit


@dataclass(frozen=True)
class Field:
    """A VMCS control field (one profile table)."""

    key: str              # profile table name: pin, primary, ...
    title: str            # SDM name of the field
    encoding: int         # VMCS field encoding
    width: int            # 32 or 64
    cap_msr: str          # capability MSR name (allowed-0/allowed-1 or allowed-1 only)
    true_msr: str | None  # TRUE_* MSR used when IA32_VMX_BASIC[55] = 1
    activated_by: str | None  # "primary.activate_secondary_controls" etc.
    default1: int         # bits that read as 1 in the legacy capability MSR (reserved-as-1)
    c_name: str           # name used in C exports


@dataclass(frozen=True)
class Control:
    """One named control bit."""

    field: str
    bit: int
    key: str
    title: str
    meaning: str
    default1: bool = False
    linux: str = ""
    qemu: str = ""
    qemu_inverted: bool = False   # QEMU flag means "this default1 bit may be 0"
    aliases: tuple[str, ...] = ()
    exits: tuple[int, ...] = ()   # basic exit reasons this control causes or changes
    cpuinfo: str = ""             # Linux /proc/cpuinfo "vmx flags" name, if Linux shows one

    @property
    def path(self) -> str:
        return f"{self.field}.{self.key}"

    @property
    def mask(self) -> int:
        return 1 << self.bit


FIELDS: tuple[Field, ...] = (
    Field("pin", "Pin-based VM-execution controls", 0x4000, 32,
          "IA32_VMX_PINBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS", None,
          0x00000016, "PIN_BASED_VM_EXEC_CONTROL"),
    Field("primary", "Primary processor-based VM-execution controls", 0x4002, 32,
          "IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS", None,
          0x0401E172, "CPU_BASED_VM_EXEC_CONTROL"),
    Field("secondary", "Secondary processor-based VM-execution controls", 0x401E, 32,
          "IA32_VMX_PROCBASED_CTLS2", None, "primary.activate_secondary_controls",
          0, "SECONDARY_VM_EXEC_CONTROL"),
    Field("tertiary", "Tertiary processor-based VM-execution controls", 0x2034, 64,
          "IA32_VMX_PROCBASED_CTLS3", None, "primary.activate_tertiary_controls",
          0, "TERTIARY_VM_EXEC_CONTROL"),
    Field("exit", "Primary VM-exit controls", 0x400C, 32,
          "IA32_VMX_EXIT_CTLS", "IA32_VMX_TRUE_EXIT_CTLS", None,
          0x00036DFF, "VM_EXIT_CONTROLS"),
    Field("entry", "VM-entry controls", 0x4012, 32,
          "IA32_VMX_ENTRY_CTLS", "IA32_VMX_TRUE_ENTRY_CTLS", None,
          0x000011FF, "VM_ENTRY_CONTROLS"),
)

FIELD_BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}
FIELD_KEYS: tuple[str, ...] = tuple(f.key for f in FIELDS)


def _c(field: str, bit: int, key: str, title: str, meaning: str, *, linux: str = "",
       qemu: str = "", inv: bool = False, d1: bool = False, aliases: tuple[str, ...] = (),
       exits: tuple[int, ...] = (), cpuinfo: str = "") -> Control:
    return Control(field, bit, key, title, meaning, d1, linux, qemu, inv, aliases, exits, cpuinfo)


CONTROLS: tuple[Control, ...] = (
    # ---- pin-based (0x4000) -------------------------------------------------
    _c("pin", 0, "external_interrupt_exiting", "External-interrupt exiting",
       "External interrupts cause VM exits instead of being delivered through the guest IDT.",
       linux="PIN_BASED_EXT_INTR_MASK", qemu="vmx-intr-exit",
       aliases=("intr_exiting", "VMX_FEATURE_INTR_EXITING"), exits=(Exit.EXTERNAL_INTERRUPT,)),
    _c("pin", 3, "nmi_exiting", "NMI exiting",
       "Non-maskable interrupts cause VM exits (reason 0) instead of guest delivery.",
       linux="PIN_BASED_NMI_EXITING", qemu="vmx-nmi-exit",
       aliases=("VMX_FEATURE_NMI_EXITING",), exits=(Exit.EXCEPTION_NMI,)),
    _c("pin", 5, "virtual_nmis", "Virtual NMIs",
       "The VMM tracks NMI blocking for the guest (virtual-NMI blocking), enabling NMI-window exiting.",
       linux="PIN_BASED_VIRTUAL_NMIS", qemu="vmx-vnmi",
       aliases=("VMX_FEATURE_VIRTUAL_NMIS", "vnmi"), cpuinfo="vnmi"),
    _c("pin", 6, "activate_vmx_preemption_timer", "Activate VMX-preemption timer",
       "A timer counts down in VMX non-root operation at TSC/2^X and causes a VM exit at zero.",
       linux="PIN_BASED_VMX_PREEMPTION_TIMER", qemu="vmx-preemption-timer",
       aliases=("preemption_timer", "VMX_FEATURE_PREEMPTION_TIMER"), exits=(Exit.PREEMPTION_TIMER,), cpuinfo="preemption_timer"),
    _c("pin", 7, "process_posted_interrupts", "Process posted interrupts",
       "Interrupts with the posted-interrupt notification vector update the virtual APIC without a VM exit.",
       linux="PIN_BASED_POSTED_INTR", qemu="vmx-posted-intr",
       aliases=("posted_interrupts", "posted_intr", "VMX_FEATURE_POSTED_INTR"), cpuinfo="posted_intr"),

    # ---- primary processor-based (0x4002) -----------------------------------
    _c("primary", 2, "interrupt_window_exiting", "Interrupt-window exiting",
       "A VM exit occurs at the start of any instruction at which the guest can take an interrupt (RFLAGS.IF=1, no blocking).",
       linux="CPU_BASED_INTR_WINDOW_EXITING", qemu="vmx-vintr-pending",
       aliases=("virtual_intr_pending", "CPU_BASED_VIRTUAL_INTR_PENDING"), exits=(Exit.INTERRUPT_WINDOW,)),
    _c("primary", 3, "use_tsc_offsetting", "Use TSC offsetting",
       "RDTSC, RDTSCP and reads of IA32_TSC return the TSC plus the TSC offset (and scaled with TSC scaling).",
       linux="CPU_BASED_USE_TSC_OFFSETTING", qemu="vmx-tsc-offset",
       aliases=("tsc_offsetting", "tsc_offset", "CPU_BASED_USE_TSC_OFFSETING"), cpuinfo="tsc_offset"),
    _c("primary", 7, "hlt_exiting", "HLT exiting",
       "Executions of HLT cause VM exits.",
       linux="CPU_BASED_HLT_EXITING", qemu="vmx-hlt-exit", exits=(Exit.HLT,)),
    _c("primary", 9, "invlpg_exiting", "INVLPG exiting",
       "Executions of INVLPG (and INVPCID when enabled) cause VM exits.",
       linux="CPU_BASED_INVLPG_EXITING", qemu="vmx-invlpg-exit", exits=(Exit.INVLPG, Exit.INVPCID)),
    _c("primary", 10, "mwait_exiting", "MWAIT exiting",
       "Executions of MWAIT cause VM exits.",
       linux="CPU_BASED_MWAIT_EXITING", qemu="vmx-mwait-exit", exits=(Exit.MWAIT,)),
    _c("primary", 11, "rdpmc_exiting", "RDPMC exiting",
       "Executions of RDPMC cause VM exits.",
       linux="CPU_BASED_RDPMC_EXITING", qemu="vmx-rdpmc-exit", exits=(Exit.RDPMC,)),
    _c("primary", 12, "rdtsc_exiting", "RDTSC exiting",
       "Executions of RDTSC (and RDTSCP when enabled) cause VM exits.",
       linux="CPU_BASED_RDTSC_EXITING", qemu="vmx-rdtsc-exit", exits=(Exit.RDTSC, Exit.RDTSCP)),
    _c("primary", 15, "cr3_load_exiting", "CR3-load exiting",
       "MOV to CR3 causes a VM exit unless the value is in the CR3-target list.",
       linux="CPU_BASED_CR3_LOAD_EXITING", qemu="vmx-cr3-load-noexit", inv=True, d1=True,
       exits=(Exit.CR_ACCESS,)),
    _c("primary", 16, "cr3_store_exiting", "CR3-store exiting",
       "MOV from CR3 causes a VM exit.",
       linux="CPU_BASED_CR3_STORE_EXITING", qemu="vmx-cr3-store-noexit", inv=True, d1=True,
       exits=(Exit.CR_ACCESS,)),
    _c("primary", 17, "activate_tertiary_controls", "Activate tertiary controls",
       "The tertiary processor-based VM-execution controls are used (otherwise treated as all 0).",
       linux="CPU_BASED_ACTIVATE_TERTIARY_CONTROLS", aliases=("tertiary_controls",)),
    _c("primary", 19, "cr8_load_exiting", "CR8-load exiting",
       "MOV to CR8 causes a VM exit (64-bit guests).",
       linux="CPU_BASED_CR8_LOAD_EXITING", qemu="vmx-cr8-load-exit", exits=(Exit.CR_ACCESS,)),
    _c("primary", 20, "cr8_store_exiting", "CR8-store exiting",
       "MOV from CR8 causes a VM exit (64-bit guests).",
       linux="CPU_BASED_CR8_STORE_EXITING", qemu="vmx-cr8-store-exit", exits=(Exit.CR_ACCESS,)),
    _c("primary", 21, "use_tpr_shadow", "Use TPR shadow",
       "TPR virtualization through the virtual-APIC page; CR8 accesses use the virtual TPR.",
       linux="CPU_BASED_TPR_SHADOW", qemu="vmx-flexpriority",
       aliases=("tpr_shadow", "VMX_FEATURE_VIRTUAL_TPR", "vtpr"), exits=(Exit.TPR_BELOW_THRESHOLD,), cpuinfo="vtpr"),
    _c("primary", 22, "nmi_window_exiting", "NMI-window exiting",
       "A VM exit occurs at the start of any instruction at which there is no virtual-NMI blocking.",
       linux="CPU_BASED_NMI_WINDOW_EXITING", qemu="vmx-vnmi-pending",
       aliases=("virtual_nmi_pending",), exits=(Exit.NMI_WINDOW,)),
    _c("primary", 23, "mov_dr_exiting", "MOV-DR exiting",
       "MOV to or from a debug register causes a VM exit.",
       linux="CPU_BASED_MOV_DR_EXITING", qemu="vmx-movdr-exit", exits=(Exit.DR_ACCESS,)),
    _c("primary", 24, "unconditional_io_exiting", "Unconditional I/O exiting",
       "Every IN/INS/OUT/OUTS causes a VM exit (ignored when I/O bitmaps are used).",
       linux="CPU_BASED_UNCOND_IO_EXITING", qemu="vmx-io-exit", exits=(Exit.IO_INSTRUCTION,)),
    _c("primary", 25, "use_io_bitmaps", "Use I/O bitmaps",
       "I/O bitmaps A and B decide per port whether an I/O instruction causes a VM exit.",
       linux="CPU_BASED_USE_IO_BITMAPS", qemu="vmx-io-bitmap", exits=(Exit.IO_INSTRUCTION,)),
    _c("primary", 27, "monitor_trap_flag", "Monitor trap flag",
       "A VM exit occurs after every guest instruction (single-stepping).",
       linux="CPU_BASED_MONITOR_TRAP_FLAG", qemu="vmx-mtf", aliases=("mtf",), exits=(Exit.MONITOR_TRAP_FLAG,), cpuinfo="mtf"),
    _c("primary", 28, "use_msr_bitmaps", "Use MSR bitmaps",
       "MSR bitmaps decide per MSR whether RDMSR/WRMSR cause VM exits (otherwise all do).",
       linux="CPU_BASED_USE_MSR_BITMAPS", qemu="vmx-msr-bitmap", exits=(Exit.RDMSR, Exit.WRMSR)),
    _c("primary", 29, "monitor_exiting", "MONITOR exiting",
       "Executions of MONITOR cause VM exits.",
       linux="CPU_BASED_MONITOR_EXITING", qemu="vmx-monitor-exit", exits=(Exit.MONITOR,)),
    _c("primary", 30, "pause_exiting", "PAUSE exiting",
       "Executions of PAUSE cause VM exits.",
       linux="CPU_BASED_PAUSE_EXITING", qemu="vmx-pause-exit", exits=(Exit.PAUSE,)),
    _c("primary", 31, "activate_secondary_controls", "Activate secondary controls",
       "The secondary processor-based VM-execution controls are used (otherwise treated as all 0).",
       linux="CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", qemu="vmx-secondary-ctls",
       aliases=("secondary_controls", "sec_controls")),

    # ---- secondary processor-based (0x401E) ---------------------------------
    _c("secondary", 0, "virtualize_apic_accesses", "Virtualize APIC accesses",
       "Accesses to the APIC-access page are virtualized or cause APIC-access VM exits.",
       linux="SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", qemu="vmx-apicv-xapic",
       aliases=("vapic",), exits=(Exit.APIC_ACCESS,), cpuinfo="vapic"),
    _c("secondary", 1, "enable_ept", "Enable EPT",
       "Guest-physical addresses are translated through extended page tables.",
       linux="SECONDARY_EXEC_ENABLE_EPT", qemu="vmx-ept", aliases=("ept",), exits=(Exit.EPT_VIOLATION, Exit.EPT_MISCONFIG), cpuinfo="ept"),
    _c("secondary", 2, "descriptor_table_exiting", "Descriptor-table exiting",
       "LGDT, LIDT, LLDT, LTR, SGDT, SIDT, SLDT and STR cause VM exits.",
       linux="SECONDARY_EXEC_DESC", qemu="vmx-desc-exit", aliases=("desc_exiting",),
       exits=(Exit.GDTR_IDTR_ACCESS, Exit.LDTR_TR_ACCESS)),
    _c("secondary", 3, "enable_rdtscp", "Enable RDTSCP",
       "RDTSCP is available to the guest (otherwise it raises #UD).",
       linux="SECONDARY_EXEC_ENABLE_RDTSCP", qemu="vmx-rdtscp-exit", aliases=("rdtscp",),
       exits=(Exit.RDTSCP,)),
    _c("secondary", 4, "virtualize_x2apic_mode", "Virtualize x2APIC mode",
       "RDMSR/WRMSR to x2APIC MSRs are virtualized through the virtual-APIC page.",
       linux="SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", qemu="vmx-apicv-x2apic"),
    _c("secondary", 5, "enable_vpid", "Enable VPID",
       "Cached linear translations are tagged with a virtual-processor identifier.",
       linux="SECONDARY_EXEC_ENABLE_VPID", qemu="vmx-vpid", aliases=("vpid",), cpuinfo="vpid"),
    _c("secondary", 6, "wbinvd_exiting", "WBINVD exiting",
       "Executions of WBINVD and WBNOINVD cause VM exits.",
       linux="SECONDARY_EXEC_WBINVD_EXITING", qemu="vmx-wbinvd-exit", exits=(Exit.WBINVD,)),
    _c("secondary", 7, "unrestricted_guest", "Unrestricted guest",
       "The guest may run in unpaged protected mode or real-address mode (requires EPT).",
       linux="SECONDARY_EXEC_UNRESTRICTED_GUEST", qemu="vmx-unrestricted-guest", cpuinfo="unrestricted_guest"),
    _c("secondary", 8, "apic_register_virtualization", "APIC-register virtualization",
       "Reads of most APIC registers are satisfied from the virtual-APIC page.",
       linux="SECONDARY_EXEC_APIC_REGISTER_VIRT", qemu="vmx-apicv-register",
       aliases=("vapic_reg",), exits=(Exit.APIC_WRITE,), cpuinfo="vapic_reg"),
    _c("secondary", 9, "virtual_interrupt_delivery", "Virtual-interrupt delivery",
       "Pending virtual interrupts are evaluated and delivered without VM exits.",
       linux="SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", qemu="vmx-apicv-vid", aliases=("vid",),
       exits=(Exit.EOI_INDUCED,), cpuinfo="vid"),
    _c("secondary", 10, "pause_loop_exiting", "PAUSE-loop exiting",
       "A PAUSE loop at CPL 0 longer than PLE_Window (PAUSEs at most PLE_Gap apart) causes a VM exit.",
       linux="SECONDARY_EXEC_PAUSE_LOOP_EXITING", qemu="vmx-ple", aliases=("ple",),
       exits=(Exit.PAUSE,), cpuinfo="ple"),
    _c("secondary", 11, "rdrand_exiting", "RDRAND exiting",
       "Executions of RDRAND cause VM exits.",
       linux="SECONDARY_EXEC_RDRAND_EXITING", qemu="vmx-rdrand-exit", exits=(Exit.RDRAND,)),
    _c("secondary", 12, "enable_invpcid", "Enable INVPCID",
       "INVPCID is available to the guest (exits with INVLPG exiting); otherwise #UD.",
       linux="SECONDARY_EXEC_ENABLE_INVPCID", qemu="vmx-invpcid-exit", aliases=("invpcid",),
       exits=(Exit.INVPCID,)),
    _c("secondary", 13, "enable_vm_functions", "Enable VM functions",
       "VMFUNC is available to the guest; functions are selected by the VM-function controls.",
       linux="SECONDARY_EXEC_ENABLE_VMFUNC", qemu="vmx-vmfunc", aliases=("vmfunc",),
       exits=(Exit.VMFUNC,)),
    _c("secondary", 14, "vmcs_shadowing", "VMCS shadowing",
       "VMREAD/VMWRITE in the guest may access a shadow VMCS without VM exits.",
       linux="SECONDARY_EXEC_SHADOW_VMCS", qemu="vmx-shadow-vmcs", aliases=("shadow_vmcs",),
       exits=(Exit.VMREAD, Exit.VMWRITE), cpuinfo="shadow_vmcs"),
    _c("secondary", 15, "enable_encls_exiting", "Enable ENCLS exiting",
       "ENCLS leaves selected by the ENCLS-exiting bitmap cause VM exits.",
       linux="SECONDARY_EXEC_ENCLS_EXITING", qemu="vmx-encls-exit", exits=(Exit.ENCLS,)),
    _c("secondary", 16, "rdseed_exiting", "RDSEED exiting",
       "Executions of RDSEED cause VM exits.",
       linux="SECONDARY_EXEC_RDSEED_EXITING", qemu="vmx-rdseed-exit", exits=(Exit.RDSEED,)),
    _c("secondary", 17, "enable_pml", "Enable PML",
       "EPT dirty-bit updates are logged in the page-modification log (requires EPT).",
       linux="SECONDARY_EXEC_ENABLE_PML", qemu="vmx-pml", aliases=("pml",), exits=(Exit.PML_FULL,), cpuinfo="pml"),
    _c("secondary", 18, "ept_violation_ve", "EPT-violation #VE",
       "Some EPT violations are delivered to the guest as virtualization exceptions (#VE).",
       linux="SECONDARY_EXEC_EPT_VIOLATION_VE", cpuinfo="ept_violation_ve"),
    _c("secondary", 19, "conceal_vmx_from_pt", "Conceal VMX from PT",
       "Intel PT suppresses packets that would reveal non-root operation.",
       linux="SECONDARY_EXEC_PT_CONCEAL_VMX"),
    _c("secondary", 20, "enable_xsaves_xrstors", "Enable XSAVES/XRSTORS",
       "XSAVES/XRSTORS are available to the guest, exiting per the XSS-exiting bitmap.",
       linux="SECONDARY_EXEC_ENABLE_XSAVES", qemu="vmx-xsaves", aliases=("xsaves",),
       exits=(Exit.XSAVES, Exit.XRSTORS)),
    _c("secondary", 22, "mode_based_execute_control_for_ept", "Mode-based execute control for EPT",
       "EPT execute permission is split into supervisor and user execute (requires EPT).",
       linux="SECONDARY_EXEC_MODE_BASED_EPT_EXEC", qemu="vmx-mbec", aliases=("mbec", "ept_mode_based_exec"), cpuinfo="ept_mode_based_exec"),
    _c("secondary", 23, "sub_page_write_permissions_for_ept", "Sub-page write permissions for EPT",
       "EPT write permission at 128-byte granularity through the SPP table (requires EPT).",
       aliases=("spp",), exits=(Exit.SPP_EVENT,)),
    _c("secondary", 24, "pt_uses_guest_physical_addresses", "Intel PT uses guest physical addresses",
       "Intel PT output addresses are guest-physical and translated through EPT.",
       linux="SECONDARY_EXEC_PT_USE_GPA"),
    _c("secondary", 25, "use_tsc_scaling", "Use TSC scaling",
       "RDTSC/RDTSCP results are multiplied by the TSC multiplier (48 fraction bits) before offsetting.",
       linux="SECONDARY_EXEC_TSC_SCALING", qemu="vmx-tsc-scaling", aliases=("tsc_scaling",), cpuinfo="tsc_scaling"),
    _c("secondary", 26, "enable_user_wait_and_pause", "Enable user wait and pause",
       "UMONITOR/UMWAIT/TPAUSE are available to the guest (otherwise #UD).",
       linux="SECONDARY_EXEC_ENABLE_USR_WAIT_PAUSE", qemu="vmx-enable-user-wait-pause",
       aliases=("usr_wait_pause",),
       exits=(Exit.UMWAIT, Exit.TPAUSE), cpuinfo="usr_wait_pause"),
    _c("secondary", 27, "enable_pconfig", "Enable PCONFIG",
       "PCONFIG is available to the guest.", exits=(Exit.PCONFIG,)),
    _c("secondary", 28, "enable_enclv_exiting", "Enable ENCLV exiting",
       "ENCLV leaves selected by the ENCLV-exiting bitmap cause VM exits.",
       linux="VMX_FEATURE_ENCLV_EXITING", exits=(Exit.ENCLV,)),
    _c("secondary", 30, "vmm_bus_lock_detection", "VMM bus-lock detection",
       "A bus lock acquired by the guest causes a trap-like VM exit.",
       linux="SECONDARY_EXEC_BUS_LOCK_DETECTION", aliases=("bus_lock_detection",),
       exits=(Exit.BUS_LOCK,)),
    _c("secondary", 31, "instruction_timeout", "Instruction timeout",
       "A VM exit occurs if the guest makes no progress within the notify window.",
       linux="SECONDARY_EXEC_NOTIFY_VM_EXITING", aliases=("notify_vm_exiting",), exits=(Exit.NOTIFY,), cpuinfo="notify_vm_exiting"),

    # ---- tertiary processor-based (0x2034, 64-bit) ---------------------------
    _c("tertiary", 0, "loadiwkey_exiting", "LOADIWKEY exiting",
       "Executions of LOADIWKEY (Key Locker) cause VM exits.", exits=(Exit.LOADIWKEY,)),
    _c("tertiary", 1, "enable_hlat", "Enable HLAT",
       "Hypervisor-managed linear-address translation is used for guest linear addresses."),
    _c("tertiary", 2, "ept_paging_write_control", "EPT paging-write control",
       "EPT entries may allow paging writes to otherwise read-only guest paging structures."),
    _c("tertiary", 3, "guest_paging_verification", "Guest-paging verification",
       "EPT verifies that guest paging structures are marked as such."),
    _c("tertiary", 4, "ipi_virtualization", "IPI virtualization",
       "Guest IPIs are delivered by the processor through the PID-pointer table without VM exits.",
       linux="TERTIARY_EXEC_IPI_VIRT", aliases=("ipi_virt",), cpuinfo="ipi_virt"),
    _c("tertiary", 6, "enable_msr_list_instructions", "Enable MSRLIST instructions",
       "RDMSRLIST/WRMSRLIST are available to the guest, exiting per the MSR bitmap.",
       exits=(Exit.RDMSRLIST, Exit.WRMSRLIST)),
    _c("tertiary", 7, "virtualize_ia32_spec_ctrl", "Virtualize IA32_SPEC_CTRL",
       "Guest writes of IA32_SPEC_CTRL are masked and shadowed.",
       linux="VMX_FEATURE_SPEC_CTRL_VIRT"),

    # ---- primary VM-exit controls (0x400C) ----------------------------------
    _c("exit", 2, "save_debug_controls", "Save debug controls",
       "DR7 and IA32_DEBUGCTL are saved into the guest-state area on VM exit.",
       linux="VM_EXIT_SAVE_DEBUG_CONTROLS", qemu="vmx-exit-nosave-debugctl", inv=True, d1=True),
    _c("exit", 9, "host_address_space_size", "Host address-space size",
       "The host runs in 64-bit mode after VM exit (must match the host's IA32_EFER.LMA).",
       linux="VM_EXIT_HOST_ADDR_SPACE_SIZE"),
    _c("exit", 12, "load_ia32_perf_global_ctrl", "Load IA32_PERF_GLOBAL_CTRL",
       "IA32_PERF_GLOBAL_CTRL is loaded from the host-state area on VM exit.",
       linux="VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL", qemu="vmx-exit-load-perf-global-ctrl"),
    _c("exit", 15, "acknowledge_interrupt_on_exit", "Acknowledge interrupt on exit",
       "On an external-interrupt exit the interrupt is acknowledged and its vector stored in the exit information.",
       linux="VM_EXIT_ACK_INTR_ON_EXIT", qemu="vmx-exit-ack-intr", aliases=("ack_intr_on_exit",)),
    _c("exit", 18, "save_ia32_pat", "Save IA32_PAT",
       "The guest's IA32_PAT is saved on VM exit.",
       linux="VM_EXIT_SAVE_IA32_PAT", qemu="vmx-exit-save-pat"),
    _c("exit", 19, "load_ia32_pat", "Load IA32_PAT",
       "The host's IA32_PAT is loaded on VM exit.",
       linux="VM_EXIT_LOAD_IA32_PAT", qemu="vmx-exit-load-pat"),
    _c("exit", 20, "save_ia32_efer", "Save IA32_EFER",
       "The guest's IA32_EFER is saved on VM exit.",
       linux="VM_EXIT_SAVE_IA32_EFER", qemu="vmx-exit-save-efer"),
    _c("exit", 21, "load_ia32_efer", "Load IA32_EFER",
       "The host's IA32_EFER is loaded on VM exit.",
       linux="VM_EXIT_LOAD_IA32_EFER", qemu="vmx-exit-load-efer"),
    _c("exit", 22, "save_vmx_preemption_timer_value", "Save VMX-preemption timer value",
       "The current preemption-timer value is saved on every VM exit.",
       linux="VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", qemu="vmx-exit-save-preemption-timer"),
    _c("exit", 23, "clear_ia32_bndcfgs", "Clear IA32_BNDCFGS",
       "IA32_BNDCFGS is cleared on VM exit.",
       linux="VM_EXIT_CLEAR_BNDCFGS", qemu="vmx-exit-clear-bndcfgs"),
    _c("exit", 24, "conceal_vmx_from_pt", "Conceal VMX from PT",
       "Intel PT does not report VM exits.", linux="VM_EXIT_PT_CONCEAL_PIP"),
    _c("exit", 25, "clear_ia32_rtit_ctl", "Clear IA32_RTIT_CTL",
       "IA32_RTIT_CTL is cleared on VM exit.",
       linux="VM_EXIT_CLEAR_IA32_RTIT_CTL", qemu="vmx-exit-clear-rtit-ctl"),
    _c("exit", 26, "clear_ia32_lbr_ctl", "Clear IA32_LBR_CTL",
       "IA32_LBR_CTL is cleared on VM exit."),
    _c("exit", 27, "clear_uinv", "Clear UINV",
       "The user-interrupt notification vector is cleared on VM exit."),
    _c("exit", 28, "load_cet_state", "Load CET state",
       "Host CET state (S_CET, SSP, interrupt SSP table) is loaded on VM exit.",
       linux="VM_EXIT_LOAD_CET_STATE"),
    _c("exit", 29, "load_pkrs", "Load PKRS",
       "The host's IA32_PKRS is loaded on VM exit.", qemu="vmx-exit-load-pkrs"),
    _c("exit", 30, "save_ia32_perf_global_ctl", "Save IA32_PERF_GLOBAL_CTL",
       "The guest's IA32_PERF_GLOBAL_CTL is saved on VM exit."),
    _c("exit", 31, "activate_secondary_controls", "Activate secondary VM-exit controls",
       "The secondary VM-exit controls (64-bit field 0x2044) are used.",
       linux="VM_EXIT_ACTIVATE_SECONDARY_CONTROLS", qemu="vmx-exit-secondary-ctls"),

    # ---- VM-entry controls (0x4012) ------------------------------------------
    _c("entry", 2, "load_debug_controls", "Load debug controls",
       "DR7 and IA32_DEBUGCTL are loaded from the guest-state area on VM entry.",
       linux="VM_ENTRY_LOAD_DEBUG_CONTROLS", qemu="vmx-entry-noload-debugctl", inv=True, d1=True),
    _c("entry", 9, "ia32e_mode_guest", "IA-32e mode guest",
       "The guest runs in IA-32e (long) mode after VM entry.",
       linux="VM_ENTRY_IA32E_MODE", qemu="vmx-entry-ia32e-mode"),
    _c("entry", 10, "entry_to_smm", "Entry to SMM",
       "VM entry puts the processor in SMM (dual-monitor treatment only).",
       linux="VM_ENTRY_SMM"),
    _c("entry", 11, "deactivate_dual_monitor_treatment", "Deactivate dual-monitor treatment",
       "The dual-monitor treatment of SMIs and SMM is deactivated by this VM entry.",
       linux="VM_ENTRY_DEACT_DUAL_MONITOR"),
    _c("entry", 13, "load_ia32_perf_global_ctrl", "Load IA32_PERF_GLOBAL_CTRL",
       "The guest's IA32_PERF_GLOBAL_CTRL is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL", qemu="vmx-entry-load-perf-global-ctrl"),
    _c("entry", 14, "load_ia32_pat", "Load IA32_PAT",
       "The guest's IA32_PAT is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_IA32_PAT", qemu="vmx-entry-load-pat"),
    _c("entry", 15, "load_ia32_efer", "Load IA32_EFER",
       "The guest's IA32_EFER is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_IA32_EFER", qemu="vmx-entry-load-efer"),
    _c("entry", 16, "load_ia32_bndcfgs", "Load IA32_BNDCFGS",
       "The guest's IA32_BNDCFGS is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_BNDCFGS", qemu="vmx-entry-load-bndcfgs"),
    _c("entry", 17, "conceal_vmx_from_pt", "Conceal VMX from PT",
       "Intel PT does not report VM entries.", linux="VM_ENTRY_PT_CONCEAL_PIP"),
    _c("entry", 18, "load_ia32_rtit_ctl", "Load IA32_RTIT_CTL",
       "The guest's IA32_RTIT_CTL is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_IA32_RTIT_CTL", qemu="vmx-entry-load-rtit-ctl"),
    _c("entry", 19, "load_uinv", "Load UINV",
       "The guest's user-interrupt notification vector is loaded on VM entry."),
    _c("entry", 20, "load_cet_state", "Load CET state",
       "Guest CET state is loaded on VM entry.",
       linux="VM_ENTRY_LOAD_CET_STATE", qemu="vmx-entry-load-cet"),
    _c("entry", 21, "load_ia32_lbr_ctl", "Load IA32_LBR_CTL",
       "The guest's IA32_LBR_CTL is loaded on VM entry."),
    _c("entry", 22, "load_pkrs", "Load PKRS",
       "The guest's IA32_PKRS is loaded on VM entry.", qemu="vmx-entry-load-pkrs"),
    _c("entry", 23, "load_fred_state", "Load FRED state",
       "The guest's FRED MSRs are loaded on VM entry.", qemu="vmx-entry-load-fred"),
    _c("entry", 24, "load_ia32_spec_ctrl", "Load IA32_SPEC_CTRL",
       "The guest's IA32_SPEC_CTRL is loaded on VM entry."),
)


# Linux /proc/cpuinfo "vmx flags" that stand for several controls at once
# (arch/x86/include/asm/vmxfeatures.h): the flag is shown when all are allowed-1.
CPUINFO_AGGREGATES: dict[str, tuple[str, ...]] = {
    "flexpriority": ("primary.use_tpr_shadow", "secondary.virtualize_apic_accesses"),
    "apicv": ("primary.use_tpr_shadow", "secondary.apic_register_virtualization",
              "secondary.virtual_interrupt_delivery", "pin.process_posted_interrupts"),
}


# ---- indexes derived from the table -----------------------------------------

CONTROL_BY_PATH: dict[str, Control] = {c.path: c for c in CONTROLS}
CONTROLS_BY_FIELD: dict[str, tuple[Control, ...]] = {
    f.key: tuple(sorted((c for c in CONTROLS if c.field == f.key), key=lambda c: c.bit))
    for f in FIELDS
}
CONTROL_BY_FIELD_KEY: dict[str, dict[str, Control]] = {
    f: {c.key: c for c in cs} for f, cs in CONTROLS_BY_FIELD.items()
}
CONTROL_BY_FIELD_BIT: dict[str, dict[int, Control]] = {
    f: {c.bit: c for c in cs} for f, cs in CONTROLS_BY_FIELD.items()
}
NAMED_MASK: dict[str, int] = {
    f: sum(c.mask for c in cs) for f, cs in CONTROLS_BY_FIELD.items()
}


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _alias_index() -> dict[str, list[tuple[Control, bool]]]:
    """alias (normalised) -> [(control, inverted)]; an alias may be ambiguous."""
    idx: dict[str, list[tuple[Control, bool]]] = {}

    def add(name: str, c: Control, inv: bool = False) -> None:
        if name:
            lst = idx.setdefault(_norm(name), [])
            if (c, inv) not in lst:
                lst.append((c, inv))

    for c in CONTROLS:
        add(c.key, c)
        add(c.path, c)
        add(c.qemu, c, c.qemu_inverted)
        add(c.linux, c)
        for a in c.aliases:
            add(a, c)
    return idx


ALIASES: dict[str, list[tuple[Control, bool]]] = _alias_index()


def resolve_control(name: str, field: str | None = None) -> list[tuple[Control, bool]]:
    """Resolve a canonical key, dotted path or vendor alias.

    Returns [(control, inverted)] -- more than one entry if the name is
    ambiguous across fields and no field narrows it.  `inverted` is True for
    QEMU's "noexit"/"nosave"/"noload" spellings of default1 bits.
    """
    hits = ALIASES.get(_norm(name), [])
    if field is not None:
        hits = [h for h in hits if h[0].field == field]
    return hits


def all_names() -> list[str]:
    """Every accepted spelling (for completion and did-you-mean)."""
    return sorted(ALIASES)
