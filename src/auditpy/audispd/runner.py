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

import asyncio
import collections
import dataclasses
import enum
import logging
import signal
from dataclasses import dataclass

from auditpy.config.files import check_plugin_program
from auditpy.config.plugins import PluginConfig
from auditpy.proto import dispatch as wire
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


@dataclass
class RunnerContext:
    """What every supervisor shares with the dispatcher; updated in place on reload."""

    loop: asyncio.AbstractEventLoop
    q_depth: int = 2000
    max_restarts: int = 10
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stable_after: float = STABLE_AFTER
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


async def _within(future: asyncio.Future[None], timeout: float) -> bool:
    """Whether `future` completes within `timeout` seconds (without cancelling it)."""
    if not future.done():
        await asyncio.wait([future], timeout=timeout)
    return future.done()


class PluginRunner:
    """The interface the dispatcher uses; external programs and builtins implement it."""

    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        self.config = config
        self.ctx = ctx
        self.state = State.PENDING
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
        #: records not yet completely in the plugin's socket, oldest first (at most q_depth);
        #: the head ones may be in the batch being written
        self.queue: collections.deque[Record] = collections.deque()
        #: the running process, None between runs
        self.fed: FedChild | None = None
        self._exited: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._restart_timer: asyncio.TimerHandle | None = None
        self._stable_timer: asyncio.TimerHandle | None = None
        self._kill_timer: asyncio.TimerHandle | None = None

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
        return len(self.queue)

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
            self.config = dataclasses.replace(self.config, identity=identity)
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
            await asyncio.wait(
                [self._drained, exited], timeout=drain, return_when=asyncio.FIRST_COMPLETED
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
        if len(self.queue) >= self.ctx.q_depth:
            self.flush()  # full only if the plugin's socket takes no more either
            if len(self.queue) >= self.ctx.q_depth:
                self.dropped += 1
                return False
        self.queue.append(record)
        if len(self.queue) > self.max_depth:
            self.max_depth = len(self.queue)
        return True

    def flush(self) -> None:
        # A send per offered record was a system call per record per plugin (py-spy: half
        # of pyaudispd's time with one plugin at 40,000 events/s).
        fed = self.fed
        if self.queue and fed is not None and not fed.waiting and self.state is State.RUNNING:
            fed.pump()

    def adopt(self, records: list[Record]) -> None:
        room = max(0, self.ctx.q_depth - len(self.queue))
        keep = records[:room]
        self.dropped += len(records) - len(keep)
        self.queue.extendleft(reversed(keep))
        self.max_depth = max(self.max_depth, len(self.queue))

    def _next_batch(self) -> Batch | None:
        """The next records as one buffer (one send for many small records), with where
        each ends, so that partial writes are accounted record by record. They stay at the
        head of the queue until the socket has taken their last byte."""
        queue = self.queue
        if not queue:
            return None
        encode = Record.frame if self.config.format == "binary" else Record.line
        parts: list[bytes] = []
        ends: list[int] = []
        total = 0
        for record in queue:
            data = encode(record)
            if parts and (total + len(data) > BATCH_BYTES or len(parts) >= BATCH_RECORDS):
                break
            parts.append(data)
            total += len(data)
            ends.append(total)
        return Batch(parts[0] if len(parts) == 1 else b"".join(parts), ends)

    def _sent(self, count: int) -> None:
        queue = self.queue
        if count == len(queue):
            queue.clear()
        else:
            for _ in range(count):
                queue.popleft()
        self.delivered += count

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
        records = list(self.queue)
        self.queue.clear()
        return records

    def _leftover(self, keep: bool) -> list[Record]:
        records = self._take_queue()
        if keep:
            return records
        self.dropped += len(records)
        return []

    def _discard_queue(self) -> None:
        self.dropped += len(self.queue)
        self._take_queue()
