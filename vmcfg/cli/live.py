"""Live reconfiguration of running guests: ps, apply, watch, stats, history, stop, inject."""

from __future__ import annotations

import json
import time
from typing import NoReturn

import click

from .common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, complete_profile, emit_json, err
from .report import emit_json_line, fail, finish, out, styled


def complete_guest(ctx, param, incomplete):
    try:
        from ..live.runtime import list_guests
        return [g["name"] for g in list_guests() if g["name"].startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []


def _call(name: str, op: str, timeout: float = 10.0, **args):
    from ..live.client import call
    return call(name, op, timeout, **args)


def _refused(e, as_json: bool) -> NoReturn:
    """A refusal or a missing guest: the message and its details on stderr; JSON error object."""
    err(f"vmcfg: {e.message}", fg="red")
    for x in e.detail.get("errors", []):
        loc = x.get("location")
        where = f"{loc['file']}:{loc['line']}:{loc['column']}: " if loc else ""
        if "rule" in x:
            err(f"  {where}error[{x['rule']}] {x['title']}: {x['message']}")
            err(f"      fix: {x['fix']}", fg="cyan")
        else:
            err(f"  {x.get('message', x)}")
    for d in e.detail.get("refused", []):
        err(f"  {d['key']}: {_v(d['old'])} -> {_v(d['new'])} needs a new guest")
    fail(e.message, e.status, quiet=True, **e.detail)


def _v(x) -> str:
    if isinstance(x, int) and not isinstance(x, bool) and x > 9:
        return hex(x)
    return json.dumps(x) if not isinstance(x, str) else x


def _render_diff(diff: list[dict]) -> None:
    for d in diff:
        live = "" if d["live"] else styled("  (needs a new guest)", fg="red")
        out(f"  {d['key']:45s} {_v(d['old'])} -> {_v(d['new'])}{live}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def ps(as_json):
    """List this user's running guests."""
    from ..live.channel import ChannelError
    from ..live.runtime import RuntimeError_, list_guests
    try:
        guests = list_guests()
    except RuntimeError_ as e:
        fail(str(e))
    rows = []
    for g in guests:
        row = {"name": g["name"], "pid": g["pid"], "profile": g.get("profile"),
               "uptime": time.time() - g.get("started", time.time())}
        try:
            s = _call(g["name"], "status", timeout=2.0)
            row.update(state=s.get("state"), instructions=s.get("instructions"),
                       exits=sum(e["count"] for e in s.get("exits", [])),
                       applies=s.get("applies"))
        except ChannelError:
            row.update(state="unresponsive", instructions=None, exits=None)
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        err("no running guests")
        return
    out(f"{'NAME':16s} {'PID':>7s} {'STATE':12s} {'UPTIME':>8s} {'INSTRUCTIONS':>14s} {'EXITS':>9s}  PROFILE")
    for r in rows:
        out(f"{r['name']:16s} {r['pid']:7d} {str(r['state']):12s} {r['uptime']:7.1f}s "
            f"{str(r['instructions'] if r['instructions'] is not None else '-'):>14s} "
            f"{str(r['exits'] if r['exits'] is not None else '-'):>9s}  {r['profile']}")


@click.command()
@click.argument("profile", required=False, shell_complete=complete_profile)
@click.option("--to", "name", required=True, metavar="NAME", shell_complete=complete_guest,
              help="The running guest.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--rollback", type=int, is_flag=False, flag_value=1, default=None, metavar="[N]",
              help="Return to the configuration N applies back (default 1).")
@click.option("--json", "as_json", is_flag=True)
def apply(profile, name, dry_run, rollback, as_json):
    """Apply PROFILE to the running guest NAME (all-or-nothing, between two
    guest instructions). Exit 0 applied, 1 refused, 2 bad usage / no such guest."""
    from ..live import client as api
    if rollback is None and not profile:
        raise click.UsageError("give a PROFILE, or --rollback [N]")
    if rollback is not None and profile:
        raise click.UsageError("--rollback takes no PROFILE")
    try:
        if rollback is not None:
            if rollback < 1:
                raise click.UsageError("--rollback N needs N >= 1")
            res = api.rollback(name, rollback)
        else:
            res = api.apply(name, profile, dry_run=dry_run)
    except api.LiveError as e:
        _refused(e, as_json)
    if as_json:
        emit_json(res)
        return
    if dry_run:
        out(f"plan for {name}: {len(res['plan'])} change(s)"
            + ("" if res["would_apply"] else styled(" — would be refused", fg="red")))
        _render_diff(res["plan"])
        finish(EXIT_OK if res["would_apply"] else EXIT_INVALID)
    if not res.get("applied"):
        out(f"{name}: no changes")
        return
    out(styled(f"{name}: applied {len(res['diff'])} change(s)", fg="green")
        + f" at instruction {res['instructions']}, tsc {res['tsc']}, in {res['latency_ms']:.2f} ms")
    _render_diff(res["diff"])


@click.command()
@click.argument("name", shell_complete=complete_guest)
@click.option("--follow", "-f", is_flag=True,
              help="Exit rates by reason over time until the guest ends: a live chart on a "
                   "terminal, one line per sample in a pipe (JSON lines with --json).")
@click.option("--interval", default=1.0, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0.05), help="With -f: seconds between samples.")
@click.option("--json", "as_json", is_flag=True)
def stats(name, follow, interval, as_json):
    """Live exit counters of guest NAME, by reason."""
    from ..live.channel import ChannelError
    if follow:       # issue 17: rates over time (vmcfg/cli/stats_follow.py)
        from .stats_follow import follow as follow_rates
        return follow_rates(name, _call, _refused, as_json=as_json, interval=interval)
    while True:
        try:
            s = _call(name, "stats")
        except ChannelError as e:
            if follow and e.status == EXIT_USAGE:
                return
            _refused(e, as_json)
        if as_json:
            emit_json_line(s)
        else:
            exits = s.get("exits", [])
            total = sum(e["count"] for e in exits)
            out(f"{name}: {s.get('state')}  instructions {s.get('instructions')}  "
                f"tsc {s.get('tsc')}  exits {total}")
            for e in sorted(exits, key=lambda e: -e["count"]):
                out(f"  {e['name']:28s} {e['count']:10d}  {100.0 * e['count'] / max(total, 1):5.1f}%")
        if not follow:
            return
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            return


@click.command()
@click.argument("name", shell_complete=complete_guest)
@click.option("--json", "as_json", is_flag=True)
def history(name, as_json):
    """Every change applied to guest NAME: time, instruction count, diff."""
    from ..live.channel import ChannelError
    try:
        h = _call(name, "history")["history"]
    except ChannelError as e:
        _refused(e, as_json)
    if as_json:
        emit_json(h)
        return
    for e in h:
        when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        out(f"#{e['seq']:<3d} {when} {e['kind']:14s} instr {e['instructions']!s:>12s}  {e['profile']}")
        _render_diff(e["diff"])


@click.command()
@click.argument("name", shell_complete=complete_guest)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the guest to end.")
@click.option("--json", "as_json", is_flag=True)
def stop(name, timeout, as_json):
    """End guest NAME cleanly and show its final summary."""
    from ..live.channel import ChannelError
    from ..live.runtime import is_alive, paths, read_summary
    try:
        _call(name, "stop")
    except ChannelError as e:
        _refused(e, as_json)
    deadline = time.monotonic() + timeout
    p = paths(name)
    while is_alive(p) and time.monotonic() < deadline:
        time.sleep(0.02)
    if is_alive(p):
        fail(f"{name} did not end within {timeout:g} s", EXIT_INVALID)
    summ = read_summary(name) or {}
    if as_json:
        emit_json(summ)
        return
    s = summ.get("summary", {})
    out(f"{name}: {s.get('status', 'stopped')} after {s.get('instructions')} instructions")
    for e in s.get("exits", []):
        out(f"  {e['name']:28s} {e['count']:10d}")


@click.command()
@click.argument("name", shell_complete=complete_guest)
@click.argument("kind", type=click.Choice(["nmi", "irq"]))
@click.argument("vector", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
def inject(name, kind, vector, as_json):
    """Deliver an NMI or an external interrupt VECTOR to guest NAME."""
    from ..live.channel import ChannelError
    if kind == "irq" and vector is None:
        raise click.UsageError("inject irq needs a VECTOR")
    try:
        res = _call(name, "inject", kind=kind, **({"vector": vector} if vector is not None else {}))
    except ChannelError as e:
        _refused(e, as_json)
    if as_json:
        emit_json(res)
    else:
        out(f"{name}: {kind} {'' if vector is None else vector} queued at instruction "
            f"{res.get('instructions')}")
