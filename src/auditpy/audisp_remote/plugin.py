"""pyaudisp-remote: the remote-logging plugin, sending records to a remote auditd.

Records come in on stdin (one line per record, or binary dispatcher frames) and leave as
"managed" frames (`auditpy.remote_protocol`) to a server's ``tcp_listen_port``; each frame
is kept until the server acknowledges it.  The behaviour follows Debian's audisp-remote
3.0.9 and audisp-remote.conf(5), with these deliberate differences:

* records are pipelined: up to `WINDOW` frames are in flight, acknowledged in order,
  instead of one synchronous round trip per record; the retry rules (first retry at once,
  then `network_retry_time` between tries, `network_failure_action` after
  `max_tries_per_record` tries or `max_time_per_record` seconds) apply to the oldest
  unacknowledged record;
* ``mode = forward`` keeps a durable on-disk queue of its own format (see `DiskQueue`):
  nothing read from stdin is lost to a network outage, a server restart or a plugin crash,
  and after a crash only the records that were in flight (at most one window) can arrive
  twice;
* ``transport = tls`` is Python's ssl with certificates (``tls_*`` keys), not the PSK TLS
  of audit 4.2; krb5 is refused;
* ``-c PATH`` selects the configuration file; SIGHUP re-reads it (Debian only reconnects)
  and also resumes a suspended plugin; SIGTERM is honoured from anyone;
* ``warn_once_continue`` always dequeues, as the man page says (the C code dequeues only
  the first time), and port 0 is refused;
* after an error reply (DISKFULL...) no more is sent on that connection, but the replies
  to frames already in flight are still read, so records the server did store are not
  sent again; a refused record that is kept while later ones were stored is retried after
  them (the only case where order changes);
* SIGUSR1 writes the state line to stderr and syslog, not to a state file;
* records longer than the 8970-byte frame limit are truncated (and logged), not split;
* stdin that is a regular file is read only as fast as the queue drains, since nobody is
  waiting on it; a pipe is read at once and overflow is handled by `overflow_action`.

Exit status: 0 after EOF on stdin once everything was delivered (or, in forward mode,
kept on disk for the next start), and after SIGTERM; 1 for a configuration error, the
``stop`` action, a queue file that cannot be used, unreadable input, or immediate-mode
records abandoned at exit; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import errno
import os
import select
import signal
import socket
import ssl
import stat
import sys
import syslog
import time
from collections.abc import Callable, Sequence
from typing import Final

from auditpy.config.errors import ConfigError
from auditpy.config.files import reason
from auditpy.config.remote_conf import (
    DEFAULT_CONFIG,
    Action,
    ParsedRemoteConf,
    RemoteConfig,
    load_remote_conf,
    tls_context,
)
from auditpy.proto.dispatch import FrameError, unpack_frames
from auditpy.proto.dispatch import string_line as dispatcher_string_line
from auditpy.proto.remote import (
    MAX_PAYLOAD,
    MAX_SEQ,
    TYPE_ACK,
    TYPE_DISKERROR,
    TYPE_DISKFULL,
    TYPE_DISKLOW,
    TYPE_ENDING,
    TYPE_HEARTBEAT,
    TYPE_MESSAGE,
    Frame,
    FrameReader,
    ProtocolError,
    describe_payload,
    is_error_reply,
    is_reply,
    is_warning_reply,
    pack_frame,
    type_name,
)
from auditpy.system.children import INIT_PATH, ChildHandle, spawn_helper
from auditpy.system.spool import DiskQueue, MemoryQueue, QueueError, RecordQueue

PROG: Final = "pyaudisp-remote"

#: Frames in flight at once.  Large enough to keep a loopback or LAN link busy while the
#: server writes each record; small, because after a crash or a lost connection these are
#: the records that may reach the server twice.
WINDOW: Final = 128
#: How much of stdin is taken per read.
INPUT_CHUNK: Final = 1 << 16
#: A line this long without a newline cannot be a record; it is cut so memory stays bounded.
MAX_INPUT_LINE: Final = 1 << 16
#: Forward mode: how soon records read while no connection is up are fsynced.
SYNC_DELAY: Final = 0.05


# --------------------------------------------------------------------------------------
# Logging


class Log:
    """Every message goes to stderr (the dispatcher's log) and to syslog, like the C
    plugin's messages; a failing sink is ignored because logging must not stop delivery."""

    def __init__(self, *, use_syslog: bool = True) -> None:
        self._use_syslog = use_syslog
        if use_syslog:
            syslog.openlog(PROG, syslog.LOG_PID, syslog.LOG_DAEMON)

    def __call__(self, priority: int, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{PROG}: {message}\n")
            sys.stderr.flush()
        if self._use_syslog:
            with contextlib.suppress(OSError, ValueError):
                syslog.syslog(priority, message)


# --------------------------------------------------------------------------------------
# Input


def is_eoe(record: bytes) -> bool:
    """EOE records are not forwarded (as in the C plugin): they carry nothing."""
    if record.startswith(b"node="):
        space = record.find(b" ")
        if space < 0:
            return False
        record = record[space + 1 :]
    return record == b"type=EOE" or record.startswith(b"type=EOE ")


class InputDecoder:
    """Turns stdin bytes into records (no trailing newline).

    The format is detected from the first byte as audisp-af_unix does: 0 or 1 is the
    version field of a binary `audit_dispatcher_header`, anything else starts a text line.
    """

    def __init__(self) -> None:
        self.binary: bool | None = None
        self._buffer = bytearray()
        self._discarding = False
        self.cut_lines = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Raises wire.FrameError if binary input is corrupt (it cannot resynchronise)."""
        if not data:
            return []
        if self.binary is None:
            self.binary = data[0] in (0, 1)
        self._buffer += data
        if self.binary:
            return [
                dispatcher_string_line(version, msg_type, payload)[:-1]
                for version, msg_type, payload in unpack_frames(self._buffer)
            ]
        return self._lines()

    def _lines(self) -> list[bytes]:
        buffer = self._buffer
        records = buffer.split(b"\n")
        rest = records.pop()
        if self._discarding and records:
            records.pop(0)
            self._discarding = False
        out = [bytes(record) for record in records]
        if self._discarding:
            rest = bytearray()
        elif len(rest) > MAX_INPUT_LINE:
            out.append(bytes(rest[:MAX_INPUT_LINE]))
            rest = bytearray()
            self._discarding = True
            self.cut_lines += 1
        self._buffer = bytearray(rest)
        return out

    def finish(self) -> tuple[list[bytes], int]:
        """Records left at EOF and how many bytes of a cut binary frame were dropped."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self.binary:
            return [], len(rest)
        if self._discarding or not rest:
            return [], 0
        return [rest], 0


# --------------------------------------------------------------------------------------
# The connection


class _End:
    """Why a connection ended, which decides how soon and whether to reconnect."""

    ERROR = "error"  # network or protocol failure: a failed try for the oldest record
    REFUSED = "refused"  # a fatal reply; its action already ran; pause before retrying
    ENDING = "ending"  # the server is shutting down
    CONTROL = "control"  # reload, suspend, exit: reconnect (or not) at once
    IDLE = "idle"  # the server closed a connection that had nothing outstanding


class _ConnectError(Exception):
    pass


class _Link(asyncio.Protocol):
    """One connection and the frames outstanding on it.

    A Protocol rather than a stream pair: replies are handled inside data_received, the
    moment they arrive, so ACKs that came in just before a reset are never discarded
    along with a buffered stream exception (which would resend, and duplicate, records).
    """

    def __init__(self, plugin: RemotePlugin, peer: str) -> None:
        self.plugin = plugin
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.frames = FrameReader()
        #: (sequence id, time sent, is a heartbeat), oldest first; replies come in order.
        self.pending: collections.deque[tuple[int, float, bool]] = collections.deque()
        #: Records from the queue head that are in flight on this connection.
        self.records = 0
        self.end: str | None = None
        self.reason = ""
        #: Set (to the reason) after an error reply: nothing more is sent, and the
        #: connection closes once the replies to what is in flight are in.
        self.draining = ""
        #: Refused records left at the queue head while draining (not dequeued).
        self.kept = 0
        self.last_activity = time.monotonic()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()

    def close_with(self, end: str, reason: str) -> None:
        if self.end is None:
            self.end = end
            self.reason = reason
        self.plugin._poke()

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.end is None:
            self.transport.write(data)
            self.last_activity = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.end is None:
            self.plugin._on_data(self, data)

    def eof_received(self) -> bool:
        if self.frames.buffered:
            self.close_with(
                _End.ERROR, f"{self.peer} closed the connection in the middle of a frame"
            )
        elif self.pending and self.plugin.config.format == "managed":
            self.close_with(_End.ERROR, f"{self.peer} closed the connection with "
                            f"{len(self.pending)} replies outstanding")
        else:
            self.close_with(_End.IDLE, f"{self.peer} closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.close_with(_End.ERROR, f"connection to {self.peer} lost: {reason(exc)}")
        else:
            self.eof_received()
        self.writable.set()
        self.closed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


# --------------------------------------------------------------------------------------
# The plugin


class RemotePlugin:
    """The whole plugin in one asyncio loop: an input task filling the queue, a sender task
    owning the connection, signal handlers flipping flags and waking the sender."""

    def __init__(
        self,
        config_path: str,
        parsed: ParsedRemoteConf,
        log: Callable[[int, str], None],
        *,
        stdin_fd: int = 0,
    ) -> None:
        self.config_path = config_path
        self.config = parsed.config
        self.log = log
        self.stdin_fd = stdin_fd
        self.queue: RecordQueue = MemoryQueue()
        self._tls: ssl.SSLContext | None = None
        self._decoder = InputDecoder()
        self._link: _Link | None = None
        self._seq = 0
        self._suspended = False
        self._remote_ended = False
        self._exiting = False
        self._exit_code = 0
        self._input_done = False
        self._bad_input = False
        self._warned: set[str] = set()
        self._failures = 0
        self._failing_since = 0.0
        self._attempt_started = 0.0
        #: When the oldest record was first sent (or became the oldest while in flight):
        #: max_time_per_record counts from here, not from when the connection was made.
        self._head_since: float | None = None
        self._last_progress = time.monotonic()
        self._limited: dict[str, float] = {}
        self._overflow_pending = 0
        self._overflow_reported = -1e9
        self._sync_timer: asyncio.TimerHandle | None = None
        self._children: list[ChildHandle] = []
        self.received = 0
        self.sent = 0
        self.acked = 0
        self.dropped = 0
        self.truncated = 0
        self._wake: asyncio.Event
        self._control: asyncio.Event
        self._space: asyncio.Event
        self._exit: asyncio.Future[int]

    # ---- small helpers

    def _limited_log(self, key: str, priority: int, message: str, every: float = 60.0) -> None:
        """Repeated failures (a server down for hours) log once a minute, not per try."""
        now = time.monotonic()
        if now - self._limited.get(key, -every) >= every:
            self._limited[key] = now
            self.log(priority, message)

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_SEQ else 1  # 0 is the ENDING id
        return self._seq

    def _poke(self) -> None:
        self._wake.set()

    def _interrupt(self) -> None:
        self._wake.set()
        self._control.set()

    def _finish(self, code: int, why: str) -> None:
        if self._exiting:
            return
        self._exiting = True
        self._exit_code = code
        self.log(syslog.LOG_INFO if code == 0 else syslog.LOG_ERR, why)
        if not self._exit.done():
            self._exit.set_result(code)
        self._interrupt()

    def state_line(self) -> str:
        link = self._link
        return (
            f"state: server={self.config.peer} mode={self.config.mode} "
            f"queue_size={len(self.queue)} in_flight={link.records if link else 0} "
            f"connected={'yes' if link else 'no'} "
            f"suspended={'yes' if self._suspended else 'no'} "
            f"remote_ended={'yes' if self._remote_ended else 'no'} "
            f"transport_ok={'yes' if link and link.end is None else 'no'} "
            f"received={self.received} sent={self.sent} acked={self.acked} "
            f"dropped={self.dropped}"
        )

    # ---- actions

    def act(self, setting: str, message: str) -> bool:
        """Carry out the configured action; True means the record concerned may be
        dequeued (the C plugin's return value)."""
        action: Action = getattr(self.config, setting)
        kind = action.kind
        if kind == "ignore":
            return True
        if kind == "syslog":
            self.log(syslog.LOG_WARNING, message)
            return True
        if kind == "exec":
            self.log(syslog.LOG_WARNING, f"{message}; running {action.exe}")
            self._run_exec(action.exe or "", message)
            return True
        if kind in ("warn_once", "warn_once_continue"):
            if setting not in self._warned:
                self._warned.add(setting)
                self.log(syslog.LOG_WARNING, f"{message} (further warnings suppressed until "
                         "a record is delivered)")
            return kind == "warn_once_continue"
        if kind == "reconnect":
            self.log(syslog.LOG_NOTICE, f"{message}; will reconnect")
            return False
        if kind == "suspend":
            self.log(syslog.LOG_ALERT, f"{message}; suspending remote logging "
                     "(SIGUSR2 or SIGHUP resumes)")
            self._suspend()
            return False
        if kind in ("single", "halt"):
            level = "1" if kind == "single" else "0"
            self.log(syslog.LOG_ALERT, f"{message}; asking init for runlevel {level}")
            self._run_exec(INIT_PATH, level)
            self._suspend()
            return False
        # stop
        self._finish(1, f"{message}; exiting ({setting} = stop)")
        return False

    def _suspend(self) -> None:
        self._suspended = True
        if self._link is not None:
            self._link.close_with(_End.CONTROL, "suspended")
        self._poke()

    def _run_exec(self, path: str, argument: str) -> None:
        try:
            child = spawn_helper(path, [argument])
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"cannot run {path}: {reason(exc)}")
            return
        self._children.append(child)

        def reaped(handle: ChildHandle) -> None:
            with contextlib.suppress(ValueError):
                self._children.remove(handle)

        child.attach(asyncio.get_running_loop(), reaped)

    # ---- signals

    def _on_sighup(self) -> None:
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
        self.config = dataclasses.replace(new, **fixed)
        self._tls = tls
        for problem in parsed.warnings:
            self.log(syslog.LOG_WARNING, str(problem))
        self._warned.clear()
        self._suspended = False
        self._failures = 0
        if self._link is not None:
            self._link.close_with(_End.CONTROL, "configuration reloaded")
        self.log(syslog.LOG_INFO, f"configuration reloaded; server {self.config.peer}")
        self._interrupt()

    def _on_sigusr2(self) -> None:
        if self._suspended:
            self.log(syslog.LOG_NOTICE, "SIGUSR2: resuming remote logging")
        self._suspended = False
        self._warned.clear()
        self._failures = 0
        self._interrupt()

    # ---- the queue

    def _queue_error(self, message: str) -> None:
        self.act("queue_error_action", message)

    def _open_queue(self) -> None:
        if self.config.mode != "forward":
            return
        path = self.config.queue_file
        queue: DiskQueue | None
        try:
            queue = DiskQueue(path, self.log)
        except QueueError as exc:
            self._queue_error(f"{exc}")
            if self._exiting:
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

    def _after_pop(self) -> None:
        self._space.set()
        if self._input_done and not len(self.queue):
            self._finish_input_done()

    def _drop_head(self, why: str) -> None:
        if not len(self.queue):
            return
        try:
            self.queue.pop_front(1)
        except QueueError as exc:
            self._queue_error(str(exc))
        self.dropped += 1
        self.log(syslog.LOG_WARNING, f"a record was dropped ({why})")
        self._head_moved()
        self._after_pop()

    def _head_moved(self) -> None:
        link = self._link
        self._head_since = time.monotonic() if link is not None and link.records else None

    def _acked_records(self, count: int) -> None:
        try:
            self.queue.pop_front(count)
        except QueueError as exc:
            self._queue_error(str(exc))
        self.acked += count
        self._head_moved()
        self._failures = 0
        self._warned.clear()
        self._last_progress = time.monotonic()
        self._after_pop()

    def _enqueue(self, records: list[bytes]) -> None:
        accepted: list[bytes] = []
        for record in records:
            if not record or is_eoe(record):
                continue
            if len(record) > MAX_PAYLOAD:
                record = record[:MAX_PAYLOAD]
                self.truncated += 1
                self._limited_log("truncate", syslog.LOG_WARNING,
                                  f"a record longer than {MAX_PAYLOAD} bytes was truncated")
            accepted.append(record)
        if not accepted:
            return
        room = max(self.config.queue_depth - len(self.queue), 0)
        if len(accepted) > room:
            self._overflow(len(accepted) - room)
            accepted = accepted[:room]
        if not accepted:
            return
        try:
            self.queue.append_many(accepted)
        except QueueError as exc:
            self.dropped += len(accepted)
            self._queue_error(f"{exc}; {len(accepted)} records lost")
            return
        self.received += len(accepted)
        if self.queue.unsynced and self._sync_timer is None:
            self._sync_timer = asyncio.get_running_loop().call_later(SYNC_DELAY, self._sync)
        self._poke()

    def _sync(self) -> None:
        self._sync_timer = None
        try:
            self.queue.sync()
        except QueueError as exc:
            self._queue_error(str(exc))
        self._poke()

    def _overflow(self, count: int) -> None:
        """Count every loss, but run the action at most once a second: a flood must not
        become a flood of syslog messages (or of exec'd helpers)."""
        self.dropped += count
        self._overflow_pending += count
        now = time.monotonic()
        if now - self._overflow_reported >= 1.0:
            self._overflow_reported = now
            lost, self._overflow_pending = self._overflow_pending, 0
            self.act("overflow_action", f"queue is full ({self.config.queue_depth} records); "
                     f"{lost} records dropped")

    # ---- input

    async def _read_input(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.stdin_fd
        readable = asyncio.Event()
        # The loop's readiness can be stale (its callback may run after we already read),
        # and stdin stays blocking (its flags are shared with whoever else holds it), so
        # every read is preceded by a zero-timeout poll.
        poller = select.poll()
        pollable = True
        try:
            pollable = not stat.S_ISREG(os.fstat(fd).st_mode)
            if pollable:
                loop.add_reader(fd, readable.set)
                poller.register(fd, select.POLLIN)
        except (OSError, ValueError):
            pollable = False  # e.g. /dev/null or a file that epoll refuses: read directly
        #: A regular file is read only as fast as the queue drains: records beyond the
        #: queue's room wait here instead of overflowing.
        backlog: collections.deque[bytes] = collections.deque()
        try:
            while not self._exiting:
                if pollable:
                    await readable.wait()
                    readable.clear()
                    if not poller.poll(0):
                        continue
                elif not await self._feed_backlog(backlog):
                    break
                try:
                    data = os.read(fd, INPUT_CHUNK)
                except BlockingIOError:
                    continue
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
                if pollable:
                    self._enqueue(records)
                else:
                    backlog.extend(records)
                    await asyncio.sleep(0)
        finally:
            if pollable:
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_reader(fd)
        records, cut = self._decoder.finish()
        backlog.extend(records)
        if not await self._feed_backlog(backlog):
            return
        if cut:
            self.log(syslog.LOG_WARNING, f"stdin ended inside a binary frame ({cut} bytes)")
        self._input_done = True
        self._last_progress = time.monotonic()
        if self._decoder.cut_lines:
            self.log(syslog.LOG_WARNING, f"{self._decoder.cut_lines} input lines longer than "
                     f"{MAX_INPUT_LINE} bytes were cut")
        if not len(self.queue) or self._suspended:
            self._finish_input_done()
        else:
            self._poke()
            self._drain_watch()

    async def _feed_backlog(self, backlog: collections.deque[bytes]) -> bool:
        """Move records into the queue as room appears; False if we are exiting."""
        while backlog and not self._exiting:
            room = self.config.queue_depth - len(self.queue)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue
            self._enqueue([backlog.popleft() for _ in range(min(room, len(backlog)))])
        return not self._exiting

    def _drain_limit(self) -> float:
        cfg = self.config
        return float(cfg.max_tries_per_record * cfg.max_time_per_record + cfg.network_retry_time)

    def _drain_watch(self) -> None:
        """After EOF, keep sending only while it makes progress."""
        if self._exiting:
            return
        idle = time.monotonic() - self._last_progress
        if idle >= self._drain_limit():
            self._finish_input_done()
            return
        asyncio.get_running_loop().call_later(
            max(self._drain_limit() - idle, 0.05), self._drain_watch
        )

    def _finish_input_done(self) -> None:
        left = len(self.queue)
        if self._bad_input:
            self._finish(1, f"exiting after bad input; {left} records undelivered")
        elif not left:
            self._finish(0, "end of input; every record was delivered; exiting")
        elif self.queue.durable:
            self._finish(0, f"end of input; {left} records stay in "
                         f"{self.config.queue_file} for the next start")
        else:
            self._finish(1, f"end of input; {left} records could not be delivered")

    # ---- connecting

    async def _connect(self) -> _Link:
        cfg = self.config
        try:
            return await asyncio.wait_for(self._open(cfg), cfg.max_time_per_record)
        except TimeoutError:
            raise _ConnectError(f"timed out after {cfg.max_time_per_record} s") from None
        except ssl.SSLCertVerificationError as exc:
            raise _ConnectError(
                f"TLS certificate verification failed: {exc.verify_message or reason(exc)}"
            ) from None
        except ssl.SSLError as exc:
            raise _ConnectError(f"TLS handshake failed: {reason(exc)}") from None
        except OSError as exc:
            raise _ConnectError(reason(exc)) from None

    async def _open(self, cfg: RemoteConfig) -> _Link:
        loop = asyncio.get_running_loop()
        host = cfg.remote_server or ""
        infos = await loop.getaddrinfo(host, cfg.port, type=socket.SOCK_STREAM)
        last: OSError = OSError(errno.EHOSTUNREACH, f"no usable address for {host}")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                if cfg.local_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"
                    sock.bind((any_address, cfg.local_port))
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            try:
                return await self._start(sock, cfg, host)
            except BaseException:
                sock.close()
                raise
        raise last

    async def _start(self, sock: socket.socket, cfg: RemoteConfig, host: str) -> _Link:
        loop = asyncio.get_running_loop()
        link = _Link(self, cfg.peer)
        if self._tls is not None:
            await loop.create_connection(
                lambda: link,
                sock=sock,
                ssl=self._tls,
                server_hostname=cfg.tls_server_name or host,
                ssl_handshake_timeout=float(cfg.max_time_per_record),
            )
        else:
            await loop.create_connection(lambda: link, sock=sock)
        return link

    # ---- the sender

    async def _pause(self, delay: float) -> None:
        """Sleep between tries; only control events (signals, exit) cut it short, so
        that a steady stream of new records cannot turn retries into a busy loop."""
        if delay <= 0 or self._exiting:
            return
        self._control.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._control.wait(), delay)

    async def _failure(self, reason: str) -> None:
        """A try failed: retry at once the first time, then every network_retry_time;
        after max_tries_per_record tries or max_time_per_record seconds, the action."""
        cfg = self.config
        self._limited_log("failure:" + reason, syslog.LOG_WARNING, reason)
        if not len(self.queue):
            return
        now = time.monotonic()
        if self._failures == 0:
            since = self._head_since
            self._failing_since = self._attempt_started if since is None else since
        self._failures += 1
        if (
            self._failures >= cfg.max_tries_per_record
            or now - self._failing_since >= cfg.max_time_per_record
        ):
            tries = self._failures
            self._failures = 0
            self._head_since = None
            dequeue = self.act(
                "network_failure_action",
                f"cannot deliver a record to {cfg.peer} after {tries} tries: {reason}",
            )
            # forward mode promises durability: an unreachable server never costs a record,
            # it waits on disk whatever the action (the C plugin would drop it here).
            if dequeue and cfg.mode != "forward":
                self._drop_head("network_failure_action")
            await self._pause(cfg.network_retry_time)
        elif self._failures > 1:
            await self._pause(cfg.network_retry_time)

    async def _sender(self) -> None:
        startup = True
        while not self._exiting:
            self._wake.clear()
            if self._suspended:
                self._control.clear()
                await self._control.wait()
                continue
            if not len(self.queue) and not startup:
                await self._wake.wait()
                continue
            self._attempt_started = time.monotonic()
            try:
                link = await self._connect()
            except _ConnectError as exc:
                reason = f"cannot connect to {self.config.peer}: {exc}"
                if startup:
                    startup = False
                    self.act("startup_failure_action", reason)
                await self._failure(reason)
                continue
            startup = False
            self._link = link
            self._remote_ended = False
            self.log(syslog.LOG_INFO, f"connected to {link.peer}")
            try:
                await self._session(link)
            finally:
                self._link = None
                await self._close(link)
            if link.end == _End.ERROR:
                if self.config.format == "ascii":
                    self._finish(1, f"{link.reason} (format = ascii: exiting)")
                    return
                await self._failure(link.reason)
            elif link.end == _End.REFUSED:
                await self._pause(self.config.network_retry_time)
            elif link.end in (_End.ENDING, _End.IDLE):
                self.log(syslog.LOG_INFO, link.reason)

    async def _close(self, link: _Link) -> None:
        transport = link.transport
        if transport is None:
            return
        if link.end in (_End.ERROR, None) or self._exiting:
            transport.abort()
            return
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.closed.wait(), 1.0)
        if not link.closed.is_set():
            transport.abort()

    async def _session(self, link: _Link) -> None:
        cfg = self.config
        while link.end is None and not self._exiting:
            self._wake.clear()
            if self._suspended:
                link.close_with(_End.CONTROL, "suspended")
                break
            if self._fill(link):
                if not link.writable.is_set():
                    try:
                        await asyncio.wait_for(link.writable.wait(), cfg.max_time_per_record)
                    except TimeoutError:
                        link.close_with(_End.ERROR, f"sending to {link.peer} timed out")
                        break
                if cfg.format == "ascii" and link.end is None:
                    count, link.records = link.records, 0
                    self._acked_records(count)
                continue
            timeout = self._deadline(link)
            if timeout is not None and timeout <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _deadline(self, link: _Link) -> float | None:
        """Seconds until something must happen on an idle link; handles what is due."""
        now = time.monotonic()
        cfg = self.config
        if link.pending:
            _, sent_at, heartbeat = link.pending[0]
            left = sent_at + cfg.max_time_per_record - now
            if left <= 0:
                what = "heartbeat" if heartbeat else "record"
                link.close_with(_End.ERROR, f"no reply from {link.peer} for a {what} "
                                f"within {cfg.max_time_per_record} s")
            return left
        if cfg.heartbeat_timeout and cfg.format == "managed":
            left = link.last_activity + cfg.heartbeat_timeout - now
            if left <= 0:
                link.write(pack_frame(TYPE_HEARTBEAT, self._next_seq_for(link, True)))
            return left
        return None

    def _next_seq_for(self, link: _Link, heartbeat: bool) -> int:
        seq = self._next_seq()
        link.pending.append((seq, time.monotonic(), heartbeat))
        return seq

    def _fill(self, link: _Link) -> bool:
        """Write as many queued records as the window allows; True if anything was
        written.  In forward mode records go out only once fsynced."""
        queue = self.queue
        if link.draining:
            return False
        room = WINDOW - len(link.pending)
        if queue.unsynced and queue.sendable - link.records < room:
            self._sync()  # the window has room that only unsynced records could fill
        sendable = queue.sendable
        if link.records >= sendable:
            return False
        if self.config.format == "ascii":
            if link.records:
                return False
            count = min(sendable, WINDOW)
            link.write(b"".join([queue.get(i) + b"\n" for i in range(count)]))
            link.records = count
            self.sent += count
            return True
        if room <= 0:
            return False
        now = time.monotonic()
        if link.records == 0 and self._head_since is None:
            self._head_since = now
        parts = []
        index = link.records
        stop = min(sendable, index + room)
        pending = link.pending
        while index < stop:
            seq = self._next_seq()
            parts.append(pack_frame(TYPE_MESSAGE, seq, queue.get(index)))
            pending.append((seq, now, False))
            index += 1
        link.records = index
        link.write(b"".join(parts))
        self.sent += len(parts)
        return True

    # ---- replies

    def _on_data(self, link: _Link, data: bytes) -> None:
        if self.config.format == "ascii":
            return  # the ascii protocol has no replies; whatever the server says is ignored
        try:
            frames = link.frames.feed(data)
        except ProtocolError as exc:
            self._replies(link, exc.frames)
            message = f"protocol error from {link.peer}: {exc.reason}; closing the connection"
            self.log(syslog.LOG_ERR, message)
            link.close_with(_End.ERROR, message)
            return
        self._replies(link, frames)

    def _replies(self, link: _Link, frames: list[Frame]) -> None:
        acked = 0

        def flush() -> None:
            nonlocal acked
            if acked:
                count, acked = acked, 0
                self._acked_records(count)

        for frame in frames:
            if link.end is not None or self._exiting:
                break
            kind = frame.msg_type
            if kind == TYPE_ENDING:
                flush()
                self._remote_ended = True
                link.close_with(_End.ENDING, f"{link.peer} is shutting down (ENDING)")
                self.act("remote_ending_action", f"{link.peer} ended the connection")
                break
            if not is_reply(kind):
                link.close_with(_End.ERROR, f"{link.peer} sent {type_name(kind)} frame "
                                "instead of a reply")
                self.log(syslog.LOG_ERR, link.reason)
                break
            if not link.pending or frame.seq != link.pending[0][0]:
                expected = link.pending[0][0] if link.pending else None
                link.close_with(_End.ERROR, f"lost sync with {link.peer}: {type_name(kind)} "
                                f"for sequence {frame.seq}, expected {expected}")
                self.log(syslog.LOG_ERR, link.reason)
                break
            _, _, heartbeat = link.pending.popleft()
            link.last_activity = time.monotonic()
            if is_error_reply(kind):
                flush()
                setting = {
                    TYPE_DISKFULL: "disk_full_action",
                    TYPE_DISKERROR: "disk_error_action",
                }.get(kind, "generic_error_action")
                message = f"{link.peer} did not store a record: {type_name(kind)}"
                if frame.payload:
                    message += f" ({describe_payload(frame.payload)})"
                # Like the C plugin, stop using this connection; but first collect the
                # replies to what is already in flight, so records the server did store
                # are not sent (and stored) again.
                link.draining = link.draining or message
                if heartbeat:
                    self.act(setting, message)
                    continue
                link.records -= 1
                if self.act(setting, message):
                    self._requeue_kept(link)
                    self._drop_head(setting)
                else:
                    link.kept += 1
                continue
            if not heartbeat and link.kept:
                flush()
                self._requeue_kept(link)
            if not heartbeat:
                acked += 1
                link.records -= 1
            if kind != TYPE_ACK:
                flush()
                setting = "disk_low_action" if kind == TYPE_DISKLOW else "generic_warning_action"
                message = f"{link.peer} reports {type_name(kind)}"
                if frame.payload:
                    message += f" ({describe_payload(frame.payload)})"
                if not is_warning_reply(kind):
                    message += " (unknown reply type, taken as stored)"
                self.act(setting, message)
        flush()
        if link.draining and not link.pending:
            link.close_with(_End.REFUSED, link.draining)
        self._poke()

    def _requeue_kept(self, link: _Link) -> None:
        """Refused records kept at the head must not block the removal of later records the
        server did store: move them behind the rest (the only reordering ever done)."""
        count, link.kept = link.kept, 0
        if not count:
            return
        queue = self.queue
        try:
            queue.append_many([queue.get(i) for i in range(count)])
            queue.sync()
            queue.pop_front(count)
        except QueueError as exc:
            self._queue_error(str(exc))
        self.log(syslog.LOG_NOTICE, f"{count} refused records will be retried after later "
                 f"ones that {link.peer} stored")

    # ---- running

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._control = asyncio.Event()
        self._space = asyncio.Event()
        self._exit = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._finish, 0, "SIGTERM: exiting")
        loop.add_signal_handler(signal.SIGINT, self._finish, 0, "SIGINT: exiting")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: self.log(syslog.LOG_INFO, self.state_line())
        )
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2)
        if self.config.transport == "tls":
            try:
                self._tls = tls_context(self.config)
            except (OSError, ValueError) as exc:
                self.log(syslog.LOG_ERR, f"cannot load the TLS certificates: {reason(exc)}")
                return 1
        self._open_queue()
        if self._exiting:
            return self._exit_code
        self.log(syslog.LOG_INFO, f"started: server {self.config.peer} "
                 f"({self.config.transport}, {self.config.format}, {self.config.mode}), "
                 f"queue_size {len(self.queue)}")
        tasks = [
            asyncio.create_task(self._read_input(), name="input"),
            asyncio.create_task(self._sender(), name="sender"),
        ]
        for task in tasks:
            task.add_done_callback(self._task_done)
        try:
            code = await self._exit
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._sync_timer is not None:
                self._sync_timer.cancel()
            link = self._link
            if link is not None and link.transport is not None:
                link.transport.abort()
            left = len(self.queue)
            self.queue.close()
            for child in self._children:
                child.close()
        if left and self.queue.durable:
            self.log(syslog.LOG_INFO, f"{left} records kept in {self.config.queue_file}")
        elif left:
            self.log(syslog.LOG_WARNING, f"{left} queued records were discarded at exit")
        return code

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._finish(1, f"internal error in the {task.get_name()} task: {exc!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Audit dispatcher plugin sending records to a remote auditd."
    )
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and exit")
    parser.add_argument("--no-syslog", action="store_true",
                        help="log to stderr only")
    args = parser.parse_args(argv)
    log = Log(use_syslog=not args.no_syslog)
    try:
        parsed = load_remote_conf(args.config)
    except ConfigError as exc:
        for problem in exc.errors:
            log(syslog.LOG_ERR, str(problem))
        return 1
    for problem in parsed.warnings:
        log(syslog.LOG_WARNING, str(problem))
    if args.check:
        return 0
    plugin = RemotePlugin(args.config, parsed, log)
    return asyncio.run(plugin.run())

