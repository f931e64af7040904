"""The ``builtin_nats`` plugin: every record published to NATS JetStream, inside pyaudispd.

``args`` names the publisher's configuration (``audisp-nats.conf`` syntax, default
``/etc/audit/audisp-nats.conf``); the publisher is the one of the ``pyaudisp-nats``
program (`auditpy.nats.publisher`), so the two behave alike.

Why a thread: the publisher fsyncs its queue before sending and parses an acknowledgement
per record; on the dispatcher's own loop either would delay the other plugins.  In its own
thread (with its own event loop) it costs the dispatcher one locked list append per
record: `offer` hands lines over, `flush` wakes the thread once per read of the
dispatcher's input.  The hand-over holds at most ``q_depth`` lines; beyond that records are
dropped, counted, and ``overflow_action`` applies, as for any plugin.  The publisher's own
queue (on disk) is bounded by its ``queue_depth``; what it drops is counted there.

If pyaudispd is killed, the lines in the hand-over die with it; the publisher finds the
records they were in the audit log (``recover_from``) when it starts again.
"""

from __future__ import annotations

import contextlib
import logging
import syslog
import threading

from auditpy.audispd.runner import PluginRunner, Record, RunnerContext, State
from auditpy.config.errors import ConfigError
from auditpy.config.nats_conf import PUBLISHER, NatsConf, load_nats_conf
from auditpy.config.plugins import PluginConfig, parse_nats_args
from auditpy.nats.publisher import Publisher
from auditpy.proto.records import AUDIT_EOE
from auditpy.system import evloop
from auditpy.system.spool import QueueError

log = logging.getLogger("auditpy.audispd")

#: At stop, how long queued records may take to be stored before the thread ends (they
#: stay in the on-disk queue either way).
STOP_DRAIN = 2.0
_LEVELS = {
    syslog.LOG_ERR: logging.ERROR,
    syslog.LOG_WARNING: logging.WARNING,
    syslog.LOG_NOTICE: logging.INFO,
    syslog.LOG_INFO: logging.INFO,
}


class NatsPlugin(PluginRunner):
    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        super().__init__(config, ctx)
        self.conf_path = ""
        self.publisher: Publisher | None = None
        self._lock = threading.Lock()
        self._handoff: list[bytes] = []
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._engine: evloop.Loop | None = None
        self._ready = threading.Event()
        self._quit: evloop.Event | None = None
        self._drain_seconds = STOP_DRAIN

    def describe(self) -> str:
        return " ".join(["builtin nats", *self.config.args])

    @property
    def depth(self) -> int:
        publisher = self.publisher
        return len(self._handoff) + (len(publisher.queue) if publisher is not None else 0)

    def _log(self, priority: int, message: str) -> None:
        log.log(_LEVELS.get(priority, logging.ERROR), "plugin %s: %s", self.name, message)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.ctx.shutting_down or self._thread is not None:
            return
        try:
            self.conf_path = parse_nats_args(self.config.args)
            parsed = load_nats_conf(self.conf_path, PUBLISHER)
        except ValueError as exc:
            log.error("plugin %s not started: %s", self.name, exc)
            self.state = State.FAILED
            return
        except ConfigError as exc:
            for problem in exc.errors:
                log.error("plugin %s: %s", self.name, problem)
            log.error("plugin %s not started: bad configuration", self.name)
            self.state = State.FAILED
            return
        for problem in parsed.warnings:
            log.warning("plugin %s: %s", self.name, problem)
        try:
            publisher = Publisher(parsed.config, self._log, program="pyaudispd")
        except (OSError, ValueError) as exc:
            log.error("plugin %s not started: cannot load the TLS files: %s", self.name, exc)
            self.state = State.FAILED
            return
        try:
            publisher.open()
        except QueueError as exc:
            log.error("plugin %s not started: %s", self.name, exc)
            publisher.close()
            self.state = State.FAILED
            return
        self.publisher = publisher
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name=f"nats:{self.name}", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        self.state = State.RUNNING
        log.info("plugin %s started: %s (queue %s, %d records)", self.name, self.describe(),
                 parsed.config.queue_file or "in memory", len(publisher.queue))

    def _main(self) -> None:
        evloop.run(self._run())

    async def _run(self) -> None:
        publisher = self.publisher
        assert publisher is not None
        self._engine = evloop.running_loop()
        self._quit = evloop.Event()
        task = evloop.create_task(publisher.run())
        self._ready.set()
        try:
            await self._quit.wait()
            self._take()
            with contextlib.suppress(Exception):
                await evloop.wait_for(publisher.drain(self._drain_seconds),
                                       self._drain_seconds + 1)
            await publisher.stop()
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            publisher.close()

    def hup(self) -> None:
        try:
            parsed = load_nats_conf(self.conf_path, PUBLISHER)
        except ConfigError as exc:
            for problem in exc.errors:
                log.error("plugin %s: %s", self.name, problem)
            log.error("plugin %s: configuration refused; keeping the running one", self.name)
            return
        engine, publisher = self._engine, self.publisher
        if engine is not None and publisher is not None:
            engine.call_soon_threadsafe(self._reconfigure, publisher, parsed.config)
            log.info("plugin %s: %s reloaded; reconnecting", self.name, self.conf_path)

    def _reconfigure(self, publisher: Publisher, conf: NatsConf) -> None:
        try:
            publisher.reconfigure(conf)
        except (OSError, ValueError) as exc:
            log.error("plugin %s: cannot load the TLS files (%s); keeping the running "
                      "configuration", self.name, exc)

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = 0.0, keep: bool = False
    ) -> list[Record]:
        self.state = State.STOPPED
        thread, engine, quit_ = self._thread, self._engine, self._quit
        if thread is not None and engine is not None and quit_ is not None:
            self._drain_seconds = min(max(drain, 0.5), STOP_DRAIN)
            with contextlib.suppress(RuntimeError):
                engine.call_soon_threadsafe(quit_.set)
            joiner = evloop.Worker(f"{self.name}-join")
            try:
                await evloop.running_loop().run_in_executor(
                    joiner, thread.join, self._drain_seconds + 5.0)
            finally:
                joiner.shutdown(wait=False)
        self._thread = None
        publisher = self.publisher
        log.info("plugin %s stopped; %d records handed over, %d dropped; %d queued",
                 self.name, self.delivered, self.dropped,
                 len(publisher.queue) if publisher is not None else 0)
        return []

    # -- records --------------------------------------------------------------------------

    def offer(self, record: Record) -> bool:
        if self.state is not State.RUNNING:
            self.dropped += 1
            return True
        if record.msg_type == AUDIT_EOE:
            return True
        line = record.line()[:-1]
        with self._lock:
            if len(self._handoff) >= self.ctx.q_depth:
                self.dropped += 1
                return False
            self._handoff.append(line)
        self.delivered += 1
        return True

    def flush(self) -> None:
        engine = self._engine
        if not self._handoff or self._wake_pending or engine is None:
            return
        self._wake_pending = True
        try:
            engine.call_soon_threadsafe(self._take)
        except RuntimeError:  # the engine loop is closed (stopping)
            self._wake_pending = False

    def _take(self) -> None:
        """On the engine thread: everything handed over so far goes to the publisher."""
        with self._lock:
            lines, self._handoff = self._handoff, []
            self._wake_pending = False
        if lines and self.publisher is not None:
            self.publisher.submit(lines)

    def state_lines(self) -> list[tuple[str, object]]:
        publisher = self.publisher
        extra = publisher.state() if publisher is not None else []
        return [*super().state_lines(), ("configuration", self.conf_path), *extra]
