"""The control channel of a running guest: a UNIX socket, one JSON request and
one JSON reply per connection.

Security: the socket lives in the user's 0700 runtime directory and is 0600;
the server checks the peer's uid with SO_PEERCRED and refuses other users;
requests are size-limited (64 KiB), must be one JSON object with a known
"op" and well-typed arguments; a malformed, oversized or hostile request gets
an error reply and changes nothing.  Each connection is served on its own
short-lived thread with a socket timeout, so a slow or dead client never
blocks the guest (which runs on another thread) or other clients.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from typing import Any, Callable

MAX_REQUEST = 64 * 1024
MAX_REPLY = 16 * 1024 * 1024
CLIENT_TIMEOUT = 2.0        # server side: how long a client may take to send its request

# op -> {arg: (type, required)}
SCHEMA: dict[str, dict[str, tuple[type | tuple, bool]]] = {
    "status": {},
    "stats": {},
    "history": {},
    "plan": {"profile": (str, True)},
    "apply": {"profile": (str, True)},
    "rollback": {"steps": (int, False), "to": (int, False)},
    "stop": {},
    "inject": {"kind": (str, True), "vector": (int, False)},
}


class ChannelError(Exception):
    """A refused or failed request: message + exit status for the CLI."""

    def __init__(self, message: str, status: int = 1, detail: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail or {}


def check_request(req: Any) -> tuple[str, dict]:
    if not isinstance(req, dict):
        raise ChannelError("request must be a JSON object", 2)
    op = req.get("op")
    if op not in SCHEMA:
        raise ChannelError(f"unknown op {op!r}", 2)
    spec = SCHEMA[op]
    args = {k: v for k, v in req.items() if k != "op"}
    for k in args:
        if k not in spec:
            raise ChannelError(f"unknown argument {k!r} for {op}", 2)
    for k, (typ, required) in spec.items():
        if k not in args:
            if required:
                raise ChannelError(f"{op} needs {k!r}", 2)
            continue
        v = args[k]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise ChannelError(f"{op}: {k!r} must be {typ.__name__}", 2)
        if isinstance(v, str) and len(v) > 4096:
            raise ChannelError(f"{op}: {k!r} is too long", 2)
    return op, args


def read_line(conn: socket.socket, limit: int, what: str) -> bytes:
    """One newline-terminated message (without the newline), at most `limit` bytes."""
    buf = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ChannelError(f"{what} larger than {limit} bytes", 2)
        if b"\n" in chunk:
            break
    return bytes(buf).split(b"\n", 1)[0]


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Serves requests for one guest. `handler(op, args) -> dict` does the work
    (raising ChannelError to refuse)."""

    def __init__(self, path: str, handler: Callable[[str, dict], dict]):
        self.path = path
        self.handler = handler
        self.allowed_uid = os.getuid()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        s.listen(16)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="vmcfg-control",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(CLIENT_TIMEOUT)
                try:
                    uid = peer_uid(conn)
                except OSError:
                    uid = -1
                data = self._read(conn)
                if uid != self.allowed_uid:
                    self._reply(conn, {"ok": False, "status": 1,
                                       "error": f"permission denied: peer uid {uid} is not the guest's owner"})
                    return
                req = json.loads(data.decode("utf-8"))
                op, args = check_request(req)
                t0 = time.perf_counter()
                result = self.handler(op, args)
                result.setdefault("server_ms", (time.perf_counter() - t0) * 1e3)
                self._reply(conn, {"ok": True, **result})
            except ChannelError as e:
                self._reply(conn, {"ok": False, "status": e.status, "error": e.message, **e.detail})
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._reply(conn, {"ok": False, "status": 2, "error": "request is not valid JSON"})
            except socket.timeout:
                self._reply(conn, {"ok": False, "status": 2, "error": "request timed out"})
            except Exception as e:  # noqa: BLE001 - a bug must not kill the guest
                self._reply(conn, {"ok": False, "status": 2, "error": f"internal error: {type(e).__name__}: {e}"})

    @staticmethod
    def _read(conn: socket.socket) -> bytes:
        return read_line(conn, MAX_REQUEST, "request")

    @staticmethod
    def _reply(conn: socket.socket, doc: dict) -> None:
        try:
            conn.sendall(json.dumps(doc, default=str).encode() + b"\n")
        except OSError:
            pass


def request(path: str, op: str, timeout: float = 10.0, **args: Any) -> dict:
    """Send one request; return the reply (raises ChannelError on refusal)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ChannelError("guest is not running (no control socket)", 2) from None
        try:
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                      # the server may have answered and closed already
        buf = read_line(s, MAX_REPLY, "reply")
    except socket.timeout:
        raise ChannelError(f"no reply within {timeout:g} s", 2) from None
    except ConnectionResetError:
        raise ChannelError("the guest closed the connection", 2) from None
    finally:
        s.close()
    if not buf:
        raise ChannelError("the guest closed the connection without a reply", 2)
    try:
        doc = json.loads(buf.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ChannelError("the guest sent a malformed reply", 2) from None
    if not doc.get("ok"):
        raise ChannelError(doc.get("error", "refused"), int(doc.get("status", 1)),
                           {k: v for k, v in doc.items() if k not in ("ok", "error", "status")})
    return doc
