"""pyauditd as a JetStream collector (``nats_collector`` in auditd.conf): records from a
durable pull consumer shared by any number of collectors, written to this daemon's log
(one log; every line carries its host's ``node=``) and dispatched to its plugins as network
records are.

Every record is written once, whichever collectors come and go:

* **Acknowledged after the write.**  A batch is written (one ``write(2)`` by the daemon,
  through the same `remote_records` path as the audisp-remote listener) and only then
  acknowledged, record by record.  A record whose write failed (disk full, logging
  suspended) is handed back (``-NAK``) and fetching pauses, so another collector takes it.
* **Shared consumer.**  JetStream gives each record to one collector; one that is not
  acknowledged within ``ack_wait`` goes to another.  Adding a collector is starting one with
  the same consumer; removing one is stopping it (it writes and acknowledges what it holds,
  and what it never received goes to the others).
* **Redeliveries are checked.**  A collector killed between its write and its
  acknowledgements, or one whose acknowledgements died with a cluster node, leaves records
  that are in a log *and* will be delivered again.  A redelivered record (the delivery
  count in its ack subject is above 1) is therefore looked for before it is written: in the
  records this collector wrote whose acknowledgement the server has not confirmed (a PING
  after each batch confirms them; on a new connection the unconfirmed ones are
  acknowledged again), then in the recent part of this daemon's log and of the other
  collectors' logs (``peer_logs``).  Found: acknowledged, not written again.
* **Stale deliveries are not written.**  A record that waited here longer than
  ``ack_wait`` (a stalled loop) may already be another collector's; it is left alone.

A killed collector can leave a torn last line in its own log (a ``write(2)`` cut short by
SIGKILL); that record was not acknowledged and is written whole by whoever gets it next.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from auditpy.auditd.listener import ACK, Reply
from auditpy.config.nats_conf import COLLECTOR, NatsConf, load_nats_conf
from auditpy.nats import jetstream as jsapi
from auditpy.nats.client import Client, ConnectError, NatsError, Stop, options_for
from auditpy.proto import jetstream as js
from auditpy.proto import nats as wire
from auditpy.proto.nats import Msg
from auditpy.proto.remote import is_error_reply
from auditpy.structs import dataclass
from auditpy.system import evloop

if TYPE_CHECKING:
    from auditpy.config.auditd_conf import AuditdConfig

log = logging.getLogger("auditpy.collector")

#: Pull requests expire after this long at the server (an idle collector asks again).
PULL_EXPIRES: Final = 5.0
#: Pull requests outstanding at once (the next is asked while the last is being served).
PULLS: Final = 2
#: After a batch could not be written, how long before fetching again.
WRITE_PAUSE: Final = 1.0
RETRY: Final = (0.25, 5.0)
#: How much of the end of each log is searched for redelivered records.
INDEX_BYTES: Final = 32 << 20
_ACK_OP: Final = b" 4\r\n+ACK\r\n"
_NAK_OP: Final = b" 4\r\n-NAK\r\n"


class CollectorSink(Protocol):
    """What the collector needs from the daemon (the listener's `RemoteSink` half)."""

    def remote_records(self, lines: list[bytes]) -> Reply:
        """Store these complete log lines (each ends in a newline); the reply for them."""
        ...


def _clean(payload: bytes) -> bytes:
    """One record, one line: cut at a NUL, newlines become spaces (as the listener does),
    so a publisher cannot forge a second line."""
    nul = payload.find(b"\0")
    if nul >= 0:
        payload = payload[:nul]
    return payload.replace(b"\n", b" ").replace(b"\r", b" ")


class LogIndex:
    """The complete lines near the end of some log files, to answer "is this record written
    already?" for redelivered records.  Files are read incrementally from where the last
    look ended (from their last `window` bytes the first time, or after a rotation)."""

    def __init__(self, paths: Callable[[], list[str]], window: int = INDEX_BYTES) -> None:
        self.paths = paths
        self.window = window
        #: path -> (inode, offset read up to, lines in order, bytes held)
        self._files: dict[str, tuple[int, int, collections.deque[bytes], int]] = {}
        self._lines: collections.Counter[bytes] = collections.Counter()

    def contains(self, line: bytes) -> bool:
        return line in self._lines

    def refresh(self) -> None:
        seen = set()
        for path in self.paths():
            seen.add(path)
            try:
                self._refresh(path)
            except OSError:
                self._forget(path)
        for path in list(self._files):
            if path not in seen:
                self._forget(path)

    def _forget(self, path: str) -> None:
        entry = self._files.pop(path, None)
        if entry is not None:
            self._lines.subtract(entry[2])
            self._lines += collections.Counter()  # drop zero counts

    def _refresh(self, path: str) -> None:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            entry = self._files.get(path)
            if entry is None or entry[0] != info.st_ino or info.st_size < entry[1]:
                self._forget(path)
                entry = (info.st_ino, max(0, info.st_size - self.window),
                         collections.deque(), 0)
                skip_partial = entry[1] > 0
            else:
                skip_partial = False
            inode, offset, lines, held = entry
            f.seek(offset)
            data = f.read(min(info.st_size - offset, self.window))
        end = data.rfind(b"\n") + 1
        chunk = data[:end]
        if skip_partial:  # started mid-file: the first piece may be a partial line
            cut = chunk.find(b"\n") + 1
            chunk = chunk[cut:]
        new = chunk.split(b"\n")[:-1] if chunk else []
        for line in new:
            lines.append(line)
            held += len(line) + 1
        self._lines.update(new)
        while held > self.window and lines:
            old = lines.popleft()
            held -= len(old) + 1
            self._lines[old] -= 1
            if self._lines[old] <= 0:
                del self._lines[old]
        self._files[path] = (inode, offset + end, lines, held)


@dataclass
class _Pending:
    """A received record waiting for the batch write."""

    line: bytes
    ack: bytes
    seq: int
    redelivered: bool


class NatsCollector:
    """See the module docstring.  Runs on the daemon's loop; `start` and `stop` are
    synchronous so the daemon can call them from start-up, signal handlers and shutdown."""

    def __init__(
        self, loop: evloop.Loop, conf: NatsConf, sink: CollectorSink,
        *, own_log: str | None, source: str = "",
    ) -> None:
        self.loop = loop
        self.conf = conf
        self.sink = sink
        self.own_log = own_log
        self.source = source
        self.client = Client(options_for(conf, "pyauditd-collector"))
        self.index = LogIndex(self._index_paths)
        self._task: evloop.Task[None] | None = None
        self._stopping = False
        self._stop = Stop()
        self._inbox = ""
        self._received: list[_Pending] = []
        self._received_at = 0.0
        self._process_handle: evloop.Handle | None = None
        #: remaining counts of our outstanding pull requests, oldest first
        self._pulls: collections.deque[int] = collections.deque()
        self._paused_until = 0.0
        self._resume: evloop.TimerHandle | None = None
        #: (PONG future, stream seqs, ack subjects) of acknowledgements not yet confirmed
        self._unconfirmed: collections.deque[
            tuple[evloop.Future[None], list[int], list[bytes]]] = collections.deque()
        #: stream seq -> ack subject of records written whose acknowledgement may be lost
        self._in_doubt: dict[int, bytes] = {}
        self._in_doubt_since = 0.0
        self._delay = RETRY[0] / 2
        self.running = False
        # counters
        self.received = 0
        self.written = 0
        self.redelivered = 0
        self.already_written = 0
        self.stale = 0
        self.refused = 0
        self.pulls = 0

    def _index_paths(self) -> list[str]:
        paths = [self.own_log] if self.own_log else []
        if self.conf.peer_logs:
            paths += sorted(p for p in glob.glob(self.conf.peer_logs) if p not in paths)
        return paths

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._task = self.loop.create_task(self._run())
        self._task.add_done_callback(self._done)
        log.info("NATS collector: consumer %s of stream %s at %s", self.conf.consumer,
                 self.conf.stream, ",".join(str(s) for s in self.conf.servers))

    def _done(self, task: evloop.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("NATS collector stopped by an internal error: %r", task.exception())
        self.running = False

    def stop(self) -> None:
        """Fetch no more; what was received is written and acknowledged now (so it comes
        before the daemon's DAEMON_END); what still arrives is handed back."""
        if self._stopping:
            return
        if self._process_handle is not None:
            self._process_handle.cancel()
        self._process()
        self._stopping = True
        self._stop.set()
        if self._resume is not None:
            self._resume.cancel()

    async def wait_closed(self, timeout: float = 3.0) -> None:
        task = self._task
        if task is None:
            return
        with contextlib.suppress(TimeoutError, evloop.CancelledError):
            await evloop.wait_for(evloop.shield(task), timeout)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.client.close("collector stopped")

    def close(self) -> None:
        """Shutdown from outside the loop: stop and let the loop finish for a moment."""
        self.stop()
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.run_until_complete(self.wait_closed())

    def state(self) -> dict[str, str]:
        server = self.client.server
        return {
            "NATS collector": f"consumer {self.conf.consumer} of {self.conf.stream}",
            "NATS server": str(server) if server is not None else "none (connecting)",
            "NATS records received": str(self.received),
            "NATS records written": str(self.written),
            "NATS redeliveries": str(self.redelivered),
            "NATS redeliveries already written (not again)": str(self.already_written),
            "NATS records left for other collectors (stale or not writable)": str(
                self.stale + self.refused),
        }

    # -- connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        client = self.client
        self._inbox = client.new_inbox()
        client.subscribe(self._inbox, self._on_msg)
        while not self._stopping:
            try:
                await self._connected_once()
            except Exception:  # a bug costs a reconnect, never the collector
                log.exception("NATS collector: internal error; reconnecting")
                self._connection_lost("internal error")
                client.close("internal error")
                await self._stop.sleep(RETRY[1])
        await self._finish()

    async def _connected_once(self) -> None:
        client = self.client
        try:
            server = await client.connect()
            if self.conf.create_consumer:
                await jsapi.ensure_consumer(client, self.conf.stream, js.pull_consumer_config(
                    self.conf.consumer, ack_wait_s=self.conf.ack_wait,
                    max_ack_pending=self.conf.max_ack_pending))
            else:
                await jsapi.consumer_info(client, self.conf.stream, self.conf.consumer)
        except (NatsError, js.JetStreamError) as exc:
            if isinstance(exc, ConnectError) or not client.connected:
                log.warning("NATS collector: cannot connect: %s", exc)
            else:
                log.warning("NATS collector: consumer %s of %s not usable: %s",
                            self.conf.consumer, self.conf.stream, exc)
                client.close("consumer not usable")
            self._delay = min(self._delay * 2, RETRY[1])
            await self._stop.sleep(self._delay)
            return
        self._delay = RETRY[0] / 2
        log.info("NATS collector connected to %s", server)
        lost = client.lost
        self._pulls.clear()
        self._confirm_again()
        self._pull()
        reason = await self._stop.until_lost(lost)
        if reason is not None:
            self._connection_lost(reason)
            await self._stop.sleep(RETRY[0])

    async def _finish(self) -> None:
        """Removed collector: confirm the last acknowledgements, close."""
        client = self.client
        if client.connected:
            with contextlib.suppress(NatsError, TimeoutError):
                await client.flush(2.0)
            await client.drain_and_close(1.0)

    def _connection_lost(self, reason: str) -> None:
        log.warning("NATS collector: %s", reason)
        self._pulls.clear()
        while self._unconfirmed:
            _future, seqs, subjects = self._unconfirmed.popleft()
            self._in_doubt.update(zip(seqs, subjects, strict=True))
        if self._in_doubt:
            self._in_doubt_since = time.monotonic()

    def _confirm_again(self) -> None:
        """Acknowledge again, on the new connection, what was written but not confirmed."""
        if not self._in_doubt:
            return
        subjects = list(self._in_doubt.values())
        with contextlib.suppress(NatsError):
            self.client.write(b"".join(b"PUB " + s + _ACK_OP for s in subjects))
        log.info("NATS collector: acknowledged %d written records again after reconnecting",
                 len(subjects))
        self._track_confirmation(list(self._in_doubt), subjects)

    # -- pulling ------------------------------------------------------------------------------

    def _pull(self) -> None:
        """Keep up to PULLS requests of `batch` records outstanding."""
        client = self.client
        if self._stopping or not client.connected:
            return
        if time.monotonic() < self._paused_until:
            return
        batch = self.conf.batch
        request = json.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)}).encode()
        subject = f"{js.API_PREFIX}.CONSUMER.MSG.NEXT.{self.conf.stream}.{self.conf.consumer}"
        while len(self._pulls) < PULLS and sum(self._pulls) <= batch:
            try:
                client.publish(subject, request, self._inbox)
            except NatsError:
                return
            self._pulls.append(batch)
            self.pulls += 1

    def _request_done(self) -> None:
        if self._pulls:
            self._pulls.popleft()
        self._pull()

    def _on_msg(self, msg: Msg) -> None:
        if msg.reply is None:
            if msg.headers is not None:
                status = wire.decode_headers(msg.headers).status
                if status != js.STATUS_IDLE_HEARTBEAT:
                    self._request_done()  # 408 expired, 409 too many waiting: ask again
            return
        try:
            delivery = js.parse_ack_subject(msg.reply)
        except ValueError:
            return
        if self._stopping:
            with contextlib.suppress(NatsError):
                self.client.write(b"PUB " + msg.reply + _NAK_OP)
            return
        pulls = self._pulls
        if pulls:
            pulls[0] -= 1
            if pulls[0] <= 0:
                pulls.popleft()
                self._pull()
        self.received += 1
        if not self._received:
            self._received_at = time.monotonic()
        payload = msg.payload
        if payload.endswith(b"\n"):
            payload = payload[:-1]
        if b"\n" in payload or b"\0" in payload or b"\r" in payload:
            payload = _clean(payload)
        self._received.append(_Pending(payload + b"\n", msg.reply, delivery.stream_seq,
                                       delivery.delivered > 1))
        if self._process_handle is None:
            self._process_handle = self.loop.call_soon(self._process)

    # -- writing ------------------------------------------------------------------------------

    def _process(self) -> None:
        """Write everything received in this loop iteration, then acknowledge it."""
        self._process_handle = None
        pending, self._received = self._received, []
        if not pending:
            return
        if time.monotonic() - self._received_at > self.conf.ack_wait * 0.8:
            self.stale += len(pending)
            log.warning("NATS collector: %d records waited too long here; leaving them to "
                        "the next delivery", len(pending))
            return
        skip: list[_Pending] = []
        if any(p.redelivered for p in pending):
            pending, skip = self._split_written(pending)
        reply = ACK
        if pending:
            try:
                reply = self.sink.remote_records([p.line for p in pending])
            except Exception:  # the daemon keeps running; the records go to someone else
                log.exception("NATS collector: storing %d records failed", len(pending))
                reply = Reply(-1)
        stored = reply.msg_type >= 0 and not is_error_reply(reply.msg_type)
        done = skip + pending if stored else skip
        if stored:
            self.written += len(pending)
        else:
            self.refused += len(pending)
            self._nak(pending, reply)
        if done:
            self._ack(done)

    def _split_written(self, pending: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """Redelivered records already in a log (ours or a peer's) are not written again."""
        self.redelivered += sum(p.redelivered for p in pending)
        self.index.refresh()
        fresh: list[_Pending] = []
        written: list[_Pending] = []
        for p in pending:
            if p.redelivered and (p.seq in self._in_doubt or self.index.contains(p.line[:-1])):
                written.append(p)
                self._in_doubt.pop(p.seq, None)
            else:
                fresh.append(p)
        self.already_written += len(written)
        if written:
            log.info("NATS collector: %d redelivered records were already written; "
                     "acknowledging them without writing", len(written))
        return fresh, written

    def _ack(self, done: list[_Pending]) -> None:
        subjects = [p.ack for p in done]
        try:
            self.client.write(b"".join(b"PUB " + s + _ACK_OP for s in subjects))
        except NatsError:
            self._in_doubt.update((p.seq, p.ack) for p in done)
            return
        self._track_confirmation([p.seq for p in done], subjects)

    def _track_confirmation(self, seqs: list[int], subjects: list[bytes]) -> None:
        try:
            future = self.client.ping()
        except NatsError:
            self._in_doubt.update(zip(seqs, subjects, strict=True))
            return
        entry = (future, seqs, subjects)
        self._unconfirmed.append(entry)
        future.add_done_callback(lambda f, e=entry: self._confirmed(f, e))  # type: ignore[misc]

    def _confirmed(
        self, future: evloop.Future[None],
        entry: tuple[evloop.Future[None], list[int], list[bytes]],
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the connection is gone; _connection_lost keeps them in doubt
        with contextlib.suppress(ValueError):
            self._unconfirmed.remove(entry)
        for seq in entry[1]:
            self._in_doubt.pop(seq, None)
        if self._in_doubt and time.monotonic() - self._in_doubt_since > 4 * self.conf.ack_wait:
            self._in_doubt.clear()  # redelivered long ago; the log index covers them now

    def _nak(self, pending: list[_Pending], reply: Reply) -> None:
        """Not written here: hand the records back at once and fetch nothing for a while."""
        log.warning("NATS collector: %d records not written (%s); handing them back",
                    len(pending), reply.name if reply.msg_type >= 0 else "error")
        with contextlib.suppress(NatsError):
            self.client.write(b"".join(b"PUB " + p.ack + _NAK_OP for p in pending))
        self._paused_until = time.monotonic() + WRITE_PAUSE
        if self._resume is None:
            self._resume = self.loop.call_later(WRITE_PAUSE, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self._pull()


# --------------------------------------------------------------------------------------
# The daemon's hooks


def collector_from_config(
    loop: evloop.Loop, config: AuditdConfig, sink: CollectorSink
) -> NatsCollector | None:
    """A started collector when auditd.conf names a ``nats_collector`` file, else None.
    Raises ConfigError (the file went bad since the daemon checked it)."""
    from auditpy.config.errors import ConfigError

    path = config.nats_collector
    if path is None:
        return None
    try:
        parsed = load_nats_conf(path, COLLECTOR)
    except ConfigError as exc:
        raise ValueError(f"nats_collector: {exc}") from None
    collector = NatsCollector(
        loop, parsed.config, sink,
        own_log=config.log_file if config.write_logs else None, source=path,
    )
    collector.start()
    return collector


def reconfigure_collector(
    current: NatsCollector | None, loop: evloop.Loop, config: AuditdConfig,
    sink: CollectorSink,
) -> NatsCollector | None:
    """SIGHUP: keep a collector whose file and settings are unchanged; otherwise stop it
    (it finishes its batch) and start the new one."""
    from auditpy.config.errors import ConfigError

    path = config.nats_collector
    new_conf: NatsConf | None = None
    if path is not None:
        try:
            new_conf = load_nats_conf(path, COLLECTOR).config
        except ConfigError as exc:
            log.error("NATS collector settings not applied:\n%s", exc)
            return current
    own_log = config.log_file if config.write_logs else None
    if current is not None and new_conf == current.conf and current.source == path:
        current.own_log = own_log
        return current
    if current is not None:
        current.stop()
        loop.create_task(current.wait_closed())
        log.info("NATS collector stopped for the new settings")
    if path is None or new_conf is None:
        return None
    try:
        replacement = NatsCollector(loop, new_conf, sink, own_log=own_log, source=path)
    except (OSError, ValueError) as exc:
        log.error("NATS collector not restarted: cannot load its TLS files: %s", exc)
        return None
    replacement.start()
    return replacement
