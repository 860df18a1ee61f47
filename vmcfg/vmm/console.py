"""Keystrokes from a terminal to the guest's UART (the receive path of COM1).

`TerminalInput(fd, feed)` puts the terminal in cbreak mode (no echo, no line editing:
every key is sent at once, Enter as CR; Ctrl-C still interrupts vmcfg) and runs a thread that
forwards what is typed to `feed(bytes)` -- the UART's thread-safe input queue --
until `stop()`, which restores the terminal.  Used by `vmcfg launch` when stdin is a
terminal, so a busybox shell on ttyS0 is usable.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Callable


class TerminalInput:
    def __init__(self, fd: int, feed: Callable[[bytes], None]):
        self.fd = fd
        self.feed = feed
        self._stop = threading.Event()
        self._saved = None
        self._thread: threading.Thread | None = None

    def start(self) -> "TerminalInput":
        import termios
        import tty
        try:
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
            attrs = termios.tcgetattr(self.fd)
            attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR)   # Enter stays CR
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        except termios.error:
            self._saved = None
        self._thread = threading.Thread(target=self._pump, name="vmcfg-console-input",
                                        daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _w, _x = select.select([self.fd], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(self.fd, 256)
            except OSError:
                return
            if not data:                       # end of input
                return
            # Enter arrives as CR, as on a serial line (the guest's tty layer maps it to NL)
            self.feed(data)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None
