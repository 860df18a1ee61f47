"""Safe file updates: atomic replacement and a lock that serialises read-modify-write.

* ``atomic_write(path, data)`` writes a temporary file in the same directory,
  fsyncs it, gives it the mode of the file it replaces and renames it over the
  target (then fsyncs the directory), so readers see the old or the new file,
  never a half-written one.  ``exclusive=True`` refuses to replace an existing
  file (used by ``vmcfg new`` without ``--force``) without a check-then-write
  race.
* ``locked(path)`` holds an exclusive ``fcntl`` lock on a lock file beside
  the target (``.NAME.lock``) for the whole read-modify-write, so concurrent
  ``vmcfg set``/``edit`` processes on one profile run one after the other and
  none loses another's change.  The lock file is left in place: removing it
  would reopen the race it exists to close.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from typing import Iterator


class WriteError(Exception):
    """A file could not be written (the original, if any, is unchanged)."""

    def __init__(self, message: str, path: str, *, exists: bool = False):
        super().__init__(message)
        self.message = message
        self.path = path
        self.exists = exists    # refused because the target exists (exclusive write)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _target(path: str) -> str:
    """Write through a symlink to the file it names (keeping the link)."""
    return os.path.realpath(path) if os.path.islink(path) else path


def lock_path(path: str) -> str:
    t = _target(path)
    d, base = os.path.split(os.path.abspath(t))
    return os.path.join(d, f".{base}.lock")


@contextlib.contextmanager
def locked(path: str, *, blocking: bool = True) -> Iterator[None]:
    """Exclusive advisory lock serialising read-modify-write of `path`."""
    lp = lock_path(path)
    try:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise WriteError(f"cannot create lock file {lp}: {e.strerror}", path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WriteError("locked by another vmcfg process", path) from None
            raise WriteError(f"cannot lock {lp}: {e.strerror}", path) from None
        yield
    finally:
        os.close(fd)     # releases the lock


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes | str, *, exclusive: bool = False,
                 mode: int | None = None) -> None:
    """Replace (or create) `path` with `data` atomically.

    The file keeps its permission bits; a new file gets `mode` (default
    0o666 minus the umask).  With `exclusive`, an existing file is never
    replaced (WriteError "exists").
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    target = _target(path)
    d = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    if not os.path.isdir(d):
        raise WriteError(f"directory {d} does not exist", path)
    try:
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise WriteError("not a regular file", path)
        keep_mode = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        st = None
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            keep_mode = 0o666 & ~umask
        else:
            keep_mode = mode
    except OSError as e:
        raise WriteError(f"cannot stat: {e.strerror}", path) from None
    if exclusive and st is not None:
        raise WriteError("exists (use --force to overwrite)", path, exists=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
    except OSError as e:
        raise WriteError(f"cannot create a temporary file in {d}: {e.strerror}", path) from None
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, keep_mode)
            if exclusive:
                # link() fails if the target appeared meanwhile: no clobbering race.
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise WriteError("exists (use --force to overwrite)", path,
                                     exists=True) from None
                except OSError:
                    if os.path.exists(target):
                        raise WriteError("exists (use --force to overwrite)", path,
                                         exists=True) from None
                    os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        except WriteError:
            raise
        except OSError as e:
            raise WriteError(f"cannot write: {e.strerror}", path) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(d)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Stream a new version of `path`: write to the yielded file, which replaces
    `path` atomically when the block ends normally (on an exception the
    temporary file is removed and `path` is unchanged).  For outputs too large
    to build in memory first (trace exports)."""
    target = _target(path)
    d = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    if not os.path.isdir(d):
        raise WriteError(f"directory {d} does not exist", path)
    if os.path.exists(target) and not os.path.isfile(target):
        raise WriteError("not a regular file", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
    except OSError as e:
        raise WriteError(f"cannot create a temporary file in {d}: {e.strerror}", path) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        try:
            keep = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            keep = 0o666 & ~umask
        os.chmod(tmp, keep)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(d)
