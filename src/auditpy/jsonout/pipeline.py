"""Records in, JSON lines out: assembly, process table, filters, encoding, the sink.

One `JsonPipeline` per JSON output, shared by pyaudispd's ``builtin_json`` and the
``pyaudisp-json`` program: they only differ in how records arrive (dispatcher records vs
string lines) and who calls `expire` when nothing arrives.  A reload keeps the assembler
(events in flight) and the process table (lineage), and swaps the rest.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from auditpy.config.jsonout import JsonConfig
from auditpy.events.assemble import Assembler, Event
from auditpy.events.encode import (
    AUDIT_EXECVE,
    AUDIT_SYSCALL,
    EncodeOptions,
    Encoder,
    Names,
    Parsed,
    dumps,
)
from auditpy.events.fields import Value
from auditpy.events.filters import EventFilter, split_keys
from auditpy.events.lineage import (
    EXEC,
    LabelRules,
    ProcessTable,
    container_id,
    syscall_kind,
    systemd_unit,
)
from auditpy.jsonout import procfs
from auditpy.jsonout.sinks import Sink, open_sink

__all__ = ["JsonPipeline", "PipelineStats", "ProcAccess"]

log = logging.getLogger("auditpy.jsonout")


@dataclass(frozen=True)
class ProcAccess:
    """The I/O the pipeline does besides its sink, as functions (tests pass fakes)."""

    read_proc: Callable[[int], Any] | None = procfs.read_proc
    read_cgroup: Callable[[int], str | None] | None = procfs.read_cgroup
    read_environ: Callable[[int, tuple[str, ...]], dict[str, bytes] | None] | None = (
        procfs.read_environ
    )
    scan: Callable[[], list[Any]] | None = procfs.scan_proc
    user_name: Callable[[int], str | None] | None = procfs.user_name
    group_name: Callable[[int], str | None] | None = procfs.group_name


#: No /proc, no user database: what the Python API uses on saved logs.
NO_ACCESS = ProcAccess(None, None, None, None, None, None)


@dataclass
class PipelineStats:
    events: int = 0
    written: int = 0
    filtered: int = 0


def label_rules(config: JsonConfig) -> LabelRules:
    return LabelRules(
        keys=config.label_keys,
        exe=tuple((re.compile(p), label) for p, label in config.label_exe),
        unlabel_exe=tuple((re.compile(p), label) for p, label in config.unlabel_exe),
        propagate=config.propagate_labels,
    )


class JsonPipeline:
    def __init__(
        self,
        config: JsonConfig,
        *,
        clock: Callable[[], float] | None = time.monotonic,
        sink: Sink | None = None,
        access: ProcAccess | None = None,
        seed: bool = True,
    ) -> None:
        self.access = access or ProcAccess()
        self.clock = clock
        self.assembler = Assembler(config.end_of_event_timeout, clock)
        self.table = ProcessTable(
            config.process_table_size,
            label_rules(config),
            read_proc=self.access.read_proc,
            read_cgroup=self.access.read_cgroup,
        )
        if seed and self.access.scan is not None:
            self.table.seed(self.access.scan())
        self.stats = PipelineStats()
        self.config = config
        self._apply(config)
        self.sink = sink if sink is not None else self._open_sink(config)
        self._out: list[bytes] = []

    # -- configuration ------------------------------------------------------------------

    def _apply(self, config: JsonConfig) -> None:
        self.config = config
        self.encoder = Encoder(
            EncodeOptions(
                universal=config.translate_universal,
                userdb=config.translate_userdb,
                argv_array=config.argv_array,
                argv_string=config.argv_string,
            ),
            Names(self.access.user_name, self.access.group_name),
        )
        self.filter = EventFilter(config.filter_keys, config.filter_labels, config.filter_types)
        self.prefix = config.line_prefix.encode("utf-8", "surrogateescape")
        self.assembler.timeout = config.end_of_event_timeout
        self.table.rules = label_rules(config)
        self.table.capacity = config.process_table_size

    @staticmethod
    def _open_sink(config: JsonConfig) -> Sink:
        return open_sink(config.output, size=config.size, generations=config.generations,
                         mode=config.mode, group=config.group)

    def reconfigure(self, config: JsonConfig) -> None:
        """Apply a new configuration; events in flight and the process table are kept, the
        sink is reopened only when its settings changed."""
        old = self.config
        self.flush()
        sink_keys = ("output", "size", "generations", "mode", "group")
        if any(getattr(old, k) != getattr(config, k) for k in sink_keys):
            self.sink.close()
            self.sink = self._open_sink(config)
        self._apply(config)

    # -- records ------------------------------------------------------------------------

    def add_record(self, msg_type: int, payload: bytes) -> None:
        """One dispatcher record (V0 payload or V1 line)."""
        for event in self.assembler.add_payload(msg_type, payload):
            self.emit(event)

    def add_line(self, line: bytes) -> None:
        """One string-format record or log line."""
        for event in self.assembler.add_line(line):
            self.emit(event)

    def expire(self, now: float | None = None) -> None:
        for event in self.assembler.expire(now):
            self.emit(event)

    def next_deadline(self) -> float | None:
        return self.assembler.next_deadline()

    def flush(self) -> None:
        """Hand the lines made so far to the sink (one write)."""
        if self._out:
            out, self._out = self._out, []
            self.sink.write(out)

    def close(self) -> None:
        """End of input: every open event is written (marked incomplete), then the sink
        is closed."""
        for event in self.assembler.flush():
            self.emit(event)
        self.flush()
        self.sink.close()

    # -- events -------------------------------------------------------------------------

    def enrich(self, parsed: Parsed) -> tuple[
        dict[int, dict[str, Value]] | None, dict[str, Value] | None, bool
    ]:
        """(extras per record type, top-level extras, keep) for one event: the process
        table is updated from it whether or not it is filtered out."""
        config = self.config
        syscall = parsed.syscall
        keys: list[str] = []
        labels: frozenset[str] = frozenset()
        extra: dict[int, dict[str, Value]] | None = None
        top: dict[str, Value] | None = None
        if syscall is not None:
            proc = self.table.observe(parsed.event.eid, syscall)
            for name, value in syscall:
                if name == "key":
                    keys = split_keys(value if isinstance(value, bytes) else None)
                    break
            if proc is not None:
                labels = proc.labels
                info = self.table.enrichment(proc)
                if not config.enrich_pid:
                    info.pop("PPID", None)
                    info.pop("PID", None)
                if info:
                    extra = {AUDIT_SYSCALL: info}
                if config.execve_env and AUDIT_EXECVE in parsed.merged:
                    env = self._environ(proc.pid, syscall)
                    if env is not None:
                        extra = extra or {}
                        extra[AUDIT_EXECVE] = {"ENV": env}
                if proc.cgroup:
                    top = {}
                    if config.enrich_container:
                        cid = container_id(proc.cgroup)
                        if cid:
                            top["CONTAINER_INFO"] = {"ID": cid.encode()}
                    if config.enrich_systemd:
                        unit = systemd_unit(proc.cgroup)
                        if unit:
                            top["SYSTEMD_INFO"] = {"UNIT": unit.encode()}
        keep = not self.filter.active or not self.filter.drops(parsed.first_type, keys, labels)
        return extra, top, keep

    def _environ(self, pid: int, syscall: list[tuple[str, Value]]) -> dict[str, Value] | None:
        read = self.access.read_environ
        if read is None:
            return None
        arch = nr = None
        success = False
        for name, value in syscall:
            if name == "arch" and isinstance(value, int):
                arch = int(value)
            elif name == "syscall" and isinstance(value, int):
                nr = value
            elif name == "success":
                success = value == b"yes"
        if not success or arch is None or nr is None or syscall_kind(arch, nr) != EXEC:
            return None
        env = read(pid, self.config.execve_env)
        return None if env is None else dict(env.items())

    def event_object(self, event: Event) -> dict[str, Any] | None:
        """The JSON object for `event`, None if it is filtered out."""
        parsed = self.encoder.parse(event)
        extra, top, keep = self.enrich(parsed)
        if not keep:
            return None
        return self.encoder.render(parsed, extra, top)

    def emit(self, event: Event) -> None:
        self.stats.events += 1
        obj = self.event_object(event)
        if obj is None:
            self.stats.filtered += 1
            return
        self.stats.written += 1
        self._out.append(self.prefix + dumps(obj).encode("utf-8", "surrogateescape") + b"\n")

    # -- report -------------------------------------------------------------------------

    def state_lines(self) -> list[tuple[str, object]]:
        a, t, s = self.assembler.stats, self.table.stats, self.sink.stats
        return [
            ("output", self.sink.describe()),
            ("records", a.records),
            ("events", self.stats.events),
            ("events written", self.stats.written),
            ("events filtered", self.stats.filtered),
            ("events open", self.assembler.open_events),
            ("events closed by timeout", a.timed_out),
            ("events closed at end of input", a.flushed),
            ("late records (events of their own)", a.late),
            ("EOE records without an event", a.orphan_eoe),
            ("malformed records", a.malformed),
            ("lines not written", s.dropped),
            ("output errors", s.errors),
            ("output rotations", s.rotations),
            ("processes known", len(self.table)),
            ("processes seeded from /proc", t.seeded),
            ("execs / forks / exits seen", f"{t.execs} / {t.forks} / {t.exits}"),
            ("processes evicted", t.evicted),
        ]


def with_output(config: JsonConfig, output: str) -> JsonConfig:
    return replace(config, output=output)
