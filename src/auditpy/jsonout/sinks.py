"""Where JSON lines go: a rotated file, stdout (or a pipe), or a UNIX socket.

Each sink takes whole batches of lines (one write per batch) and counts what it could not
deliver; a failing sink never raises into the caller and never loses lines silently: the
count is in the state report and problems are logged (each kind at most once a minute).

* `FileSink`: appends; created with the configured mode (0600 by default) and group;
  rotated when the next batch would take it past ``size`` (``path`` -> ``path.1`` ... up to
  ``generations``, the oldest removed); after a write error it is reopened on a later batch.
* `StreamSink`: a file descriptor (stdout); blocking writes, so a slow reader slows the
  writer down instead of losing lines.
* `SocketSink`: connects to a listening UNIX socket (stream, or datagram as rsyslog's
  imuxsock offers), one datagram per line for the latter; non-blocking, with up to
  ``BACKLOG_BYTES`` held while the peer is slow or away, and reconnection with back-off.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Callable

from auditpy.structs import dataclass

__all__ = ["FileSink", "Sink", "SinkStats", "SocketSink", "StreamSink", "open_sink"]

log = logging.getLogger("auditpy.jsonout")

#: A UNIX socket peer that is away may cost this much memory before lines are dropped.
BACKLOG_BYTES = 8 << 20
RETRY_AFTER = 1.0
REPORT_EVERY = 60.0


@dataclass
class SinkStats:
    lines: int = 0
    bytes: int = 0
    dropped: int = 0
    errors: int = 0
    rotations: int = 0


class Sink:
    """A destination for JSON lines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = SinkStats()
        self.clock = clock
        self._reported: dict[str, float] = {}

    def describe(self) -> str:
        raise NotImplementedError

    def write(self, lines: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Deliver what can be delivered now and let go of the destination."""

    def pending(self) -> int:
        """Bytes held back (a socket peer that is slow)."""
        return 0

    def _problem(self, kind: str, message: str) -> None:
        now = self.clock()
        last = self._reported.get(kind)
        if last is None or now - last >= REPORT_EVERY:
            self._reported[kind] = now
            log.warning("%s: %s (%d lines not written so far)", self.describe(), message,
                        self.stats.dropped)


class FileSink(Sink):
    def __init__(
        self,
        path: str,
        *,
        size: int = 10 << 20,
        generations: int = 5,
        mode: int = 0o600,
        group: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock)
        self.path = path
        self.size = size
        self.generations = generations
        self.mode = mode
        self.group = group
        self.fd: int | None = None
        self.offset = 0
        self._retry_at = 0.0

    def describe(self) -> str:
        return self.path

    def _open(self) -> bool:
        if self.fd is not None:
            return True
        if self.clock() < self._retry_at:
            return False
        try:
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                self.mode,
            )
        except OSError as exc:
            self._retry_at = self.clock() + RETRY_AFTER
            self.stats.errors += 1
            self._problem("open", f"cannot open: {exc.strerror or exc}")
            return False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if stat.S_IMODE(info.st_mode) != self.mode:
                os.fchmod(fd, self.mode)
            if self.group is not None and info.st_gid != self.group:
                os.fchown(fd, -1, self.group)
        except OSError as exc:
            os.close(fd)
            self._retry_at = self.clock() + RETRY_AFTER
            self.stats.errors += 1
            self._problem("open", f"cannot use: {exc.strerror or exc}")
            return False
        self.fd = fd
        self.offset = info.st_size
        return True

    def _rotate(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            if self.generations <= 0:
                os.unlink(self.path)
            else:
                for n in range(self.generations - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    if os.path.lexists(older):
                        os.replace(older, f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
        except OSError as exc:
            self.stats.errors += 1
            self._problem("rotate", f"cannot rotate: {exc.strerror or exc}")
        self.stats.rotations += 1

    def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"".join(lines)
        if not self._open():
            self.stats.dropped += len(lines)
            return
        if self.size and self.offset and self.offset + len(data) > self.size:
            self._rotate()
            if not self._open():
                self.stats.dropped += len(lines)
                return
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.offset += written
        except OSError as exc:
            # Lines wholly written count as written; the cut one and the rest are lost.
            done = len(data) - len(view)
            whole = data.count(b"\n", 0, done)
            self.stats.lines += whole
            self.stats.bytes += done
            self.stats.dropped += len(lines) - whole
            self.stats.errors += 1
            self._problem("write", f"write failed: {exc.strerror or exc}")
            os.close(self.fd)
            self.fd = None
            self._retry_at = self.clock() + RETRY_AFTER
            return
        self.stats.lines += len(lines)
        self.stats.bytes += len(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StreamSink(Sink):
    def __init__(self, fd: int = 1, name: str = "stdout") -> None:
        super().__init__()
        self.fd: int | None = fd
        self.name = name

    def describe(self) -> str:
        return self.name

    def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self.fd is None:
            self.stats.dropped += len(lines)
            return
        data = b"".join(lines)
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    # A non-blocking descriptor (inherited): wait until it takes more.
                    select.select([], [self.fd], [], 1.0)
                    continue
                view = view[written:]
        except OSError as exc:
            done = len(data) - len(view)
            whole = data.count(b"\n", 0, done)
            self.stats.lines += whole
            self.stats.dropped += len(lines) - whole
            self.stats.errors += 1
            self._problem("write", f"write failed: {exc.strerror or exc}; output stopped")
            self.fd = None
            return
        self.stats.lines += len(lines)
        self.stats.bytes += len(data)


class SocketSink(Sink):
    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.path = path
        self.sock: socket.socket | None = None
        self.datagram = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._partial = memoryview(b"")
        self._retry_at = 0.0
        self._backoff = RETRY_AFTER

    def describe(self) -> str:
        return f"unix:{self.path}"

    def pending(self) -> int:
        return self._queued + len(self._partial)

    def _connect(self) -> bool:
        if self.sock is not None:
            return True
        if self.clock() < self._retry_at:
            return False
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE:
                    continue
                self._retry_at = self.clock() + self._backoff
                self._backoff = min(self._backoff * 2, 30.0)
                self.stats.errors += 1
                self._problem("connect", f"cannot connect: {exc.strerror or exc}")
                return False
            sock.setblocking(False)
            self.sock = sock
            self.datagram = kind == socket.SOCK_DGRAM
            self._backoff = RETRY_AFTER
            if self.datagram:
                self._partial = memoryview(b"")  # a datagram peer takes only whole lines
            log.info("%s: connected (%s)", self.describe(),
                     "datagram" if self.datagram else "stream")
            return True
        return False

    def _broken(self, exc: OSError) -> None:
        self.stats.errors += 1
        self._problem("send", f"send failed: {exc.strerror or exc}; reconnecting")
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._retry_at = self.clock() + self._backoff

    def write(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._queued + len(line) > BACKLOG_BYTES:
                self.stats.dropped += 1
                continue
            self._queue.append(line)
            self._queued += len(line)
        self.pump()
        if self._queue and self.sock is not None:
            self._problem("slow", "the peer is not reading; lines are held")

    def pump(self) -> None:
        """Send what the socket takes now."""
        if not self._queue and not self._partial:
            return
        if not self._connect():
            return
        assert self.sock is not None
        sock = self.sock
        try:
            if self.datagram:
                while self._queue:
                    line = self._queue[0]
                    try:
                        sock.send(line)
                    except OSError as exc:
                        if exc.errno != errno.EMSGSIZE:
                            raise
                        self.stats.dropped += 1  # larger than the peer takes; never will
                        self._problem("size", "a line is larger than a datagram; dropped")
                    else:
                        self.stats.lines += 1
                        self.stats.bytes += len(line)
                    self._queue.popleft()
                    self._queued -= len(line)
                return
            while self._partial or self._queue:
                if not self._partial:
                    batch = []
                    size = 0
                    while self._queue and size < 65536:
                        line = self._queue.popleft()
                        self._queued -= len(line)
                        batch.append(line)
                        size += len(line)
                    self._partial = memoryview(b"".join(batch))
                sent = sock.send(self._partial)
                done = self._partial[:sent]
                self.stats.lines += bytes(done).count(b"\n")
                self.stats.bytes += sent
                self._partial = self._partial[sent:]
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(exc)

    def close(self) -> None:
        self.pump()
        self.stats.dropped += len(self._queue) + (1 if self._partial else 0)
        self._queue.clear()
        self._queued = 0
        self._partial = memoryview(b"")
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def open_sink(output: str, *, size: int, generations: int, mode: int, group: int | None
              ) -> Sink:
    """The sink for a configured ``output`` value."""
    if output == "-":
        return StreamSink(1, "stdout")
    if output.startswith("unix:"):
        return SocketSink(output[5:])
    return FileSink(output, size=size, generations=generations, mode=mode, group=group)
