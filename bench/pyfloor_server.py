#!/usr/bin/env python3
"""The Python floor of the fan-in benchmark (bench/fanin.py): the least a Python log server
for audisp-remote clients does.

    pyfloor_server.py PORT [--log LOGFILE [--sync-every N]]

One thread, one epoll, non-blocking sockets, the standard library only, as
bench/limit_server.c in C: every ready client is read with one ``recv_into``, its whole
frames are taken from the buffer, and once every ready client has been read each gets the
ACKs of its frames in one ``send``. With --log the records are first written to LOGFILE,
one ``os.write`` per wakeup, as pyauditd answers only after its write; with --sync-every a
second thread calls ``fsync`` once N more records are written, as ``flush =
INCREMENTAL_ASYNC`` with ``freq = N`` asks, at most one every MIN_SYNC_INTERVAL as pyauditd's
does (a sync costs the writer two hand-overs of the GIL). No checks beyond the
header's length, no partial frames kept across reads (the benchmark's clients send one whole
frame and wait for its ACK), no configuration: what is left is the cost of Python itself
between the same system calls pyauditd makes, so the gap between the limit and pyauditd
splits into what Python costs and what pyauditd's own work costs.

On SIGTERM/SIGINT it prints ``frames N`` (what it received) and exits.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from auditpy.auditd.logfile import MIN_SYNC_INTERVAL
from auditpy.proto.remote import HEADER, TYPE_ACK

BUFFER = 64 * 1024


def syncer(fd: int, wake: threading.Lock) -> None:
    """fsync whenever the writer releases `wake` (held while no sync is due), at most one
    every MIN_SYNC_INTERVAL."""
    synced = -MIN_SYNC_INTERVAL
    while True:
        wake.acquire()
        pause = synced + MIN_SYNC_INTERVAL - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        synced = time.monotonic()
        os.fsync(fd)


def serve(port: int, log_path: str | None, sync_every: int) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    log_fd = (os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
              if log_path is not None else -1)
    wake = threading.Lock()
    wake.acquire()
    if log_fd >= 0 and sync_every:
        threading.Thread(target=syncer, args=(log_fd, wake), daemon=True).start()
    unsynced = 0
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    read_pipe, write_pipe = os.pipe()  # the signal handler's wakeup
    os.set_blocking(write_pipe, False)
    signal.set_wakeup_fd(write_pipe)
    signal.signal(signal.SIGTERM, lambda _s, _f: None)
    signal.signal(signal.SIGINT, lambda _s, _f: None)
    epoll.register(read_pipe, select.EPOLLIN)
    clients: dict[int, socket.socket] = {}
    raw = bytearray(BUFFER)
    view = memoryview(raw)
    unpack, pack = HEADER.unpack_from, HEADER.pack
    frames = 0
    listen_fd = listener.fileno()
    while True:
        lines: list[bytes] = []
        replies: list[tuple[socket.socket, bytes]] = []
        for fd, _events in epoll.poll(-1, 256):
            if fd == read_pipe:
                print(f"frames {frames}", flush=True)
                return 0
            if fd == listen_fd:
                try:
                    sock, _address = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients[sock.fileno()] = sock
                epoll.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = clients[fd]
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                continue
            if not n:
                epoll.unregister(fd)
                del clients[fd]
                sock.close()
                continue
            offset, acks = 0, []
            while n - offset >= HEADER.size:
                magic, _h, _m, _kind, length, seq = unpack(raw, offset)
                end = offset + HEADER.size + length
                if end > n:
                    break
                lines.append(bytes(view[offset + HEADER.size : end]) + b"\n")
                acks.append(pack(magic, 0, 0, TYPE_ACK, 0, seq))
                offset = end
            frames += len(acks)
            replies.append((sock, b"".join(acks)))
        if log_fd >= 0 and lines:
            os.write(log_fd, b"".join(lines))
            unsynced += len(lines)
            if sync_every and unsynced >= sync_every:
                unsynced = 0
                if wake.locked():
                    wake.release()
        for sock, data in replies:
            sock.send(data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--log", help="write the records to this file, one write per wakeup")
    parser.add_argument("--sync-every", type=int, default=0,
                        help="fsync (in a thread) once this many more records are written")
    args = parser.parse_args(argv)
    return serve(args.port, args.log, args.sync_every)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
