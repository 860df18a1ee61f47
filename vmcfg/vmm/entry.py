"""VM-entry checks that depend on the controls *and* on guest/host state.

The profile validator checks the control fields against the capability set;
what it cannot know is the state the guest starts in.  These checks run at
launch, on the effective config and the requested start mode, and fail like
a real VM entry: exit reason 33 (invalid guest state) with bit 31 set, or --
for the host-state rule -- the same report (vmcfg's emulated host is always
64-bit).  Sources: vmx-facts.md §3.4 (H1, H2, G2, G3) and the CR0 fixed-bit
rule (IA32_VMX_CR0_FIXED0 = PE | NE | PG, relaxed for PE/PG by unrestricted
guest).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..vmx.config import VmxConfig


@dataclass
class EntryProblem:
    rule: str
    message: str
    fix: str

    def to_json(self) -> dict:
        return {"rule": self.rule, "message": self.message, "fix": self.fix}


def start_cr0(mode: int) -> int:
    if mode == 64:
        return 0x80010033      # PG WP NE ET MP PE
    if mode == 32:
        return 0x00000031      # NE ET PE
    return 0x00000030          # NE ET (real mode)


def start_cr4(mode: int) -> int:
    return 0x620 if mode == 64 else 0x600      # (PAE) OSFXSR OSXMMEXCPT


def check_entry(cfg: VmxConfig, mode: int) -> list[EntryProblem]:
    out: list[EntryProblem] = []
    on = cfg.on
    if not on("exit.host_address_space_size"):
        out.append(EntryProblem(
            "H1", "exit.host_address_space_size is 0, but vmcfg's emulated host (cvmm) runs "
            "in 64-bit mode: the host address-space size must match the host's IA32_EFER.LMA",
            "set [exit] host_address_space_size = true"))
    ia32e = on("entry.ia32e_mode_guest")
    if mode == 64 and not ia32e:
        out.append(EntryProblem(
            "G2", "the guest starts in 64-bit long mode (EFER.LMA = 1) but "
            "entry.ia32e_mode_guest is 0",
            "set [entry] ia32e_mode_guest = true, or launch with --mode 32/16"))
    if mode != 64 and ia32e:
        out.append(EntryProblem(
            "G2", f"entry.ia32e_mode_guest is 1, which needs guest CR0.PG = 1 and CR4.PAE = 1, "
            f"but the {mode}-bit start state has paging off",
            "set [entry] ia32e_mode_guest = false, or launch with --mode 64"))
    cr0 = start_cr0(mode)
    ug = on("secondary.unrestricted_guest")
    need = 0x80000021 & ~(0x80000001 if ug else 0)
    missing = need & ~cr0
    if missing:
        bits = [n for b, n in ((0, "PE"), (5, "NE"), (31, "PG")) if missing >> b & 1]
        what = "real mode (CR0.PE = 0)" if mode == 16 else "protected mode with paging off (CR0.PG = 0)"
        out.append(EntryProblem(
            "CR0-FIXED", f"the {mode}-bit start state runs in {what}, but CR0 bit(s) "
            f"{', '.join(bits)} are fixed to 1 in VMX non-root operation (IA32_VMX_CR0_FIXED0) "
            "unless secondary.unrestricted_guest is on",
            "set [secondary] unrestricted_guest = true and enable_ept = true "
            "(with [primary] activate_secondary_controls = true)"))
    if ug and not on("secondary.enable_ept"):
        out.append(EntryProblem(
            "E22", "secondary.unrestricted_guest requires secondary.enable_ept",
            "set [secondary] enable_ept = true"))
    return out
