"""pyauditd's end of the dispatcher: it owns the pyaudispd child and the socket to it.

The C daemon's original bug lived here: a second reaper took the dispatcher's exit status
and auditd kept signalling a dead pid. This link is the dispatcher's only owner: the child
is watched through its pidfd on the daemon's event loop, reaped exactly once, and signalled
only through that pidfd, so a stale pid can never be hit. After every exit the link asks
again whether a dispatcher should run, so a reload that races with an exit still ends with
the processes the configuration asks for.

Records never wait for the dispatcher: frames go out with non-blocking sends; what the
socket does not take is kept up to a bound, and beyond that dropped and counted. While it
is not yet known whether a dispatcher should run (the plugin directory is read off the
record path), or one should run and is (re)starting, records wait in the same bounded
queue, so a plugin gets what happened while its dispatcher was starting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence

from auditpy.proto.dispatch import parse_figures
from auditpy.system.children import ChildHandle, SpawnChild, spawn_child, stdin_pair

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
        loop: asyncio.AbstractEventLoop,
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
        self.child: ChildHandle | None = None
        self.sock: socket.socket | None = None
        self._pending: collections.deque[tuple[memoryview, int]] = collections.deque()
        self._pending_bytes = 0
        self._writing = False
        self._stopping = False
        self._delay = RESTART_DELAY[0]
        self._started_at = 0.0
        self._restart: asyncio.TimerHandle | None = None
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
    def running(self) -> bool:
        return self.child is not None

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
        if self.child is not None:
            self.child.send_signal(signal.SIGHUP)
        elif want:
            self._cancel_restart()
            self._start()
        else:
            # Nobody wants them: they were never owed to anyone, so they are taken back
            # from what was offered rather than counted as dropped.
            self.records_offered -= self.records_pending
            self._drop_pending(count=False)

    def forward(self, signum: int) -> None:
        if self.child is not None:
            self.child.send_signal(signum)

    def _start(self) -> None:
        parent_end, child_end = stdin_pair(SNDBUF)
        try:
            # Born with its signals blocked: a SIGHUP before its handlers exist is held,
            # not fatal (pyaudispd unblocks them once its loop handles them).
            child = self._spawn(
                self.argv,
                stdin_fd=child_end.fileno(),
                env=dict(os.environ),
                blocked_signals=HELD_SIGNALS,
            )
        except OSError as exc:
            parent_end.close()
            log.error("Cannot start the dispatcher %s: %s", self.argv[0], exc)
            self._schedule_restart()
            return
        finally:
            child_end.close()
        self.sock = parent_end
        self.child = child
        self.starts += 1
        self._started_at = time.monotonic()
        child.attach(self.loop, self._exited)
        self.loop.add_reader(parent_end.fileno(), self._read_figures)
        log.info("Started dispatcher: %s pid: %d", " ".join(self.argv[:3]), child.pid)
        if self._pending:  # what came while it was starting
            self._writing = True
            self.loop.add_writer(parent_end.fileno(), self._drain)

    def _exited(self, child: ChildHandle) -> None:
        if child is not self.child:
            return
        self.child = None
        # A frame half sent to the dead dispatcher cannot be completed: what was queued
        # behind it is lost to the plugins, and counted.
        self._drop_pending()
        self._close_sock()
        status = child.returncode
        if self._stopping:
            return
        if status == 0:
            log.info("Dispatcher %d exited (no active plugins)", child.pid)
            self._delay = RESTART_DELAY[0]
            self._want = None  # a reload may have activated one while it was exiting
            self._rescan()
            return
        how = f"killed by signal {-status}" if status is not None and status < 0 else (
            f"exit status {status}"
        )
        log.error("Dispatcher %d died (%s)", child.pid, how)
        if time.monotonic() - self._started_at >= STABLE_AFTER:
            self._delay = RESTART_DELAY[0]
        if self._want:
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._stopping or self._restart is not None:
            return
        delay = self._delay
        self._delay = min(self._delay * 2, RESTART_DELAY[1])
        log.info("Restarting the dispatcher in %.1f s", delay)
        self._restart = self.loop.call_later(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart = None
        if self.child is None and not self._stopping and self._want:
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
        child, self.child = self.child, None
        self._flush_blocking(deadline=time.monotonic() + min(1.0, timeout))
        self._close_sock()
        if child is not None and child.wait(timeout) is None:
            child.send_signal(signal.SIGKILL)
            child.wait(None)

    # -- records ------------------------------------------------------------------------------

    def send(self, data: bytes, records: int) -> None:
        """Queue one batch of frames; never blocks."""
        self.records_offered += records
        sock = self.sock
        view = memoryview(data)
        if sock is None:
            if self._want is False:
                return  # no plugin is active: nothing is owed to anyone
        elif not self._pending:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.records_dropped += records
                return  # the exit of the child follows; its pidfd reports it
            if sent == len(data):
                self.records_sent += records
                return
            view = view[sent:]
        if self._pending_bytes + len(view) > self.max_pending_bytes:
            self.records_dropped += records
            return
        self._pending.append((view, records))
        self._pending_bytes += len(view)
        if sock is not None and not self._writing:
            self._writing = True
            self.loop.add_writer(sock.fileno(), self._drain)

    def _drain(self) -> None:
        sock = self.sock
        while self._pending and sock is not None:
            view, records = self._pending[0]
            try:
                sent = sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                self._drop_pending()
                return
            self._pending_bytes -= sent
            if sent < len(view):
                self._pending[0] = (view[sent:], records)
                return
            self._pending.popleft()
            self.records_sent += records
        self._stop_writing()

    def _close_sock(self) -> None:
        """Let go of the socket; the dead dispatcher's figures are carried forward."""
        self._stop_writing()
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(sock.fileno())
        self._carried = self.plugin_figures
        for figures in self._carried.values():
            figures.pop("queued", None)
        self._reported = {}
        self._figures_in.clear()
        sock.close()

    def _stop_writing(self) -> None:
        if self._writing and self.sock is not None:
            self.loop.remove_writer(self.sock.fileno())
        self._writing = False

    def _drop_pending(self, *, count: bool = True) -> None:
        self._stop_writing()
        if count:
            self.records_dropped += sum(records for _view, records in self._pending)
        self._pending.clear()
        self._pending_bytes = 0

    def _flush_blocking(self, deadline: float) -> None:
        """At shutdown, give the dispatcher what is still queued, for a bounded time."""
        sock = self.sock
        if sock is None:
            return
        self._stop_writing()
        sock.settimeout(max(0.0, deadline - time.monotonic()))
        try:
            while self._pending:
                view, records = self._pending.popleft()
                sock.sendall(view)
                self.records_sent += records
        except OSError:
            pass
        self._drop_pending()

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

    def _read_figures(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(sock.fileno())  # its exit follows, through the pidfd
            return
        self._figures_in += data
        for report in parse_figures(self._figures_in):
            self._reported = report

    @property
    def records_pending(self) -> int:
        return sum(records for _view, records in self._pending)

    def state(self) -> dict[str, str]:
        return {
            "dispatcher pid": str(self.child.pid) if self.child else "none",
            "dispatcher starts": str(self.starts),
            "records sent to the dispatcher": str(self.records_sent),
            "records not sent to the dispatcher (dropped)": str(self.records_dropped),
            "dispatcher backlog bytes": str(self._pending_bytes),
        }
