"""Python exit handlers called from the native hook (issue 14, vcpu/leanexit.py): a CPUID,
RDTSC or IN/OUT exit with a user handler runs that handler without stopping the engine, and
everything the handler API offers gives the same results as the full trap path.

Every guest runs twice, with the C helper and with VMCFG_NO_NATIVE=1: what the handlers saw
(the exit record, registers, counts, virtual time) and how the run ended must agree exactly;
where the helper is built, the native run must have taken the lean path (state.lean).
"""

from __future__ import annotations

import pytest

from test_native_exit import BUILT, LOOP, TIMER_LOOP, _cfg, _image, _run
from vmcfg.vmx.exits import Exit


def _lean(v) -> int:
    return v.fx.state.lean


def _seen(ctx) -> tuple:
    """Everything a handler can observe about its exit (no host times)."""
    r = ctx.regs
    return (ctx.reason, ctx.name, ctx.qualification, ctx.instruction_length,
            ctx.instructions, ctx.tsc, ctx.guest_tsc, ctx.resume_rip, ctx.exit.to_json(),
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.r9, r.rip, r.rflags, r.eax, r.cr4,
            ctx.vcpu.exit_stats[ctx.reason].count)


def _both(cfg, image, monkeypatch, make_handlers, **kw):
    """Run with the helper and without it; both runs agree (result, registers, what the
    handlers saw); returns (native result, native vcpu, what its handlers saw)."""
    out = []
    for python in (True, False):
        log: list = []
        res, regs, v = _run(cfg, image, monkeypatch, python=python,
                            handlers=make_handlers(log), **kw)
        out.append((res, regs, v, log))
    (rp, gp, vp, lp), (rn, gn, vn, ln) = out
    assert (rn.status, rn.guest_exit_code, rn.instructions, rn.tsc, rn.message) == \
        (rp.status, rp.guest_exit_code, rp.instructions, rp.tsc, rp.message)
    assert rn.exit_counts() == rp.exit_counts() and rn.exit_order == rp.exit_order
    assert gn == gp
    assert ln == lp
    assert _lean(vp) == 0
    return rn, vn, ln


MIXED = ("mov eax, esi\nand eax, 3\nxor ecx, ecx\ncpuid\nadd r9, rbx\n"
         "rdtsc\nadd r9, rax\n"
         "mov eax, esi\nout 0x80, al\nin al, 0x80\nadd r9, rax\n"
         "mov dx, 0x3ff\nout dx, al\nin al, dx\nadd r9, rax\n")


def _mixed_cfg(**kw):
    return _cfg("baseline", "primary.rdtsc_exiting", "primary.use_tsc_offsetting",
                io_ports=[(0x80, 0x80), (0x3F8, 0x3FF)], tsc={"offset": 777}, **kw)


def _emulating(log):
    """Handlers on CPUID, RDTSC and I/O that record what they see, emulate, and record the
    result."""
    def h(ctx):
        log.append(_seen(ctx))
        ctx.emulate()
        log.append((ctx.resume_rip, ctx.regs.rax, ctx.regs.rdx))
    return {Exit.CPUID: h, Exit.RDTSC: h, Exit.IO_INSTRUCTION: h}


def test_emulating_handlers_see_the_same_exits_both_ways(monkeypatch):
    """Handlers on CPUID, RDTSC and I/O that record what they see and emulate: the same
    records, registers and virtual time with and without the helper; natively they run from
    the hook (all but each reason's first exit)."""
    n = 300
    res, v, log = _both(_mixed_cfg(), _image(LOOP.format(n=n, body=MIXED)), monkeypatch,
                        _emulating)
    assert res.status == "debug-exit"
    assert res.exit_counts() == {"CPUID": n, "RDTSC": n, "IO_INSTRUCTION": 4 * n}
    assert len(log) == 2 * 6 * n
    if BUILT:
        assert _lean(v) >= 6 * n - 12      # the first exit at each address: the full path


def test_handlers_that_write_registers_and_skip(monkeypatch):
    """A handler that answers CPUID itself (registers, then skip) and one that emulates an IN
    only on odd exits and otherwise leaves RIP alone (the instruction exits again)."""
    def make(log):
        def cpuid(ctx):
            r = ctx.regs
            r.rbx = ctx.exit.seq
            r.eax = 0xFFFFFFFF
            r.rcx = r.rcx + 1
            ctx.skip()
            log.append((ctx.resume_rip, r.rbx, r.rax))

        def io(ctx):
            log.append((ctx.exit.seq, ctx.exit.data, ctx.qualification))
            if ctx.exit.seq & 1:
                ctx.emulate()
        return {Exit.CPUID: cpuid, Exit.IO_INSTRUCTION: io}
    body = "xor ecx, ecx\ncpuid\nadd r9, rbx\nadd r9, rax\nadd r9, rcx\nin al, 0x80\nadd r9, rax"
    res, v, log = _both(_cfg("baseline", io_ports=[(0x80, 0x80)]),
                        _image(LOOP.format(n=200, body=body)), monkeypatch, make)
    assert res.exit_counts()["CPUID"] == 200
    assert res.exit_counts()["IO_INSTRUCTION"] > 200       # the re-executed INs exit again
    if BUILT:
        assert _lean(v) > 300


@pytest.mark.parametrize("how", ["end", "end-halted", "inject", "raise", "control", "event"])
def test_what_a_handler_asks_of_the_run_loop(monkeypatch, how):
    """At the 50th RDTSC exit the handler ends the run, injects #UD, raises, turns CPUID
    exiting's partner (RDTSC exiting) off, or queues an event injection: both paths agree
    on the outcome; the exits before it ran from the hook."""
    def make(log):
        def h(ctx):
            seq = ctx.exit.seq
            log.append((seq, ctx.instructions, ctx.tsc))
            ctx.emulate()
            if len(log) != 50:
                return
            if how == "end":
                ctx.end(7)
            elif how == "end-halted":
                ctx.end()
            elif how == "inject":
                ctx.inject(6)
            elif how == "raise":
                raise ValueError("handler gave up")
            elif how == "control":
                ctx.set_control("primary.rdtsc_exiting", False)
            elif how == "event":
                ctx.inject_event("hw_exception", 6)
        return {Exit.RDTSC: h}
    body = "rdtsc\nadd r9, rax\nxor eax, eax\ncpuid"
    res, v, log = _both(_cfg("baseline", "primary.rdtsc_exiting"),
                        _image(LOOP.format(n=100, body=body)), monkeypatch, make)
    if how == "end":
        assert (res.status, res.guest_exit_code) == ("debug-exit", 7)
    elif how == "end-halted":
        assert res.status == "halted"
    elif how == "raise":
        assert res.status == "error" and "exit handler for RDTSC raised ValueError" in res.message
    elif how == "control":
        assert res.status == "debug-exit" and res.exit_counts()["RDTSC"] == 50
    else:
        assert res.exit_counts()["RDTSC"] == 50     # #UD without an IDT ends the run
    if BUILT:
        assert _lean(v) >= 48


def test_handler_exits_while_a_device_timer_is_armed(monkeypatch):
    """A CPUID handler while the PIT interrupts the loop every 5,000 ticks: after each exit
    the engine stops to look at the timer (as the full path does), and the interrupts come
    at the same instructions both ways."""
    def make(log):
        def h(ctx):
            log.append((ctx.exit.seq, ctx.instructions, ctx.regs.r8))
            ctx.emulate()
        return {Exit.CPUID: h}
    res, v, log = _both(_cfg(), _image(TIMER_LOOP), monkeypatch, make)
    assert res.status == "debug-exit" and res.exit_counts()["CPUID"] == 3000
    assert 300 < v.gpr(8) < 1000
    if BUILT:
        assert _lean(v) > 2000


def test_trace_and_stats_with_a_handler(monkeypatch):
    """Exit counts and the per-reason totals add up the same way: a traced run (full path)
    and an untraced one (lean path) count every exit once."""
    import io
    im = _image(LOOP.format(n=400, body="xor eax, eax\ncpuid"))
    seen = []
    res, _g, v = _run(_cfg(), im, monkeypatch, python=False,
                      handlers={Exit.CPUID: lambda ctx: (seen.append(ctx.exit.seq), ctx.emulate())})
    assert seen == list(range(1, 401)) and res.exit_counts()["CPUID"] == 400
    assert v.exit_stats[Exit.CPUID].count == 400 and v.exit_stats[Exit.CPUID].seconds > 0
    buf = io.StringIO()
    res2, _g, v2 = _run(_cfg(), im, monkeypatch, python=False, trace=buf,
                        handlers={Exit.CPUID: lambda ctx: ctx.emulate()})
    assert res2.exit_counts() == res.exit_counts() and res2.tsc == res.tsc
    assert buf.getvalue().count('"CPUID"') == 400
    if BUILT:
        assert _lean(v) >= 398 and _lean(v2) == 0


def _irqbench(monkeypatch, *, python: bool, trace=None, controls=("pin.external_interrupt_exiting",
                                                                 "exit.acknowledge_interrupt_on_exit")):
    from vmcfg.vmm.loader import load_image
    cfg = _cfg("baseline", *controls)
    return _run(cfg, load_image("builtin:irqbench"), monkeypatch, python=python, trace=trace,
                max_instructions=300_000)


def test_external_interrupt_exits_with_the_default_handler_agree(monkeypatch):
    """builtin:irqbench's PIT interrupts under external-interrupt exiting with acknowledge-on-
    exit and the default handler: each one exits and is reflected into the guest through its
    IDT.  Natively that is done at the soft deadline inside the engine (_lean_extint); the
    Python path, a traced native run (the full exit path) and the lean one agree on the exits,
    the instructions, the virtual time and the guest's registers."""
    import io
    rp, gp, vp = _irqbench(monkeypatch, python=True)
    rn, gn, vn = _irqbench(monkeypatch, python=False)
    rt, gt, vt = _irqbench(monkeypatch, python=False, trace=io.StringIO())
    assert rp.status == "instruction-limit"
    n = rp.exit_counts()["EXTERNAL_INTERRUPT"]
    assert n > 250
    for r, g in ((rn, gn), (rt, gt)):
        assert (r.status, r.instructions, r.tsc, r.exits, r.exit_order) == \
            (rp.status, rp.instructions, rp.tsc, rp.exits, rp.exit_order)
        assert g == gp
    assert vn.events_delivered == vp.events_delivered == vt.events_delivered
    assert vp.lean_extints == 0 and vt.lean_extints == 0
    if BUILT:
        assert vn.lean_extints >= n - 5


@pytest.mark.parametrize("limit", [None, 3_000])
def test_handler_exits_between_mtf_steps_agree(monkeypatch, limit):
    """Monitor trap flag (its default handler) with Python handlers on CPUID, RDTSC and OUT:
    every instruction still gets its MTF exit, in the same order and virtual time both ways
    (the run loop looks at every boundary then, so these exits take the full path)."""
    def make(log):
        def h(ctx):
            log.append((ctx.exit.seq, ctx.instructions, ctx.tsc, ctx.name))
            ctx.emulate()
        return {Exit.CPUID: h, Exit.RDTSC: h, Exit.IO_INSTRUCTION: h}
    cfg = _cfg("baseline", "primary.monitor_trap_flag", "primary.rdtsc_exiting",
               io_ports=[(0x80, 0x80)])
    body = "nop\nrdtsc\nadd r9, rax\nxor eax, eax\ncpuid\nout 0x80, al\nmov ecx, 3\ninner: loop inner"
    res, v, log = _both(cfg, _image(LOOP.format(n=300, body=body)), monkeypatch, make,
                        max_instructions=limit)
    counts = res.exit_counts()
    assert counts["MONITOR_TRAP_FLAG"] == res.instructions - (1 if limit is None else 0)
    assert counts["CPUID"] == len([e for e in log if e[3] == "CPUID"]) > 0


@pytest.mark.skipif(not BUILT, reason="the C helper is not built")
def test_lean_hook_reads_the_full_snapshot_for_the_trap_path(monkeypatch):
    """The lean hook reads only the registers it passes (RAX RCX RDX RIP); should the Python
    side fall back to its full trap path, `read_snapshot` fills in the rest first: the
    snapshot then holds the guest's RBX and R15 at the exit."""
    seen = []

    def h(ctx):
        v = ctx.vcpu
        st = v.fx.state
        st.snap[3] = st.snap[15] = 0
        v.fx.read_snapshot(v._uch)
        seen.append((st.snap[3], st.snap[15], st.snap[16] == ctx.regs.rip))
        ctx.emulate()
    body = "mov rbx, 0x1234567\nmov r15, rsi\nxor eax, eax\ncpuid\n"
    res, _regs, v = _run(_cfg(), _image(LOOP.format(n=5, body=body)), monkeypatch,
                         python=False, handlers={Exit.CPUID: h})
    assert res.status == "debug-exit"
    assert _lean(v) >= 3               # (the first exits take the full path)
    assert seen == [(0x1234567, i, True) for i in range(5, 0, -1)]


@pytest.mark.skipif(not BUILT, reason="the C helper is not built")
def test_the_hook_calls_handlers_through_the_c_api_where_built(monkeypatch):
    """Built with the CPython headers (pip install -e .), the hook calls the handler through
    the C API; the ctypes callback it falls back to without them gives the same results."""
    import os
    import sysconfig
    from vmcfg.vmm import native
    if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        monkeypatch.delenv("VMCFG_NO_NATIVE", raising=False)
        assert native.FastExit([0] * native.NSNAP, 0).capi()

    n = 50
    image = _image(LOOP.format(n=n, body=MIXED))
    res, v, log = _both(_mixed_cfg(), image, monkeypatch, _emulating)
    assert v._lean_capi == v.fx.capi() and _lean(v) > 0
    monkeypatch.setattr(native.FastExit, "capi", lambda self: False)
    res2, v2, log2 = _both(_mixed_cfg(), image, monkeypatch, _emulating)
    assert not v2._lean_capi and _lean(v2) == _lean(v)
    assert log2 == log
    assert (res2.instructions, res2.tsc, res2.exit_counts()) == \
        (res.instructions, res.tsc, res.exit_counts())


def test_contexts_kept_by_a_handler_keep_their_exit(monkeypatch):
    """A handler that keeps every context it gets and looks at them only after the run: each
    is its own object and still describes its own exit (number, retired instructions, TSC,
    I/O data, the RDTSC result written), the same with and without the helper."""
    def run(python):
        kept = []

        def h(ctx):
            kept.append(ctx)
            ctx.emulate()
        res, regs, v = _run(_mixed_cfg(), _image(LOOP.format(n=60, body=MIXED)), monkeypatch,
                            python=python,
                            handlers={Exit.CPUID: h, Exit.RDTSC: h, Exit.IO_INSTRUCTION: h})
        assert len({id(c) for c in kept}) == len(kept) == 6 * 60
        return res, regs, v, [(c.reason, c.name, c.instruction_length, c.qualification,
                               c.exit.to_json()) for c in kept]
    rp, gp, vp, sp = run(True)
    rn, gn, vn, sn = run(False)
    assert sn == sp and gn == gp and (rn.instructions, rn.tsc) == (rp.instructions, rp.tsc)
    assert [s[4]["seq"] for s in sn] == sorted(s[4]["seq"] for s in sn)
    if BUILT:
        assert _lean(vn) >= 6 * 60 - 12


def test_a_handler_that_moves_rip_resumes_there(monkeypatch):
    """A CPUID handler that answers the exit itself and resumes past the next instruction
    (`inc r9`, 3 bytes): the guest never runs it, both ways, and from the hook."""
    def make(log):
        def h(ctx):
            ctx.regs.rbx = 7
            ctx.regs.rip = ctx.exit.rip + ctx.instruction_length + 3
            log.append(ctx.regs.rip)
        return {Exit.CPUID: h}
    body = "xor eax, eax\ncpuid\ninc r9\nadd r8, rbx"
    res, v, log = _both(_cfg(), _image(LOOP.format(n=100, body=body)), monkeypatch, make)
    assert res.status == "debug-exit" and res.exit_counts()["CPUID"] == 100
    assert v.gpr(9) == 0 and v.gpr(8) == 700
    if BUILT:
        assert _lean(v) >= 95


IO_MIX = ("mov eax, esi\nout 0x80, al\nin al, 0x80\nadd r9, rax\n"
          "mov dx, 0x3ff\nmov eax, esi\nout dx, al\nin al, dx\nadd r9, rax\n"
          "mov dx, 0x3fe\nin ax, dx\nadd r9, rax\n"
          "mov dx, 0x2f0\nmov eax, esi\nout dx, eax\nin eax, dx\nadd r9, rax\nin ax, dx\n"
          "add r9, rax\nin al, dx\nadd r9, rax\n"
          "mov dx, 0xcf8\nmov eax, esi\nshl eax, 8\nout dx, eax\nin eax, dx\nadd r9, rax\n"
          "mov dx, 0xcfc\nin eax, dx\nadd r9, rax\n")


def test_io_exits_do_what_the_devices_do_without_exits(monkeypatch):
    """IN and OUT of every size to claimed ports (POST latch, UART scratch, PCI config
    address), an unclaimed one and one a wide access splits: with every one of them exiting
    to a handler that emulates it (from the hook, or the full path) the guest reads what it
    reads when no control intercepts them (the devices called straight) -- with and without
    the helper."""
    ports = [(0x80, 0x80), (0x2F0, 0x2F3), (0x3F8, 0x3FF), (0xCF8, 0xCFF)]
    image = _image(LOOP.format(n=50, body=IO_MIX))
    free = [_run(_cfg(), image, monkeypatch, python=p) for p in (False, True)]
    assert free[0][1] == free[1][1] and free[0][0].exit_counts() == {}
    counts = []

    def make(log):
        def h(ctx):
            counts.append(ctx.exit.data["size"])
            ctx.emulate()
        return {Exit.IO_INSTRUCTION: h}
    res, v, _log = _both(_cfg("baseline", io_ports=ports), image, monkeypatch, make)
    assert res.status == "debug-exit" and res.exit_counts()["IO_INSTRUCTION"] == 50 * 12
    assert sorted(set(counts)) == [1, 2, 4]
    regs = {n: v.gpr(i) for i, n in enumerate(("rax", "rcx", "rdx", "rbx", "rsp", "rbp",
                                                "rsi", "rdi", "r8", "r9"))}
    assert regs == free[0][1] and regs["r9"] != 0
    if BUILT:
        assert _lean(v) > 0
