"""The loss ledger: every record the kernel produced is delivered or counted as lost, with
its cause, and losses are said where operators look, for as long as they go on.

Pure bookkeeping, no I/O: the daemon feeds it what happened and writes what it returns
(DAEMON_ERR records in the log, syslog lines, the state report, the metrics).

Two measures of the kernel's side:

* the kernel's own `lost` counter, which counts records it dropped (backlog full with no
  wait left, the rate limit, its hold queue overflowing while no daemon listens);
* serial gaps: the kernel numbers events (not records) in one sequence per boot, so an
  event missing from the stream shows as a gap among the serials read. A multicast reader
  whose socket overflows loses records the kernel never counts; gaps are the only sign.
  Records the kernel drops before giving them a serial (a full backlog) leave no gap, and
  some it drops after (the rate limit, the hold queue) appear in both measures, so in
  `register` mode gaps are reported beside the kernel's counter, not added to it.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable
from operator import itemgetter

from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

#: Records the kernel writes only inside a syscall event, which always ends with an EOE
#: record of the same serial: their serials need not be read (the EOE's is), which keeps
#: the serial watch to about one parse per event on the record path.
SYSCALL_COMPANIONS: Final = frozenset({
    1300, 1302, 1303, 1304, 1306, 1307, 1309, 1311, 1312, 1313, 1314, 1315, 1317, 1318,
    1321, 1322, 1323, 1327, 1337,
})

#: How far the serials read may run ahead of a missing one before it counts as lost: the
#: kernel hands over events a little out of order (they are numbered when their first
#: record is made, queued when their last is).
GAP_HORIZON: Final = 1024
#: Serials tracked as missing at most; a larger jump counts at once.
MAX_MISSING: Final = 65536


class Cause(enum.Enum):
    """Why records were lost. The values are the `cause` label of the metrics."""

    KERNEL = "kernel"  # the kernel's lost counter went up
    SERIAL_GAP = "serial_gap"  # events missing from the stream (multicast: the only sign)
    LOG_SUSPENDED = "log_suspended"  # read, but logging was suspended or the log closed
    LOG_DISK_FULL = "log_disk_full"
    LOG_WRITE_ERROR = "log_write_error"
    DISPATCHER = "dispatcher"  # could not be handed to pyaudispd
    PLUGIN = "plugin"  # a plugin's queue was full, or it was not running


class SerialWatch:
    """Finds events missing from the record stream by their serial numbers."""

    def __init__(self, horizon: int = GAP_HORIZON) -> None:
        self.horizon = horizon
        self.highest: int | None = None
        #: serials skipped over, waiting to arrive late or to be counted (insertion order)
        self._missing: dict[int, None] = {}
        self.gaps = 0

    def feed(self, serials: Iterable[int]) -> int:
        """Take the serials of newly read records; returns how many events became lost."""
        missing = self._missing
        highest = self.highest
        lost = 0
        for serial in serials:
            if highest is None or serial == highest + 1:
                highest = serial
            elif serial > highest:
                skipped = serial - highest - 1
                if skipped > MAX_MISSING or len(missing) + skipped > MAX_MISSING:
                    lost += skipped
                else:
                    for late in range(highest + 1, serial):
                        missing[late] = None
                highest = serial
            elif serial in missing:
                del missing[serial]
        self.highest = highest
        if missing and highest is not None:
            limit = highest - self.horizon
            for old in list(missing):
                if old >= limit:
                    break
                del missing[old]
                lost += 1
        self.gaps += lost
        return lost

    def feed_batch(self, serials: list[int]) -> int:
        """`feed` for one read's serials: a batch that only continues the stream (the
        next serials in a row, repeats allowed, in any order) is taken in a few C calls."""
        highest = self.highest
        if highest is not None and not self._missing:
            fresh = list(dict.fromkeys(serials))
            if fresh and fresh[0] == highest:
                del fresh[0]  # more records of the last event seen
            if fresh == list(range(highest + 1, highest + 1 + len(fresh))):
                if fresh:
                    self.highest = fresh[-1]
                return 0
        return self.feed(serials)

    @property
    def pending(self) -> int:
        """Serials skipped over that may still arrive."""
        return len(self._missing)


#: A kernel payload's start; matched right after a NUL (see `serials_of`).
_SERIAL: Final = re.compile(rb"\0audit\([0-9]+\.[0-9]+:([0-9]+)\)")


def serials_of(payloads: Iterable[bytes]) -> list[int]:
    """The serial of each payload that has one, in order: one regex pass over the payloads
    joined by NULs (a kernel record cannot hold one: the kernel formats user text with
    %s), so only a payload's start can match, whatever text a record carries."""
    payloads = list(payloads)
    found = _eoe_serials(payloads)
    if found is not None:
        return found
    return list(map(int, _SERIAL.findall(b"\0" + b"\0".join(payloads))))


def _eoe_serials(payloads: list[bytes]) -> list[int] | None:
    """The usual batch, a syscall event's EOE records only (``audit(SEC.MSEC:SERIAL): ``,
    serials of one digit count): every field at the same offset, so a struct format cuts
    the serials out of the joined payloads in one C call (half the regex pass's cost);
    None for any other batch."""
    if not payloads:
        return None
    size = len(payloads[0])
    count = len(payloads)
    if size < 25 or min(map(len, payloads)) != size or max(map(len, payloads)) != size:
        return None
    joined = b"".join(payloads)
    if (joined[0::size] != b"a" * count or joined[20::size] != b":" * count
            or joined[size - 3 :: size] != b")" * count
            or joined[size - 2 :: size] != b":" * count):
        return None
    digits = list(map(_first, struct.iter_unpack(f"21x{size - 24}s3x", joined)))
    if not all(map(bytes.isdigit, digits)):
        return None
    return list(map(int, digits))


_first = itemgetter(0)


def serial_of(payload: bytes) -> int | None:
    """The serial of ``audit(SEC.MSEC:SERIAL): ...``, None if the payload has none."""
    colon = payload.find(b":", 6)
    close = payload.find(b")", colon)
    if colon < 0 or close < 0:
        return None
    try:
        return int(payload[colon + 1 : close])
    except ValueError:
        return None


@dataclass
class CauseState:
    total: int = 0
    told: int = 0  # losses said one by one
    since_summary: int = 0


#: The first losses of each cause are said one by one, then summed up per interval.
SAY_FIRST: Final = 5


@dataclass
class LossReporter:
    """Says losses as they happen: the first SAY_FIRST of each cause one by one, then one
    summary per `interval` for as long as any continue (never a limit after which nothing
    more is said, unlike the C daemon's)."""

    interval: float = 60.0
    causes: dict[str, CauseState] = field(default_factory=dict)
    last_summary: float = 0.0

    def note(self, cause: str, count: int) -> list[str]:
        """`count` more records lost for `cause` (a Cause value, or `plugin:NAME`)."""
        if count <= 0:
            return []
        state = self.causes.setdefault(cause, CauseState())
        state.total += count
        if state.told < SAY_FIRST:
            state.told += 1
            last = " (further losses of this cause are summarised)" if (
                state.told == SAY_FIRST) else ""
            return [f"op=records-lost cause={cause} records={count} total={state.total}"
                    f"{last}"]
        state.since_summary += count
        return []

    def tick(self, now: float) -> list[str]:
        """A summary per cause still losing records, once `interval` has passed."""
        if now - self.last_summary < self.interval:
            return []
        self.last_summary = now
        out = []
        for cause, state in sorted(self.causes.items()):
            if state.since_summary:
                out.append(
                    f"op=records-lost cause={cause} records={state.since_summary} "
                    f"total={state.total} interval={self.interval:g}s"
                )
                state.since_summary = 0
        return out

    def total(self, cause: str) -> int:
        state = self.causes.get(cause)
        return state.total if state else 0
