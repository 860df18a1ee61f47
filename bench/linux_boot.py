"""Boot a stock Debian 12 kernel with a busybox initramfs on vmcfg and on QEMU TCG, side by side.

    .venv/bin/python bench/linux_boot.py [--profile baseline] [--timeout 900] [--markdown]
                                         [--append "console=ttyS0 panic=-1 quiet"] [--skip-qemu]
                                         [--line TEXT] [--breakdown]
                                         [--kernel-entry bzimage|payload|both]

The inputs come from tools/linux_inputs.py (apt-get download linux-image-6.1.0-<n>-amd64 and
busybox-static, an initramfs whose /init prints "vmcfg-ok 42" and powers off).  Each side is
timed from start to the moment the line appears on its serial console (and to its end):

* QEMU: ``qemu-system-x86_64 -accel tcg -kernel ... -initrd ... -m 256 -nographic -no-reboot``
  (SeaBIOS included, as a user would run it);
* vmcfg: the run ``vmcfg launch PROFILE --kernel ... --initrd ... --memory 256M`` makes, of
  the same kernel and initramfs (in process, so the report can say where the time went: VM
  exits by kind and the time the VMM spent handling them, against the time inside the
  Unicorn engine).

vmcfg boots the kernel twice by default, one row each: with the bzImage's own entry (its
decompressor runs in the guest, as under QEMU) and with ``--kernel-entry payload`` (the loader
unpacks the kernel and enters startup_64); ``--kernel-entry`` picks one.

--line TEXT times both sides to another console line (e.g. "Run /init" without "quiet"),
and vmcfg's run ends there.  --breakdown adds where vmcfg's time went: every return of the
engine (emu_start) by its cause, host time inside the engine against the VMM's run loop, and
the engine calls the VMM made that cost the engine its translations (TB flushes, cache
removals, protection changes).

Ratio = vmcfg seconds to the line / QEMU seconds to the line (the goal is <= 3).  If vmcfg
does not reach the line before --timeout, the table says so and shows how far it got (its
last console line, instructions retired).  Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

LINE = "vmcfg-ok 42"


def run_qemu(kernel: str, initrd: str, append: str, timeout: float, line: str = LINE) -> dict:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-kernel", kernel, "-initrd", initrd,
            "-append", append, "-m", "256", "-nographic", "-no-reboot", "-monitor", "none"]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    out = bytearray()
    t_line = None
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        p.kill()
    killer = threading.Timer(timeout, kill)
    killer.start()
    try:
        while True:
            chunk = p.stdout.read1(4096) if hasattr(p.stdout, "read1") else p.stdout.read(1)
            if not chunk:
                break
            out += chunk
            if t_line is None and line.encode() in out:
                t_line = time.perf_counter() - t0
                if line != LINE:
                    p.kill()
        p.wait()
    finally:
        killer.cancel()
    # -no-reboot: a poweroff, a reboot and a panic all end QEMU with status 0
    status = "timeout" if killed.is_set() else ("ended" if p.returncode == 0
                                                 else f"exit status {p.returncode}")
    return {"to_line": t_line, "total": time.perf_counter() - t0, "rc": p.returncode,
            "status": status, "console": out.decode("latin-1")}


ENGINE_CALLS = ("ctl_flush_tb", "ctl_remove_cache", "mem_protect")


def count_engine_calls(vcpu, calls: dict) -> None:
    """--breakdown: count the VMM's calls that drop the engine's translations or change its
    memory map (a wrapper on this run's Uc object only)."""
    uc = vcpu.uc
    for name in ENGINE_CALLS:
        fn = getattr(uc, name)
        calls[name] = 0

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        setattr(uc, name, wrapped)


def sample_guest(vcpu, stop: threading.Event, hits: dict, period: float = 0.002) -> None:
    """--breakdown: where the guest's time goes -- the address of the block the engine is
    running, read from the block counter's state every `period` seconds."""
    from vmcfg.vmm.counter import W_LAST_ADDR
    st = vcpu.counter.state
    while not stop.wait(period):
        a = st[W_LAST_ADDR]
        hits[a] = hits.get(a, 0) + 1


def load_symbols(kernel: str) -> tuple[list[int], list[str]] | None:
    """The kernel's System.map beside it (boot/System.map-VERSION), sorted by address."""
    d, name = os.path.split(kernel)
    path = os.path.join(d, name.replace("vmlinuz", "System.map"))
    if not os.path.exists(path):
        return None
    syms = []
    with open(path) as f:
        for ln in f:
            parts = ln.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
    return [a for a, _n in syms], [n for _a, n in syms]


def print_guest_profile(hits: dict, kernel: str, top: int = 25) -> None:
    import bisect
    total = sum(hits.values())
    if not total:
        return
    syms = load_symbols(kernel)
    by: dict[str, int] = {}
    for a, n in hits.items():
        name = f"{a:#x}"
        if syms is not None and a >= (1 << 63):
            i = bisect.bisect_right(syms[0], a) - 1
            if i >= 0:
                name = syms[1][i]
        elif a < (1 << 47):
            name = "low half (user space, or the decompressor at its identity map)" if a else "(no block yet)"
        by[name] = by.get(name, 0) + n
    print(f"  guest code by time ({total:,} samples of the running block"
          f"{'' if syms else ', no System.map'}; with KASLR, boot with nokaslr to name them):")
    for name, n in sorted(by.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f} %  {name}")


def run_vmcfg(profile: str, kernel: str, initrd: str, append: str, timeout: float,
              clock: str, line: str = LINE, breakdown: bool = False,
              kernel_entry: str = "bzimage") -> dict:
    """The run `vmcfg launch PROFILE --kernel --initrd --append --memory 256M --timeout
    --clock` makes (the same plan), in process."""
    from vmcfg.vmm.plan import PlanError, build_plan
    from vmcfg.vmm.run import run_plan
    try:
        plan = build_plan(profile, kernel=kernel, initrd=initrd, cmdline=append,
                          memory="256M", timeout=timeout, clock=clock,
                          kernel_entry=kernel_entry)
    except PlanError as e:
        raise SystemExit(f"linux_boot: {e.message}") from None
    buf: list[str] = []
    seen = {"t": None}
    calls: dict[str, int] = {}
    box: dict = {}
    t0 = time.perf_counter()

    def console(ch: str) -> None:
        buf.append(ch)
        if seen["t"] is None and ch == "\n" and line in "".join(buf[-(len(line) + 64):]):
            seen["t"] = time.perf_counter() - t0
            if line != LINE and "vcpu" in box:
                box["vcpu"].request_end("stopped", f"the console showed {line!r}")

    hits: dict[int, int] = {}
    stop = threading.Event()

    def on_vcpu(vcpu) -> None:
        box["vcpu"] = vcpu
        if breakdown:
            count_engine_calls(vcpu, calls)
            threading.Thread(target=sample_guest, args=(vcpu, stop, hits), daemon=True).start()

    res = run_plan(plan, console=console, on_vcpu=on_vcpu)
    total = time.perf_counter() - t0
    stop.set()
    vcpu = box.get("vcpu")
    return {"to_line": seen["t"], "total": total, "result": res, "console": "".join(buf),
            "stops": vcpu.stops if vcpu is not None else None, "calls": calls,
            "events": getattr(vcpu, "events_delivered", 0), "hits": hits, "kernel": kernel}


def print_breakdown(v: dict) -> None:
    """Where vmcfg's time went (--breakdown)."""
    res, stops = v["result"], v["stops"]
    if stops is None:
        return
    total = v["total"]
    eng = stops.engine_seconds
    exits = sum(e["count"] for e in res.exits)
    print(f"\nwhere the time went: {total:.1f} s wall, {res.instructions:,} guest instructions "
          f"({res.instructions / max(total, 1e-9) / 1e6:.1f} M/s)")
    print(f"  inside the engine (emu_start, its Python hooks included) {eng:8.1f} s "
          f"({100 * eng / total:.0f} %), {stops.runs:,} runs")
    print(f"  VMM run loop between engine runs                        {total - eng:8.1f} s "
          f"({100 * (total - eng) / total:.0f} %)")
    print(f"  VM exits {exits:,}, handled in {res.vmm_seconds:.2f} s; events delivered "
          f"{v['events']:,}")
    print("  engine runs by what ended them:")
    for cause, n in sorted(stops.counts.items(), key=lambda kv: -kv[1]):
        print(f"    {cause:<44} {n:>10,}")
    if v["calls"]:
        print("  engine calls that drop translations or change the memory map: " +
              ", ".join(f"{k} {n:,}" for k, n in v["calls"].items()))
    print_guest_profile(v["hits"], v["kernel"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="baseline")
    ap.add_argument("--append", default="console=ttyS0 panic=-1 quiet")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--clock", default="virtual", choices=("virtual", "realtime"))
    ap.add_argument("--skip-qemu", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--line", default=LINE,
                    help="time to this console line (vmcfg's run ends there)")
    ap.add_argument("--kernel-entry", default="both", choices=("bzimage", "payload", "both"),
                    help="vmcfg's rows: the bzImage's own entry (its decompressor runs in the "
                         "guest), the loader-unpacked payload, or both (default)")
    ap.add_argument("--breakdown", action="store_true",
                    help="where vmcfg's time went: engine runs by cause, engine vs VMM time")
    a = ap.parse_args(argv)

    import linux_inputs
    try:
        inp = linux_inputs.fetch()
    except linux_inputs.InputsUnavailable as e:
        print(f"linux_boot: {e}", file=sys.stderr)
        return 3
    print(f"kernel {inp.kernel.name} ({inp.package}), initrd {inp.initrd.stat().st_size} bytes, "
          f"append {a.append!r}", file=sys.stderr)
    q = None
    if not a.skip_qemu:
        q = run_qemu(str(inp.kernel), str(inp.initrd), a.append, a.timeout, a.line)
        print(f"qemu: line after {q['to_line']}, total {q['total']:.1f} s", file=sys.stderr)
    entries = ("bzimage", "payload") if a.kernel_entry == "both" else (a.kernel_entry,)
    runs = [(k, run_vmcfg(a.profile, str(inp.kernel), str(inp.initrd), a.append, a.timeout,
                          a.clock, a.line, a.breakdown, k)) for k in entries]

    def fmt(x):
        return f"{x:.1f} s" if x is not None else "not reached"

    rows = [("QEMU 7.2 TCG (-accel tcg)", fmt(q["to_line"]) if q else "skipped",
             f"{q['total']:.1f} s" if q else "-", q["status"] if q else "-")]
    for k, v in runs:
        rows.append((f"vmcfg launch {a.profile} --clock {a.clock} --kernel-entry {k}",
                     fmt(v["to_line"]), f"{v['total']:.1f} s", v["result"].status))
    sep = "|" if a.markdown else " "
    print(f"{sep} boot of {inp.package} to '{a.line}' {sep} to the line {sep} total {sep} status {sep}")
    if a.markdown:
        print("|---|---:|---:|---|")
    for row in rows:
        print(f"{sep} " + f" {sep} ".join(row) + f" {sep}")
    for k, v in runs:
        res = v["result"]
        ratio = (v["to_line"] / q["to_line"]) if q and q["to_line"] and v["to_line"] else None
        why = ("QEMU skipped" if q is None else
               "QEMU did not reach the line within --timeout" if not q["to_line"] else
               "vmcfg did not reach the line within --timeout")
        print(f"ratio vmcfg ({k})/QEMU: {ratio:.2f}x" if ratio else
              f"ratio vmcfg ({k})/QEMU: n/a ({why})")
        vmm = res.vmm_seconds
        print(f"\nvmcfg --kernel-entry {k}: {res.instructions:,} instructions, "
              f"{sum(e['count'] for e in res.exits):,} exits; time handling exits in the VMM "
              f"{vmm:.2f} s, in the engine (guest code, page scans, block hooks) "
              f"{max(0.0, v['total'] - vmm):.2f} s")
        secs = getattr(res, "exit_seconds", {})
        for e in sorted(res.exits, key=lambda e: -e["count"]):
            print(f"  {e['name']:<24} {e['count']:>10,}  {secs.get(e['reason'], 0.0):8.3f} s")
        if a.breakdown:
            print_breakdown(v)
        tail = [ln for ln in v["console"].splitlines() if ln.strip()][-3:]
        if v["to_line"] is None:
            print("vmcfg stopped before the line: " + res.message)
            print("last console lines:\n  " + "\n  ".join(tail) if tail else "no console output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
