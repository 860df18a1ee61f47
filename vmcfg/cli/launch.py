"""vmcfg launch PROFILE [--guest SPEC] [--mode M] [--memory SIZE] [--json] [--trace FILE] ...

Runs a guest on vmcfg's emulated VMM (Unicorn) under the profile's VMCS
controls.  The emulator is imported only inside the command.
"""

from __future__ import annotations

import os
import sys

import click

from .common import EXIT_INVALID, EXIT_USAGE, complete_profile, emit_json, err, render_violations

STATUS_HELP = """\b
Exit status:
  (v << 1) | 1  the guest wrote v to the debug-exit port 0xF4 (odd)
  0   the guest halted with nothing left to wake it, was stopped
      by 'vmcfg stop' (a named guest), or powered off (ACPI S5)
  1   the profile is invalid for the cvmm capability set
  2   bad usage or unreadable input (profile, image, handler, a kernel
      that is not a bzImage / too old / too big for --memory, a bad initrd)
  4   VM-entry failure (exit reason 33 | bit 31)
  6   triple fault
  8   --timeout reached
  10  --max-instructions reached
  12  error: a guest access outside its RAM, an EPT violation with
      on_violation = "stop", or a failing exit handler
  14  reset: the guest reset the machine (keyboard controller 0xFE,
      port 0xCF9, ACPI reset; Linux with panic=-1 after a panic)
  130 interrupted by Ctrl-C (SIGINT); 143 by SIGTERM: the guest is
      stopped and its report (status "interrupted") printed"""


def _complete_guest(ctx, param, incomplete):
    from click.shell_completion import CompletionItem
    from ..vmm.loader import builtin_names
    items = [CompletionItem(f"builtin:{n}") for n in builtin_names()
             if f"builtin:{n}".startswith(incomplete)]
    items.append(CompletionItem(incomplete, type="file"))
    return items


@click.command(epilog=STATUS_HELP)
@click.argument("profile", metavar="PROFILE", shell_complete=complete_profile)
@click.option("--guest", "guest", metavar="SPEC", shell_complete=_complete_guest,
              help="Guest image: flat binary, ELF, .asm/.s source, or builtin:NAME "
                   "(default: the profile's [guest] image).")
@click.option("--kernel", metavar="BZIMAGE", type=click.Path(dir_okay=False),
              help="Boot a Linux kernel (bzImage) by the x86 boot protocol instead of --guest.")
@click.option("--initrd", metavar="FILE", type=click.Path(dir_okay=False),
              help="With --kernel: the initramfs to load.")
@click.option("--append", "append", metavar="CMDLINE",
              help="The kernel command line of --kernel (e.g. \"console=ttyS0\").")
@click.option("--clock", type=click.Choice(["virtual", "realtime"]),
              help="Guest time: 'virtual' (default; deterministic, from retired instructions) "
                   "or 'realtime' (follows the host clock).")
@click.option("--mode", type=click.Choice(["16", "32", "64"]), help="Start mode (default 64).")
@click.option("--memory", metavar="SIZE", help="Guest RAM, e.g. 16M (default 16M).")
@click.option("--load-address", "load_address", metavar="ADDR",
              help="Guest-physical load address of a flat image (default 0x100000).")
@click.option("--entry", metavar="ADDR", help="Entry point (default: load address / ELF entry).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--trace", "trace_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write every VM exit as a JSON line to FILE (gzip-compressed when FILE "
                   "ends in .gz); read it with 'vmcfg trace summary|export'.")
@click.option("--trace-sample", "trace_sample", type=click.IntRange(min=1), default=1,
              metavar="N", help="With --trace: write one exit in N of each reason, plus a "
                                "line of exact totals (default 1: every exit).")
@click.option("--max-instructions", "max_instructions", type=click.IntRange(min=1), metavar="N",
              help="Stop after N guest instructions (status instruction-limit).")
@click.option("--nmi-at", "nmi_at", type=click.IntRange(min=0), metavar="N",
              help="Deliver an NMI before instruction N (when N instructions have retired).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after SECONDS of wall-clock time (status timeout).")
@click.option("--console", "console_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the serial console to FILE instead of the terminal.")
@click.option("--serial-input", "serial_input", metavar="FILE",
              type=click.Path(dir_okay=False, allow_dash=True),
              help="Bytes the guest receives on COM1 (its UART receive path); - reads stdin.")
@click.option("--handler", "handlers", multiple=True, metavar="REASON=MODULE:FUNC",
              help="Python exit handler for a reason (name or number); repeatable.")
@click.option("--name", metavar="NAME",
              help="Name the guest: reachable by ps, apply, watch, stats, history, stop, inject.")
@click.option("--detach", is_flag=True,
              help="With --name: run in the background; return once the guest runs.")
def launch(profile, guest, kernel, initrd, append, clock, mode, memory, load_address, entry,
           as_json, trace_file, trace_sample, max_instructions, nmi_at, timeout, console_file,
           serial_input, handlers, name, detach):
    """Run a guest on vmcfg's emulated VMM under PROFILE's VMX controls.

    VM exits happen exactly as the profile's controls say; each exit is
    handled by a default handler (or a Python handler of yours) and the
    guest resumes.  The serial console (COM1, port 0x3F8) is shown live;
    the guest ends the run through the debug-exit port 0xF4 or by halting.
    """
    from ..profile import ProfileError, resolve

    if detach and not name:
        raise click.UsageError("--detach needs --name")
    if name:
        from ..live.runtime import RuntimeError_, check_name, clean_stale, is_alive, paths
        try:
            check_name(name)
            gp = paths(name)
        except RuntimeError_ as e:
            err(f"vmcfg: {e}", fg="red")
            sys.exit(EXIT_USAGE)
        if is_alive(gp):
            err(f"vmcfg: a guest named {name!r} is already running (see 'vmcfg ps')", fg="red")
            sys.exit(EXIT_USAGE)
        clean_stale(gp)
    try:
        r = resolve(profile, cpu="cvmm")
    except ProfileError as e:
        err(f"vmcfg: {e}", fg="red")
        sys.exit(EXIT_USAGE)
    if not r.valid:
        if as_json:
            doc = r.to_json()
            doc["status"] = "invalid-profile"
            emit_json(doc)
        render_violations(r)
        err(f"vmcfg: {r.profile_path or profile}: not valid for the cvmm capability set "
            "(the emulated VMM); nothing was launched", fg="red")
        sys.exit(EXIT_INVALID)

    cfg = r.config
    gs = cfg.settings.get("guest", {})
    base_dir = os.path.dirname(os.path.abspath(r.profile_path)) if r.profile_path else None

    from ..vmm.loader import ImageError, load_image, parse_size
    from ..vmm.handlers import HandlerError, resolve_handlers
    from ..vmm.run import LaunchError

    def bad(msg: str) -> None:
        err(f"vmcfg: {msg}", fg="red")
        sys.exit(EXIT_USAGE)

    def num(text: str, what: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            bad(f"{what}: {text!r} is not a number")

    if kernel and guest:
        raise click.UsageError("--kernel and --guest exclude each other")
    if initrd and not kernel:
        raise click.UsageError("--initrd needs --kernel")
    spec = kernel or guest or gs.get("image")
    spec_base = None if (guest or kernel) else base_dir
    if not spec:
        bad("no guest image: give --guest SPEC or set [guest] image in the profile "
            "(bundled guests: builtin:NAME)")
    run_mode = int(mode) if mode else int(gs.get("mode") or 64)
    try:
        mem = parse_size(memory if memory else gs.get("memory") or "16M")
    except ImageError as e:
        bad(str(e))
    la = num(load_address, "--load-address") if load_address else gs.get("load_address", 0x100000)
    ent = num(entry, "--entry") if entry else gs.get("entry")
    try:
        if kernel:
            from ..vmm.linux import kernel_mode, load_linux
            if load_address or entry:
                raise click.UsageError("--load-address/--entry do not apply to --kernel "
                                       "(the boot protocol places the kernel)")
            written_gs = (getattr(r.profile, "settings", None) or {}).get("guest", {})
            run_mode = int(mode) if mode else kernel_mode(cfg, written_gs.get("mode"))
            mem = parse_size(memory if memory else written_gs.get("memory") or "256M")
            image, _boot = load_linux(kernel, memory=mem, mode=run_mode, initrd=initrd,
                                      cmdline=append or "")
        else:
            image = load_image(spec, base_dir=spec_base, load_address=la, entry=ent,
                               mode=run_mode)
    except ImageError as e:
        bad(str(e))
    written = (getattr(r.profile, "settings", None) or {}).get("guest", {})
    if image.mode is not None and not mode and "mode" not in written and image.kind != "flat":
        run_mode = image.mode
    if append is not None and image.kind != "linux" and not getattr(image, "multiboot", False):
        bad(f"--append: {image.name} is not a kernel (only --kernel images take a command line)")

    table = dict(cfg.settings.get("handlers") or {})
    hbase = {k: base_dir for k in table}
    for h in handlers:
        if "=" not in h:
            bad(f"--handler {h!r}: expected REASON=module:function")
        k, v = h.split("=", 1)
        table[k.strip()] = v.strip()
        hbase[k.strip()] = os.getcwd()
    try:
        hmap = {}
        for k, v in table.items():
            hmap.update(resolve_handlers({k: v}, hbase.get(k)))
    except HandlerError as e:
        bad(str(e))

    rx = None
    if serial_input:
        if detach and serial_input == "-":
            bad("--serial-input -: a detached guest cannot read stdin; give a file")
        try:
            if serial_input == "-":
                rx = sys.stdin.buffer.read()
            else:
                with open(serial_input, "rb") as fh:
                    rx = fh.read()
        except OSError as e:
            bad(f"--serial-input {serial_input}: {e.strerror}")

    if detach:
        _detach(gp, name, as_json, profile=os.path.abspath(r.profile_path or profile),
                args=_child_args(guest, spec_base, mode, memory, load_address, entry,
                                 trace_file, max_instructions, timeout, console_file, handlers,
                                 nmi_at, trace_sample, serial_input, kernel=kernel,
                                 initrd=initrd, cmdline=append, clock=clock),
                console_file=console_file)

    from ..vmm.run import run_guest

    tty = sys.stderr.isatty()
    con_fh = None
    if console_file:
        try:
            con_fh = open(console_file, "w", encoding="latin-1")
        except OSError as e:
            bad(f"--console {console_file}: {e.strerror}")

    progress = _Progress() if tty and not as_json else None

    def console(ch: str) -> None:
        if progress is not None and progress.shown:
            progress.clear()
        if con_fh is not None:
            con_fh.write(ch)
            con_fh.flush()
        elif not as_json:
            sys.stdout.write(ch)
            sys.stdout.flush()

    trace_fh = None
    if trace_file:
        try:
            from ..vmm.run import open_trace_file
            trace_fh = open_trace_file(trace_file)
        except OSError as e:
            bad(f"--trace {trace_file}: {e.strerror}")

    live = {}
    from ..interrupt import SignalWatch, hook
    stopper = _Stopper()

    def on_vcpu(vcpu) -> None:
        if name:
            from ..live.vmm_target import make_session
            live["session"] = make_session(
                vcpu, r.caps, run_mode, name=name,
                profile_path=os.path.abspath(r.profile_path) if r.profile_path else profile,
                record={"guest": spec, "console": console_file})
        stopper.attach(vcpu)
        if sys.stdin is not None and sys.stdin.isatty() and serial_input != "-":
            # keystrokes to COM1's receive path (a shell on ttyS0 is usable)
            from ..vmm.console import TerminalInput
            live["keys"] = TerminalInput(sys.stdin.fileno(), vcpu.platform.serial.feed).start()

    # Ctrl-C / SIGTERM: the guest ends at its next block (status "interrupted"), the
    # report is written as usual and the exit status is 128 + the signal (130 / 143)
    with SignalWatch(stopper.signal) as sig:
        try:
            hook("launch:start")
            res = run_guest(cfg, image, memory=mem, mode=run_mode, handlers=hmap,
                            trace=trace_fh, trace_sample=trace_sample,
                            max_instructions=max_instructions, timeout=timeout,
                            console=console, progress=progress, on_vcpu=on_vcpu, nmi_at=nmi_at,
                            serial_input=rx, clock=clock or "virtual")
        except LaunchError as e:
            bad(str(e))
        except Exception as e:  # noqa: BLE001 - registration problems (name taken, runtime dir)
            from ..live.runtime import RuntimeError_
            if isinstance(e, RuntimeError_):
                bad(str(e))
            raise
        finally:
            if "keys" in live:
                live["keys"].stop()
            if "session" in live:
                s = live["session"]
                summary = res.to_json() if "res" in locals() else {"status": "error"}
                summary["registers"] = s.target.registers()
                s.close(summary)
            if trace_fh is not None:
                trace_fh.close()
            if con_fh is not None:
                con_fh.close()
            if progress is not None:
                progress.clear()
        hook("launch:report")
        doc = res.to_json()
        if sig.status:
            doc["exit_status"] = sig.status
        if as_json:
            emit_json(doc)
        else:
            _report(res, image.name, run_mode)
        sys.exit(sig.status or res.exit_status)


class _Stopper:
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


def _child_args(guest, spec_base, mode, memory, load_address, entry, trace_file,
                max_instructions, timeout, console_file, handlers, nmi_at=None,
                trace_sample=1, serial_input=None, *, kernel=None, initrd=None,
                cmdline=None, clock=None) -> list[str]:
    """The options of this launch, for the background process (paths made absolute)."""
    a: list[str] = []
    for opt, v in (("--kernel", kernel), ("--initrd", initrd)):
        if v:
            a += [opt, os.path.abspath(v)]
    if cmdline is not None:
        a += ["--append", cmdline]
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
    for h in handlers:
        a += ["--handler", h]
    return a


def _detach(gp, name: str, as_json: bool, *, profile: str, args: list[str],
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
            err(f"vmcfg: the guest {name!r} ended at once (status {rc})" + (f":\n{out}" if out else ""),
                fg="red")
            sys.exit(rc if rc in (EXIT_INVALID, EXIT_USAGE) else EXIT_USAGE)
        if is_alive(gp) and os.path.exists(gp.sock):
            try:
                st = request(gp.sock, "status", timeout=2.0)
                break
            except ChannelError:
                pass
        time.sleep(0.02)
    else:
        child.kill()
        err(f"vmcfg: the guest {name!r} did not start within 30 s", fg="red")
        sys.exit(EXIT_USAGE)
    doc = {"name": name, "pid": child.pid, "socket": gp.sock, "console": console, "log": log,
           "state": st.get("state")}
    if as_json:
        emit_json(doc)
    else:
        err(f"launched {name} (pid {child.pid}); console: {console}")
    sys.exit(0)


class _Progress:
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


def _report(res, image_name: str, mode: int) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
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
    if res.registers:
        con.print(res.registers, highlight=False, markup=False)
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
    con.print(f"{res.instructions:,} instructions, {total:,} exits, TSC {res.tsc:,}, "
              f"{res.wall_seconds:.3f} s wall ({rate / 1e6:.1f} M instructions/s)", highlight=False)
