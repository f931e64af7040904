"""The delivery core of pyaudisp-remote: which record goes out when, and what an answer means.

Everything that decides delivery lives here, as one sans-I/O state machine: the records
waiting (a mirror of the queue), the frames in flight on the connection, their sequence
numbers and the in-order matching of replies, refused records kept at the head, draining a
connection after an error reply, heartbeats, reply and write deadlines, failure counting and
the retry rules, the ``*_action`` outcomes, suspension, and when the plugin may exit.

It does no I/O and reads no clock but the one it is given: the plugin (`plugin.py`) feeds it
*events* (`start`, `records_queued`, `connected`, `connect_failed`, `data_received`,
`peer_closed`, `connection_lost`, `written`, `writable`, `closed`, `tick`, `overflow`,
`queue_error`, `input_ended`, `reload`, `resume`, `terminate`) and carries out the
*decisions* each event returns, in order (`Connect`, `Send`, `Close`, `Pop`, `Requeue`,
`Sync`, `Log`, `Exec`, `RunInit`, `Exit`); `deadline` says when to call `tick` next.  So the
retry, ack and reordering rules are unit-tested exhaustively, with hypothesis over random
orders of replies, disconnects and timer expiries, instead of through sockets and sleeps
(issue #9).

The rules, which follow Debian's audisp-remote 3.0.9 where it has one:

* records are pipelined: up to `WINDOW` frames are in flight and replies come in order; a
  reply for any other sequence number loses sync and ends the connection;
* a try fails when a connection cannot be made or ends in error; the first retry is at
  once, later ones wait ``network_retry_time``; ``network_failure_action`` runs after
  ``max_tries_per_record`` tries or when the oldest record has waited
  ``max_time_per_record`` seconds since it was first sent (not since the connection was
  made); in forward mode the record then stays queued whatever the action says;
* after an error reply (DISKFULL, DISKERROR, ...) nothing more is sent on the connection,
  but the replies to frames already in flight are still read, so records the server did
  store are not sent again; a refused record that is kept while later ones were stored is
  moved behind them (`Requeue`, the only reordering ever done);
* after a disconnect every unacknowledged record is sent again, in queue order, before
  newer ones; sequence numbers keep counting across connections and skip 0 (the id of
  ENDING);
* in forward mode a record goes out only once it is fsynced (`Sync`), at most `SYNC_DELAY`
  after it was queued, or at once when the window has room that only it could fill.
"""

from __future__ import annotations

import collections
import enum
import syslog
from collections.abc import Callable, Sequence
from typing import Final

from auditpy.audisp_remote.actions import ActionPolicy
from auditpy.audisp_remote.log import RateLimit
from auditpy.config.remote_conf import RemoteConfig
from auditpy.proto.remote import (
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
from auditpy.structs import dataclass, field

#: Frames in flight at once.  Large enough to keep a loopback or LAN link busy while the
#: server writes each record; small, because after a crash or a lost connection these are
#: the records that may reach the server twice.
WINDOW: Final = 128
#: Forward mode: how soon records queued while nothing asks for them are fsynced.
SYNC_DELAY: Final = 0.05
#: The overflow action runs at most once per this many seconds (every loss is counted).
OVERFLOW_REPORT_EVERY: Final = 1.0


def next_seq(seq: int) -> int:
    """The sequence number after `seq`: 0 is the id of ENDING, so it is never used."""
    return seq + 1 if seq < MAX_SEQ else 1


# --------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection to the configured server now; report `connected` or
    `connect_failed` (with a reason) when the attempt is over."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write `data` on the connection, then report `written` (whether the transport now
    holds back writes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection.  `abort`: drop it at once (it failed).  Otherwise close it
    gracefully and report `closed` once it is closed (or given up on)."""

    abort: bool


@dataclass(frozen=True, slots=True)
class Pop:
    """Remove `count` records from the head of the queue: acknowledged by the server
    (`acked`), or dropped because an action said so."""

    count: int
    acked: bool = True


@dataclass(frozen=True, slots=True)
class Requeue:
    """Move the first `count` records (refused, kept) behind the others, durably: append
    copies, sync, then remove them from the head."""

    count: int


@dataclass(frozen=True, slots=True)
class Sync:
    """Make every queued record durable (forward mode's fsync)."""


@dataclass(frozen=True, slots=True)
class Log:
    priority: int
    message: str


@dataclass(frozen=True, slots=True)
class Exec:
    """Run the ``exec`` helper `path` with `argument`."""

    path: str
    argument: str


@dataclass(frozen=True, slots=True)
class RunInit:
    """Ask init for runlevel `level` (the ``single`` and ``halt`` actions)."""

    level: str


@dataclass(frozen=True, slots=True)
class Exit:
    """Stop the plugin with this exit status (the reason was logged just before)."""

    code: int


Decision = Connect | Send | Close | Pop | Requeue | Sync | Log | Exec | RunInit | Exit


# --------------------------------------------------------------------------------------
# State


class End(enum.Enum):
    """Why a connection ended, which decides how soon and whether to reconnect."""

    ERROR = "error"  # network or protocol failure: a failed try for the oldest record
    REFUSED = "refused"  # an error reply; its action already ran; pause before retrying
    ENDING = "ending"  # the server is shutting down
    CONTROL = "control"  # reload, suspend: reconnect (or not) at once
    IDLE = "idle"  # the server closed a connection that had nothing outstanding


class Phase(enum.Enum):
    IDLE = "idle"  # no connection; connect when there is something to send
    CONNECTING = "connecting"  # a Connect is being carried out
    CONNECTED = "connected"
    CLOSING = "closing"  # a graceful Close is being carried out
    WAITING = "waiting"  # between tries (network_retry_time)


@dataclass(eq=False)
class _InFlight:
    seq: int
    sent_at: float
    heartbeat: bool


@dataclass(eq=False)
class _Connection:
    """One connection and the frames outstanding on it."""

    peer: str
    last_activity: float
    reader: FrameReader = field(default_factory=FrameReader)
    #: Frames without a reply yet, oldest first; replies come in order.
    pending: collections.deque[_InFlight] = field(default_factory=collections.deque)
    #: Records from the queue head in flight on this connection.
    records: int = 0
    #: Refused records left at the queue head while draining (not dequeued).
    kept: int = 0
    #: Set (to the reason) after an error reply: nothing more is sent, and the connection
    #: closes once the replies to what is in flight are in.
    draining: str = ""
    end: End | None = None
    reason: str = ""
    #: A Send was decided and its `written` report has not come yet.
    writing: bool = False
    #: The transport holds back writes (since `blocked_at`) until `writable`.
    blocked: bool = False
    blocked_at: float = 0.0

    def end_with(self, end: End, reason: str) -> None:
        """The first reason wins: later ones are consequences."""
        if self.end is None:
            self.end = end
            self.reason = reason


class Delivery:
    """The sans-I/O delivery core; see the module docstring for the contract.

    Every event method returns the decisions to carry out, in order.  The caller must carry
    them out before feeding the next event, and must not feed events from a connection the
    core closed (or that it never reported as connected).
    """

    def __init__(self, config: RemoteConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.policy = ActionPolicy()
        self._limit = RateLimit(clock)
        self._out: list[Decision] = []
        #: The queue as the plugin holds it once every decision so far is carried out.
        self._queue: collections.deque[bytes] = collections.deque()
        #: How many records at the tail of `_queue` are not yet durable (forward mode).
        self._unsynced = 0
        self._durable = False
        self._sync_at: float | None = None
        self._phase = Phase.IDLE
        self._conn: _Connection | None = None
        #: How the connection being closed gracefully ended.
        self._closing: tuple[End, str] | None = None
        #: The server the Connect being carried out goes to (a reload may change the
        #: configured one meanwhile), and whether a reload came while it was under way.
        self._connecting_to = ""
        self._stale_connect = False
        self._retry_at: float | None = None
        self._startup = True
        self._seq = 0
        self._suspended = False
        self._remote_ended = False
        self._exiting = False
        self._failures = 0
        self._failing_since = 0.0
        self._attempt_started = 0.0
        #: When the oldest record was first sent (or became the oldest while in flight):
        #: max_time_per_record counts from here, not from when the connection was made.
        self._head_since: float | None = None
        self._input_done = False
        self._bad_input = False
        self._last_progress = clock()
        self._overflow_pending = 0
        self._overflow_reported: float | None = None
        self.received = 0
        self.sent = 0
        self.acked = 0
        self.dropped = 0

    # ---- what the plugin may ask

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def suspended(self) -> bool:
        return self._suspended

    @property
    def exiting(self) -> bool:
        return self._exiting

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Records (not heartbeats) sent on the live connection and not answered yet."""
        return self._conn.records if self._conn is not None else 0

    @property
    def frames_in_flight(self) -> int:
        return len(self._conn.pending) if self._conn is not None else 0

    def state_line(self) -> str:
        conn = self._conn
        return (
            f"state: server={self.config.peer} mode={self.config.mode} "
            f"queue_size={len(self._queue)} in_flight={self.in_flight} "
            f"connected={'yes' if conn else 'no'} "
            f"suspended={'yes' if self._suspended else 'no'} "
            f"remote_ended={'yes' if self._remote_ended else 'no'} "
            f"transport_ok={'yes' if conn and conn.end is None else 'no'} "
            f"received={self.received} sent={self.sent} acked={self.acked} "
            f"dropped={self.dropped}"
        )

    def deadline(self) -> float | None:
        """When `tick` must be called next (by this core's clock), or None."""
        if self._exiting:
            return None
        times: list[float] = []
        if self._sync_at is not None:
            times.append(self._sync_at)
        if self._input_done:
            times.append(self._last_progress + self._drain_limit())
        if self._phase is Phase.WAITING and self._retry_at is not None:
            times.append(self._retry_at)
        conn = self._conn
        if self._phase is Phase.CONNECTED and conn is not None and conn.end is None:
            cfg = self.config
            if conn.blocked:
                times.append(conn.blocked_at + cfg.max_time_per_record)
            elif conn.writing:
                pass
            elif conn.pending:
                times.append(conn.pending[0].sent_at + cfg.max_time_per_record)
            elif cfg.heartbeat_timeout and cfg.format == "managed":
                times.append(conn.last_activity + cfg.heartbeat_timeout)
        return min(times) if times else None

    # ---- events

    def use_queue(self, records: Sequence[bytes], *, durable: bool) -> list[Decision]:
        """The queue the plugin opened: the records it already holds (recovered from disk,
        durable) and whether it survives a restart.  Before `start`."""
        self._queue.extend(records)
        self._durable = durable
        return self._take()

    def start(self) -> list[Decision]:
        """Connect at once, even with nothing to send: a server that cannot be reached is
        reported at start (startup_failure_action), not with the first record."""
        self._pump()
        return self._take()

    def records_queued(self, records: Sequence[bytes]) -> list[Decision]:
        """`records` were appended to the queue (in forward mode: written, not fsynced)."""
        self._queue.extend(records)
        self.received += len(records)
        if self._durable:
            self._unsynced += len(records)
            if self._sync_at is None:
                self._sync_at = self.clock() + SYNC_DELAY
        self._pump()
        return self._take()

    def connected(self) -> list[Decision]:
        if self._phase is Phase.CONNECTING and not self._exiting:
            self._startup = False
            conn = self._conn = _Connection(self._connecting_to, self.clock())
            self._phase = Phase.CONNECTED
            self._remote_ended = False
            self._log(syslog.LOG_INFO, f"connected to {conn.peer}")
            if self._stale_connect:
                conn.end_with(End.CONTROL, "configuration reloaded")
            self._pump()
        return self._take()

    def connect_failed(self, reason: str) -> list[Decision]:
        if self._phase is Phase.CONNECTING and not self._exiting:
            self._phase = Phase.IDLE
            message = f"cannot connect to {self._connecting_to}: {reason}"
            if self._startup:
                self._startup = False
                self._act("startup_failure_action", message)
            self._failure(message)
            self._pump()
        return self._take()

    def data_received(self, data: bytes) -> list[Decision]:
        conn = self._live()
        if conn is None or self.config.format == "ascii":
            return self._take()  # the ascii protocol has no replies: whatever comes is ignored
        try:
            frames = conn.reader.feed(data)
        except ProtocolError as exc:
            self._replies(conn, exc.frames)
            message = f"protocol error from {conn.peer}: {exc.reason}; closing the connection"
            self._log(syslog.LOG_ERR, message)
            conn.end_with(End.ERROR, message)
        else:
            self._replies(conn, frames)
        self._pump()
        return self._take()

    def peer_closed(self) -> list[Decision]:
        """The server closed its side (EOF)."""
        conn = self._live()
        if conn is not None:
            self._eof(conn)
            self._pump()
        return self._take()

    def connection_lost(self, error: str | None) -> list[Decision]:
        """The connection is gone: with `error` (its reason), or cleanly (as EOF)."""
        conn = self._live()
        if conn is not None:
            if error is not None:
                conn.end_with(End.ERROR, f"connection to {conn.peer} lost: {error}")
            else:
                self._eof(conn)
            self._pump()
        return self._take()

    def written(self, blocked: bool) -> list[Decision]:
        """The last Send was handed to the transport; `blocked`: it now holds back writes."""
        conn = self._live()
        if conn is not None and conn.writing:
            conn.writing = False
            if blocked:
                conn.blocked = True
                conn.blocked_at = self.clock()
            else:
                self._write_done(conn)
            self._pump()
        return self._take()

    def writable(self) -> list[Decision]:
        """The transport takes writes again."""
        conn = self._live()
        if conn is not None and conn.blocked:
            conn.blocked = False
            self._write_done(conn)
            self._pump()
        return self._take()

    def closed(self) -> list[Decision]:
        """The graceful Close is done."""
        if self._phase is Phase.CLOSING and self._closing is not None:
            end, reason = self._closing
            self._closing = None
            self._phase = Phase.IDLE
            if not self._exiting:
                self._after_session(end, reason)
                self._pump()
        return self._take()

    def tick(self) -> list[Decision]:
        """Time passed: carry out whatever fell due (sync, retry, timeouts, heartbeat,
        the end of draining after EOF).  Harmless when nothing is due."""
        if self._exiting:
            return self._take()
        now = self.clock()
        if self._sync_at is not None and now >= self._sync_at:
            self._sync()
        if self._input_done and now - self._last_progress >= self._drain_limit():
            self._finish_input()
            return self._take()
        if self._phase is Phase.WAITING and self._retry_at is not None and now >= self._retry_at:
            self._phase = Phase.IDLE
            self._retry_at = None
        self._pump()
        return self._take()

    def overflow(self, count: int) -> list[Decision]:
        """`count` records were dropped because the queue was full.  Every loss is counted,
        but the action runs at most once a second: a flood must not become a flood of syslog
        messages (or of helpers)."""
        self.dropped += count
        self._overflow_pending += count
        now = self.clock()
        last = self._overflow_reported
        if last is None or now - last >= OVERFLOW_REPORT_EVERY:
            self._overflow_reported = now
            lost, self._overflow_pending = self._overflow_pending, 0
            self._act("overflow_action", f"queue is full ({self.config.queue_depth} records); "
                      f"{lost} records dropped")
        self._pump()
        return self._take()

    def queue_error(self, message: str, lost: int = 0) -> list[Decision]:
        """The queue failed (append, sync, removal); `lost` records never made it in."""
        self.dropped += lost
        self._act("queue_error_action", message)
        self._pump()
        return self._take()

    def input_ended(self, bad: bool = False) -> list[Decision]:
        """stdin is at its end (`bad`: it stopped at corrupt input).  The plugin exits once
        the queue is empty, or when sending has made no progress for as long as every try
        of a record could take."""
        if not self._exiting:
            self._input_done = True
            self._bad_input = bad
            self._last_progress = self.clock()
            if not self._queue or self._suspended:
                self._finish_input()
            else:
                self._pump()
        return self._take()

    def act(self, setting: str, message: str) -> tuple[bool, list[Decision]]:
        """Run the action configured for `setting` now; True if the record concerned may
        be dequeued."""
        dequeue = self._act(setting, message)
        self._pump()
        return dequeue, self._take()

    def reload(self, config: RemoteConfig) -> list[Decision]:
        """SIGHUP with a configuration that was accepted: it takes effect on a new
        connection, and a suspended plugin resumes."""
        if not self._exiting:
            self.config = config
            self.policy.forget_warnings()
            self._suspended = False
            self._failures = 0
            if self._conn is not None:
                self._conn.end_with(End.CONTROL, "configuration reloaded")
            # a connection being made goes to the old server: use it for nothing
            self._stale_connect = self._phase is Phase.CONNECTING
            self._log(syslog.LOG_INFO, f"configuration reloaded; server {config.peer}")
            self._interrupt()
            self._pump()
        return self._take()

    def resume(self) -> list[Decision]:
        """SIGUSR2: resume a suspended plugin, and retry at once."""
        if not self._exiting:
            if self._suspended:
                self._log(syslog.LOG_NOTICE, "SIGUSR2: resuming remote logging")
            self._suspended = False
            self.policy.forget_warnings()
            self._failures = 0
            self._interrupt()
            self._pump()
        return self._take()

    def terminate(self, message: str, code: int = 0) -> list[Decision]:
        self._finish(code, message)
        return self._take()

    # ---- internals: output

    def _take(self) -> list[Decision]:
        out, self._out = self._out, []
        return out

    def _log(self, priority: int, message: str) -> None:
        self._out.append(Log(priority, message))

    def _finish(self, code: int, why: str) -> None:
        if self._exiting:
            return
        self._exiting = True
        self._log(syslog.LOG_INFO if code == 0 else syslog.LOG_ERR, why)
        self._out.append(Exit(code))

    def _act(self, setting: str, message: str) -> bool:
        action = getattr(self.config, setting)
        outcome = self.policy.decide(setting, action, message)
        if outcome.stop:
            self._finish(1, outcome.log[1] if outcome.log else message)
            return outcome.dequeue
        if outcome.log is not None:
            self._log(*outcome.log)
        if outcome.run is not None:
            self._out.append(Exec(*outcome.run))
        if outcome.runlevel is not None:
            self._out.append(RunInit(outcome.runlevel))
        if outcome.suspend:
            self._suspended = True
            if self._conn is not None:
                self._conn.end_with(End.CONTROL, "suspended")
        return outcome.dequeue

    def _interrupt(self) -> None:
        """Signals cut a pause between tries short; new records do not, so a steady stream
        of them cannot turn retries into a busy loop."""
        if self._phase is Phase.WAITING:
            self._phase = Phase.IDLE
            self._retry_at = None

    # ---- internals: the connection's life

    def _live(self) -> _Connection | None:
        conn = self._conn
        if conn is None or conn.end is not None or self._exiting:
            return None
        return conn

    def _eof(self, conn: _Connection) -> None:
        if conn.reader.buffered:
            conn.end_with(End.ERROR, f"{conn.peer} closed the connection in the middle of a "
                          "frame")
        elif conn.pending and self.config.format == "managed":
            conn.end_with(End.ERROR, f"{conn.peer} closed the connection with "
                          f"{len(conn.pending)} replies outstanding")
        else:
            conn.end_with(End.IDLE, f"{conn.peer} closed the connection")

    def _pump(self) -> None:
        """Move on as far as the state allows: end a connection that ended, keep a live one
        busy (window, timeouts, heartbeats), or connect when there is work."""
        while not self._exiting:
            conn = self._conn
            if conn is not None:
                if conn.end is None and self._suspended:
                    conn.end_with(End.CONTROL, "suspended")
                if conn.end is None:
                    self._serve(conn)
                if conn.end is None:
                    return
                self._end_session(conn)
                continue
            if self._phase is not Phase.IDLE or self._suspended:
                return
            if not self._queue and not self._startup:
                return
            self._attempt_started = self.clock()
            self._phase = Phase.CONNECTING
            self._connecting_to = self.config.peer
            self._stale_connect = False
            self._out.append(Connect())
            return

    def _end_session(self, conn: _Connection) -> None:
        assert conn.end is not None
        self._conn = None
        if conn.end is End.ERROR:
            self._out.append(Close(abort=True))
            self._phase = Phase.IDLE
            self._after_session(conn.end, conn.reason)
        else:
            self._out.append(Close(abort=False))
            self._phase = Phase.CLOSING
            self._closing = (conn.end, conn.reason)

    def _after_session(self, end: End, reason: str) -> None:
        if end is End.ERROR:
            if self.config.format == "ascii":
                self._finish(1, f"{reason} (format = ascii: exiting)")
                return
            self._failure(reason)
        elif end is End.REFUSED:
            self._pause(self.config.network_retry_time)
        elif end in (End.ENDING, End.IDLE):
            self._log(syslog.LOG_INFO, reason)

    def _pause(self, delay: float) -> None:
        if delay > 0 and not self._exiting:
            self._phase = Phase.WAITING
            self._retry_at = self.clock() + delay

    def _failure(self, reason: str) -> None:
        """A try failed: retry at once the first time, then every network_retry_time;
        after max_tries_per_record tries or max_time_per_record seconds, the action."""
        cfg = self.config
        if self._limit.allow("failure:" + reason):
            self._log(syslog.LOG_WARNING, reason)
        if not self._queue:
            return
        now = self.clock()
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
            dequeue = self._act(
                "network_failure_action",
                f"cannot deliver a record to {cfg.peer} after {tries} tries: {reason}",
            )
            # forward mode promises durability: an unreachable server never costs a record,
            # it waits on disk whatever the action (the C plugin would drop it here).
            if dequeue and cfg.mode != "forward":
                self._drop_head("network_failure_action")
            self._pause(cfg.network_retry_time)
        elif self._failures > 1:
            self._pause(cfg.network_retry_time)

    # ---- internals: sending

    def _serve(self, conn: _Connection) -> None:
        """Fill the window, or else watch the deadlines of an idle connection."""
        if conn.writing:
            return
        cfg = self.config
        now = self.clock()
        if conn.blocked:
            if now - conn.blocked_at >= cfg.max_time_per_record:
                conn.end_with(End.ERROR, f"sending to {conn.peer} timed out")
            return
        if self._fill(conn, now):
            return
        if conn.pending:
            oldest = conn.pending[0]
            if now - oldest.sent_at >= cfg.max_time_per_record:
                what = "heartbeat" if oldest.heartbeat else "record"
                conn.end_with(End.ERROR, f"no reply from {conn.peer} for a {what} within "
                              f"{cfg.max_time_per_record} s")
            return
        if (cfg.heartbeat_timeout and cfg.format == "managed"
                and now - conn.last_activity >= cfg.heartbeat_timeout):
            self._seq = next_seq(self._seq)
            conn.pending.append(_InFlight(self._seq, now, True))
            self._send(conn, pack_frame(TYPE_HEARTBEAT, self._seq), now)

    def _send(self, conn: _Connection, data: bytes, now: float) -> None:
        conn.writing = True
        conn.last_activity = now
        self._out.append(Send(data))

    def _fill(self, conn: _Connection, now: float) -> bool:
        """Send as many queued records as the window allows; True if anything was sent.
        In forward mode records go out only once fsynced."""
        if conn.draining:
            return False
        queue = self._queue
        room = WINDOW - len(conn.pending)
        sendable = len(queue) - self._unsynced
        if self._unsynced and sendable - conn.records < room:
            self._sync()  # the window has room that only unsynced records could fill
            sendable = len(queue)
        if conn.records >= sendable:
            return False
        if self.config.format == "ascii":
            if conn.records:
                return False
            count = min(sendable, WINDOW)
            conn.records = count
            self.sent += count
            self._send(conn, b"".join([queue[i] + b"\n" for i in range(count)]), now)
            return True
        if room <= 0:
            return False
        if conn.records == 0 and self._head_since is None:
            self._head_since = now
        start = conn.records
        stop = min(sendable, start + room)
        parts = []
        seq = self._seq
        pending = conn.pending
        for index in range(start, stop):
            seq = next_seq(seq)
            parts.append(pack_frame(TYPE_MESSAGE, seq, queue[index]))
            pending.append(_InFlight(seq, now, False))
        self._seq = seq
        conn.records = stop
        self.sent += stop - start
        self._send(conn, b"".join(parts), now)
        return True

    def _write_done(self, conn: _Connection) -> None:
        """The ascii protocol has no replies: a record counts as delivered once the
        transport took it."""
        if self.config.format == "ascii" and conn.records:
            count, conn.records = conn.records, 0
            self._acked(count)

    def _sync(self) -> None:
        self._sync_at = None
        if self._unsynced:
            self._unsynced = 0  # even if it fails: retrying cannot make them more durable
            self._out.append(Sync())

    # ---- internals: replies

    def _replies(self, conn: _Connection, frames: list[Frame]) -> None:
        acked = 0

        def flush() -> None:
            nonlocal acked
            if acked:
                count, acked = acked, 0
                self._acked(count)

        for frame in frames:
            if conn.end is not None or self._exiting:
                break
            kind = frame.msg_type
            if kind == TYPE_ENDING:
                flush()
                self._remote_ended = True
                conn.end_with(End.ENDING, f"{conn.peer} is shutting down (ENDING)")
                self._act("remote_ending_action", f"{conn.peer} ended the connection")
                break
            if not is_reply(kind):
                conn.end_with(End.ERROR, f"{conn.peer} sent {type_name(kind)} frame instead "
                              "of a reply")
                self._log(syslog.LOG_ERR, conn.reason)
                break
            if not conn.pending or frame.seq != conn.pending[0].seq:
                expected = conn.pending[0].seq if conn.pending else None
                conn.end_with(End.ERROR, f"lost sync with {conn.peer}: {type_name(kind)} for "
                              f"sequence {frame.seq}, expected {expected}")
                self._log(syslog.LOG_ERR, conn.reason)
                break
            heartbeat = conn.pending.popleft().heartbeat
            conn.last_activity = self.clock()
            if is_error_reply(kind):
                flush()
                setting = {
                    TYPE_DISKFULL: "disk_full_action",
                    TYPE_DISKERROR: "disk_error_action",
                }.get(kind, "generic_error_action")
                message = f"{conn.peer} did not store a record: {type_name(kind)}"
                if frame.payload:
                    message += f" ({describe_payload(frame.payload)})"
                # Like the C plugin, stop using this connection; but first collect the
                # replies to what is already in flight, so records the server did store
                # are not sent (and stored) again.
                conn.draining = conn.draining or message
                if heartbeat:
                    self._act(setting, message)
                    continue
                conn.records -= 1
                if self._act(setting, message):
                    self._requeue_kept(conn)
                    self._drop_head(setting)
                else:
                    conn.kept += 1
                continue
            if not heartbeat and conn.kept:
                flush()
                self._requeue_kept(conn)
            if not heartbeat:
                acked += 1
                conn.records -= 1
            if kind != TYPE_ACK:
                flush()
                setting = "disk_low_action" if kind == TYPE_DISKLOW else "generic_warning_action"
                message = f"{conn.peer} reports {type_name(kind)}"
                if frame.payload:
                    message += f" ({describe_payload(frame.payload)})"
                if not is_warning_reply(kind):
                    message += " (unknown reply type, taken as stored)"
                self._act(setting, message)
        flush()
        if conn.draining and not conn.pending:
            conn.end_with(End.REFUSED, conn.draining)

    def _requeue_kept(self, conn: _Connection) -> None:
        """Refused records kept at the head must not block the removal of later records the
        server did store: move them behind the rest (the only reordering ever done)."""
        count, conn.kept = conn.kept, 0
        if not count:
            return
        self._queue.rotate(-count)
        self._unsynced = 0
        self._sync_at = None
        self._out.append(Requeue(count))
        self._log(syslog.LOG_NOTICE, f"{count} refused records will be retried after later "
                  f"ones that {conn.peer} stored")

    # ---- internals: the queue head

    def _acked(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()
        self._out.append(Pop(count))
        self.acked += count
        self._head_moved()
        self._failures = 0
        self.policy.forget_warnings()
        self._last_progress = self.clock()
        self._after_pop()

    def _drop_head(self, why: str) -> None:
        if not self._queue:
            return
        if len(self._queue) == self._unsynced:
            self._sync()  # only a durable record can be removed from a durable queue
        self._queue.popleft()
        self._out.append(Pop(1, acked=False))
        self.dropped += 1
        self._log(syslog.LOG_WARNING, f"a record was dropped ({why})")
        self._head_moved()
        self._after_pop()

    def _head_moved(self) -> None:
        conn = self._conn
        self._head_since = self.clock() if conn is not None and conn.records else None

    def _after_pop(self) -> None:
        if self._input_done and not self._queue:
            self._finish_input()

    # ---- internals: the end of input

    def _drain_limit(self) -> float:
        cfg = self.config
        return float(cfg.max_tries_per_record * cfg.max_time_per_record + cfg.network_retry_time)

    def _finish_input(self) -> None:
        left = len(self._queue)
        if self._bad_input:
            self._finish(1, f"exiting after bad input; {left} records undelivered")
        elif not left:
            self._finish(0, "end of input; every record was delivered; exiting")
        elif self._durable:
            self._finish(0, f"end of input; {left} records stay in "
                         f"{self.config.queue_file} for the next start")
        else:
            self._finish(1, f"end of input; {left} records could not be delivered")
