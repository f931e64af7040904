"""pyaudisp-remote's I/O shell: the one event loop (system.evloop) that carries out the
delivery core's decisions.

Records come in on stdin (one line per record, or binary dispatcher frames; `input.py`) and
leave as "managed" frames (`auditpy.proto.remote`) to a server's ``tcp_listen_port``; each
record is kept in the queue (`auditpy.system.spool`) until the server acknowledges it.
*What* is sent when, and what a reply, a timeout or a failure means, is decided by the
sans-I/O core (`delivery.Delivery`); this module only does what it says: connect (`link.py`),
write, close, pop or requeue queue records, fsync, run helpers, log, exit; and it reports
back what happened (bytes, EOF, loss, flow control, timers, signals, stdin).  Keeping every
rule out of here is what lets the rules be tested without sockets or sleeps.

Signals are held from the first instruction of `main` and read here from a signalfd
(`system.service.SignalReader`), never by handlers: a SIGHUP during start-up waits instead of
killing the plugin, and a storm of them coalesces instead of overflowing a wake-up
socket and losing the SIGTERM behind it (issue #15).

Helpers (``exec`` actions, init for ``single``/``halt``) are started by
`system.children.spawn_helper` with /dev/null on stdin: the plugin's stdin is its record
stream, which a helper must neither read from nor hold open.

The behaviour follows Debian's audisp-remote 3.0.9 and audisp-remote.conf(5), with these
deliberate differences (the delivery rules are in `delivery.py`):

* records are pipelined, up to `delivery.WINDOW` frames in flight;
* ``mode = forward`` keeps a durable on-disk queue of its own format: nothing read from
  stdin is lost to a network outage, a server restart or a plugin crash, and after a crash
  only the records that were in flight (at most one window) can arrive twice;
* ``transport = tls`` is Python's ssl with certificates (``tls_*`` keys), not the PSK TLS
  of audit 4.2; krb5 is refused;
* ``-c PATH`` selects the configuration file; SIGHUP re-reads it (Debian only reconnects)
  and also resumes a suspended plugin; SIGTERM is honoured from anyone;
* ``warn_once_continue`` always dequeues, as the man page says (the C code dequeues only
  the first time), and port 0 is refused;
* SIGUSR1 writes the state line to stderr and syslog, not to a state file;
* records longer than the 8970-byte frame limit are truncated (and logged), not split;
* stdin that is a regular file is read only as fast as the queue drains, since nobody is
  waiting on it; a pipe is read at once and overflow is handled by `overflow_action`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import ssl
import syslog
import time
from collections.abc import Callable, Coroutine
from typing import Any

from auditpy import structs
from auditpy.audisp_remote.delivery import (
    Close,
    Connect,
    Decision,
    Delivery,
    Exec,
    Exit,
    Log,
    Pop,
    Requeue,
    RunInit,
    Send,
    Sync,
)
from auditpy.audisp_remote.input import INPUT_CHUNK, MAX_INPUT_LINE, InputDecoder, prepare
from auditpy.audisp_remote.link import ConnectError, Link, open_link
from auditpy.audisp_remote.log import LogFunc, RateLimit
from auditpy.audisp_remote.main import main
from auditpy.audisp_remote.signals import HANDLED_SIGNALS
from auditpy.config.errors import ConfigError
from auditpy.config.files import reason
from auditpy.config.remote_conf import (
    ParsedRemoteConf,
    RemoteConfig,
    load_remote_conf,
    tls_context,
)
from auditpy.proto.dispatch import FrameError
from auditpy.proto.remote import MAX_PAYLOAD
from auditpy.system import evloop
from auditpy.system.children import INIT_PATH, ChildHandle, spawn_helper
from auditpy.system.service import Signal, SignalReader
from auditpy.system.spool import DiskQueue, MemoryQueue, QueueError, RecordQueue
from auditpy.system.stdin import StdinReader

#: `main` stays importable from here for the ``pyaudisp-remote`` console script.
__all__ = ["RemotePlugin", "main"]

#: How long a graceful close may take before the connection is aborted.
CLOSE_GRACE = 1.0


class RemotePlugin:
    """The loop: an input task filling the queue, the core deciding, this object doing."""

    def __init__(
        self,
        config_path: str,
        parsed: ParsedRemoteConf,
        log: LogFunc,
        *,
        stdin_fd: int = 0,
    ) -> None:
        self.config_path = config_path
        self.log = log
        self.stdin_fd = stdin_fd
        self.core = Delivery(parsed.config, clock=time.monotonic)
        self.queue: RecordQueue = MemoryQueue()
        self.truncated = 0
        #: The exit status, once an Exit was carried out.
        self.exit_code: int | None = None
        self._tls: ssl.SSLContext | None = None
        self._decoder = InputDecoder()
        self._bad_input = False
        self._truncate_limit = RateLimit(time.monotonic)
        self._link: Link | None = None
        #: Connections being closed gracefully (aborted if the plugin exits meanwhile).
        self._closing: set[Link] = set()
        self._tasks: set[evloop.Task[None]] = set()
        self._todo: collections.deque[Decision] = collections.deque()
        self._applying = False
        self._timer: evloop.TimerHandle | None = None
        self._timer_at: float | None = None
        self._children: list[ChildHandle] = []
        self._loop: evloop.Loop | None = None
        self._space: evloop.Event | None = None
        self._exit: evloop.Future[int] | None = None

    @property
    def config(self) -> RemoteConfig:
        return self.core.config

    @property
    def suspended(self) -> bool:
        return self.core.suspended

    def state_line(self) -> str:
        return self.core.state_line()

    def act(self, setting: str, message: str) -> bool:
        """Run the action configured for `setting` now, as the plugin would; True if the
        record concerned may be dequeued."""
        dequeue, decisions = self.core.act(setting, message)
        self._apply(decisions)
        return dequeue

    # ---- carrying out decisions

    def _feed(self, event: Callable[..., list[Decision]], *args: object) -> None:
        """Hand an event to the core and carry out what it decides."""
        try:
            decisions = event(*args)
        except Exception as exc:
            self._internal_error(exc)
            return
        self._apply(decisions)

    def _apply(self, decisions: list[Decision]) -> None:
        """Carry out decisions in the order the core made them.  Doing one may report an
        event (a write that blocked, a queue that failed); the decisions that follow from it
        are queued behind, never carried out in the middle of another."""
        self._todo.extend(decisions)
        if self._applying:
            return
        self._applying = True
        try:
            while self._todo:
                self._carry_out(self._todo.popleft())
        except Exception as exc:
            self._todo.clear()
            self._internal_error(exc)
        finally:
            self._applying = False
        self._rearm()

    def _carry_out(self, decision: Decision) -> None:
        core = self.core
        if isinstance(decision, Send):
            link = self._link
            assert link is not None, "Send without a connection"
            link.write(decision.data)
            self._todo.extend(core.written(link.paused))
        elif isinstance(decision, Pop):
            try:
                self.queue.pop_front(decision.count)
            except QueueError as exc:
                self._todo.extend(core.queue_error(str(exc)))
            if self._space is not None:
                self._space.set()
        elif isinstance(decision, Log):
            self.log(decision.priority, decision.message)
        elif isinstance(decision, Sync):
            try:
                self.queue.sync()
            except QueueError as exc:
                self._todo.extend(core.queue_error(str(exc)))
        elif isinstance(decision, Connect):
            self._spawn_task(self._connect(), "connect")
        elif isinstance(decision, Close):
            link, self._link = self._link, None
            if link is not None:
                if decision.abort:
                    link.abort()
                    # (the core does not wait for an aborted connection)
                else:
                    self._spawn_task(self._close(link), "close")
        elif isinstance(decision, Requeue):
            self._requeue(decision.count)
        elif isinstance(decision, Exec):
            self._run_helper(decision.path, decision.argument)
        elif isinstance(decision, RunInit):
            self._run_helper(INIT_PATH, decision.level)
        elif isinstance(decision, Exit):
            self._set_exit(decision.code)

    def _set_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(self.exit_code)

    def _internal_error(self, exc: BaseException) -> None:
        """A bug, not a condition the core knows: stop rather than run in a state nobody
        reasoned about."""
        self.log(syslog.LOG_ERR, f"internal error: {exc!r}; exiting")
        self._set_exit(1)

    def _rearm(self) -> None:
        """Keep one timer, set to the core's next deadline."""
        when = self.core.deadline()
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is None or self._loop is None or self.exit_code is not None:
            return
        self._timer = self._loop.call_later(max(when - time.monotonic(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._feed(self.core.tick)

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = evloop.running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: evloop.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._feed(self.core.terminate,
                       f"internal error in the {task.get_name()} task: {exc!r}", 1)

    # ---- the connection

    async def _connect(self) -> None:
        try:
            link = await open_link(self.config, self._tls, self)
        except ConnectError as exc:
            self._feed(self.core.connect_failed, str(exc))
            return
        if self.exit_code is not None:
            link.abort()
            return
        self._link = link
        self._feed(self.core.connected)
        link.release()

    async def _close(self, link: Link) -> None:
        self._closing.add(link)
        try:
            await link.close(CLOSE_GRACE)
        finally:
            self._closing.discard(link)
        self._feed(self.core.closed)

    def link_data(self, link: Link, data: bytes) -> None:
        if link is self._link:
            self._feed(self.core.data_received, data)

    def link_eof(self, link: Link) -> None:
        if link is self._link:
            self._feed(self.core.peer_closed)

    def link_lost(self, link: Link, error: str | None) -> None:
        if link is self._link:
            self._feed(self.core.connection_lost, error)

    def link_writable(self, link: Link) -> None:
        if link is self._link:
            self._feed(self.core.writable)

    # ---- helpers

    def _run_helper(self, path: str, argument: str) -> None:
        try:
            child = spawn_helper(path, [argument])
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"cannot run {path}: {reason(exc)}")
            return
        self._children.append(child)

        def reaped(handle: ChildHandle) -> None:
            with contextlib.suppress(ValueError):
                self._children.remove(handle)

        child.attach(self._loop or evloop.running_loop(), reaped)

    # ---- signals

    def _on_signal(self, sig: Signal) -> None:
        signum = sig.signum
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._feed(self.core.terminate, f"{signal.Signals(signum).name}: exiting")
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum == signal.SIGUSR1:
            self.log(syslog.LOG_INFO, self.core.state_line())
        elif signum == signal.SIGUSR2:
            self._feed(self.core.resume)

    def _reload(self) -> None:
        try:
            parsed = load_remote_conf(self.config_path)
            tls = tls_context(parsed.config) if parsed.config.transport == "tls" else None
        except ConfigError as exc:
            for problem in exc.errors:
                self.log(syslog.LOG_ERR, str(problem))
            self.log(syslog.LOG_ERR, "SIGHUP: configuration refused; keeping the running one")
            return
        except (OSError, ValueError) as exc:
            self.log(syslog.LOG_ERR, f"SIGHUP: cannot load TLS files ({reason(exc)}); "
                     "keeping the running configuration")
            return
        new = parsed.config
        old = self.config
        fixed = {key: getattr(old, key) for key in ("mode", "queue_file", "format")}
        for key, value in fixed.items():
            if getattr(new, key) != value:
                self.log(syslog.LOG_WARNING,
                         f"SIGHUP: {key} changes only at restart; keeping {value}")
        self._tls = tls
        for problem in parsed.warnings:
            self.log(syslog.LOG_WARNING, str(problem))
        self._feed(self.core.reload, structs.replace(new, **fixed))

    # ---- the queue

    def _open_queue(self) -> None:
        if self.config.mode != "forward":
            return
        path = self.config.queue_file
        queue: DiskQueue | None
        try:
            queue = DiskQueue(path, self.log)
        except QueueError as exc:
            self.act("queue_error_action", f"{exc}")
            if self.exit_code is not None:
                return
            queue = self._fresh_queue(path)
            if queue is None:
                self.log(syslog.LOG_ERR, "continuing with an in-memory queue: records are "
                         "not kept across a restart")
                return
        self.queue = queue
        if queue.recovered:
            self.log(syslog.LOG_NOTICE, f"{queue.recovered} records from {path} will be "
                     "sent first")

    def _fresh_queue(self, path: str) -> DiskQueue | None:
        """After queue_error_action chose to go on: move an unreadable file aside (never
        delete what may be somebody's records) and start an empty one."""
        if os.path.isfile(path) and not os.path.islink(path):
            aside = f"{path}.bad-{int(time.time())}"
            try:
                os.rename(path, aside)
                self.log(syslog.LOG_WARNING, f"moved {path} to {aside}")
            except OSError:
                return None
        try:
            return DiskQueue(path, self.log)
        except QueueError as exc:
            self.log(syslog.LOG_ERR, str(exc))
            return None

    def _requeue(self, count: int) -> None:
        queue = self.queue
        try:
            queue.append_many([queue.get(i) for i in range(count)])
            queue.sync()
            queue.pop_front(count)
        except QueueError as exc:
            self._todo.extend(self.core.queue_error(str(exc)))

    def _enqueue(self, records: list[bytes]) -> None:
        accepted, truncated = prepare(records)
        if truncated:
            self.truncated += truncated
            if self._truncate_limit.allow("truncate"):
                self.log(syslog.LOG_WARNING,
                         f"a record longer than {MAX_PAYLOAD} bytes was truncated")
        if not accepted:
            return
        room = max(self.config.queue_depth - len(self.queue), 0)
        if len(accepted) > room:
            self._feed(self.core.overflow, len(accepted) - room)
            accepted = accepted[:room]
        if not accepted:
            return
        try:
            self.queue.append_many(accepted)
        except QueueError as exc:
            self._feed(self.core.queue_error, f"{exc}; {len(accepted)} records lost",
                       len(accepted))
            return
        self._feed(self.core.records_queued, accepted)

    # ---- input

    async def _read_input(self) -> None:
        reader = StdinReader(evloop.running_loop(), self.stdin_fd, INPUT_CHUNK)
        #: A regular file is read only as fast as the queue drains: records beyond the
        #: queue's room wait here instead of overflowing.
        backlog: collections.deque[bytes] = collections.deque()
        try:
            while self.exit_code is None:
                if not reader.pollable and not await self._feed_backlog(backlog):
                    break
                try:
                    data = await reader.read()
                except OSError as exc:
                    self.log(syslog.LOG_ERR, f"cannot read stdin: {reason(exc)}")
                    break
                if not data:
                    break
                try:
                    records = self._decoder.feed(data)
                except FrameError as exc:
                    self.log(syslog.LOG_ERR, f"stdin: {exc}; reading no further input")
                    self._bad_input = True
                    break
                if reader.pollable:
                    self._enqueue(records)
                else:
                    backlog.extend(records)
                    await evloop.sleep(0)
        finally:
            reader.close()
        records, cut = self._decoder.finish()
        backlog.extend(records)
        if not await self._feed_backlog(backlog):
            return
        if cut:
            self.log(syslog.LOG_WARNING, f"stdin ended inside a binary frame ({cut} bytes)")
        if self._decoder.cut_lines:
            self.log(syslog.LOG_WARNING, f"{self._decoder.cut_lines} input lines longer than "
                     f"{MAX_INPUT_LINE} bytes were cut")
        self._feed(self.core.input_ended, self._bad_input)

    async def _feed_backlog(self, backlog: collections.deque[bytes]) -> bool:
        """Move records into the queue as room appears; False if we are exiting."""
        space = self._space
        assert space is not None
        while backlog and self.exit_code is None:
            room = self.config.queue_depth - len(self.queue)
            if room <= 0:
                space.clear()
                await space.wait()
                continue
            self._enqueue([backlog.popleft() for _ in range(min(room, len(backlog)))])
        return self.exit_code is None

    # ---- running

    async def run(self) -> int:
        loop = evloop.running_loop()
        self._loop = loop
        self._space = evloop.Event()
        self._exit = loop.create_future()
        signals = SignalReader(loop, HANDLED_SIGNALS, self._on_signal)
        try:
            return await self._run()
        finally:
            signals.close()

    async def _run(self) -> int:
        if self.config.transport == "tls":
            try:
                self._tls = tls_context(self.config)
            except (OSError, ValueError) as exc:
                self.log(syslog.LOG_ERR, f"cannot load the TLS certificates: {reason(exc)}")
                return 1
        self._open_queue()
        if self.exit_code is not None:
            return self.exit_code
        queue = self.queue
        self._apply(self.core.use_queue([queue.get(i) for i in range(len(queue))],
                                        durable=queue.durable))
        self.log(syslog.LOG_INFO, f"started: server {self.config.peer} "
                 f"({self.config.transport}, {self.config.format}, {self.config.mode}), "
                 f"queue_size {len(queue)}")
        assert self._exit is not None
        self._spawn_task(self._read_input(), "input")
        self._feed(self.core.start)
        try:
            code = await self._exit
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await evloop.gather(*tasks, return_exceptions=True)
            if self._timer is not None:
                self._timer.cancel()
            for link in (self._link, *self._closing):
                if link is not None:
                    link.abort()
            left = len(self.queue)
            self.queue.close()
            for child in self._children:
                child.close()
        if left and self.queue.durable:
            self.log(syslog.LOG_INFO, f"{left} records kept in {self.config.queue_file}")
        elif left:
            self.log(syslog.LOG_WARNING, f"{left} queued records were discarded at exit")
        return code
