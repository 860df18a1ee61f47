"""RTC/CMOS, UART, fw_cfg, ACPI tables and PM, debug-exit and reset at their interfaces."""

import struct
import time

import pytest

from devices_helpers import Machine
from vmcfg.vmm.clock import TSC_HZ
from vmcfg.vmm.devices import DebugExit, SystemReset
from vmcfg.vmm.devices import acpi

EPOCH = 1_700_000_000          # 2023-11-14 22:13:20 UTC, a Tuesday


def cmos(m, reg):
    m.outb(0x70, reg)
    return m.inb(0x71)


def cmos_w(m, reg, v):
    m.outb(0x70, reg)
    m.outb(0x71, v)


# ---- RTC --------------------------------------------------------------------------------
def test_rtc_time_in_bcd_and_binary_and_it_advances_with_virtual_time():
    m = Machine(rtc_epoch=EPOCH)
    assert [cmos(m, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == \
        [0x20, 0x13, 0x22, 0x14, 0x11, 0x23, 0x20]
    assert cmos(m, 6) == 3                       # Tuesday (1 = Sunday)
    m.now = 5 * TSC_HZ
    assert cmos(m, 0) == 0x25
    cmos_w(m, 0x0B, 0x06)                        # binary, 24 h
    assert cmos(m, 0) == 25 and cmos(m, 4) == 22
    cmos_w(m, 0x0B, 0x04)                        # binary, 12 h
    assert cmos(m, 4) == 0x80 | 10               # 10 PM


def test_rtc_set_mode_stops_and_sets_the_clock():
    m = Machine(rtc_epoch=EPOCH)
    cmos_w(m, 0x0B, 0x82)                        # SET
    cmos_w(m, 4, 0x05)
    cmos_w(m, 2, 0x30)
    m.now = 10 * TSC_HZ
    assert cmos(m, 0) == 0x20                    # stopped
    cmos_w(m, 0x0B, 0x02)
    m.now = 13 * TSC_HZ
    assert (cmos(m, 4), cmos(m, 2), cmos(m, 0)) == (0x05, 0x30, 0x23)


def test_rtc_periodic_interrupt_on_irq8_and_register_c():
    m = Machine(rtc_epoch=EPOCH)
    cmos_w(m, 0x0A, 0x26)                        # 1024 Hz
    cmos_w(m, 0x0B, 0x42)                        # PIE
    period = TSC_HZ // 1024
    m.run_to(period + 2)
    assert m.take() == 0x28 + 0                  # IRQ 8 on the slave PIC
    c = cmos(m, 0x0C)
    assert c & 0xC0 == 0xC0                      # IRQF | PF
    assert cmos(m, 0x0C) == 0                    # read clears
    m.board.io_write(0xA0, 1, 0x20); m.board.io_write(0x20, 1, 0x20)
    m.run_to(2 * period + 4)
    assert m.take() == 0x28


def test_rtc_update_interrupt_and_uip():
    m = Machine(rtc_epoch=EPOCH)
    cmos_w(m, 0x0B, 0x12)                        # UIE
    m.now = TSC_HZ - 2
    assert cmos(m, 0x0A) & 0x80                  # update in progress near the second's end
    m.run_to(TSC_HZ + 1)
    assert cmos(m, 0x0C) & 0x90 == 0x90          # IRQF | UF
    assert cmos(m, 0x0D) == 0x80


def test_cmos_memory_size_like_qemu():
    m = Machine(memory=256 << 20)
    kb = lambda lo, hi: cmos(m, lo) | (cmos(m, hi) << 8)   # noqa: E731
    assert kb(0x15, 0x16) == 640
    assert kb(0x17, 0x18) == kb(0x30, 0x31) == 0xFFFF      # capped (255 MiB above 1 MiB)
    assert kb(0x34, 0x35) == (256 - 16) * 16               # 64 KiB units above 16 MiB
    assert cmos(m, 0x5B) == cmos(m, 0x5C) == cmos(m, 0x5D) == 0
    m = Machine(memory=8 << 20)
    assert kb(0x17, 0x18) == 7 * 1024 and kb(0x34, 0x35) == 0
    cmos_w(m, 0x40, 0xAB)
    assert cmos(m, 0x40) == 0xAB                 # plain NVRAM


# ---- UART -------------------------------------------------------------------------------
def test_uart_transmit_and_thr_empty_interrupt():
    out = []
    m = Machine(console_sink=out.append)
    m.outb(0x3F8, ord("A"))
    assert out == ["A"] and m.board.serial.text == "A"
    assert m.inb(0x3FD) & 0x60 == 0x60
    assert m.inb(0x3FA) == 0x01                  # no interrupt (IER 0)
    m.outb(0x3F9, 0x02)                          # IER: THR empty
    assert m.inb(0x3FA) == 0x02
    assert m.take() == 0x24                      # IRQ 4
    assert m.inb(0x3FA) == 0x01                  # reading IIR cleared it
    m.board.io_write(0x20, 1, 0x20)
    m.outb(0x3F8, ord("B"))
    assert m.board.pending_interrupt() == 0x24


def test_uart_receive_path_from_the_input_queue():
    m = Machine()
    m.outb(0x3F9, 0x01)                          # IER: received data
    m.outb(0x3FA, 0x01)                          # FIFO on
    m.board.serial.feed(b"hi")
    assert not m.inb(0x3FD) & 1                  # not before the next boundary
    m.board.advance(m.now)
    assert m.inb(0x3FD) & 1
    assert m.inb(0x3FA) == 0xC4                  # FIFO enabled, received data
    assert m.take() == 0x24
    assert m.inb(0x3F8) == ord("h") and m.inb(0x3F8) == ord("i")
    assert not m.inb(0x3FD) & 1 and m.inb(0x3FA) == 0xC1


def test_uart_overrun_and_loopback():
    m = Machine()
    m.board.serial.feed(b"xy")
    m.board.advance(0)
    assert m.inb(0x3FD) & 0x01                   # one byte without FIFO
    m.outb(0x3FC, 0x10)                          # loopback
    m.outb(0x3F8, ord("z"))                      # the receiver is full: overrun
    assert m.inb(0x3FD) & 0x02
    assert not m.inb(0x3FD) & 0x02              # LSR read clears OE
    assert m.inb(0x3F8) == ord("x")
    m.outb(0x3FC, 0x10 | 0x03)                   # loopback DTR|RTS -> DSR|CTS
    assert m.inb(0x3FE) & 0x30 == 0x30


def test_uart_divisor_latch():
    m = Machine()
    m.outb(0x3FB, 0x83)
    m.outb(0x3F8, 0x01); m.outb(0x3F9, 0x00)
    assert m.inb(0x3F8) == 1
    m.outb(0x3FB, 0x03)
    assert m.board.serial.text == ""


# ---- fw_cfg -----------------------------------------------------------------------------
def _fwcfg(m, key, n):
    m.board.io_write(0x510, 2, key)
    return bytes(m.inb(0x511) for _ in range(n))


def test_fw_cfg_signature_id_ram_cpus_and_file_directory():
    m = Machine(memory=256 << 20)
    assert _fwcfg(m, 0, 4) == b"QEMU"
    assert struct.unpack("<I", _fwcfg(m, 1, 4))[0] & 1
    assert struct.unpack("<Q", _fwcfg(m, 3, 8))[0] == 256 << 20
    assert struct.unpack("<H", _fwcfg(m, 5, 2))[0] == 1
    assert struct.unpack("<H", _fwcfg(m, 0x0F, 2))[0] == 1
    assert _fwcfg(m, 0, 6) == b"QEMU\0\0"        # past the end: zeros
    sel = m.board.fwcfg.add_file("etc/test", b"hello")
    d = _fwcfg(m, 0x19, 4 + 64)
    assert struct.unpack(">I", d[:4])[0] == 1
    size, s, _r, name = struct.unpack(">IHH56s", d[4:])
    assert (size, s, name.rstrip(b"\0")) == (5, sel, b"etc/test")
    assert _fwcfg(m, sel, 5) == b"hello"


# ---- ACPI -------------------------------------------------------------------------------
class Mem:
    def __init__(self, size):
        self.b = bytearray(size)

    def write(self, a, d):
        self.b[a:a + len(d)] = d


def _tables(memory=64 << 20):
    m = Machine(memory=memory)
    mem = Mem(1 << 20)
    m.board.install(mem.write)
    return m, mem.b


def _find_rsdp(mem):
    for a in range(0xE0000, 0x100000, 16):
        if mem[a:a + 8] == b"RSD PTR ":
            return a
    return None


def _sdt(mem, a):
    sig, length = struct.unpack_from("<4sI", mem, a)
    t = bytes(mem[a:a + length])
    assert sum(t) & 0xFF == 0, sig
    return sig, t


def test_acpi_tables_are_found_parse_and_sum_to_zero():
    m, mem = _tables()
    a = _find_rsdp(mem)
    assert a is not None
    assert sum(mem[a:a + 20]) & 0xFF == 0 and sum(mem[a:a + 36]) & 0xFF == 0
    _sig, _c, _oem, rev, rsdt, length, xsdt = struct.unpack_from("<8sB6sBIIQ", mem, a)
    assert rev == 2 and length == 36
    sig, t = _sdt(mem, rsdt)
    assert sig == b"RSDT"
    ptrs = struct.unpack_from(f"<{(len(t) - 36) // 4}I", t, 36)
    sig, tx = _sdt(mem, xsdt)
    assert sig == b"XSDT" and struct.unpack_from(f"<{len(ptrs)}Q", tx, 36) == ptrs
    tables = dict(_sdt(mem, p) for p in ptrs)
    assert set(tables) == {b"FACP", b"APIC"}
    fadt = tables[b"FACP"]
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert mem[facs:facs + 4] == b"FACS" and facs % 64 == 0
    sig, d = _sdt(mem, dsdt)
    assert sig == b"DSDT" and b"_S5_" in d
    assert struct.unpack_from("<H", fadt, 46)[0] == 9                  # SCI
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608              # PM timer
    assert fadt[91] == 4
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604              # PM1a control
    space, _w, _o, _acc, addr = struct.unpack_from("<BBBBQ", fadt, 116)
    assert (space, addr, fadt[128]) == (1, 0xCF9, 0x06)                # reset register
    assert struct.unpack_from("<Q", fadt, 208 + 4)[0] == 0x608         # X_PM_TMR_BLK
    # IAPC_BOOT_ARCH: the board has no keyboard controller behind 0x60/0x64 (only the
    # reset line), so the FADT must not announce an 8042 (Linux would probe it and wait
    # out its timeouts)
    assert not struct.unpack_from("<H", fadt, 109)[0] & 0x0002


def test_madt_lists_lapic_ioapic_and_isa_overrides():
    _m, mem = _tables()
    a = _find_rsdp(mem)
    rsdt = struct.unpack_from("<I", mem, a + 16)[0]
    _s, t = _sdt(mem, rsdt)
    madt = next(tt for p in struct.unpack_from("<2I", t, 36) for s, tt in [_sdt(mem, p)]
                if s == b"APIC")
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == 0xFEE00000 and flags & 1
    entries, off = [], 44
    while off < len(madt):
        typ, ln = madt[off], madt[off + 1]
        entries.append((typ, bytes(madt[off:off + ln])))
        off += ln
    assert off == len(madt)
    types = [e[0] for e in entries]
    assert types.count(0) == 1 and types.count(1) == 1
    lapic = next(e for t_, e in entries if t_ == 0)
    assert lapic[3] == 0 and struct.unpack_from("<I", lapic, 4)[0] & 1
    io = next(e for t_, e in entries if t_ == 1)
    assert struct.unpack_from("<II", io, 4) == (0xFEC00000, 0)
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for t_, e in entries if t_ == 2}
    assert overrides[0] == (2, 0) and overrides[9] == (9, 0xD)


def test_no_acpi_tables_below_1mib_of_ram():
    m = Machine(memory=512 << 10)
    mem = Mem(1 << 20)
    m.board.install(mem.write)
    assert _find_rsdp(mem.b) is None and not any(mem.b)


def test_pm_timer_counts_at_3_58_mhz_and_s5_powers_off():
    m = Machine()
    t0 = m.board.io_read(0x608, 4)
    m.now = TSC_HZ // 10                         # a tenth of a virtual second
    assert m.board.io_read(0x608, 4) - t0 == pytest.approx(357954, abs=2)
    assert m.board.io_read(0x604, 2) & 1         # SCI_EN: ACPI mode
    m.board.io_write(0x604, 2, 0x0400 | 0x2000)  # SLP_TYP 1: not S5
    with pytest.raises(SystemReset) as e:
        m.board.io_write(0x604, 2, 0x2000)
    assert e.value.status == "poweroff"


# ---- debug exit, reset, unclaimed ports --------------------------------------------------
def test_debug_exit_reset_paths_and_unclaimed_ports():
    m = Machine()
    with pytest.raises(DebugExit) as d:
        m.board.io_write(0xF4, 1, 0x2A)
    assert d.value.value == 0x2A
    with pytest.raises(DebugExit) as d:
        m.board.io_write(0xF4, 4, 0x12345678)
    assert d.value.value == 0x12345678
    with pytest.raises(SystemReset) as r:
        m.board.io_write(0x64, 1, 0xFE)
    assert r.value.status == "reboot"
    m.board.io_write(0xCF9, 1, 0x02)             # no RST_CPU: nothing yet
    assert m.inb(0xCF9) == 0x02
    with pytest.raises(SystemReset):
        m.board.io_write(0xCF9, 1, 0x06)
    m.board.io_write(0xCF8, 4, 0x80000004)      # a PCI config address: not a reset
    assert m.board.io_read(0xCF8, 4) == 0x80000004
    assert m.board.io_read(0xCFC, 4) == 0xFFFFFFFF   # no device on the PCI bus
    m.outb(0x80, 0x55)
    assert m.board.post.value == 0x55 and m.inb(0x80) == 0xFF
    assert m.board.io_read(0x1234, 2) == 0xFFFF
    m.board.io_write(0x1234, 4, 0)               # ignored


def test_host_time_is_the_default_rtc_epoch():
    m = Machine()
    y = cmos(m, 9)
    assert y == int(f"{time.gmtime().tm_year % 100:02d}", 16)


# ---- pc-testdev ---------------------------------------------------------------------------
def test_testdev_irq_lines_reach_the_pic_and_the_ioapic_pins_above_15():
    m = Machine()
    m.board.mmio_write(0xFEE000F0, 4, 0x1FF)         # LAPIC software enable
    for reg, v in ((0x10 + 2 * 20, 0x8000 | 0x61), (0x11 + 2 * 20, 0)):
        m.board.mmio_write(0xFEC00000, 4, reg)
        m.board.mmio_write(0xFEC00010, 4, v)
    m.outb(0x2000 + 20, 1)                           # line 20: IOAPIC pin 20, level
    assert m.take() == 0x61
    m.outb(0x2000 + 20, 0)
    m.board.mmio_write(0xFEE000B0, 4, 0)
    assert m.take() is None
    m.outb(0x2000 + 5, 1)
    m.outb(0x2000 + 5, 0)                            # an edge on ISA IRQ 5: the PIC
    assert m.take() == 0x25


def test_testdev_scratch_port_and_iomem():
    m = Machine()
    m.board.io_write(0xE0, 4, 0xDEADBEEF)
    assert m.board.io_read(0xE0, 4) == 0xDEADBEEF and m.board.io_read(0xE2, 2) == 0xDEAD
    m.board.io_write(0xE1, 1, 0x12)
    assert m.board.io_read(0xE0, 4) == 0xDEAD12EF
    m.board.mmio_write(0xFF000010, 8, 0x1122334455667788)
    assert m.board.mmio_read(0xFF000014, 4) == 0x11223344
