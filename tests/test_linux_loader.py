"""The Linux boot protocol loader: zero page, e820, placement, errors (vmm/linux.py, launch --kernel)."""

from __future__ import annotations

import gzip
import json
import struct

import pytest

from linux_fixtures import linux_inputs, linux_inputs_or_skip, synthetic_bzimage
from vmcfg.vmm.linux import (BOOT_CS, BOOT_DS, BOOT_GDT, CMDLINE_ADDR, E820_RAM, E820_RESERVED,
                             ZERO_PAGE, load_linux)
from vmcfg.vmm.loader import ImageError

MiB = 1 << 20


def _zp(img):
    return dict(img.segments)[ZERO_PAGE]


def _e820_from_zero_page(zp: bytes):
    n = zp[0x1E8]
    return [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(n)]


@pytest.fixture
def bz(tmp_path):
    def _w(data: bytes, name="bzImage"):
        p = tmp_path / name
        p.write_bytes(data)
        return str(p)
    return _w


@pytest.fixture
def rd(tmp_path):
    p = tmp_path / "initrd.gz"
    p.write_bytes(linux_inputs.build_initramfs(b"\x7fELF-not-really-busybox"))
    return str(p)


# ---- the real Debian kernel -------------------------------------------------------------

@pytest.mark.linux
def test_debian_kernel_zero_page_and_placement():
    inp = linux_inputs_or_skip()
    mem = 256 * MiB
    img, boot = load_linux(str(inp.kernel), memory=mem, initrd=str(inp.initrd),
                           cmdline="console=ttyS0 panic=-1 quiet")
    data = inp.kernel.read_bytes()
    h = boot.header
    assert h.version >= 0x20C and h.xloadflags & 1         # 64-bit entry offered
    # the protected-mode kernel at pref_address, aligned, copied byte for byte
    assert boot.load_address == h.pref_address and boot.load_address % h.kernel_alignment == 0
    segs = dict(img.segments)
    setup_len = ((data[0x1F1] or 4) + 1) * 512
    assert segs[boot.load_address] == data[setup_len:]
    assert img.entry == boot.load_address + 0x200 and img.mode == 64    # startup_64
    # the zero page: the header copy with the loader's fields
    zp = _zp(img)
    assert zp[0x202:0x206] == b"HdrS" and zp[0x210] == 0xFF              # type_of_loader
    assert struct.unpack_from("<I", zp, 0x228)[0] == CMDLINE_ADDR
    assert segs[CMDLINE_ADDR] == b"console=ttyS0 panic=-1 quiet\0"
    rd_addr, rd_size = struct.unpack_from("<II", zp, 0x218)
    assert rd_size == inp.initrd.stat().st_size and segs[rd_addr] == inp.initrd.read_bytes()
    # the initrd: page-aligned, above the kernel's init_size window, below both limits
    assert rd_addr % 0x1000 == 0
    assert rd_addr >= boot.load_address + h.init_size
    assert rd_addr + rd_size <= min(mem, h.initrd_addr_max + 1)
    assert rd_addr + rd_size > mem - 0x1000 - 1                      # as high as it goes
    # e820: RAM below the EBDA, the BIOS area reserved, RAM from 1 MiB to the top
    e820 = _e820_from_zero_page(zp)
    assert e820 == boot.e820
    assert e820[0] == (0, 0x9FC00, E820_RAM)
    assert (0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED) in e820
    assert e820[-1] == (0x100000, mem - 0x100000, E820_RAM)
    assert zp[0x1EF] == 0                                              # sentinel
    from vmcfg.vmm.devices.acpi import RSDP_ADDR
    assert struct.unpack_from("<Q", zp, 0x070)[0] == RSDP_ADDR          # acpi_rsdp_addr
    assert any(a <= RSDP_ADDR < a + n and t == E820_RESERVED for a, n, t in e820)
    # the start registers: RSI = zero page, __BOOT_CS/__BOOT_DS in the loader's GDT
    r = img.boot_regs
    assert r["rsi"] == ZERO_PAGE and r["cs"] == BOOT_CS and r["ds"] == r["ss"] == BOOT_DS
    gdt = segs[BOOT_GDT]
    code, dat = struct.unpack_from("<QQ", gdt, BOOT_CS)
    assert code >> 53 & 1 and code >> 43 & 1                           # L=1, executable
    assert not dat >> 43 & 1 and dat >> 41 & 1                         # data, writable


@pytest.mark.linux
def test_debian_kernel_32bit_entry():
    inp = linux_inputs_or_skip()
    img, boot = load_linux(str(inp.kernel), memory=256 * MiB, mode=32)
    assert img.entry == boot.load_address and img.mode == 32           # startup_32
    code = struct.unpack_from("<Q", dict(img.segments)[BOOT_GDT], BOOT_CS)[0]
    assert not code >> 53 & 1 and code >> 54 & 1                       # 32-bit code (D=1)


@pytest.mark.linux
def test_debian_kernel_too_big_for_memory(cli):
    inp = linux_inputs_or_skip()
    r = cli("launch", "baseline", "--kernel", str(inp.kernel), "--memory", "32M")
    assert r.exit_code == 2
    assert "init_size" in r.stderr and "--memory" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.linux
def test_launch_kernel_json_reports_status(cli):
    """The CLI path end to end, bounded: a few million instructions of the real kernel."""
    inp = linux_inputs_or_skip()
    r = cli("launch", "baseline", "--kernel", str(inp.kernel), "--initrd", str(inp.initrd),
            "--append", "console=ttyS0", "--memory", "256M", "--max-instructions", "200000",
            "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "instruction-limit" and r.exit_code == 10
    assert d["instructions"] == 200000


# ---- synthetic headers: the error cases ---------------------------------------------------

def test_not_a_bzimage(bz):
    with pytest.raises(ImageError, match="no 'HdrS'"):
        load_linux(bz(synthetic_bzimage(magic=b"XXXX")), memory=256 * MiB)
    with pytest.raises(ImageError, match="not a Linux bzImage"):
        load_linux(bz(b"\x90" * 100), memory=256 * MiB)
    with pytest.raises(ImageError, match="an ELF file"):
        load_linux(bz(b"\x7fELF" + b"\0" * 0x400), memory=256 * MiB)
    with pytest.raises(ImageError, match="zImage"):
        load_linux(bz(synthetic_bzimage(loadflags=0)), memory=256 * MiB)


def test_protocol_versions(bz):
    with pytest.raises(ImageError, match="boot protocol 2.04 is too old"):
        load_linux(bz(synthetic_bzimage(version=0x204)), memory=256 * MiB)
    # 2.10 has no 64-bit entry, but a 32-bit profile can boot it
    old = bz(synthetic_bzimage(version=0x20A))
    with pytest.raises(ImageError, match="no 64-bit entry .needs 2.12"):
        load_linux(old, memory=256 * MiB, mode=64)
    img, _b = load_linux(old, memory=256 * MiB, mode=32)
    assert img.mode == 32
    with pytest.raises(ImageError, match="XLF_KERNEL_64"):
        load_linux(bz(synthetic_bzimage(xloadflags=0)), memory=256 * MiB)


def test_placement_follows_the_header(bz):
    # not relocatable: code32_start; relocatable: pref_address rounded up to the alignment
    img, b = load_linux(bz(synthetic_bzimage(relocatable=0)), memory=64 * MiB)
    assert b.load_address == 0x100000 and img.entry == 0x100200
    img, b = load_linux(bz(synthetic_bzimage(pref_address=0x1100000, alignment=0x400000)),
                        memory=64 * MiB)
    assert b.load_address == 0x1400000


def test_too_big_and_initrd_limits(bz, rd):
    k = bz(synthetic_bzimage(init_size=60 * MiB))
    with pytest.raises(ImageError, match=r"more than --memory 64M; give at least --memory"):
        load_linux(k, memory=64 * MiB)
    # the initrd goes below initrd_addr_max even with more RAM above it
    k2 = bz(synthetic_bzimage(initrd_addr_max=0x3FFFFFF), "k2")
    img, b = load_linux(k2, memory=128 * MiB, initrd=rd)
    assert b.initrd_address + b.initrd_size <= 0x4000000
    # no room between the kernel window and the limit
    k3 = bz(synthetic_bzimage(init_size=0x2F00000, initrd_addr_max=0x3FFFFFF), "k3")
    with pytest.raises(ImageError, match="do not fit between the kernel"):
        load_linux(k3, memory=128 * MiB, initrd=_big(rd, 2 * MiB))


def _big(path: str, size: int) -> str:
    with open(path, "rb") as f:
        head = f.read()
    out = path + ".big"
    with open(out, "wb") as f:
        f.write(head + b"\0" * (size - len(head)))
    return out


def test_bad_initrd(bz, tmp_path):
    k = bz(synthetic_bzimage())
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"this is not an initramfs")
    with pytest.raises(ImageError, match="not an initramfs"):
        load_linux(k, memory=64 * MiB, initrd=str(junk))
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="the file is empty"):
        load_linux(k, memory=64 * MiB, initrd=str(empty))
    with pytest.raises(ImageError, match="no such file"):
        load_linux(k, memory=64 * MiB, initrd=str(tmp_path / "missing"))


def test_cmdline_limits(bz):
    k = bz(synthetic_bzimage(cmdline_size=16))
    with pytest.raises(ImageError, match="at most 16 .cmdline_size"):
        load_linux(k, memory=64 * MiB, cmdline="console=ttyS0 panic=-1")


def test_cli_errors_are_clean(cli, bz, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 1000)
    r = cli("launch", "baseline", "--kernel", str(junk))
    assert r.exit_code == 2 and "not a Linux bzImage" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = cli("launch", "baseline", "--kernel", bz(synthetic_bzimage(version=0x200)))
    assert r.exit_code == 2 and "too old" in r.stderr
    r = cli("launch", "baseline", "--kernel", bz(synthetic_bzimage()), "--initrd", str(junk))
    assert r.exit_code == 2 and "not an initramfs" in r.stderr
    r = cli("launch", "baseline", "--initrd", str(junk), "--guest", "builtin:hlt")
    assert r.exit_code == 2 and "needs --kernel" in r.stderr
    r = cli("launch", "baseline", "--append", "quiet", "--guest", "builtin:hlt")
    assert r.exit_code == 2 and "not a --kernel bzImage" in r.stderr
    r = cli("launch", "baseline", "--kernel", str(junk), "--guest", "builtin:hlt")
    assert r.exit_code == 2 and "exclude each other" in r.stderr


# ---- the initramfs writer -----------------------------------------------------------------

def test_initramfs_is_a_newc_archive_the_kernel_can_read():
    blob = linux_inputs.build_initramfs(b"BUSYBOX", "#!/bin/sh\necho hi\n")
    raw = gzip.decompress(blob)
    assert len(raw) % 512 == 0
    names, pos = {}, 0
    while True:
        hdr = raw[pos:pos + 110]
        assert hdr[:6] == b"070701"
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, nsz = f[1], f[6], f[9], f[10], f[11]
        name = raw[pos + 110:pos + 110 + nsz - 1].decode()
        pos = (pos + 110 + nsz + 3) & ~3
        data = raw[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            break
        names[name] = (mode, data, (rmaj, rmin))
    assert names["init"][1] == b"#!/bin/sh\necho hi\n" and names["init"][0] & 0o111
    assert names["bin/busybox"][1] == b"BUSYBOX"
    assert names["bin/sh"] == (0o120777, b"busybox", (0, 0))
    assert names["dev/console"][0] == 0o020600 and names["dev/console"][2] == (5, 1)
    # deterministic: the same inputs give the same bytes
    assert linux_inputs.build_initramfs(b"BUSYBOX", "#!/bin/sh\necho hi\n") == blob


def test_a_kernel_boot_machine_has_a_1ghz_tsc_unless_the_profile_sets_one(cli, bz, tmp_path):
    # startup_64 (load address + 0x200): CPUID leaf 0x16 (base MHz), its low byte to 0xF4
    code = bytes.fromhex("b816000000" "0fa2" "e6f4" "f4")
    k = bz(synthetic_bzimage(payload=b"\x90" * 0x200 + code + b"\x90" * 0x100))
    r = cli("launch", "baseline", "--kernel", k, "--json")
    assert json.loads(r.stdout)["guest_exit_code"] == 1000 & 0xFF, r.stdout
    p = tmp_path / "slow.toml"
    p.write_text('[profile]\nname = "slow"\nextends = "baseline"\n[tsc]\nfrequency = 2_000_000\n')
    r = cli("launch", str(p), "--kernel", k, "--json")
    assert json.loads(r.stdout)["guest_exit_code"] == 2


@pytest.mark.parametrize("kernel, initrd, extra, words", [
    ("missing", None, (), "no such file"),
    ("empty", None, (), "empty"),
    ("elf", None, (), "an ELF file"),
    ("zimage", None, (), "zImage"),
    ("old", None, (), "too old"),
    ("huge", None, ("--memory", "64M"), "give at least --memory"),
    ("ok", "junk", (), "not an initramfs"),
    ("ok", "empty", (), "empty"),
    ("ok", "missing", (), "no such file"),
    ("ok", "big", ("--memory", "32M"), "do not fit"),
])
def test_bad_kernels_and_initrds_give_one_line_and_status_2(cli, bz, tmp_path, kernel, initrd,
                                                           extra, words):
    """What a user sees for each bad --kernel / --initrd: one line on stderr naming the
    problem, exit status 2 (usage), nothing run; with --json the error object on stdout."""
    files = {"empty": b"", "elf": b"\x7fELF" + b"\0" * 0x400,
             "zimage": synthetic_bzimage(loadflags=0), "old": synthetic_bzimage(version=0x201),
             "huge": synthetic_bzimage(init_size=80 * MiB), "ok": synthetic_bzimage(),
             "junk": b"not an initramfs at all", "big": b"\x1f\x8b" + b"\0" * (40 * MiB)}

    def path(name):
        return str(tmp_path / "missing") if name == "missing" else bz(files[name], name)
    args = ["launch", "baseline", "--kernel", path(kernel), *extra]
    if initrd:
        args += ["--initrd", path(initrd)]
    r = cli(*args)
    assert r.exit_code == 2 and words in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    d = json.loads(cli(*args, "--json").stdout)
    assert d["status"] == "usage" and d["exit_status"] == 2 and words in d["error"]["message"]


def test_a_32bit_profile_enters_startup_32(cli, bz, write_profile):
    """A profile that is a 32-bit guest (no entry.ia32e_mode_guest; unrestricted guest) boots
    the kernel at startup_32 (the load address) in protected mode, paging off, with
    __BOOT_CS and RSI = the zero page; a 64-bit profile at startup_64 (load address + 0x200)."""
    # startup_32: (ESI >> 12) + CS to the debug-exit port -> 0x10 + 0x10
    s32 = bytes.fromhex("89f0" "c1e80c" "8ccb" "01d8" "e6f4")
    # startup_64: 0x40 to the debug-exit port
    s64 = bytes.fromhex("b040" "e6f4")
    k = bz(synthetic_bzimage(payload=s32 + b"\x90" * (0x200 - len(s32)) + s64 + b"\xf4" * 16))
    p32 = write_profile('[profile]\nextends = "linux"\n[entry]\nia32e_mode_guest = false\n')
    for profile, code in ((p32, 0x20), ("linux", 0x40), ("baseline", 0x40)):
        r = cli("launch", profile, "--kernel", k, "--json")
        d = json.loads(r.stdout)
        assert (d["status"], d["guest_exit_code"]) == ("debug-exit", code), (profile, r.stdout)
    # a 32-bit profile without unrestricted guest cannot start with paging off: entry fails
    p = write_profile('[profile]\nextends = "baseline"\n[entry]\nia32e_mode_guest = false\n',
                      "nug.toml")
    r = cli("launch", p, "--kernel", k, "--json")
    d = json.loads(r.stdout)
    assert d["status"] == "entry-failure" and r.exit_code == 4 and "G3" in r.stdout


# ---- --kernel-entry payload: the loader unpacks the kernel proper ---------------------------
def _elf64(segments, entry):
    """A minimal ELF64 executable: PT_LOAD segments (paddr, bytes, memsz) and an entry."""
    ph = 64
    data_off = ph + 56 * len(segments)
    hdr = bytearray(64)
    hdr[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 2, 62, 1, entry, ph, 0, 0, 64, 56,
                     len(segments), 0, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for paddr, blob, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 5, off, 0xFFFFFFFF80000000 + paddr, paddr,
                             len(blob), memsz, 0x1000)
        blobs += blob
        off += len(blob)
    return bytes(hdr) + phdrs + blobs


def _with_payload(payload: bytes) -> bytes:
    data = bytearray(synthetic_bzimage(payload=b"\x90" * 0x200 + payload))
    struct.pack_into("<II", data, 0x248, 0x200, len(payload))     # payload_offset / _length
    return bytes(data)


def test_payload_entry_loads_the_elf_segments_and_enters_it(bz):
    text, data = b"\xf4" * 0x300, b"\x42" * 0x100
    elf = _elf64([(0x1000000, text, 0x1000), (0x1200000, data, 0x2000)], 0x1000040)
    k = bz(_with_payload(gzip.compress(elf)))
    img, boot = load_linux(k, memory=128 * MiB, entry_kind="payload")
    segs = dict(img.segments)
    assert segs[0x1000000] == text and segs[0x1200000] == data
    assert img.entry == boot.entry == 0x1000040
    assert img.boot_regs["rsi"] == ZERO_PAGE           # startup_64 takes boot_params in RSI
    # the default entry is the bzImage's own, its compressed payload loaded as it is
    img2, _b = load_linux(k, memory=128 * MiB)
    assert img2.entry == 0x1000000 + 0x200 and 0x1200000 not in dict(img2.segments)


def test_payload_entry_errors(bz, cli):
    k = bz(_with_payload(b"\x00not compressed"))
    with pytest.raises(ImageError, match="unpacks xz or gzip"):
        load_linux(k, memory=128 * MiB, entry_kind="payload")
    with pytest.raises(ImageError, match="64-bit start"):
        load_linux(k, memory=128 * MiB, mode=32, entry_kind="payload")
    bad = bz(_with_payload(gzip.compress(b"not an ELF")), "bad")
    with pytest.raises(ImageError, match="not a 64-bit ELF"):
        load_linux(bad, memory=128 * MiB, entry_kind="payload")
    far = bz(_with_payload(gzip.compress(_elf64([(0x7000000, b"\x90", 1)], 0x7000000))), "far")
    with pytest.raises(ImageError, match="outside the kernel's window"):
        load_linux(far, memory=256 * MiB, entry_kind="payload")
    r = cli("launch", "baseline", "--kernel", k, "--kernel-entry", "payload")
    assert r.exit_code == 2 and "unpacks xz or gzip" in r.stderr and "Traceback" not in r.stderr
    r = cli("launch", "baseline", "--guest", "builtin:hlt", "--kernel-entry", "payload")
    assert r.exit_code == 2 and "--kernel-entry needs --kernel" in r.stderr


@pytest.mark.linux
def test_debian_kernel_payload_entry():
    inp = linux_inputs_or_skip()
    img, boot = load_linux(str(inp.kernel), memory=256 * MiB, initrd=str(inp.initrd),
                           entry_kind="payload")
    segs = dict(img.segments)
    # the xz payload is the ELF vmlinux: its text at LOAD_PHYSICAL_ADDR, entered at startup_64
    assert img.entry == 0x1000000 and len(segs[0x1000000]) > 16 * MiB
    assert all(boot.load_address <= a and a + len(d) <= boot.load_address +
               boot.header.init_size for a, d in img.segments if a >= 0x1000000 and
               a != boot.initrd_address)
