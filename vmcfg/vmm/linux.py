"""The Linux x86 boot protocol: load a bzImage (and an initramfs) the way a boot loader does.

What a boot loader does for a protected-mode or 64-bit entry (Documentation/x86/boot.rst),
and what this module does, in order:

1. check the setup header: boot flag 0xAA55, magic ``HdrS``, a protocol version of at least
   2.06 (2.12 for the 64-bit entry, which also needs XLF_KERNEL_64 in ``xloadflags``),
   LOADED_HIGH in ``loadflags`` (a bzImage);
2. put the protected-mode kernel (the file after the ``setup_sects + 1`` setup sectors) at
   ``pref_address`` if the kernel is relocatable (aligned to ``kernel_alignment``), else
   at ``code32_start`` (0x100000); the kernel needs ``init_size`` bytes from there;
3. put the initramfs as high as ``initrd_addr_max`` and guest RAM allow, page-aligned,
   above the kernel's ``init_size`` window;
4. write the zero page (``struct boot_params``) with a copy of the setup header
   (type_of_loader 0xFF, cmd_line_ptr, ramdisk_image/size), an e820 map (RAM; the EBDA and
   the BIOS area 0x9FC00-0xFFFFF and any platform ranges reserved) and the ACPI RSDP
   address when the platform has one;
5. start at ``startup_64`` (load address + 0x200) in 64-bit mode with identity-mapped
   page tables (the VMM's 64-bit start state), or at ``startup_32`` (the load address) in
   flat 32-bit protected mode with paging off; in both, ``__BOOT_CS`` = 0x10 and
   ``__BOOT_DS`` = 0x18 are flat 4 GiB segments of a GDT the loader provides, interrupts
   are off and RSI/ESI holds the address of the zero page.

Guest-physical layout (all above the VMM area 0x0-0xFFFF):

    0x10000  zero page (boot_params, 4 KiB)
    0x11000  the boot GDT (null, null, __BOOT_CS, __BOOT_DS)
    0x20000  command line (NUL-terminated, at most cmdline_size bytes)
    pref_address (or 0x100000)  the protected-mode kernel; init_size bytes reserved from here
    top of RAM  the initramfs (page-aligned, below initrd_addr_max)

Every problem is a :class:`~vmcfg.vmm.loader.ImageError` with a one-line message
(``vmcfg launch`` exits with status 2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .loader import Image, ImageError, read_input


# The machine a --kernel boot runs on has a 1 GHz TSC where the profile sets no tsc.frequency
# (CPUID 0x15/0x16 say so): the machine clock's default 1.193182 MHz, what the bundled guests
# assume, would give a Linux kernel a 250 Hz tick every 4,772 instructions -- less than its
# tick handler takes, so the boot would do little but take timer interrupts.
LINUX_TSC_HZ = 1_000_000_000

ZERO_PAGE = 0x10000
BOOT_GDT = 0x11000
CMDLINE_ADDR = 0x20000
BOOT_CS, BOOT_DS = 0x10, 0x18
LOW_RAM_END = 0x9FC00            # conventional memory below the EBDA
BIOS_AREA = (0x9FC00, 0x100000)  # EBDA, VGA hole, option ROMs, BIOS: reserved
MAX_KERNEL = 256 << 20
MAX_INITRD = 1 << 30
MIN_PROTOCOL = 0x206             # cmdline_size, a 32-bit entry with ESI = boot_params
MIN_PROTOCOL_64 = 0x20C          # xloadflags (XLF_KERNEL_64): the 64-bit entry

E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4

# setup header fields: name -> (offset in the file / zero page, struct format)
HDR = {
    "setup_sects": (0x1F1, "B"), "syssize": (0x1F4, "I"), "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"), "header": (0x202, "4s"), "version": (0x206, "H"),
    "type_of_loader": (0x210, "B"), "loadflags": (0x211, "B"), "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"), "ramdisk_size": (0x21C, "I"), "heap_end_ptr": (0x224, "H"),
    "cmd_line_ptr": (0x228, "I"), "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"), "relocatable_kernel": (0x234, "B"),
    "min_alignment": (0x235, "B"), "xloadflags": (0x236, "H"), "cmdline_size": (0x238, "I"),
    "pref_address": (0x258, "Q"), "init_size": (0x260, "I"),
}
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80
XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G = 0x01, 0x02

# boot_params fields outside the header
BP_ACPI_RSDP = 0x070
BP_EXT_RAMDISK_IMAGE, BP_EXT_RAMDISK_SIZE, BP_EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_E820_TABLE = 0x2D0
E820_MAX = 128

# what an initramfs can start with (the kernel's decompressors and cpio)
INITRD_MAGIC = {b"\x1f\x8b": "gzip", b"\x1f\x9e": "gzip", b"070701": "cpio (newc)",
                b"070702": "cpio (crc)", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                b"BZh": "bzip2", b"\x5d\x00\x00": "lzma", b"\x02\x21\x4c\x18": "lz4",
                b"\x89LZO": "lzo"}


@dataclass
class SetupHeader:
    version: int
    setup_sects: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    raw: bytes = field(repr=False, default=b"")   # file bytes 0x1F1 .. end of the header

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


@dataclass
class LinuxBoot:
    """What the loader decided (for reports and tests)."""
    header: SetupHeader
    load_address: int
    kernel_size: int
    entry: int
    mode: int
    initrd_address: int | None
    initrd_size: int
    cmdline: str
    e820: list[tuple[int, int, int]]
    zero_page: bytes = field(repr=False, default=b"")


def kernel_mode(cfg, written_mode: int | None = None) -> int:
    """The entry a profile asks for: 64-bit with entry.ia32e_mode_guest, else 32-bit."""
    if written_mode:
        return int(written_mode)
    return 64 if cfg.on("entry.ia32e_mode_guest") else 32


def _field(data: bytes, name: str) -> int | bytes:
    off, fmt = HDR[name]
    return struct.unpack_from("<" + fmt, data, off)[0]


def parse_header(data: bytes, name: str = "kernel") -> SetupHeader:
    """The setup header of a bzImage, or ImageError saying why the file is not one."""
    if len(data) < 0x264:
        raise ImageError(f"{name}: not a Linux bzImage (only {len(data)} bytes; a bzImage "
                         "starts with a setup header of at least 0x264 bytes)")
    if data[:4] == b"\x7fELF":
        raise ImageError(f"{name}: an ELF file, not a bzImage (an uncompressed vmlinux?); "
                         "give --kernel the compressed kernel (arch/x86/boot/bzImage, "
                         "/boot/vmlinuz-*)")
    if _field(data, "header") != b"HdrS":
        raise ImageError(f"{name}: not a Linux bzImage (no 'HdrS' setup header magic at 0x202)")
    if _field(data, "boot_flag") != 0xAA55:
        raise ImageError(f"{name}: not a Linux bzImage (boot flag at 0x1FE is not 0xAA55)")
    version = _field(data, "version")
    hdr_end = min(len(data), 0x202 + data[0x201])
    get = lambda n: _field(data, n) if HDR[n][0] + struct.calcsize(HDR[n][1]) <= hdr_end else 0  # noqa: E731
    h = SetupHeader(version=version, setup_sects=data[0x1F1] or 4,
                    loadflags=_field(data, "loadflags"), code32_start=_field(data, "code32_start"),
                    initrd_addr_max=get("initrd_addr_max") if version >= 0x203 else 0x37FFFFFF,
                    kernel_alignment=get("kernel_alignment") if version >= 0x205 else 0,
                    relocatable=bool(get("relocatable_kernel")) if version >= 0x205 else False,
                    xloadflags=get("xloadflags") if version >= 0x20C else 0,
                    cmdline_size=get("cmdline_size") if version >= 0x206 else 255,
                    pref_address=get("pref_address") if version >= 0x20A else 0x100000,
                    init_size=get("init_size") if version >= 0x20A else 0,
                    raw=bytes(data[0x1F1:hdr_end]))
    if version < MIN_PROTOCOL:
        raise ImageError(f"{name}: boot protocol {h.version_text} is too old; vmcfg needs 2.06 "
                         "or later (Linux 2.6.22+) for a protected-mode entry")
    if not h.loadflags & LOADED_HIGH:
        raise ImageError(f"{name}: a zImage (loadflags without LOADED_HIGH); vmcfg boots "
                         "bzImages only")
    return h


def _e820(memory: int, reserved: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """RAM from 0 and 1 MiB up, minus the BIOS area and `reserved` (start, end, type)."""
    holes = sorted([(BIOS_AREA[0], BIOS_AREA[1], E820_RESERVED)]
                   + [(s, e, t) for s, e, t in reserved if e > s])
    out: list[tuple[int, int, int]] = []
    pos = 0
    for s, e, t in holes:
        if s > pos and pos < memory:
            out.append((pos, min(s, memory) - pos, E820_RAM))
        out.append((s, e - s, t))
        pos = max(pos, e)
    if pos < memory:
        out.append((pos, memory - pos, E820_RAM))
    return out


def _initrd_kind(data: bytes) -> str | None:
    for magic, kind in INITRD_MAGIC.items():
        if data.startswith(magic):
            return kind
    return None


def _gdt() -> bytes:
    return struct.pack("<QQQQ", 0, 0,
                       0x00AF9A000000FFFF,    # 0x10 __BOOT_CS: 64-bit code (L=1)
                       0x00CF92000000FFFF)    # 0x18 __BOOT_DS: flat data


def _gdt32() -> bytes:
    return struct.pack("<QQQQ", 0, 0,
                       0x00CF9A000000FFFF,    # 0x10 __BOOT_CS: 32-bit flat code
                       0x00CF92000000FFFF)    # 0x18 __BOOT_DS: flat data


def unpack_payload(kdata: bytes, setup_len: int, name: str) -> tuple[list[tuple[int, bytes]], int]:
    """The kernel proper inside a bzImage (boot protocol 2.08+: payload_offset/payload_length
    in the setup header): an xz- or gzip-compressed ELF vmlinux, unpacked here as the
    bzImage's own decompressor would unpack it.  Returns its PT_LOAD segments at their
    physical addresses (file bytes; the rest of each segment is zero RAM) and its entry."""
    import gzip
    import lzma
    po, pl = struct.unpack_from("<II", kdata, 0x248)
    blob = kdata[setup_len + po:setup_len + po + pl]
    try:
        if blob[:6] == b"\xfd7zXZ\x00":
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
        elif blob[:2] in (b"\x1f\x8b", b"\x1f\x9e"):
            elf = gzip.GzipFile(fileobj=__import__("io").BytesIO(blob)).read()
        else:
            raise ImageError(f"{name}: --kernel-entry payload unpacks xz or gzip payloads; this "
                             f"kernel's starts with {blob[:6].hex()} (use the default entry)")
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ImageError(f"{name}: its payload does not unpack: {e}") from None
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageError(f"{name}: its payload is not a 64-bit ELF kernel")
    entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segs = []
    for i in range(phnum):
        ptype, _fl, off, _va, pa, fsz, _msz, _al = struct.unpack_from("<IIQQQQQQ", elf,
                                                                        phoff + i * phentsize)
        if ptype == 1 and fsz:
            segs.append((pa, elf[off:off + fsz]))
    return segs, entry


def load_linux(kernel: str, *, memory: int, mode: int = 64, initrd: str | None = None,
               cmdline: str = "", reserved: list[tuple[int, int, int]] | None = None,
               acpi_rsdp: int | None = -1, entry_kind: str = "bzimage") -> tuple[Image, LinuxBoot]:
    """Load `kernel` (a bzImage file) for a `mode`-bit start into `memory` bytes of RAM.

    `reserved` are platform ranges (start, end, e820 type) to keep out of the RAM map
    (ACPI tables, MMIO below the top of RAM); `acpi_rsdp` the RSDP address for
    boot_params.acpi_rsdp_addr (default: the board's, devices/acpi.py; None: leave it 0 and
    let the kernel scan the BIOS area).  Returns the Image to run and the loader's decisions.
    """
    if acpi_rsdp == -1:
        from .devices.acpi import RSDP_ADDR
        acpi_rsdp = RSDP_ADDR
    kdata = read_input(kernel, "kernel", MAX_KERNEL)
    h = parse_header(kdata, kernel)
    if mode == 64:
        if h.version < MIN_PROTOCOL_64:
            raise ImageError(f"{kernel}: boot protocol {h.version_text} has no 64-bit entry "
                             "(needs 2.12 or later); use a 32-bit profile or a newer kernel")
        if not h.xloadflags & XLF_KERNEL_64:
            raise ImageError(f"{kernel}: not a 64-bit kernel (xloadflags lacks XLF_KERNEL_64); "
                             "boot it with a 32-bit profile")
    elif mode != 32:
        raise ImageError(f"{kernel}: a Linux kernel starts in 32-bit or 64-bit mode, not {mode}-bit")
    setup_len = (h.setup_sects + 1) * 512
    if setup_len >= len(kdata):
        raise ImageError(f"{kernel}: truncated bzImage ({len(kdata)} bytes, the setup code "
                         f"alone claims {setup_len})")
    pm = kdata[setup_len:]
    if h.relocatable and h.kernel_alignment and h.pref_address:
        align = h.kernel_alignment
        load = (h.pref_address + align - 1) // align * align
    else:
        load = h.code32_start or 0x100000
    window = max(h.init_size, len(pm))
    kernel_end = load + window
    if kernel_end > memory:
        raise ImageError(f"{kernel}: the kernel needs guest-physical {load:#x}-{kernel_end - 1:#x} "
                         f"({window >> 20} MiB of init_size from its load address), more than "
                         f"--memory {memory >> 20}M; give at least --memory "
                         f"{(kernel_end + (32 << 20) + (1 << 20) - 1) >> 20}M")

    # command line
    cl = cmdline.encode()
    if b"\0" in cl:
        raise ImageError("--append: the command line must not contain NUL")
    if len(cl) > h.cmdline_size:
        raise ImageError(f"--append: the command line is {len(cl)} bytes; this kernel takes at "
                         f"most {h.cmdline_size} (cmdline_size)")

    # initramfs
    rd_addr, rd_size, rd = None, 0, b""
    if initrd is not None:
        rd = read_input(initrd, "initrd", MAX_INITRD)
        if _initrd_kind(rd) is None:
            raise ImageError(f"initrd {initrd}: not an initramfs (no cpio, gzip, xz, zstd, "
                             "bzip2, lzma, lz4 or lzo magic at the start)")
        rd_size = len(rd)
        top = min(memory, h.initrd_addr_max + 1)
        if mode == 32 or not h.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G:
            top = min(top, 1 << 32)
        for s, e, _t in reserved or ():
            if s < top <= e or s < top < e:
                top = min(top, s)
        rd_addr = (top - rd_size) & ~0xFFF
        if rd_addr < kernel_end:
            room = max(0, top - kernel_end)
            raise ImageError(f"initrd {initrd}: {rd_size} bytes do not fit between the kernel "
                             f"(up to {kernel_end:#x}) and the initrd limit {top:#x} "
                             f"({room >> 20} MiB free); give more --memory")

    # zero page
    e820 = _e820(memory, list(reserved or ()))
    if len(e820) > E820_MAX:
        raise ImageError(f"the memory map has {len(e820)} entries; the zero page holds {E820_MAX}")
    zp = bytearray(0x1000)
    zp[0x1F1:0x1F1 + len(h.raw)] = h.raw

    def put(name: str, value: int) -> None:
        off, fmt = HDR[name]
        struct.pack_into("<" + fmt, zp, off, value)

    put("type_of_loader", 0xFF)
    put("loadflags", (h.loadflags & ~CAN_USE_HEAP) & 0xFF)
    put("code32_start", load)
    put("cmd_line_ptr", CMDLINE_ADDR)
    if rd_addr is not None:
        put("ramdisk_image", rd_addr & 0xFFFFFFFF)
        put("ramdisk_size", rd_size & 0xFFFFFFFF)
        struct.pack_into("<II", zp, BP_EXT_RAMDISK_IMAGE, rd_addr >> 32, rd_size >> 32)
    if acpi_rsdp is not None and h.version >= 0x20E:
        struct.pack_into("<Q", zp, BP_ACPI_RSDP, acpi_rsdp)
    zp[BP_SENTINEL] = 0
    zp[BP_E820_ENTRIES] = len(e820)
    for i, (a, n, t) in enumerate(e820):
        struct.pack_into("<QQI", zp, BP_E820_TABLE + 20 * i, a, n, t)

    gdt = _gdt() if mode == 64 else _gdt32()
    entry = load + 0x200 if mode == 64 else load
    kernel_segs = [(load, pm)]
    if entry_kind == "payload":
        # the kernel proper, unpacked by the loader, entered at startup_64 (no decompressor)
        if mode != 64 or h.version < 0x208:
            raise ImageError(f"{kernel}: --kernel-entry payload needs a 64-bit start and boot "
                             "protocol 2.08 or later")
        kernel_segs, entry = unpack_payload(kdata, setup_len, kernel)
        for a, data in kernel_segs:
            if a < load or a + len(data) > kernel_end:
                raise ImageError(f"{kernel}: a payload segment at {a:#x} lies outside the "
                                 f"kernel's window {load:#x}-{kernel_end - 1:#x}")
    segs = [(ZERO_PAGE, bytes(zp)), (BOOT_GDT, gdt), (CMDLINE_ADDR, cl + b"\0")] + kernel_segs
    if rd_addr is not None:
        segs.append((rd_addr, rd))
    regs = {"gdtr": (BOOT_GDT, len(gdt) - 1), "cs": BOOT_CS, "ds": BOOT_DS, "es": BOOT_DS,
            "ss": BOOT_DS, "fs": BOOT_DS, "gs": BOOT_DS, "rsi": ZERO_PAGE, "rdi": 0, "rbp": 0,
            "rbx": 0}
    boot = LinuxBoot(h, load, len(pm), entry, mode, rd_addr, rd_size, cmdline, e820, bytes(zp))
    return Image(kernel, segs, entry, "linux", mode, boot_regs=regs, linux=boot), boot
