"""One supervisor per plugin: its bounded queue, its non-blocking writer, its process.

Why each plugin has its own queue and writer: in the C dispatchers one thread writes every
record to every plugin with blocking writes, so one plugin that stops reading stalls all the
others and, behind them, the daemon.  Here a record is appended to each plugin's queue (at
most ``q_depth`` records), and each queue is drained into that plugin's non-blocking socket
whenever the socket has room (``loop.add_writer``), resuming partial writes (the writer
and the restart back-off are `system.fedchild`'s, shared with pyauditd's link to this
dispatcher).  A full queue is reported to the dispatcher, which applies overflow_action;
nothing ever waits for a plugin.

Why pidfds: a plugin's exit is seen the moment it happens (its pidfd becomes readable in
the event loop), it is reaped exactly once by its own supervisor, and signals go through
the pidfd, so a recycled pid can never be hit.  No SIGCHLD handler, no ``waitpid(-1)``.

Restarts: a plugin that dies is restarted after a back-off that starts at
``backoff_initial`` (0.1 s) and doubles up to ``backoff_max`` (10 s).  ``max_restarts``
is a budget, not a lifetime limit: it is refilled (and the back-off reset) once the plugin
has run for ``stable_after`` seconds (60 s), and whenever its program file changes, so a
crash loop stops but a fixed plugin is never locked out.  An exhausted plugin stays stopped
until the next reload.  The record that was being written when it died is sent again, whole,
to the new process.
"""

from __future__ import annotations

import collections
import enum
import logging
import signal
from itertools import accumulate, repeat
from operator import add, sub

from auditpy import structs
from auditpy.config.files import check_plugin_program
from auditpy.config.plugins import PluginConfig
from auditpy.proto import dispatch as wire
from auditpy.structs import dataclass
from auditpy.system import evloop
from auditpy.system.children import ChildHandle, spawn
from auditpy.system.fedchild import Backoff, Batch, FedChild

log = logging.getLogger("auditpy.audispd")

#: First restart delay after a crash; doubles with every crash in a row.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
#: A plugin that has run this long has a full restart budget and back-off again.
STABLE_AFTER = 60.0
#: After its input is closed, how long a stopping plugin may take to exit by itself.
EOF_GRACE = 0.05
#: SIGTERM to SIGKILL on reload (shutdown uses the dispatcher's own, longer, timeout).
STOP_TIMEOUT = 3.0
#: How long SIGKILL may take before a child is reported as unreapable.
KILL_WAIT = 10.0
#: Records are written in batches of at most this many bytes / records.
BATCH_BYTES = 65536
BATCH_RECORDS = 256


def plugin_send_buffer(q_depth: int) -> int:
    """Bytes a plugin may leave unread in its socket before records queue here: room for
    about q_depth typical (512-byte) records again, between 64 KiB and 4 MiB, so that a
    plugin descheduled for a moment under load loses nothing (one cat plugin at 60,000
    events/s lost 11 of 100,000 with the 208 KiB default at q_depth 2000)."""
    return min(max(q_depth * 512, 64 << 10), 4 << 20)


class Record:
    """One record from pyauditd, with its encodings made once and shared by all plugins."""

    __slots__ = ("_frame", "_line", "msg_type", "node", "payload", "version")

    def __init__(self, version: int, msg_type: int, payload: bytes, node: bytes = b"") -> None:
        self.version = version
        self.msg_type = msg_type
        self.payload = payload
        #: ``node=NAME `` for V0 records when audispd.conf's name_format asks for it (2.x)
        self.node = node
        self._line: bytes | None = None
        self._frame: bytes | None = None

    def line(self) -> bytes:
        """``format = string``: one newline-terminated line."""
        if self._line is None:
            text = wire.string_line(self.version, self.msg_type, self.payload)
            self._line = self.node + text if self.version == wire.PROTOCOL_V0 else text
        return self._line

    def frame(self) -> bytes:
        """``format = binary``: header plus exactly ``size`` bytes (4.1.1+).  Debian's 3.0.9
        sent a fixed 8970-byte buffer after every header instead."""
        if self._frame is None:
            self._frame = wire.frame(self.version, self.msg_type, self.payload)
        return self._frame

    def encode(self, fmt: str) -> bytes:
        return self.frame() if fmt == "binary" else self.line()


class Columns:
    """One read's records for the plugins that queue them whole (`PluginRunner.take`):
    each encoding is made once, by C loops over the columns, and shared by every plugin
    of that format; it is what `Record.encode` makes of each record, back to back, with
    the offset where each ends."""

    __slots__ = ("_encoded", "node", "payloads", "types", "version")

    def __init__(
        self, version: int, types: list[int], payloads: list[bytes], node: bytes = b""
    ) -> None:
        self.version = version
        self.types = types
        self.payloads = payloads
        self.node = node
        self._encoded: dict[str, tuple[bytes, list[int]]] = {}

    def __len__(self) -> int:
        return len(self.types)

    def encoded(self, fmt: str) -> tuple[bytes, list[int]]:
        done = self._encoded.get(fmt)
        if done is None:
            if not self.types:
                done = (b"", [])
            else:
                done = self._binary() if fmt == "binary" else self._string()
            self._encoded[fmt] = done
        return done

    def records(self, first: int = 0) -> list[Record]:
        version, node = self.version, self.node
        return [Record(version, t, p, node)
                for t, p in zip(self.types[first:], self.payloads[first:], strict=True)]

    def _string(self) -> tuple[bytes, list[int]]:
        payloads = self.payloads
        if b"\n" in b"".join(payloads):  # a line of its own made of each (string_line)
            lines = [record.line() for record in self.records()]
            return b"".join(lines), list(accumulate(map(len, lines)))
        count = len(payloads)
        if self.version != wire.PROTOCOL_V0:
            return (b"\n".join(payloads) + b"\n",
                    list(accumulate(map(add, map(len, payloads), repeat(1, count)))))
        prefixes = _v0_prefixes(self.node)
        parts = [b"\n"] * (3 * count)
        parts[0::3] = map(prefixes.__getitem__, self.types)
        parts[1::3] = payloads
        sizes = map(add, map(prefixes.sizes.__getitem__, self.types), map(len, payloads))
        return b"".join(parts), list(accumulate(sizes))

    def _binary(self) -> tuple[bytes, list[int]]:
        payloads = self.payloads
        count = len(payloads)
        sizes = list(map(len, payloads))
        headers = map(wire.HEADER.pack, repeat(self.version, count),
                      repeat(wire.HEADER_LEN, count), self.types, sizes)
        parts = [b""] * (2 * count)
        parts[0::2] = headers
        parts[1::2] = payloads
        return (b"".join(parts),
                list(accumulate(map(add, sizes, repeat(wire.HEADER_LEN, count)))))


class _V0Prefixes(dict[int, bytes]):
    """``node=NAME type=TYPE msg=`` of V0 string lines by type; `sizes` holds each one's
    length plus the newline."""

    def __init__(self, node: bytes) -> None:
        super().__init__()
        self.node = node
        self.sizes = _PrefixSizes(self)

    def __missing__(self, msg_type: int) -> bytes:
        prefix = self.node + wire.string_line(wire.PROTOCOL_V0, msg_type, b"")[:-1]
        if len(self) < 4096:
            self[msg_type] = prefix
        return prefix


class _PrefixSizes(dict[int, int]):
    def __init__(self, prefixes: _V0Prefixes) -> None:
        super().__init__()
        self.prefixes = prefixes

    def __missing__(self, msg_type: int) -> int:
        size = len(self.prefixes[msg_type]) + 1
        if len(self) < 4096:
            self[msg_type] = size
        return size


_PREFIXES: dict[bytes, _V0Prefixes] = {}


def _v0_prefixes(node: bytes) -> _V0Prefixes:
    prefixes = _PREFIXES.get(node)
    if prefixes is None:
        if len(_PREFIXES) > 8:  # one node name at a time, and a few reloads
            _PREFIXES.clear()
        prefixes = _PREFIXES[node] = _V0Prefixes(node)
    return prefixes


class _Chunk:
    """A read's records in a plugin's queue, encoded for it; `first` of them are sent."""

    __slots__ = ("columns", "data", "ends", "first")

    def __init__(self, columns: Columns, data: bytes, ends: list[int]) -> None:
        self.columns = columns
        self.data = data
        self.ends = ends
        self.first = 0

    @property
    def count(self) -> int:
        return len(self.ends) - self.first

    def batch(self) -> Batch:
        first = self.first
        if not first:
            return Batch(self.data, self.ends)
        base = self.ends[first - 1]
        ends = self.ends[first:]
        return Batch(memoryview(self.data)[base:], list(map(sub, ends, repeat(base, len(ends)))))


@dataclass
class RunnerContext:
    """What every supervisor shares with the dispatcher; updated in place on reload."""

    loop: evloop.Loop
    q_depth: int = 2000
    max_restarts: int = 10
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stable_after: float = STABLE_AFTER
    #: auditd.conf's, for plugins that assemble events (builtin_json)
    end_of_event_timeout: float = 2.0
    #: set when the dispatcher stops: nothing is (re)started any more
    shutting_down: bool = False


class State(enum.Enum):
    PENDING = "pending"  # created by a reload, waiting for its predecessor to be reaped
    RUNNING = "running"
    BACKOFF = "restart pending"
    FAILED = "stopped (failed)"
    STOPPING = "stopping"
    STOPPED = "stopped"


def describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exit status {status}"


async def _within(future: evloop.Future[None], timeout: float) -> bool:
    """Whether `future` completes within `timeout` seconds (without cancelling it)."""
    if not future.done():
        await evloop.wait([future], timeout=timeout)
    return future.done()


class PluginRunner:
    """The interface the dispatcher uses; external programs and builtins implement it."""

    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        self.config = config
        self.ctx = ctx
        self.state = State.PENDING
        #: records handed to this plugin: delivered + dropped + still queued (the ledger)
        self.offered = 0
        self.delivered = 0
        self.dropped = 0
        self.max_depth = 0
        #: restarts after crashes, over this supervisor's life
        self.restarts = 0
        #: restarts used from the max_restarts budget
        self.budget_used = 0
        #: a process that survived SIGKILL (stuck in the kernel): never replaced
        self.unreaped = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        return None

    @property
    def depth(self) -> int:
        return 0

    def describe(self) -> str:
        return self.config.path or "?"

    def start(self) -> None:
        raise NotImplementedError

    def offer(self, record: Record) -> bool:
        """Take `record`; False only when the queue is full (the record is then dropped
        and counted, and the dispatcher applies overflow_action). Queued records go out at
        the next `flush`."""
        raise NotImplementedError

    def flush(self) -> None:
        """Start sending what `offer` queued; called once per read of the dispatcher's
        input, so that one send carries many records."""

    def room(self, count: int) -> bool:
        """Whether `take` would queue `count` more records whole (not: offer them one by
        one, which applies the full-queue rules record by record)."""
        return False

    def take(self, columns: Columns) -> None:
        """Queue a read's records whole (only after `room` said yes)."""
        raise NotImplementedError

    def hup(self) -> None:
        """The plugin's configuration is unchanged after a reload."""
        log.info("plugin %s unchanged", self.name)

    def revive(self) -> None:
        """Start again after failing (on reload), with a full restart budget."""
        self.budget_used = 0
        self.state = State.PENDING
        self.start()

    def adopt(self, records: list[Record]) -> None:
        """Records a stopped predecessor never delivered; queued first, within q_depth."""

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = STOP_TIMEOUT, keep: bool = False
    ) -> list[Record]:
        """Stop and (for a process) reap.  With `keep`, the records it did not deliver are
        returned for a successor; otherwise they are counted as dropped."""
        raise NotImplementedError

    def state_lines(self) -> list[tuple[str, object]]:
        pid = self.pid
        return [
            ("path", self.describe()),
            ("format", self.config.format),
            ("pid", "none" if pid is None else pid),
            ("state", self.state.value),
            ("restarts", self.restarts),
            ("restart budget used", f"{self.budget_used} of {self.ctx.max_restarts}"),
            ("records delivered", self.delivered),
            ("records dropped", self.dropped),
            ("queue depth", self.depth),
            ("max queue depth", self.max_depth),
        ]


class ExternalPlugin(PluginRunner):
    """A plugin program, fed through a socketpair on its stdin (`system.fedchild`)."""

    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        self.backoff = Backoff(ctx.backoff_initial, ctx.backoff_max, ctx.stable_after)
        super().__init__(config, ctx)
        #: records not yet completely in the plugin's socket, oldest first (at most q_depth):
        #: one by one, or a read's records whole (`take`); the head ones may be in the batch
        #: being written
        self.queue: collections.deque[Record | _Chunk] = collections.deque()
        #: how many records the queue holds
        self.queued = 0
        #: the running process, None between runs
        self.fed: FedChild | None = None
        self._exited: evloop.Future[None] | None = None
        self._drained: evloop.Future[None] | None = None
        self._restart_timer: evloop.TimerHandle | None = None
        self._stable_timer: evloop.TimerHandle | None = None
        self._kill_timer: evloop.TimerHandle | None = None

    # The restart budget lives in the shared back-off policy.
    @property
    def budget_used(self) -> int:
        return self.backoff.used

    @budget_used.setter
    def budget_used(self, value: int) -> None:
        self.backoff.used = value

    @property
    def child(self) -> ChildHandle | None:
        return None if self.fed is None else self.fed.child

    @property
    def pid(self) -> int | None:
        return None if self.fed is None else self.fed.pid

    @property
    def depth(self) -> int:
        return self.queued

    def describe(self) -> str:
        return " ".join(self.config.argv)

    # -- process life cycle ---------------------------------------------------------------

    def start(self) -> None:
        if self.ctx.shutting_down or self.fed is not None:
            return
        reason = self._refresh_identity()
        if reason is not None:
            log.error("plugin %s not started: %s", self.name, reason)
            self._give_up()
            return
        loop = self.ctx.loop
        try:
            fed = FedChild.start(
                loop,
                self._spawn,
                plugin_send_buffer(self.ctx.q_depth),
                next_batch=self._next_batch,
                sent=self._sent,
                on_exit=self._on_exit,
                drained=self._on_drained,
                broken=self._broken,
            )
        except OSError as exc:
            log.error("plugin %s: cannot start %s: %s", self.name, self.config.path, exc)
            self._crashed()
            return
        self.fed = fed
        self._exited = loop.create_future()
        self.state = State.RUNNING
        self.backoff.started()
        self._stable_timer = loop.call_later(self.ctx.stable_after, self._stable, fed)
        log.info("plugin %s started: %s pid %d", self.name, self.describe(), fed.pid)
        fed.pump()

    def _spawn(self, stdin_fd: int) -> ChildHandle:
        return spawn(self.config.argv[0], self.config.args, stdin_fd=stdin_fd, new_session=True)

    def _refresh_identity(self) -> str | None:
        """Re-check the program; a changed file refills the restart budget."""
        if self.config.path is None:
            return "no path"
        identity, reason = check_plugin_program(self.config.path)
        if reason is not None:
            return reason
        if identity != self.config.identity:
            if self.config.identity is not None and (self.backoff.used or self.backoff.failures):
                log.info(
                    "plugin %s: program %s changed; restart budget refilled",
                    self.name,
                    self.config.path,
                )
            self.backoff.refill()
            self.config = structs.replace(self.config, identity=identity)
        return None

    def _stable(self, fed: FedChild) -> None:
        self._stable_timer = None
        if fed is self.fed and self.state is State.RUNNING:
            if self.backoff.used or self.backoff.failures:
                log.info(
                    "plugin %s has run for %g s; restart budget refilled",
                    self.name,
                    self.ctx.stable_after,
                )
            self.backoff.refill()

    def _on_exit(self, fed: FedChild) -> None:
        if fed is not self.fed:
            return
        self.fed = None
        self._cancel_timers(restart=False)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)
        if self.state in (State.STOPPING, State.STOPPED):
            return
        log.warning(
            "plugin %s (pid %d) terminated unexpectedly: %s",
            self.name,
            fed.pid,
            describe_status(fed.child.returncode),
        )
        self._crashed()

    def _crashed(self) -> None:
        """The process is gone (or never started): restart it within the budget."""
        if self.ctx.shutting_down:
            self.state = State.STOPPED
            return
        reason = self._refresh_identity()
        if reason is not None:
            log.error("plugin %s cannot be restarted: %s", self.name, reason)
            self._give_up()
            return
        delay = self.backoff.next_delay(self.ctx.max_restarts)
        if delay is None:
            log.error(
                "plugin %s has exceeded max_restarts (%d); leaving it stopped until "
                "the next reload",
                self.name,
                self.ctx.max_restarts,
            )
            self._give_up()
            return
        self.state = State.BACKOFF
        log.info(
            "plugin %s will be restarted in %.2f s (restart %d of max_restarts %d)",
            self.name,
            delay,
            self.backoff.used,
            self.ctx.max_restarts,
        )
        self._restart_timer = self.ctx.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._restart_timer = None
        if self.state is State.BACKOFF and not self.ctx.shutting_down:
            self.restarts += 1
            self.start()
            if self.fed is not None:
                log.info("plugin %s was restarted (%d restarts so far)", self.name, self.restarts)

    def _give_up(self) -> None:
        self.state = State.FAILED
        self._cancel_timers()
        self._discard_queue()

    def _cancel_timers(self, restart: bool = True) -> None:
        timers = [self._stable_timer, self._kill_timer]
        self._stable_timer = self._kill_timer = None
        if restart:
            timers.append(self._restart_timer)
            self._restart_timer = None
        for timer in timers:
            if timer is not None:
                timer.cancel()

    def hup(self) -> None:
        if self.fed is not None and self.state is State.RUNNING:
            self.fed.send_signal(signal.SIGHUP)
            log.info("plugin %s unchanged: sent SIGHUP to pid %d", self.name, self.fed.pid)
        elif self.state is State.BACKOFF:
            # After a reload the running plugins are the configured ones: one waiting out
            # its crash back-off starts now (the restart was already counted).
            log.info("plugin %s unchanged: restarting it now instead of after its back-off",
                     self.name)
            self._cancel_timers()
            self._restart()
        else:
            log.info("plugin %s unchanged (%s)", self.name, self.state.value)

    def revive(self) -> None:
        self.backoff.refill()
        super().revive()

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = STOP_TIMEOUT, keep: bool = False
    ) -> list[Record]:
        self.state = State.STOPPING
        self._cancel_timers()
        fed = self.fed
        if fed is None or self._exited is None:
            self.state = State.STOPPED
            return self._leftover(keep)
        exited = self._exited
        if drain > 0 and self.queue and not fed.closed:
            self._drained = self.ctx.loop.create_future()
            await evloop.wait(
                [self._drained, exited], timeout=drain, return_when=evloop.FIRST_COMPLETED
            )
            self._drained = None
        fed.close_input()  # end of input: a well-behaved plugin exits by itself
        if not await _within(exited, EOF_GRACE):
            fed.send_signal(signal.SIGTERM)
            if not await _within(exited, term_timeout):
                log.warning(
                    "plugin %s (pid %d) ignored SIGTERM for %g s; sending SIGKILL",
                    self.name,
                    fed.pid,
                    term_timeout,
                )
                fed.send_signal(signal.SIGKILL)
                if not await _within(exited, KILL_WAIT):
                    log.error("plugin %s (pid %d) could not be reaped", self.name, fed.pid)
                    self.unreaped = True
        self.state = State.STOPPED
        leftover = self._leftover(keep)
        log.info(
            "plugin %s (pid %d) stopped: %s; %d records delivered, %d dropped",
            self.name,
            fed.pid,
            describe_status(fed.child.returncode),
            self.delivered,
            self.dropped,
        )
        return leftover

    # -- records --------------------------------------------------------------------------

    def offer(self, record: Record) -> bool:
        # Queued while running or about to run (a plugin waiting for its predecessor or
        # out its back-off gets its records late, not never). Per record and plugin, so
        # identity tests: a tuple lookup behind a property cost 0.4 µs.
        state = self.state
        if state is not State.RUNNING and state is not State.BACKOFF and (
            state is not State.PENDING
        ):
            self.dropped += 1
            return True
        if self.queued >= self.ctx.q_depth:
            self.flush()  # full only if the plugin's socket takes no more either
            if self.queued >= self.ctx.q_depth:
                self.dropped += 1
                return False
        self.queue.append(record)
        self.queued += 1
        if self.queued > self.max_depth:
            self.max_depth = self.queued
        return True

    def room(self, count: int) -> bool:
        state = self.state
        return (state is State.RUNNING or state is State.BACKOFF or state is State.PENDING) \
            and self.queued + count <= self.ctx.q_depth

    def take(self, columns: Columns) -> None:
        # A read's records as one queue entry, encoded by C loops: no per-record work here
        # or when they are sent (py-spy: Record, offer and the batching loop were most of
        # pyaudispd's time with one plugin).
        data, ends = columns.encoded(self.config.format)
        self.queue.append(_Chunk(columns, data, ends))
        self.queued += len(ends)
        if self.queued > self.max_depth:
            self.max_depth = self.queued

    def flush(self) -> None:
        # A send per offered record was a system call per record per plugin (py-spy: half
        # of pyaudispd's time with one plugin at 40,000 events/s).
        fed = self.fed
        if self.queue and fed is not None and not fed.waiting and self.state is State.RUNNING:
            fed.pump()

    def adopt(self, records: list[Record]) -> None:
        room = max(0, self.ctx.q_depth - self.queued)
        keep = records[:room]
        self.dropped += len(records) - len(keep)
        self.queue.extendleft(reversed(keep))
        self.queued += len(keep)
        self.max_depth = max(self.max_depth, self.queued)

    def _next_batch(self) -> Batch | None:
        """The next records as one buffer (one send for many small records), with where
        each ends, so that partial writes are accounted record by record. They stay at the
        head of the queue until the socket has taken their last byte."""
        queue = self.queue
        if not queue:
            return None
        head = queue[0]
        if isinstance(head, _Chunk):
            return head.batch()
        encode = Record.frame if self.config.format == "binary" else Record.line
        parts: list[bytes] = []
        ends: list[int] = []
        total = 0
        for record in queue:
            if isinstance(record, _Chunk):
                break
            data = encode(record)
            if parts and (total + len(data) > BATCH_BYTES or len(parts) >= BATCH_RECORDS):
                break
            parts.append(data)
            total += len(data)
            ends.append(total)
        return Batch(parts[0] if len(parts) == 1 else b"".join(parts), ends)

    def _sent(self, count: int) -> None:
        queue = self.queue
        self.delivered += count
        if count == self.queued:
            queue.clear()
            self.queued = 0
            return
        self.queued -= count
        while count:
            head = queue[0]
            if isinstance(head, _Chunk):
                taken = min(count, head.count)
                head.first += taken
                count -= taken
                if not head.count:
                    queue.popleft()
            else:
                queue.popleft()
                count -= 1

    def _on_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _broken(self, exc: OSError) -> None:
        """The plugin closed its input (or is dying): it cannot be fed, so end it; its exit
        then counts as a crash and it is restarted."""
        fed = self.fed
        if fed is None or self.state is not State.RUNNING:
            return
        log.warning(
            "plugin %s (pid %d) stopped reading its input (%s); terminating it",
            self.name,
            fed.pid,
            exc.strerror or exc,
        )
        fed.send_signal(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self.ctx.loop.call_later(
                STOP_TIMEOUT, lambda: fed.send_signal(signal.SIGKILL)
            )

    def _take_queue(self) -> list[Record]:
        records: list[Record] = []
        for entry in self.queue:
            if isinstance(entry, _Chunk):
                records += entry.columns.records(entry.first)
            else:
                records.append(entry)
        self.queue.clear()
        self.queued = 0
        return records

    def _leftover(self, keep: bool) -> list[Record]:
        records = self._take_queue()
        if keep:
            return records
        self.dropped += len(records)
        return []

    def _discard_queue(self) -> None:
        self.dropped += self.queued
        self._take_queue()
