"""How a run ends: RunEnd (raised inside the VMM, caught by the run loop) and GuestFault
(an exception a guest instruction raises while the VMM emulates it).

A leaf module: the vCPU and the exit handlers both raise them."""

from __future__ import annotations


class RunEnd(Exception):
    """Ends the run (raised inside the VMM, caught by the run loop)."""

    def __init__(self, status: str, exit_code: int | None = None, message: str = ""):
        super().__init__(message or status)
        self.status = status
        self.exit_code = exit_code
        self.message = message


class GuestFault(Exception):
    """An exception raised while emulating a guest instruction (#GP, #UD...)."""

    def __init__(self, vector: int, error_code: int | None = None, address: int | None = None):
        super().__init__(vector)
        self.vector = vector
        self.error_code = error_code
        self.address = address            # a #PF's linear address (CR2)
