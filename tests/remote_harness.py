"""A stand-in for pyaudisp-remote's I/O shell, to drive the sans-I/O delivery core in tests.

It carries out the core's decisions the way `plugin.RemotePlugin` does (in order; a Send is
followed by its `written` report; events that follow from a decision are queued behind the
rest) on a model queue (a list of records) and a model connection (the frames written on
it), with a clock that moves only when told to.  No sockets, no sleeps.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable

from auditpy import structs
from auditpy.audisp_remote import delivery as dl
from auditpy.config.remote_conf import Action, RemoteConfig
from auditpy.proto import remote as rp


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_config(**keys: object) -> RemoteConfig:
    """A config for tests: loopback, and actions that never stop the plugin unless asked."""
    base = RemoteConfig(
        remote_server="127.0.0.1", port=60, network_failure_action=Action("syslog"),
        queue_error_action=Action("syslog"),
    )
    values: dict[str, object] = {}
    for key, value in keys.items():
        if key.endswith("_action") and isinstance(value, str):
            kind, _, exe = value.partition(" ")
            value = Action(kind, exe or None)
        values[key] = value
    return structs.replace(base, **values)


@dataclasses.dataclass
class Conn:
    """The model connection: what was written on it, frame by frame."""

    number: int
    frames: list[rp.Frame] = dataclasses.field(default_factory=list)
    lines: list[bytes] = dataclasses.field(default_factory=list)
    #: frames written and not answered yet (the harness answers in order)
    unanswered: collections.deque[rp.Frame] = dataclasses.field(
        default_factory=collections.deque)
    closed: str = ""  # "abort" or "graceful" once the core closed it


class Harness:
    def __init__(self, config: RemoteConfig | None = None, *, durable: bool = False,
                 records: Iterable[bytes] = ()) -> None:
        self.clock = Clock()
        self.core = dl.Delivery(config or make_config(), clock=self.clock)
        self.queue: list[bytes] = list(records)
        self.synced = len(self.queue)  # records at the head the model queue holds durably
        self.durable = durable
        self.decisions: list[dl.Decision] = []
        self.logs: list[str] = []
        self.execs: list[tuple[str, str]] = []
        self.runlevels: list[str] = []
        self.exit_code: int | None = None
        self.conns: list[Conn] = []
        self.conn: Conn | None = None
        self.connecting = False
        self.closing = False
        #: what `written` reports after the next Send (the transport's flow control)
        self.block_writes = False
        #: records popped as acknowledged / dropped, in order
        self.popped_acked: list[bytes] = []
        self.popped_dropped: list[bytes] = []
        self.on_send: Callable[[Conn, list[rp.Frame]], None] | None = None
        self.apply(self.core.use_queue(list(self.queue), durable=durable))

    # ---- carrying out decisions, as the plugin does

    def apply(self, decisions: list[dl.Decision]) -> list[dl.Decision]:
        todo = collections.deque(decisions)
        done = []
        while todo:
            decision = todo.popleft()
            done.append(decision)
            self.decisions.append(decision)
            todo.extend(self._carry_out(decision))
        return done

    def _carry_out(self, decision: dl.Decision) -> list[dl.Decision]:
        if isinstance(decision, dl.Send):
            conn = self.conn
            assert conn is not None and not conn.closed, "Send without a live connection"
            if self.core.config.format == "ascii":
                conn.lines += decision.data.splitlines()
            else:
                frames = rp.FrameReader().feed(decision.data)
                conn.frames += frames
                conn.unanswered.extend(frames)
                if self.on_send is not None:
                    self.on_send(conn, frames)
            return self.core.written(self.block_writes)
        if isinstance(decision, dl.Pop):
            assert decision.count <= self.synced, "popping records that are not durable"
            popped, self.queue = self.queue[:decision.count], self.queue[decision.count:]
            self.synced -= decision.count
            (self.popped_acked if decision.acked else self.popped_dropped).extend(popped)
        elif isinstance(decision, dl.Requeue):
            count = decision.count
            self.queue = self.queue[count:] + self.queue[:count]
            self.synced = len(self.queue)
        elif isinstance(decision, dl.Sync):
            self.synced = len(self.queue)
        elif isinstance(decision, dl.Connect):
            assert not self.connecting and self.conn is None and not self.closing
            self.connecting = True
        elif isinstance(decision, dl.Close):
            assert self.conn is not None
            self.conn.closed = "abort" if decision.abort else "graceful"
            self.conn = None
            self.closing = not decision.abort
        elif isinstance(decision, dl.Log):
            self.logs.append(decision.message)
        elif isinstance(decision, dl.Exec):
            self.execs.append((decision.path, decision.argument))
        elif isinstance(decision, dl.RunInit):
            self.runlevels.append(decision.level)
        elif isinstance(decision, dl.Exit):
            assert self.exit_code is None, "two Exits"
            self.exit_code = decision.code
            # the plugin tears down: whatever connection there was is aborted
            if self.conn is not None:
                self.conn.closed = "exit"
            self.conn = None
            self.connecting = self.closing = False
        return []

    # ---- events

    def start(self) -> list[dl.Decision]:
        return self.apply(self.core.start())

    def add(self, *records: bytes) -> list[dl.Decision]:
        self.queue += records
        if not self.durable:
            self.synced = len(self.queue)
        return self.apply(self.core.records_queued(list(records)))

    def connect_ok(self) -> list[dl.Decision]:
        assert self.connecting
        self.connecting = False
        self.conn = Conn(len(self.conns))
        self.conns.append(self.conn)
        return self.apply(self.core.connected())

    def connect_fail(self, reason: str = "Connection refused") -> list[dl.Decision]:
        assert self.connecting
        self.connecting = False
        return self.apply(self.core.connect_failed(reason))

    def closed(self) -> list[dl.Decision]:
        assert self.closing
        self.closing = False
        return self.apply(self.core.closed())

    def data(self, data: bytes) -> list[dl.Decision]:
        return self.apply(self.core.data_received(data))

    def reply(self, kind: int = rp.TYPE_ACK, payload: bytes = b"",
              seq: int | None = None) -> list[dl.Decision]:
        """Answer the oldest unanswered frame (or send a reply for `seq`)."""
        assert self.conn is not None
        if seq is None:
            seq = self.conn.unanswered.popleft().seq
        return self.data(rp.pack_frame(kind, seq, payload))

    def ack_all(self) -> list[dl.Decision]:
        out = []
        while self.conn is not None and self.conn.unanswered:
            out += self.reply()
        return out

    def lost(self, error: str | None = "Connection reset by peer") -> list[dl.Decision]:
        return self.apply(self.core.connection_lost(error))

    def eof(self) -> list[dl.Decision]:
        return self.apply(self.core.peer_closed())

    def writable(self) -> list[dl.Decision]:
        self.block_writes = False
        return self.apply(self.core.writable())

    def advance(self, seconds: float) -> list[dl.Decision]:
        """Let time pass, calling `tick` at every deadline on the way, as the timer would."""
        stop = self.clock.now + seconds
        out: list[dl.Decision] = []
        while True:
            when = self.core.deadline()
            if when is None or when > stop:
                break
            self.clock.now = max(self.clock.now, when)
            out += self.apply(self.core.tick())
            # a tick at a deadline must move it, or the plugin's timer would spin
            after = self.core.deadline()
            assert after is None or after > self.clock.now, (when, after, self.core.phase)
        self.clock.now = stop
        return out

    # ---- looking

    def sent_payloads(self, conn: Conn | None = None) -> list[bytes]:
        conn = conn or self.conns[-1]
        return [f.payload for f in conn.frames if f.msg_type == rp.TYPE_MESSAGE]


def kinds(decisions: Iterable[dl.Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def records(count: int, start: int = 0) -> list[bytes]:
    return [b"type=USER msg=audit(1.0:%d): r%d" % (n, n) for n in range(start, start + count)]
