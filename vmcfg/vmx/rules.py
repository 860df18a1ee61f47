"""The VM-entry checks on VMX controls, as data.

Each rule has a stable id (the ids of vmx-facts.md §3: E1-E33, X1-X6, N1-N9;
W* for warnings; H*/G* for the launch-time host/guest-state checks), a title,
the SDM section it comes from, where it is implemented by the reference
emulators (K = KVM nested.c, B = Bochs vmx.cc) and a short check.  Most rules
are one of two shapes -- "A requires B" and "A excludes B" -- and are written
as such, so that `vmcfg new --want` can compute dependency closures from the
same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .caps import CapSet
from .config import MSR_HIGH_BASE, MSR_HIGH_END, MSR_LOW_END, VmxConfig
from .msrs import MSR_INDEX
from .exits import ERROR_CODE_VECTORS, LAST_EXCEPTION_VECTOR, LAST_VECTOR, Vector
from .exits import InterruptionType as IT
from .settings import SETTINGS
from .table import CONTROL_BY_FIELD_BIT, FIELD_BY_KEY

SDM_CTRL = "SDM 27.2.1.1 (VM-execution control fields)"
SDM_EXIT = "SDM 27.2.1.2 (VM-exit control fields)"
SDM_ENTRY = "SDM 27.2.1.3 (VM-entry control fields)"
SDM_ADDRESS_SPACE = "SDM 27.2.4 (checks related to address-space size)"
SDM_GUEST = "SDM 27.3.1 (guest state)"


@dataclass
class Violation:
    rule: str
    title: str
    fields: list[str]
    message: str
    fix: str
    severity: str = "error"

    def to_json(self) -> dict:
        return {"rule": self.rule, "title": self.title, "fields": list(self.fields),
                "message": self.message, "fix": self.fix}


class Ctx:
    """What a rule sees: the effective config, the capability set, and which
    control bits the profile set explicitly (for better messages)."""

    __slots__ = ("cfg", "caps", "explicit", "controls", "settings", "mode", "on")

    def __init__(self, cfg: VmxConfig, caps: CapSet, explicit: dict[str, bool] | None = None,
                 mode: int | None = None):
        self.cfg = cfg
        self.on = cfg.on
        self.caps = caps
        self.explicit = explicit or {}
        self.controls = cfg.controls
        self.settings = cfg.settings
        self.mode = mode

    def s(self, path: str):
        t, k = path.split(".", 1)
        return self.settings[t][k]

    def addr_ok(self, addr: int, align: int) -> bool:
        return addr % align == 0 and addr >> self.caps.maxphyaddr == 0


Check = Callable[[Ctx], Iterable[Violation]]


@dataclass
class Rule:
    id: str
    title: str
    sdm: str
    source: str                      # "K B", "B", "K", "vmcfg"
    holds: str                       # what must hold, in plain words
    fields: tuple[str, ...]
    check: Check
    severity: str = "error"
    requires: tuple[tuple[tuple[str, ...], str], ...] = ()  # ((any-of when), need)
    excludes: tuple[tuple[str, str], ...] = ()
    note: str = ""                   # where an emulator differs from the SDM
    stage: str = "profile"           # "profile" or "launch"
    alias_of: str | None = None

    def violation(self, message: str, fix: str, fields: Iterable[str] | None = None) -> Violation:
        return Violation(self.id, self.title, list(fields or self.fields), message, fix,
                         self.severity)


RULES: list[Rule] = []


def _add(rule: Rule) -> Rule:
    RULES.append(rule)
    return rule


# ---- rule shapes -------------------------------------------------------------

def requires(rid: str, title: str, when: str | tuple[str, ...], need: str, *, sdm: str = SDM_CTRL,
             source: str = "K B", note: str = "", severity: str = "error") -> Rule:
    whens = (when,) if isinstance(when, str) else when
    rule: Rule

    def check(ctx: Ctx) -> Iterable[Violation]:
        if ctx.on(need):
            return ()
        on = [w for w in whens if ctx.on(w)]
        if not on:
            return ()
        w = " and ".join(on)
        clear = " and ".join(on)
        return (rule.violation(
            f"{w} is set but {need} is not: {w} requires {need}.",
            f"set {need}, or clear {clear}", on + [need]),)

    holds = (f"if {' or '.join(whens)} is 1, {need} must be 1")
    rule = Rule(rid, title, sdm, source, holds, tuple(whens) + (need,), check, severity,
                requires=((tuple(whens), need),), note=note)
    return _add(rule)


def excludes(rid: str, title: str, a: str, b: str, *, sdm: str = SDM_CTRL,
             source: str = "K B") -> Rule:
    rule: Rule

    def check(ctx: Ctx) -> Iterable[Violation]:
        if ctx.on(a) and ctx.on(b):
            return (rule.violation(f"{a} and {b} are both set; they exclude each other.",
                                   f"clear {b}, or clear {a}"),)
        return ()

    rule = Rule(rid, title, sdm, source, f"if {a} is 1, {b} must be 0", (a, b), check,
                excludes=((a, b),))
    return _add(rule)


def value_rule(rid: str, title: str, holds: str, fields: tuple[str, ...], fn: Callable,
               *, sdm: str = SDM_CTRL, source: str = "K B", severity: str = "error",
               note: str = "", stage: str = "profile") -> Rule:
    """fn(ctx, rule) yields violations."""
    rule = Rule(rid, title, sdm, source, holds, fields, lambda ctx: fn(ctx, rule), severity,
                note=note, stage=stage)
    return _add(rule)


# ---- capability checks (E1-E4, X1, N1) ----------------------------------------

def _forced_fix(c_path: str, caps: CapSet) -> str:
    return (f"remove '{c_path.split('.')[1]} = false' from [{c_path.split('.')[0]}] "
            f"({caps.name} forces it to 1)")


def _cap_check(field: str):
    f = FIELD_BY_KEY[field]

    def fn(ctx: Ctx, rule: Rule) -> Iterable[Violation]:
        if f.activated_by and not ctx.on(f.activated_by):
            return ()
        value = ctx.controls.get(field, 0)
        must, may = ctx.caps.allowed(field)
        if (~value & must) == 0 and (value & ~may) == 0:
            return ()
        out = []
        msr = ctx.caps.field_msr(f)
        msr_name = [k for k, v in MSR_INDEX.items() if v == msr][0]
        exists = ctx.caps.field_exists(field)
        bad1 = value & ~may
        bad0 = ~value & must & ((1 << f.width) - 1)
        for bit in range(f.width):
            m = 1 << bit
            c = CONTROL_BY_FIELD_BIT[field].get(bit)
            name = c.path if c else f"{field} bit {bit}"
            fname = c.path if c else f"{field}.bit{bit}"
            if bad1 & m:
                if not exists:
                    why = f"{ctx.caps.name} has no {f.title.lower()} ({msr_name} does not exist)"
                elif c is None:
                    why = f"bit {bit} of {field} is reserved and must be 0 on {ctx.caps.name}"
                else:
                    why = f"{ctx.caps.name} does not support {name} ({msr_name} allowed-1 bit {bit} is 0)"
                fix = (f"clear {name}" if c else f"clear bit {bit} in [raw] {field}")
                out.append(rule.violation(f"{name} is set but {why}.", fix, [fname]))
            elif bad0 & m:
                why = f"{ctx.caps.name} requires it to be 1 ({msr_name} allowed-0 bit {bit} is 1)"
                if c is not None:
                    fix = _forced_fix(c.path, ctx.caps) if ctx.explicit.get(c.path) is False \
                        else f"set {name}"
                else:
                    fix = f"set bit {bit} in [raw] {field} (reserved default1)"
                out.append(rule.violation(f"{name} is 0 but {why}.", fix, [fname]))
        return out

    return fn


for _rid, _fk, _sdm in (("E1", "pin", SDM_CTRL), ("E2", "primary", SDM_CTRL),
                        ("E3", "secondary", SDM_CTRL), ("E4", "tertiary", SDM_CTRL),
                        ("X1", "exit", SDM_EXIT), ("N1", "entry", SDM_ENTRY)):
    _f = FIELD_BY_KEY[_fk]
    _act = f" (only when {_f.activated_by} is 1)" if _f.activated_by else ""
    value_rule(_rid, f"{_f.title}: capability bits",
               f"every bit the capability MSR requires is 1 and no bit it disallows is 1{_act}",
               (_fk,), _cap_check(_fk), sdm=_sdm, source="B" if _fk == "tertiary" else "K B")


# ---- inter-control rules --------------------------------------------------------

def _e5(ctx: Ctx, rule: Rule):
    n, cap = len(ctx.s("cr3.targets")), ctx.caps.misc("cr3_targets")
    if n > cap:
        yield rule.violation(f"{n} CR3-target values given but {ctx.caps.name} supports {cap} "
                             f"(IA32_VMX_MISC[24:16]).", f"keep at most {cap} entries in cr3.targets")


value_rule("E5", "CR3-target count", "CR3_TARGET_COUNT <= IA32_VMX_MISC[24:16]",
           ("cr3.targets",), _e5)


def _addr_rule(rid: str, title: str, when: str | None, addr_keys: tuple[str, ...], align: int,
               source: str = "K B", extra_need: str | None = None):
    def fn(ctx: Ctx, rule: Rule):
        if when and not ctx.on(when):
            return
        for k in addr_keys:
            a = ctx.s(k)
            if a is None:
                continue          # placed by the VMM, always valid
            if not ctx.addr_ok(a, align):
                yield rule.violation(
                    f"{k} = {a:#x} must be {align}-byte aligned and below 2^{ctx.caps.maxphyaddr} "
                    f"(MAXPHYADDR of {ctx.caps.name}).",
                    f"use a {align}-byte aligned address below {1 << ctx.caps.maxphyaddr:#x}, "
                    f"or remove {k} and let the VMM place it", [k] + ([when] if when else []))

    holds = (f"if {when} is 1, " if when else "") + \
        f"{' and '.join(addr_keys)} {align}-byte aligned and within MAXPHYADDR"
    value_rule(rid, title, holds, ((when,) if when else ()) + addr_keys, fn, source=source)


_addr_rule("E6", "I/O-bitmap addresses", "primary.use_io_bitmaps",
           ("vmcs.io_bitmap_a", "vmcs.io_bitmap_b"), 4096)
_addr_rule("E7", "MSR-bitmap address", "primary.use_msr_bitmaps", ("vmcs.msr_bitmap",), 4096)
_addr_rule("E8", "Virtual-APIC page address", "primary.use_tpr_shadow",
           ("vmcs.virtual_apic_page",), 4096)


def _e9(ctx: Ctx, rule: Rule):
    if ctx.on("primary.use_tpr_shadow") and not ctx.on("secondary.virtual_interrupt_delivery"):
        t = ctx.s("apic.tpr_threshold")
        if t >> 4:
            yield rule.violation(f"apic.tpr_threshold = {t:#x} has bits 31:4 set.",
                                 f"use a TPR threshold of 0-15 (e.g. {t & 0xF})")


value_rule("E9", "TPR threshold size",
           "with use_tpr_shadow = 1 and virtual_interrupt_delivery = 0, TPR_THRESHOLD bits 31:4 are 0",
           ("primary.use_tpr_shadow", "apic.tpr_threshold"), _e9, source="B",
           note="KVM leaves this check to hardware")


def _e10(ctx: Ctx, rule: Rule):
    if (ctx.on("primary.use_tpr_shadow") and not ctx.on("secondary.virtual_interrupt_delivery")
            and not ctx.on("secondary.virtualize_apic_accesses")):
        t, v = ctx.s("apic.tpr_threshold") & 0xF, ctx.s("apic.vtpr")
        if t > (v >> 4):
            yield rule.violation(f"TPR threshold {t} is above VTPR[7:4] = {v >> 4}.",
                                 f"lower apic.tpr_threshold to at most {v >> 4}, or raise apic.vtpr to at least {t << 4:#x}")


value_rule("E10", "TPR threshold vs VTPR",
           "with use_tpr_shadow = 1, VID = 0 and virtualize_apic_accesses = 0: TPR_THRESHOLD[3:0] <= VTPR[7:4]",
           ("primary.use_tpr_shadow", "apic.tpr_threshold", "apic.vtpr"), _e10, source="B")
_addr_rule("E11", "APIC-access page address", "secondary.virtualize_apic_accesses",
           ("vmcs.apic_access_page",), 4096)
excludes("E12", "x2APIC vs xAPIC virtualization", "secondary.virtualize_x2apic_mode",
         "secondary.virtualize_apic_accesses")
requires("E13", "Virtual-interrupt delivery needs external-interrupt exiting",
         "secondary.virtual_interrupt_delivery", "pin.external_interrupt_exiting")
requires("E14", "APIC virtualization needs the TPR shadow",
         ("secondary.virtualize_x2apic_mode", "secondary.apic_register_virtualization",
          "secondary.virtual_interrupt_delivery"), "primary.use_tpr_shadow",
         note="KVM also reaches posted interrupts through the VID rule")
requires("E15", "Posted interrupts need virtual-interrupt delivery",
         "pin.process_posted_interrupts", "secondary.virtual_interrupt_delivery")
requires("E16", "Posted interrupts need acknowledge-interrupt-on-exit",
         "pin.process_posted_interrupts", "exit.acknowledge_interrupt_on_exit",
         note="Bochs checks this in the VM-exit control stage (X6)")


def _e17(ctx: Ctx, rule: Rule):
    if ctx.on("pin.process_posted_interrupts"):
        v = ctx.s("posted_interrupts.vector")
        if v > LAST_VECTOR:
            yield rule.violation(f"posted_interrupts.vector = {v:#x} has bits 15:8 set.",
                                 f"use a vector from 0 to {LAST_VECTOR}")


value_rule("E17", "Posted-interrupt notification vector", "POSTED_INTR_NV bits 15:8 are 0",
           ("pin.process_posted_interrupts", "posted_interrupts.vector"), _e17)
_addr_rule("E18", "Posted-interrupt descriptor address", "pin.process_posted_interrupts",
           ("vmcs.posted_intr_desc",), 64)
requires("E19", "Virtual NMIs need NMI exiting", "pin.virtual_nmis", "pin.nmi_exiting")
requires("E20", "NMI-window exiting needs virtual NMIs", "primary.nmi_window_exiting",
         "pin.virtual_nmis")
requires("E21", "PML needs EPT", "secondary.enable_pml", "secondary.enable_ept")
_addr_rule("E21a", "PML address", "secondary.enable_pml", ("vmcs.pml_address",), 4096)
requires("E22", "Unrestricted guest needs EPT", "secondary.unrestricted_guest",
         "secondary.enable_ept")
requires("E23", "Mode-based execute control needs EPT",
         "secondary.mode_based_execute_control_for_ept", "secondary.enable_ept")
requires("E24", "Sub-page write permissions need EPT",
         "secondary.sub_page_write_permissions_for_ept", "secondary.enable_ept", source="B")
_addr_rule("E24a", "SPP table pointer", "secondary.sub_page_write_permissions_for_ept",
           ("vmcs.spptp",), 4096, source="B")
_addr_rule("E25", "VMREAD/VMWRITE bitmap addresses", "secondary.vmcs_shadowing",
           ("vmcs.vmread_bitmap", "vmcs.vmwrite_bitmap"), 4096)
_addr_rule("E26", "Virtualization-exception information address", "secondary.ept_violation_ve",
           ("vmcs.ve_info_address",), 4096, source="B")


def _e27(ctx: Ctx, rule: Rule):
    if ctx.on("secondary.enable_vpid") and ctx.s("vpid.id") == 0:
        yield rule.violation("secondary.enable_vpid is set but vpid.id is 0.",
                             "set vpid.id to a value from 1 to 65535")


value_rule("E27", "VPID must not be 0", "if enable_vpid is 1, VIRTUAL_PROCESSOR_ID != 0",
           ("secondary.enable_vpid", "vpid.id"), _e27)
requires("E28", "Saving the preemption timer needs the timer",
         "exit.save_vmx_preemption_timer_value", "pin.activate_vmx_preemption_timer",
         note="KVM checks this with the execution controls, Bochs with the exit controls (X3)")


def _eptp_parts(ctx: Ctx) -> tuple[int, str]:
    raw = ctx.s("vmcs.eptp")
    return (ctx.cfg.eptp(), "vmcs.eptp") if raw is not None else (ctx.cfg.eptp(), "ept")


def _e29a(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_ept"):
        return
    e, src = _eptp_parts(ctx)
    mt = e & 7
    ok = (mt == 0 and ctx.caps.ept("memtype_uc")) or (mt == 6 and ctx.caps.ept("memtype_wb"))
    if not ok:
        alts = [n for n, k in (("wb", "memtype_wb"), ("uc", "memtype_uc")) if ctx.caps.ept(k)]
        yield rule.violation(
            f"EPTP memory type {mt} is not allowed by {ctx.caps.name} (allowed: "
            f"{', '.join(alts) or 'none: no EPT'}).",
            f"set ept.memory_type = \"{alts[0]}\"" if alts else "clear secondary.enable_ept",
            ["secondary.enable_ept", "ept.memory_type" if src == "ept" else src])


def _e29b(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_ept"):
        return
    e, src = _eptp_parts(ctx)
    wl = ((e >> 3) & 7) + 1
    ok = (wl == 4 and ctx.caps.ept("walk_length_4")) or (wl == 5 and ctx.caps.ept("walk_length_5"))
    if not ok:
        alts = [str(n) for n, k in ((4, "walk_length_4"), (5, "walk_length_5")) if ctx.caps.ept(k)]
        yield rule.violation(
            f"EPT page-walk length {wl} is not supported by {ctx.caps.name} (supported: "
            f"{', '.join(alts) or 'none'}).",
            f"set ept.walk_length = {alts[0]}" if alts else "clear secondary.enable_ept",
            ["secondary.enable_ept", "ept.walk_length" if src == "ept" else src])


def _e29c(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_ept"):
        return
    e, src = _eptp_parts(ctx)
    if e >> 6 & 1 and not ctx.caps.ept("accessed_dirty"):
        yield rule.violation(f"EPT accessed/dirty flags are enabled but {ctx.caps.name} has no "
                             f"EPT A/D support (IA32_VMX_EPT_VPID_CAP[21]).",
                             "set ept.accessed_dirty = false",
                             ["secondary.enable_ept", "ept.accessed_dirty" if src == "ept" else src])


def _e29d(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_ept"):
        return
    e, _ = _eptp_parts(ctx)
    if e & 0xF80:
        yield rule.violation(f"vmcs.eptp = {e:#x} has reserved bits 11:7 set.",
                             f"clear bits 11:7 (use {e & ~0xF80:#x})",
                             ["secondary.enable_ept", "vmcs.eptp"])


def _e29e(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_ept"):
        return
    e, _ = _eptp_parts(ctx)
    if e >> ctx.caps.maxphyaddr:
        yield rule.violation(f"vmcs.eptp = {e:#x} has bits at or above MAXPHYADDR "
                             f"({ctx.caps.maxphyaddr}) set.",
                             f"use an EPT PML4 address below {1 << ctx.caps.maxphyaddr:#x}",
                             ["secondary.enable_ept", "vmcs.eptp"])


value_rule("E29a", "EPTP memory type",
           "EPTP[2:0] is UC (needs EPT_VPID_CAP[8]) or WB (needs EPT_VPID_CAP[14])",
           ("secondary.enable_ept", "ept.memory_type"), _e29a)
value_rule("E29b", "EPTP page-walk length",
           "EPTP[5:3] is 3 (4-level, needs CAP[6]) or 4 (5-level, needs CAP[7])",
           ("secondary.enable_ept", "ept.walk_length"), _e29b,
           note="Bochs accepts only 4-level walks")
value_rule("E29c", "EPTP accessed/dirty enable", "EPTP[6] may be 1 only if EPT_VPID_CAP[21]",
           ("secondary.enable_ept", "ept.accessed_dirty"), _e29c)
value_rule("E29d", "EPTP reserved bits", "EPTP bits 11:7 are 0",
           ("secondary.enable_ept", "vmcs.eptp"), _e29d,
           note="Bochs allows bit 7 with CET supervisor shadow-stack control")
value_rule("E29e", "EPTP address width", "EPTP has no bits set at or above MAXPHYADDR",
           ("secondary.enable_ept", "vmcs.eptp"), _e29e)


def _e30(ctx: Ctx, rule: Rule):
    if not ctx.on("secondary.enable_vm_functions"):
        return
    v, cap = ctx.cfg.vm_function_controls(), ctx.caps.vmfunc()
    if v & ~cap:
        bad = [s.path for s in SETTINGS if s.table == "vmfunc" and ctx.s(s.path)]
        yield rule.violation(f"VM-function controls {v:#x} include functions {ctx.caps.name} "
                             f"does not support (IA32_VMX_VMFUNC = {cap:#x}).",
                             "clear " + " and ".join(bad), ["secondary.enable_vm_functions"] + bad)


value_rule("E30", "VM-function controls", "VM_FUNCTION_CONTROL has only bits IA32_VMX_VMFUNC allows",
           ("secondary.enable_vm_functions", "vmfunc.eptp_switching"), _e30)


def _e31(ctx: Ctx, rule: Rule):
    if ctx.on("secondary.enable_vm_functions") and ctx.s("vmfunc.eptp_switching"):
        if not ctx.on("secondary.enable_ept"):
            yield rule.violation("vmfunc.eptp_switching is enabled but secondary.enable_ept is not.",
                                 "set secondary.enable_ept, or set vmfunc.eptp_switching = false",
                                 ["vmfunc.eptp_switching", "secondary.enable_ept"])
        a = ctx.s("vmcs.eptp_list_address")
        if a is not None and not ctx.addr_ok(a, 4096):
            yield rule.violation(f"vmcs.eptp_list_address = {a:#x} is not 4 KiB aligned within MAXPHYADDR.",
                                 "use a 4 KiB aligned address, or remove it and let the VMM place it",
                                 ["vmfunc.eptp_switching", "vmcs.eptp_list_address"])


value_rule("E31", "EPTP switching",
           "if EPTP switching is enabled, enable_ept is 1 and the EPTP-list address is 4 KiB aligned and valid",
           ("vmfunc.eptp_switching", "secondary.enable_ept", "vmcs.eptp_list_address"), _e31)


def _e32(ctx: Ctx, rule: Rule):
    if ctx.on("secondary.use_tsc_scaling") and ctx.s("tsc.multiplier") == 0:
        yield rule.violation("secondary.use_tsc_scaling is set but tsc.multiplier is 0.",
                             "set tsc.multiplier (1.0 = 0x1000000000000)")


value_rule("E32", "TSC multiplier non-zero", "with use_tsc_scaling = 1, TSC_MULTIPLIER != 0",
           ("secondary.use_tsc_scaling", "tsc.multiplier"), _e32, source="B",
           note="implementation-specific: Bochs checks it, the SDM and KVM do not")


def _e33(ctx: Ctx, rule: Rule):
    for fk in ("secondary", "tertiary"):
        f = FIELD_BY_KEY[fk]
        v = ctx.controls.get(fk, 0)
        if v and not ctx.on(f.activated_by):
            names = [c.path for b, c in CONTROL_BY_FIELD_BIT[fk].items() if v >> b & 1]
            yield rule.violation(
                f"{', '.join(names) or fk} set while {f.activated_by} is 0: the CPU treats the "
                f"{fk} controls as 0, so they have no effect.",
                f"set {f.activated_by}, or clear the {fk} bits", [f.activated_by] + names)


value_rule("E33", "Bits of an inactive secondary/tertiary field",
           "secondary/tertiary controls act only while their activate control is 1",
           ("primary.activate_secondary_controls", "primary.activate_tertiary_controls"), _e33,
           source="B", severity="warning")


# ---- VM-exit control fields (X) ----------------------------------------------------

def _x2(ctx: Ctx, rule: Rule):
    if ctx.on("exit.activate_secondary_controls") and not (
            ctx.caps.msr_exists(0x493) and 0x493 in ctx.caps.msrs):
        yield rule.violation(f"exit.activate_secondary_controls is set but {ctx.caps.name} "
                             f"has no IA32_VMX_EXIT_CTLS2.", "clear exit.activate_secondary_controls")


value_rule("X2", "Secondary VM-exit controls",
           "with exit.activate_secondary_controls = 1, only bits IA32_VMX_EXIT_CTLS2 allows are set "
           "(vmcfg writes the secondary VM-exit controls as 0)",
           ("exit.activate_secondary_controls",), _x2, sdm=SDM_EXIT, source="B")
_add(Rule("X3", "Saving the preemption timer needs the timer (= E28)", SDM_EXIT, "K B",
          "see E28", ("exit.save_vmx_preemption_timer_value",), lambda ctx: (), alias_of="E28"))


def _msr_area(rid: str, title: str, prefix: str, sdm: str):
    def fn(ctx: Ctx, rule: Rule):
        n = ctx.s(f"vmcs.{prefix}_count")
        a = ctx.s(f"vmcs.{prefix}_address")
        if n == 0 or a is None:
            return
        last = a + 16 * n - 1
        limit = ctx.caps.maxphyaddr
        if a % 16 or a >> limit or last >> limit:
            yield rule.violation(
                f"vmcs.{prefix}_address = {a:#x} with {n} entries must be 16-byte aligned and "
                f"end below 2^{limit}.",
                "use a 16-byte aligned address with the whole list below MAXPHYADDR, or remove "
                "the address and let the VMM place it",
                [f"vmcs.{prefix}_address", f"vmcs.{prefix}_count"])

    value_rule(rid, title, "if the count is > 0, the address is 16-byte aligned and the list "
               "lies within MAXPHYADDR", (f"vmcs.{prefix}_address", f"vmcs.{prefix}_count"),
               fn, sdm=sdm)


_msr_area("X4", "VM-exit MSR-store area", "exit_msr_store", SDM_EXIT)
_msr_area("X5", "VM-exit MSR-load area", "exit_msr_load", SDM_EXIT)
_add(Rule("X6", "Posted interrupts need acknowledge-interrupt-on-exit (= E16)", SDM_EXIT, "K B",
          "see E16", ("exit.acknowledge_interrupt_on_exit",), lambda ctx: (), alias_of="E16"))


# ---- VM-entry control fields (N) ---------------------------------------------------

def _n2(ctx: Ctx, rule: Rule):
    for p in ("entry.entry_to_smm", "entry.deactivate_dual_monitor_treatment"):
        if ctx.on(p):
            yield rule.violation(f"{p} is set, but vmcfg's VM entries are never made from SMM "
                                 f"(dual-monitor treatment).", f"clear {p}", [p])


value_rule("N2", "Entry to SMM / deactivate dual-monitor treatment",
           "entry_to_smm and deactivate_dual_monitor_treatment are 0 unless the entry is from SMM",
           ("entry.entry_to_smm", "entry.deactivate_dual_monitor_treatment"), _n2,
           sdm=SDM_ENTRY, source="B")


def _info(ctx: Ctx) -> int:
    return ctx.cfg.entry_interruption_info()


def _n3(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    if not info >> 31:
        return
    t = info >> 8 & 7
    if t == 1:                                  # between EXTERNAL and NMI: reserved
        yield rule.violation("interruption type 1 is reserved.", "use another inject.type",
                             ["inject.info"])
    elif t == IT.OTHER and not ctx.caps.supports("primary.monitor_trap_flag"):
        yield rule.violation(f"interruption type 7 (other event: pending MTF) needs MTF support, "
                             f"which {ctx.caps.name} lacks.", "use another inject.type",
                             ["inject.type", "primary.monitor_trap_flag"])


def _n4(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    if not info >> 31:
        return
    t, v = info >> 8 & 7, info & 0xFF
    if t == IT.NMI and v != Vector.NMI:
        yield rule.violation(f"an NMI must use vector {int(Vector.NMI)}, not {v}.",
                             f"set inject.vector = {int(Vector.NMI)}",
                             ["inject.type", "inject.vector"])
    elif t == IT.HW_EXCEPTION and v > LAST_EXCEPTION_VECTOR:
        yield rule.violation(f"a hardware exception needs a vector 0-{LAST_EXCEPTION_VECTOR}, "
                             f"not {v}.", f"use an exception vector 0-{LAST_EXCEPTION_VECTOR}, "
                             "or inject.type = \"external\"", ["inject.type", "inject.vector"])
    elif t == IT.OTHER and v != 0:
        yield rule.violation(f"type 7 (pending MTF) must use vector 0, not {v}.",
                             "set inject.vector = 0", ["inject.type", "inject.vector"])


def _n5(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    if not info >> 31 or ctx.caps.basic("any_errcode"):
        return
    t, v, dec = info >> 8 & 7, info & 0xFF, bool(info >> 11 & 1)
    mode = ctx.s("guest.mode")
    protected = mode != 16 or not ctx.on("secondary.unrestricted_guest")
    want = t == IT.HW_EXCEPTION and protected and v in ERROR_CODE_VECTORS
    if dec != want:
        if want:
            yield rule.violation(f"exception {v} pushes an error code in protected mode, but no "
                                 f"error code is delivered.", "set inject.error_code (e.g. 0)",
                                 ["inject.error_code", "inject.vector"])
        else:
            yield rule.violation(f"an error code is delivered, but "
                                 f"{'this event type' if t != IT.HW_EXCEPTION else f'vector {v}'} has none here.",
                                 "remove inject.error_code", ["inject.error_code", "inject.vector"])


def _n6(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    ec = ctx.s("inject.error_code")
    if info >> 31 and info >> 11 & 1 and ec is not None and ec >> 16:
        yield rule.violation(f"inject.error_code = {ec:#x} has bits 31:16 set.",
                             f"use {ec & 0xFFFF:#x}", ["inject.error_code"])


def _n7(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    if info >> 31 and info & 0x7FFFF000:
        yield rule.violation(f"interruption information {info:#x} has reserved bits 30:12 set.",
                             f"use {info & ~0x7FFFF000:#x}", ["inject.info"])


def _n8(ctx: Ctx, rule: Rule):
    info = _info(ctx)
    if not info >> 31 or (info >> 8 & 7) not in (IT.SW_INTERRUPT, IT.PRIV_SW_EXCEPTION,
                                                      IT.SW_EXCEPTION):
        return
    n = ctx.s("inject.instruction_length")
    if n == 0 and ctx.caps.misc("zero_len_inject"):
        return
    if not 1 <= n <= 15:
        yield rule.violation(f"a software interrupt/exception needs an instruction length of "
                             f"1-15{'' if ctx.caps.misc('zero_len_inject') else ' (0 is not allowed: IA32_VMX_MISC[30] = 0)'}, not {n}.",
                             "set inject.instruction_length (e.g. 2 for INT n)",
                             ["inject.instruction_length"])


value_rule("N3", "Injected event: interruption type",
           "type 1 is reserved; type 7 needs MTF support", ("inject.type",), _n3, sdm=SDM_ENTRY)
value_rule("N4", "Injected event: vector vs type",
           "NMI uses vector 2; hardware exceptions 0-31; type 7 vector 0",
           ("inject.type", "inject.vector"), _n4, sdm=SDM_ENTRY)
value_rule("N5", "Injected event: deliver-error-code bit",
           "an error code is delivered exactly for hardware exceptions that push one in protected mode "
           "(skipped when IA32_VMX_BASIC[56])", ("inject.error_code", "inject.vector"), _n5,
           sdm=SDM_ENTRY)
value_rule("N6", "Injected event: error-code bits", "bits 31:16 of the error code are 0",
           ("inject.error_code",), _n6, sdm=SDM_ENTRY)
value_rule("N7", "Injected event: reserved bits", "interruption-information bits 30:12 are 0",
           ("inject.info",), _n7, sdm=SDM_ENTRY)
value_rule("N8", "Injected event: instruction length",
           "software interrupts/exceptions have length 1-15 (0 only with IA32_VMX_MISC[30])",
           ("inject.instruction_length",), _n8, sdm=SDM_ENTRY)
_msr_area("N9", "VM-entry MSR-load area", "entry_msr_load", SDM_ENTRY)


# ---- warnings (legal but suspicious) ----------------------------------------------

def _pair(rid: str, what: str, entry: str, exit_: str):
    def fn(ctx: Ctx, rule: Rule):
        a, b = ctx.on(entry), ctx.on(exit_)
        if a != b:
            on, off = (entry, exit_) if a else (exit_, entry)
            yield rule.violation(f"{on} is set but {off} is not: KVM refuses unbalanced "
                                 f"{what} VM-entry/VM-exit controls.",
                                 f"set {off}, or clear {on}", [on, off])

    value_rule(rid, f"Unbalanced {what} entry/exit controls",
               f"{entry} and {exit_} are set together", (entry, exit_), fn, severity="warning",
               source="K", note="legal on hardware; KVM's nested VMX refuses it")


_pair("W1", "IA32_EFER", "entry.load_ia32_efer", "exit.load_ia32_efer")
_pair("W2", "IA32_PAT", "entry.load_ia32_pat", "exit.load_ia32_pat")
_pair("W3", "IA32_PERF_GLOBAL_CTRL", "entry.load_ia32_perf_global_ctrl",
      "exit.load_ia32_perf_global_ctrl")
_pair("W4", "IA32_BNDCFGS", "entry.load_ia32_bndcfgs", "exit.clear_ia32_bndcfgs")
_pair("W5", "IA32_RTIT_CTL", "entry.load_ia32_rtit_ctl", "exit.clear_ia32_rtit_ctl")


def _w6(ctx: Ctx, rule: Rule):
    for s in SETTINGS:
        if s.needs is None or s.key == "*":
            continue
        v = ctx.settings[s.table][s.key]
        if v != s.default and not ctx.on(s.needs):
            yield rule.violation(f"{s.path} is set but has no effect while {s.needs} is 0.",
                                 f"set {s.needs}, or remove {s.path}", [s.path, s.needs])


value_rule("W6", "Setting without effect",
           "a setting is given only where the control that uses it is on",
           tuple(s.path for s in SETTINGS if s.needs), _w6, source="vmcfg", severity="warning")


def _w7(ctx: Ctx, rule: Rule):
    for key in ("intercept_read", "intercept_write"):
        for lo, hi in ctx.s(f"msr.{key}"):
            if hi <= MSR_LOW_END or (MSR_HIGH_BASE <= lo and hi <= MSR_HIGH_END):
                continue
            yield rule.violation(
                f"msr.{key} lists {lo:#x}-{hi:#x}, outside the MSR-bitmap ranges "
                f"(0-0x1fff, 0xc0000000-0xc0001fff): those MSRs always exit.",
                f"remove them from msr.{key}", [f"msr.{key}"])


value_rule("W7", "MSRs outside the bitmap ranges",
           "MSR-bitmap entries lie in 0-0x1FFF or 0xC0000000-0xC0001FFF",
           ("msr.intercept_read", "msr.intercept_write"), _w7, source="vmcfg", severity="warning")


def _w8(ctx: Ctx, rule: Rule):
    if ctx.on("primary.use_io_bitmaps") and ctx.on("primary.unconditional_io_exiting"):
        yield rule.violation("primary.unconditional_io_exiting is ignored because "
                             "primary.use_io_bitmaps is set.",
                             "clear primary.unconditional_io_exiting, or add ports to io.intercept")


value_rule("W8", "Unconditional I/O exiting ignored",
           "unconditional_io_exiting is meaningful only without I/O bitmaps",
           ("primary.unconditional_io_exiting", "primary.use_io_bitmaps"), _w8,
           source="vmcfg", severity="warning")


# ---- launch-time host/guest-state checks (H, G) ------------------------------------

def _h1(ctx: Ctx, rule: Rule):
    if not ctx.on("exit.host_address_space_size"):
        yield rule.violation("exit.host_address_space_size is 0 but the host (vmcfg's VMM) runs "
                             "in 64-bit mode (IA32_EFER.LMA = 1).", "set exit.host_address_space_size")


def _g2(ctx: Ctx, rule: Rule):
    ia32e = ctx.on("entry.ia32e_mode_guest")
    if ctx.mode == 64 and not ia32e:
        yield rule.violation("a 64-bit guest starts in IA-32e mode, but entry.ia32e_mode_guest is 0.",
                             "set entry.ia32e_mode_guest (or launch with --mode 32/16)")
    elif ctx.mode in (16, 32) and ia32e:
        yield rule.violation(f"entry.ia32e_mode_guest is set but a {ctx.mode}-bit guest has "
                             f"CR0.PG = 0 / CR4.PAE = 0.",
                             "clear entry.ia32e_mode_guest (or launch with --mode 64)")


def _g3(ctx: Ctx, rule: Rule):
    if ctx.mode in (16, 32) and not ctx.on("secondary.unrestricted_guest"):
        what = "real mode (CR0.PE = 0, CR0.PG = 0)" if ctx.mode == 16 else "paging off (CR0.PG = 0)"
        yield rule.violation(f"a {ctx.mode}-bit guest starts with {what}, which IA32_VMX_CR0_FIXED0 "
                             f"forbids unless secondary.unrestricted_guest is 1.",
                             "set secondary.unrestricted_guest, secondary.enable_ept and "
                             "primary.activate_secondary_controls (or launch with --mode 64)",
                             ["secondary.unrestricted_guest", "guest.mode"])


value_rule("H1", "Host address-space size", "exit.host_address_space_size equals the host's "
           "IA32_EFER.LMA (1: vmcfg's VMM is a 64-bit host)", ("exit.host_address_space_size",),
           _h1, sdm=SDM_ADDRESS_SPACE, stage="launch")
value_rule("G2", "IA-32e mode guest vs guest mode", "entry.ia32e_mode_guest is 1 exactly for a "
           "64-bit guest (IA-32e mode needs CR0.PG = 1 and CR4.PAE = 1)",
           ("entry.ia32e_mode_guest", "guest.mode"), _g2, sdm=SDM_GUEST, stage="launch")
value_rule("G3", "Unpaged or real-mode guest needs unrestricted guest",
           "CR0.PE = 0 or CR0.PG = 0 only with secondary.unrestricted_guest",
           ("secondary.unrestricted_guest", "guest.mode"), _g3, sdm=SDM_GUEST, stage="launch")


RULE_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
_PROFILE_RULES = [r for r in RULES if r.stage == "profile" and r.alias_of is None]
_LAUNCH_RULES = [r for r in RULES if r.stage == "launch"]


def check(cfg: VmxConfig, caps: CapSet, explicit: dict[str, bool] | None = None
          ) -> tuple[list[Violation], list[Violation]]:
    """Run every profile-stage rule. Returns (errors, warnings)."""
    ctx = Ctx(cfg, caps, explicit)
    errors: list[Violation] = []
    warnings: list[Violation] = []
    for r in _PROFILE_RULES:
        for v in r.check(ctx):
            (errors if v.severity == "error" else warnings).append(v)
    return errors, warnings


def check_entry_state(cfg: VmxConfig, caps: CapSet, mode: int) -> list[Violation]:
    """The launch-time checks that depend on the guest's start state (H*, G*)."""
    ctx = Ctx(cfg, caps, None, mode)
    out: list[Violation] = []
    for r in _LAUNCH_RULES:
        out.extend(r.check(ctx))
    return out


def dependents(path: str) -> list[tuple[str, Rule]]:
    """Controls whose rule requires `path` (for explain): [(control, rule)]."""
    out = []
    for r in RULES:
        for whens, need in r.requires:
            if need == path:
                out.extend((w, r) for w in whens)
    return out


def requirements(path: str) -> list[tuple[str, Rule]]:
    """What `path` itself requires: [(needed control, rule)]."""
    out = []
    for r in RULES:
        for whens, need in r.requires:
            if path in whens:
                out.append((need, r))
    return out
