"""The emulated PC platform: one module per device on one I/O + MMIO bus (see board.py)."""

from .board import Board
from .bus import AccessFault, Bus
from .misc import DebugExit, SystemReset

__all__ = ["AccessFault", "Board", "Bus", "DebugExit", "SystemReset"]
