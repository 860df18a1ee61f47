"""What a live session talks to: the running guest, as a typed protocol.

The emulated VMM implements it (live/vmm_target.py); tests use fakes.  `apply`,
`stats`, `stop` and `inject` of the control channel reach the guest only
through these methods.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LiveTarget(Protocol):
    caps: Any            # the CapSet the guest runs under
    mode: int            # 16, 32 or 64

    @property
    def config(self) -> Any:
        """The VmxConfig in force."""

    def apply(self, cfg: Any) -> dict:
        """Swap the configuration between two guest instructions: {"instructions", "tsc"}."""

    def snapshot(self) -> dict:
        """{"state", "instructions", "tsc", "exits": [{"reason", "name", "count"}]}."""

    def stop(self) -> None:
        """End the guest cleanly."""

    def inject(self, kind: str, vector: int) -> dict:
        """Queue an NMI or an external interrupt: {"queued", "vector", "instructions"}."""
