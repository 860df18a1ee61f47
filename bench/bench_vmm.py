"""Benchmarks of vmcfg's emulated VMM, measured side by side in one run.

    .venv/bin/python bench/bench_vmm.py [--repeat N] [--exits N] [--markdown]

1. Exit-free guest code: the bundled `compute` guest (100M instructions, no
   exits) under the `baseline` profile, against bare Unicorn running the same
   image from the same start state (all RAM mapped RWX, no hooks except the
   few port I/Os of the final print).  Ratio = VMM instruction rate / bare rate.
2. Exit round trips: a loop of N CPUID exits, N RDTSC exits (rdtsc_exiting)
   and N OUT exits (I/O bitmap on port 0x80); the cost of one exit is
   (wall time - time of the same loop with the instruction not exiting... )
   reported simply as wall time / exits (so it includes the 3 loop
   instructions); the median over the repetitions is shown.

3. MTF single-step rate, PIT interrupt delivery cost (builtin:irqbench, with
   and without external-interrupt exiting), exit-free rate with EPT on vs off.

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _cfg(profile: str, **settings):
    from vmcfg.profile import resolve
    r = resolve(profile, cpu="cvmm")
    assert r.valid
    cfg = r.config
    for path, value in settings.items():
        t, k = path.split("__")
        cfg.settings[t][k] = value
    return cfg


def bare_unicorn(image, memory: int, nx_data: bool = False) -> tuple[float, int]:
    """Run the image on a plain Unicorn engine; returns (seconds, instructions executed).

    nx_data: map RAM read/write and only the image's code pages executable
    (the protection layout the VMM itself ends up with), instead of all RWX.
    """
    from unicorn import UC_HOOK_INSN, UC_PROT_ALL, UcError
    from unicorn import x86_const as X

    from vmcfg.vmm.run import setup_start_state

    class Bare:
        pass

    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
    b = Bare()
    b.uc = Uc(UC_ARCH_X86, UC_MODE_64)
    from unicorn import UC_PROT_READ, UC_PROT_WRITE
    b.uc.mem_map(0, memory, UC_PROT_READ | UC_PROT_WRITE if nx_data else UC_PROT_ALL)
    if nx_data:
        for addr, data in image.segments:
            code_end = min(addr + len(data), addr + 0x1000)    # the guests' code page
            b.uc.mem_protect(addr & ~0xFFF, ((code_end + 0xFFF) & ~0xFFF) - (addr & ~0xFFF),
                             UC_PROT_ALL)
    for addr, data in image.segments:
        b.uc.mem_write(addr, data)
    from vmcfg.vmm.cpu.state import CpuState
    b.cpu_state = CpuState(b.uc)
    b.after_state_load = lambda: None
    setup_start_state(b, 64, memory, image.entry)

    def on_in(uc, port, size, ud):
        return 0x60                                   # LSR: transmitter empty

    def on_out(uc, port, size, value, ud):
        if port == 0xF4:
            uc.emu_stop()

    b.uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    b.uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    t0 = time.perf_counter()
    try:
        b.uc.emu_start(image.entry, 0xFFFF_FFFF_FFFF_FFFF)
    except UcError:
        pass
    return time.perf_counter() - t0, 0


def vmm_run(cfg, image, memory: int = 16 << 20):
    from vmcfg.vmm.run import run_guest
    t0 = time.perf_counter()
    res = run_guest(cfg, image, memory=memory, mode=64)
    return time.perf_counter() - t0, res


def loop_image(body: str, n: int):
    from vmcfg.vmm.loader import load_image
    src = f"mov rsi, {n}\nl:\n{body}\ndec rsi\njnz l\nmov al, 0\nout 0xf4, al\n"
    with tempfile.NamedTemporaryFile("w", suffix=".asm", delete=False) as f:
        f.write(src)
    try:
        return load_image(f.name)
    finally:
        os.unlink(f.name)


def _with(cfg, *paths):
    from vmcfg.vmx.table import CONTROL_BY_PATH
    for path in paths:
        c = CONTROL_BY_PATH[path]
        cfg.controls[c.field] = cfg.controls.get(c.field, 0) | c.mask
    cfg._active.clear()
    return cfg


def event_rows(a) -> list[tuple[str, str, str, str]]:
    """3. MTF single-step rate; 4. PIT interrupt delivery cost; 5. EPT on vs off."""
    from vmcfg.vmm.loader import load_image
    rows = []
    # MTF: a VM exit after every instruction of a 3-instruction loop (default handler)
    steps = max(3, a.exits // 3) * 3
    cfg = _with(_cfg("baseline"), "primary.monitor_trap_flag")
    im = loop_image("nop", steps // 3)
    rates = []
    for _ in range(a.repeat):
        t, res = vmm_run(cfg, im)
        rates.append(res.exit_counts()["MONITOR_TRAP_FLAG"] / t)
    rows.append(("MTF single-step rate (monitor_trap_flag, default handler)",
                 f"{statistics.median(rates) / 1e3:.0f} k steps/s",
                 f"{res.exit_counts()['MONITOR_TRAP_FLAG']:,} steps",
                 f"max {max(rates) / 1e3:.0f} k steps/s"))
    # interrupts: builtin:irqbench takes 20,000 PIT interrupts (period 2000 TSC ticks)
    im = load_image("builtin:irqbench")
    per = []
    for _ in range(a.repeat):
        t, res = vmm_run(_cfg("baseline"), im)
        assert res.status == "debug-exit", res.message
        per.append(t / 20000)
    rows.append(("PIT interrupt through the guest IDT (handler + EOI + IRETQ, no exit)",
                 f"{statistics.median(per) * 1e6:.1f} µs / interrupt", "20,000 interrupts",
                 f"min {min(per) * 1e6:.1f} µs (incl. ~2000 guest instructions each)"))
    per = []
    for _ in range(a.repeat):
        t, res = vmm_run(_with(_cfg("baseline"), "pin.external_interrupt_exiting",
                               "exit.acknowledge_interrupt_on_exit"), im)
        per.append(t / 20000)
    rows.append(("same with external_interrupt_exiting + ack (exit, reflect)",
                 f"{statistics.median(per) * 1e6:.1f} µs / interrupt", "20,000 interrupts",
                 f"min {min(per) * 1e6:.1f} µs"))
    # EPT on (one rwx region over all RAM) vs off, exit-free compute
    img = load_image("builtin:compute")
    off, on = [], []
    ept = _with(_cfg("baseline"), "secondary.enable_ept")
    ept.settings["ept"]["regions"] = [{"base": 0, "size": 16 << 20, "access": "rwx"}]
    for _ in range(a.repeat):
        t, res = vmm_run(_cfg("baseline"), img)
        off.append(res.instructions / t)
        t, res = vmm_run(ept, img)
        on.append(res.instructions / t)
    rows.append(("exit-free compute, EPT on (rwx region) vs off",
                 f"{statistics.median(on) / 1e6:.0f} M instr/s",
                 f"{statistics.median(off) / 1e6:.0f} M instr/s (off)",
                 f"ratio {statistics.median(on) / statistics.median(off):.2f}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--exits", type=int, default=100_000)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args(argv)
    from vmcfg.vmm.loader import load_image

    rows = []
    img = load_image("builtin:compute")
    base = _cfg("baseline")
    vm_rates, bare_rates, nx_rates, ratios, nx_ratios = [], [], [], [], []
    for _ in range(a.repeat):
        tv, res = vmm_run(base, img)
        tb, _n = bare_unicorn(img, 16 << 20)
        tn, _n = bare_unicorn(img, 16 << 20, nx_data=True)
        n = res.instructions
        vm_rates.append(n / tv)
        bare_rates.append(n / tb)
        nx_rates.append(n / tn)
        ratios.append(tb / tv)
        nx_ratios.append(tn / tv)
    rows.append(("exit-free compute (100M instructions) vs bare Unicorn, all RAM RWX",
                 f"{statistics.median(vm_rates) / 1e6:.0f} M instr/s",
                 f"{statistics.median(bare_rates) / 1e6:.0f} M instr/s",
                 f"ratio {statistics.median(ratios):.2f}"))
    rows.append(("same, vs bare Unicorn with only the code page executable",
                 f"{statistics.median(vm_rates) / 1e6:.0f} M instr/s",
                 f"{statistics.median(nx_rates) / 1e6:.0f} M instr/s",
                 f"ratio {statistics.median(nx_ratios):.2f}"))

    cases = [
        ("CPUID exit round trip", "baseline", {}, "xor eax, eax\ncpuid", "CPUID"),
        ("RDTSC exit round trip (rdtsc_exiting)", "baseline", {"rdtsc": True}, "rdtsc", "RDTSC"),
        ("I/O exit round trip (I/O bitmap, port 0x80)", "baseline", {"io": True},
         "out 0x80, al", "IO_INSTRUCTION"),
    ]
    from vmcfg.vmx.table import CONTROL_BY_PATH
    for title, prof, opts, body, name in cases:
        cfg = _cfg(prof)
        if opts.get("rdtsc"):
            c = CONTROL_BY_PATH["primary.rdtsc_exiting"]
            cfg.controls[c.field] |= c.mask
            cfg._active.clear()
        if opts.get("io"):
            cfg.settings["io"]["intercept"] = [(0x80, 0x80)]
        im = loop_image(body, a.exits)
        per = []
        for _ in range(a.repeat):
            t, res = vmm_run(cfg, im)
            assert res.exit_counts()[name] == a.exits, res.exit_counts()
            per.append(t / a.exits)
        rows.append((title, f"{statistics.median(per) * 1e6:.2f} µs / exit",
                     f"{a.exits:,} exits", f"min {min(per) * 1e6:.2f} µs"))

    rows.extend(event_rows(a))

    if a.markdown:
        print("| benchmark | vmcfg | bare Unicorn / size | note |")
        print("|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            print(f"{r[0]:<48} {r[1]:>18} {r[2]:>18} {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
