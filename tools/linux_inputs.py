#!/usr/bin/env python3
"""Fetch a stock Debian 12 kernel and busybox-static, and build a busybox initramfs.

The inputs of the Linux boot tests and of bench/linux_boot.py, fetched the way a
user would: ``apt-get download linux-image-6.1.0-<n>-amd64`` (the newest <n> the
package sources offer) and ``apt-get download busybox-static``, unpacked with
``dpkg-deb -x``.  Everything goes to a cache directory outside the repository
(``$VMCFG_TEST_CACHE``, default ``~/.cache/vmcfg-test``); nothing is committed.

The initramfs is written here (cpio "newc" + gzip), no external cpio needed:

    /init            a busybox shell script (default: prints ``vmcfg-ok 42``, which
                     its shell computes as $((6*7)), then ``/bin/busybox poweroff -f``)
    /bin/busybox     the static busybox, /bin/sh a symlink to it
    /dev/console     character device 5:1 (the kernel opens it for init)

Usage: python tools/linux_inputs.py [--cache DIR]   (prints the kernel and initrd paths)
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_INIT = """#!/bin/sh
echo vmcfg-ok $((6*7))
/bin/busybox poweroff -f
"""
EXPECTED_LINE = "vmcfg-ok 42"


class InputsUnavailable(Exception):
    """The kernel or busybox cannot be fetched here (no apt, no reachable package source)."""


@dataclass
class LinuxInputs:
    kernel: Path          # the bzImage (vmlinuz-6.1.0-<n>-amd64)
    busybox: Path         # the static busybox binary
    initrd: Path          # initramfs built with DEFAULT_INIT
    package: str          # the kernel package name


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    d = Path(explicit or os.environ.get("VMCFG_TEST_CACHE")
             or Path.home() / ".cache" / "vmcfg-test")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    if shutil.which(argv[0]) is None:
        raise InputsUnavailable(f"{argv[0]} is not installed (needs a Debian/Ubuntu host)")
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InputsUnavailable(f"{' '.join(argv)}: timed out") from None
    if p.returncode != 0:
        raise InputsUnavailable(f"{' '.join(argv)} failed: {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout


def newest_kernel_package() -> str:
    """The linux-image-6.1.0-<n>-amd64 package with the highest <n> apt knows."""
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"])
    ns = sorted({int(m.group(1)) for m in re.finditer(r"^linux-image-6\.1\.0-(\d+)-amd64 ", out, re.M)})
    if not ns:
        raise InputsUnavailable("apt-cache knows no linux-image-6.1.0-<n>-amd64 package "
                                "(no Debian 12 package source configured; run apt-get update)")
    return f"linux-image-6.1.0-{ns[-1]}-amd64"


def _download(pkg: str, d: Path) -> Path:
    base = pkg.split("=")[0]
    have = sorted(d.glob(f"{base}_*.deb"))
    if have:
        return have[-1]
    _run(["apt-get", "download", pkg], cwd=d)
    have = sorted(d.glob(f"{base}_*.deb"))
    if not have:
        raise InputsUnavailable(f"apt-get download {pkg} produced no .deb")
    return have[-1]


def _unpack(deb: Path, d: Path) -> Path:
    root = d / (deb.stem + ".root")
    if not (root / ".done").exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        (root / ".done").write_text("")
    return root


def fetch(cache: str | os.PathLike | None = None) -> LinuxInputs:
    """Fetch (or reuse) the kernel and busybox and build the default initramfs."""
    d = cache_dir(cache)
    pkg = newest_kernel_package()
    kroot = _unpack(_download(pkg, d), d)
    kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise InputsUnavailable(f"{pkg}: no /boot/vmlinuz-* in the package")
    broot = _unpack(_download("busybox-static", d), d)
    bb = broot / "bin" / "busybox"
    if not bb.is_file():
        raise InputsUnavailable("busybox-static: no /bin/busybox in the package")
    initrd = d / "initrd-vmcfg-ok.gz"
    data = build_initramfs(bb.read_bytes(), DEFAULT_INIT)
    if not initrd.exists() or initrd.read_bytes() != data:
        tmp = initrd.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, initrd)
    return LinuxInputs(kernels[-1], bb, initrd, pkg)


# ---- cpio "newc" ---------------------------------------------------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _pad4(n: int) -> bytes:
    return b"\0" * (-n & 3)


def cpio_entry(name: str, mode: int, data: bytes = b"", *, ino: int, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), mtime: int = 0) -> bytes:
    """One newc record: the 110-byte ASCII header, the NUL-terminated name, the data."""
    fields = [ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1],
              len(name) + 1, 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = hdr + name.encode() + b"\0"
    out += _pad4(len(out))
    out += data + _pad4(len(data))
    return out


def cpio_archive(entries: list[tuple]) -> bytes:
    """entries: (name, mode, data[, rdev]) in order; the trailer is appended."""
    out = bytearray()
    for i, e in enumerate(entries, start=1):
        name, mode, data = e[0], e[1], e[2]
        rdev = e[3] if len(e) > 3 else (0, 0)
        out += cpio_entry(name, mode, data, ino=i, nlink=2 if mode & S_IFDIR == S_IFDIR else 1,
                          rdev=rdev)
    out += cpio_entry("TRAILER!!!", 0, b"", ino=0)
    out += b"\0" * (-len(out) & 511)
    return bytes(out)


def build_initramfs(busybox: bytes, init: str = DEFAULT_INIT) -> bytes:
    """A gzip-compressed newc archive with busybox and `init` as /init (deterministic)."""
    entries = [
        ("bin", S_IFDIR | 0o755, b""),
        ("bin/busybox", S_IFREG | 0o755, busybox),
        ("bin/sh", S_IFLNK | 0o777, b"busybox"),
        ("dev", S_IFDIR | 0o755, b""),
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", S_IFDIR | 0o755, b""),
        ("sys", S_IFDIR | 0o755, b""),
        ("init", S_IFREG | 0o755, init.encode()),
    ]
    return gzip.compress(cpio_archive(entries), compresslevel=6, mtime=0)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="cache directory (default $VMCFG_TEST_CACHE or ~/.cache/vmcfg-test)")
    a = ap.parse_args(argv)
    try:
        inp = fetch(a.cache)
    except InputsUnavailable as e:
        print(f"linux_inputs: {e}", file=sys.stderr)
        return 3
    print(f"kernel  {inp.kernel}  ({inp.package})")
    print(f"initrd  {inp.initrd}")
    print(f"busybox {inp.busybox}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
