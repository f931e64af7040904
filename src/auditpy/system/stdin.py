"""A plugin's stdin, read in chunks from its event loop.

Each plugin program (pyaudisp-remote, pyaudisp-nats) reads the records its dispatcher sends
on stdin. stdin stays blocking, since its flags are shared with whoever else holds it, and
the loop's readiness can be stale (its callback may run after we already read), so a read
is made only after a zero-timeout poll says it will not block. A regular file (records
replayed from disk) cannot be polled: it is always readable, and the caller reads it only as
fast as its queue drains (`pollable` tells it so), so records wait in the file rather than
overflow the queue.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat

from auditpy.system import evloop


class StdinReader:
    """Chunks of a file descriptor for the loop that owns it; `close` when done."""

    def __init__(self, loop: evloop.Loop, fd: int, chunk: int) -> None:
        self._loop = loop
        self.fd = fd
        self._chunk = chunk
        self._readable = evloop.Event()
        self._poller = select.poll()
        try:
            self.pollable = not stat.S_ISREG(os.fstat(fd).st_mode)
            if self.pollable:
                loop.add_reader(fd, self._readable.set)
                self._poller.register(fd, select.POLLIN)
        except (OSError, ValueError):
            # e.g. /dev/null or a file that epoll refuses: read directly
            self.pollable = False

    async def read(self) -> bytes:
        """The next chunk, b"" at the end of input; a read error raises OSError."""
        while True:
            if self.pollable:
                await self._readable.wait()
                self._readable.clear()
                if not self._poller.poll(0):
                    continue
            try:
                return os.read(self.fd, self._chunk)
            except BlockingIOError:
                continue

    def close(self) -> None:
        if self.pollable:
            self.pollable = False
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self.fd)
