"""Whole audit events for Python programs: from a log, from rotated logs, or live.

    from auditpy.jsonout.api import read_log, follow

    for event in read_log("/var/log/audit/audit.log", rotated=True):
        if event.type_name == "SYSCALL" and event.data["SYSCALL"].get("SYSCALL") == "execve":
            print(event.id, event.data["EXECVE"]["ARGV"], event.data["SYSCALL"].get("PPID"))

Each `AuditEvent` holds its records (type, raw body, typed fields) and ``data``, the event
as the JSON output writes it (laurel's layout, a dict), lineage included: the process table
is fed by the events read, in order.  Log files are grouped with the record timestamps as
the clock (as ausearch and libauparse do: a log holds no EOE records), so reading a file
twice gives the same events; a live stream is grouped with wall time.  Nothing here touches
/proc or the user database unless ``live=True`` asks for them.
"""

from __future__ import annotations

import os
import re
import select
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path

from auditpy.config.jsonout import JsonConfig
from auditpy.events.assemble import Event
from auditpy.events.encode import dumps, type_key
from auditpy.events.fields import parse_body
from auditpy.jsonout.decode import StreamDecoder
from auditpy.jsonout.pipeline import NO_ACCESS, JsonPipeline, ProcAccess
from auditpy.jsonout.sinks import Sink
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

    from auditpy.events.fields import Value

__all__ = ["AuditEvent", "AuditRecord", "follow", "log_files", "read_lines", "read_log"]

READ_SIZE = 1 << 16


@dataclass(frozen=True)
class AuditRecord:
    type: int
    #: the text after ``audit(...): ``
    raw: bytes

    @property
    def type_name(self) -> str:
        return type_key(self.type)

    @cached_property
    def fields(self) -> list[tuple[str, Value]]:
        """Typed fields in record order (``int``, ``bytes``, None...; see events.fields)."""
        return parse_body(self.type, self.raw)

    def get(self, name: str, default: Value = None) -> Value:
        for key, value in self.fields:
            if key == name:
                return value
        return default


@dataclass
class AuditEvent:
    #: ``SEC.MSEC:SERIAL``
    id: str
    node: str | None
    records: list[AuditRecord]
    #: None for a complete event, else why it was closed without its end
    incomplete: str | None
    #: the event in the JSON output's layout
    data: dict[str, Any] = field(repr=False)

    @property
    def timestamp(self) -> float:
        head = self.id.split(":", 1)[0]
        return float(head) if head else 0.0

    @property
    def serial(self) -> int:
        tail = self.id.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    @property
    def type_name(self) -> str:
        """The type of its first record (SYSCALL for a syscall event)."""
        return self.records[0].type_name if self.records else ""

    def record(self, type_name: str) -> AuditRecord | None:
        for record in self.records:
            if record.type_name == type_name:
                return record
        return None

    def json(self) -> str:
        return dumps(self.data)


class _NullSink(Sink):
    def describe(self) -> str:
        return "(none)"

    def write(self, lines: list[bytes]) -> None:
        pass


def _event(event: Event, data: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        event.eid,
        event.node,
        [AuditRecord(t, b) for t, b in event.records if t != 1320],
        event.incomplete,
        data,
    )


def _pipeline(config: JsonConfig | None, live: bool) -> JsonPipeline:
    return JsonPipeline(
        config or JsonConfig(translate_universal=True, translate_userdb=live),
        clock=time.monotonic if live else None,
        sink=_NullSink(),
        access=ProcAccess() if live else NO_ACCESS,
        seed=live,
    )


def _events(pipeline: JsonPipeline, events: Sequence[Event]) -> Iterator[AuditEvent]:
    for event in events:
        data = pipeline.event_object(event)
        if data is not None:
            yield _event(event, data)


def read_lines(lines: Iterable[bytes], *, config: JsonConfig | None = None
               ) -> Iterator[AuditEvent]:
    """Events of log lines (or string-format records) in order, grouped by record time."""
    pipeline = _pipeline(config, live=False)
    for line in lines:
        yield from _events(pipeline, pipeline.assembler.add_line(line))
    yield from _events(pipeline, pipeline.assembler.flush())


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and its rotated generations, oldest first: path.N ... path.1, path."""
    base = Path(path)
    numbered = []
    pattern = re.compile(re.escape(base.name) + r"\.([0-9]+)\Z")
    for entry in base.parent.iterdir() if base.parent.exists() else []:
        m = pattern.match(entry.name)
        if m is not None:
            numbered.append((int(m.group(1)), entry))
    out = [p for _, p in sorted(numbered, reverse=True)]
    if base.exists():
        out.append(base)
    return out


def _file_lines(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            yield from f


def read_log(path: str | os.PathLike[str], *, rotated: bool = False,
             config: JsonConfig | None = None) -> Iterator[AuditEvent]:
    """Events of an audit log; with `rotated`, of its rotated files too, oldest first (an
    event cut by a rotation is whole again)."""
    paths = log_files(path) if rotated else [Path(path)]
    return read_lines(_file_lines(paths), config=config)


def follow(source: str | os.PathLike[str] | IO[bytes] | int, *,
           config: JsonConfig | None = None, idle: float | None = None
           ) -> Iterator[AuditEvent]:
    """Events of a live dispatcher stream, string or binary format: a UNIX socket path
    (pyaudispd's ``builtin_af_unix``), a binary file object, or a file descriptor (stdin
    of a plugin).  Events are grouped with wall time, so one whose EOE never comes is
    handed out after ``end_of_event_timeout``; /proc and the user database are used as the
    JSON output uses them.  Stops at end of input, or after `idle` seconds without any."""
    sock: socket.socket | None = None
    if isinstance(source, int):
        fd = source
    elif isinstance(source, (str, os.PathLike)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.connect(os.fspath(source))
        fd = sock.fileno()
    else:
        fd = source.fileno()
    pipeline = _pipeline(config, live=True)
    decoder = StreamDecoder()
    last = time.monotonic()
    try:
        while True:
            deadline = pipeline.next_deadline()
            now = time.monotonic()
            timeouts = [t for t in (
                None if deadline is None else deadline - now,
                None if idle is None else last + idle - now,
            ) if t is not None]
            wait = max(0.0, min(timeouts)) if timeouts else None
            readable, _, _ = select.select([fd], [], [], wait)
            if readable:
                data = os.read(fd, READ_SIZE)
                if not data:
                    break
                last = time.monotonic()
                for msg_type, payload in decoder.feed(data):
                    completed = (pipeline.assembler.add_line(payload) if msg_type is None
                                 else pipeline.assembler.add_payload(msg_type, payload))
                    yield from _events(pipeline, completed)
            elif idle is not None and time.monotonic() - last >= idle:
                break
            yield from _events(pipeline, pipeline.assembler.expire())
            pipeline.forget_dead_when_due(time.monotonic())
        for _t, line in decoder.rest():
            yield from _events(pipeline, pipeline.assembler.add_line(line))
        yield from _events(pipeline, pipeline.assembler.flush())
    finally:
        if sock is not None:
            sock.close()
