"""What `vmcfg launch` shows: the live progress line, the run summary, background launches.

The guest's serial console is the launch's output on stdout; the progress line
(only on a terminal) and the run summary go to stderr; --json gives one
document on stdout instead, and the console streams to stderr.
"""

from __future__ import annotations

import os
import sys

from .report import EXIT_INVALID, EXIT_USAGE, emit_json, err, fail, finish
from .report import console as rich_console


def child_args(guest, spec_base, mode, memory, load_address, entry, trace_file,
               max_instructions, timeout, console_file, handlers, nmi_at=None,
               trace_sample=1, serial_input=None, append=None, *, kernel=None, initrd=None,
               clock=None, kernel_entry=None) -> list[str]:
    """The options of this launch, for the background process (paths made absolute)."""
    a: list[str] = []
    if kernel_entry:
        a += ["--kernel-entry", kernel_entry]
    for opt, v in (("--kernel", kernel), ("--initrd", initrd)):
        if v:
            a += [opt, os.path.abspath(v)]
    if clock:
        a += ["--clock", clock]
    if guest:
        g = guest
        if not g.startswith("builtin:") and os.path.exists(g):
            g = os.path.abspath(g)
        a += ["--guest", g]
    for opt, v in (("--mode", mode), ("--memory", memory), ("--load-address", load_address),
                   ("--entry", entry), ("--max-instructions", max_instructions),
                   ("--timeout", timeout), ("--nmi-at", nmi_at)):
        if v is not None:
            a += [opt, str(v)]
    for opt, v in (("--trace", trace_file), ("--console", console_file),
                   ("--serial-input", serial_input)):
        if v:
            a += [opt, os.path.abspath(v)]
    if trace_file and trace_sample > 1:
        a += ["--trace-sample", str(trace_sample)]
    if append is not None:
        a += ["--append", append]
    for h in handlers:
        a += ["--handler", h]
    return a


def detach(gp, name: str, as_json: bool, *, profile: str, args: list[str],
            console_file: str | None) -> None:
    """Start the guest in a background process; return once it answers on its socket."""
    import subprocess
    import time

    from ..live.channel import ChannelError, request
    from ..live.runtime import is_alive
    console = console_file or os.path.join(gp.dir, f"{name}.console")
    log = os.path.join(gp.dir, f"{name}.log")
    if not console_file:
        args = args + ["--console", console]
    argv = [sys.executable, "-m", "vmcfg.cli", "launch", profile, "--name", name] + args
    with open(log, "w") as logfh:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfh, stderr=logfh,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rc = child.poll()
        if rc is not None:
            try:
                out = open(log).read().strip()
            except OSError:
                out = ""
            fail(f"the guest {name!r} ended at once (status {rc})" + (f":\n{out}" if out else ""),
                 rc if rc in (EXIT_INVALID, EXIT_USAGE) else EXIT_USAGE)
        if is_alive(gp) and os.path.exists(gp.sock):
            try:
                st = request(gp.sock, "status", timeout=2.0)
                break
            except ChannelError:
                pass
        time.sleep(0.02)
    else:
        child.kill()
        fail(f"the guest {name!r} did not start within 30 s")
    doc = {"name": name, "pid": child.pid, "socket": gp.sock, "console": console, "log": log,
           "state": st.get("state")}
    if as_json:
        emit_json(doc)
    else:
        err(f"launched {name} (pid {child.pid}); console: {console}")
    finish(0)


class Stopper:
    """Ends the run on a signal, whether it comes before or after the vCPU exists."""

    def __init__(self):
        import threading
        self._lock = threading.Lock()
        self.vcpu = None
        self.message: str | None = None

    def signal(self, signum: int) -> None:       # the SignalWatch thread
        from ..interrupt import signal_name
        with self._lock:
            if self.message is None:
                self.message = f"interrupted by {signal_name(signum)}"
            vcpu = self.vcpu
        if vcpu is not None:
            self._end(vcpu)

    def attach(self, vcpu) -> None:               # the main thread, before the guest runs
        with self._lock:
            self.vcpu = vcpu
            pending = self.message is not None
        if pending:
            self._end(vcpu)

    def _end(self, vcpu) -> None:
        vcpu.request_end("interrupted", self.message)
        # request_end leaves the stop to the hook when it thinks one is running; ask the
        # native block stub as well, so a guest spinning without exits ends too (harmless:
        # the run loop ends at its next turn either way)
        vcpu.counter.request_stop()


class Progress:
    """The live line on a terminal: instructions and exits/s."""

    def __init__(self):
        import time
        self.t0 = time.perf_counter()
        self.last = (self.t0, 0)
        self.shown = False

    def __call__(self, vcpu) -> None:
        import time
        now = time.perf_counter()
        if now - self.last[0] < 0.25:
            return
        n = vcpu.counter.count
        ex = vcpu.exit_count
        rate = (ex - self.last[1]) / (now - self.last[0])
        self.last = (now, ex)
        sys.stderr.write(f"\r\x1b[2K  {n:,} instructions  {ex:,} exits  {rate:,.0f} exits/s  "
                         f"{now - self.t0:.1f} s")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.shown = False


def render_result(res, image_name: str, mode: int) -> None:
    from rich.table import Table

    con = rich_console(stderr=True)
    if res.console and not res.console.endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    style = {"halted": "green", "debug-exit": "green" if res.guest_exit_code in (0, None)
             else "yellow"}.get(res.status, "red")
    head = f"[bold {style}]{res.status}[/]"
    if res.status == "debug-exit":
        head += f" (guest exit code {res.guest_exit_code})"
    con.print(f"{head}: {res.message}" if res.message else head, highlight=False)
    if res.entry_failure:
        return
    if res.fault_text:
        con.print(res.fault_text, highlight=False, markup=False)
    total = sum(e["count"] for e in res.exits)
    t = Table(title=f"VM exits -- {os.path.basename(image_name)} ({mode}-bit)", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("reason")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    t.add_column("time in VMM", justify="right")
    secs = getattr(res, "exit_seconds", {})
    for e in sorted(res.exits, key=lambda e: (-e["count"], e["reason"])):
        s = secs.get(e["reason"], 0.0)
        t.add_row(str(e["reason"]), e["name"], f"{e['count']:,}",
                  f"{100.0 * e['count'] / total:.1f}%" if total else "-",
                  f"{s * 1e3:.2f} ms")
    if res.exits:
        con.print(t)
    rate = res.instructions / res.wall_seconds if res.wall_seconds else 0
    boots = f" over {res.restarts + 1} boots" if res.restarts else ""
    con.print(f"{res.instructions:,} instructions, {total:,} exits{boots}, TSC {res.tsc:,}, "
              f"{res.wall_seconds:.3f} s wall ({rate / 1e6:.1f} M instructions/s)", highlight=False)



def note_restart(n: int, message: str) -> None:
    """A reset the profile answers with a fresh boot (lifecycle.on_reboot = "restart"):
    one line on stderr."""
    sys.stdout.flush()
    err(f"{message or 'the guest reset the machine'}; restarting (boot {n + 1})")


class TerminalKeys:
    """With a terminal on stdin: keystrokes to the guest's COM1 receive path for the run
    (the machine that runs now: after a restart, the fresh one's)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stdin is not None and sys.stdin.isatty()
        self._input = None
        self._vcpu = None

    def start(self, vcpu) -> None:
        self._vcpu = vcpu
        vcpu.interactive = self.enabled
        if self.enabled and self._input is None:
            from ..vmm.console import TerminalInput
            self._input = TerminalInput(sys.stdin.fileno(), self._feed).start()

    def _feed(self, data: bytes) -> None:
        vcpu = self._vcpu
        if vcpu is not None:
            vcpu.platform.serial.feed(data)

    def stop(self) -> None:
        if self._input is not None:
            self._input.stop()
            self._input = None
