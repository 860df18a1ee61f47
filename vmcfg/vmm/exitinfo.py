"""What one VM exit carries (SDM vol. 3C "VM-exit information fields")."""

from __future__ import annotations

from typing import Any

from ..vmx.exits import ENTRY_FAILURE_BIT, InterruptionType, exit_name

# Interruption types (bits 10:8 of the interruption-information field)
INTR_EXTERNAL = InterruptionType.EXTERNAL
INTR_NMI = InterruptionType.NMI
INTR_HW_EXCEPTION = InterruptionType.HW_EXCEPTION
INTR_SW_INTERRUPT = InterruptionType.SW_INTERRUPT
INTR_PRIV_SW_EXCEPTION = InterruptionType.PRIV_SW_EXCEPTION
INTR_SW_EXCEPTION = InterruptionType.SW_EXCEPTION

# CR-access qualification access types
CR_MOV_TO, CR_MOV_FROM, CR_CLTS, CR_LMSW = 0, 1, 2, 3


def interruption_info(vector: int, itype: int, error_code: bool) -> int:
    return (1 << 31) | (vector & 0xFF) | (itype << 8) | ((1 << 11) if error_code else 0)


def cr_qualification(cr: int, access: int, gpr: int = 0, lmsw_mem: bool = False,
                     lmsw_data: int = 0) -> int:
    return (cr & 0xF) | (access << 4) | ((1 << 6) if lmsw_mem else 0) | ((gpr & 0xF) << 8) \
        | ((lmsw_data & 0xFFFF) << 16)


def dr_qualification(dr: int, mov_from: bool, gpr: int) -> int:
    return (dr & 7) | ((1 << 4) if mov_from else 0) | ((gpr & 0xF) << 8)


def io_qualification(size: int, is_in: bool, string: bool, rep: bool, imm: bool,
                     port: int) -> int:
    return ((size - 1) & 7) | ((1 << 3) if is_in else 0) | ((1 << 4) if string else 0) \
        | ((1 << 5) if rep else 0) | ((1 << 6) if imm else 0) | ((port & 0xFFFF) << 16)


# Segment-register numbers of the instruction-information field (ES CS SS DS FS GS)
_SEG_NUMBER = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}


def _memory_operand_info(ins, address_size: int) -> int:
    """Bits 0-1 and 7-9, 15-27 of the instruction-information field for a memory operand
    (SDM tables 28-10/28-11): scaling, address size, segment, index, base."""
    from iced_x86 import Register as R

    from .decode import gpr_index
    i = ins.instr
    info = {2: 0, 4: 1, 8: 2}.get(address_size, 1) << 7
    scale = {1: 0, 2: 1, 4: 2, 8: 3}.get(i.memory_index_scale, 0)
    info |= scale
    seg = {R.ES: 0, R.CS: 1, R.SS: 2, R.DS: 3, R.FS: 4, R.GS: 5}.get(i.memory_segment, 3)
    info |= seg << 15
    idx = gpr_index(i.memory_index) if i.memory_index != R.NONE else None
    info |= ((idx & 0xF) << 18) if idx is not None else (1 << 22)
    base = gpr_index(i.memory_base) if i.memory_base not in (R.NONE, R.RIP, R.EIP) else None
    info |= ((base & 0xF) << 23) if base is not None else (1 << 27)
    return info


def descriptor_table_info(ins, identity: int, address_size: int, operand_size: int) -> int:
    """VM-exit instruction information for LGDT/LIDT/SGDT/SIDT (table 28-10): identity
    0 SGDT, 1 SIDT, 2 LGDT, 3 LIDT; operand size bit 11 (0 = 16-bit, 1 = 32-bit)."""
    info = _memory_operand_info(ins, address_size) | ((identity & 3) << 28)
    if operand_size != 2:
        info |= 1 << 11
    return info


def ldt_tr_info(ins, identity: int, address_size: int) -> int:
    """VM-exit instruction information for SLDT/STR/LLDT/LTR (table 28-11): identity
    0 SLDT, 1 STR, 2 LLDT, 3 LTR; a register operand sets bit 10 and bits 6:3."""
    if ins.has_mem:
        return _memory_operand_info(ins, address_size) | ((identity & 3) << 28)
    return (1 << 10) | ((ins.gpr & 0xF) << 3) | ((identity & 3) << 28) | \
        ({2: 0, 4: 1, 8: 2}.get(address_size, 1) << 7)


def rdrand_info(ins) -> int:
    """VM-exit instruction information for RDRAND/RDSEED (table 28-14): the destination
    register (bits 6:3) and the operand size (bits 12:11: 0 = 16, 1 = 32, 2 = 64 bit)."""
    return ((ins.gpr & 0xF) << 3) | ({2: 0, 4: 1, 8: 2}.get(ins.gpr_size, 1) << 11)


class VmExit:
    """One VM exit, as a VMM would read it from the VMCS exit-information fields.

    reason                   basic exit reason (16 bits)
    qualification            exit qualification
    rip                      guest linear RIP of the exiting instruction / event
    instruction_length       VM-exit instruction length (0 when not an instruction exit)
    instruction_bytes, disassembly
    interruption_info        VM-exit interruption information (exceptions, reason 0)
    interruption_error_code  its error code, or None
    instruction_info         VM-exit instruction information (descriptor tables, INS/OUTS)
    guest_linear_address, guest_physical_address
    entry_failure            bit 31 of the exit-reason field
    seq, instructions, tsc   exit number, retired instructions and virtual TSC at the exit
    data                     decoded extras (port, msr, value, vector, ...)
    """

    __slots__ = ("reason", "qualification", "rip", "instruction_length", "instruction_bytes",
                 "disassembly", "interruption_info", "interruption_error_code",
                 "instruction_info", "guest_linear_address", "guest_physical_address",
                 "entry_failure", "seq", "instructions", "tsc", "data", "insn")

    def __init__(self, reason: int, qualification: int = 0, rip: int = 0,
                 instruction_length: int = 0, instruction_bytes: bytes = b"",
                 disassembly: str = "", interruption_info: int = 0,
                 interruption_error_code: int | None = None, *, instruction_info: int = 0,
                 guest_linear_address: int | None = None,
                 guest_physical_address: int | None = None, entry_failure: bool = False,
                 data: dict | None = None, insn: Any = None):
        self.reason = reason
        self.qualification = qualification
        self.rip = rip
        self.instruction_length = instruction_length
        self.instruction_bytes = instruction_bytes
        self.disassembly = disassembly
        self.interruption_info = interruption_info
        self.interruption_error_code = interruption_error_code
        self.instruction_info = instruction_info
        self.guest_linear_address = guest_linear_address
        self.guest_physical_address = guest_physical_address
        self.entry_failure = entry_failure
        self.seq = self.instructions = self.tsc = 0
        self.data = data if data is not None else {}
        self.insn = insn

    def __repr__(self) -> str:
        return (f"VmExit({self.reason} {self.name}, qualification={self.qualification:#x}, "
                f"rip={self.rip:#x}, length={self.instruction_length})")

    @property
    def name(self) -> str:
        return exit_name(self.reason)

    @property
    def reason_field(self) -> int:
        """The full 32-bit exit-reason field (bit 31 = VM-entry failure)."""
        return self.reason | (ENTRY_FAILURE_BIT if self.entry_failure else 0)

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "seq": self.seq, "instructions": self.instructions, "tsc": self.tsc,
            "rip": self.rip, "reason": self.reason, "name": self.name,
            "qualification": self.qualification,
        }
        if self.entry_failure:
            d["reason_field"] = self.reason_field
        d["length"] = self.instruction_length
        d["bytes"] = self.instruction_bytes.hex()
        d["disassembly"] = self.disassembly
        if self.interruption_info:
            d["interruption_info"] = self.interruption_info
            if self.interruption_error_code is not None:
                d["error_code"] = self.interruption_error_code
        if self.instruction_info:
            d["instruction_info"] = self.instruction_info
        if self.guest_linear_address is not None:
            d["guest_linear_address"] = self.guest_linear_address
        if self.guest_physical_address is not None:
            d["guest_physical_address"] = self.guest_physical_address
        if self.data:
            d["data"] = self.data
        return d
