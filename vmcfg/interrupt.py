"""Ctrl-C and SIGTERM for long-running commands (smoke, launch, watch).

Python's default SIGINT handling raises KeyboardInterrupt in the main thread
at whatever bytecode it happens to run.  That is not good enough for vmcfg:

* `vmcfg launch` spends its time inside Unicorn's emu_start (native code: no
  bytecode runs while a guest spins), so a KeyboardInterrupt never comes;
* `vmcfg smoke` runs a thread pool; an exception raised asynchronously inside
  concurrent.futures or threading internals can leave one of their locks held,
  and the pool's shutdown then waits forever;
* SIGTERM (what CI systems and `kill` send) has no handler at all.

`SignalWatch` installs a handler for SIGINT and SIGTERM and, with
signal.set_wakeup_fd, a pipe that the C-level handler writes the signal
number into the moment the signal arrives -- whatever the main thread is
doing.  A watcher thread reads it and calls `on_signal(signum)` from a normal
thread (killing processes, asking the vCPU to stop), so nothing runs inside
the interrupted code.  The command then finishes what it can and exits with
`status` = 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a
shell reports a process ended by that signal.  A second signal ends the
process at once with that status (after `on_signal` ran again).

A signal that the process was started with ignored (SIG_IGN: a background
job of a non-interactive shell ignores SIGINT, nohup ignores SIGHUP) stays
ignored, like every POSIX program does.

`hook(name)` is a test point: when VMCFG_TEST_HOOKS (comma-separated names)
names it, the process writes "vmcfg-hook: NAME" on stderr and waits until it
has received a signal, so a test can deliver a signal at exactly that point
of a run.  Without the variable it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
HOOK_ENV = "VMCFG_TEST_HOOKS"
HOOK_WAIT = 120.0     # seconds; only a safety net so a broken test cannot wedge a process

_received = threading.Event()    # set by the watcher thread at the first signal


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalWatch:
    """Context manager (main thread only): see the module docstring.

    raise_in_main: also raise `Interrupted` in the main thread (for commands
    whose main thread only waits on sockets, files and sleeps, e.g. watch).
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None, *,
                 raise_in_main: bool = False):
        self.on_signal = on_signal
        self.raise_in_main = raise_in_main
        self.signum: int | None = None
        self.event = threading.Event()
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._rfd = self._wfd = -1
        self._thread: threading.Thread | None = None
        self._closing = False
        self._count = 0          # signals the watcher thread has seen (only it counts)

    @property
    def status(self) -> int | None:
        """128 + the first signal's number, or None when no signal came."""
        return None if self.signum is None else 128 + self.signum

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a signal arrives (True) or timeout seconds pass (False)."""
        return self.event.wait(timeout)

    # ---------------------------------------------------------------------------------
    def __enter__(self) -> "SignalWatch":
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        for fd in (self._rfd, self._wfd):
            os.set_inheritable(fd, False)
        installed = False
        # only the main thread may set handlers: elsewhere (a host program running a
        # command in a thread) the signals stay the host's business
        main = threading.current_thread() is threading.main_thread()
        for s in SIGNALS if main else ():
            old = signal.getsignal(s)
            if old is signal.SIG_IGN:
                continue
            self._old[s] = old
            signal.signal(s, self._handler)
            installed = True
        if installed:
            self._old_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="vmcfg-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing = True                    # no Interrupted from here on
        if self._old:
            signal.set_wakeup_fd(self._old_fd)
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        try:
            os.write(self._wfd, b"\0")          # not a signal number: the watcher's cue to end
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join()
        os.close(self._rfd)
        os.close(self._wfd)

    def _handler(self, signum, _frame) -> None:
        # Runs in the main thread whenever it next executes bytecode; the watcher
        # thread has already reacted (set_wakeup_fd).  Only raise when asked to.
        if self.raise_in_main and not self._closing:
            if self.signum is None:
                self.signum = signum
            raise Interrupted(self.signum)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._rfd, 64)
            except InterruptedError:
                continue
            if not data:
                return
            for signum in data:
                if signum == 0:
                    return
                self._got(signum)

    def _got(self, signum: int) -> None:
        # Count here, not by self.signum: with raise_in_main the main thread's handler may
        # have set self.signum before this thread reads the signal's byte.
        self._count += 1
        first = self._count == 1
        if self.signum is None:
            self.signum = signum
        if self.on_signal is not None:
            try:
                self.on_signal(signum)
            except Exception as e:   # noqa: BLE001 - the watcher must survive to see a 2nd signal
                sys.stderr.write(f"vmcfg: while stopping on {signal_name(signum)}: {e}\n")
        if first:
            self.event.set()
            _received.set()
        else:
            sys.stderr.write(f"vmcfg: {signal_name(signum)} again: exiting now\n")
            sys.stderr.flush()
            os._exit(self.status or 128 + signum)


class Interrupted(BaseException):
    """Raised in the main thread by SignalWatch(raise_in_main=True)."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def status(self) -> int:
        return 128 + self.signum


def hook(name: str) -> None:
    """A test point (see the module docstring); free when VMCFG_TEST_HOOKS is unset."""
    names = os.environ.get(HOOK_ENV)
    if not names or name not in names.split(","):
        return
    sys.stderr.write(f"vmcfg-hook: {name}\n")
    sys.stderr.flush()
    _received.wait(HOOK_WAIT)


__all__ = ["SignalWatch", "Interrupted", "hook", "signal_name", "SIGNALS"]
