"""A TVM RPC server for a board that has only the light runtime (tvm_ffi + libtvm_runtime.so, no `tvm`).

TVM's own server (`python -m tvm.exec.rpc_server`) needs the 259 MB compiler wheel on the board; this one
speaks the same protocol (tracker registration, the client handshake, then libtvm_runtime's `rpc.ServerLoop`)
with what `--backend tvm` already needs there, and stops by itself:

    python -m edge_slim.runtime.rpc_server --tracker HOST:9190 --key rpi5 [--sessions N] [--lifetime S]

Uploaded files go to a private temporary directory (one per session, removed at exit); `load_module` loads
them with tvm_ffi.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

RPC_MAGIC, TRACKER_MAGIC = 0xFF271, 0x2F271          # tvm/rpc/base.py
RPC_CODE_MISMATCH = RPC_MAGIC + 2
PUT, UPDATE_INFO, GET_PENDING_MATCHKEYS = 3, 5, 7    # tvm/rpc/base.py TrackerCode


def _recvall(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _sendjson(sock: socket.socket, value) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def _recvjson(sock: socket.socket):
    return json.loads(_recvall(sock, struct.unpack("<i", _recvall(sock, 4))[0]))


def _register(tracker: str, key: str, port: int) -> tuple[socket.socket, str]:
    """Announce this server to the tracker; returns the tracker connection and the match key clients will use."""
    host, _, tport = tracker.rpartition(":")
    conn = socket.create_connection((host, int(tport)), timeout=30)
    conn.sendall(struct.pack("<i", TRACKER_MAGIC))
    if struct.unpack("<i", _recvall(conn, 4))[0] != TRACKER_MAGIC:
        raise RuntimeError(f"{tracker} is not a TVM RPC tracker")
    _sendjson(conn, [UPDATE_INFO, {"key": "server:" + key, "addr": [None, port]}])
    if _recvjson(conn) != 0:
        raise RuntimeError(f"tracker {tracker} refused the server")
    match = f"{key}:{secrets.token_hex(8)}"
    _sendjson(conn, [PUT, key, [port, match], None])
    if _recvjson(conn) != 0:
        raise RuntimeError(f"tracker {tracker} refused the key {key}")
    return conn, match


def _accept(listen: socket.socket, tracker_conn: socket.socket, match: str, key: str, deadline: float):
    """Wait for the client the tracker sends (pinging the tracker meanwhile); None at the deadline."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([listen], [], [], 2.0)
        if not ready:
            _sendjson(tracker_conn, [GET_PENDING_MATCHKEYS])
            _recvjson(tracker_conn)
            continue
        conn, _ = listen.accept()
        if struct.unpack("<i", _recvall(conn, 4))[0] != RPC_MAGIC:
            conn.close()
            continue
        header = _recvall(conn, struct.unpack("<i", _recvall(conn, 4))[0]).decode().split()
        if not header or header[0] != "client:" + match:
            conn.sendall(struct.pack("<i", RPC_CODE_MISMATCH))
            conn.close()
            continue
        server_key = ("server:" + key).encode()
        conn.sendall(struct.pack("<i", RPC_MAGIC) + struct.pack("<i", len(server_key)) + server_key)
        return conn
    return None


def serve(tracker: str, key: str, sessions: int = 1, lifetime: float = 600.0, host: str = "0.0.0.0") -> int:
    """Serve `sessions` RPC sessions, one after another, then return; give up after `lifetime` seconds."""
    from .backends.tvm_backend import _load_runtime, tvm_ffi
    signal.alarm(int(lifetime) + 30)  # a hard stop even if a session hangs inside the runtime
    _load_runtime(cuda=False)
    work = tempfile.mkdtemp(prefix="edge-slim-rpc-")
    # a fresh directory per session: a library a session loaded stays mapped, and the next session's upload of
    # the same name must not overwrite it in place
    session_dir = [work]

    @tvm_ffi.register_global_func("tvm.rpc.server.workpath", override=True)
    def _workpath(name):
        return os.path.join(session_dir[0], name)

    @tvm_ffi.register_global_func("tvm.rpc.server.load_module", override=True)
    def _load_module(name):
        return tvm_ffi.load_module(os.path.join(session_dir[0], name))

    deadline = time.monotonic() + lifetime
    served = 0
    listen = socket.socket()
    listen.bind((host, 0))
    listen.listen(1)
    port = listen.getsockname()[1]
    try:
        while served < sessions and time.monotonic() < deadline:
            tracker_conn, match = _register(tracker, key, port)
            print(f"rpc_server: key {key} on {host}:{port}, registered with {tracker}", flush=True)
            conn = _accept(listen, tracker_conn, match, key, deadline)
            tracker_conn.close()
            if conn is None:
                break
            session_dir[0] = tempfile.mkdtemp(dir=work)
            tvm_ffi.get_global_func("rpc.ServerLoop")(conn.detach())  # owns the socket until the client lets go
            served += 1
            print(f"rpc_server: session {served} over", flush=True)
    finally:
        listen.close()
        shutil.rmtree(work, ignore_errors=True)
    return served


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_slim.runtime.rpc_server", description=__doc__.splitlines()[0])
    p.add_argument("--tracker", required=True, help="HOST:PORT of the TVM RPC tracker")
    p.add_argument("--key", required=True, help="the device key clients ask the tracker for (e.g. rpi5)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (the tracker hands clients the address it sees)")
    p.add_argument("--sessions", type=int, default=1, help="sessions to serve before exiting")
    p.add_argument("--lifetime", type=float, default=600.0, help="seconds before giving up")
    a = p.parse_args(argv)
    try:
        serve(a.tracker, a.key, a.sessions, a.lifetime, a.host)
    except (OSError, RuntimeError) as e:
        print(f"rpc_server: {e}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
