"""Decoding guest instructions: which instruction kinds the VMM can trap.

A *kind* is a string naming one class of sensitive instruction ("cpuid",
"rdtsc", "mov_to_cr0", "io", ...).  The vCPU scans each guest code page once,
on its first execution, and remembers every address where a sensitive
instruction starts; which of them get a hook depends on the current controls
(see ``vcpu.trapped_kinds``).  Decoding uses iced-x86.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import iced_x86 as ix
from iced_x86 import Code, Mnemonic as M, OpKind, Register as R

# ---- kinds --------------------------------------------------------------------
_MNEMONIC_KIND: dict[int, str] = {
    M.CPUID: "cpuid", M.INVD: "invd", M.XSETBV: "xsetbv", M.VMCALL: "vmcall",
    M.GETSEC: "getsec", M.HLT: "hlt", M.INVLPG: "invlpg", M.RDPMC: "rdpmc",
    M.RDTSC: "rdtsc", M.RDTSCP: "rdtscp", M.MWAIT: "mwait", M.MONITOR: "monitor",
    M.PAUSE: "pause", M.WBINVD: "wbinvd", M.WBNOINVD: "wbinvd", M.RDRAND: "rdrand",
    M.RDSEED: "rdseed", M.INVPCID: "invpcid",
    M.LGDT: "gdt_idt", M.LIDT: "gdt_idt", M.SGDT: "gdt_idt", M.SIDT: "gdt_idt",
    M.LLDT: "ldt_tr", M.LTR: "ldt_tr", M.SLDT: "ldt_tr", M.STR: "ldt_tr",
    M.CLTS: "clts", M.LMSW: "lmsw", M.SMSW: "smsw",
    M.IN: "io", M.OUT: "io", M.INSB: "io", M.INSW: "io", M.INSD: "io",
    M.OUTSB: "io", M.OUTSW: "io", M.OUTSD: "io",
    M.RDMSR: "rdmsr", M.WRMSR: "wrmsr",
    M.STI: "sti", M.POPF: "popf", M.POPFD: "popf", M.POPFQ: "popf",
    M.IRET: "iret", M.IRETD: "iret", M.IRETQ: "iret",
    M.VMCLEAR: "vmx", M.VMLAUNCH: "vmx", M.VMPTRLD: "vmx", M.VMPTRST: "vmx",
    M.VMREAD: "vmx", M.VMRESUME: "vmx", M.VMWRITE: "vmx", M.VMXOFF: "vmx", M.VMXON: "vmx",
    M.INVEPT: "vmx", M.INVVPID: "vmx", M.VMFUNC: "vmx",
}

# The unconditional-exit instructions and their basic exit reasons.
VMX_REASON: dict[int, int] = {
    M.VMCLEAR: 19, M.VMLAUNCH: 20, M.VMPTRLD: 21, M.VMPTRST: 22, M.VMREAD: 23,
    M.VMRESUME: 24, M.VMWRITE: 25, M.VMXOFF: 26, M.VMXON: 27, M.INVEPT: 50,
    M.INVVPID: 53, M.VMFUNC: 59,
}

ALL_KINDS: frozenset[str] = frozenset(_MNEMONIC_KIND.values()) | frozenset(
    f"mov_{d}_cr{n}" for d in ("to", "from") for n in (0, 2, 3, 4, 8)) | {"mov_dr", "ss_load",
                                                                           "smsw_wide", "pushf_rf"}

# Bytes that can begin the opcode of a sensitive instruction (after prefixes):
# 0F xx escapes, HLT, PAUSE (F3 90), IN/OUT, INS/OUTS, STI, PUSHF, POPF, IRET, MOV SS, POP SS.
_OPCODE_BYTES = frozenset([0x0F, 0xF4, 0x90, 0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF,
                           0x6C, 0x6D, 0x6E, 0x6F, 0xFB, 0x9C, 0x9D, 0xCF, 0x8E, 0x17])
_PREFIX_BYTES = frozenset([0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65])
_REX = frozenset(range(0x40, 0x50))
# a stored byte in this set may create a sensitive instruction
TRIGGER_BYTES = _OPCODE_BYTES | _PREFIX_BYTES | _REX | frozenset(
    [0xA2, 0x31, 0x30, 0x32, 0x33, 0x01, 0x00, 0x08, 0x09, 0x06, 0x20, 0x21, 0x22, 0x23, 0x78,
     0x79, 0xC7, 0x37, 0x38, 0x80, 0x81, 0x82])

_GPR_INDEX: dict[int, int] = {}
_GPR_SIZE: dict[int, int] = {}
for _i, _names in enumerate((
        ("RAX", "EAX", "AX", "AL"), ("RCX", "ECX", "CX", "CL"), ("RDX", "EDX", "DX", "DL"),
        ("RBX", "EBX", "BX", "BL"), ("RSP", "ESP", "SP", "SPL"), ("RBP", "EBP", "BP", "BPL"),
        ("RSI", "ESI", "SI", "SIL"), ("RDI", "EDI", "DI", "DIL"),
        ("R8", "R8D", "R8W", "R8L"), ("R9", "R9D", "R9W", "R9L"), ("R10", "R10D", "R10W", "R10L"),
        ("R11", "R11D", "R11W", "R11L"), ("R12", "R12D", "R12W", "R12L"),
        ("R13", "R13D", "R13W", "R13L"), ("R14", "R14D", "R14W", "R14L"),
        ("R15", "R15D", "R15W", "R15L"))):
    for _n, _sz in zip(_names, (8, 4, 2, 1)):
        _GPR_INDEX[getattr(R, _n)] = _i
        _GPR_SIZE[getattr(R, _n)] = _sz
for _i, _n in enumerate(("AH", "CH", "DH", "BH")):
    _GPR_INDEX[getattr(R, _n)] = _i
    _GPR_SIZE[getattr(R, _n)] = 1
_CR_NUM = {R.CR0: 0, R.CR2: 2, R.CR3: 3, R.CR4: 4, R.CR8: 8}
_DR_NUM = {getattr(R, f"DR{i}"): i for i in range(8)}
_SEG = {R.ES: "es", R.CS: "cs", R.SS: "ss", R.DS: "ds", R.FS: "fs", R.GS: "gs"}


def gpr_index(reg: int) -> int | None:
    return _GPR_INDEX.get(reg)


def gpr_size(reg: int) -> int:
    return _GPR_SIZE.get(reg, 8)


@dataclass
class Insn:
    """One decoded sensitive instruction."""

    address: int
    length: int
    raw: bytes
    kind: str
    mnemonic: int
    text: str
    bitness: int
    instr: ix.Instruction = field(repr=False, default=None)
    cr: int = -1            # CR number for CR accesses
    gpr: int = -1           # GPR operand index (CR/DR moves, RDRAND, ...)
    gpr_size: int = 8
    dr: int = -1
    port_imm: int | None = None   # IN/OUT with immediate port
    io_size: int = 0
    io_in: bool = False
    io_string: bool = False
    io_rep: bool = False
    has_mem: bool = False

    @property
    def reason_of_vmx(self) -> int:
        return VMX_REASON.get(self.mnemonic, 18)


_FORMATTER = ix.Formatter(ix.FormatterSyntax.INTEL)


def format_instr(instr: ix.Instruction) -> str:
    return _FORMATTER.format(instr)


def classify(instr: ix.Instruction) -> str | None:
    if instr.code == Code.INVALID:
        return None
    m = instr.mnemonic
    if m in (M.MOV, M.POP) and instr.op_count and instr.op_kind(0) == OpKind.REGISTER \
            and instr.op_register(0) == R.SS:
        return "ss_load"                # MOV SS / POP SS: blocks events for one instruction
    if m == M.MOV:
        for i in range(instr.op_count):
            if instr.op_kind(i) == OpKind.REGISTER:
                r = instr.op_register(i)
                if r in _CR_NUM:
                    return f"mov_{'to' if i == 0 else 'from'}_cr{_CR_NUM[r]}"
                if r in _DR_NUM:
                    return "mov_dr"
        return None
    if m in (M.PUSHF, M.PUSHFD) and instr.code_size != ix.CodeSize.CODE64:
        return "pushf_rf"               # the engine's PUSHF outside 64-bit code stores RF
    if m == M.SMSW and instr.op0_kind == OpKind.REGISTER and gpr_size(instr.op0_register) > 2:
        return "smsw_wide"              # SMSW r32/r64: the engine would store only 16 bits
    return _MNEMONIC_KIND.get(m)


def make_insn(instr: ix.Instruction, raw: bytes, bitness: int, kind: str | None = None) -> Insn:
    kind = kind or classify(instr) or "other"
    ins = Insn(instr.ip, instr.len, raw[:instr.len], kind, instr.mnemonic, format_instr(instr),
               bitness, instr)
    ins.has_mem = any(instr.op_kind(i) == OpKind.MEMORY for i in range(instr.op_count))
    if kind.startswith("mov_") and kind != "mov_dr":
        ins.cr = int(kind.rsplit("cr", 1)[1])
        reg = instr.op1_register if kind.startswith("mov_to") else instr.op0_register
        ins.gpr, ins.gpr_size = _GPR_INDEX.get(reg, 0), gpr_size(reg)
    elif kind == "mov_dr":
        if instr.op0_register in _DR_NUM:
            ins.dr, reg = _DR_NUM[instr.op0_register], instr.op1_register
            ins.io_in = False
        else:
            ins.dr, reg = _DR_NUM[instr.op1_register], instr.op0_register
            ins.io_in = True       # direction: MOV from DR
        ins.gpr, ins.gpr_size = _GPR_INDEX.get(reg, 0), gpr_size(reg)
    elif kind in ("rdrand", "rdseed", "smsw", "smsw_wide", "sgdt", "sldt", "str", "ldt_tr", "lmsw", "invpcid"):
        if instr.op_count and instr.op0_kind == OpKind.REGISTER:
            ins.gpr, ins.gpr_size = _GPR_INDEX.get(instr.op0_register, 0), gpr_size(instr.op0_register)
    elif kind == "io":
        m = instr.mnemonic
        if m in (M.IN, M.OUT):
            ins.io_in = m == M.IN
            reg_op = 0 if m == M.IN else 1
            ins.io_size = gpr_size(instr.op_register(reg_op))
            port_op = 1 if m == M.IN else 0
            if instr.op_kind(port_op) in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE8_2ND):
                ins.port_imm = instr.immediate8 if instr.op_kind(port_op) == OpKind.IMMEDIATE8 \
                    else instr.immediate8_2nd
        else:
            ins.io_string = True
            ins.io_in = m in (M.INSB, M.INSW, M.INSD)
            ins.io_size = {M.INSB: 1, M.OUTSB: 1, M.INSW: 2, M.OUTSW: 2}.get(m, 4)
            ins.io_rep = instr.has_rep_prefix or instr.has_repe_prefix or instr.has_repne_prefix
    return ins


def decode_one(data: bytes, address: int, bitness: int) -> ix.Instruction:
    return ix.Decoder(bitness, data, ip=address).decode()


def count_instructions(data: bytes, address: int, bitness: int, stop: int | None = None) -> int:
    """Instructions in `data` decoded linearly from `address` (up to `stop`)."""
    dec = ix.Decoder(bitness, data, ip=address)
    n = 0
    end = address + len(data) if stop is None else stop
    while dec.can_decode:
        if dec.ip >= end:
            break
        dec.decode()
        n += 1
    return n


# what can make an instruction sensitive: its mnemonic, or (MOV to/from CR/DR/Sreg, POP SS)
# its exact form; anything else is never classified (classify() is the judge for these)
# (keep in step with classify(): every mnemonic it can give a kind to)
_SENSITIVE_MNEMONICS = frozenset(_MNEMONIC_KIND) | {M.PUSHF, M.PUSHFD, M.SMSW}   # pushf_rf, smsw
_SENSITIVE_CODES = frozenset(getattr(Code, n) for n in dir(Code) if not n.startswith("_") and (
    (n.startswith("MOV_") and ("CR" in n or "DR" in n or "SREG" in n))
    or (n.startswith("POP") and n.endswith("_SS"))))


def block_sensitive(data: bytes, address: int, bitness: int
                    ) -> tuple[int, list[tuple[int, str, ix.Instruction]]]:
    """A translated block's instruction count and its sensitive instructions (address,
    kind, instruction), decoded from the block's first byte: the real instruction
    boundaries, unlike scan_page's every-offset guesses."""
    dec = ix.Decoder(bitness, data, ip=address)
    n = 0
    found = []
    for instr in dec:
        n += 1
        if instr.mnemonic in _SENSITIVE_MNEMONICS or instr.code in _SENSITIVE_CODES:
            kind = classify(instr)
            if kind is not None:
                found.append((instr.ip, kind, instr))
    return n, found


def scan_page(data: bytes, base: int, bitness: int, lo: int = 0, hi: int | None = None
              ) -> dict[int, tuple[str, ix.Instruction]]:
    """Every address in [base+lo, base+hi) where a sensitive instruction starts.

    `data` holds the page plus up to 15 following bytes.  Only offsets whose
    bytes can start a sensitive opcode (after legal prefixes) are decoded.
    """
    hi = min(len(data), 4096) if hi is None else hi
    starts: set[int] = set()
    for off in range(max(lo - 15, 0), min(hi + 15, len(data))):
        b = data[off]
        if b not in _OPCODE_BYTES:
            continue
        starts.add(off)
        k = off - 1
        while k >= 0 and off - k < 15 and (data[k] in _PREFIX_BYTES or
                                            (bitness == 64 and data[k] in _REX)):
            starts.add(k)
            k -= 1
    out: dict[int, tuple[str, ix.Instruction]] = {}
    dec = ix.Decoder(bitness, data, ip=base)
    for off in sorted(starts):
        if not lo <= off < hi:
            continue
        dec.position = off
        dec.ip = base + off
        instr = dec.decode()
        kind = classify(instr)
        if kind is not None:
            out[base + off] = (kind, instr)
    return out
