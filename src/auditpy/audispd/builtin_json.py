"""The ``builtin_json`` plugin: whole events as JSON lines, inside pyaudispd.

``path = builtin_json`` in a plugins.d file, ``args = /etc/audit/audisp-json.conf`` (the
JSON output's configuration, `auditpy.config.jsonout`; no args: the defaults).  Records are
taken straight from the dispatcher's read, with no extra process and no extra copy of the
stream: `offer` keeps a reference, `flush` (once per read of the dispatcher's input) runs the
read's records through the event assembler in one loop and writes the lines of the events
they complete in one write, and a timer closes events whose EOE never came.

A reload with the plugin file unchanged (SIGHUP) re-reads the configuration and applies it
in place: events in flight and the process table are kept.  A configuration with errors is
reported (file:line) and the previous one stays in force.
"""

from __future__ import annotations

import logging

from auditpy import structs
from auditpy.audispd.runner import PluginRunner, Record, RunnerContext, State
from auditpy.config.errors import ConfigError
from auditpy.config.jsonout import JsonConfig, load_json_conf
from auditpy.config.plugins import PluginConfig, parse_json_args
from auditpy.jsonout.pipeline import JsonPipeline
from auditpy.system import evloop

log = logging.getLogger("auditpy.audispd")


class JsonPlugin(PluginRunner):
    def __init__(self, config: PluginConfig, ctx: RunnerContext) -> None:
        super().__init__(config, ctx)
        self.pipeline: JsonPipeline | None = None
        self._timer: evloop.TimerHandle | None = None
        self._node_names: dict[bytes, str] = {}
        #: records offered since the last flush (one read of the dispatcher's input)
        self._batch: list[Record] = []

    def describe(self) -> str:
        return " ".join(["builtin json", *self.config.args])

    def _load(self) -> JsonConfig | None:
        try:
            path = parse_json_args(self.config.args)
        except ValueError as exc:
            log.error("plugin %s: %s", self.name, exc)
            return None
        if path is None:
            return JsonConfig(end_of_event_timeout=self.ctx.end_of_event_timeout)
        try:
            config, warnings = load_json_conf(path)
        except ConfigError as exc:
            for problem in exc.errors:
                log.error("plugin %s: %s", self.name, problem)
            return None
        for warning in warnings:
            log.warning("plugin %s: %s", self.name, warning)
        if config.end_of_event_timeout is None:
            config = structs.replace(
                config, end_of_event_timeout=self.ctx.end_of_event_timeout)
        return config

    def start(self) -> None:
        if self.ctx.shutting_down:
            return
        config = self._load()
        if config is None:
            log.error("plugin %s not started", self.name)
            self.state = State.FAILED
            return
        self.pipeline = JsonPipeline(config, clock=self.ctx.loop.time, manual_clock=True)
        self.state = State.RUNNING
        log.info("plugin %s started: %s, writing to %s", self.name, self.describe(),
                 self.pipeline.sink.describe())

    def offer(self, record: Record) -> bool:
        # Taken as a batch at `flush` (one per read of the dispatcher's input): the records
        # are already in memory, this only keeps a reference.
        if self.state is not State.RUNNING or self.pipeline is None:
            self.dropped += 1  # a builtin has no queue to hold records until it runs
            return True
        self._batch.append(record)
        return True

    def flush(self) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        batch = self._batch
        if batch:
            self._batch = []
            assembler = pipeline.assembler
            now = self.ctx.loop.time()
            assembler.set_time(now)
            pipeline.forget_dead_when_due(now)
            node_prefix = batch[0].node
            if all(r.node is node_prefix for r in batch):
                events = assembler.add_records(batch, self._node(node_prefix))
            else:
                events = []
                for record in batch:
                    events.extend(assembler.add_records([record], self._node(record.node)))
            emit = pipeline.emit
            for event in events:
                emit(event)
            self.delivered += len(batch)
        pipeline.flush()
        if self._timer is None:
            self._arm()

    def _node(self, prefix: bytes) -> str | None:
        if not prefix:
            return None
        node = self._node_names.get(prefix)
        if node is None:
            node = prefix[5:].strip().decode("utf-8", "surrogateescape")
            self._node_names[prefix] = node
        return node

    def _arm(self) -> None:
        """Wake up when the oldest open event reaches end_of_event_timeout."""
        pipeline = self.pipeline
        if pipeline is None or self.state is not State.RUNNING:
            return
        deadline = pipeline.next_deadline()
        if deadline is None:
            return
        self._timer = self.ctx.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        pipeline = self.pipeline
        if pipeline is None:
            return
        pipeline.expire()
        pipeline.flush()
        self._arm()

    def hup(self) -> None:
        pipeline = self.pipeline
        if pipeline is None or self.state is not State.RUNNING:
            log.info("plugin %s unchanged (%s)", self.name, self.state.value)
            return
        config = self._load()
        if config is None:
            log.error("plugin %s: keeping the previous configuration", self.name)
            return
        pipeline.reconfigure(config)
        log.info("plugin %s reloaded its configuration; %d events in flight kept", self.name,
                 pipeline.assembler.open_events)

    async def stop(
        self, *, drain: float = 0.0, term_timeout: float = 0.0, keep: bool = False
    ) -> list[Record]:
        self.state = State.STOPPED
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self.pipeline is not None:
            self.flush()
            self.pipeline.close()
            stats = self.pipeline.stats
            log.info("plugin %s stopped; %d records in, %d events written, %d filtered",
                     self.name, self.delivered, stats.written, stats.filtered)
        return []

    def state_lines(self) -> list[tuple[str, object]]:
        lines = super().state_lines()
        if self.pipeline is not None:
            lines.extend(self.pipeline.state_lines())
        return lines
