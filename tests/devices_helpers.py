"""A board on a hand-driven clock, for the device tests."""

from __future__ import annotations

from vmcfg.vmm.devices import Board


class Machine:
    def __init__(self, memory: int = 64 << 20, **kw):
        self.now = 0
        self.nmis = 0
        self.board = Board(memory=memory, **kw)
        self.board.attach_cpu(now=lambda: self.now, nmi=self._nmi)

    def _nmi(self) -> None:
        self.nmis += 1

    def run_to(self, t: int) -> None:
        """Let virtual time pass, firing device deadlines on the way (as the run loop does)."""
        while True:
            d = self.board.next_event()
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            self.board.advance(self.now)
        self.now = t
        self.board.advance(t)

    def outb(self, port: int, v: int) -> None:
        self.board.io_write(port, 1, v)

    def inb(self, port: int) -> int:
        return self.board.io_read(port, 1)

    def take(self) -> int | None:
        """The CPU takes the pending interrupt (RFLAGS.IF = 1)."""
        if self.board.pending_interrupt() is None:
            return None
        return self.board.ack_interrupt()
