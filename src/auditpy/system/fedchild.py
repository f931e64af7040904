"""A child process fed through a socketpair on its stdin, from the event loop.

pyauditd feeds its dispatcher this way, and pyaudispd each plugin program. Both must never
wait for the child: a reader that stops (descheduled, stuck, dying) may cost only its own
records, never the loop that feeds everybody else. So the socket is non-blocking; what it
does not take now stays in memory, the unsent rest of a batch is resumed where the kernel
cut it (a record is never sent twice to one process, nor cut in two), and the loop calls
back when the socket has room again (``add_writer``) instead of anyone waiting for it.

What is fed is the owner's business: `FedChild` pulls its next `Batch` from the owner when
the previous one is completely in the socket, and reports how many records have had their
last byte taken (per-record accounting: a record counts as delivered only then). The owner
keeps its own queue with its own bound: pyauditd's link a byte bound over ready-made
batches, that also holds records while no dispatcher runs yet; a plugin runner a
record-count bound (q_depth) over records it encodes lazily and hands over whole to a
successor. One `FedChild` is one run of the child: a new process gets a new one, so a
record cut short by a crash goes to the next process whole.

`Backoff` is the restart policy both owners use: a delay doubling up to a maximum, an
optional budget of restarts, and both refilled once a run has lasted long enough (a crash
loop is slowed and stopped, a plugin that crashes once a day is never locked out).
"""

from __future__ import annotations

import bisect
import math
import socket
import time
from collections.abc import Callable, Sequence

from auditpy.system import evloop
from auditpy.system.children import ChildHandle, stdin_pair

#: 2**this times the initial delay is far beyond any maximum; it keeps the power finite.
_MAX_DOUBLINGS = 64


class Batch:
    """Bytes for one send, and where records end in them.

    `ends` are the offsets (ascending) just past each accounting mark; every mark stands
    for `weight` records. A plugin marks each record (weight 1); pyauditd's link, which is
    handed a batch of frames with a record count, marks the batch's end once.
    """

    __slots__ = ("data", "ends", "weight")

    def __init__(self, data: bytes | memoryview, ends: Sequence[int], weight: int = 1) -> None:
        self.data = memoryview(data)
        self.ends = ends
        self.weight = weight


def _nothing() -> None:
    pass


class FedChild:
    """One run of a child whose stdin is our end of a socketpair, and the writer feeding it.

    `next_batch()` is asked for more whenever the previous batch is completely in the
    socket (None: nothing to send); `sent(n)` reports records whose last byte the socket
    took; `drained()` that everything offered is in the socket; `broken(exc)` that the
    socket refused with an error (the child closed its input or is dying: the input is
    closed here first); `on_exit(self)` that the child exited and was reaped through its
    pidfd (the input is closed here first). With `received`, what the child writes back
    on its stdin socket (pyaudispd's figures) is read on the loop and handed to it.
    """

    __slots__ = (
        "_broken",
        "_done",
        "_drained",
        "_ends",
        "_exit",
        "_loop",
        "_next_batch",
        "_out",
        "_received",
        "_sent",
        "_taken",
        "_weight",
        "child",
        "sock",
        "waiting",
    )

    def __init__(
        self,
        loop: evloop.Loop,
        child: ChildHandle,
        sock: socket.socket,
        *,
        next_batch: Callable[[], Batch | None],
        sent: Callable[[int], None],
        on_exit: Callable[[FedChild], None],
        drained: Callable[[], None] = _nothing,
        broken: Callable[[OSError], None] | None = None,
        received: Callable[[bytes], None] | None = None,
    ) -> None:
        self._loop = loop
        self.child = child
        #: our end, non-blocking; None once the input is closed
        self.sock: socket.socket | None = sock
        self._next_batch = next_batch
        self._sent = sent
        self._drained = drained
        self._broken = broken
        self._exit = on_exit
        #: the unsent rest of the batch being written, its marks, how many of them have been
        #: reported, and how many of its bytes the socket took
        self._out: memoryview | None = None
        self._ends: Sequence[int] = ()
        self._weight = 1
        self._done = 0
        self._taken = 0
        #: the socket is full: a writer callback is registered and will pump
        self.waiting = False
        self._received = received
        child.attach(loop, self._child_exited)
        if received is not None:
            loop.add_reader(sock.fileno(), self._read_back)

    @classmethod
    def start(
        cls,
        loop: evloop.Loop,
        spawn: Callable[[int], ChildHandle],
        send_buffer: int,
        *,
        next_batch: Callable[[], Batch | None],
        sent: Callable[[int], None],
        on_exit: Callable[[FedChild], None],
        drained: Callable[[], None] = _nothing,
        broken: Callable[[OSError], None] | None = None,
        received: Callable[[bytes], None] | None = None,
    ) -> FedChild:
        """Make the socketpair (`send_buffer`: see `stdin_pair`), start the child with
        `spawn(fd)` (fd: its end, to become its stdin) and watch it from `loop`. Raises
        OSError if either fails; nothing is left open then."""
        ours, theirs = stdin_pair(send_buffer)
        try:
            child = spawn(theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(loop, child, ours, next_batch=next_batch, sent=sent, on_exit=on_exit,
                   drained=drained, broken=broken, received=received)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def closed(self) -> bool:
        """Our end is closed: nothing more can be fed to this process."""
        return self.sock is None

    @property
    def unsent(self) -> int:
        """Bytes of the batch in flight that the socket has not taken yet."""
        out = self._out
        return 0 if out is None else len(out)

    @property
    def in_flight(self) -> int:
        """Records of the batch in flight not yet reported as sent."""
        if self._out is None:
            return 0
        return (len(self._ends) - self._done) * self._weight

    def abandon(self) -> int:
        """Give up the batch in flight (the child is gone or no longer reads); returns how
        many of its records were not reported as sent."""
        count = self.in_flight
        self._out = None
        return count

    def pump(self) -> None:
        """Write as much as the socket takes now; let the loop call again when it has room."""
        sock = self.sock
        if sock is None:
            return
        out = self._out
        while True:
            if out is None:
                out = self._take_batch()
                if out is None:
                    break
            try:
                n = sock.send(out)
            except BlockingIOError:
                self._out = out
                if not self.waiting:
                    self._loop.add_writer(sock.fileno(), self.pump)
                    self.waiting = True
                return
            except OSError as exc:
                self._out = out
                self.close_input()
                if self._broken is not None:
                    self._broken(exc)
                return
            taken = self._taken + n
            self._taken = taken
            done = bisect.bisect_right(self._ends, taken, self._done)
            if done != self._done:
                count = (done - self._done) * self._weight
                self._done = done
                self._sent(count)
            out = out[n:] if n < len(out) else None
        self._out = None
        if self.waiting:
            self._loop.remove_writer(sock.fileno())
            self.waiting = False
        self._drained()

    def write(self, data: bytes, ends: Sequence[int], weight: int = 1) -> None:
        """Hand one batch straight to the socket, for an owner whose queue is empty while
        nothing is in flight (not `closed`, not `waiting`): the common case is one send
        and no allocation. What the socket does not take is resumed as by `pump`."""
        sock = self.sock
        if sock is None or self._out is not None:
            raise RuntimeError("write() while closed or while a batch is in flight")
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._out = memoryview(data)
            self._ends, self._weight, self._done, self._taken = ends, weight, 0, 0
            self.close_input()
            if self._broken is not None:
                self._broken(exc)
            return
        if n == len(data):
            self._sent(len(ends) * weight)
            return
        self._out = memoryview(data)[n:]
        self._ends, self._weight, self._taken = ends, weight, n
        self._done = bisect.bisect_right(ends, n)
        if self._done:
            self._sent(self._done * weight)
        self.waiting = True
        self._loop.add_writer(sock.fileno(), self.pump)

    def _take_batch(self) -> memoryview | None:
        """The owner's next batch, now the one in flight (none sent of it yet); None when
        the owner has nothing to offer."""
        batch = self._next_batch()
        if batch is None:
            return None
        self._ends, self._weight = batch.ends, batch.weight
        self._done = self._taken = 0
        return batch.data

    def flush_blocking(self, deadline: float) -> None:
        """At shutdown, when the loop no longer runs: give the child what is offered until
        `deadline` (time.monotonic()), blocking. What is left stays offered (`abandon`,
        and the owner's queue)."""
        sock = self.sock
        if sock is None:
            return
        self._stop_waiting(sock)
        try:
            out = self._out
            while True:
                if out is None:
                    out = self._take_batch()
                    if out is None:
                        break
                self._out = out
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                sock.sendall(out)
                count = (len(self._ends) - self._done) * self._weight
                self._out = out = None
                if count:
                    self._sent(count)
        except OSError:
            pass

    def close_input(self) -> None:
        """Stop writing (and reading back) and close our end: end of input for a child that
        reads to the end."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self._stop_waiting(sock)
            self._stop_reading(sock)
            sock.close()

    def _read_back(self) -> None:
        sock = self.sock
        if sock is None or self._received is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # it will say no more; its exit follows, through the pidfd
            self._stop_reading(sock)
            return
        self._received(data)

    def _stop_reading(self, sock: socket.socket) -> None:
        if self._received is not None:
            self._received = None
            if not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())

    def send_signal(self, signum: int) -> bool:
        return self.child.send_signal(signum)

    def _stop_waiting(self, sock: socket.socket) -> None:
        if self.waiting:
            if not self._loop.is_closed():
                self._loop.remove_writer(sock.fileno())
            self.waiting = False

    def _child_exited(self, child: ChildHandle) -> None:
        self.close_input()
        self._exit(self)


class Backoff:
    """When to start a child again after it died.

    The delay doubles with every failure in a row, from `initial` up to `maximum`; a run
    that lasted `stable_after` seconds (`ended`), or a `refill`, starts it again from
    `initial` and gives back the whole restart budget. The budget is given per decision
    (`next_delay`), so a reload that changes it takes effect at the next crash.
    """

    __slots__ = ("_clock", "_since", "failures", "initial", "maximum", "stable_after", "used")

    def __init__(
        self,
        initial: float,
        maximum: float,
        stable_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._clock = clock
        self._since: float | None = None
        #: failures since the last stable run or refill
        self.failures = 0
        #: restarts taken from the budget since the last stable run or refill
        self.used = 0

    def started(self) -> None:
        self._since = self._clock()

    def ended(self) -> bool:
        """The run begun at `started` is over; True (and the budget refilled) if it had
        lasted `stable_after`."""
        since, self._since = self._since, None
        if since is not None and self._clock() - since >= self.stable_after:
            self.refill()
            return True
        return False

    def refill(self) -> None:
        self.failures = 0
        self.used = 0

    def next_delay(self, budget: int | None = None) -> float | None:
        """Seconds to wait before the next start, taking one restart from `budget` (None:
        unlimited); None when the budget is spent."""
        if budget is not None and self.used >= budget:
            return None
        self.used += 1
        delay = min(self.maximum, math.ldexp(self.initial, min(self.failures, _MAX_DOUBLINGS)))
        self.failures += 1
        return delay
