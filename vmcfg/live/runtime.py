"""Where running guests are found: one directory per user, one socket, lock and
record per guest.

    $XDG_RUNTIME_DIR/vmcfg/          (platformdirs; 0700)
    /tmp/vmcfg-<uid>/                 (fallback when XDG_RUNTIME_DIR is unset; 0700, owned by us)
        NAME.sock     control socket (0600)
        NAME.json     record: name, pid, profile, cpu, started
        NAME.lock     flock()ed by the guest process for its whole life
        NAME.summary.json   final summary, kept after the guest ended

A record whose lock can be taken belongs to a dead guest: it is stale and is
removed (with its socket) by `ps` and by a later launch with the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import time
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RuntimeError_(Exception):
    pass


def runtime_dir(create: bool = True) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        import platformdirs
        d = platformdirs.user_runtime_dir("vmcfg")
    else:
        d = os.path.join("/tmp", f"vmcfg-{os.getuid()}")
    if create:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            raise RuntimeError_(f"cannot create runtime directory {d}: {e.strerror}") from None
    if os.path.exists(d):
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeError_(f"runtime directory {d} is not a directory owned by you; refusing to use it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
    return d


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise RuntimeError_(f"invalid guest name {name!r}: use letters, digits, '.', '_' or '-' "
                            f"(at most 64, starting with a letter or digit)")
    return name


@dataclass
class GuestPaths:
    name: str
    dir: str

    @property
    def sock(self) -> str:
        return os.path.join(self.dir, f"{self.name}.sock")

    @property
    def record(self) -> str:
        return os.path.join(self.dir, f"{self.name}.json")

    @property
    def lock(self) -> str:
        return os.path.join(self.dir, f"{self.name}.lock")

    @property
    def summary(self) -> str:
        return os.path.join(self.dir, f"{self.name}.summary.json")


def paths(name: str) -> GuestPaths:
    return GuestPaths(check_name(name), runtime_dir())


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_alive(p: GuestPaths) -> bool:
    """True if a live process holds the guest's lock."""
    try:
        fd = os.open(p.lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def clean_stale(p: GuestPaths) -> bool:
    """Remove the leftovers of a dead guest. Returns True if something was removed."""
    if is_alive(p):
        return False
    removed = False
    for f in (p.sock, p.record, p.lock):
        try:
            os.unlink(f)
            removed = True
        except FileNotFoundError:
            pass
    return removed


class Registration:
    """Held by a running guest process: the lock, the record, the socket path."""

    def __init__(self, name: str, record: dict):
        self.p = paths(name)
        clean_stale(self.p)
        fd = os.open(self.p.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = read_record(self.p).get("pid", "?")
            raise RuntimeError_(f"a guest named {name!r} is already running (pid {pid})") from None
        self.fd = fd
        for f in (self.p.sock,):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        self.record = {"name": name, "pid": os.getpid(), "started": time.time(),
                       "socket": self.p.sock, **record}
        _write_json(self.p.record, self.record)

    def update(self, **kw) -> None:
        self.record.update(kw)
        _write_json(self.p.record, self.record)

    def close(self, summary: dict | None = None) -> None:
        if summary is not None:
            try:
                _write_json(self.p.summary, {**self.record, "summary": summary, "ended": time.time()})
            except OSError:
                pass
        for f in (self.p.sock, self.p.record):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        try:
            os.unlink(self.p.lock)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_record(p: GuestPaths) -> dict:
    try:
        with open(p.record) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def read_summary(name: str) -> dict | None:
    p = paths(name)
    try:
        with open(p.summary) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def list_guests() -> list[dict]:
    """Records of every running guest; stale entries are cleaned on the way."""
    d = runtime_dir()
    out = []
    for f in sorted(os.listdir(d)):
        if not f.endswith(".lock"):
            continue
        name = f[:-5]
        if not NAME_RE.match(name):
            continue
        p = GuestPaths(name, d)
        if not is_alive(p):
            clean_stale(p)
            continue
        rec = read_record(p)
        if rec:
            out.append(rec)
    return out
