"""Events, time and memory in the emulated VMM (issue #5): PIT/PIC interrupts,
external-interrupt / interrupt-window / NMI exiting, NMIs (--nmi-at, live),
event injection from handlers, the preemption timer's exact expiry."""

from __future__ import annotations

import io
import json
import textwrap

import pytest

TIMER_PERIOD = 5000


def _profile(tmp_path, body: str, name: str = "ev") -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(textwrap.dedent(f"""\
        [profile]
        name = "{name}"
        extends = "baseline"
        """) + textwrap.dedent(body))
    return str(p)


def _run(profile: str, guest: str = "builtin:timer", *, nmi_at=None, handlers=None,
         on_vcpu=None, max_instructions=2_000_000):
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    r = resolve(profile, cpu="cvmm")
    assert r.valid, [v.message for v in r.errors]
    img = load_image(guest, load_address=0x100000, mode=64)
    buf = io.StringIO()
    res = run_guest(r.config, img, memory=16 << 20, mode=64, handlers=handlers, trace=buf,
                    max_instructions=max_instructions, nmi_at=nmi_at, on_vcpu=on_vcpu)
    return res, [json.loads(x) for x in buf.getvalue().splitlines()]


def _counts(res) -> dict[str, int]:
    out = {}
    for key in ("ticks", "nmis", "soft"):
        out[key] = int(res.console.split(key + "=")[1].split()[0], 16)
    return out


# ---- the PIT/PIC interrupt source and delivery through the guest IDT -------------------
def test_pit_interrupts_are_delivered_through_the_guest_idt(tmp_path):
    res, recs = _run(_profile(tmp_path, ""))
    assert res.status == "debug-exit"
    assert res.guest_exit_code == 1            # phase 3: missed periods collapse into one IRQ
    assert _counts(res) == {"ticks": 7, "nmis": 0, "soft": 0}
    assert recs == []                          # no exit: the guest takes its own interrupts
    # deterministic virtual time: HLT waited for the PIT (TSC ran ahead of instructions)
    assert (res.instructions, res.tsc) == (31624, 46597)


def test_external_interrupt_exiting_with_acknowledge(tmp_path):
    res, recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        [exit]
        acknowledge_interrupt_on_exit = true
        """))
    assert res.status == "debug-exit"
    assert [r["name"] for r in recs] == ["EXTERNAL_INTERRUPT"] * 8
    assert all(r["interruption_info"] == 0x80000020 for r in recs)   # valid, type 0, vector 0x20
    assert all(r["data"] == {"vector": 0x20, "acknowledged": True} for r in recs)
    assert _counts(res)["ticks"] == 8
    # the exits come while the guest runs with IF=0 too (phase 3), one per PIC IRR edge
    assert res.guest_exit_code == 2


def test_external_interrupt_exiting_without_acknowledge_leaves_it_pending(tmp_path):
    seen = []

    def on_ext(ctx):
        v = ctx.vcpu
        seen.append((ctx.exit.interruption_info, v.platform.pic.master.irr, v.platform.pic.master.isr))
        ctx.emulate()                      # the default: acknowledge, reflect into the guest

    res, recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        """), handlers={1: on_ext})
    assert res.status == "debug-exit"
    assert len(recs) == 8 and "interruption_info" not in recs[0]
    # still requested in the PIC (IRR bit 0), not in service
    assert seen[0] == (0, 1, 0)


def test_interrupt_window_exit_when_the_guest_can_take_interrupts(tmp_path):
    res, recs = _run(_profile(tmp_path, """
        [primary]
        interrupt_window_exiting = true
        """))
    assert [r["name"] for r in recs] == ["INTERRUPT_WINDOW"]
    sti_rip = recs[0]["rip"]
    # after STI and the one instruction of its shadow (cmp), before the jb
    assert recs[0]["instructions"] == 47       # STI is instruction 46, CMP its shadow
    assert res.status == "debug-exit" and _counts(res)["ticks"] == 7
    assert sti_rip > 0x100000


def test_hlt_with_if_off_and_nothing_pending_still_halts():
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    r = resolve("baseline", cpu="cvmm")
    res = run_guest(r.config, load_image("builtin:hlt", load_address=0x100000, mode=64),
                    memory=16 << 20, mode=64)
    assert res.status == "halted"


# ---- NMIs ----------------------------------------------------------------------------------
def test_nmi_at_is_delivered_through_vector_2(tmp_path):
    res, recs = _run(_profile(tmp_path, ""), nmi_at=100)
    assert recs == []
    assert _counts(res) == {"ticks": 7, "nmis": 1, "soft": 0}


def test_nmi_exiting_reports_the_nmi_and_the_default_handler_reflects_it(tmp_path):
    res, recs = _run(_profile(tmp_path, """
        [pin]
        nmi_exiting = true
        """), nmi_at=100)
    assert [r["name"] for r in recs] == ["EXCEPTION_NMI"]
    assert recs[0]["instructions"] == 100
    assert recs[0]["tsc"] == 100 + 1000
    assert recs[0]["interruption_info"] == 0x80000202     # valid, type NMI, vector 2
    assert _counts(res)["nmis"] == 1


def test_nmi_window_exiting_with_virtual_nmis(tmp_path):
    res, recs = _run(_profile(tmp_path, """
        [pin]
        nmi_exiting = true
        virtual_nmis = true
        [primary]
        nmi_window_exiting = true
        """), nmi_at=100)
    # no virtual-NMI blocking at entry: the window is open at once; the default handler
    # turns the control off; then the NMI exit
    assert [(r["name"], r["instructions"]) for r in recs] == [("NMI_WINDOW", 0),
                                                             ("EXCEPTION_NMI", 100)]
    assert _counts(res)["nmis"] == 1


def test_nmi_blocked_until_iret(tmp_path):
    # NMI 1 at instruction 30 (after LIDT); NMI 2 arrives inside its handler (after the INC)
    # and waits until the handler's IRETQ has completed.  MTF shows every boundary.
    seen = []

    def mtf(ctx):
        v = ctx.vcpu
        seen.append((ctx.instructions, v.rip, v._nmi_blocked, v.events_delivered))
        if ctx.instructions == 31:
            v.queue_event("nmi", 2)

    res, _recs = _run(_profile(tmp_path, """
        [primary]
        monitor_trap_flag = true
        """), nmi_at=30, handlers={37: mtf}, max_instructions=36)
    assert res.status == "instruction-limit"
    nmi_handler, iretq, after = 0x100228, 0x10022F, 0x10013F
    assert seen[29:35] == [
        (30, after, False, 0),          # MOV AL,0x11 done; NMI 1 delivered after this exit
        (31, iretq, True, 1),           # INC in the handler; NMI 2 queued here: blocked
        (32, after, False, 1),          # IRETQ completed: unblocked, NMI 2 delivered next
        (33, iretq, True, 2),
        (34, after, False, 2),
        (35, after + 2, False, 2),
    ]
    assert nmi_handler < iretq


def test_live_queue_event_irq_waits_for_if(tmp_path):
    # queued before the first instruction: taken at the first boundary with IF=1 (after STI)
    res, recs = _run(_profile(tmp_path, ""), on_vcpu=lambda v: v.queue_event("irq", 0x40))
    assert recs == []
    assert _counts(res) == {"ticks": 7, "nmis": 0, "soft": 1}


def test_live_nmi_before_the_idt_exists_is_a_triple_fault(tmp_path):
    res, recs = _run(_profile(tmp_path, ""), on_vcpu=lambda v: v.queue_event("nmi", 2))
    assert res.status == "triple-fault"
    assert [(r["name"], r["instructions"]) for r in recs] == [("TRIPLE_FAULT", 0)]


def test_queue_event_rejects_bad_events(tmp_path):
    from vmcfg.profile import resolve
    from vmcfg.vmm.vcpu import Vcpu
    v = Vcpu(resolve("baseline", cpu="cvmm").config, memory=1 << 20, mode=64)
    with pytest.raises(ValueError):
        v.queue_event("smi", 0)
    with pytest.raises(ValueError):
        v.queue_event("irq", 3)


# ---- event injection from exit handlers ---------------------------------------------------
def test_handler_injects_an_external_interrupt(tmp_path):
    def on_ext(ctx):
        ctx.inject_event("external", ctx.exit.interruption_info & 0xFF)

    res, recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        [exit]
        acknowledge_interrupt_on_exit = true
        """), handlers={1: on_ext})
    assert res.status == "debug-exit"
    assert [r["name"] for r in recs] == ["EXTERNAL_INTERRUPT"] * 10
    # injection ignores RFLAGS.IF: phase 3 takes every interrupt while IF=0
    assert res.guest_exit_code == 3


@pytest.mark.parametrize("args,rule", [
    (("nmi", 3), "N4"),
    (("hw_exception", 0x40), "N4"),
    (("hw_exception", 13), "N5"),
    (("sw_interrupt", 0x40, None, 16), "N8"),
])
def test_injection_is_checked_with_the_n_rules(tmp_path, args, rule):
    def on_ext(ctx):
        ctx.inject_event(*args)

    res, _recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        """), handlers={1: on_ext})
    assert res.status == "error"
    assert f"[{rule}]" in res.message


def test_injected_hardware_exception_with_error_code(tmp_path):
    def on_ext(ctx):
        ctx.emulate()
        ctx.inject_event("hw_exception", 13, error_code=0)   # no #GP gate: #DF, triple fault

    res, recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        """), handlers={1: on_ext})
    assert res.status == "triple-fault"
    assert [r["name"] for r in recs] == ["EXTERNAL_INTERRUPT", "TRIPLE_FAULT"]


def test_injected_software_interrupt(tmp_path):
    hits = []

    def on_ext(ctx):
        ctx.emulate()
        if not hits:
            hits.append(1)
            # the return address is RIP + instruction length: length 0 resumes where it was
            ctx.inject_event("sw_interrupt", 0x40, instruction_length=0)

    res, _recs = _run(_profile(tmp_path, """
        [pin]
        external_interrupt_exiting = true
        """), handlers={1: on_ext})
    assert res.status == "debug-exit"
    assert _counts(res)["soft"] == 1


# ---- VMX-preemption timer -----------------------------------------------------------------
@pytest.mark.parametrize("value,first,second", [(10, 320, 632), (1, 32, 32 + (1056 - 1032))])
def test_preemption_timer_expires_at_the_documented_instruction(tmp_path, value, first, second):
    # fire = ((tsc >> 5) + value) << 5 from each VM entry; 1 tick per instruction,
    # 1000 per exit
    res, recs = _run(_profile(tmp_path, f"""
        [pin]
        activate_vmx_preemption_timer = true
        [preemption_timer]
        value = {value}
        """), guest="builtin:preempt", max_instructions=1000)
    p = [r for r in recs if r["name"] == "PREEMPTION_TIMER"]
    assert [r["instructions"] for r in p[:2]] == [first, second]


def test_preemption_timer_zero_exits_before_the_first_instruction(tmp_path):
    def stop(ctx):
        ctx.end()
    res, recs = _run(_profile(tmp_path, """
        [pin]
        activate_vmx_preemption_timer = true
        [preemption_timer]
        value = 0
        """), guest="builtin:preempt", handlers={52: stop})
    assert [(r["name"], r["instructions"]) for r in recs] == [("PREEMPTION_TIMER", 0)]


# ---- EPT violation qualification, --nmi-at on the command line ----------------------------
@pytest.mark.parametrize("src,region,qual", [
    # read of an unmapped page: R access, no permissions, linear address valid + translation
    ("mov rax, [0x300000]", None, 0x1 | 0x80 | 0x100),
    # write to a read-only page: W access, page readable
    ("mov [0x300000], rax", "r", 0x2 | 0x8 | 0x80 | 0x100),
])
def test_ept_violation_qualification(tmp_path, src, region, qual):
    regions = '{ base = 0x0, size = "2M", access = "rwx" }'
    if region:
        regions += f', {{ base = 0x300000, size = "4K", access = "{region}" }}'
    prof = _profile(tmp_path, f"""
        [secondary]
        enable_ept = true
        [ept]
        regions = [{regions}]
        on_violation = "stop"
        """)
    g = tmp_path / "g.asm"
    g.write_text(f"{src}\nmov al, 9\nout 0xf4, al\n")
    res, recs = _run(prof, str(g))
    assert res.status == "error"
    assert [r["name"] for r in recs] == ["EPT_VIOLATION"]
    assert recs[0]["qualification"] == qual
    assert recs[0]["guest_physical_address"] == 0x300000
    assert recs[0]["guest_linear_address"] == 0x300000


def test_launch_nmi_at_option(tmp_path):
    from click.testing import CliRunner
    from vmcfg.cli.main import cli
    r = CliRunner().invoke(cli, ["launch", _profile(tmp_path, """
        [pin]
        nmi_exiting = true
        """), "--guest", "builtin:timer", "--nmi-at", "100", "--json"])
    d = json.loads(r.stdout)
    assert d["status"] == "debug-exit"
    assert d["exits"][0] == {"reason": 0, "name": "EXCEPTION_NMI", "count": 1}
    assert "nmis=0x0000000000000001" in d["console"]


IRQ32 = """\
BITS 32
start:
  mov eax, handler
  mov edi, 0x200000
  mov word [edi+0x100], ax
  mov word [edi+0x102], 0x18
  mov word [edi+0x104], 0x8E00
  shr eax, 16
  mov word [edi+0x106], ax
  mov word [0x201000], 0x7ff
  mov dword [0x201002], 0x200000
  lidt [0x201000]
  mov al, 0x34
  out 0x43, al
  mov al, 0xd0
  out 0x40, al
  mov al, 7
  out 0x40, al
  sti
spin:
  cmp dword [0x202000], 3
  jb spin
  mov al, byte [0x202000]
  out 0xf4, al
handler:
  inc dword [0x202000]
  push eax
  mov al, 0x20
  out 0x20, al
  pop eax
  iretd
"""


def test_pit_interrupt_delivery_in_32_bit_protected_mode(tmp_path):
    """32-bit interrupt gates (selector 0x18): 3 PIT interrupts, each with EOI and IRETD."""
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    prof = _profile(tmp_path, """
        [secondary]
        enable_ept = true
        unrestricted_guest = true
        [entry]
        ia32e_mode_guest = false
        """)
    g = tmp_path / "irq32.asm"
    g.write_text(IRQ32)
    cfg = resolve(prof, cpu="cvmm").config
    res = run_guest(cfg, load_image(str(g), load_address=0x100000, mode=32), memory=16 << 20,
                    mode=32, max_instructions=100_000)
    assert res.status == "debug-exit" and res.guest_exit_code == 3
    assert res.exits == []
    assert res.instructions == 6025


# ---- MTF stepping under a handler, PAUSE-loop exiting in TSC ticks ---------------------------
def test_mtf_handler_steps_then_turns_it_off(tmp_path):
    seen = []

    def mtf(ctx):
        seen.append(ctx.instructions)
        if len(seen) == 5:
            ctx.set_control("primary.monitor_trap_flag", False)

    res, recs = _run(_profile(tmp_path, """
        [primary]
        monitor_trap_flag = true
        """), handlers={37: mtf})
    assert seen == [1, 2, 3, 4, 5]
    assert [r["name"] for r in recs] == ["MONITOR_TRAP_FLAG"] * 5
    assert res.status == "debug-exit"


def test_pause_loop_exiting_gap_and_window_in_tsc_ticks(tmp_path):
    # PAUSE every 3 instructions (3 ticks <= gap 128): one loop; it exits once the loop has
    # lasted more than `window` = 100 ticks (the 35th PAUSE, 102 ticks after the first);
    # the exit's 1000 ticks exceed the gap, so the next PAUSE starts a new loop
    g = tmp_path / "pause.asm"
    g.write_text("mov rsi, 200\nl:\npause\ndec rsi\njnz l\nmov al, 0\nout 0xf4, al\n")
    res, recs = _run(_profile(tmp_path, """
        [secondary]
        pause_loop_exiting = true
        [ple]
        gap = 128
        window = 100
        """), str(g))
    assert res.status == "debug-exit"
    at = [r["instructions"] for r in recs]
    assert [r["name"] for r in recs] == ["PAUSE"] * 5
    assert at == [1 + 3 * 34 + 3 * 35 * k for k in range(5)]


IRQ16 = """\
BITS 16
start:
  xor ax, ax
  mov ds, ax
  mov word [0x20], handler
  mov word [0x22], 0
  mov al, 0x34
  out 0x43, al
  mov al, 0xd0
  out 0x40, al
  mov al, 7
  out 0x40, al
  sti
spin:
  cmp word [0x9000], 3
  jb spin
  mov al, byte [0x9000]
  out 0xf4, al
handler:
  inc word [0x9000]
  push ax
  mov al, 0x20
  out 0x20, al
  pop ax
  iret
"""


def test_pit_interrupt_delivery_in_real_mode_through_the_ivt(tmp_path):
    """Real mode: IVT entry 0x08 at 0x20 (IRQ 0 at the BIOS's PIC base 0x08), 3 PIT
    interrupts with EOI and IRET."""
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    g = tmp_path / "irq16.asm"
    g.write_text(IRQ16)
    cfg = resolve("real-mode", cpu="cvmm").config
    res = run_guest(cfg, load_image(str(g), load_address=0x7C00, mode=16), memory=16 << 20,
                    mode=16, max_instructions=100_000)
    assert res.status == "debug-exit" and res.guest_exit_code == 3
    assert res.exits == []
    assert res.instructions == 6019


def test_vpid_is_accepted_and_reported(tmp_path):
    res, _recs = _run(_profile(tmp_path, """
        [secondary]
        enable_vpid = true
        [vpid]
        id = 7
        """))
    assert res.status == "debug-exit"
    assert res.to_json()["vpid"] == 7
    res, _recs = _run(_profile(tmp_path, "", name="novpid"))
    assert "vpid" not in res.to_json()


SPIN64 = """\
  mov rax, handler
  mov rdi, 0x200400
  mov word [rdi], ax
  mov word [rdi+2], 8
  mov word [rdi+4], 0x8E00
  shr rax, 16
  mov word [rdi+6], ax
  shr rax, 16
  mov dword [rdi+8], eax
  mov word [0x201000], 0xfff
  mov qword [0x201002], 0x200000
  lidt [0x201000]
  sti
spin:
  jmp spin
handler:
  mov al, 0x40
  out 0xf4, al
"""


def test_queue_event_from_another_thread_reaches_a_running_guest(tmp_path):
    import threading
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    g = tmp_path / "spin.asm"
    g.write_text(SPIN64)
    vcpus, out = [], {}
    cfg = resolve("baseline", cpu="cvmm").config
    img = load_image(str(g), load_address=0x100000, mode=64)
    from conftest import PATIENCE, wait_until
    # the timeout is only a safety net: the guest ends as soon as the interrupt arrives
    th = threading.Thread(target=lambda: out.setdefault("res", run_guest(
        cfg, img, memory=16 << 20, mode=64, timeout=PATIENCE, on_vcpu=vcpus.append)))
    th.start()
    wait_until(lambda: vcpus and vcpus[0].counter.count >= 100_000, "the guest to spin")
    vcpus[0].queue_event("irq", 0x40)
    th.join()
    res = out["res"]
    assert res.status == "debug-exit" and res.guest_exit_code == 0x40


def test_mov_ss_blocks_interrupts_for_one_instruction(tmp_path):
    """200 PIT interrupts hit a loop of 'mov ss, ax / nop' (period chosen so that,
    without blocking by MOV SS, almost every one would land on the NOP): none is
    delivered inside the MOV SS shadow."""
    res, _ = _run(_profile(tmp_path, ""), "builtin:movss")
    assert res.status == "debug-exit" and res.guest_exit_code == 0, res.console
    assert "interrupts 0x00000000000000c8, inside the MOV SS shadow 0x0000000000000000" in res.console


def test_engine_runs_are_counted_by_what_ended_them(tmp_path):
    # the breakdown bench/linux_boot.py --breakdown prints: every emu_start has one cause,
    # the PIT's interrupts come from the block counter's timer deadline, the guest's first
    # fetches make its pages code, and the run ends with the debug-exit port
    box = {}
    res, _recs = _run(_profile(tmp_path, ""), on_vcpu=lambda v: box.setdefault("v", v))
    assert res.status == "debug-exit"
    st = box["v"].stops
    between = {k for k in st.counts if k == "exit at VM entry" or k.endswith("between runs")}
    assert sum(n for k, n in st.counts.items() if k not in between) == st.runs
    assert st.counts["device timer deadline"] >= 1
    assert st.counts["fetch"] >= 1 and st.counts["end"] == 1
    assert 0 < st.engine_seconds <= res.wall_seconds
    assert st.to_json()["engine_runs"] == st.runs
