"""From kernel records to log lines: which records are events, and the line format.

Pure functions and tables; the per-record hot path is `LineFormatter.format`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, repeat
from operator import itemgetter, ne

from auditpy.proto.msgtypes import MSG_TYPE_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Only the daemon builds an Enricher; the dispatcher, which needs type names from here,
    # does not load its tables.
    from auditpy.proto.enrich import Enricher

#: The longest record the kernel sends (its MAX_AUDIT_MESSAGE_LENGTH), and the largest payload
#: of a dispatcher or remote frame.
MAX_AUDIT_MESSAGE_LENGTH = 8970
#: Lines of this many characters or more are cut to it, as the C daemon does.
MAX_LINE = 8969
#: The payload limit: MAX_AUDIT_MESSAGE_LENGTH - 32, for lines without a node name.
LINE_PAYLOAD_LIMIT = MAX_AUDIT_MESSAGE_LENGTH - 32

#: End of a multi-record event; never written to the log, always dispatched.
AUDIT_EOE = 1320
#: The kernel's notice that a newer daemon replaced this one's registration.
AUDIT_REPLACE = 1329

DAEMON_START = 1200
DAEMON_END = 1201
DAEMON_ABORT = 1202
DAEMON_CONFIG = 1203
DAEMON_RECONFIG = 1204
DAEMON_ROTATE = 1205
DAEMON_RESUME = 1206
DAEMON_ACCEPT = 1207
DAEMON_CLOSE = 1208
DAEMON_ERR = 1209


def is_event(msg_type: int) -> bool:
    """Whether a message from the kernel is an event to log and dispatch.

    Control replies (status, rule and feature replies, acks) and the daemon range are not:
    the latter only ever comes from user space and must not be forged through the kernel.
    """
    if msg_type < 1000:
        return False
    if msg_type < 1100:
        return msg_type not in (1000, 1001, 1007, 1008, 1009, 1010) and not 1011 <= msg_type <= 1019
    if 1200 <= msg_type <= 1299:
        return False
    return msg_type != AUDIT_REPLACE


#: The non-event types from 1000 on (every type below is one too): a set of a thousand
#: more would be resident memory in both daemons for types no batch holds.
_NOT_EVENTS_FROM_1000 = frozenset(t for t in range(1000, 1400) if not is_event(t))


def all_events(types: list[int]) -> bool:
    """Whether every type of a batch is an event (the usual case), by two passes in C
    instead of is_event per record."""
    return not types or (min(types) >= 1000 and _NOT_EVENTS_FROM_1000.isdisjoint(types))


def type_name(msg_type: int) -> str:
    return MSG_TYPE_NAMES.get(msg_type) or f"UNKNOWN[{msg_type}]"


def clean_payload(payload: bytes, limit: int = LINE_PAYLOAD_LIMIT) -> bytes:
    """The payload as it goes on one line: cut at the limit, newlines to spaces, and one
    trailing space removed (the kernel ends some records with one)."""
    if len(payload) > limit:
        payload = payload[:limit]
    if b"\n" in payload:
        payload = payload.replace(b"\n", b" ")
    if payload[-1:] == b" ":
        payload = payload[:-1]
    return payload


class LineFormatter:
    """Formats records into log lines; one instance per configuration.

    Line prefixes (node and type name) are cached per type so that the hot path is a dict
    lookup and one concatenation.
    """

    def __init__(self, node: str | None = None, enricher: Enricher | None = None) -> None:
        self.node_prefix = f"node={node} ".encode() if node else b""
        self.limit = LINE_PAYLOAD_LIMIT if not node else LINE_PAYLOAD_LIMIT + 64
        self.enricher = enricher
        self._prefix = _Prefixes(self.node_prefix)

    def prefix(self, msg_type: int) -> bytes:
        return self._prefix[msg_type]

    def format(self, msg_type: int, payload: bytes) -> bytes:
        """The log line for one record, with its newline."""
        prefix = self._prefix[msg_type]
        if b"\n" in payload or payload[-1:] == b" " or len(payload) > self.limit:
            payload = clean_payload(payload, self.limit)
        if not payload:
            payload = b"lost"
        line = prefix + payload
        if len(line) >= MAX_LINE:
            line = line[:MAX_LINE]
        if self.enricher is not None:
            body_start = payload.find(b"): ")
            body = payload[body_start + 3 :] if body_start >= 0 else b""
            # The enricher knows the C daemon's buffer limits: it appends what fits.
            line += self.enricher.suffix(msg_type, body, raw_len=len(line))
        return line + b"\n"

    def format_batch(self, records: list[tuple[int, bytes]]) -> list[bytes]:
        """Lines for the records that go to disk (EOE never does)."""
        fmt = self.format
        return [fmt(t, p) for t, p in records if t != AUDIT_EOE]

    def join_lines(self, types: Sequence[int], payloads: Sequence[bytes]) -> tuple[bytes, int]:
        """The lines of the records that go to disk (EOE never does), joined, and how many.

        What `format_batch` would give, joined, at a third of its cost on the common batch:
        it is put together by C loops (prefix lookups, slice assignments, one join), and
        checks over the whole batch -- no newline in a payload, none ending in a space, none
        empty or too long -- send a batch that needs any per-record care through `format`.
        """
        if AUDIT_EOE in types:
            keep = list(map(ne, types, repeat(AUDIT_EOE)))
            types = list(compress(types, keep))
            payloads = list(compress(payloads, keep))
        count = len(payloads)
        if not count:
            return b"", 0
        prefixes = self._prefix
        step = 3 if self.enricher is None else 4
        parts = [b"\n"] * (step * count)
        parts[0::step] = map(prefixes.__getitem__, types)
        parts[1::step] = payloads
        longest = max(map(len, payloads))
        if (
            not all(payloads)
            or b"\n" in b"".join(payloads)
            or _SPACE in map(_last, payloads)
            or longest > self.limit
            or longest + prefixes.longest >= MAX_LINE
        ):
            return b"".join(map(self.format, types, payloads)), count
        if self.enricher is not None:
            # ENRICHED: the interpretations of the batch at once, or record by record
            suffixes = self.enricher.batch_suffixes(
                list(types), list(payloads), longest + prefixes.longest)
            if suffixes is None:
                return b"".join(map(self.format, types, payloads)), count
            parts[2::step] = suffixes
        return b"".join(parts), count


_SPACE = ord(" ")
_last = itemgetter(-1)


class _Prefixes(dict[int, bytes]):
    """``node=NAME type=TYPE msg=`` by record type, made on first use; `longest` is the
    longest made so far (whether a line could reach MAX_LINE)."""

    def __init__(self, node_prefix: bytes) -> None:
        super().__init__()
        self.node_prefix = node_prefix
        self.longest = 0

    def __missing__(self, msg_type: int) -> bytes:
        prefix = self.node_prefix + f"type={type_name(msg_type)} msg=".encode()
        if len(self) < 4096:  # record types are 16-bit, but a bound costs nothing
            self[msg_type] = prefix
        self.longest = max(self.longest, len(prefix))
        return prefix
