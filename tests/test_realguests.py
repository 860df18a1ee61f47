"""Real guests: Multiboot loading and kvm-unit-tests images under the emulated VMM.

The kvm-unit-tests images come from ``../shared/kvm-unit-tests/`` beside the checkout (CI keeps
a copy of shared/ next to the clone); without it those tests are skipped, saying so.  The
Multiboot tests build their own small ELF32 kernel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_module():
    """bench/realguests.py: the one home of the kvm-unit-tests profile and of where the
    images are found."""
    spec = importlib.util.spec_from_file_location("bench_realguests",
                                                  os.path.join(ROOT, "bench", "realguests.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_BENCH = _bench_module()
KUT_PROFILE = _BENCH.KUT_PROFILE


def _shared_kut() -> str | None:
    d = _BENCH.DEFAULT_SHARED
    return d if os.path.isdir(d) else None


@pytest.fixture(scope="module")
def kut(tmp_path_factory):
    """(directory with the unpacked images, path of the README's profile)."""
    shared = _shared_kut()
    tars = sorted(f for f in os.listdir(shared) if f.endswith(".tgz")) if shared else []
    if not tars:
        pytest.skip("kvm-unit-tests images not found: expected ../shared/kvm-unit-tests/*.tgz "
                    "beside the checkout")
    d = tmp_path_factory.mktemp("kut")
    with tarfile.open(os.path.join(shared, tars[0])) as t:
        t.extractall(d, filter="data")
    prof = d / "kut.toml"
    prof.write_text(KUT_PROFILE)
    return d, str(prof)


def _run_kut(kut, name: str, timeout: float = 60):
    from vmcfg.profile import resolve
    from vmcfg.vmm.loader import load_image
    from vmcfg.vmm.run import run_guest
    d, prof = kut
    cfg = resolve(prof, cpu="cvmm").config
    img = load_image(str(d / f"{name}.flat"))
    assert img.multiboot and img.mode == 32
    return run_guest(cfg, img, memory=256 << 20, mode=32, timeout=timeout)


def test_kut_setjmp_passes(kut):
    """32-bit Multiboot entry, the image's own switch to long mode, #UD probes through its IDT."""
    res = _run_kut(kut, "setjmp")
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.console[-400:]
    assert "SUMMARY: 10 tests\r\n" in res.console
    assert "FAIL" not in res.console


def test_kut_syscall_passes(kut):
    """SYSCALL from 64-bit and from compatibility mode at CPL 3, SYSRET, TF and #DB."""
    res = _run_kut(kut, "syscall")
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.console[-400:]
    assert "PASS: syscall TF handling" in res.console
    assert "PASS: MSR_*STAR eager loading" in res.console


def test_bench_runs_a_directory_of_images(kut, tmp_path):
    """`bench/realguests.py --images DIR` runs the *.flat files of a directory as they are
    (the images of a kvm-unit-tests build not in shared/), with the same profile and table."""
    import subprocess
    import sys
    d, _ = kut
    imgs = tmp_path / "build-x86"
    imgs.mkdir()
    (imgs / "setjmp.flat").write_bytes((d / "setjmp.flat").read_bytes())
    bench = os.path.join(ROOT, "bench", "realguests.py")
    p = subprocess.run([sys.executable, bench, "--images", str(imgs), "--no-qemu", "--markdown"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| setjmp ")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "PASS", p.stdout
    assert "vmcfg: 1/1 pass or skip" in p.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    p = subprocess.run([sys.executable, bench, "--images", str(empty), "--no-qemu"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"no *.flat image in {empty}" in p.stderr


@pytest.mark.slow
def test_kut_xsave_passes(kut):
    """XSETBV/XGETBV rules (#UD without CR4.OSXSAVE, #GP for bad XCR0), XSAVE in CPUID."""
    res = _run_kut(kut, "xsave")
    assert (res.status, res.guest_exit_code) == ("debug-exit", 0), res.console[-400:]
    assert "PASS: Set CR4.OSXSAVE without XSAVE" not in res.console   # XSAVE is offered
    assert "PASS: CPUID.1.ECX.OSXSAVE == CR4.OSXSAVE" in res.console


# ---- Multiboot loading (no shared files needed) --------------------------------------------

MB_CODE = """
  cmp eax, 0x2BADB002
  jne bad
  mov ecx, dword ptr [ebx + 8]
  cmp ecx, {upper}
  jne bad
  mov ecx, dword ptr [ebx]
  test ecx, 0x44
  jz bad
  mov esi, dword ptr [ebx + 16]
  mov dx, 0x3f8
next:
  mov al, byte ptr [esi]
  test al, al
  jz done
  out dx, al
  inc esi
  jmp next
done:
  mov al, 0
  out 0xf4, al
bad:
  mov al, 1
  out 0xf4, al
"""


def _multiboot_elf(memory: int, load: int = 0x200000, entry_delta: int = 12) -> bytes:
    """An ELF32 Multiboot kernel: checks EAX, mem_upper and the flags, prints the command
    line, exits 0 (1 on a wrong hand-over)."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    header = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(
        MB_CODE.format(upper=(memory - (1 << 20)) >> 10), load + len(header))
    body = header + bytes(code)
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", b"\x7fELF\x01\x01\x01" + b"\0" * 9, 2, 3, 1,
                       load + entry_delta, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0x1000, load, load, len(body), len(body), 5, 0x1000)
    return (ehdr + phdr).ljust(0x1000, b"\0") + body


def test_multiboot_kernel_gets_magic_memory_and_command_line(cli, write_profile, tmp_path):
    prof = write_profile(KUT_PROFILE)
    k = tmp_path / "kernel.elf"
    k.write_bytes(_multiboot_elf(16 << 20))
    r = cli("launch", prof, "--guest", str(k), "--memory", "16M", "--append", "console=ttyS0 x=1",
            "--json")
    doc = json.loads(r.stdout)
    assert (doc["status"], doc["guest_exit_code"], r.exit_code) == ("debug-exit", 0, 0)
    assert doc["console"] == f"{k} console=ttyS0 x=1"      # image name first, as QEMU does


def test_multiboot_is_detected_and_entered_in_32_bit_mode(cli, write_profile, tmp_path):
    prof = write_profile(KUT_PROFILE)
    k = tmp_path / "kernel.elf"
    k.write_bytes(_multiboot_elf(32 << 20))
    r = cli("launch", prof, "--guest", str(k), "--memory", "32M", "--mode", "64")
    assert r.exit_code == 2
    assert "Multiboot kernel is entered in 32-bit protected mode" in r.stderr
    r = cli("launch", prof, "--guest", str(k), "--memory", "32M", "--json")
    assert json.loads(r.stdout)["guest_exit_code"] == 0


@pytest.mark.parametrize("mangle,message", [
    (lambda b: b[:40], "truncated ELF header"),
    (lambda b: b[:0x1010], "truncated ELF: program header 0"),
    (lambda b: b[:52] + b"\xff" * 8, "truncated ELF program headers"),
])
def test_broken_images_are_refused_cleanly(cli, write_profile, tmp_path, mangle, message):
    prof = write_profile(KUT_PROFILE)
    k = tmp_path / "bad.elf"
    k.write_bytes(mangle(_multiboot_elf(16 << 20)))
    r = cli("launch", prof, "--guest", str(k))
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_entry_outside_memory_and_append_without_multiboot(cli, write_profile, tmp_path):
    prof = write_profile(KUT_PROFILE)
    k = tmp_path / "far.elf"
    k.write_bytes(_multiboot_elf(16 << 20, entry_delta=0x2000000))
    r = cli("launch", prof, "--guest", str(k), "--memory", "16M")
    assert r.exit_code == 2 and "outside guest RAM" in r.stderr
    r = cli("launch", prof, "--guest", "builtin:hello32", "--mode", "32", "--append", "x")
    assert r.exit_code == 2 and "not a Multiboot kernel" in r.stderr
