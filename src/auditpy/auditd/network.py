"""Records that come from the network: the tcp_listen_port listener (remote_server) and the
NATS JetStream collector (nats_collector), from start through reloads to shutdown.

Both hand their records to the same sink (`listener.RemoteSink`, `collector.CollectorSink`),
which this module implements on top of a few of the daemon's own paths (`DaemonHooks`), so
the record path, the log and the dispatcher link stay the daemon's alone.

The listener and the collector are imported where first needed: a daemon that does not use
them registers with the kernel sooner (see the daemon's module).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from auditpy.auditd.counters import Counters, LogCount
from auditpy.auditd.logfile import LogEvent
from auditpy.config.auditd_conf import AuditdConfig, changed_keys
from auditpy.structs import dataclass
from auditpy.system import evloop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from auditpy.auditd.collector import NatsCollector
    from auditpy.auditd.dispatch_link import DispatcherLink
    from auditpy.auditd.listener import RemoteListener, Reply

log = logging.getLogger("auditpy")


@dataclass(frozen=True)
class DaemonHooks:
    """The daemon as the network intake sees it: callables, since what they read (the
    configuration, the log file, the dispatcher link) is replaced by reloads."""

    #: the configuration in force
    config: Callable[[], AuditdConfig]
    #: the link to the dispatcher, None when there is none
    dispatcher: Callable[[], DispatcherLink | None]
    #: whether there is a log to write to (write_logs)
    logging: Callable[[], bool]
    #: the daemon's one way to the log, counting the lines in the given LogCount
    write: Callable[[list[bytes], LogCount], LogEvent]
    #: one of the daemon's own records (DAEMON_ACCEPT, DAEMON_CLOSE)
    daemon_record: Callable[[int, str], None]
    #: whether the space_left action has been taken (clients are told)
    space_low: Callable[[], bool]


class NetworkIntake:
    """The listener and the collector the configuration asks for, and their shared sink."""

    def __init__(
        self, loop: evloop.Loop, counters: Counters, hooks: DaemonHooks
    ) -> None:
        self._loop = loop
        self._counters = counters
        self._hooks = hooks
        #: the tcp_listen_port listener (remote_server), None when not listening
        self.remote: RemoteListener | None = None
        #: the JetStream collector (nats_collector), None when not collecting
        self.collector: NatsCollector | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Raises OSError or ValueError (TLS files, a nats_collector file gone bad)."""
        config = self._hooks.config()
        self._remote_start(config)
        if config.nats_collector is not None:
            from auditpy.auditd.collector import collector_from_config

            self.collector = collector_from_config(self._loop, config, self)

    def reconfigure(self, old: AuditdConfig) -> None:
        """SIGHUP, once the new configuration is in force; never raises (what cannot be
        applied is logged and the rest goes on)."""
        config = self._hooks.config()
        self._remote_reconfigure(old, config)
        if self.collector is not None or config.nats_collector is not None:
            from auditpy.auditd.collector import reconfigure_collector

            self.collector = reconfigure_collector(self.collector, self._loop, config, self)

    def stop(self) -> None:
        """The daemon stops: ENDING to every client and the collector's batch written, both
        before DAEMON_END, as auditd does."""
        if self.remote is not None:
            self.remote.stop()
        if self.collector is not None:
            self.collector.stop()

    def close(self) -> None:
        """Shutdown: ENDING to the clients (if `stop` has not already), then let the loop
        finish the closes (TLS close_notify) for up to a second."""
        listener, self.remote = self.remote, None
        if listener is not None and not self._loop.is_closed():
            listener.stop()
            if not self._loop.is_running():
                self._loop.run_until_complete(listener.wait_closed(1.0))
        if self.collector is not None:
            self.collector.close()

    def state(self) -> dict[str, str]:
        state = {"listening for network connections": "no"}
        if self.remote is not None:
            state = self.remote.state()
        state["network records received"] = str(self._counters.network_records)
        if self.collector is not None:
            state.update(self.collector.state())
        return state

    # -- the listener -------------------------------------------------------------------------

    def _remote_start(self, config: AuditdConfig) -> None:
        if config.tcp_listen_port is None:
            return
        from auditpy.auditd.listener import ListenerSettings, RemoteListener

        listener = RemoteListener(self._loop, ListenerSettings.from_config(config), self)
        listener.start()
        self.remote = listener

    def _remote_reconfigure(self, old: AuditdConfig, new: AuditdConfig) -> None:
        """A listener can be turned on or off; a new port, queue or transport restarts it
        (clients get ENDING and reconnect); other tcp_* and tls_* settings apply to new
        connections without dropping anyone."""
        listener = self.remote
        if new.tcp_listen_port is None:
            if listener is not None:
                log.info("tcp_listen_port removed: no longer listening")
                listener.stop("the listener is turned off")
                self.remote = None
            return
        from auditpy.auditd.listener import RESTART_KEYS, ListenerSettings, RemoteListener

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
        replacement = RemoteListener(self._loop, settings, self)
        try:
            replacement.start()
        except OSError as exc:
            log.error("Cannot listen for network connections: %s", exc)
            return
        self.remote = replacement

    # -- the sink (listener.RemoteSink, collector.CollectorSink) -------------------------------

    def remote_records(self, lines: list[bytes]) -> Reply:
        """Written verbatim (the client's node=, no enrichment), dispatched with
        distribute_network, and the reply for them."""
        from auditpy.auditd.listener import ACK, dispatch_frames, reply_for  # loaded: listening

        hooks = self._hooks
        counters = self._counters
        count = len(lines)
        counters.network_records += count
        link = hooks.dispatcher()
        if hooks.config().distribute_network and link is not None:
            link.send(dispatch_frames(lines), count)
        if not hooks.logging():
            counters.network.not_logged += count
            return ACK  # write_logs = no: acknowledged, as auditd does
        events = hooks.write(lines, counters.network)
        return reply_for(events, space_low=hooks.space_low())

    def remote_daemon_record(self, msg_type: int, text: str) -> None:
        self._hooks.daemon_record(msg_type, text)
