"""pyauditd's end of the dispatcher: it owns the pyaudispd child and the socket to it.

The C daemon's original bug lived here: a second reaper took the dispatcher's exit status
and auditd kept signalling a dead pid. This link is the dispatcher's only owner: the child
is watched through its pidfd on the daemon's event loop, reaped exactly once, and signalled
only through that pidfd, so a stale pid can never be hit. After every exit the link asks
again whether a dispatcher should run, so a reload that races with an exit still ends with
the processes the configuration asks for.

Records never wait for the dispatcher: frames go out with non-blocking sends
(`system.fedchild`, the writer pyaudispd feeds its plugins with); what the socket does not
take is kept up to a bound, and beyond that dropped and counted. A batch whose first byte
went out is kept whole until the rest follows (a frame cut in two would end the
dispatcher's input). While it is not yet known whether a dispatcher should run (the plugin
directory is read off the record path), or one should run and is (re)starting, records wait
in the same bounded queue, so a plugin gets what happened while its dispatcher was starting.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence

from auditpy.proto.dispatch import parse_figures
from auditpy.system import evloop
from auditpy.system.children import ChildHandle, spawn_child
from auditpy.system.fedchild import Backoff, Batch, FedChild

TYPE_CHECKING = False
if TYPE_CHECKING:
    from auditpy.system.children import SpawnChild

log = logging.getLogger("auditpy")

#: Back-off before restarting a dispatcher that died: doubles from the first value up to the
#: second, and starts again from the first once one has run for STABLE_AFTER seconds.
RESTART_DELAY = (0.2, 30.0)
STABLE_AFTER = 60.0
SNDBUF = 4 << 20
#: pyaudispd needs up to ~6 s to stop a plugin that ignores SIGTERM; kill it only after.
STOP_TIMEOUT = 8.0
#: The dispatcher is born with every catchable signal blocked and sets its own mask, so a
#: signal sent before its handlers exist waits instead of killing it.
HELD_SIGNALS = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


class DispatcherLink:
    def __init__(
        self,
        loop: evloop.Loop,
        argv: Sequence[str],
        *,
        max_pending_bytes: int,
        spawn: SpawnChild = spawn_child,
        rescan: Callable[[], None] = lambda: None,
    ) -> None:
        self.loop = loop
        self.argv = list(argv)
        self.max_pending_bytes = max_pending_bytes
        self._spawn = spawn
        #: called when the dispatcher exits because it has no active plugin: the owner reads
        #: the plugin directory again (off the record path) and calls `reconcile`
        self._rescan = rescan
        #: the running dispatcher, None between runs
        self._fed: FedChild | None = None
        #: batches not yet handed to the socket, and their bytes
        self._pending: collections.deque[tuple[memoryview, int]] = collections.deque()
        self._pending_bytes = 0
        self._stopping = False
        self._backoff = Backoff(RESTART_DELAY[0], RESTART_DELAY[1], STABLE_AFTER)
        self._restart: evloop.TimerHandle | None = None
        #: should a dispatcher run: None until the owner has read the plugin directory
        self._want: bool | None = None
        self.records_offered = 0
        self.records_sent = 0
        self.records_dropped = 0
        #: the figures per plugin (offered, delivered, dropped, queued, restarts): what
        #: the running dispatcher last reported, plus what earlier dispatchers had counted
        self._reported: dict[str, dict[str, int]] = {}
        self._carried: dict[str, dict[str, int]] = {}
        self._figures_in = bytearray()
        self.starts = 0

    @property
    def child(self) -> ChildHandle | None:
        return None if self._fed is None else self._fed.child

    @property
    def running(self) -> bool:
        return self._fed is not None

    @property
    def accepting(self) -> bool:
        """Whether records are wanted (a dispatcher runs, starts, or may be needed)."""
        return self._want is not False

    # -- life cycle ---------------------------------------------------------------------------

    def reconcile(self, want: bool) -> None:
        """Start, signal or leave the dispatcher so that it matches the configuration
        (`want`: at least one plugin is active).

        A running dispatcher gets SIGHUP even when no plugin is active any more: it then
        stops its plugins and exits by itself, and its exit brings us back here.
        """
        if self._stopping:
            return
        self._want = want
        if self._fed is not None:
            self._fed.send_signal(signal.SIGHUP)
        elif want:
            self._cancel_restart()
            self._start()
        else:
            # Nobody wants them: they were never owed to anyone, so they are taken back
            # from what was offered rather than counted as dropped.
            self.records_offered -= self.records_pending
            self._drop_pending(count=False)

    def forward(self, signum: int) -> None:
        if self._fed is not None:
            self._fed.send_signal(signum)

    def _start_child(self, stdin_fd: int) -> ChildHandle:
        # Born with its signals blocked: a SIGHUP before its handlers exist is held, not
        # fatal (pyaudispd sets its own mask first thing).
        return self._spawn(
            self.argv,
            stdin_fd=stdin_fd,
            env=dict(os.environ),
            blocked_signals=HELD_SIGNALS,
        )

    def _start(self) -> None:
        try:
            fed = FedChild.start(
                self.loop,
                self._start_child,
                SNDBUF,
                next_batch=self._next_batch,
                sent=self._sent,
                on_exit=self._exited,
                broken=self._broken,
                received=self._read_figures,
            )
        except OSError as exc:
            log.error("Cannot start the dispatcher %s: %s", self.argv[0], exc)
            self._schedule_restart()
            return
        self._fed = fed
        self.starts += 1
        self._backoff.started()
        log.info("Started dispatcher: %s pid: %d", " ".join(self.argv[:3]), fed.pid)
        fed.pump()  # what came while it was starting

    def _exited(self, fed: FedChild) -> None:
        if fed is not self._fed:
            return
        self._fed = None
        # A frame half sent to the dead dispatcher cannot be completed: what was queued
        # behind it is lost to the plugins, and counted.
        self._drop_pending(in_flight=fed.abandon())
        self._carry_figures()
        self._backoff.ended()  # a run of STABLE_AFTER starts the back-off again
        status = fed.child.returncode
        if self._stopping:
            return
        if status == 0:
            log.info("Dispatcher %d exited (no active plugins)", fed.pid)
            self._backoff.refill()
            self._want = None  # a reload may have activated one while it was exiting
            self._rescan()
            return
        how = f"killed by signal {-status}" if status is not None and status < 0 else (
            f"exit status {status}"
        )
        log.error("Dispatcher %d died (%s)", fed.pid, how)
        if self._want:
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._stopping or self._restart is not None:
            return
        delay = self._backoff.next_delay()
        assert delay is not None  # no budget: the dispatcher is always started again
        log.info("Restarting the dispatcher in %.1f s", delay)
        self._restart = self.loop.call_later(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart = None
        if self._fed is None and not self._stopping and self._want:
            self._start()

    def _cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down: end of input tells pyaudispd to stop its plugins and exit; it is
        waited for (bounded), then killed, and always reaped."""
        self._stopping = True
        self._cancel_restart()
        fed, self._fed = self._fed, None
        if fed is None:
            return
        # At shutdown, give the dispatcher what is still queued, for a bounded time.
        fed.flush_blocking(deadline=time.monotonic() + min(1.0, timeout))
        fed.close_input()
        self._drop_pending(in_flight=fed.abandon())
        self._carry_figures()
        child = fed.child
        if child.wait(timeout) is None:
            child.send_signal(signal.SIGKILL)
            child.wait(None)

    # -- records ------------------------------------------------------------------------------

    def send(self, data: bytes, records: int) -> None:
        """Queue one batch of frames; never blocks."""
        self.records_offered += records
        fed = self._fed
        if fed is None:
            if self._want is False:
                return  # no plugin is active: nothing is owed to anyone
        elif fed.closed:
            self.records_dropped += records  # it stopped reading; its exit follows
            return
        elif not fed.waiting:
            # Nothing waits: straight to the socket, which usually takes it all.
            fed.write(data, (len(data),), records)
            return
        if self._pending_bytes + (fed.unsent if fed else 0) + len(data) > self.max_pending_bytes:
            self.records_dropped += records
            return
        self._pending.append((memoryview(data), records))
        self._pending_bytes += len(data)

    def _next_batch(self) -> Batch | None:
        if not self._pending:
            return None
        view, records = self._pending.popleft()
        self._pending_bytes -= len(view)
        return Batch(view, (len(view),), records)

    def _sent(self, records: int) -> None:
        self.records_sent += records

    def _broken(self, exc: OSError) -> None:
        """The dispatcher's input refused a send: nothing more reaches it (its exit, which
        follows, is reported through its pidfd)."""
        fed = self._fed
        self._drop_pending(in_flight=0 if fed is None else fed.abandon())

    def _drop_pending(self, *, count: bool = True, in_flight: int = 0) -> None:
        if count:
            self.records_dropped += in_flight + sum(records for _view, records in self._pending)
        self._pending.clear()
        self._pending_bytes = 0

    # -- the dispatcher's figures ------------------------------------------------------------

    def _read_figures(self, data: bytes) -> None:
        self._figures_in += data
        for report in parse_figures(self._figures_in):
            self._reported = report

    def _carry_figures(self) -> None:
        """The dispatcher is gone: its counters are carried forward, its queues are not."""
        self._carried = self.plugin_figures
        for figures in self._carried.values():
            figures.pop("queued", None)
        self._reported = {}
        self._figures_in.clear()

    @property
    def plugin_figures(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for source in (self._carried, self._reported):
            for name, figures in source.items():
                mine = out.setdefault(name, {})
                for key, value in figures.items():
                    # counters add up across dispatchers; a queue is the running one's
                    mine[key] = value if key == "queued" else mine.get(key, 0) + value
        return out

    @property
    def records_pending(self) -> int:
        """Records offered and neither sent nor dropped yet."""
        fed = self._fed
        in_flight = 0 if fed is None else fed.in_flight
        return in_flight + sum(records for _view, records in self._pending)

    def state(self) -> dict[str, str]:
        fed = self._fed
        return {
            "dispatcher pid": str(fed.pid) if fed else "none",
            "dispatcher starts": str(self.starts),
            "records sent to the dispatcher": str(self.records_sent),
            "records not sent to the dispatcher (dropped)": str(self.records_dropped),
            "dispatcher backlog bytes": str(self._pending_bytes + (fed.unsent if fed else 0)),
        }
