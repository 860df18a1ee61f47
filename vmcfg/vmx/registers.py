"""Register names: the general-purpose registers in their VMX/x86 encoding order (SDM vol. 3C
table 28-3: 0 = RAX ... 15 = R15), as used in exit qualifications and register reports, and
the registers of a CPUID leaf."""

from __future__ import annotations

GPR_NAMES: tuple[str, ...] = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# The registers a CPUID leaf returns, in the order of a leaf's values.
CPUID_REGS: tuple[str, ...] = ("eax", "ebx", "ecx", "edx")


def gpr_count(mode: int) -> int:
    """How many GPRs a guest in `mode` (16/32/64) has."""
    return len(GPR_NAMES) if mode == 64 else 8
