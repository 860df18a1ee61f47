"""The emulated VMM's vCPU as a live-reconfiguration target (see session.py).

The control channel runs on its own thread; the vCPU runs on the main thread.
An apply hands the new VmxConfig to the vCPU (`request_apply`), which stops
emulation at the next instruction boundary, swaps the configuration (re-hooks
the trapped instruction kinds, flushes translations) and resumes; the caller
waits for that moment and reports the instruction count and TSC at which the
change took effect.
"""

from __future__ import annotations

import time

from ..vmx.exits import exits_json
from .channel import ChannelError

APPLY_TIMEOUT = 5.0


class VmmTarget:
    def __init__(self, vcpu, caps, mode: int):
        self.vcpu = vcpu
        self.caps = caps
        self.mode = mode
        self.started = time.time()
        self.restarts = 0

    def retarget(self, vcpu) -> None:
        """The guest restarted on a fresh machine (lifecycle.on_reboot = "restart"): from now
        on the session talks to its vCPU."""
        vcpu.live_wakeable = True
        self.vcpu = vcpu
        self.restarts += 1

    @property
    def config(self):
        return self.vcpu.cfg

    def apply(self, cfg) -> dict:
        v = self.vcpu
        with v.apply_cond:
            seq = v.apply_seq
            v.request_apply(cfg)
            done = v.apply_cond.wait_for(lambda: v.apply_seq > seq or v.status is not None,
                                         APPLY_TIMEOUT)
            if v.apply_seq > seq:
                ic, tsc = v.applied_at
                return {"instructions": ic, "tsc": tsc}
        if not done:
            raise ChannelError(f"the guest did not reach an instruction boundary within "
                               f"{APPLY_TIMEOUT:g} s; nothing was changed", 1)
        raise ChannelError(f"the guest ended ({v.status}) before the change took effect", 1)

    def snapshot(self) -> dict:
        v = self.vcpu
        exits = exits_json({r: s.count for r, s in v.exit_stats.items()})
        # while the guest runs, the block counter has the live count (icount is
        # brought up to date whenever emulation stops)
        n = v.icount if v.status is not None else max(v.icount, v.counter.count)
        snap = {"state": v.status or ("halted" if getattr(v, "halted", False) else "running"),
                "instructions": n, "tsc": v.tsc, "exits": exits}
        if self.restarts:
            snap["restarts"] = self.restarts     # the counts above are the current boot's
        return snap

    def registers(self) -> dict:
        from ..vmm.run import register_state
        return register_state(self.vcpu, self.mode)

    def stop(self) -> None:
        self.vcpu.request_end("stopped", "stopped by 'vmcfg stop'")

    def inject(self, kind: str, vector: int) -> dict:
        v = self.vcpu
        if not hasattr(v, "queue_event"):
            raise ChannelError("this VMM build cannot inject events yet", 1)
        try:
            v.queue_event(kind, vector)
        except ValueError as e:
            raise ChannelError(f"inject {kind}: {e}", 2) from None
        return {"queued": kind, "vector": vector, "instructions": v.icount}


def make_session(vcpu, caps, mode: int, *, name: str, profile_path: str | None,
                 record: dict | None = None):
    from .session import LiveSession
    vcpu.live_wakeable = True            # HLT waits for live events instead of ending
    return LiveSession(VmmTarget(vcpu, caps, mode), name=name, profile_path=profile_path,
                       extra_record=record)
