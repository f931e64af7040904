"""pyauditd's running state: one asyncio loop reading the kernel, writing the log, and
answering signals.

Data flows one way: kernel socket -> `records` (filter, format) -> the log file (and, later,
the dispatcher link). Signals only ever set things in motion from the loop's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from dataclasses import dataclass, fields

from auditpy import AUDIT_VERSION
from auditpy.auditd import daemon_records
from auditpy.auditd.actions import ActionKind, FollowUp, run_action
from auditpy.auditd.collector import NatsCollector, collector_from_config, reconfigure_collector
from auditpy.auditd.counters import Counters, state_report
from auditpy.auditd.daemon_records import DaemonSerials, Sender
from auditpy.auditd.diskspace import SpacePolicy, SpaceSettings, Trigger
from auditpy.auditd.dispatch_link import DispatcherLink
from auditpy.auditd.listener import (
    ACK,
    RESTART_KEYS,
    ListenerSettings,
    RemoteListener,
    Reply,
    dispatch_frames,
    reply_for,
)
from auditpy.auditd.logfile import AuditLog, LogEvent, LogFileError, LogSettings
from auditpy.config.auditd_conf import AuditdConfig, ConfigError, changed_keys, load_auditd_conf
from auditpy.config.plugins import any_active, load_dispatcher_settings
from auditpy.proto.dispatch import HEADER, PROTOCOL_V0, PROTOCOL_V1
from auditpy.proto.enrich import Enricher
from auditpy.proto.netlink import STATUS_ENABLED, AuditStatus
from auditpy.proto.records import (
    AUDIT_EOE,
    DAEMON_ABORT,
    DAEMON_CONFIG,
    DAEMON_END,
    DAEMON_RESUME,
    DAEMON_ROTATE,
    DAEMON_START,
    MAX_AUDIT_MESSAGE_LENGTH,
    NOT_EVENTS,
    LineFormatter,
)
from auditpy.system.netlink import AuditSocket, NetlinkError
from auditpy.system.node import node_name

log = logging.getLogger("auditpy")

#: Datagrams read per wakeup: one write and one dispatch per batch keeps the per-record cost
#: to a recv, a format and a list append.
RECV_BATCH = 512
#: Below this many records per read, reading pauses for COALESCE_SECONDS (a record may reach
#: the log up to 20 ms later; at high rates batches are large and nothing pauses). Each read
#: costs a fixed few hundred microseconds of cold-cache interpreter and system time, so the
#: pause sets the CPU used at low rates: fork/exec at ~900 events/s took 8.2 CPU s per
#: 100,000 events with 10 ms, 5.8 with 20 ms and 5.1 with 25 ms (C auditd: 9.6, same run).
SMALL_BATCH = 256
COALESCE_SECONDS = 0.02
#: The kernel keeps sending while we write; a large buffer absorbs bursts between reads.
RCVBUF = 16 << 20


@dataclass(frozen=True)
class Options:
    config_dir: str = "/etc/audit"
    foreground: bool = False
    no_fork: bool = False
    enable: str = "enable"
    run_dir: str = "/run"
    allow_symlink: bool = False
    #: relative paths in auditd.conf are taken from here (the directory pyauditd started in)
    base_dir: str = "/"

    @property
    def config_path(self) -> str:
        return os.path.join(self.config_dir, "auditd.conf")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "auditd.pid")

    @property
    def state_file(self) -> str:
        return os.path.join(self.run_dir, "auditd.state")


def load_config(options: Options) -> tuple[AuditdConfig, list[str]]:
    """Read and check auditd.conf; raises ConfigError naming the file, line and reason."""
    config, problems = load_auditd_conf(
        options.config_path, allow_symlink=options.allow_symlink, base_dir=options.base_dir
    )
    return config, [str(p) for p in problems]


def log_settings(config: AuditdConfig) -> LogSettings:
    return LogSettings(
        log_file=config.log_file,
        log_gid=config.log_gid,
        flush=config.flush,
        freq=config.freq,
        num_logs=config.num_logs,
        max_log_file=config.max_log_file,
        max_log_file_action=config.max_log_file_action,
    )


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
    enricher = Enricher() if config.log_format == "ENRICHED" else None
    return LineFormatter(node=node_name(config.name_format, config.name), enricher=enricher)


class Daemon:
    def __init__(self, options: Options, config: AuditdConfig) -> None:
        self.options = options
        self.config = config
        self.counters = Counters()
        self.serials = DaemonSerials()
        self.formatter = make_formatter(config)
        self.loop = asyncio.new_event_loop()
        self.kernel: AuditSocket | None = None
        self.control: AuditSocket | None = None
        self.registered = False
        self.log_file: AuditLog | None = None
        self.dispatcher: DispatcherLink | None = None
        self.space = SpacePolicy(space_settings(config))
        self._write_failing = False
        self._size_action_done = False
        self._stop: asyncio.Future[int] = self.loop.create_future()
        #: the tcp_listen_port listener (remote_server), None when not listening
        self.remote: RemoteListener | None = None
        #: the JetStream collector (nats_collector), None when not collecting
        self.collector: NatsCollector | None = None

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Everything that can fail at start, in the C daemon's order; raises on failure."""
        self._raise_limits()
        self._boost_priority()
        self.control = AuditSocket()
        multicast = self.config.kernel_link == "MULTICAST"
        self.kernel = AuditSocket(multicast=multicast, rcvbuf=RCVBUF)
        if self.config.write_logs:
            self.log_file = AuditLog(log_settings(self.config), notify=self._notify)
            self.log_file.open()
            self._check_space()
        if not multicast and self.config.local_events:
            try:
                self.kernel.register(os.getpid())
                self.registered = True
            except (OSError, TimeoutError) as exc:
                self._abort("set-pid", exc)
                raise
            try:
                self._set_enabled()
            except (OSError, TimeoutError) as exc:
                self._abort("set-enable", exc)
                raise
        self.dispatcher = DispatcherLink(
            self.loop,
            self._dispatcher_argv(),
            wanted=self._plugins_active,
            max_pending_bytes=dispatch_backlog_bytes(self.config.q_depth),
        )
        self.dispatcher.reconcile()
        self._daemon_record(
            DAEMON_START, daemon_records.start_text(AUDIT_VERSION, self.config.log_format)
        )
        try:
            self._remote_start()
            self.collector = collector_from_config(self.loop, self.config, self)
        except (OSError, ValueError) as exc:
            self._abort("network-init", exc)
            raise
        self.loop.add_reader(self.kernel.fileno(), self._on_readable)
        handlers = {
            signal.SIGHUP: self._reload,
            signal.SIGUSR1: self._rotate,
            signal.SIGUSR2: self._resume,
            signal.SIGCONT: self._write_state,
            signal.SIGTERM: self._terminate,
            signal.SIGINT: self._terminate,
        }
        for signum, handler in handlers.items():
            self.loop.add_signal_handler(signum, handler)
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
        """Undo everything `start` did that outlives us: the kernel registration above all."""
        if self.kernel is not None:
            self.loop.remove_reader(self.kernel.fileno())
        self._remote_close()
        if self.collector is not None:
            self.collector.close()
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.registered and self.control is not None:
            try:
                self.control.unregister()
            except (OSError, TimeoutError) as exc:
                log.error("Could not unregister from the kernel: %s", exc)
            self.registered = False
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        for sock in (self.kernel, self.control):
            if sock is not None:
                sock.close()
        self.kernel = self.control = None
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

    def _set_enabled(self) -> None:
        assert self.control is not None
        if self.options.enable == "nochange":
            return
        wanted = 1 if self.options.enable == "enable" else 0
        if self.control.get_status().enabled == 2:
            log.warning("The audit system is locked (enabled 2); leaving it as it is")
            return
        self.control.set_status(AuditStatus(mask=STATUS_ENABLED, enabled=wanted))

    # -- the record path ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """The event socket became readable (the reader is registered only when idle)."""
        if self._read_batch():
            # A trickle: stop watching the socket and read again after a pause, so the next
            # read finds several events. At low rates each event was its own wakeup, which
            # cost 1.5 times the C daemon's CPU per event; meanwhile records wait in the
            # 16 MiB socket buffer, not in the kernel's backlog, so nothing is throttled or
            # lost by the pause.
            assert self.kernel is not None
            self.loop.remove_reader(self.kernel.fileno())
            self.loop.call_later(COALESCE_SECONDS, self._read_after_pause)

    def _read_after_pause(self) -> None:
        """Read without asking epoll first: while records trickle in, one timer per pause is
        the only wakeup (no epoll_ctl pair, no extra epoll_wait); an empty read or a large
        batch goes back to watching the socket."""
        if self.kernel is None or self._stop.done():
            return
        records_came = self._read_batch()
        if records_came:
            self.loop.call_later(COALESCE_SECONDS, self._read_after_pause)
        else:
            self.loop.add_reader(self.kernel.fileno(), self._on_readable)

    def _read_batch(self) -> bool:
        """Read and handle what is waiting; True when it was a small batch of records, after
        which the caller pauses."""
        assert self.kernel is not None
        records, enobufs = self.kernel.recv_records(RECV_BATCH)
        if enobufs:
            self.counters.enobufs += enobufs
            log.warning("Kernel socket overrun (ENOBUFS), %d in all", self.counters.enobufs)
        if records:
            self._handle(records)
        return 0 < len(records) < SMALL_BATCH and not self._stop.done()

    def _handle(self, records: list[tuple[int, bytes]]) -> None:
        events = [r for r in records if r[0] not in NOT_EVENTS]
        if not events:
            return
        self.counters.received += len(events)
        link = self.dispatcher
        if link is None or link.sock is None:
            self._write(self.formatter.format_batch(events))
            if link is not None:
                link.missed(len(events))
            return
        fmt = self.formatter.format
        lines = [fmt(t, p) for t, p in events]
        self._write([line for (t, _p), line in zip(events, lines, strict=True) if t != AUDIT_EOE])
        link.send(self._frames(events, lines), len(events))

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
        argv = [sys.executable, "-m", "auditpy.audispd", "-c", self.options.config_dir,
                "--base-dir", self.options.base_dir, "--run-dir", self.options.run_dir]
        return argv + (["-f"] if self.options.foreground or self.options.no_fork else [])

    def _plugins_active(self) -> bool:
        """Asked at start, reloads and dispatcher exits (never per record). The plugin
        directory is the dispatcher's: audispd.conf, when present, overrides auditd.conf."""
        try:
            settings, _warnings = load_dispatcher_settings(
                self.options.config_dir, self.options.base_dir
            )
            plugin_dir = settings.plugin_dir
        except (ConfigError, OSError):
            plugin_dir = self.config.plugin_dir  # the dispatcher will report the problem
        return any_active(plugin_dir)

    def _write(self, lines: list[bytes]) -> None:
        log_file = self.log_file
        if log_file is None or not lines:
            return  # write_logs = no: records are only dispatched
        events = log_file.write(lines)
        if events:
            self._after_write(events, len(lines))
        elif self._write_failing:
            self._write_failing = False
            self.space.write_ok()

    def _after_write(self, events: LogEvent, count: int) -> None:
        """The rare path: something about the log needs the daemon's attention."""
        assert self.log_file is not None
        if events & (LogEvent.NOT_OPEN | LogEvent.DISK_FULL | LogEvent.DISK_ERROR):
            self.counters.suspended_dropped += count
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
            exe=getattr(self.config, f"{kind.value}_exe", None),
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
            self._terminate()

    def _notify(self, priority: int, message: str) -> None:
        """Messages from the log and the actions, at syslog priorities, to our logger."""
        level = logging.ERROR if priority <= 3 else logging.WARNING if priority <= 4 else (
            logging.INFO if priority <= 6 else logging.DEBUG
        )
        log.log(level, "%s", message)

    def _daemon_record(
        self, msg_type: int, text: str, serial: int | None = None, *, dispatch: bool = True
    ) -> None:
        serial = self.serials.next() if serial is None else serial
        payload = daemon_records.payload(text, serial)
        line = self.formatter.format(msg_type, payload)
        self._write([line])
        if dispatch and self.dispatcher is not None and self.dispatcher.sock is not None:
            self.dispatcher.send(self._frames([(msg_type, payload)], [line]), 1)

    def _sender(self) -> Sender | None:
        info = self.control.signal_info() if self.control and self.registered else None
        return Sender.from_signal(info)

    # -- signals ---------------------------------------------------------------------------------

    def _terminate(self) -> None:
        if self._stop.done():
            return
        self._on_readable_drain()
        if self.remote is not None:
            self.remote.stop()  # ENDING to every client before DAEMON_END, as auditd
        if self.collector is not None:
            self.collector.stop()  # writes what it holds before DAEMON_END
        self._daemon_record(DAEMON_END, daemon_records.end_text(self._sender()))
        log.info("The audit daemon is exiting.")
        self._stop.set_result(0)

    def _on_readable_drain(self) -> None:
        if self.kernel is None:
            return
        while True:
            records, _ = self.kernel.recv_records(RECV_BATCH)
            if not records:
                return
            self._handle(records)

    def _rotate(self) -> None:
        sender = self._sender()
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

    def _resume(self) -> None:
        sender = self._sender()
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

    def _reload(self) -> None:
        sender = self._sender()
        try:
            new, warnings = load_config(self.options)
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
        self._remote_reconfigure(old)
        self.collector = reconfigure_collector(self.collector, self.loop, self.config, self)
        # Logged, never dispatched, like the C daemon's.
        self._daemon_record(
            DAEMON_CONFIG,
            daemon_records.config_text(sender, ok=True),
            self.serials.fresh(),
            dispatch=False,
        )
        if self.dispatcher is not None:
            self.dispatcher.max_pending_bytes = dispatch_backlog_bytes(new.q_depth)
            self.dispatcher.reconcile()

    def _apply(self, new: AuditdConfig) -> None:
        """Put a validated configuration in force; what cannot change while running is kept
        and named in a warning."""
        changed = changed_keys(self.config, new)
        for key in sorted(changed & {"local_events", "kernel_link"}):
            log.warning("%s changes only at the next start of the daemon", key)
        formatter = self.formatter
        if changed & {"log_format", "name_format", "name"}:
            formatter = make_formatter(new)
        if "write_logs" in changed and not new.write_logs and self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        elif new.write_logs and self.log_file is None:
            self.log_file = AuditLog(log_settings(new), notify=self._notify)
            self.log_file.open()
        elif self.log_file is not None and self.log_file.reopen(log_settings(new)):
            self._size_action_done = False
        self.formatter = formatter
        self.space.configure(
            space_settings(new), self.log_file.sample_space() if self.log_file else None
        )
        self.config = new
        if "priority_boost" in changed:
            self._boost_priority()
        self._check_space()

    def _write_state(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.forward(signal.SIGCONT)
        status: AuditStatus | None = None
        if self.control is not None:
            try:
                status = self.control.get_status()
            except (NetlinkError, TimeoutError):
                status = None
        config_items = {f.name: str(getattr(self.config, f.name)) for f in fields(self.config)}
        text = state_report(
            version=AUDIT_VERSION,
            priority=os.getpriority(os.PRIO_PROCESS, 0),
            writing=self.log_file is not None,
            counters=self.counters,
            written=self.log_file.records_written if self.log_file else 0,
            bytes_written=self.log_file.bytes_written if self.log_file else 0,
            kernel_lost=status.lost if status else None,
            kernel_backlog=status.backlog if status else None,
            log_state=self._log_state(),
            config_items=config_items,
            extra={
                **self._kernel_state(),
                **(self.dispatcher.state() if self.dispatcher else {}),
                **self._remote_state(),
                **(self.collector.state() if self.collector is not None else {}),
            },
        )
        path = self.options.state_file
        old_umask = os.umask(0o137)
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError as exc:
            log.error("Cannot write the state report %s: %s", path, exc)
        finally:
            os.umask(old_umask)

    def _kernel_state(self) -> dict[str, str]:
        if self.kernel is None:
            return {}
        return {
            "kernel reads": self.kernel.read_method,
            "datagrams not from the kernel (dropped)": str(self.kernel.rejected),
            "records longer than 8970 bytes (cut)": str(self.kernel.truncated),
        }

    # -- the network listener (tcp_listen_port; remote_server) ----------------------------------

    def _remote_start(self) -> None:
        """Listen when tcp_listen_port is set; raises OSError or ValueError (TLS files)."""
        if self.config.tcp_listen_port is None:
            return
        listener = RemoteListener(self.loop, ListenerSettings.from_config(self.config), self)
        listener.start()
        self.remote = listener

    def _remote_close(self) -> None:
        """Shutdown: ENDING to the clients (if _terminate has not already), then let the
        loop finish the closes (TLS close_notify) for up to a second."""
        listener, self.remote = self.remote, None
        if listener is None or self.loop.is_closed():
            return
        listener.stop()
        if not self.loop.is_running():
            self.loop.run_until_complete(listener.wait_closed(1.0))

    def _remote_reconfigure(self, old: AuditdConfig) -> None:
        """SIGHUP: a listener can be turned on or off; a new port, queue or transport
        restarts it (clients get ENDING and reconnect); other tcp_* and tls_* settings
        apply to new connections without dropping anyone."""
        new = self.config
        listener = self.remote
        if new.tcp_listen_port is None:
            if listener is not None:
                log.info("tcp_listen_port removed: no longer listening")
                listener.stop("the listener is turned off")
                self.remote = None
            return
        try:
            settings = ListenerSettings.from_config(new)
        except (OSError, ValueError) as exc:
            log.error("Network listener settings not applied: %s", exc)
            return
        if listener is not None and not changed_keys(old, new) & RESTART_KEYS:
            listener.update(settings)
            return
        if listener is not None:
            listener.stop("the listener is restarting")
            self.remote = None
        replacement = RemoteListener(self.loop, settings, self)
        try:
            replacement.start()
        except OSError as exc:
            log.error("Cannot listen for network connections: %s", exc)
            return
        self.remote = replacement

    def remote_records(self, lines: list[bytes]) -> Reply:
        """Records from network clients (RemoteSink): written verbatim (the client's node=,
        no enrichment), dispatched with distribute_network, and the reply for them."""
        count = len(lines)
        self.counters.network_records += count
        link = self.dispatcher
        if self.config.distribute_network and link is not None:
            link.send(dispatch_frames(lines), count)
        log_file = self.log_file
        if log_file is None:
            return ACK  # write_logs = no: acknowledged, as auditd does
        events = log_file.write(lines)
        if events:
            self._after_write(events, count)
        elif self._write_failing:
            self._write_failing = False
            self.space.write_ok()
        return reply_for(events, space_low=self.space.space_warning)

    def remote_daemon_record(self, msg_type: int, text: str) -> None:
        """DAEMON_ACCEPT / DAEMON_CLOSE from the listener (RemoteSink)."""
        self._daemon_record(msg_type, text)

    def _remote_state(self) -> dict[str, str]:
        state = {"listening for network connections": "no"}
        if self.remote is not None:
            state = self.remote.state()
        state["network records received"] = str(self.counters.network_records)
        return state

    def _log_state(self) -> dict[str, str]:
        lf = self.log_file
        if lf is None:
            return {}
        st = lf.last_statvfs
        free = f"{st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB" if st else "unknown"
        return {
            "current log file": lf.path,
            "current log size": f"{lf.size // 1024} KiB",
            "max log size": f"{self.config.max_log_file * 1024} KiB",
            "Logging partition free space": free,
            "space_left setting": f"{self.space.space_left_mib:.0f} MiB",
            "admin_space_left setting": f"{self.space.admin_space_left_mib:.0f} MiB",
            "logging suspended": "yes" if lf.suspended or not lf.is_open else "no",
            "file system space action performed": "yes" if self.space.space_warning else "no",
            "admin space action performed": "yes" if self.space.admin_space_warning else "no",
            "disk error detected": "yes" if self._write_failing else "no",
        }
