"""Keystrokes from a terminal reach the UART's receive path (vmm/console.py)."""

import os
import pty
import termios
import threading

from vmcfg.vmm.console import TerminalInput
from vmcfg.vmm.devices.uart import Uart


def test_typed_keys_reach_the_uart_and_the_terminal_is_restored():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        uart = Uart()
        got = threading.Event()
        fed = bytearray()

        def feed(data: bytes) -> None:
            uart.feed(data)
            fed.extend(data)
            if b"\r" in fed:
                got.set()

        ti = TerminalInput(slave, feed).start()
        try:
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO  # cbreak
            os.write(master, b"ls\r")
            assert got.wait(60), "the typed bytes never arrived"
        finally:
            ti.stop()
        assert bytes(fed) == b"ls\r"
        assert uart.input_waiting
        uart.ier = 1
        uart.service()                                  # into the receive FIFO at a boundary
        assert uart.io_read(0x3F8 + 5, 1) & 1           # LSR.DR: data ready
        assert termios.tcgetattr(slave) == before       # the terminal is as it was
    finally:
        os.close(master)
        os.close(slave)
