"""Why the engine stopped: every return of ``emu_start`` counted by its cause, and the host
time spent inside the engine against the time in the VMM's run loop between two runs.

The run loop records one cause per engine run (``RunLoopMixin.run_loop``): the VMM event a
hook left (``intr #PF``, ``fetch``, ``rehook``, ``resume after cpuid`` ...), the block
counter's stop (``timer deadline``, ``deadline``, ``stop request``), a used-up
instruction budget (``single step``), or an engine error.  Counting costs a dict update per
engine run, so it is always on; ``bench/linux_boot.py --profile`` prints it.  Time *inside*
the engine includes the Python hooks it calls (traps, MMIO, new blocks): those are VM
exits and VMM work done without leaving ``emu_start``.
"""

from __future__ import annotations

from ...vmx.exits import Vector


def vector_name(v: int) -> str:
    try:
        return "#" + Vector(v).name
    except ValueError:
        return f"vector {v:#x}"


class StopStats:
    """Engine runs by the cause of their end, and the host time inside the engine."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.engine_seconds = 0.0      # host time inside emu_start (hooks included)
        self.runs = 0                  # emu_start calls

    def add(self, cause: str) -> None:
        self.counts[cause] = self.counts.get(cause, 0) + 1

    def to_json(self) -> dict:
        return {"engine_runs": self.runs, "engine_seconds": round(self.engine_seconds, 6),
                "stops": dict(sorted(self.counts.items(), key=lambda kv: -kv[1]))}


def event_cause(ev: tuple) -> str:
    """A readable cause for a VMM event (runloop._handle_event's kinds)."""
    kind = ev[0]
    if kind == "intr":
        return f"exception {vector_name(ev[1])}"
    if kind == "fault":
        return f"fault {vector_name(ev[1])} from the VMM"
    if kind == "resume":
        return f"resume after {ev[1]}" if len(ev) > 1 else "resume"
    if kind == "fastcall":
        return str(ev[1])
    if kind == "end":
        return "end"
    return kind
