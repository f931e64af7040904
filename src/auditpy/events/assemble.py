"""Records into whole events, as libauparse groups them: a sans-I/O state machine.

Records belong to one event when they share node, timestamp and serial (the
``audit(SEC.MSEC:SERIAL)`` text).  An event is complete

* at its EOE record;
* at once when its record is of a type that always ends an event (as libauparse 3.0.9
  decides: PROCTITLE, every type below 1300, AUDIT_KERNEL, the NetLabel types 1406-1419 and
  everything from 2100 on; in a live stream LOGIN waits for its EOE, see `is_last_record`);
* otherwise when ``end_of_event_timeout`` has passed since its first record.  The clock is
  injected: for a live stream it is wall time (so an event closes even while nothing else
  arrives); for a log file, where EOE is never written, it is the timestamp of the record
  being read, exactly as libauparse ages events (``event + timeout <= record``).

Records of different events may interleave freely.  Nothing is dropped without being
counted: a record that arrives after its event was completed becomes an event of its own
(``late``), an event closed by the timeout or at the end of input is marked incomplete, and
a line without a parsable header becomes an event of its own (``malformed``).  An EOE that
follows the record that already completed its event (PROCTITLE before EOE, as the kernel
sends them) is consumed, as libauparse consumes it.

Events come out as they complete (not held back in timestamp order, unlike libauparse, which
hands out the oldest event first and so holds every later one behind an incomplete event).
"""

from __future__ import annotations

from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Final, Protocol, TypeAlias

    class PayloadRecord(Protocol):
        """A dispatcher record (pyaudispd's Record has these)."""

        msg_type: int
        payload: bytes

    #: An event's key: its id, or (node, id) for records with a node name.
    _Key: TypeAlias = bytes | tuple[str, bytes]

__all__ = [
    "AUDIT_EOE",
    "Assembler",
    "AssemblerStats",
    "Event",
    "is_last_record",
    "split_line",
    "split_payload",
]

AUDIT_EOE: Final = 1320
AUDIT_PROCTITLE: Final = 1327
DEFAULT_TIMEOUT: Final = 2.0
#: Completed event ids remembered to recognise their EOE and late records, in two
#: generations of this many (the older is dropped when the newer is full). An event's EOE
#: follows its last record within the few events other CPUs interleave, so this is far more
#: than needed; bounded so that a flood of ids cannot grow it, and small because every id
#: held is resident memory. An EOE found past it is counted as an orphan, a late record
#: past it times out as incomplete instead of being marked late: nothing is lost.
DONE_MEMORY: Final = 1024

#: Incomplete reasons.
TIMEOUT: Final = "timeout"
END_OF_INPUT: Final = "end of input"
LATE: Final = "late"
MALFORMED: Final = "malformed"

_NAME_TO_TYPE: Final = {name: num for num, name in MSG_TYPE_NAMES.items()}


AUDIT_LOGIN: Final = 1006


def is_last_record(msg_type: int, live: bool = False) -> bool:
    """Whether a record of this type always ends its event, as libauparse 3.0.9 decides
    (its event builder: every type below 1300, PROCTITLE, EOE, AUDIT_KERNEL, the NetLabel
    types 1406-1419 and everything from 2100 on).

    `live`: in a dispatcher stream, LOGIN (1006) does not end its event: the kernel writes
    it inside a syscall, whose SYSCALL, PROCTITLE and EOE records follow; libauparse, made
    for logs (which hold no EOE), makes an event of the LOGIN record alone.
    """
    if live and msg_type == AUDIT_LOGIN:
        return False
    return (
        msg_type < 1300
        or msg_type in (AUDIT_PROCTITLE, AUDIT_EOE)
        or msg_type >= 2100
        or msg_type == 2000
        or 1406 <= msg_type <= 1419
    )


#: Whether a type ends its event, as a byte per type below 2100 (every type from 2100 on
#: does): a table lookup as cheap as a set's, without a set of two thousand int objects.
_LAST: Final = bytes(is_last_record(t) for t in range(2100))
_LAST_LIVE: Final = bytes(is_last_record(t, live=True) for t in range(2100))
_NO_EVENTS: Final[tuple[Event, ...]] = ()


@dataclass(slots=True)
class Event:
    """One event: its records in arrival order (EOE included when it ended the event)."""

    #: ``SEC.MSEC:SERIAL`` as the records write it ("" for a malformed line)
    eid: str
    #: the node name of ``node=NAME`` records, else None
    node: str | None
    #: (message type, body) per record; the body is the text after ``audit(...): ``
    records: list[tuple[int, bytes]]
    #: None when complete; otherwise why it was closed without its end (TIMEOUT,
    #: END_OF_INPUT, LATE, MALFORMED)
    incomplete: str | None = None
    #: clock value at the first record (for the timeout)
    started: float = 0.0

    @property
    def seconds(self) -> int:
        """The timestamp's whole seconds (0 for a malformed line)."""
        head = self.eid.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def serial(self) -> int:
        tail = self.eid.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch, with the milliseconds."""
        head = self.eid.split(":", 1)[0]
        try:
            return float(head)
        except ValueError:
            return 0.0

    def types(self) -> list[int]:
        return [t for t, _ in self.records]


@dataclass
class AssemblerStats:
    records: int = 0
    events: int = 0
    #: closed by end_of_event_timeout
    timed_out: int = 0
    #: closed by flush() at the end of input or at shutdown
    flushed: int = 0
    #: records that arrived after their event was complete (each made an event of its own)
    late: int = 0
    #: EOE records with no event to end (counted, nothing to write)
    orphan_eoe: int = 0
    #: lines without a parsable ``type=... msg=audit(...):`` header
    malformed: int = 0
    #: events open at most at once
    max_open: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def split_payload(payload: bytes) -> tuple[bytes, bytes] | None:
    """(id, body) of a dispatcher V0 payload ``audit(SEC.MSEC:SERIAL): body``."""
    if payload[:6] != b"audit(":
        return None
    close = payload.find(b")", 6)
    if close < 0:
        return None
    body_at = close + 3 if payload[close + 1 : close + 3] == b": " else close + 2
    return payload[6:close], payload[body_at:]


def split_line(line: bytes) -> tuple[str | None, int, bytes, bytes] | None:
    """(node, type, id, body) of a log line or string-format record
    ``[node=N ]type=NAME msg=audit(SEC.MSEC:SERIAL): body``; None if it has no such header.
    A trailing newline is not part of the body."""
    if line[-1:] == b"\n":
        line = line[:-1]
    node: str | None = None
    pos = 0
    if line[:5] == b"node=":
        space = line.find(b" ", 5)
        if space < 0:
            return None
        node = line[5:space].decode("utf-8", "surrogateescape")
        pos = space + 1
    if line[pos : pos + 5] != b"type=":
        return None
    space = line.find(b" ", pos + 5)
    if space < 0:
        return None
    name = line[pos + 5 : space].decode("ascii", "replace")
    msg_type = _NAME_TO_TYPE.get(name)
    if msg_type is None:
        if name.startswith("UNKNOWN[") and name.endswith("]") and name[8:-1].isdigit():
            msg_type = int(name[8:-1])
        else:
            return None
    if line[space + 1 : space + 5] != b"msg=":
        return None
    parts = split_payload(line[space + 5 :])
    if parts is None:
        return None
    return node, msg_type, parts[0], parts[1]


class Assembler:
    """Groups records into events.

    `add` takes one record and returns the events it completed (usually none or one);
    `expire` closes events older than the timeout; `flush` closes everything (end of input).
    With `clock` None the record timestamps are the clock (log files); otherwise `clock()`
    is called per record and by `expire` (live streams).
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] | None = None,
        *,
        manual: bool = False,
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        #: live time set by the caller (`set_time`, once per batch of records) instead of
        #: a clock call per record
        self.manual = manual
        #: types that end an event: a live stream waits for LOGIN's EOE, a log cannot
        self._last = _LAST_LIVE if (clock is not None or manual) else _LAST
        self.stats = AssemblerStats()
        #: open events by key: the id, or (node, id) for a record with a node name (no
        #: tuple per record for the usual stream without one)
        self._open: dict[_Key, Event] = {}
        #: keys of recently completed events, in two generations
        self._done: set[_Key] = set()
        self._done_before: set[_Key] = set()
        self._now = 0.0
        #: record time of the last ageing pass (nothing new can be stale at the same time)
        self._aged_at = -1.0

    @property
    def open_events(self) -> int:
        return len(self._open)

    def set_time(self, now: float) -> None:
        """The live time for the records that follow (manual clock)."""
        self._now = now

    def add(
        self, msg_type: int, eid: bytes, body: bytes, node: str | None = None
    ) -> Sequence[Event]:
        """One record; returns the events completed by it (in completion order)."""
        stats = self.stats
        stats.records += 1
        key: _Key = eid if node is None else (node, eid)
        record_time = False
        if self.manual:
            now = self._now
        elif self.clock is not None:
            now = self._now = self.clock()
        else:
            record_time = True
            head = eid.split(b".", 1)[0]
            now = float(head) if head.isdigit() else self._now
            self._now = now
        last = msg_type >= 2100 or self._last[msg_type]
        event = self._open.get(key)
        out: Sequence[Event] = _NO_EVENTS
        if event is None:
            done = key in self._done or key in self._done_before
            if msg_type == AUDIT_EOE:
                if not done:
                    stats.orphan_eoe += 1
                # Consumed before anything else happens (libauparse ages nothing on it).
                return out
            event = Event(
                eid.decode("ascii", "replace"),
                node,
                [(msg_type, body)],
                None,
                now,
            )
            if done:
                event.incomplete = LATE
                stats.late += 1
            if last:
                out = [event]
                self._complete(key)
            else:
                self._open[key] = event
                if len(self._open) > stats.max_open:
                    stats.max_open = len(self._open)
        else:
            event.records.append((msg_type, body))
            if last:
                del self._open[key]
                out = [event]
                self._complete(key)
        if record_time and self._open and now != self._aged_at:
            aged = self._aged(now)
            if aged:
                out = [*out, *aged]
        return out

    def add_payload(
        self, msg_type: int, payload: bytes, node: str | None = None
    ) -> Sequence[Event]:
        """A dispatcher V0 payload, or a V1 one (a whole line)."""
        if payload[:6] == b"audit(":
            close = payload.find(b")", 6)
            if close > 0:
                if payload[close + 1 : close + 3] == b": ":
                    return self.add(msg_type, payload[6:close], payload[close + 3 :], node)
                return self.add(msg_type, payload[6:close], payload[close + 2 :], node)
        line = split_line(payload)
        if line is None:
            return [self._malformed(payload)]
        node, msg_type, eid, body = line
        return self.add(msg_type, eid, body, node)

    def add_records(
        self, records: Iterable[PayloadRecord], node: str | None = None
    ) -> list[Event]:
        """Many dispatcher records at once (live streams): `add_payload` for each, in one
        loop, with one clock reading (the dispatcher's read is one instant)."""
        if self.clock is None and not self.manual:
            out: list[Event] = []
            for record in records:
                out.extend(self.add_payload(record.msg_type, record.payload, node))
            return out
        now = self._now if self.manual else self.clock() if self.clock is not None else 0.0
        self._now = now
        stats = self.stats
        open_ = self._open
        last_types = self._last
        completed: list[Event] = []
        count = 0
        for record in records:
            count += 1
            msg_type = record.msg_type
            payload = record.payload
            close = payload.find(b")", 6) if payload.startswith(b"audit(") else -1
            if close < 0:
                stats.records -= 1  # counted again by add_payload
                completed.extend(self.add_payload(msg_type, payload, node))
                continue
            eid = payload[6:close]
            body = payload[close + 3 :] if payload[close + 1 : close + 3] == b": " else (
                payload[close + 2 :]
            )
            key: _Key = eid if node is None else (node, eid)
            event = open_.get(key)
            last = msg_type >= 2100 or last_types[msg_type]
            if event is not None:
                event.records.append((msg_type, body))
                if last:
                    del open_[key]
                    completed.append(event)
                    self._complete(key)
                continue
            was_done = key in self._done or key in self._done_before
            if msg_type == AUDIT_EOE:
                if not was_done:
                    stats.orphan_eoe += 1
                continue
            event = Event(eid.decode("ascii", "replace"), node, [(msg_type, body)], None, now)
            if was_done:
                event.incomplete = LATE
                stats.late += 1
            if last:
                completed.append(event)
                self._complete(key)
            else:
                open_[key] = event
                if len(open_) > stats.max_open:
                    stats.max_open = len(open_)
        stats.records += count
        return completed

    def add_line(self, line: bytes) -> Sequence[Event]:
        """One log line or string-format record."""
        parts = split_line(line)
        if parts is None:
            return [self._malformed(line.rstrip(b"\n"))]
        node, msg_type, eid, body = parts
        return self.add(msg_type, eid, body, node)

    def _malformed(self, text: bytes) -> Event:
        self.stats.records += 1
        self.stats.malformed += 1
        self.stats.events += 1
        return Event("", None, [(0, text)], MALFORMED, self._now)

    def _complete(self, key: _Key) -> None:
        self.stats.events += 1
        done = self._done
        done.add(key)
        if len(done) >= DONE_MEMORY:
            self._done_before = done
            self._done = set()

    def _aged(self, now: float) -> list[Event]:
        """Record-time ageing (log files): events with start + timeout <= now."""
        self._aged_at = now
        return self.expire(now)

    def expire(self, now: float | None = None) -> list[Event]:
        """Close the events whose first record is `timeout` old (by the clock)."""
        if now is None:
            now = self.clock() if self.clock is not None and not self.manual else self._now
        out: list[Event] = []
        if self._open:
            limit = now - self.timeout
            stale = [k for k, e in self._open.items() if e.started <= limit]
            for k in stale:
                event = self._open.pop(k)
                event.incomplete = event.incomplete or TIMEOUT
                self.stats.timed_out += 1
                self._complete(k)
                out.append(event)
        return out

    def next_deadline(self) -> float | None:
        """When `expire` will next close something (clock units), None if nothing is open."""
        if not self._open:
            return None
        return min(e.started for e in self._open.values()) + self.timeout

    def flush(self) -> list[Event]:
        """Close every open event (end of input, shutdown), oldest first."""
        out: list[Event] = []
        events = sorted(self._open.items(), key=lambda kv: kv[1].started)
        self._open.clear()
        for k, event in events:
            event.incomplete = event.incomplete or END_OF_INPUT
            self.stats.flushed += 1
            self._complete(k)
            out.append(event)
        return out

    def feed_lines(self, lines: Iterable[bytes]) -> list[Event]:
        """Every event of `lines`, including those `flush` closes at the end."""
        out: list[Event] = []
        for line in lines:
            out.extend(self.add_line(line))
        out.extend(self.flush())
        return out
