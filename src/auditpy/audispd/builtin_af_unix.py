"""The ``builtin_af_unix`` plugin: records on a listening Unix stream socket, in-process.

Arguments (any order): an octal mode and a socket path (defaults 0640 and
/var/run/audispd_events), and optionally ``string`` or ``binary`` to choose the output
format (otherwise the plugin file's ``format``).

Unlike 2.x's builtin, which served one client with blocking writes (so a client that
stopped reading stalled the whole dispatcher), this one serves any number of clients, each
with its own queue of at most ``q_depth`` records drained by non-blocking writes.  A client
whose queue overflows is disconnected rather than waited for; the others are unaffected.

Counters: a record is "delivered" when at least one client took it into its queue and
"dropped" when no client was connected; records still queued for a client that is
disconnected for being too slow are counted as dropped too.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket
import stat

from auditpy.audispd.runner import PluginRunner, Record, RunnerContext, State
from auditpy.config.plugins import PluginConfig, parse_af_unix_args

log = logging.getLogger("auditpy.audispd")

LISTEN_BACKLOG = 5


class _Client:
    __slots__ = ("number", "out", "queue", "sock", "writing")

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.queue: collections.deque[bytes] = collections.deque()
        #: unsent rest of queue[0]
        self.out: memoryview | None = None
        #: waiting for the socket to take more (a writer is registered)
        self.writing = False


class AfUnixPlugin(PluginRunner):
    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        super().__init__(config, ctx)
        self.listener: socket.socket | None = None
        self.clients: dict[int, _Client] = {}
        self.socket_path = ""
        self.format = config.format
        #: (st_dev, st_ino) of the socket we created, so stop never unlinks a stranger's file
        self._bound: tuple[int, int] | None = None
        self.clients_total = 0
        self.clients_dropped = 0

    @property
    def depth(self) -> int:
        return max((len(c.queue) for c in self.clients.values()), default=0)

    def describe(self) -> str:
        return " ".join(["builtin af_unix", *self.config.args])

    def state_lines(self) -> list[tuple[str, object]]:
        return [
            *super().state_lines(),
            ("socket", self.socket_path),
            ("clients connected", len(self.clients)),
            ("clients accepted", self.clients_total),
            ("clients dropped for not reading", self.clients_dropped),
        ]

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.ctx.shutting_down or self.listener is not None:
            return
        try:
            args = parse_af_unix_args(self.config.args)
            self.format = args.format or self.config.format
            self.socket_path = args.path
            self.listener = self._listen(args.path, args.mode)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.error("plugin %s not started: %s: %s", self.name, self.socket_path, reason)
            self.state = State.FAILED
            return
        self.ctx.loop.add_reader(self.listener.fileno(), self._accept)
        self.state = State.RUNNING
        log.info("plugin %s started: %s (%s)", self.name, self.describe(), self.format)

    def _listen(self, path: str, mode: int) -> socket.socket:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(info.st_mode):
                raise ValueError("exists and is not a socket; not removing it")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Created with its final mode (the umask is ours alone: one thread), so there is
            # no moment in which the umask's wider permissions let someone connect.
            old_umask = os.umask(0o777 & ~mode)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, mode)
            info = os.lstat(path)
            self._bound = (info.st_dev, info.st_ino)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        return sock

    def _unlink(self) -> None:
        bound, self._bound = self._bound, None
        if bound is None:
            return
        with contextlib.suppress(OSError):
            info = os.lstat(self.socket_path)
            if (info.st_dev, info.st_ino) == bound:
                os.unlink(self.socket_path)

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = 0.0, keep: bool = False
    ) -> list[Record]:
        self.state = State.STOPPED
        for client in list(self.clients.values()):
            self._drop_client(client, None)
        if self.listener is not None:
            self.ctx.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        self._unlink()
        log.info(
            "plugin %s stopped; %d records delivered, %d dropped",
            self.name,
            self.delivered,
            self.dropped,
        )
        return []

    # -- clients --------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self.listener
        while listener is not None:
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("plugin %s cannot accept a client: %s", self.name, exc.strerror)
                return
            sock.setblocking(False)
            self.clients_total += 1
            client = _Client(sock, self.clients_total)
            self.clients[sock.fileno()] = client
            # Clients send nothing; readability means they went away (or misbehave).
            self.ctx.loop.add_reader(sock.fileno(), self._client_readable, client)

    def _client_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client(client, None)

    def _drop_client(self, client: _Client, why: str | None) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is None:
            return
        loop = self.ctx.loop
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        client.sock.close()
        lost = len(client.queue)
        self.dropped += lost
        client.queue.clear()
        if why is not None:
            self.clients_dropped += 1
            log.warning(
                "plugin %s: client %d %s; disconnected it (%d records discarded)",
                self.name,
                client.number,
                why,
                lost,
            )

    # -- records --------------------------------------------------------------------------

    def offer(self, record: Record) -> bool:
        if self.state is not State.RUNNING or not self.clients:
            self.dropped += 1
            return True
        data = record.encode(self.format)
        limit = self.ctx.q_depth
        for fd, client in list(self.clients.items()):
            if len(client.queue) >= limit:
                if not client.writing:
                    self._flush(client)  # it is slow only if its socket is full too
                    if self.clients.get(fd) is not client:
                        continue  # the flush found it gone
                if len(client.queue) >= limit:
                    self._drop_client(client, f"did not read ({limit} records waiting)")
                    continue
            client.queue.append(data)
        if self.clients:
            self.delivered += 1
            self.max_depth = max(self.max_depth, self.depth)
        else:
            self.dropped += 1
        return True

    def flush(self) -> None:
        for client in list(self.clients.values()):
            if client.queue and not client.writing:
                self._flush(client)

    def _flush(self, client: _Client) -> None:
        fd = client.sock.fileno()
        queue = client.queue
        while queue:
            out = client.out if client.out is not None else memoryview(queue[0])
            try:
                sent = client.sock.send(out)
            except BlockingIOError:
                client.out = out
                break
            except OSError:
                client.out = None
                self._drop_client(client, None)
                return
            if sent < len(out):
                client.out = out[sent:]
                continue
            client.out = None
            queue.popleft()
        if queue:
            if not client.writing:
                self.ctx.loop.add_writer(fd, self._flush, client)
                client.writing = True
        elif client.writing:
            self.ctx.loop.remove_writer(fd)
            client.writing = False
