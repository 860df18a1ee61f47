"""A stand-in guest process for control-channel tests: a LiveSession around a
target that counts "instructions" in a thread.  Usage:
    python fake_guest.py NAME PROFILE [--slow-apply SECONDS]
"""

import sys
import threading
import time

from vmcfg.live.session import LiveSession
from vmcfg.profile import resolve
from vmcfg.vmx.exits import EXIT_NUMBER


class FakeTarget:
    def __init__(self, resolved, slow_apply=0.0):
        self.caps = resolved.caps
        self.config = resolved.config
        self.mode = 64
        self.instructions = 0
        self.exits = {}
        self.stopped = threading.Event()
        self.slow_apply = slow_apply
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped.is_set():
            with self._lock:
                self.instructions += 1000
                if self.config.on("primary.rdtsc_exiting"):
                    self.exits["RDTSC"] = self.exits.get("RDTSC", 0) + 1
            time.sleep(0.001)

    def apply(self, cfg):
        if self.slow_apply:
            print("applying", flush=True)    # a test may act while the apply is under way
        time.sleep(self.slow_apply)
        with self._lock:
            self.config = cfg
            return {"instructions": self.instructions, "tsc": self.instructions * 4}

    def snapshot(self):
        with self._lock:
            return {"state": "running", "instructions": self.instructions,
                    "tsc": self.instructions * 4, "exits": [{"reason": EXIT_NUMBER[k], "name": k, "count": v}
                                               for k, v in self.exits.items()]}

    def stop(self):
        self.stopped.set()

    def inject(self, kind, vector):
        return {"queued": kind, "vector": vector, "instructions": self.instructions}


def main():
    name, profile = sys.argv[1], sys.argv[2]
    slow = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    r = resolve(profile)
    t = FakeTarget(r, slow)
    s = LiveSession(t, name=name, profile_path=profile)
    print("ready", flush=True)
    t.stopped.wait()
    s.close({"status": "stopped", "instructions": t.instructions,
             "exits": [{"reason": EXIT_NUMBER[k], "name": k, "count": v}
                       for k, v in t.exits.items()]})


if __name__ == "__main__":
    main()
