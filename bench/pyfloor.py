#!/usr/bin/env python3
"""The Python floors for bench/floors.py: the least a Python audit reader can do, registered.

    pyfloor.py MODE [--rcvbuf BYTES] [--log LOGFILE] [--plugin OUTFILE] [--pause-ms MS]
               KEY COUNTFILE

Registers with the kernel as its audit daemon, like bench/limit.c, and reads the record
stream in one of these ways, so the gap between the limit and pyauditd can be split into
what reading costs in Python, what writing costs, and what pyauditd's own work costs:

- ``recv``: the standard library alone, one blocking ``recv_into`` per record;
- ``mmsg``: ``recvmmsg`` through ctypes, 128 records per call, as pyauditd reads
  (auditpy.system.mmsg), payloads copied out as bytes;
- ``mmsg-raw``: the same system call, the payloads left in the buffers (the system call
  and the ctypes hand-over without Python's per-record copies; it counts SYSCALL records,
  as only the benchmark's rule makes any);
- ``write``: ``mmsg``, and each batch's records as log lines ``type=NAME msg=PAYLOAD``
  written to LOGFILE with one ``os.write``: the least any Python audit logger does;
- ``plugin``: ``write``, and the same lines handed to a plugin, ``cat > OUTFILE``, through
  its stdin pipe, without blocking: what the pipe does not take waits in memory and goes
  with the next batch, so reading never waits for the plugin. The least a Python logger
  with one plugin does, in one process (pyauditd hands records to a dispatcher process,
  which queues them for its plugins).

--rcvbuf is the socket's receive buffer (default 64 KiB, pyauditd's while the kernel waits).
--pause-ms (the batch modes): pyauditd's pause between reads while records trickle in
(auditpy.auditd.daemon): after a read of fewer than `trickle_below` records, sleep until
about `pause_records` more can be expected at the rate they came, at most this long, so
that they are read together. With it, ``write`` is the least a Python logger does per event
under the same latency bound (bench/latency.py).

Progress as limit.c reports it: COUNTFILE holds a 64-bit count (host order, in an mmap) of
SYSCALL records carrying ``key="KEY"``. SIGTERM/SIGINT stop it; it unregisters before it exits.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from itertools import compress, repeat
from operator import eq
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from auditpy.auditd.startup import pause_records, trickle_below
from auditpy.proto.records import type_name
from auditpy.system.mmsg import NLMSG_HDRLEN, RecordBatchReader
from auditpy.system.netlink import MAX_AUDIT_MESSAGE_LENGTH, AuditSocket

MSG_WAITFORONE = 0x10000
AUDIT_SYSCALL = 1300
SLOTS = 128
#: How long a blocking read waits before it looks at the stop flag (struct timeval).
POLL_TIMEOUT = struct.pack("@ll", 0, 200_000)

stopping = False


def on_signal(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("recv", "mmsg", "mmsg-raw", "write", "plugin"))
    parser.add_argument("--rcvbuf", type=int, default=64 << 10)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--plugin", type=Path)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("key")
    parser.add_argument("count", type=Path)
    args = parser.parse_args(argv)
    if (args.mode in ("write", "plugin")) != (args.log is not None):
        parser.error("--log goes with the write and plugin modes, and only with them")
    if (args.mode == "plugin") != (args.plugin is not None):
        parser.error("--plugin goes with the plugin mode, and only with it")
    mode = args.mode
    marker = f'key="{args.key}"'.encode()
    with open(args.count, "w+b") as f:
        f.truncate(8)
        counter = mmap.mmap(f.fileno(), 8)
    log_fd = -1
    if args.log is not None:
        log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    plugin_fd = -1
    plugin: subprocess.Popen[bytes] | None = None
    if args.plugin is not None:
        with open(args.plugin, "wb") as out:
            plugin = subprocess.Popen(["/bin/cat"], stdin=subprocess.PIPE, stdout=out)
        assert plugin.stdin is not None
        plugin_fd = plugin.stdin.fileno()
        os.set_blocking(plugin_fd, False)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    events, control = AuditSocket(rcvbuf=args.rcvbuf), AuditSocket()
    events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, POLL_TIMEOUT)
    events.register(os.getpid())
    records = matched = 0
    try:
        if mode == "recv":
            records, matched = read_one_by_one(events.sock, marker, counter)
        else:
            records, matched = read_batches(mode, events.fileno(), marker, counter, log_fd,
                                            plugin_fd, args.pause_ms / 1000, args.rcvbuf)
    finally:
        control.unregister()
        events.close()
        if plugin is not None:
            assert plugin.stdin is not None
            plugin.stdin.close()
            plugin.wait(10)
            args.plugin.unlink(missing_ok=True)
    print(f"pyfloor {mode}: {records} records, {matched} with key {args.key}", file=sys.stderr)
    return 0


def read_one_by_one(sock: socket.socket, marker: bytes, counter: mmap.mmap) -> tuple[int, int]:
    buf = bytearray(NLMSG_HDRLEN + MAX_AUDIT_MESSAGE_LENGTH)
    recv_into, find = sock.recv_into, buf.find
    records = matched = 0
    while not stopping:
        try:
            n = recv_into(buf)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            if exc.errno == 105:  # ENOBUFS
                continue
            raise
        records += 1
        if buf[4] | buf[5] << 8 == AUDIT_SYSCALL and find(marker, NLMSG_HDRLEN, n) >= 0:
            matched += 1
            counter[:8] = matched.to_bytes(8, sys.byteorder)
    return records, matched


class Pacer:
    """pyauditd's pause while records trickle in (Daemon._read_batch), as sleeps."""

    def __init__(self, longest: float, rcvbuf: int) -> None:
        self.longest = longest
        self.trickle, self.wait_for = trickle_below(rcvbuf), pause_records(rcvbuf)
        self.last = time.monotonic()

    def after(self, count: int) -> None:
        """After a read of `count` records: sleep if they trickle in (nothing without a
        pause, so that the floors of bench/floors.py read as before)."""
        if not self.longest:
            return
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        if 0 < count < self.trickle:
            time.sleep(min(self.longest, self.wait_for * elapsed / count))


def read_batches(mode: str, fd: int, marker: bytes, counter: mmap.mmap, log_fd: int,
                 plugin_fd: int = -1, pause: float = 0.0,
                 rcvbuf: int = 64 << 10) -> tuple[int, int]:
    reader = RecordBatchReader(fd, SLOTS, MAX_AUDIT_MESSAGE_LENGTH)
    pacer = Pacer(pause, rcvbuf)
    prefixes = {t: f"type={type_name(t)} msg=".encode() for t in range(1000, 2000)}
    records = matched = 0
    #: what the plugin's pipe has not taken yet
    pending = bytearray()
    if mode == "mmsg-raw":
        # The batch reader's own buffers (a benchmark of its internals), read without
        # making a bytes object per record.
        recvmmsg = ctypes.CDLL(None, use_errno=True).recvmmsg
        hdrs = ctypes.addressof(reader._hdrs)
        template, hdr_bytes = reader._template, reader._hdr_bytes
        types = reader._types
        while not stopping:
            hdr_bytes[:] = template
            n = recvmmsg(fd, ctypes.c_void_p(hdrs), SLOTS, MSG_WAITFORONE, None)
            if n <= 0:
                continue
            records += n
            matched += types[:n].tolist().count(AUDIT_SYSCALL)
            counter[:8] = matched.to_bytes(8, sys.byteorder)
            pacer.after(n)
        return records, matched
    while not stopping:
        try:
            types, data, n = reader.receive_columns(MSG_WAITFORONE)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            if exc.errno == 105:  # ENOBUFS
                continue
            raise
        records += n
        # The key's SYSCALL records, as limit.c counts (auditctl's CONFIG_CHANGE has it too).
        matched += b"".join(compress(data, map(eq, types, repeat(AUDIT_SYSCALL)))).count(marker)
        counter[:8] = matched.to_bytes(8, sys.byteorder)
        if log_fd >= 0 and data:
            parts = [b"\n"] * (3 * len(data))
            parts[0::3] = map(prefixes.__getitem__, types)
            parts[1::3] = data
            lines = b"".join(parts)
            os.write(log_fd, lines)
            if plugin_fd >= 0:
                if pending:
                    pending += lines
                else:
                    pending = bytearray(memoryview(lines)[_write_some(plugin_fd, lines):])
                if pending:
                    del pending[:_write_some(plugin_fd, pending)]
        pacer.after(n)
    if plugin_fd >= 0:
        os.set_blocking(plugin_fd, True)
        while pending:
            del pending[:os.write(plugin_fd, pending)]
    return records, matched


def _write_some(fd: int, data: bytes | bytearray) -> int:
    """What a non-blocking write takes of `data` (0 while the pipe is full)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
