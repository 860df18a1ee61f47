"""vmcfg launch PROFILE [--guest SPEC] [--mode M] [--memory SIZE] [--json] [--trace FILE] ...

Runs a guest on vmcfg's emulated VMM (Unicorn) under the profile's VMCS
controls.  The emulator is imported only inside the command.
"""

from __future__ import annotations

import os
import sys

import click

from .. import status as S
from .common import complete_profile, emit_json, render_violations
from .report import fail, finish

STATUS_HELP = "\b\nExit status (the \"status\" of --json):\n" + "\n".join(
    f"  {o.code:<3d} {o.name}: {o.meaning}" for o in S.OUTCOMES if o.name != "ok")


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
@click.option("--kernel-entry", "kernel_entry", type=click.Choice(["bzimage", "payload"]),
              help="With --kernel: 'bzimage' (the default) enters the bzImage's own 64-bit "
                   "entry, whose decompressor unpacks the kernel in the guest; 'payload' has "
                   "the loader unpack the payload (xz/gzip ELF) and enters the kernel proper "
                   "at startup_64 (64-bit profiles only; skips the decompressor).")
@click.option("--clock", type=click.Choice(["virtual", "realtime"]),
              help="Guest time: 'virtual' (the default, so a run is reproducible: time from "
                   "retired instructions, the same console bytes and exits every run, however "
                   "busy the host) or 'realtime' (the TSC follows the host clock).")
@click.option("--mode", type=click.Choice(["16", "32", "64"]), help="Start mode (default 64).")
@click.option("--memory", metavar="SIZE", help="Guest RAM, e.g. 16M (default 16M).")
@click.option("--load-address", "load_address", metavar="ADDR",
              help="Guest-physical load address of a flat image (default 0x100000).")
@click.option("--entry", metavar="ADDR", help="Entry point (default: load address / ELF entry).")
@click.option("--append", "append", metavar="TEXT",
              help="Kernel command line of --kernel, or of a Multiboot image (after the image "
                   "name, as QEMU passes it).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document on stdout at the end (its \"console\" holds the serial "
                   "output, which streams to stderr as it comes, unless --console FILE).")
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
def launch(profile, guest, kernel, initrd, kernel_entry, clock, mode, memory, load_address,
           entry, append, as_json, trace_file, trace_sample, max_instructions, nmi_at, timeout,
           console_file, serial_input, handlers, name, detach):
    """Run a guest on vmcfg's emulated VMM under PROFILE's VMX controls.

    VM exits happen exactly as the profile's controls say; each exit is
    handled by a default handler (or a Python handler of yours) and the
    guest resumes.  The serial console (COM1, port 0x3F8) is shown live
    (on stdout; on stderr with --json, whose document takes stdout), and
    with a terminal on stdin what you type goes to COM1.  The guest ends the
    run through the debug-exit port 0xF4, by halting, powering off or
    resetting the machine (a profile with lifecycle.on_reboot = "restart"
    boots it again instead).
    """
    from ..vmm.plan import PlanError, build_plan

    if detach and not name:
        raise click.UsageError("--detach needs --name")
    if name:
        from ..live.runtime import RuntimeError_, check_name, clean_stale, is_alive, paths
        try:
            check_name(name)
            gp = paths(name)
        except RuntimeError_ as e:
            fail(str(e))
        if is_alive(gp):
            fail(f"a guest named {name!r} is already running (see 'vmcfg ps')")
        clean_stale(gp)
    rx = _serial_input(serial_input, detach)
    try:
        plan = build_plan(profile, guest=guest, mode=mode, memory=memory,
                          load_address=load_address, entry=entry, handlers=handlers,
                          max_instructions=max_instructions, timeout=timeout, nmi_at=nmi_at,
                          serial_input=rx, cmdline=append, kernel=kernel, initrd=initrd,
                          clock=clock, kernel_entry=kernel_entry)
    except PlanError as e:
        if e.resolved is not None:
            render_violations(e.resolved)
            fail(e.message, e.code, **e.resolved.to_json())
        fail(e.message, e.code)

    from . import launch_view as view
    if detach:
        base = None if guest else os.path.dirname(os.path.abspath(plan.profile_path or profile))
        view.detach(gp, name, as_json, profile=os.path.abspath(plan.profile_path or profile),
                    args=view.child_args(guest, base, mode, memory, load_address, entry,
                                         trace_file, max_instructions, timeout, console_file,
                                         handlers, nmi_at, trace_sample, serial_input,
                                         append, kernel=kernel, initrd=initrd, clock=clock,
                                         kernel_entry=kernel_entry),
                    console_file=console_file)
    # Ctrl-C / SIGTERM: the guest ends at its next block (status "interrupted"), the
    # report is written as usual and the exit status is 128 + the signal (130 / 143)
    from ..interrupt import SignalWatch, hook
    stopper = view.Stopper()
    with SignalWatch(stopper.signal) as sig:
        hook("launch:start")
        keys = view.TerminalKeys(enabled=serial_input != "-")

        def on_vcpu(vcpu) -> None:
            stopper.attach(vcpu)
            keys.start(vcpu)
        try:
            res = _run(plan, name, as_json, trace_file, trace_sample, console_file, on_vcpu)
        finally:
            keys.stop()
        hook("launch:report")
        doc = res.to_json()
        if sig.status:
            doc["exit_status"] = sig.status
        if as_json:
            emit_json(doc)
        else:
            view.render_result(res, plan.image.name, plan.mode)
        finish(sig.status or res.exit_status)


def _serial_input(path: str | None, detach: bool) -> bytes | None:
    """The bytes of --serial-input FILE (- = stdin)."""
    if not path:
        return None
    if detach and path == "-":
        fail("--serial-input -: a detached guest cannot read stdin; give a file")
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        fail(f"--serial-input {path}: {e.strerror}")


def _run(plan, name, as_json: bool, trace_file: str | None, trace_sample: int,
         console_file: str | None, on_vcpu):
    """Run the plan with its console, trace and progress line wired to files and streams."""
    from .. import api
    from ..live.runtime import RuntimeError_
    from ..vmm.run import open_trace_file
    from . import launch_view as view

    files = {}
    try:
        try:
            if console_file:
                files["console"] = open(console_file, "w", encoding="latin-1")
        except OSError as e:
            fail(f"--console {console_file}: {e.strerror}")
        try:
            if trace_file:
                files["trace"] = open_trace_file(trace_file)
        except OSError as e:
            fail(f"--trace {trace_file}: {e.strerror}")
        progress = view.Progress() if sys.stderr.isatty() and not as_json else None
        con_fh = files.get("console")

        def console(ch: str) -> None:
            if progress is not None and progress.shown:
                progress.clear()
            if con_fh is not None:
                con_fh.write(ch)
                con_fh.flush()
            else:                       # stdout holds the --json document: the console, as
                out = sys.stderr if as_json else sys.stdout     # it comes, goes to stderr
                out.write(ch)
                out.flush()

        def restarted(n: int, message: str) -> None:
            if progress is not None and progress.shown:
                progress.clear()
            view.note_restart(n, message)

        try:
            return api.launch(plan, name=name, trace=files.get("trace"), console=console,
                              progress=progress, record={"console": console_file},
                              trace_sample=trace_sample, on_vcpu=on_vcpu,
                              on_restart=restarted)
        except RuntimeError_ as e:          # registration problems (name taken, runtime dir)
            fail(str(e))
        finally:
            if progress is not None:
                progress.clear()
    finally:
        for fh in files.values():
            fh.close()
