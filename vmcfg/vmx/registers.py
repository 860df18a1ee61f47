"""General-purpose register names in their VMX/x86 encoding order (SDM vol. 3C table 28-3:
0 = RAX ... 15 = R15), as used in exit qualifications and register reports."""

from __future__ import annotations

GPR_NAMES: tuple[str, ...] = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def gpr_count(mode: int) -> int:
    """How many GPRs a guest in `mode` (16/32/64) has."""
    return len(GPR_NAMES) if mode == 64 else 8
