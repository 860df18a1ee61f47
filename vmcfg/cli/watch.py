"""vmcfg watch PROFILE --to NAME: apply a profile to a running guest every time it is saved."""

from __future__ import annotations

import os
import sys
import time

import click

from .live import _call, _refused, _render_diff, complete_guest
from .report import EXIT_USAGE, emit_json_line, err, fail, finish, out, styled


@click.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option("--to", "name", required=True, metavar="NAME", shell_complete=complete_guest)
@click.option("--interval", default=0.2, show_default=True, help="Polling interval in seconds.")
@click.option("--max-events", type=int, default=None, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per event on stdout.")
def watch(profile, name, interval, max_events, as_json):
    """Apply PROFILE to guest NAME every time the file is saved.

    Ctrl-C (SIGINT) or SIGTERM ends it with status 130 or 143."""
    from ..interrupt import Interrupted, SignalWatch, hook
    with SignalWatch(raise_in_main=True):
        try:
            hook("watch:start")
            _watch(profile, name, interval, max_events, as_json)
        except Interrupted as e:
            err(f"vmcfg watch: stopped by {e}")
            finish(e.status)


def _watch(profile, name, interval, max_events, as_json):
    from ..live.channel import ChannelError
    path = os.path.abspath(profile)

    def stamp():
        try:
            st = os.stat(path)
            with open(path, "rb") as fh:
                return (st.st_mtime_ns, st.st_size, hash(fh.read()))
        except OSError:
            return None

    try:
        _call(name, "status", timeout=5.0)
    except ChannelError as e:
        _refused(e, as_json)
    last = stamp()
    events = 0
    err(f"watching {profile} for {name} (Ctrl-C to stop)")
    while max_events is None or events < max_events:
        time.sleep(interval)
        cur = stamp()
        if cur is None or cur == last:
            continue
        while True:                  # debounce: wait until the save is complete
            time.sleep(min(interval, 0.05))
            again = stamp()
            if again == cur:
                break
            cur = again
        if cur is None or cur == last:
            continue
        last = cur
        events += 1
        try:
            res = _call(name, "apply", profile=path)
            ev = {"event": "applied" if res.get("applied") else "unchanged", **res}
            if not as_json:
                if res.get("applied"):
                    out(styled(f"applied {len(res['diff'])} change(s)", fg="green")
                        + f" at instruction {res['instructions']} ({res['latency_ms']:.2f} ms)")
                    _render_diff(res["diff"])
                else:
                    out("saved; no changes")
        except ChannelError as e:
            if e.status == EXIT_USAGE and "no running guest" in e.message:
                fail(e.message)
            ev = {"event": "refused", "error": e.message, **e.detail}
            if not as_json:
                err(styled(f"refused: {e.message}", sys.stderr, fg="red"))
                for x in e.detail.get("errors", []):
                    err(f"  {x.get('rule', '')} {x.get('message', '')}")
        if as_json:
            emit_json_line(ev)
