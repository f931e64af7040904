"""The JetStream publisher: audit records into a stream, each exactly once, in order per node.

Used by pyaudispd's ``builtin_nats`` (in a thread of its own) and by the ``pyaudisp-nats``
plugin program (in its main loop); both hand records to `Publisher.submit` and run
`Publisher.run`.  How "exactly once" is built from at-least-once parts:

* **Identity.**  Every record gets a ``Nats-Msg-Id`` computed from its content
  (`auditpy.proto.jetstream.record_msg_id`: node, boot ID, the event's time stamp and
  serial, a CRC of the line).  The stream drops a message whose ID it stored within its
  duplicate window, so sending a record twice stores it once.
* **The queue.**  A record is appended to the on-disk queue (`DiskQueue`) when it arrives,
  fsynced before it is sent, and removed only when the stream acknowledged it; after a
  crash or restart the queue is sent again from its head.  Its ID is stored with it, so a
  re-send carries the same ID even after a reboot.  A full queue drops new records and
  counts them: the daemon is never made to wait.
* **Order.**  Publishes are pipelined (`window` at once) on one connection, which the
  stream leader stores in order.  At the first failure (an error reply, a 503 "no
  responders" while the stream elects a leader, a missing acknowledgement) nothing new is
  sent; after a back-off everything unacknowledged is sent again from the head, so a
  record is never stored after one that followed it.  An acknowledgement that overtakes
  an earlier one is counted (``reordered``); it cannot happen on one connection unless the
  cluster lost a message in transit.
* **Beyond the duplicate window.**  After a restart or a lost connection, the records at
  the head may have been stored long ago.  The ID of the newest message on each of their
  subjects is fetched; the records up to and including that ID are stored already (they
  went in order) and leave the queue unsent.
* **Records the publisher never saw.**  Records that were in the plugin's input socket or
  in a killed dispatcher's memory are gone from that path, but the audit daemon wrote
  them to its log before dispatching them.  The last record appended to the queue is
  kept in a cursor file; at start the log (``recover_from``) is searched for it and the
  records after it are queued first.  The same records arriving again through the input
  are recognised by their ID and skipped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import syslog
import time
from collections.abc import Callable, Iterable
from typing import Final

from auditpy import structs
from auditpy.config.nats_conf import NatsConf
from auditpy.nats import jetstream as jsapi
from auditpy.nats.client import Client, ConnectError, NatsError, Stop, boot_id, options_for
from auditpy.proto import jetstream as js
from auditpy.proto import nats as wire
from auditpy.proto.nats import Msg
from auditpy.system import evloop
from auditpy.system.spool import DiskQueue, MemoryQueue, QueueError, RecordQueue

Log = Callable[[int, str], None]

#: A stored record is ``ID \n LINE``; lines are at most this long (an event, once events
#: are published whole, may be longer than one kernel record).
MAX_RECORD: Final = 1 << 20
#: Back-off after a failed publish or connection: doubles up to the second value.
RETRY: Final = (0.25, 2.0)
#: Failures in a row on one connection before another server is tried.
FAILURES_BEFORE_RECONNECT: Final = 3
#: Records read while nothing could be sent are fsynced this soon.
SYNC_DELAY: Final = 0.05
#: How far back (bytes) the audit log is searched for the last queued record.
RECOVER_SCAN: Final = 256 << 20
#: Read size when searching the log backwards.
RECOVER_CHUNK: Final = 1 << 20
#: Event stamps remembered to number identical lines within an event.
OCCURRENCE_EVENTS: Final = 64
#: Overflow is reported at most this often (every loss is counted).
REPORT_EVERY: Final = 10.0
HEADER_PREFIX: Final = b"NATS/1.0\r\n" + js.MSG_ID.encode() + b": "


def is_eoe(line: bytes) -> bool:
    """EOE records carry nothing and are not published (as audisp-remote does)."""
    start = line.find(b" ") + 1 if line.startswith(b"node=") else 0
    return line.startswith(b"type=EOE", start) and (
        len(line) == start + 8 or line[start + 8 : start + 9] == b" "
    )


def split_record(stored: bytes) -> tuple[bytes, bytes, bytes]:
    """(ID, node, payload) of an item as the queue holds it: ``ID \n NODE \n PAYLOAD``."""
    msg_id, _, rest = stored.partition(b"\n")
    node, _, payload = rest.partition(b"\n")
    return msg_id, node, payload


# --------------------------------------------------------------------------------------
# Naming records


class Identities:
    """Normalises records (a ``node=`` first) and gives each its ID and subject."""

    def __init__(self, conf: NatsConf, boot: bytes, host: str | None = None) -> None:
        self.conf = conf
        self.boot = boot
        default = conf.node or (host if host is not None else socket.gethostname())
        self.default_node = default.replace(" ", "_").encode()
        self._subjects: dict[bytes, bytes] = {}
        #: event stamp -> {crc-less line hash -> times seen}, the newest events only
        self._events: collections.OrderedDict[bytes, dict[bytes, int]] = (
            collections.OrderedDict()
        )

    def subject(self, node: bytes) -> bytes:
        subject = self._subjects.get(node)
        if subject is None:
            token = js.subject_token(node.decode("utf-8", "replace"))
            subject = self.conf.subject_for(token).encode()
            self._subjects[node] = subject
        return subject

    def forget_events(self) -> None:
        self._events.clear()

    def name(self, raw: bytes) -> tuple[bytes, bytes, bytes]:
        """(ID, normalised line, node) of one input record."""
        node = js.line_node(raw)
        line = raw
        if node is None:
            node = self.default_node
            line = js.with_node(raw, node)
        stamp = js.record_stamp(line) or b"-"
        seen = self._events.get(stamp)
        if seen is None:
            seen = self._events[stamp] = {}
            if len(self._events) > OCCURRENCE_EVENTS:
                self._events.popitem(last=False)
        occurrence = seen.get(line, 0)
        seen[line] = occurrence + 1
        msg_id = js.record_msg_id(line, node, self.boot, occurrence).encode()
        return msg_id, line, node


# --------------------------------------------------------------------------------------
# Recovery from the audit log


def lines_after(data: bytes, cursor: bytes, at_start: bool) -> list[bytes] | None:
    """The complete lines of `data` that follow the last line equal to `cursor`, or None if
    no line is.  `at_start`: `data` begins at a line start (the file's start), so its first
    line counts too."""
    needle = b"\n" + cursor + b"\n"
    position = data.rfind(needle)
    if position >= 0:
        start = position + len(needle)
    elif at_start and data.startswith(cursor + b"\n"):
        start = len(cursor) + 1
    else:
        return None
    end = data.rfind(b"\n") + 1
    if end <= start:
        return []
    return data[start:end - 1].split(b"\n")


def _read_back(path: str, cursor: bytes, limit: int) -> tuple[list[bytes] | None, list[bytes]]:
    """Search one file backwards for `cursor`: (the lines after it or None, and when it is
    not there, every complete line of the file if the whole file was read, else [])."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = b""
        position = size
        while position > 0 and size - position < limit:
            step = min(RECOVER_CHUNK, position, limit - (size - position))
            position -= step
            f.seek(position)
            data = f.read(step) + data
            after = lines_after(data, cursor, position == 0)
            if after is not None:
                return after, []
    if position > 0:
        return None, []
    end = data.rfind(b"\n") + 1
    return None, (data[: end - 1].split(b"\n") if end else [])


def recover_lines(log_path: str, cursor: bytes, limit: int = RECOVER_SCAN) -> list[bytes] | None:
    """Lines logged after `cursor` in the log (and in its first rotation, ``.1``, followed
    by the whole current file, if the cursor is not in the current file), or None if the
    cursor cannot be found within `limit` bytes of either."""
    try:
        after, newer = _read_back(log_path, cursor, limit)
        if after is not None:
            return after
        if not newer and os.path.getsize(log_path) > 0:
            return None  # the current file is larger than the limit
        older, _ = _read_back(log_path + ".1", cursor, limit)
    except OSError:
        return None
    return None if older is None else older + newer


# --------------------------------------------------------------------------------------
# The publisher


class Publisher:
    def __init__(self, conf: NatsConf, log: Log, *, program: str = "pyaudisp-nats",
                 boot: bytes | None = None, host: str | None = None) -> None:
        self.conf = conf
        self.log = log
        self.program = program
        self.ids = Identities(conf, boot if boot is not None else boot_id(), host)
        self.queue: RecordQueue = MemoryQueue()
        self.client = Client(options_for(conf, program))
        self._cursor_fd = -1
        self._loop: evloop.Loop | None = None
        #: queue index i <-> inflight[i]: (token, time sent)
        self._inflight: collections.deque[tuple[int, float]] = collections.deque()
        #: acknowledged tokens that arrived before an older one's
        self._early: set[int] = set()
        #: records acknowledged in order, not yet removed from the queue (see _settle)
        self._acked = 0
        self._settle_handle: evloop.Handle | None = None
        self._token = 0
        self._inbox = b""
        self._inbox_sid: int | None = None
        self._paused_until = 0.0
        self._retry = RETRY[0]
        self._failures_in_row = 0
        self._resume: evloop.TimerHandle | None = None
        self._watchdog: evloop.TimerHandle | None = None
        self._sync_timer: evloop.TimerHandle | None = None
        self._in_doubt = False
        #: an acknowledgement overtook an older record still queued: the head check is off
        self._gap_suspected = False
        self._recovered_ids: set[bytes] = set()
        self._connect_delay = RETRY[0] / 2
        self._stopping = False
        #: the head check runs: nothing may be sent meanwhile
        self._checking = False
        self._stop = Stop()
        self._space = evloop.Event()
        self._limited: dict[str, float] = {}
        self._overflow_pending = 0
        self._overflow_reported = -1e9
        # counters
        self.received = 0
        self.published = 0
        self.duplicates = 0
        self.dropped = 0
        self.recovered = 0
        self.skipped_recovered = 0
        self.already_stored = 0
        self.reordered = 0
        self.failures = 0

    # -- small helpers ------------------------------------------------------------------

    def _limited_log(self, key: str, priority: int, message: str, every: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._limited.get(key, -every) >= every:
            self._limited[key] = now
            self.log(priority, message)

    def state(self) -> list[tuple[str, object]]:
        server = self.client.server
        return [
            ("server", str(server) if server is not None else "none (connecting)"),
            ("queue depth", len(self.queue)),
            ("in flight", len(self._inflight)),
            ("records received", self.received),
            ("records stored in the stream", self.published),
            ("of which already stored (duplicate IDs)", self.duplicates),
            ("records found stored before sending", self.already_stored),
            ("records dropped (queue full)", self.dropped),
            ("records recovered from the log", self.recovered),
            ("recovered records skipped in the input", self.skipped_recovered),
            ("publish failures", self.failures),
            ("acknowledgements out of order", self.reordered),
            ("connections", self.client.connects),
        ]

    def state_line(self) -> str:
        return "state: " + " ".join(
            f"{key.replace(' ', '_')}={value}" for key, value in self.state()
        )

    # -- the queue ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the queue (and its cursor) and recover what the log holds beyond it.
        Raises QueueError."""
        path = self.conf.queue_file
        if path is None:
            return
        queue = DiskQueue(path, self.log, max_record=MAX_RECORD + 512)
        self.queue = queue
        if queue.recovered:
            self._in_doubt = True
            self.log(syslog.LOG_NOTICE, f"{queue.recovered} records from {path} will be sent "
                     "first")
        cursor_path = path + ".cursor"
        try:
            self._cursor_fd = os.open(cursor_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            cursor = os.pread(self._cursor_fd, MAX_RECORD + 2, 0)
        except OSError as exc:
            raise QueueError(f"cannot use {cursor_path!r}: {exc.strerror or exc}") from None
        if cursor.endswith(b"\n") and self.conf.recover_from:
            self._recover(self.conf.recover_from, cursor[:-1])

    def _recover(self, log_path: str, cursor: bytes) -> None:
        if not os.path.exists(log_path):
            return
        lines = recover_lines(log_path, cursor)
        if lines is None:
            self.log(syslog.LOG_WARNING, f"the last queued record is not in {log_path}; "
                     "records logged while the publisher was not running cannot be recovered")
            return
        lines = [line for line in lines if line and not is_eoe(line)]
        if not lines:
            return
        before = self.received
        self._enqueue(lines, remember=True)
        self.recovered += self.received - before
        self.received = before
        self.ids.forget_events()  # the input numbers identical lines afresh, as we did
        self.log(syslog.LOG_NOTICE, f"{self.recovered} records logged while the publisher was "
                 f"not running were recovered from {log_path}")

    def submit(self, lines: Iterable[bytes]) -> None:
        """Records from the input (lines without newline): queued, or dropped and counted
        if the queue is full.  Never waits."""
        self._enqueue([line for line in lines if line and not is_eoe(line)])

    def submit_named(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
        """Items named by the caller: (``Nats-Msg-Id``, node, payload), each published to
        the node's subject.  The seam for publishing whole events (JSON) instead of
        records: the event assembler names an event by node, boot ID and its time stamp
        and serial (`auditpy.proto.jetstream.event_msg_id`), which every re-send of that
        event repeats.  Records recovered from the log after a crash are records, so a
        publisher of events recovers by assembling them again."""
        self._queue_items([msg_id + b"\n" + node + b"\n" + payload
                           for msg_id, node, payload in items], b"")

    def room(self) -> int:
        return max(0, self.conf.queue_depth - len(self.queue))

    def _enqueue(self, lines: list[bytes], *, remember: bool = False) -> None:
        if not lines:
            return
        name = self.ids.name
        records = []
        last_raw = b""
        recovered = self._recovered_ids
        for raw in lines:
            if len(raw) > MAX_RECORD:
                raw = raw[:MAX_RECORD]
            msg_id, line, node = name(raw)
            if recovered and not remember and msg_id in recovered:
                recovered.discard(msg_id)
                self.skipped_recovered += 1
                continue
            if remember:
                recovered.add(msg_id)
            records.append(msg_id + b"\n" + node + b"\n" + line)
            last_raw = raw
        self._queue_items(records, last_raw)

    def _queue_items(self, records: list[bytes], last_raw: bytes) -> None:
        """Append to the queue (what does not fit is dropped and counted), remember the
        last raw record for the recovery, send."""
        if not records:
            return
        room = self.room()
        if len(records) > room:
            self._overflow(len(records) - room)
            records = records[:room]
            if not records:
                return
        try:
            self.queue.append_many(records)
        except QueueError as exc:
            self.dropped += len(records)
            self._limited_log("queue", syslog.LOG_ERR, f"{exc}; {len(records)} records lost")
            return
        self.received += len(records)
        if self._cursor_fd >= 0 and last_raw:
            with contextlib.suppress(OSError):
                os.pwrite(self._cursor_fd, last_raw + b"\n", 0)
                os.ftruncate(self._cursor_fd, len(last_raw) + 1)
        if self._loop is not None:
            self._fill()
            if self.queue.unsynced and self._sync_timer is None:
                self._sync_timer = self._loop.call_later(SYNC_DELAY, self._sync)

    def _overflow(self, count: int) -> None:
        self.dropped += count
        self._overflow_pending += count
        now = time.monotonic()
        if now - self._overflow_reported >= REPORT_EVERY:
            self._overflow_reported = now
            lost, self._overflow_pending = self._overflow_pending, 0
            self.log(syslog.LOG_WARNING, f"queue is full ({self.conf.queue_depth} records): "
                     f"{lost} records dropped ({self.dropped} in all)")

    def _sync(self) -> None:
        self._sync_timer = None
        try:
            self.queue.sync()
        except QueueError as exc:
            self._limited_log("sync", syslog.LOG_ERR, str(exc))
        self._fill()

    def close(self) -> None:
        for handle in (self._resume, self._watchdog, self._sync_timer):
            if handle is not None:
                handle.cancel()
        self.queue.close()
        if self._cursor_fd >= 0:
            os.close(self._cursor_fd)
            self._cursor_fd = -1

    # -- sending --------------------------------------------------------------------------

    def _fill(self) -> None:
        """Send queued records while the window has room (fsynced ones only)."""
        client = self.client
        if not client.connected or self._stopping or self._checking or self._inbox_sid is None:
            return
        now = time.monotonic()
        if now < self._paused_until:
            return
        inflight = self._inflight
        queue = self.queue
        room = self.conf.window - len(inflight)
        if room <= 0:
            return
        # the queue's head holds the records acknowledged in this loop iteration (_settle
        # removes them), then those in flight
        index = self._acked + len(inflight)
        if queue.unsynced and queue.sendable - index < room:
            try:
                queue.sync()
            except QueueError as exc:
                self._limited_log("sync", syslog.LOG_ERR, str(exc))
        stop = min(queue.sendable, index + room)
        if index >= stop:
            return
        parts = []
        prefix = self._inbox
        subject_of = self.ids.subject
        get = queue.get
        token = self._token
        for i in range(index, stop):
            msg_id, node, line = split_record(get(i))
            token += 1
            header = HEADER_PREFIX + msg_id + b"\r\n\r\n"
            size = len(header)
            parts.append(b"HPUB %b %b%d %d %d\r\n%b%b\r\n" % (
                subject_of(node), prefix, token, size, size + len(line), header, line))
            inflight.append((token, now))
        self._token = token
        try:
            client.write(b"".join(parts))
        except NatsError:
            return  # the connection is gone; lost() follows
        if self._watchdog is None and self._loop is not None:
            self._watchdog = self._loop.call_later(self.conf.ack_timeout / 4, self._check_acks)

    def _on_ack(self, msg: Msg) -> None:
        tail = msg.subject[len(self._inbox):]
        if not tail.isdigit():
            return
        token = int(tail)
        inflight = self._inflight
        if not inflight or token < inflight[0][0] or token > inflight[-1][0]:
            return  # from before a failure or reconnect: those records go again
        if msg.headers is not None and not msg.payload:
            status = wire.decode_headers(msg.headers)
            self._failed(f"publish refused: {status.status} {status.description}".strip()
                         + (" (no stream leader or no stream for the subject)"
                            if status.status == js.STATUS_NO_RESPONDERS else ""))
            return
        duplicate = js.quick_pub_ack(msg.payload)
        if duplicate is None:
            try:
                duplicate = js.parse_pub_ack(msg.payload).duplicate
            except js.JetStreamError as exc:
                self._failed(f"the stream refused a record: {exc}")
                return
        self.published += 1
        if duplicate:
            self.duplicates += 1
        if token != inflight[0][0]:
            self._early.add(token)
            self.reordered += 1
            self._gap_suspected = True
            return
        inflight.popleft()
        self._acked += 1
        early = self._early
        while early and inflight and inflight[0][0] in early:
            early.discard(inflight.popleft()[0])
            self._acked += 1
        if self._settle_handle is None and self._loop is not None:
            self._settle_handle = self._loop.call_soon(self._settle)

    def _settle(self) -> None:
        """Once per loop iteration: the acknowledged records leave the queue (one head
        pointer write), and the window is filled again (one send)."""
        self._settle_handle = None
        if self._acked:
            self._pop_acked()
            self._progress()
        self._fill()

    def _progress(self) -> None:
        self._failures_in_row = 0
        self._retry = RETRY[0]
        if not len(self.queue):
            self._gap_suspected = False
            self._in_doubt = False
        self._space.set()

    def _check_acks(self) -> None:
        self._watchdog = None
        inflight = self._inflight
        if not inflight:
            return
        waited = time.monotonic() - inflight[0][1]
        if waited >= self.conf.ack_timeout:
            self._failed(f"no acknowledgement for a record within {self.conf.ack_timeout:g} s")
            return
        assert self._loop is not None
        self._watchdog = self._loop.call_later(
            max(self.conf.ack_timeout - waited, 0.05), self._check_acks
        )

    def _failed(self, reason: str) -> None:
        """Stop sending; after a back-off send everything unacknowledged again."""
        self.failures += 1
        self._failures_in_row += 1
        self._limited_log("fail:" + reason[:40], syslog.LOG_WARNING,
                          f"{reason}; retrying from the oldest unacknowledged record", 10.0)
        self._reset_inflight()
        delay = self._retry
        self._retry = min(self._retry * 2, RETRY[1])
        self._paused_until = time.monotonic() + delay
        if self._failures_in_row >= FAILURES_BEFORE_RECONNECT and self.client.connected:
            self._failures_in_row = 0
            self.client.close(f"{reason} ({FAILURES_BEFORE_RECONNECT} times): "
                              "trying another server")
            return
        if self._loop is not None and self._resume is None:
            self._resume = self._loop.call_later(delay, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self._fill()

    def _pop_acked(self) -> None:
        """Remove now what was acknowledged earlier in this loop iteration."""
        if self._acked:
            done, self._acked = self._acked, 0
            try:
                self.queue.pop_front(done)
            except QueueError as exc:
                self._limited_log("pop", syslog.LOG_ERR, str(exc))

    def _reset_inflight(self) -> None:
        self._pop_acked()  # acknowledged before the failure: those are stored
        if self._inflight:
            self._in_doubt = True
        self._inflight.clear()
        self._early.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _skip_stored(self) -> None:
        """Drop from the head the records the stream already holds (see the module doc)."""
        self._pop_acked()
        if not self._in_doubt or self._gap_suspected or not len(self.queue):
            return
        self._checking = True
        try:
            await self._skip_stored_now()
        finally:
            self._checking = False

    async def _skip_stored_now(self) -> None:
        head = min(len(self.queue), self.conf.window)
        ids: dict[bytes, int] = {}
        subjects: set[bytes] = set()
        for i in range(head):
            msg_id, node, _payload = split_record(self.queue.get(i))
            ids[msg_id] = i
            subjects.add(self.ids.subject(node))
        last = -1
        for subject in subjects:
            try:
                found = await jsapi.last_msg_id(
                    self.client, self.conf.stream, subject.decode(), self.conf.ack_timeout)
            except (NatsError, js.JetStreamError) as exc:
                self._limited_log("skip", syslog.LOG_INFO,
                                  f"cannot ask {self.conf.stream} for its last record: {exc}")
                return
            if found is not None:
                last = max(last, ids.get(found.encode(), -1))
        if last >= 0:
            try:
                self.queue.pop_front(last + 1)
            except QueueError as exc:
                self._limited_log("pop", syslog.LOG_ERR, str(exc))
                return
            self.already_stored += last + 1
            self.log(syslog.LOG_INFO, f"{last + 1} queued records were already in "
                     f"{self.conf.stream}; not sending them again")
            self._progress()
        self._in_doubt = False

    # -- running --------------------------------------------------------------------------

    def _attach(self, client: Client) -> None:
        self.client = client
        self._inbox = (client.new_inbox() + ".").encode()
        self._inbox_sid = client.subscribe(self._inbox.decode() + "*", self._on_ack)

    def reconfigure(self, conf: NatsConf) -> None:
        """New connection settings (SIGHUP): the queue's settings stay; reconnect now."""
        fixed = {key: getattr(self.conf, key) for key in ("queue_file", "recover_from")}
        for key, value in fixed.items():
            if getattr(conf, key) != value:
                self.log(syslog.LOG_WARNING, f"{key} changes only at restart; keeping {value}")
        self.conf = structs.replace(conf, **fixed)
        self.ids = Identities(self.conf, self.ids.boot)
        old = self.client
        self._attach(Client(options_for(self.conf, self.program)))
        old.close("reconfigured")

    async def run(self) -> None:
        """Connect, send, reconnect, until `stop`.  An unexpected error costs a reconnect,
        never the publisher."""
        self._loop = evloop.running_loop()
        self._attach(self.client)
        while not self._stop.is_set():
            try:
                await self._connected_once()
            except Exception as exc:
                self.log(syslog.LOG_ERR, f"internal error, reconnecting: {exc!r}")
                self._reset_inflight()
                self.client.close("internal error")
                await self._stop.sleep(RETRY[1])

    async def _connected_once(self) -> None:
        client = self.client
        try:
            server = await client.connect()
        except ConnectError as exc:
            self._limited_log("connect", syslog.LOG_WARNING,
                              f"cannot connect to NATS: {exc}", 30.0)
            self._connect_delay = min(self._connect_delay * 2, 5.0)
            await self._stop.sleep(self._connect_delay)
            return
        self._connect_delay = RETRY[0] / 2
        self.log(syslog.LOG_INFO, f"connected to {server}")
        self._paused_until = 0.0
        self._failures_in_row = 0
        lost = client.lost
        with contextlib.suppress(NatsError):
            await self._skip_stored()
        self._fill()
        reason = await self._stop.until_lost(lost)
        if reason is not None:
            self._reset_inflight()
            self._limited_log("lost", syslog.LOG_WARNING, reason, 10.0)
            await self._stop.sleep(RETRY[0])

    async def wait_for_room(self) -> None:
        """For a reader that may wait (a regular file as input): until the queue has room."""
        while not self.room():
            self._space.clear()
            await self._space.wait()

    async def drain(self, timeout: float) -> bool:
        """Give queued records up to `timeout` seconds to be stored; True if none is left."""
        deadline = time.monotonic() + timeout
        while len(self.queue) and time.monotonic() < deadline:
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await evloop.wait_for(self._space.wait(), min(0.2, deadline - time.monotonic()))
        return not len(self.queue)

    async def stop(self) -> None:
        """Stop sending; what is not acknowledged stays queued (on disk) for the next run."""
        self._stopping = True
        self._stop.set()
        if self.client.connected:
            await self.client.drain_and_close(1.0)
        self._reset_inflight()
