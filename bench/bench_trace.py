"""What a trace costs (run by hand: .venv/bin/python bench/bench_trace.py [INSTRUCTIONS]).

The exit-heavy `soak` guest under `trap-all` (an RDTSC and an OUT exit every 7
instructions) runs INSTRUCTIONS guest instructions (default 700,000: ~200,000
exits) in this process, once per trace form, the forms interleaved and each
run REPEAT times; reported: median wall time, its ratio to the run without a
trace, and the trace's size per exit.  Then `vmcfg trace summary` and `export`
read the plain trace (exits per second, one process each).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REPEAT = 3
FORMS = [  # label, file suffix (None: no trace), sample, gzip level
    ("no trace", None, 1, None),
    ("--trace t.jsonl", ".jsonl", 1, None),
    ("--trace t.jsonl.gz (level 1, the default)", ".jsonl.gz", 1, 1),
    ("--trace t.jsonl.gz (level 3)", ".jsonl.gz", 1, 3),
    ("--trace t.jsonl.gz (level 6)", ".jsonl.gz", 1, 6),
    ("--trace t.jsonl.gz --trace-sample 100", ".jsonl.gz", 100, 1),
]


def main() -> None:
    from vmcfg.profile import resolve
    from vmcfg.vmm import run as R
    from vmcfg.vmm.loader import load_image

    n_insn = int(sys.argv[1]) if len(sys.argv) > 1 else 700_000
    cfg = resolve("trap-all", cpu="cvmm").config
    img = load_image("builtin:soak")
    tmp = tempfile.mkdtemp()
    times: dict[str, list[float]] = {f[0]: [] for f in FORMS}
    sizes: dict[str, int] = {}
    exits = 0
    for _ in range(REPEAT):
        for label, suffix, sample, level in FORMS:
            path = os.path.join(tmp, "t" + (suffix or ""))
            R.TRACE_GZIP_LEVEL = level or 1
            fh = R.open_trace_file(path) if suffix else None
            t0 = time.perf_counter()
            res = R.run_guest(cfg, img, memory=16 << 20, mode=64, trace=fh, trace_sample=sample,
                              max_instructions=n_insn)
            if fh is not None:
                fh.close()
            times[label].append(time.perf_counter() - t0)
            exits = sum(e["count"] for e in res.exits)
            if suffix:
                sizes[label] = os.path.getsize(path)
    base = statistics.median(times["no trace"])
    print(f"soak under trap-all, {n_insn:,} instructions, {exits:,} exits; median of {REPEAT}")
    print(f"{'form':44s} {'wall':>8s} {'ratio':>6s} {'bytes/exit':>10s} {'size':>9s}")
    for label, *_ in FORMS:
        t = statistics.median(times[label])
        sz = sizes.get(label)
        print(f"{label:44s} {t:7.2f}s {t / base:5.2f}x "
              f"{(f'{sz / exits:.1f}' if sz else '-'):>10s} "
              f"{(f'{sz / 2**20:.1f} MiB' if sz else '-'):>9s}")
    # reading it back
    R.TRACE_GZIP_LEVEL = 1
    plain = os.path.join(tmp, "t.jsonl")
    with R.open_trace_file(plain) as fh:
        R.run_guest(cfg, img, memory=16 << 20, mode=64, trace=fh, max_instructions=n_insn)
    for cmd in (["summary"], ["export", "-o", os.path.join(tmp, "out.json")]):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vmcfg.cli", "trace", cmd[0], plain, *cmd[1:]],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        dt = time.perf_counter() - t0
        print(f"vmcfg trace {cmd[0]:8s} {exits:,} exits in {dt:.2f} s "
              f"({exits / dt / 1000:.0f}k exits/s, process start included)")


if __name__ == "__main__":
    main()
