"""Guest RAM costs host memory only where the guest touches it (issue 14).

Each guest runs in a child `vmcfg launch` process; its peak resident set size
(ru_maxrss from wait4, the kernel's high-water mark for that process alone)
is what is checked. Nothing here is timed.
"""

import importlib.util
import os
import sys

from conftest import ROOT

MiB = 1 << 20


def _bench():
    """bench/bench_vmm.py: the one home of the grandchild peak-RSS measurement (Linux starts
    a new program's high-water mark at its parent's size, and a pytest worker may be large)."""
    spec = importlib.util.spec_from_file_location("bench_vmm",
                                                  os.path.join(ROOT, "bench", "bench_vmm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _launch_peak_rss(tmp_path, memory: str, asm: str) -> tuple[int, str]:
    """Run `vmcfg launch baseline --guest <asm> --memory M` in a grandchild; (peak RSS bytes,
    stderr)."""
    src = tmp_path / "guest.asm"
    src.write_text(asm)
    rc, peak, err = _bench().grandchild_peak_rss(
        [sys.executable, "-c", "from vmcfg.cli.main import main; main()", "launch", "baseline",
         "--guest", str(src), "--memory", memory, "--console", str(tmp_path / "console.txt")])
    assert rc == 0, err
    return peak, err


# stores one byte to every `step`-th byte from `lo` up to (not including) `hi`, then debug-exit 0
def _toucher(lo: int, hi: int, step: int) -> str:
    return (f"mov rdi, {lo:#x}\nmov rcx, {hi:#x}\n"
            f"touch:\nmov byte [rdi], 1\nadd rdi, {step:#x}\ncmp rdi, rcx\njb touch\n"
            "mov al, 0\nout 0xf4, al\n")


def test_4g_guest_is_mapped_lazily(tmp_path):
    # a 4 GiB guest that stores to one byte every 64 MiB across all of its RAM (and uses its stack
    # at the top of RAM): the host pays for the pages touched, not for 4 GiB
    peak, err = _launch_peak_rss(tmp_path, "4G", _toucher(0x200000, 0xFFF0_0000, 64 * MiB))
    assert peak < 512 * MiB, f"peak RSS {peak / MiB:.0f} MiB for a 4 GiB guest\n{err}"


def test_256m_guest_costs_its_ram_plus_a_constant(tmp_path):
    # a 256 MiB guest that touches every page of 254 MiB of its RAM: no second copy of guest
    # memory anywhere (peak ≤ guest RAM + the interpreter, Unicorn and the VMM's own state)
    peak, err = _launch_peak_rss(tmp_path, "256M", _toucher(0x100000 + 0x1000, 0xFF0_0000, 0x1000))
    assert 200 * MiB < peak <= (256 + 160) * MiB, f"peak RSS {peak / MiB:.0f} MiB\n{err}"
