"""Guest images: flat binaries, ELF executables, assembly sources, bundled guests."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..vmx.sizes import parse_size  # noqa: F401 - the one size grammar

MAX_IMAGE = 64 << 20
GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"


class ImageError(Exception):
    """A guest image that cannot be loaded (message says why)."""


@dataclass
class Image:
    name: str
    segments: list[tuple[int, bytes]] = field(default_factory=list)   # (guest-physical, data)
    entry: int = 0
    kind: str = "flat"
    mode: int | None = None          # the mode the image asks for (ELF class, asm BITS)
    multiboot: bool = False          # a Multiboot (v1) kernel: entered with EAX/EBX per the spec
    # registers a boot protocol sets on top of the start state (e.g. Linux: GDTR, the
    # __BOOT_CS/__BOOT_DS selectors, RSI = zero page); names as in setup_start_state
    boot_regs: dict = field(default_factory=dict)
    linux: object | None = None      # vmm.linux.LinuxBoot for a bzImage


def builtin_names() -> list[str]:
    if not GUESTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in GUESTS_DIR.glob("*.bin"))


def resolve_spec(spec: str, base_dir: str | None = None) -> Path:
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        p = GUESTS_DIR / f"{name}.bin"
        if not p.is_file():
            import difflib
            names = builtin_names()
            hint = difflib.get_close_matches(name, names, n=1)
            raise ImageError(f"no bundled guest {name!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                                            else f" (bundled: {', '.join(names)})"))
        return p
    p = Path(spec)
    if base_dir and not p.is_absolute():
        p = Path(base_dir) / p
    return p


def read_input(path: str, what: str, limit: int) -> bytes:
    """The bytes of an input file (guest image, kernel, initrd), or an ImageError that says
    what is wrong with it: missing, not a regular file, empty, over `limit` bytes, unreadable."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise ImageError(f"{what} {path}: no such file") from None
    if not p.is_file():
        raise ImageError(f"{what} {path}: not a regular file")
    if st.st_size == 0:
        raise ImageError(f"{what} {path}: the file is empty")
    if st.st_size > limit:
        raise ImageError(f"{what} {path}: {st.st_size} bytes is larger than the "
                         f"{limit >> 20} MiB limit")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageError(f"{what} {path}: cannot read: {e.strerror}") from None


def load_image(spec: str, *, base_dir: str | None = None, load_address: int = 0x100000,
               entry: int | None = None, mode: int = 64) -> Image:
    path = resolve_spec(spec, base_dir)
    data = read_input(str(path), "guest image", MAX_IMAGE)
    if data[:4] == b"\x7fELF":
        img = _load_elf(data, str(path))
        if multiboot_header(data) is not None:
            if img.mode != 32:
                raise ImageError(f"{path}: a Multiboot header in a 64-bit ELF; Multiboot (v1) "
                                 "kernels are ELF32 (EM_386) images")
            img.kind, img.multiboot = "multiboot", True
        if entry is not None:
            img.entry = entry
        return img
    if path.suffix.lower() in (".asm", ".s", ".S"):
        return _assemble(data, str(path), load_address, entry, mode)
    return Image(str(path), [(load_address, data)],
                 load_address if entry is None else entry, "flat")


MULTIBOOT_MAGIC = 0x1BADB002          # in the image's Multiboot header
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002   # in EAX at the kernel's entry
MULTIBOOT_SEARCH = 8192
MBI_SIZE = 0x1000                     # the information block, its memory map and strings


def mbi_address(image: "Image") -> int:
    """Where the Multiboot information goes: the page after the image's highest byte
    (as QEMU does), so it never overlaps the kernel."""
    end = max(addr + len(data) for addr, data in image.segments)
    return (end + 0xFFF) & ~0xFFF


def multiboot_header(data: bytes) -> tuple[int, int] | None:
    """(offset, flags) of a valid Multiboot v1 header in the first 8 KiB, or None."""
    end = min(len(data), MULTIBOOT_SEARCH) - 12
    for off in range(0, end + 1, 4):
        if data[off:off + 4] != b"\x02\xb0\xad\x1b":
            continue
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    return None


def multiboot_info(memory: int, cmdline: str, addr: int) -> bytes:
    """The Multiboot information structure for a guest with `memory` bytes of RAM, at `addr`.

    Returns its bytes: the 88-byte info block
    with mem_lower/mem_upper (flag 0), the command line (flag 2), no modules
    (flag 3, count 0), a BIOS-style memory map (flag 6: 0-0x9FBFF RAM, the EBDA
    and the BIOS area reserved, 1 MiB up to the end of RAM) and the boot
    loader name (flag 9), followed by the map and the strings.
    """
    top = min(memory, 0xFFFFFFFF)
    mmap_entries = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                    (0x100000, top - 0x100000, 1)]
    mmap = b"".join(struct.pack("<IQQI", 20, b, ln, t) for b, ln, t in mmap_entries)
    mmap_addr = addr + 128
    cmd_addr = mmap_addr + len(mmap)
    cmd = cmdline.encode("utf-8", "replace")[:MBI_SIZE - 256] + b"\0"
    name_addr = cmd_addr + len(cmd)
    name = b"vmcfg\0"
    flags = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    info = struct.pack("<IIIIIII", flags, 640, (top - 0x100000) >> 10, 0xFFFFFFFF, cmd_addr, 0, 0)
    info += b"\0" * 16                                     # syms (unused)
    info += struct.pack("<IIIIIII", len(mmap), mmap_addr, 0, 0, 0, name_addr, 0)
    info = info.ljust(128, b"\0")
    return info + mmap + cmd + name


def _load_elf(data: bytes, name: str) -> Image:
    if len(data) < 52:
        raise ImageError(f"{name}: truncated ELF header")
    ei_class, ei_data = data[4], data[5]
    if ei_data != 1:
        raise ImageError(f"{name}: big-endian ELF; vmcfg runs little-endian x86 guests")
    if ei_class not in (1, 2):
        raise ImageError(f"{name}: bad ELF class {ei_class}")
    is64 = ei_class == 2
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    machines = {3: "x86 (EM_386)", 62: "x86-64 (EM_X86_64)", 40: "ARM", 183: "AArch64",
                243: "RISC-V", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64"}
    if e_machine not in (3, 62):
        raise ImageError(f"{name}: an ELF for {machines.get(e_machine, f'machine {e_machine}')}; "
                         "vmcfg runs x86 guests (EM_386 or EM_X86_64)")
    if e_type not in (2, 3):
        raise ImageError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC/ET_DYN)")
    if is64 and len(data) < 64:
        raise ImageError(f"{name}: truncated ELF header")
    try:
        if is64:
            e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
            e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
        else:
            e_entry, e_phoff = struct.unpack_from("<II", data, 24)
            e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
        segs = []
        for i in range(e_phnum):
            off = e_phoff + i * e_phentsize
            if is64:
                p_type, _fl, p_offset, _va, p_paddr, p_filesz, p_memsz = struct.unpack_from(
                    "<IIQQQQQ", data, off)
            else:
                p_type, p_offset, _va, p_paddr, p_filesz, p_memsz = struct.unpack_from(
                    "<IIIIII", data, off)
            if p_type != 1:     # PT_LOAD
                continue
            if p_offset + p_filesz > len(data):
                raise ImageError(f"{name}: truncated ELF: program header {i} needs bytes "
                                 f"{p_offset:#x}-{p_offset + p_filesz - 1:#x}, the file has "
                                 f"{len(data):#x}")
            if p_filesz > p_memsz:
                raise ImageError(f"{name}: program header {i}: file size larger than memory size")
            seg = data[p_offset:p_offset + p_filesz] + b"\0" * max(0, p_memsz - p_filesz)
            segs.append((p_paddr, seg))
    except struct.error:
        raise ImageError(f"{name}: truncated ELF program headers") from None
    if not segs:
        raise ImageError(f"{name}: the ELF has no loadable (PT_LOAD) segment")
    return Image(name, segs, e_entry, "elf", 64 if e_machine == 62 else 32)


def _assemble(data: bytes, name: str, load_address: int, entry: int | None, mode: int) -> Image:
    """An assembly source in NASM syntax (vmcfg.guests.asm: nasm when installed, else
    vmcfg's NASM front end over keystone -- the same bytes).  Without its own `org` the
    source is assembled at `load_address`; without `bits` in `mode`."""
    from ..guests.asm import AsmError, assemble_text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageError(f"{name}: an assembly source must be UTF-8 text") from None
    try:
        res = assemble_text(text, name, base_dir=os.path.dirname(os.path.abspath(name)),
                            origin=load_address, bits=mode)
    except AsmError as e:
        raise ImageError(f"{e}") from None
    if not res.data:
        raise ImageError(f"{name}: the source assembled to nothing")
    return Image(name, [(res.origin, res.data)], res.origin if entry is None else entry,
                 "asm", res.bits)

