"""Shared helpers for the Linux tests: the Debian kernel and busybox, fetched once per session.

They come the way a user gets them (tools/linux_inputs.py: apt-get download + dpkg-deb -x,
an initramfs written by our own cpio/gzip code) into $VMCFG_TEST_CACHE (default
~/.cache/vmcfg-test); where no package source is reachable the tests that need them skip
and say why.
"""

from __future__ import annotations

import os
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import linux_inputs  # noqa: E402

_CACHE: dict = {}


def linux_inputs_or_skip():
    if "inputs" not in _CACHE:
        try:
            _CACHE["inputs"] = linux_inputs.fetch()
        except linux_inputs.InputsUnavailable as e:
            _CACHE["inputs"] = e
    v = _CACHE["inputs"]
    if isinstance(v, Exception):
        pytest.skip(f"no Debian kernel/busybox here: {v}")
    return v


def synthetic_bzimage(*, version: int = 0x20F, magic: bytes = b"HdrS", loadflags: int = 0x01,
                      xloadflags: int = 0x03, init_size: int = 0x400000,
                      pref_address: int = 0x1000000, alignment: int = 0x200000,
                      relocatable: int = 1, cmdline_size: int = 2047,
                      initrd_addr_max: int = 0x7FFFFFFF, setup_sects: int = 4,
                      payload: bytes = b"\x90" * 0x1000) -> bytes:
    """A minimal bzImage: setup sectors with a setup header, then a protected-mode payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x66"            # jmp over the header
    setup[0x201] = 0x66                         # header length - 0x202 = 0x268 - 0x202
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, alignment)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload
