"""The built-in CPU model database (plus `cvmm`, vmcfg's own emulated VMM).

Two kinds of entries:

* models built from a real capability-MSR dump (Bochs cpudb comments,
  reproduced in shared/reference/real-msr-dumps.txt) -- the MSRs exactly as
  recorded;
* models built from QEMU's named-model VMX feature words (target/i386/cpu.c,
  vmx-facts.md §5.2) with QEMU's own MSR recipe.  BASIC/MISC are what KVM's
  nested VMX reports to an L1 hypervisor under QEMU (VMCS12 revision, 4 KiB
  VMCS, WB, INS/OUTS info, TRUE controls; preemption-timer rate 5, 4 CR3
  targets) because QEMU copies those parts from the host.

Names follow QEMU's model names in lower case and are matched
case-insensitively.
"""

from __future__ import annotations

from functools import lru_cache

from .caps import CapSet, msrs_from_features, pack_bits


def _dump(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for line in text.strip().splitlines():
        idx, val = line.split()
        hi, lo = val.split(":")
        out[int(idx, 16)] = (int(hi, 16) << 32) | int(lo, 16)
    return out


# ---- recorded dumps -----------------------------------------------------------
DUMP_PENRYN = _dump("""
480 005A0800:0000000D
481 0000003F:00000016
482 F7F9FFFE:0401E172
483 0003FFFF:00036DFF
484 00003FFF:000011FF
485 00000000:000403C0
486 00000000:80000021
487 00000000:FFFFFFFF
488 00000000:00002000
489 00000000:000467FF
48A 00000000:0000002C
48B 00000041:00000000
""")

DUMP_ARRANDALE = _dump("""
480 00DA0400:0000000F
481 0000007F:00000016
482 FFF9FFFE:04006172
483 007FFFFF:00036DFB
484 0000FFFF:000011FF
485 00000000:000401E5
486 00000000:80000021
487 00000000:FFFFFFFF
488 00000000:00002000
489 00000000:000067FF
48A 00000000:0000002A
48B 000000FF:00000000
48C 00000F01:06114141
48D 0000007F:00000016
48E FFF9FFFE:04006172
48F 007FFFFF:00036DFB
490 0000FFFF:000011FB
""")

_SNB_IVB = """
480 00DA0400:00000010
481 0000007F:00000016
482 FFF9FFFE:0401E172
483 007FFFFF:00036DFF
484 0000FFFF:000011FF
485 00000000:100401E5
486 00000000:80000021
487 00000000:FFFFFFFF
488 00000000:00002000
48A 00000000:0000002A
48B 000000FF:00000000
48C 00000F01:06114141
48D 0000007F:00000016
48E FFF9FFFE:04006172
48F 007FFFFF:00036DFB
490 0000FFFF:000011FB
"""
DUMP_SANDYBRIDGE = {**_dump(_SNB_IVB), 0x489: 0x000627FF}
DUMP_IVYBRIDGE = {**_dump(_SNB_IVB), 0x489: 0x001727FF}

DUMP_BROADWELL = _dump("""
480 00DA0400:00000012
481 0000007F:00000016
482 FFF9FFFE:0401E172
483 007FFFFF:00036DFF
484 0000FFFF:000011FF
485 00000000:300481E5
486 00000000:80000021
487 00000000:FFFFFFFF
488 00000000:00002000
489 00000000:003767FF
48A 00000000:0000002A
48B 00057CFF:00000000
48C 00000F01:06334141
48D 0000007F:00000016
48E FFF9FFFE:04006172
48F 007FFFFF:00036DFB
490 0000FFFF:000011FB
""")

DUMP_SKYLAKE_X = _dump("""
480 00DA0400:00000004
481 000000FF:00000016
482 FFF9FFFE:0401E172
483 01FFFFFF:00036DFF
484 0003FFFF:000011FF
485 00000000:7004C1E7
486 00000000:80000021
487 00000000:FFFFFFFF
488 00000000:00002000
489 00000000:003727FF
48A 00000000:0000002E
48B 025D3FFF:00000000
48C 00000F01:06734141
48D 000000FF:00000016
48E FFF9FFFE:04006172
48F 01FFFFFF:00036DFB
490 0003FFFF:000011FB
""")

# ---- QEMU feature words ---------------------------------------------------------
STD_PROC = ["interrupt_window_exiting", "use_tsc_offsetting", "hlt_exiting", "invlpg_exiting",
            "mwait_exiting", "rdpmc_exiting", "rdtsc_exiting", "cr3_load_exiting",
            "cr3_store_exiting", "cr8_load_exiting", "cr8_store_exiting", "use_tpr_shadow",
            "nmi_window_exiting", "mov_dr_exiting", "unconditional_io_exiting", "use_io_bitmaps",
            "monitor_trap_flag", "use_msr_bitmaps", "monitor_exiting", "pause_exiting",
            "activate_secondary_controls"]
STD_EXIT = ["acknowledge_interrupt_on_exit", "save_debug_controls", "load_ia32_perf_global_ctrl",
            "load_ia32_pat", "load_ia32_efer", "save_ia32_pat", "save_ia32_efer",
            "save_vmx_preemption_timer_value", "host_address_space_size"]
STD_ENTRY = ["ia32e_mode_guest", "load_ia32_perf_global_ctrl", "load_ia32_pat",
             "load_debug_controls", "load_ia32_efer"]
STD_EPT = dict(execute_only=1, walk_length_4=1, memtype_uc=1, memtype_wb=1, pages_2m=1,
               pages_1g=1, invept=1, invept_single=1, invept_all=1, invvpid=1,
               invvpid_address=1, invvpid_single=1, invvpid_all=1, invvpid_single_globals=1)
PIN4 = ["external_interrupt_exiting", "nmi_exiting", "virtual_nmis",
        "activate_vmx_preemption_timer"]
SEC_NEHALEM = ["virtualize_apic_accesses", "wbinvd_exiting", "enable_ept",
               "descriptor_table_exiting", "enable_rdtscp", "virtualize_x2apic_mode", "enable_vpid"]
SEC_WESTMERE = SEC_NEHALEM + ["unrestricted_guest"]
SEC_IVB = SEC_WESTMERE + ["apic_register_virtualization", "virtual_interrupt_delivery",
                          "rdrand_exiting"]
SEC_HSW = SEC_IVB + ["enable_invpcid", "enable_vm_functions", "vmcs_shadowing"]
SEC_SKX = SEC_HSW + ["rdseed_exiting", "enable_pml"]
SEC_SPR = SEC_SKX + ["enable_xsaves_xrstors"]

KVM_BASIC = pack_bits(0x480, revision=0x11E57ED0, vmcs_size=4096, vmcs_memory_type=6,
                      ins_outs_info=1, true_ctls=1)


def _kvm_misc(*, store_lma: bool = True, vmwrite_any: bool = False) -> int:
    return pack_bits(0x485, preemption_timer_rate=5, store_lma=int(store_lma), activity_hlt=1,
                     cr3_targets=4, vmwrite_any=int(vmwrite_any))


def _qemu(pin: list[str], sec: list[str], *, misc: int, ept: dict, vmfunc: int = 0,
          cr4_fixed1: int) -> dict[int, int]:
    return msrs_from_features(
        {"pin": pin, "primary": STD_PROC, "secondary": sec, "exit": STD_EXIT, "entry": STD_ENTRY},
        basic=KVM_BASIC, misc=misc, ept_vpid=pack_bits(0x48C, **ept), vmfunc=vmfunc,
        cr4_fixed1=cr4_fixed1)


def _spr(**ept: int) -> dict[int, int]:
    """The VMX set QEMU gives SapphireRapids and its successors."""
    return _qemu(PIN4 + ["process_posted_interrupts"], SEC_SPR, misc=_kvm_misc(vmwrite_any=True),
                 ept={**STD_EPT, "accessed_dirty": 1, **ept}, vmfunc=1, cr4_fixed1=0x1F7FFFF)


# cvmm: what vmcfg's emulated VMM implements (see README "The cvmm capability set").
CVMM_FEATURES = {
    "pin": PIN4 + ["process_posted_interrupts"],
    "primary": ["interrupt_window_exiting", "use_tsc_offsetting", "hlt_exiting",
                "invlpg_exiting", "mwait_exiting", "rdpmc_exiting", "rdtsc_exiting",
                "cr3_load_exiting", "cr3_store_exiting", "cr8_load_exiting",
                "cr8_store_exiting", "use_tpr_shadow", "nmi_window_exiting", "mov_dr_exiting",
                "unconditional_io_exiting", "use_io_bitmaps", "monitor_trap_flag",
                "use_msr_bitmaps", "monitor_exiting", "pause_exiting",
                "activate_secondary_controls"],
    "secondary": ["virtualize_apic_accesses", "enable_ept", "descriptor_table_exiting",
                  "enable_rdtscp", "virtualize_x2apic_mode", "enable_vpid",
                  "apic_register_virtualization", "virtual_interrupt_delivery",
                  "wbinvd_exiting", "unrestricted_guest", "pause_loop_exiting",
                  "rdrand_exiting", "enable_invpcid", "rdseed_exiting", "use_tsc_scaling"],
    "exit": ["save_debug_controls", "host_address_space_size", "acknowledge_interrupt_on_exit",
             "save_ia32_pat", "load_ia32_pat", "save_ia32_efer", "load_ia32_efer",
             "save_vmx_preemption_timer_value"],
    "entry": ["load_debug_controls", "ia32e_mode_guest", "load_ia32_pat", "load_ia32_efer"],
}


def _cvmm_msrs() -> dict[int, int]:
    return msrs_from_features(
        CVMM_FEATURES,
        basic=pack_bits(0x480, revision=0x766D6366, vmcs_size=4096, vmcs_memory_type=6,
                        ins_outs_info=1, true_ctls=1),
        misc=pack_bits(0x485, preemption_timer_rate=5, store_lma=1, activity_hlt=1,
                       cr3_targets=4, zero_len_inject=1),
        ept_vpid=pack_bits(0x48C, execute_only=1, walk_length_4=1, memtype_uc=1, memtype_wb=1,
                           invept=1, invept_single=1, invept_all=1, invvpid=1,
                           invvpid_address=1, invvpid_single=1, invvpid_all=1,
                           invvpid_single_globals=1),
        cr4_fixed1=0x3727FF)


# name -> (title, year, maxphyaddr, source, msr builder)
_MODELS: dict[str, tuple] = {
    "penryn": ("Intel Core 2 Penryn (T9600)", 2008, 36,
               "real MSR dump: Bochs cpudb core2_penryn_t9600.cc", lambda: DUMP_PENRYN),
    "nehalem": ("Intel Core i7 Nehalem", 2008, 36,
                "QEMU Nehalem VMX feature words (target/i386/cpu.c)",
                lambda: _qemu(PIN4, SEC_NEHALEM, misc=_kvm_misc(store_lma=False),
                              ept=STD_EPT, cr4_fixed1=0x67FF)),
    "westmere": ("Intel Core i5 Westmere (Arrandale M520)", 2010, 36,
                 "real MSR dump: Bochs cpudb corei5_arrandale_m520.cc (legacy PROCBASED MSR as recorded)",
                 lambda: DUMP_ARRANDALE),
    "sandybridge": ("Intel Core i7 Sandy Bridge (2600K)", 2011, 36,
                    "real MSR dump: Bochs cpudb corei7_sandy_bridge_2600K.cc",
                    lambda: DUMP_SANDYBRIDGE),
    "ivybridge": ("Intel Core i7 Ivy Bridge (3770K)", 2012, 36,
                  "real MSR dump: Bochs cpudb corei7_ivy_bridge_3770K.cc",
                  lambda: DUMP_IVYBRIDGE),
    "haswell": ("Intel Core Haswell", 2013, 39,
                "QEMU Haswell VMX feature words (IvyBridge + EPT A/D, INVPCID, VMFUNC, VMCS shadowing)",
                lambda: _qemu(PIN4 + ["process_posted_interrupts"], SEC_HSW,
                              misc=_kvm_misc(vmwrite_any=True),
                              ept={**STD_EPT, "accessed_dirty": 1}, vmfunc=1,
                              cr4_fixed1=0x1767FF)),
    "broadwell": ("Intel Core Broadwell (ULT)", 2014, 39,
                  "real MSR dump: Bochs cpudb broadwell_ult.cc", lambda: DUMP_BROADWELL),
    "skylake-client": ("Intel Core Skylake (client)", 2015, 39,
                       "QEMU Skylake-Client VMX feature words",
                       lambda: _qemu(PIN4, [s for s in SEC_SKX if s not in (
                           "virtualize_x2apic_mode", "apic_register_virtualization",
                           "virtual_interrupt_delivery")],
                           misc=_kvm_misc(vmwrite_any=True),
                           ept={**STD_EPT, "accessed_dirty": 1}, vmfunc=1,
                           cr4_fixed1=0x3767FF)),
    "skylake-server": ("Intel Xeon Skylake-SP (Skylake-X)", 2017, 46,
                       "real MSR dump: Bochs cpudb corei7_skylake-x.cc", lambda: DUMP_SKYLAKE_X),
    "cascadelake-server": ("Intel Xeon Cascade Lake-SP", 2019, 46,
                           "QEMU Cascadelake-Server VMX feature words (as Skylake-Server)",
                           lambda: _qemu(PIN4 + ["process_posted_interrupts"], SEC_SKX,
                                         misc=_kvm_misc(vmwrite_any=True),
                                         ept={**STD_EPT, "accessed_dirty": 1},
                                         cr4_fixed1=0x3727FF)),
    "icelake-server": ("Intel Xeon Ice Lake-SP", 2021, 52,
                       "QEMU Icelake-Server-v6 VMX feature words (v4 rdseed-exit, pml, eptp-switching; v5 xsaves; v6 page-walk-5)",
                       lambda: _qemu(PIN4 + ["process_posted_interrupts"], SEC_SPR,
                                     misc=_kvm_misc(vmwrite_any=True),
                                     ept={**STD_EPT, "accessed_dirty": 1, "walk_length_5": 1},
                                     vmfunc=1, cr4_fixed1=0x77FFFF)),
    "sapphirerapids": ("Intel Xeon Sapphire Rapids", 2023, 52,
                       "QEMU SapphireRapids VMX feature words (2022 model patch)",
                       lambda: _spr(walk_length_5=1)),
    "graniterapids": ("Intel Xeon Granite Rapids", 2024, 52,
                      "QEMU GraniteRapids VMX feature words (same VMX set as SapphireRapids)",
                      lambda: _spr(walk_length_5=1)),
    "sierraforest": ("Intel Xeon Sierra Forest", 2024, 46,
                     "QEMU SierraForest VMX feature words (SapphireRapids set without 5-level EPT)",
                     lambda: _spr()),
    "cvmm": ("vmcfg's emulated cooperative VMM", None, 39,
             "vmcfg: exactly what the emulated VMM implements", _cvmm_msrs),
}

MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
DEFAULT_CPU = "cvmm"


class UnknownModel(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        from difflib import get_close_matches
        hint = get_close_matches(self.name.lower(), MODEL_NAMES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown CPU model {self.name!r}{extra}; known: {', '.join(MODEL_NAMES)}"


@lru_cache(maxsize=None)
def get_model(name: str) -> CapSet:
    key = name.strip().lower()
    if key not in _MODELS:
        raise UnknownModel(name)
    title, year, maxphy, source, build = _MODELS[key]
    return CapSet(name=key, msrs=dict(build()), title=title, source=source, year=year,
                  maxphyaddr=maxphy)


def all_models() -> list[CapSet]:
    return [get_model(n) for n in MODEL_NAMES]
