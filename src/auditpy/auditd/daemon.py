"""pyauditd's running state: one event loop (system.evloop) reading the kernel, writing the log, and
answering signals.

Data flows one way: kernel socket -> `proto.records` (filter, format) -> the log file and the
dispatcher link. Nothing that can wait runs on the loop's thread: requests to the kernel go
out from a thread of their own (the kernel may make their sender sleep while its queue is
full, `KernelConnection`), and reading the configuration and the plugin directory happens
on another, so records are read whatever else is going on.

Signals arrive through `system.service.SignalReader` (held from the first instruction,
coalesced, never lost) and become control operations (reload, rotate, resume, state report,
stop) that run one at a time in the order asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import compress
from operator import not_

from auditpy import AUDIT_VERSION
from auditpy.auditd import daemon_records
from auditpy.auditd.actions import ActionKind, FollowUp, helper_for, run_action
from auditpy.auditd.counters import Counters, LogCount
from auditpy.auditd.daemon_records import DaemonSerials, Sender
from auditpy.auditd.diskspace import SpacePolicy, SpaceSettings, Trigger
from auditpy.auditd.dispatch_link import DispatcherLink
from auditpy.auditd.ledger import (
    SYSCALL_COMPANIONS,
    Cause,
    SerialWatch,
    serials_of,
)
from auditpy.auditd.logfile import AuditLog, LogEvent, LogFileError
from auditpy.auditd.network import DaemonHooks, NetworkIntake
from auditpy.auditd.report import daemon_report
from auditpy.auditd.signals import HANDLED_SIGNALS
from auditpy.auditd.startup import (
    MULTICAST_RCVBUF,
    RCVBUF,
    Options,
    Registered,
    load_config,
    log_settings,
    pause_records,
    rcvbuf_for,
    register_with,
    trickle_below,
)
from auditpy.auditd.ticker import LossTicker
from auditpy.config.auditd_conf import AuditdConfig, changed_keys, metrics_address
from auditpy.config.errors import ConfigError
from auditpy.proto.dispatch import HEADER, PROTOCOL_V0, PROTOCOL_V1, pack_batch
from auditpy.proto.netlink import STATUS_ENABLED, AuditStatus, SignalInfo
from auditpy.proto.records import (
    AUDIT_EOE,
    DAEMON_ABORT,
    DAEMON_CONFIG,
    DAEMON_END,
    DAEMON_ERR,
    DAEMON_RESUME,
    DAEMON_ROTATE,
    DAEMON_START,
    MAX_AUDIT_MESSAGE_LENGTH,
    LineFormatter,
    all_events,
    is_event,
)
from auditpy.system import evloop
from auditpy.system.children import spawn_child
from auditpy.system.logsetup import syslog_notifier
from auditpy.system.netlink import KernelConnection, NetlinkError
from auditpy.system.node import node_name
from auditpy.system.service import Signal, SignalReader, write_state_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    from auditpy.auditd.metrics import MetricsServer
    from auditpy.system.children import SpawnChild

# What only some configurations use (the network listener, the metrics endpoint, ENRICHED,
# the plugin directory) is imported where it is first needed: a daemon restarted after a
# crash registers with the kernel sooner, and the kernel drops what it makes while no daemon
# is registered (on a kernel booted without audit=1).

log = logging.getLogger("auditpy")

#: Datagrams read per wakeup: one write and one dispatch per batch keeps the per-record cost
#: to a recv, a format and a list append.
RECV_BATCH = 512
#: Below `startup.trickle_below` records per read, reading pauses for up to COALESCE_SECONDS
#: (a record may reach the log up to 20 ms later; at high rates batches are large and nothing
#: pauses). Each read costs a fixed few hundred microseconds of cold-cache interpreter and
#: system time, so the pause sets the CPU used at low rates (measurements in the benchmark
#: issue's notes).
COALESCE_SECONDS = 0.02
#: How long reads must have found the socket drained before a kernel request is made
#: (`Daemon._request`): enough for kauditd to hand over what it still held.
SETTLE_SECONDS = 0.05
#: How long an operation waits for a settled stream to ask the kernel who sent its signal,
#: before it names the sender from the signal itself.
SENDER_WAIT = 2.0
#: The ledger's clock: loss summaries, dispatcher drops, the periodic state report.
TICK_SECONDS = 1.0
#: How often the kernel's counters are asked for (when it can be asked without harm).
KERNEL_POLL_SECONDS = 5.0

if TYPE_CHECKING:
    T = TypeVar("T")


if TYPE_CHECKING:
    class KernelLink(Protocol):
        """The kernel as the daemon uses it (`system.netlink.KernelConnection`); tests give the
        daemon a fake one. The record stream is read on the loop's thread; the requests are
        made from the daemon's request thread only, since the kernel may make them sleep."""

        multicast: bool

        def fileno(self) -> int: ...

        def recv_columns(self, limit: int) -> tuple[list[int], list[bytes], int]:
            """Up to about `limit` records, without blocking: their types, their payloads, and
            how many ENOBUFS errors were seen."""
            ...

        def state(self) -> dict[str, str]: ...

        def state_counts(self) -> dict[str, int]: ...

        def register(self, pid: int) -> None: ...

        def unregister(self) -> None: ...

        def get_status(self) -> AuditStatus: ...

        def set_status(self, status: AuditStatus) -> None: ...

        def signal_info(self) -> SignalInfo | None: ...

        def set_rcvbuf(self, size: int) -> None: ...

        def close(self) -> None: ...


if TYPE_CHECKING:
    class OpenKernel(Protocol):
        def __call__(self, *, multicast: bool, rcvbuf: int) -> KernelLink: ...


def open_kernel(*, multicast: bool, rcvbuf: int) -> KernelLink:
    return KernelConnection(multicast=multicast, rcvbuf=rcvbuf)


class Operations:
    """The daemon's control operations, one at a time, in the order they were asked for;
    an operation already waiting is not queued again, so a storm of signals costs one run
    of each. A failing operation is logged and the next one runs."""

    def __init__(self, loop: evloop.Loop) -> None:
        self._loop = loop
        self._waiting: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._task: evloop.Task[None] | None = None
        self.running: str | None = None

    def ask(self, name: str, operation: Callable[[], Awaitable[None]]) -> None:
        if any(waiting == name for waiting, _op in self._waiting):
            return
        self._waiting.append((name, operation))
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._waiting:
                name, operation = self._waiting.pop(0)
                self.running = name
                try:
                    await operation()
                except Exception:
                    log.exception("%s failed", name)
                finally:
                    self.running = None
        finally:
            self._task = None

    async def idle(self) -> None:
        """Wait until nothing runs or waits (tests, shutdown)."""
        while self._task is not None:
            await evloop.shield(self._task)


def space_settings(config: AuditdConfig) -> SpaceSettings:
    return SpaceSettings(
        space_left=config.space_left,
        space_left_percent=config.space_left_percent,
        space_left_action=config.space_left_action,
        admin_space_left=config.admin_space_left,
        admin_space_left_percent=config.admin_space_left_percent,
        admin_space_left_action=config.admin_space_left_action,
        disk_full_action=config.disk_full_action,
        disk_error_action=config.disk_error_action,
    )


def dispatch_backlog_bytes(q_depth: int) -> int:
    """What the link to the dispatcher may hold unsent: q_depth records of the largest size."""
    return q_depth * (MAX_AUDIT_MESSAGE_LENGTH + HEADER.size)


def make_formatter(config: AuditdConfig) -> LineFormatter:
    enricher = None
    if config.log_format == "ENRICHED":
        from auditpy.proto.enrich import Enricher

        enricher = Enricher()
    return LineFormatter(node=node_name(config.name_format, config.name), enricher=enricher)


def interpreter_flags() -> list[str]:
    """The dispatcher runs as this interpreter runs: isolated (-I), without site (-S, which
    leaves out whatever site-packages' .pth files load: 5 MiB on the benchmark machine),
    optimised, ..."""
    flags = sys.flags
    out = ["-I"] if flags.isolated else (
        (["-E"] if flags.ignore_environment else []) + (["-s"] if flags.no_user_site else []))
    out += ["-S"] if flags.no_site else []
    out += ["-O"] * flags.optimize
    return out


class Daemon:
    """pyauditd. `open_kernel` and `spawn` are the daemon's edges: the kernel link and the
    way children (the dispatcher) are started; tests give it fakes and run the record path,
    reloads, write failures and actions without root."""

    def __init__(
        self,
        options: Options,
        config: AuditdConfig,
        *,
        open_kernel: OpenKernel = open_kernel,
        spawn: SpawnChild = spawn_child,
        handle_signals: bool = True,
        tune_process: bool = True,
        registered: Registered | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.counters = Counters()
        self.serials = DaemonSerials()
        self.formatter = make_formatter(config)
        self.loop = evloop.Loop()
        self._open_kernel = open_kernel
        self._spawn = spawn
        self._handle_signals = handle_signals
        #: raise limits, protect from the OOM killer, boost priority (not in tests)
        self._tune_process = tune_process
        #: the log and kernel link `startup.register_early` opened and registered from
        self._early = registered
        #: the kernel socket's receive buffer (see `_size_buffer`)
        self._rcvbuf = RCVBUF
        #: below how many records a read is a trickle, and how many a pause waits for
        self._trickle, self._pause_records = trickle_below(RCVBUF), pause_records(RCVBUF)
        self.kernel: KernelLink | None = None
        self.registered = False
        self.log_file: AuditLog | None = None
        self.dispatcher: DispatcherLink | None = None
        self.space = SpacePolicy(space_settings(config))
        self._write_failing = False
        self._size_action_done = False
        self._stop: evloop.Future[int] = self.loop.create_future()
        self._stopping = False
        #: the tcp_listen_port listener and the NATS collector
        self.network = NetworkIntake(self.loop, self.counters, DaemonHooks(
            config=lambda: self.config,
            dispatcher=lambda: self.dispatcher,
            logging=lambda: self.log_file is not None,
            write=self._write,
            daemon_record=self._daemon_record,
            space_low=lambda: self.space.space_warning,
        ))
        self.operations = Operations(self.loop)
        self._signals: SignalReader | None = None
        #: kernel requests, which may sleep while the kernel's queue is full
        self._requests = evloop.Worker("kernel-requests")
        #: reading auditd.conf and the plugin directory, which may be slow
        self._files = evloop.Worker("config-files")
        self._reading = False
        self._last_read = 0.0
        #: set once the record stream has been caught up for SETTLE_SECONDS (see `_request`)
        self._settled = evloop.Event()
        self._settled.set()
        self._settle_timer: evloop.TimerHandle | None = None
        #: the last signal of each number, whose sender a DAEMON_* record names
        self._last_signal: dict[int, Signal] = {}
        self.serials_seen = SerialWatch()
        self.ledger = LossTicker(self._say_loss)
        self.losses = self.ledger.losses
        self._ticker: evloop.Task[None] | None = None
        self._next_report = 0.0
        #: the Prometheus endpoint (metrics_listen), None when not serving
        self.metrics: MetricsServer | None = None

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Everything that can fail at start, in the C daemon's order; raises on failure."""
        if self._handle_signals:
            # Signals sent from now on are handled once the loop runs; until then they wait.
            self._signals = SignalReader(self.loop, HANDLED_SIGNALS, self.on_signal)
        if self._tune_process:
            self._raise_limits()
            self._boost_priority()
        multicast = self.config.kernel_link == "MULTICAST"
        early, self._early = self._early, None
        if early is not None:
            self.kernel, self.log_file, self.registered = early.kernel, early.log_file, True
        else:
            rcvbuf = MULTICAST_RCVBUF if multicast else RCVBUF
            self.kernel = self._open_kernel(multicast=multicast, rcvbuf=rcvbuf)
            self._buffer_size(rcvbuf)
        if self.config.write_logs:
            if self.log_file is None:
                self.log_file = AuditLog(log_settings(self.config), notify=self._notify)
                self.log_file.open()
            self._check_space()
        if not multicast and self.config.local_events:
            # Blocking requests, made so that none can sleep (`register_with`).
            if early is not None:
                status, enable = early.status, early.enable
            else:
                try:
                    status, enable = register_with(self.kernel, self.options.enable)
                except (OSError, TimeoutError) as exc:
                    self._abort("set-pid", exc)
                    raise
                self.registered = True
            if status.enabled == 2 and self.options.enable != "nochange":
                log.warning("The audit system is locked (enabled 2); leaving it as it is")
            if enable is not None:
                try:
                    self.kernel.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=enable))
                except (OSError, TimeoutError) as exc:
                    self._abort("set-enable", exc)
                    raise
            # The buffer's size depends on backlog_wait_time; a burst may come at once.
            self._kernel_status(status)
        self.dispatcher = DispatcherLink(
            self.loop,
            self._dispatcher_argv(),
            max_pending_bytes=dispatch_backlog_bytes(self.config.q_depth),
            spawn=self._spawn,
            rescan=self._rescan_plugins,
        )
        self._daemon_record(
            DAEMON_START, daemon_records.start_text(AUDIT_VERSION, self.config.log_format)
        )
        try:
            self.network.start()
        except (OSError, ValueError) as exc:
            self._abort("network-init", exc)
            raise
        self._watch_kernel()
        # Whether a dispatcher should run is known once the plugin directory has been read,
        # off the record path; records for it wait in the link meanwhile.
        self._rescan_plugins()
        self._ticker = self.loop.create_task(self._tick_forever())
        self.loop.run_until_complete(self._metrics_start())
        log.info(
            "Started audit daemon %s: %s, logging to %s",
            AUDIT_VERSION,
            "read-only multicast listener" if multicast
            else f"registered as pid {os.getpid()}" if self.registered
            else "not registered with the kernel (local_events = no)",
            self.config.log_file if self.config.write_logs else "nowhere (write_logs = no)",
        )

    def run(self) -> int:
        try:
            return self.loop.run_until_complete(self._stop)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Undo everything `start` did that outlives us, the kernel registration above all.
        After a normal stop the registration is already gone (`_op_stop`); after a failed
        start it is undone here, blocking, since nothing else runs."""
        self._unwatch_kernel()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            if not self.loop.is_running():
                self.loop.run_until_complete(evloop.gather(ticker, return_exceptions=True))
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self._signals is not None:
            self._signals.close()
            self._signals = None
        self.network.close()
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.registered and self.kernel is not None:
            try:
                self.kernel.unregister()
            except (OSError, TimeoutError) as exc:
                log.error("Could not unregister from the kernel: %s", exc)
            self.registered = False
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        self._requests.shutdown(wait=False, cancel_pending=True)
        self._files.shutdown(wait=False, cancel_pending=True)
        self.loop.close()

    def _abort(self, op: str, reason: Exception) -> None:
        """Start-up failed after the log was opened: say so in the log, as auditd does."""
        log.error("Start-up failed (%s): %s", op, reason)
        self._daemon_record(DAEMON_ABORT, daemon_records.abort_text(op))

    def _raise_limits(self) -> None:
        for limit in (resource.RLIMIT_FSIZE, resource.RLIMIT_CPU):
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("-1000")
        except OSError:
            pass

    def _boost_priority(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -self.config.priority_boost)
        except OSError as exc:
            log.warning("Cannot set priority boost %d: %s", self.config.priority_boost, exc)

    # -- off the loop -----------------------------------------------------------------------

    async def _request(self, call: Callable[[], T]) -> T:
        """A kernel request, made from the request thread while the loop goes on reading
        records. Callers make it only once `_settled` (or when they must, at stop).

        While its record queue is over backlog_limit the kernel makes the sender of any
        request sleep (audit_receive's "penalize the sender") on the same exclusive wait
        queue as the audited processes it holds, and each pass of kauditd wakes only one
        sleeper of that queue. A request sent while an audited process was held could take
        its wake-up; if that process was the only one producing records, kauditd then found
        nothing to do and slept, and the process slept out the whole backlog_wait_time
        (a SIGCONT state report after a stall held its load for 60 s). The queue can be
        over the limit only while records come faster than they are read, so requests wait
        until reads have found the socket drained for SETTLE_SECONDS.
        """
        return await self.loop.run_in_executor(self._requests, call)

    async def _settled_within(self, timeout: float) -> bool:
        # A read now: the flag may be stale (the daemon may just have been stopped, with
        # its socket filling meanwhile; a SIGCONT is read as soon as the records are).
        if self.kernel is not None and not self._stop.done():
            self._read_batch()
        if self._settled.is_set():
            return True
        try:
            await evloop.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _track_settling(self, drained: bool) -> None:
        if not drained:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
                self._settle_timer = None
            if self._settled.is_set():
                self._settled.clear()
        elif not self._settled.is_set() and self._settle_timer is None:
            self._settle_timer = self.loop.call_later(SETTLE_SECONDS, self._settle)

    def _settle(self) -> None:
        self._settle_timer = None
        self._settled.set()

    async def _off_loop(self, call: Callable[[], T]) -> T:
        """File-system work (configuration, plugin directory), off the record path."""
        return await self.loop.run_in_executor(self._files, call)

    def _rescan_plugins(self) -> None:
        self.loop.create_task(self._reconcile_dispatcher())

    async def _reconcile_dispatcher(self) -> None:
        want = await self._off_loop(self._plugins_active)
        if self.dispatcher is not None and not self._stopping:
            self.dispatcher.reconcile(want)

    # -- the record path ------------------------------------------------------------------------

    def _watch_kernel(self) -> None:
        if self.kernel is not None and not self._reading:
            self.loop.add_reader(self.kernel.fileno(), self._on_readable)
            self._reading = True

    def _unwatch_kernel(self) -> None:
        if self.kernel is not None and self._reading and not self.loop.is_closed():
            self.loop.remove_reader(self.kernel.fileno())
        self._reading = False

    def _on_readable(self) -> None:
        """The event socket became readable (the reader is registered only when idle)."""
        pause = self._read_batch()
        if pause:
            # A trickle: stop watching the socket and read again after a pause, so the next
            # read finds several events. Meanwhile records wait in the socket buffer, not in
            # the kernel's backlog, so nothing is throttled or lost by the pause.
            self._unwatch_kernel()
            self.loop.call_later(pause, self._read_after_pause)

    def _read_after_pause(self) -> None:
        """Read without asking epoll first: while records trickle in, one timer per pause is
        the only wakeup; an empty read or a large batch goes back to watching the socket."""
        if self.kernel is None or self._stop.done():
            return
        pause = self._read_batch()
        if pause:
            self.loop.call_later(pause, self._read_after_pause)
        else:
            self._watch_kernel()

    def _read_batch(self) -> float:
        """Read and handle what is waiting; returns how long to pause before the next read
        (0: none, watch the socket).

        A small batch (`startup.trickle_below` the buffer) means records trickle in: the next
        read waits until about `startup.pause_records` more can be expected at the rate
        they came, at most COALESCE_SECONDS. A fixed pause would let a fast trickle fill a
        small socket buffer and hold the kernel back; a short one would cost a wakeup per
        record at low rates."""
        assert self.kernel is not None
        now = time.monotonic()
        elapsed = now - self._last_read
        self._last_read = now
        types, payloads, enobufs = self.kernel.recv_columns(RECV_BATCH)
        # Records read are written before anything that may take time (syslog, below): what
        # the daemon holds in memory dies with it if it is killed.
        count = len(types)
        if count:
            self._handle(types, payloads)
        self._track_settling(count < RECV_BATCH)
        if enobufs:
            self.counters.enobufs += enobufs
            log.warning("Kernel socket overrun (ENOBUFS), %d in all", self.counters.enobufs)
        if not 0 < count < self._trickle or self._stop.done():
            return 0.0
        return min(COALESCE_SECONDS, self._pause_records * elapsed / count)

    def _drain_kernel(self) -> None:
        """Read everything the socket holds now."""
        if self.kernel is None:
            return
        while True:
            types, payloads, _ = self.kernel.recv_columns(RECV_BATCH)
            if not types:
                return
            self._handle(types, payloads)

    def _handle(self, types: list[int], payloads: list[bytes]) -> None:
        if not all_events(types):
            events = [(t, p) for t, p in zip(types, payloads, strict=True) if is_event(t)]
            if not events:
                return
            types = [t for t, _p in events]
            payloads = [p for _t, p in events]
        counters = self.counters
        counters.received += len(types)
        link = self.dispatcher
        accepting = link is not None and link.accepting
        if not accepting or self._dispatch_v0:
            # The log's lines, and the kernel's text as V0 frames, each made for the whole
            # batch by C loops (see LineFormatter.join_lines).
            data, count = self.formatter.join_lines(types, payloads)
            counters.eoe += len(types) - count
            self._write_data(data, count, counters.kernel)
            if accepting:
                assert link is not None
                link.send(pack_batch(PROTOCOL_V0, types, payloads), len(types))
        else:
            assert link is not None
            events = list(zip(types, payloads, strict=True))
            fmt = self.formatter.format
            lines = [fmt(t, p) for t, p in events]
            logged = [ln for (t, _p), ln in zip(events, lines, strict=True) if t != AUDIT_EOE]
            counters.eoe += len(events) - len(logged)
            self._write(logged, counters.kernel)
            link.send(self._frames(events, lines), len(events))
        # After the write: a gap found here may be said in syslog and the log.
        self._watch_serial_batch(types, payloads)

    def _watch_serial_batch(self, types: Sequence[int], payloads: Sequence[bytes]) -> None:
        """Feed the serial watch about one serial per event (see ledger.SYSCALL_COMPANIONS),
        picked and parsed by C loops."""
        picked = compress(payloads, map(not_, map(SYSCALL_COMPANIONS.__contains__, types)))
        self._serials_lost(self.serials_seen.feed_batch(serials_of(picked)))

    def _serials_lost(self, lost: int) -> None:
        if lost:
            self.counters.serial_gaps += lost
            if self.config.kernel_link == "MULTICAST":
                # The kernel counts nothing it could not multicast: gaps are the only sign.
                self.ledger.note(Cause.SERIAL_GAP.value, lost)

    def _frames(self, events: list[tuple[int, bytes]], lines: list[bytes]) -> bytes:
        """The batch in the dispatcher protocol: kernel text (V0) for RAW lines without a
        node name, the formatted line (V1) otherwise, as the C daemon chooses."""
        pack = HEADER.pack
        if self._dispatch_v0:
            return b"".join(
                [pack(PROTOCOL_V0, 16, t, len(p)) + p for t, p in events]
            )
        return b"".join(
            [pack(PROTOCOL_V1, 16, t, len(line) - 1) + line[:-1]
             for (t, _p), line in zip(events, lines, strict=True)]
        )

    @property
    def _dispatch_v0(self) -> bool:
        return self.config.log_format == "RAW" and not self.formatter.node_prefix

    def _dispatcher_argv(self) -> list[str]:
        argv = [sys.executable, *interpreter_flags(), "-m", "auditpy.audispd",
                "-c", self.options.config_dir,
                "--base-dir", self.options.base_dir, "--run-dir", self.options.run_dir]
        return argv + (["-f"] if self.options.foreground or self.options.no_fork else [])

    def _plugins_active(self) -> bool:
        """Asked at start, reloads and dispatcher exits, off the loop (never per record). The
        plugin directory is the dispatcher's: audispd.conf, when present, overrides
        auditd.conf."""
        from auditpy.config.plugins import any_active, load_dispatcher_settings

        try:
            settings, _warnings = load_dispatcher_settings(
                self.options.config_dir, self.options.base_dir
            )
            plugin_dir = settings.plugin_dir
        except (ConfigError, OSError):
            plugin_dir = self.config.plugin_dir  # the dispatcher will report the problem
        return any_active(plugin_dir)

    def _write(self, lines: list[bytes], count: LogCount) -> LogEvent:
        """The one way lines reach the log, each source counted on its own (`count`)."""
        if self.log_file is None or not lines:
            return self._write_data(b"", len(lines), count)
        return self._written(self.log_file.write(lines), len(lines), count)

    def _write_data(self, data: bytes, lines: int, count: LogCount) -> LogEvent:
        """`_write` for lines joined (LineFormatter.join_lines)."""
        log_file = self.log_file
        if log_file is None:
            count.not_logged += lines  # write_logs = no: records are only dispatched
            return LogEvent.NONE
        if not lines:
            return LogEvent.NONE
        return self._written(log_file.write_data(data, lines), lines, count)

    def _written(self, events: LogEvent, lines: int, count: LogCount) -> LogEvent:
        log_file = self.log_file
        assert log_file is not None
        if not events:
            count.written += lines
            if self._write_failing:
                self._write_failing = False
                self.space.write_ok()
            return events
        failed = events & (LogEvent.NOT_OPEN | LogEvent.DISK_FULL | LogEvent.DISK_ERROR)
        # Only the records of the batch that are not on disk, whole: the log file takes a
        # partly written batch back to its last complete record.
        unwritten = log_file.last_unwritten if failed else 0
        count.written += lines - unwritten
        if unwritten:
            cause = (Cause.LOG_DISK_FULL if events & LogEvent.DISK_FULL
                     else Cause.LOG_WRITE_ERROR if events & LogEvent.DISK_ERROR
                     else Cause.LOG_SUSPENDED).value
            count.not_written[cause] = count.not_written.get(cause, 0) + unwritten
            if count is not self.counters.own:  # what the loss report itself loses is not
                self.ledger.note(cause, unwritten)  # reported again
        self._after_write(events)
        return events

    def _after_write(self, events: LogEvent) -> None:
        """The rare path: something about the log needs the daemon's attention."""
        assert self.log_file is not None
        if events & LogEvent.DISK_FULL:
            self._write_failing = True
            self._run_triggers(self.space.disk_full())
        elif events & LogEvent.DISK_ERROR:
            self._write_failing = True
            self._run_triggers(self.space.disk_error())
        if events & LogEvent.SPACE_SAMPLE and self.log_file.last_statvfs is not None:
            self._run_triggers(self.space.evaluate_statvfs(self.log_file.last_statvfs))
        if events & LogEvent.SIZE_LIMIT and not self._size_action_done:
            action = self.config.max_log_file_action
            # Reported after every write while the file is too big: act once until a
            # rotation or a resume makes it small again, except for the rotating actions.
            self._size_action_done = action not in ("ROTATE", "KEEP_LOGS")
            self._run_action(action, ActionKind.MAX_LOG_FILE)

    def _check_space(self) -> None:
        if self.log_file is not None:
            st = self.log_file.sample_space()
            if st is not None:
                self.space.resolve(st)
                self._run_triggers(self.space.evaluate_statvfs(st))

    def _run_triggers(self, triggers: list[Trigger]) -> None:
        for trigger in triggers:
            self._run_action(trigger.action, ActionKind(trigger.event.value))

    def _run_action(self, action: str, kind: ActionKind) -> None:
        error = self.log_file.last_error if self.log_file else None
        outcome = run_action(
            action,
            kind=kind,
            exe=helper_for(kind, self.config),
            mail_acct=self.config.action_mail_acct,
            log=self.log_file,
            notify=self._notify,
            op=error.op if error else "write",
            error=error.error if error else None,
            num_logs=self.config.num_logs,
        )
        if outcome.child is not None:
            resume = outcome.resume_on_exit
            outcome.child.attach(
                self.loop, lambda _child: self._resume_logging() if resume else None
            )
        follow = outcome.follow_up
        if follow is FollowUp.SUSPEND and self.log_file is not None:
            self.log_file.suspend()
        elif follow is FollowUp.ROTATE:
            self._rotate_log(keep=False)
        elif follow is FollowUp.KEEP_LOGS:
            self._rotate_log(keep=True)
        elif follow is FollowUp.STOP:
            self.on_signal(Signal(signal.SIGTERM))

    #: Messages from the log and the actions, at syslog priorities, to our logger.
    _notify = staticmethod(syslog_notifier(log))

    def _daemon_record(
        self, msg_type: int, text: str, serial: int | None = None, *, dispatch: bool = True
    ) -> None:
        serial = self.serials.next() if serial is None else serial
        payload = daemon_records.payload(text, serial)
        line = self.formatter.format(msg_type, payload)
        self._write([line], self.counters.own)
        link = self.dispatcher
        if dispatch and link is not None and link.accepting:
            link.send(self._frames([(msg_type, payload)], [line]), 1)

    async def _sender(self, signum: int) -> Sender | None:
        """Who sent the signal being handled: as the kernel saw it (the C daemon's source,
        with the sender's login uid even after it exited), or, while the record stream is
        too busy for a kernel request, as the signal itself says (its pid, and what /proc
        still knows of it)."""
        kernel = self.kernel
        if kernel is not None and self.registered and await self._settled_within(SENDER_WAIT):
            info = await self._request(kernel.signal_info)
            if info is not None:
                return Sender.from_signal(info)
        sig = self._last_signal.get(signum)
        return Sender.from_process(sig.pid) if sig is not None and sig.pid else None

    # -- the loss ledger ----------------------------------------------------------------------

    def _say_loss(self, text: str) -> None:
        """Say a loss where operators look: the audit log (DAEMON_ERR, which ausearch shows)
        and syslog; after the first few of a cause, in a summary per interval (`LossTicker`)."""
        log.warning("Audit records lost: %s", text)
        self._daemon_record(DAEMON_ERR, f"{text} res=failed")

    async def _tick_forever(self) -> None:
        """Once a second: loss summaries, the dispatcher's drops, the kernel's figures (when
        it can be asked without holding anyone up) and the periodic state report."""
        next_poll = 0.0
        while True:
            await evloop.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.ledger.tick(now, self.dispatcher)
            interval = self.config.report_interval
            if interval and now >= self._next_report:
                if self._next_report:
                    self.operations.ask("state report", self._op_state)
                self._next_report = now + interval
            if now >= next_poll and self.kernel is not None and self._settled.is_set():
                next_poll = now + KERNEL_POLL_SECONDS
                with contextlib.suppress(NetlinkError, TimeoutError):
                    self._kernel_status(await self._request(self.kernel.get_status))

    def _kernel_status(self, status: AuditStatus) -> None:
        """The kernel's status as last asked: its counters go to the ledger, and its
        backlog_wait_time sizes the socket buffer."""
        self.ledger.kernel_figures(status)
        self._size_buffer()

    def _size_buffer(self) -> None:
        """What the registered socket holds dies with the daemon, while what the kernel could
        not hand over it keeps: while the kernel waits for the daemon (backlog_wait_time >
        0) a small buffer is enough; while it drops instead (0), the buffer is all that
        absorbs a burst."""
        kernel = self.kernel
        if kernel is None or kernel.multicast or not self.registered:
            return
        status = self.ledger.kernel_status
        wait = status.backlog_wait_time if status is not None else None
        size = rcvbuf_for(wait)
        if size == self._rcvbuf:
            return
        try:
            kernel.set_rcvbuf(size)
        except OSError as exc:
            log.error("Cannot resize the kernel socket's receive buffer: %s", exc)
            return
        log.info("kernel socket receive buffer %d KiB (backlog_wait_time %s)",
                 size >> 10, "unknown" if wait is None else wait)
        self._buffer_size(size)

    def _buffer_size(self, size: int) -> None:
        self._rcvbuf = size
        self._trickle, self._pause_records = trickle_below(size), pause_records(size)

    async def _metrics_start(self) -> None:
        if self.config.metrics_listen is None:
            return
        from auditpy.auditd.metrics import MetricsServer

        server = MetricsServer(self.loop, metrics_address(self.config.metrics_listen),
                               self.config.metrics_socket_mode, self.render_metrics)
        try:
            await server.start()
        except OSError as exc:
            log.error("Cannot serve metrics on %s: %s", self.config.metrics_listen, exc)
            return
        self.metrics = server

    @property
    def kernel_status(self) -> AuditStatus | None:
        return self.ledger.kernel_status

    def render_metrics(self) -> str:
        from auditpy.auditd.exposition import metric_families
        from auditpy.proto.prometheus import exposition

        return exposition(metric_families(self))

    # -- signals and the operations they start ---------------------------------------------------

    def on_signal(self, sig: Signal) -> None:
        """Turn a signal into an operation; the operations run one at a time."""
        signum = sig.signum
        if self._stopping:
            return
        self._last_signal[signum] = sig
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
            self.operations.ask("stop", self._op_stop)
        elif signum == signal.SIGHUP:
            self.operations.ask("reload", self._op_reload)
        elif signum == signal.SIGUSR1:
            self.operations.ask("rotate", self._op_rotate)
        elif signum == signal.SIGUSR2:
            self.operations.ask("resume", self._op_resume)
        elif signum == signal.SIGCONT:
            self.operations.ask("state report", self._op_state)

    async def _op_stop(self) -> None:
        """Stop as the C daemon does: DAEMON_END is the last line. The kernel registration is
        given up while records are still read, so nothing the kernel sent us before it
        stopped is lost, and what it sends later waits for the next daemon."""
        sender = await self._sender(signal.SIGTERM)
        kernel = self.kernel
        if self.registered and kernel is not None:
            await self._settled_within(SENDER_WAIT)
            try:
                await self._request(kernel.unregister)
                self.registered = False
            except (OSError, TimeoutError) as exc:
                log.error("Could not unregister from the kernel: %s", exc)
        self._drain_kernel()
        self._unwatch_kernel()
        self.network.stop()
        self._daemon_record(DAEMON_END, daemon_records.end_text(sender))
        log.info("The audit daemon is exiting.")
        if not self._stop.done():
            self._stop.set_result(0)

    async def _op_rotate(self) -> None:
        sender = await self._sender(signal.SIGUSR1)
        keep = self.config.max_log_file_action == "KEEP_LOGS"
        self._rotate_log(keep=keep)
        self._daemon_record(DAEMON_ROTATE, daemon_records.rotate_text(sender))

    def _rotate_log(self, *, keep: bool) -> None:
        if self.log_file is None:
            return
        result = self.log_file.keep_logs() if keep else self.log_file.rotate()
        if result:
            self.counters.rotations += 1
            self._size_action_done = False
        for error in result.errors:
            log.error("Log rotation: %s", error.strerror)
        if result.errors:
            self._run_triggers(self.space.disk_error())

    async def _op_resume(self) -> None:
        sender = await self._sender(signal.SIGUSR2)
        self._resume_logging()
        if self.dispatcher is not None:
            self.dispatcher.forward(signal.SIGUSR2)
        self._daemon_record(DAEMON_RESUME, daemon_records.resume_text(sender))

    def _resume_logging(self) -> None:
        """SIGUSR2, or an exec helper for max_log_file finished: write again."""
        self.space.reset()
        self._size_action_done = False
        if self.log_file is None:
            return
        try:
            self.log_file.resume()
        except LogFileError as exc:
            log.error("Could not resume logging: %s", exc)
            return
        log.info("Audit daemon is attempting to resume logging.")
        self._check_space()

    async def _op_reload(self) -> None:
        sender = await self._sender(signal.SIGHUP)
        try:
            new, warnings = await self._off_loop(lambda: load_config(self.options))
        except ConfigError as exc:
            log.error("Configuration not reloaded, the old one stays in force:\n%s", exc)
            self._daemon_record(DAEMON_CONFIG, daemon_records.config_text(sender, ok=False))
            return
        for warning in warnings:
            log.warning("%s", warning)
        old = self.config
        try:
            self._apply(new)
        except (OSError, ValueError, LogFileError) as exc:
            log.error("Configuration not applied, the old one stays in force: %s", exc)
            self._daemon_record(DAEMON_CONFIG, daemon_records.config_text(sender, ok=False))
            return
        self.network.reconfigure(old)
        # Logged, never dispatched, like the C daemon's.
        self._daemon_record(
            DAEMON_CONFIG,
            daemon_records.config_text(sender, ok=True),
            self.serials.fresh(),
            dispatch=False,
        )
        if self.dispatcher is not None:
            self.dispatcher.max_pending_bytes = dispatch_backlog_bytes(new.q_depth)
            await self._reconcile_dispatcher()

    def _apply(self, new: AuditdConfig) -> None:
        """Put a validated configuration in force, all of it or nothing: whatever can fail
        (the node name, a new log file) is prepared before anything changes, so a refused
        reload leaves the daemon exactly as it was. What cannot change while running is kept
        and named in a warning."""
        changed = changed_keys(self.config, new)
        for key in sorted(changed & {"local_events", "kernel_link"}):
            log.warning("%s changes only at the next start of the daemon", key)
        formatter = self.formatter
        if changed & {"log_format", "name_format", "name"}:
            formatter = make_formatter(new)
        log_file = self.log_file
        if not new.write_logs:
            replacement = None
        elif log_file is None:
            replacement = AuditLog(log_settings(new), notify=self._notify)
            replacement.open()  # raises: nothing has changed yet
        else:
            replacement = log_file
            if log_file.reopen(log_settings(new)):  # raises with the old file still open
                self._size_action_done = False
        if log_file is not None and replacement is not log_file:
            log_file.close()
        self.log_file = replacement
        self.formatter = formatter
        self.space.configure(
            space_settings(new), self.log_file.sample_space() if self.log_file else None
        )
        self.config = new
        if "priority_boost" in changed and self._tune_process:
            self._boost_priority()
        self._check_space()

    async def _op_state(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.forward(signal.SIGCONT)
        kernel = self.kernel
        if kernel is not None and await self._settled_within(SENDER_WAIT):
            with contextlib.suppress(NetlinkError, TimeoutError):
                self._kernel_status(await self._request(kernel.get_status))
        # Too busy to ask the kernel now: its figures as they were when last asked.
        text = daemon_report(
            priority=os.getpriority(os.PRIO_PROCESS, 0),
            config=self.config,
            counters=self.counters,
            log_file=self.log_file,
            space=self.space,
            write_failing=self._write_failing,
            kernel_asked=self.ledger.kernel_asked,
            metrics=self.render_metrics(),
            sections=[
                self.kernel.state() if self.kernel else {},
                self.dispatcher.state() if self.dispatcher else {},
                self.network.state(),
            ],
        )
        path = self.options.state_file
        try:
            write_state_file(path, text, 0o640)
        except OSError as exc:
            log.error("Cannot write the state report %s: %s", path, exc)
