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

from auditpy.config.jsonout import JsonConfig
from auditpy.events.assemble import Assembler, Event
from auditpy.events.encode import (
    AUDIT_EXECVE,
    AUDIT_SYSCALL,
    EncodeOptions,
    Encoder,
    Names,
    dumps,
    fragment,
)
from auditpy.events.filters import EventFilter, split_keys
from auditpy.events.lineage import (
    EXEC,
    LabelRules,
    Process,
    ProcessTable,
    SyscallFacts,
    container_id,
    syscall_facts,
    syscall_kind,
    systemd_unit,
)
from auditpy.events.render import LineRenderer
from auditpy.jsonout import procfs
from auditpy.jsonout.sinks import Sink, open_sink
from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from auditpy.events.fields import Value

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
    live_pids: Callable[[], set[int] | None] | None = procfs.live_pids


#: No /proc, no user database: what the Python API uses on saved logs.
NO_ACCESS = ProcAccess(None, None, None, None, None, None, None)
#: How often a live pipeline lets go of processes that are gone (`forget_dead_processes`):
#: one that exited stays between one and two passes after its last event.
FORGET_DEAD_SECONDS = 10.0
#: A pass comes sooner, but no sooner than FORGET_SOON_SECONDS after the last, once the
#: table has grown by FORGET_GROWTH entries since it: a burst of short processes (a build,
#: a fork bomb) is let go of within seconds instead of filling the table towards its
#: capacity, at the cost of listing /proc at most twice a second while it lasts.
FORGET_SOON_SECONDS = 0.5
FORGET_GROWTH = 512
#: what a process table entry's cache holds after its first event's fragments were rendered
_RENDERED_ONCE: Final = True


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
        manual_clock: bool = False,
    ) -> None:
        self.access = access or ProcAccess()
        self.clock = clock
        #: with `manual_clock` the caller sets the assembler's time once per batch of
        #: records (``assembler.set_time``) instead of a clock call per record
        self.assembler = Assembler(config.event_timeout, clock, manual=manual_clock)
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
        #: when the last `forget_dead_when_due` pass was, and the table's size after it
        self._forgot_at = float("-inf")
        self._forgot_size = 0

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
        self.assembler.timeout = config.event_timeout
        self.table.rules = label_rules(config)
        self.table.capacity = config.process_table_size
        self.renderer = LineRenderer(self.encoder)
        self._generation = getattr(self, "_generation", 0) + 1

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
        if now is None and self.clock is not None:
            now = self.clock()
        for event in self.assembler.expire(now):
            self.emit(event)

    def next_deadline(self) -> float | None:
        return self.assembler.next_deadline()

    def forget_dead_processes(self) -> int:
        """Let the process table go of processes that are gone (ProcessTable.forget_dead).
        Without /proc access (saved logs) nothing is known to be gone."""
        live = self.access.live_pids() if self.access.live_pids is not None else None
        return 0 if live is None else self.table.forget_dead(live)

    def forget_dead_when_due(self, now: float) -> None:
        """`forget_dead_processes` every FORGET_DEAD_SECONDS of `now` (clock units), or
        after FORGET_SOON_SECONDS once the table grew by FORGET_GROWTH: what a live
        stream's reader calls once per read, so that the table follows the processes that
        run rather than growing to its capacity on a host that starts many short ones."""
        since = now - self._forgot_at
        if since >= FORGET_DEAD_SECONDS or (
            since >= FORGET_SOON_SECONDS
            and len(self.table) - self._forgot_size >= FORGET_GROWTH
        ):
            self._forgot_at = now
            self.forget_dead_processes()
            self._forgot_size = len(self.table)

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

    def _context(self, eid: str, facts: SyscallFacts) -> tuple[
        Process | None, dict[str, Value], dict[str, Value]
    ]:
        """The process of a SYSCALL event (the table updated from it, whether or not the
        event is filtered out), its SYSCALL extras (PPID, PID, LABELS) and top-level extras
        (CONTAINER_INFO, SYSTEMD_INFO)."""
        proc = self.table.observe_facts(eid, facts)
        if proc is None:
            return None, {}, {}
        return self._context_of(proc)

    def _environ(self, pid: int, facts: SyscallFacts) -> dict[str, Value] | None:
        """ENV for an exec event: the configured variables of the live process."""
        read = self.access.read_environ
        if read is None or not self.config.execve_env or not facts.success:
            return None
        if facts.arch is None or facts.nr is None or syscall_kind(facts.arch, facts.nr) != EXEC:
            return None
        env = read(pid, self.config.execve_env)
        return None if env is None else dict(env.items())

    def _keep(self, first_type: int, facts: SyscallFacts | None, labels: frozenset[str]) -> bool:
        if not self.filter.active:
            return True
        keys = split_keys(facts.key) if facts is not None else []
        return not self.filter.drops(first_type, keys, labels)

    def event_object(self, event: Event) -> dict[str, Any] | None:
        """The JSON object for `event` (the generic path), None if it is filtered out."""
        parsed = self.encoder.parse(event)
        syscall = parsed.syscall
        extra: dict[int, dict[str, Value]] = {}
        top: dict[str, Value] = {}
        labels: frozenset[str] = frozenset()
        facts = syscall_facts(syscall) if syscall is not None else None
        if facts is not None:
            proc, info, top = self._context(event.eid, facts)
            if proc is not None:
                labels = proc.labels
                if info:
                    extra[AUDIT_SYSCALL] = info
                if AUDIT_EXECVE in parsed.merged:
                    env = self._environ(proc.pid, facts)
                    if env is not None:
                        extra[AUDIT_EXECVE] = {"ENV": env}
        if not self._keep(parsed.first_type, facts, labels):
            return None
        return self.encoder.render(parsed, extra, top)

    def emit(self, event: Event) -> None:
        """Write one event (unless filtered out): cached fragments when the event's shape
        allows, the generic path otherwise; the same bytes either way."""
        self.stats.events += 1
        layout = self.renderer.layout(event)
        if layout is None:
            obj = self.event_object(event)
            if obj is None:
                self.stats.filtered += 1
                return
            line = dumps(obj)
        else:
            facts = layout.facts
            syscall_extra = execve_extra = top_extra = ""
            labels: frozenset[str] = frozenset()
            if facts is not None:
                proc = self.table.observe_facts(event.eid, facts)
                if proc is not None:
                    labels = proc.labels
                    syscall_extra, top_extra = self._proc_fragments(proc)
                    if layout.has_execve:
                        env = self._environ(proc.pid, facts)
                        if env is not None:
                            execve_extra = fragment({"ENV": env})
            if not self._keep(layout.first_type, facts, labels):
                self.stats.filtered += 1
                return
            line = self.renderer.line(layout, syscall_extra, execve_extra, top_extra)
        self.stats.written += 1
        self._out.append(self.prefix + line.encode("utf-8", "surrogateescape") + b"\n")

    def _proc_fragments(self, proc: Process) -> tuple[str, str]:
        """SYSCALL and top-level extras of `proc`, cached on its entry until it, its parent
        or the configuration changes. Only from its second event on: most processes a
        fork/exec load shows have one event, and the cache would be a large part of their
        entry for as long as the table keeps them."""
        parent = self.table.parent_of(proc)
        key = (proc.version, parent, -1 if parent is None else parent.version,
               self._generation)
        cached = proc.cache
        if isinstance(cached, tuple) and cached[0] == key:
            return cached[1], cached[2]
        _proc, info, top = self._context_of(proc)
        frags = (fragment(info) if info else "", fragment(top) if top else "")
        proc.cache = (key, *frags) if cached is not None else _RENDERED_ONCE
        return frags

    def _context_of(self, proc: Process) -> tuple[Process, dict[str, Value], dict[str, Value]]:
        """`_context` for a process already updated from the event."""
        config = self.config
        info = self.table.enrichment(proc)
        if not config.enrich_pid:
            info.pop("PPID", None)
            info.pop("PID", None)
        top: dict[str, Value] = {}
        if proc.cgroup:
            if config.enrich_container:
                cid = container_id(proc.cgroup)
                if cid:
                    top["CONTAINER_INFO"] = {"ID": cid.encode()}
            if config.enrich_systemd:
                unit = systemd_unit(proc.cgroup)
                if unit:
                    top["SYSTEMD_INFO"] = {"UNIT": unit.encode()}
        return proc, info, top

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
            ("record fragments rendered (cache misses)", self.renderer.misses),
            ("lines not written", s.dropped),
            ("output errors", s.errors),
            ("output rotations", s.rotations),
            ("processes known", len(self.table)),
            ("processes seeded from /proc", t.seeded),
            ("execs / forks / exits seen", f"{t.execs} / {t.forks} / {t.exits}"),
            ("processes evicted", t.evicted),
            ("processes forgotten (gone from /proc)", t.forgotten),
        ]
