"""APIC virtualization seen from guests: virtualize APIC accesses, virtualize x2APIC mode,
APIC-register virtualization, virtual-interrupt delivery and posted interrupts.  Each test
runs a small 32-bit guest (flat, paging off: the LAPIC page is reachable without page
tables) and asserts the exits, their qualifications and what the guest saw."""

from __future__ import annotations

import json
import textwrap

from vmm_helpers import run

# 32-bit protected mode with paging off needs unrestricted guest (hence EPT)
BASE = """
[secondary]
enable_ept = true
unrestricted_guest = true
{secondary}
[entry]
ia32e_mode_guest = false
"""

# ---- guests -------------------------------------------------------------------------

PROLOGUE = """bits 32
org 0x100000
        jmp start
; gate VECTOR, HANDLER -- a 32-bit interrupt gate (the current CS) in `idt`
%macro gate 2
        mov eax, %2
        mov edi, idt + %1 * 8
        mov [edi], ax
        mov cx, cs
        mov [edi + 2], cx
        mov word [edi + 4], 0x8E00
        shr eax, 16
        mov [edi + 6], ax
%endmacro
"""

EPILOGUE = """
align 8
idtr:   dw 256 * 8 - 1
        dd idt
align 8
idt:    times 256 * 8 db 0
"""

# three accesses to the local APIC's page: read the version, write the TPR, read it back
ACCESS_GUEST = PROLOGUE + """
start:
a_version:
        mov eax, [0xFEE00030]
        mov ebx, eax
a_tpr_write:
        mov dword [0xFEE00080], 0x20
a_tpr_read:
        mov ecx, [0xFEE00080]
        xor eax, eax
        cmp ebx, 0x50014
        jne .a
        or al, 1
.a:     cmp ecx, 0x20
        jne .b
        or al, 2
.b:     out 0xF4, al
        hlt
""" + EPILOGUE


def _profile(tmp_path, body: str, secondary: str = "") -> str:
    p = tmp_path / "p.toml"
    p.write_text('[profile]\nname = "p"\nextends = "baseline"\n'
                 + BASE.format(secondary=textwrap.dedent(secondary)) + textwrap.dedent(body))
    return str(p)


def _guest(tmp_path, src: str) -> str:
    g = tmp_path / "g.asm"
    g.write_text(src)
    return str(g)


def _label(src: str, name: str) -> int:
    """Guest-physical address of the label `name` in the guest source."""
    from vmcfg.guests.asm import assemble_text
    return assemble_text(src, "g.asm").symbols[name]


def _run(tmp_path, body, src, secondary="", **kw):
    return run(_profile(tmp_path, body, secondary), _guest(tmp_path, src), mode=32, **kw)


# ---- virtualize APIC accesses ----------------------------------------------------------

def test_without_the_tpr_shadow_every_apic_page_access_exits_fault_like(tmp_path):
    res, recs = _run(tmp_path, "", ACCESS_GUEST, "virtualize_apic_accesses = true")
    # the default handler passes each access on to the local APIC: the guest reads the
    # real version register and the TPR it wrote
    assert res.status == "debug-exit" and res.guest_exit_code == 3, res.message
    assert [r["name"] for r in recs] == ["APIC_ACCESS"] * 3
    # qualification: bits 11:0 the page offset, bits 15:12 the access type (0 read, 1 write)
    assert [r["qualification"] for r in recs] == [0x030, 0x1080, 0x080]
    # fault-like: RIP is the accessing instruction, which has not retired
    rips = [_label(ACCESS_GUEST, n) for n in ("a_version", "a_tpr_write", "a_tpr_read")]
    assert [r["rip"] for r in recs] == rips
    assert [r["data"]["access"] for r in recs] == ["linear read", "linear write", "linear read"]
    # without the control the same guest runs without an exit and sees the same values
    res, recs = _run(tmp_path, "", ACCESS_GUEST)
    assert res.guest_exit_code == 3 and recs == []


def test_a_handler_can_emulate_an_apic_access_and_skip_it(tmp_path):
    def emulate(ctx):
        if ctx.qualification == 0x030:      # the version read: answered by the handler
            ctx.regs.rax = 0x50014
            ctx.skip()
        else:
            ctx.emulate()                   # the default: pass the access on

    res, recs = _run(tmp_path, "", ACCESS_GUEST, "virtualize_apic_accesses = true",
                     handlers={44: emulate})
    assert res.guest_exit_code == 3
    assert [r["qualification"] for r in recs] == [0x030, 0x1080, 0x080]


def test_with_the_tpr_shadow_tpr_accesses_are_virtualized_and_others_exit(tmp_path):
    res, recs = _run(tmp_path, "[primary]\nuse_tpr_shadow = true\n[apic]\nvtpr = 0x40\n"
                     "tpr_threshold = 3\n", ACCESS_GUEST, "virtualize_apic_accesses = true")
    assert res.guest_exit_code == 3, res.message
    # only the version read exits: the TPR write goes to VTPR, the read comes back from it;
    # 0x20 puts VTPR[7:4] = 2 below the threshold 3: a trap-like exit after the write
    assert [(r["name"], r["qualification"]) for r in recs] == [
        ("APIC_ACCESS", 0x030), ("TPR_BELOW_THRESHOLD", 0)]
    assert recs[1]["rip"] == _label(ACCESS_GUEST, "a_tpr_read")
    assert recs[1]["data"] == {"vtpr": 0x20, "tpr_threshold": 3}
    assert res.apicv["vtpr"] == 0x20


# ---- APIC-register virtualization and virtual-interrupt delivery (xAPIC) -----------------

VID_XAPIC_GUEST = PROLOGUE + """
start:
        gate 0x51, isr51
        lidt [idtr]
        mov eax, [0xFEE00030]           ; version: read from the virtual-APIC page
        mov [version], eax
v_lvt:  mov dword [0xFEE00320], 0x10040 ; LVT timer (masked): APIC-write exit
v_ppr:  mov eax, [0xFEE000A0]           ; PPR: not virtualized, exits
        sti
v_ipi:  mov dword [0xFEE00300], 0x40051 ; self IPI, fixed, vector 0x51: virtualized
        nop                             ; the virtual interrupt arrives before this
        cli
        mov eax, [count]
        cmp dword [version], 0x50014
        jne .bad
        add al, 0x10
.bad:   out 0xF4, al
        hlt
isr51:  inc dword [count]
v_eoi:  mov dword [0xFEE000B0], 0       ; virtual EOI: EOI-induced exit (vector 0x51)
        iret
align 4
count:  dd 0
version: dd 0
""" + EPILOGUE

APICV_XAPIC = """
[pin]
external_interrupt_exiting = true
[exit]
acknowledge_interrupt_on_exit = true
[primary]
use_tpr_shadow = true
[apic]
eoi_exit = [0x51]
"""
APICV_SECONDARY = """
virtualize_apic_accesses = true
apic_register_virtualization = true
virtual_interrupt_delivery = true
"""


def test_register_virtualization_virtual_interrupt_delivery_and_eoi_exit(tmp_path):
    res, recs = _run(tmp_path, APICV_XAPIC, VID_XAPIC_GUEST, APICV_SECONDARY)
    assert res.status == "debug-exit" and res.guest_exit_code == 0x11, res.message
    got = [(r["name"], r["qualification"]) for r in recs]
    assert got == [("APIC_WRITE", 0x320), ("APIC_ACCESS", 0x0A0), ("EOI_INDUCED", 0x51)]
    # APIC write and EOI-induced exits are trap-like: RIP is the next instruction
    assert recs[0]["rip"] == _label(VID_XAPIC_GUEST, "v_ppr")
    assert recs[1]["rip"] == _label(VID_XAPIC_GUEST, "v_ppr")
    assert recs[2]["rip"] == _label(VID_XAPIC_GUEST, "v_eoi") + 10
    # the virtual interrupt went through VIRR/VISR: nothing left requested or in service
    assert res.apicv["delivered"] == 1 and res.apicv["virtual_eois"] == 1
    assert res.apicv["virr"] == [] and res.apicv["visr"] == [] and res.apicv["svi"] == 0


def test_vectors_outside_the_eoi_exit_bitmap_end_without_an_exit(tmp_path):
    res, recs = _run(tmp_path, APICV_XAPIC.replace("eoi_exit = [0x51]", "eoi_exit = [0x52]"),
                     VID_XAPIC_GUEST, APICV_SECONDARY)
    assert res.guest_exit_code == 0x11
    assert [r["name"] for r in recs] == ["APIC_WRITE", "APIC_ACCESS"]


def test_without_register_virtualization_reads_exit_and_the_self_ipi_is_still_virtual(tmp_path):
    res, recs = _run(tmp_path, APICV_XAPIC, VID_XAPIC_GUEST,
                     APICV_SECONDARY.replace("apic_register_virtualization = true", ""))
    assert res.guest_exit_code == 0x11, res.message
    # version read and LVT write exit as APIC accesses (passed on to the LAPIC); ICR-low and
    # EOI writes are virtualized by virtual-interrupt delivery alone
    assert [(r["name"], r["qualification"]) for r in recs] == [
        ("APIC_ACCESS", 0x030), ("APIC_ACCESS", 0x1320), ("APIC_ACCESS", 0x0A0),
        ("EOI_INDUCED", 0x51)]


# ---- virtualize x2APIC mode ----------------------------------------------------------------

X2_GUEST = PROLOGUE + """
start:
        gate 0x61, isr61
        lidt [idtr]
        mov ecx, 0x1B                   ; x2APIC on (the local APIC itself)
        rdmsr
        or eax, 0xC00
        wrmsr
        mov ecx, 0x80F                  ; SVR: software-enable the local APIC
        mov eax, 0x1FF
        xor edx, edx
        wrmsr
        mov ecx, 0x808                  ; TPR 0x30: virtual
        mov eax, 0x30
        xor edx, edx
        wrmsr
        rdmsr
        mov [tpr], eax
        mov ecx, 0x80A                  ; PPR: virtual (register virtualization)
        rdmsr
        mov [ppr], eax
        sti
        mov ecx, 0x83F                  ; SELF IPI 0x61 (above the TPR class 3)
        mov eax, 0x61
x_ipi:  wrmsr
        nop
        cli
        mov eax, [count]
        cmp dword [tpr], 0x30
        jne .bad
        cmp dword [ppr], 0x30
        jne .bad
        add al, 0x10
.bad:   out 0xF4, al
        hlt
isr61:  push ecx
        push eax
        push edx
        inc dword [count]
        mov ecx, 0x80B
        xor eax, eax
        xor edx, edx
x_eoi:  wrmsr
        pop edx
        pop eax
        pop ecx
        iret
align 4
count:  dd 0
tpr:    dd 0
ppr:    dd 0
""" + EPILOGUE

APICV_X2 = """
[pin]
external_interrupt_exiting = true
[exit]
acknowledge_interrupt_on_exit = true
[primary]
use_tpr_shadow = true
[apic]
eoi_exit = [0x61]
"""
X2_SECONDARY = """
virtualize_x2apic_mode = true
apic_register_virtualization = true
virtual_interrupt_delivery = true
"""


def test_x2apic_virtualization_tpr_self_ipi_and_virtual_eoi(tmp_path):
    res, recs = _run(tmp_path, APICV_X2, X2_GUEST, X2_SECONDARY)
    assert res.status == "debug-exit" and res.guest_exit_code == 0x11, res.message
    assert [(r["name"], r["qualification"]) for r in recs] == [("EOI_INDUCED", 0x61)]
    assert recs[0]["rip"] == _label(X2_GUEST, "x_eoi") + 2
    assert res.apicv["vtpr"] == 0x30 and res.apicv["delivered"] == 1


def test_the_msr_bitmap_decides_before_x2apic_virtualization(tmp_path):
    res, recs = _run(tmp_path, APICV_X2 + "[msr]\nintercept_write = [0x83F]\n", X2_GUEST,
                     X2_SECONDARY)
    # the SELF IPI write exits (WRMSR); the default handler passes it to the local APIC,
    # whose interrupt then exits as an external interrupt: the VMM's default handler makes
    # it a virtual interrupt (VIRR), delivered through the IDT, virtual EOI exit as before
    assert res.guest_exit_code == 0x11, res.message
    got = [(r["name"], r["qualification"]) for r in recs]
    assert got == [("WRMSR", 0), ("EXTERNAL_INTERRUPT", 0), ("EOI_INDUCED", 0x61)]
    assert recs[0]["rip"] == _label(X2_GUEST, "x_ipi")
    assert recs[1]["interruption_info"] == 0x80000061


def test_without_virtualize_x2apic_mode_the_msrs_reach_the_local_apic(tmp_path):
    res, recs = _run(tmp_path, APICV_X2.replace("eoi_exit = [0x61]", ""), X2_GUEST,
                     "virtual_interrupt_delivery = true\n")
    # TPR 0x30 lands in the LAPIC (PPR = 0x30 too); the SELF IPI is a real interrupt that
    # exits (external-interrupt exiting, as VID requires) and comes back virtual
    assert res.guest_exit_code == 0x11, res.message
    assert [r["name"] for r in recs] == ["EXTERNAL_INTERRUPT"]
    assert res.apicv["vtpr"] == 0


# ---- posted interrupts -----------------------------------------------------------------------

PI_GUEST = PROLOGUE + """
start:
        gate 0x71, isr71
        lidt [idtr]
        mov ecx, 0x1B                   ; x2APIC on
        rdmsr
        or eax, 0xC00
        wrmsr
        mov ecx, 0x80F                  ; SVR: software-enable the local APIC
        mov eax, 0x1FF
        xor edx, edx
        wrmsr
        ; post vector 0x71 in the descriptor at 0x8000 as another CPU would: PIR, then ON
        or dword [0x8000 + 0x71 / 32 * 4], 1 << (0x71 % 32)
        or dword [0x8020], 1
        sti
        mov ecx, 0x83F                  ; the notification vector to itself (physical APIC)
        mov eax, 0xF2
        wrmsr
        nop
        cli
        mov eax, [count]
        cmp dword [0x8000 + 0x71 / 32 * 4], 0   ; PIR consumed
        jne .bad
        test dword [0x8020], 1                  ; ON cleared
        jnz .bad
        add al, 0x10
.bad:   out 0xF4, al
        hlt
isr71:  inc dword [count]
        iret
align 4
count:  dd 0
""" + EPILOGUE

APICV_PI = """
[pin]
external_interrupt_exiting = true
process_posted_interrupts = true
[exit]
acknowledge_interrupt_on_exit = true
[primary]
use_tpr_shadow = true
[posted_interrupts]
vector = 0xF2
[vmcs]
posted_intr_desc = 0x8000
"""


def test_posted_interrupt_notification_is_processed_without_an_exit(tmp_path):
    res, recs = _run(tmp_path, APICV_PI, PI_GUEST, "virtual_interrupt_delivery = true\n")
    assert res.status == "debug-exit" and res.guest_exit_code == 0x11, res.message
    assert recs == []                       # no external-interrupt exit for the notification
    assert res.apicv["posted"] == 1 and res.apicv["delivered"] == 1
    # the guest did not EOI the virtual APIC: 0x71 is still in service
    assert res.apicv["visr"] == [0x71] and res.apicv["svi"] == 0x71


def test_another_vector_than_the_notification_vector_exits(tmp_path):
    res, recs = _run(tmp_path, APICV_PI.replace("vector = 0xF2", "vector = 0xF3"), PI_GUEST,
                     "virtual_interrupt_delivery = true\n")
    # 0xF2 is an ordinary interrupt now: it exits, the VMM makes it virtual (no handler at
    # 0xF2: the guest's IDT entry is empty, so nothing counts 0x71 -- the PIR stays posted)
    assert [r["name"] for r in recs][:1] == ["EXTERNAL_INTERRUPT"]
    assert recs[0]["interruption_info"] == 0x800000F2
    assert res.apicv["posted"] == 0


def test_launch_json_reports_the_virtual_apic(tmp_path, cli=None):
    from click.testing import CliRunner
    from vmcfg.cli.main import cli as main
    prof = _profile(tmp_path, APICV_X2, X2_SECONDARY)
    g = _guest(tmp_path, X2_GUEST)
    trace = tmp_path / "t.jsonl"
    r = CliRunner().invoke(main, ["launch", prof, "--guest", g, "--mode", "32", "--json",
                                  "--trace", str(trace)])
    doc = json.loads(r.stdout)
    assert doc["guest_exit_code"] == 0x11
    assert doc["apicv"]["delivered"] == 1 and doc["apicv"]["vtpr"] == 0x30
    recs = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [(x["name"], x["qualification"]) for x in recs] == [("EOI_INDUCED", 0x61)]


FETCH_GUEST = PROLOGUE + """
start:
        mov eax, 0xFEE00040
        call eax                        ; code fetch from the APIC-access page
        out 0xF4, al
        hlt
""" + EPILOGUE


def test_a_code_fetch_from_the_apic_access_page_exits_with_access_type_2(tmp_path):
    def ret(ctx):                       # emulate a RET with EAX = 0x77 at the fetch
        r = ctx.regs
        r.rip = int.from_bytes(ctx.read(r.rsp, 4), "little")
        r.rsp += 4
        r.rax = 0x77

    res, recs = _run(tmp_path, "", FETCH_GUEST, "virtualize_apic_accesses = true",
                     handlers={44: ret})
    assert res.status == "debug-exit" and res.guest_exit_code == 0x77, res.message
    assert [(r["name"], r["qualification"], r["rip"]) for r in recs] == [
        ("APIC_ACCESS", 0x2040, 0xFEE00040)]
    assert recs[0]["data"]["access"] == "linear instruction fetch"
    # the default handler cannot run code from the APIC page: a clear error
    res, recs = _run(tmp_path, "", FETCH_GUEST, "virtualize_apic_accesses = true")
    assert res.status == "error" and "fetched code from the APIC-access page" in res.message


def test_an_apic_access_page_inside_guest_ram_is_a_clear_launch_error(tmp_path):
    from click.testing import CliRunner
    from vmcfg.cli.main import cli as main
    prof = _profile(tmp_path, "[vmcs]\napic_access_page = 0x9000\n",
                    "virtualize_apic_accesses = true")
    r = CliRunner().invoke(main, ["launch", prof, "--guest", _guest(tmp_path, ACCESS_GUEST),
                                  "--mode", "32"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)     # usage error
    assert "vmcs.apic_access_page = 0x9000 is inside guest RAM" in r.output
    assert "Traceback" not in r.output


CR8_GUEST = """bits 64
org 0x100000
        jmp start
%include "lib64.inc"
start:
        gate 0x51, isr51
        lidt [rel idtr]
        mov rax, 6
        mov cr8, rax                    ; VTPR 0x60: RVI 0x51 is held back
        sti
        nop
        nop
        mov ebx, [rel count]            ; 0: nothing delivered yet
        xor eax, eax
c_low:  mov cr8, rax                    ; VTPR 0: PPR virtualization, 0x51 delivered now
        nop
        cli
        mov eax, [rel count]
        shl ebx, 4
        or eax, ebx
        out 0xF4, al
        hlt
isr51:  inc dword [rel count]
        iretq
align 4
count:  dd 0
idtr:   dw 256 * 16 - 1
        dq idt
align 16
idt:    times 256 * 16 db 0
"""


def test_mov_to_cr8_under_vid_evaluates_pending_virtual_interrupts(tmp_path):
    """With virtual-interrupt delivery, TPR virtualization after MOV to CR8 is PPR
    virtualization and evaluation (no TPR-below-threshold exit): RVI 0x51 from apic.rvi
    waits while VTPR is 0x60 and is delivered right after VTPR drops to 0."""
    p = tmp_path / "p.toml"
    p.write_text('[profile]\nname = "p"\nextends = "baseline"\n' + textwrap.dedent("""
        [pin]
        external_interrupt_exiting = true
        [exit]
        acknowledge_interrupt_on_exit = true
        [primary]
        use_tpr_shadow = true
        [secondary]
        virtual_interrupt_delivery = true
        [apic]
        rvi = 0x51
        """))
    res, recs = run(str(p), _guest(tmp_path, CR8_GUEST))
    assert res.status == "debug-exit" and res.guest_exit_code == 0x01, res.message
    assert recs == []
    assert res.apicv["svi"] == 0x51 and res.apicv["visr"] == [0x51] and res.apicv["rvi"] == 0


X2_LVT_GUEST = PROLOGUE + """
start:
        mov ecx, 0x1B                   ; x2APIC on
        rdmsr
        or eax, 0xC00
        wrmsr
        mov ecx, 0x832                  ; LVT timer: not virtualized, the local APIC takes it
        mov eax, 0x10047
        xor edx, edx
        wrmsr
        rdmsr                           ; read back from the virtual-APIC page
        cmp eax, 0x10047
        sete al
        out 0xF4, al
        hlt
""" + EPILOGUE


def test_register_reads_follow_what_the_local_apic_took(tmp_path):
    """x2APIC mode virtualizes WRMSR only for TPR, EOI and SELF IPI: an LVT write reaches the
    local APIC; the VMM keeps the virtual-APIC page's copy, which RDMSR then reads."""
    res, recs = _run(tmp_path, APICV_X2, X2_LVT_GUEST, X2_SECONDARY)
    assert res.status == "debug-exit" and res.guest_exit_code == 1, res.message
    assert recs == []


APICV_BUNDLED = APICV_X2  # x2APIC virtualization with VID, EOI exit on 0x61


def test_bundled_apicv_guest_passes_on_the_plain_and_the_virtualized_apic(tmp_path):
    """builtin:apicv: the same TPR/self-IPI/EOI checks pass on the local APIC (no exit) and
    under x2APIC virtualization with virtual-interrupt delivery (one EOI-induced exit)."""
    p = tmp_path / "v.toml"
    p.write_text('[profile]\nname = "v"\nextends = "baseline"\n' + textwrap.dedent(APICV_BUNDLED)
                 + "[secondary]\n" + textwrap.dedent(X2_SECONDARY))
    res, recs = run("baseline", "builtin:apicv")
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    assert recs == [] and res.apicv is None
    res, recs = run(str(p), "builtin:apicv")
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    assert [(r["name"], r["qualification"]) for r in recs] == [("EOI_INDUCED", 0x61)]
    assert res.apicv["delivered"] == 2 and res.apicv["virtual_eois"] == 2
    assert res.console.count(" ok\n") == 4


def test_apic_virtualization_switched_on_by_a_live_change(tmp_path):
    """A handler applies the APIC-virtualization profile while the guest runs (at its SVR
    write): from then on TPR, SELF IPI and EOI go to the virtual APIC, whose register copy
    starts from the local APIC as it is then (x2APIC mode, SVR)."""
    from vmcfg.profile import resolve
    virt = tmp_path / "v.toml"
    virt.write_text('[profile]\nname = "v"\nextends = "baseline"\n' + textwrap.dedent(APICV_X2)
                    + "[secondary]\n" + textwrap.dedent(X2_SECONDARY))
    cfg = resolve(str(virt), cpu="cvmm").config
    plain = tmp_path / "p.toml"
    plain.write_text('[profile]\nname = "p"\nextends = "baseline"\n[msr]\nintercept_write = [0x80F]\n')

    def switch(ctx):
        ctx.emulate()                   # the SVR write reaches the local APIC
        ctx.apply(cfg)

    res, recs = run(str(plain), "builtin:apicv", handlers={32: switch})
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    assert [r["name"] for r in recs] == ["WRMSR", "EOI_INDUCED"]
    assert res.apicv["delivered"] == 2 and res.apicv["vtpr"] == 0
