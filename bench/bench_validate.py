"""Validation speed (run by hand: .venv/bin/python bench/bench_validate.py).

1. Library validation of one profile (already loaded): median of many runs
   of resolve_profile() (effective values + every rule).  Target <= 50 us.
2. `vmcfg validate` wall time as a ratio to `python -c "import click, tomlkit"`,
   both measured side by side, interleaved, in this run.  Target <= 2.5x.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def lib_bench(n: int = 3000) -> dict:
    from vmcfg.profile import load_profile, resolve_profile
    from vmcfg.vmx.models import get_model
    prof = load_profile("baseline")
    caps = get_model("cvmm")
    resolve_profile(prof, caps)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        resolve_profile(prof, caps)
        samples.append(time.perf_counter() - t)
    return {"median_us": statistics.median(samples) * 1e6,
            "p90_us": sorted(samples)[int(n * 0.9)] * 1e6}


def cli_bench(rounds: int = 30) -> dict:
    vmcfg = shutil.which("vmcfg") or os.path.join(os.path.dirname(sys.executable), "vmcfg")
    base_cmd = [sys.executable, "-c", "import click, tomlkit"]
    cmd = [vmcfg, "validate", "baseline", "-q"]
    a, b = [], []
    for _ in range(rounds):
        for c, acc in ((base_cmd, a), (cmd, b)):
            t = time.perf_counter()
            subprocess.run(c, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            acc.append(time.perf_counter() - t)
    ma, mb = statistics.median(a), statistics.median(b)
    return {"import_click_tomlkit_ms": ma * 1e3, "vmcfg_validate_ms": mb * 1e3, "ratio": mb / ma}


if __name__ == "__main__":
    lib = lib_bench()
    print(f"library validation of one profile: median {lib['median_us']:.1f} us "
          f"(p90 {lib['p90_us']:.1f} us; target <= 50 us)")
    cli = cli_bench()
    print(f"python -c 'import click, tomlkit': {cli['import_click_tomlkit_ms']:.1f} ms; "
          f"vmcfg validate baseline: {cli['vmcfg_validate_ms']:.1f} ms; "
          f"ratio {cli['ratio']:.2f}x (target <= 2.5x)")
