"""The live side of a named guest: plans and applies profile changes, keeps the
history, answers status/stats, and serves it all on the control channel.

The guest itself is reached through the LiveTarget protocol (target.py),
implemented by the emulated VMM (vmm_target.py) and by fakes in tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..profile.transaction import TransactionError
from ..vmx.configdiff import diff_configs
from ..vmx.exits import FIRST_EXTERNAL_VECTOR, LAST_VECTOR
from .channel import ChannelError, ControlServer
from .runtime import Registration
from .target import LiveTarget


class LiveSession:
    def __init__(self, target: LiveTarget, *, name: str, profile_path: str | None,
                 register: bool = True, extra_record: dict | None = None):
        self.target = target
        self.name = name
        self.profile_path = profile_path
        self.started = time.time()
        self.lock = threading.Lock()          # one apply at a time
        self.history: list[dict] = []
        self._configs: list[Any] = []
        self._record(target.config, profile_path, {"instructions": 0, "tsc": 0}, [], "launch")
        self.reg: Registration | None = None
        self.server: ControlServer | None = None
        if register:
            self.reg = Registration(name, {"profile": profile_path, "cpu": target.caps.name,
                                           **(extra_record or {})})
            self.server = ControlServer(self.reg.p.sock, self.handle)
            self.server.start()

    # ---- history -----------------------------------------------------------------
    def _record(self, cfg, profile, at: dict, diff: list, kind: str, latency_ms: float | None = None):
        entry = {"seq": len(self.history), "kind": kind, "time": time.time(),
                 "profile": profile, "instructions": at.get("instructions"),
                 "tsc": at.get("tsc"), "diff": diff}
        if latency_ms is not None:
            entry["latency_ms"] = latency_ms
        self.history.append(entry)
        self._configs.append(cfg)
        return entry

    # ---- planning ----------------------------------------------------------------
    def plan(self, profile: str):
        """(transaction, plan) for a profile: the LivePlan of committing it to this guest;
        raises ChannelError when it cannot be committed (does not load, invalid, entry)."""
        from ..profile import ProfileError
        from ..profile.transaction import ProfileTransaction
        try:
            tx = ProfileTransaction.of_profile(profile, caps=self.target.caps)
            return tx, tx.plan_live(self.target, name=profile)
        except ProfileError as e:
            raise ChannelError(str(e), 2, {"errors": [e.to_json()]}) from None
        except TransactionError as e:
            raise ChannelError(e.message, e.status, {"errors": e.errors}) from None

    def _apply_config(self, cfg, profile: str | None, diff: list, kind: str,
                      send: Callable[[], dict]) -> dict:
        """Send `cfg` to the guest with `send()`, timed; record it in the history."""
        t0 = time.perf_counter()
        at = send()
        latency = (time.perf_counter() - t0) * 1e3
        entry = self._record(cfg, profile, at, diff, kind, latency)
        return {"applied": True, "seq": entry["seq"], "diff": diff,
                "instructions": at.get("instructions"), "tsc": at.get("tsc"),
                "latency_ms": latency}

    # ---- request handler ----------------------------------------------------------
    def handle(self, op: str, args: dict) -> dict:
        if op == "status":
            snap = self.target.snapshot()
            return {"name": self.name, "pid": self.reg.record["pid"] if self.reg else None,
                    "profile": self.profile_path, "cpu": self.target.caps.name,
                    "uptime": time.time() - self.started, "applies": len(self.history) - 1,
                    **snap}
        if op == "stats":
            return self.target.snapshot()
        if op == "history":
            return {"history": self.history}
        if op in ("plan", "apply"):
            with self.lock:
                tx, plan = self.plan(args["profile"])
                if op == "plan":
                    return {"plan": plan.diff, "refused": plan.refused,
                            "would_apply": plan.would_apply}
                if not plan.diff:
                    snap = self.target.snapshot()
                    return {"applied": False, "diff": [], "message": "no changes",
                            "instructions": snap.get("instructions"), "tsc": snap.get("tsc")}

                def send() -> dict:
                    try:
                        return tx.commit_live(self.target, plan)
                    except TransactionError as e:
                        raise ChannelError(e.message, e.status,
                                           {"plan": plan.diff, "refused": plan.refused}) from None
                res = self._apply_config(plan.config, args["profile"], plan.diff, "apply", send)
                self._set_profile(args["profile"])
                return res
        if op == "rollback":
            with self.lock:
                last = len(self._configs) - 1
                if "to" in args:
                    idx = args["to"]
                    if not 0 <= idx <= last:
                        raise ChannelError(f"no configuration #{idx} in the history (0..{last})", 1)
                else:
                    steps = args.get("steps", 1)
                    idx = last - steps
                    if not 0 <= idx <= last:
                        raise ChannelError(f"cannot roll back {steps} change(s): the history holds "
                                           f"{last} change(s) after the launch (#0..#{last})", 1)
                cfg = self._configs[idx]
                diff = diff_configs(self.target.config, cfg)
                res = self._apply_config(cfg, self.history[idx]["profile"], diff,
                                         f"rollback to #{idx}", lambda: self.target.apply(cfg))
                self._set_profile(self.history[idx]["profile"])
                return res
        if op == "stop":
            self.target.stop()
            return {"stopping": True}
        if op == "inject":
            kind = args["kind"]
            if kind not in ("nmi", "irq"):
                raise ChannelError("inject: kind must be 'nmi' or 'irq'", 2)
            v = args.get("vector", -1)
            if kind == "irq" and not FIRST_EXTERNAL_VECTOR <= v <= LAST_VECTOR:
                raise ChannelError(f"inject irq: external interrupt vector must be "
                                   f"{FIRST_EXTERNAL_VECTOR}-{LAST_VECTOR}, not {v}", 2)
            return self.target.inject(kind, args.get("vector", 2))
        raise ChannelError(f"unknown op {op!r}", 2)

    def _set_profile(self, path: str | None) -> None:
        self.profile_path = path
        if self.reg:
            self.reg.update(profile=path)

    def close(self, summary: dict | None = None) -> None:
        if self.server:
            self.server.close()
        if self.reg:
            if summary is not None:
                summary = {**summary, "history": self.history}
            self.reg.close(summary)
