"""VM-entry checks that depend on the controls *and* on guest/host state.

The profile validator checks the control fields against the capability set;
what it cannot know is the state the guest starts in.  These checks run at
launch, on the effective config and the requested start mode, and fail like
a real VM entry: exit reason 33 (invalid guest state) with bit 31 set, or --
for the host-state rule -- the same report (vmcfg's emulated host is always
64-bit).  The rules themselves live with every other rule in vmcfg.vmx.rules
(stage "launch": H1, G2, G3 -- G3 is the CR0 fixed-bit rule,
IA32_VMX_CR0_FIXED0 = PE | NE | PG, relaxed for PE/PG by unrestricted guest).
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
    """The launch-stage rules of vmcfg.vmx.rules (H1, G2, G3) for this start mode."""
    from ..vmx.models import get_model
    from ..vmx.rules import check_entry_state
    return [EntryProblem(v.rule, v.message, v.fix)
            for v in check_entry_state(cfg, get_model("cvmm"), mode)]
