"""The processor's APIC-virtualization rules (vmcfg/vmm/apicv.py) on their own: what a
virtualized access stores and answers, and which trap-like exits follow."""

from __future__ import annotations

import textwrap

import pytest

from vmcfg.vmm.apicv import VirtualApic, VirtualGp
from vmcfg.vmx.exits import Exit

APICV = """
[pin]
external_interrupt_exiting = true
[exit]
acknowledge_interrupt_on_exit = true
[primary]
use_tpr_shadow = true
[secondary]
virtualize_apic_accesses = true
apic_register_virtualization = true
virtual_interrupt_delivery = true
"""


def _vapic(tmp_path, body: str, memory: int = 1 << 20) -> VirtualApic:
    from vmcfg.profile import resolve
    p = tmp_path / "p.toml"
    p.write_text('[profile]\nname = "p"\nextends = "baseline"\n' + textwrap.dedent(body))
    r = resolve(str(p), cpu="cvmm")
    assert r.valid, [v.message for v in r.errors]
    mem = bytearray(memory)

    def rd(a, n):
        return bytes(mem[a:a + n])

    def wr(a, data):
        mem[a:a + len(data)] = data

    v = VirtualApic(r.config, read_phys=rd, write_phys=wr, memory=memory)
    v.mem = mem
    return v


def test_without_tpr_shadow_every_access_to_the_page_exits_with_offset_and_type(tmp_path):
    v = _vapic(tmp_path, "[secondary]\nvirtualize_apic_accesses = true\n")
    a = v.xapic_access(0x80, 4, False)
    assert (a.kind, a.qualification) == ("exit", 0x080)
    a = v.xapic_access(0x300, 4, True, 0x4041)
    assert (a.kind, a.qualification) == ("exit", 0x1300)


def test_tpr_shadow_alone_virtualizes_only_the_tpr(tmp_path):
    v = _vapic(tmp_path, """
        [primary]
        use_tpr_shadow = true
        [secondary]
        virtualize_apic_accesses = true
        [apic]
        vtpr = 0x20
        tpr_threshold = 3
        """)
    assert v.xapic_access(0x80, 4, False).value == 0x20
    assert v.xapic_access(0x20, 4, False).kind == "exit"          # ID: no register virt.
    assert v.xapic_access(0x7E, 4, False).kind == "exit"          # crosses into the TPR
    w = v.xapic_access(0x80, 4, True, 0x1FF)
    # bytes 81H-83H cleared; VTPR[7:4] = 0xF is not below 3
    assert w.kind == "write" and w.trap is None and v.vtpr == 0xFF and v.reg(0x80) == 0xFF
    w = v.xapic_access(0x80, 4, True, 0x10)
    assert w.trap.reason == Exit.TPR_BELOW_THRESHOLD and w.trap.qualification == 0
    assert v.xapic_access(0xB0, 4, True, 0).kind == "exit"        # EOI needs VID


def test_register_virtualization_reads_the_page_and_traps_other_writes(tmp_path):
    v = _vapic(tmp_path, APICV)
    v.set_reg(0x320, 0x10040)
    assert v.xapic_access(0x320, 4, False).value == 0x10040
    assert v.xapic_access(0x321, 1, False).value == 0x00
    assert v.xapic_access(0x390, 4, False).qualification == 0x390    # current count exits
    assert v.xapic_access(0xA0, 4, False).qualification == 0x0A0     # so does the PPR
    w = v.xapic_access(0x380, 4, True, 12345)
    assert w.kind == "write" and v.reg(0x380) == 12345
    assert (w.trap.reason, w.trap.qualification) == (Exit.APIC_WRITE, 0x380)
    assert v.xapic_access(0x390, 4, True, 1).qualification == 0x1390  # read-only: exits


def test_virtual_interrupt_delivery_and_virtual_eoi_with_the_eoi_exit_bitmap(tmp_path):
    v = _vapic(tmp_path, APICV + "[apic]\neoi_exit = [0x51]\n")
    v.request(0x31)
    v.request(0x51)
    assert v.rvi == 0x51 and v.pending() == 0x51
    assert v.pending(interrupt_window_exiting=True) is None
    assert v.deliver() == 0x51
    assert (v.svi, v.vppr, v.rvi) == (0x51, 0x50, 0x31)
    assert v.pending() is None                        # 0x3x is below VPPR 0x50
    w = v.xapic_access(0xB0, 4, True, 0)
    assert (w.trap.reason, w.trap.qualification) == (Exit.EOI_INDUCED, 0x51)
    assert v.svi == 0 and v.visr == 0
    v.ppr_virtualization()
    assert v.pending() == 0x31 and v.deliver() == 0x31
    assert v.xapic_access(0xB0, 4, True, 0).trap is None  # not in the bitmap: no exit
    # TPR holds lower classes back
    v.request(0x45)
    v.xapic_access(0x80, 4, True, 0x50)
    assert v.vppr == 0x50 and v.pending() is None
    v.xapic_access(0x80, 4, True, 0x00)
    assert v.pending() == 0x45


def test_self_ipi_through_the_icr_is_virtualized_only_in_its_simple_form(tmp_path):
    v = _vapic(tmp_path, APICV)
    assert v.xapic_access(0x300, 4, True, 0x40061).trap is None      # self, fixed, edge
    assert v.rvi == 0x61
    w = v.xapic_access(0x300, 4, True, 0x4061)                       # no shorthand: exit
    assert (w.trap.reason, w.trap.qualification) == (Exit.APIC_WRITE, 0x300)


def test_x2apic_virtualization_of_tpr_eoi_and_self_ipi(tmp_path):
    v = _vapic(tmp_path, APICV.replace("virtualize_apic_accesses", "virtualize_x2apic_mode")
               + "[apic]\neoi_exit = [0x60]\n")
    assert v.wrmsr(0x808, 0x30) == (True, None) and v.rdmsr(0x808) == 0x30
    with pytest.raises(VirtualGp):
        v.wrmsr(0x808, 0x100)
    assert v.wrmsr(0x83F, 0x60) == (True, None) and v.rvi == 0x60
    assert v.deliver() == 0x60 and v.rdmsr(0x80A) == 0x60           # VPPR read virtualized
    with pytest.raises(VirtualGp):
        v.wrmsr(0x80B, 1)
    ok, trap = v.wrmsr(0x80B, 0)
    assert ok and (trap.reason, trap.qualification) == (Exit.EOI_INDUCED, 0x60)
    assert v.wrmsr(0x832, 0x40) == (False, None)                    # LVT timer: the LAPIC
    assert v.rdmsr(0x839) is None                                   # current count: the LAPIC


def test_posted_interrupt_processing_moves_pir_into_virr(tmp_path):
    v = _vapic(tmp_path, APICV.replace("[pin]\n", "[pin]\nprocess_posted_interrupts = true\n") +
               "[vmcs]\nposted_intr_desc = 0x8000\n[posted_interrupts]\nvector = 0xF2\n")
    assert v.post(0x70) is True and v.post(0x42) is False          # ON already set
    assert v.mem[0x8000 + 0x70 // 8] == 1 << (0x70 % 8) and v.mem[0x8020] & 1
    assert v.is_notification(0xF2) and not v.is_notification(0xF1)
    assert v.process_posted() == (1 << 0x70) | (1 << 0x42)
    assert v.mem[0x8000:0x8021] == bytes(33)                        # PIR and ON cleared
    assert v.rvi == 0x70 and v.virr == (1 << 0x70) | (1 << 0x42)


def test_icr_high_is_stored_without_an_exit_and_icr_low_traps(tmp_path):
    v = _vapic(tmp_path, APICV)
    w = v.xapic_access(0x310, 4, True, 0x01000000)
    assert w.kind == "write" and w.trap is None and v.reg(0x310) == 0x01000000
    w = v.xapic_access(0x300, 4, True, 0x4030)             # fixed, no shorthand: exits
    assert (w.trap.reason, w.trap.qualification) == (Exit.APIC_WRITE, 0x300)
