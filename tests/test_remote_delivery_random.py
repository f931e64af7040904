"""The delivery core under random interleavings: replies of every kind (ACK, DISKLOW,
DISKFULL, DISKERROR, unknown warnings and errors, ENDING), replies split across reads, bad
replies, disconnects of every kind, connects that fail, flow control, signals, timer expiries
and new records, in any order, with random settings.

After every step: a record leaves the queue only after its ACK (or an action that said
dequeue), no record is acknowledged twice, none is lost or duplicated, at most WINDOW frames
are in flight, sequence numbers only grow and are never 0, nothing is sent after an error
reply on the same connection, each connection sends the unacknowledged records in queue
order before newer ones, and in forward mode only fsynced records are sent or removed.  At the
end, a healthy server gets every record that was not dropped.
"""

from __future__ import annotations

import collections

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from auditpy.audisp_remote import delivery as dl
from auditpy.config.remote_conf import RemoteConfig
from auditpy.proto import remote as rp

from .remote_harness import Conn, Harness, make_config

STORED_KINDS = (rp.TYPE_ACK, rp.TYPE_DISKLOW, 0x50000009, 0x40000077)
ERROR_KINDS = (rp.TYPE_DISKFULL, rp.TYPE_DISKERROR, 0x60000003)
#: ACK most of the time, so that connections live long enough to fill the window
REPLY_KINDS = (rp.TYPE_ACK,) * 12 + STORED_KINDS[1:] + ERROR_KINDS + (rp.TYPE_ENDING,)

#: actions that may be set for an error or warning (stop only now and then: it ends a run)
ACTIONS = ("ignore", "syslog", "warn_once", "warn_once_continue", "suspend", "exec /bin/x",
           "single")
DEQUEUEING = {"ignore", "syslog", "warn_once_continue", "exec"}


@st.composite
def configs(draw: st.DrawFn) -> RemoteConfig:
    def action(extra: tuple[str, ...] = ()) -> str:
        return draw(st.sampled_from(ACTIONS + extra))

    return make_config(
        mode=draw(st.sampled_from(["immediate", "forward"])),
        network_retry_time=draw(st.integers(0, 3)),
        max_tries_per_record=draw(st.integers(1, 4)),
        max_time_per_record=draw(st.integers(1, 10)),
        heartbeat_timeout=draw(st.sampled_from([0, 4, 4])),
        network_failure_action=action(("stop",)),
        disk_low_action=action(),
        # warn_once keeps a refused record: it is what makes refusals reorder the queue
        disk_full_action=action(("stop", "warn_once", "warn_once")),
        disk_error_action=action(("warn_once", "warn_once")),
        generic_error_action=action(("warn_once", "warn_once")),
        generic_warning_action=action(),
        remote_ending_action=action(("reconnect", "reconnect")),
        overflow_action="syslog",
        startup_failure_action="warn_once_continue",
    )


class DeliveryMachine(RuleBasedStateMachine):
    h: Harness

    @initialize(config=configs(), recovered=st.integers(0, 5))
    def setup(self, config: RemoteConfig, recovered: int) -> None:
        self.config = config
        self.durable = config.mode == "forward"
        self.counter = 0
        initial = self._new(recovered if self.durable else 0)
        self.h = Harness(config, durable=self.durable, records=initial)
        self.h.on_send = self._check_send
        self.added: list[bytes] = list(initial)
        #: records the server said it stored, in the order it said so
        self.stored: list[bytes] = []
        self.refused: set[bytes] = set()
        #: per connection: what it must send, in order (the queue when it came up, then
        #: the records queued while it was up)
        self.expected: dict[int, list[bytes]] = {}
        #: connections that got an error reply (nothing may be sent on them afterwards)
        self.draining: set[int] = set()
        self.last_seq = 0
        self.h.start()

    def _new(self, count: int) -> list[bytes]:
        out = [b"type=USER msg=audit(1.0:%d): rec-%d" % (n, n)
               for n in range(self.counter, self.counter + count)]
        self.counter += count
        return out

    # ---- checks made as frames are written

    def _check_send(self, conn: Conn, frames: list[rp.Frame]) -> None:
        assert conn.number not in self.draining, "sent after an error reply"
        for frame in frames:
            assert frame.msg_type in (rp.TYPE_MESSAGE, rp.TYPE_HEARTBEAT)
            assert frame.seq != 0, "sequence number 0 is the ENDING id"
            assert frame.seq > self.last_seq, "sequence numbers must grow"
            self.last_seq = frame.seq
        sent = [f.payload for f in conn.frames if f.msg_type == rp.TYPE_MESSAGE]
        expected = self.expected[conn.number]
        assert sent == expected[:len(sent)], "records out of queue order on a connection"
        if self.durable:
            new = {f.payload for f in frames if f.msg_type == rp.TYPE_MESSAGE}
            assert new <= set(self.h.queue[:self.h.synced]), "sent before it was fsynced"

    # ---- the plugin's side

    @rule(count=st.integers(1, 40))
    def add(self, count: int) -> None:
        new = self._new(count)
        self.added += new
        if self.h.conn is not None:
            self.expected[self.h.conn.number] += new
        self.h.add(*new)

    def connect_ok(self) -> None:
        self.expected[len(self.h.conns)] = list(self.h.queue)
        self.h.connect_ok()

    @precondition(lambda self: self.h.connecting)
    @rule(ok=st.sampled_from([True, True, True, False]),
          reason=st.sampled_from(["Connection refused", "timed out after 5 s"]))
    def connect_done(self, ok: bool, reason: str) -> None:
        if ok:
            self.connect_ok()
        else:
            self.h.connect_fail(reason)

    @precondition(lambda self: self.h.closing)
    @rule()
    def closed(self) -> None:
        self.h.closed()

    @rule(seconds=st.sampled_from([None, None, 0.01, 0.05, 0.5, 1.0, 2.0, 4.5, 11.0, 30.0]))
    def time_passes(self, seconds: float | None) -> None:
        """A while, or exactly up to the next deadline (a heartbeat, a timeout, the end of
        a pause, a sync)."""
        if seconds is None:
            when = self.h.core.deadline()
            if when is None:
                return
            seconds = when - self.h.clock.now
        self.h.advance(seconds)

    @rule(block=st.booleans())
    def flow_control(self, block: bool) -> None:
        if block:
            self.h.block_writes = True
        else:
            self.h.writable()

    @rule(what=st.sampled_from(["resume", "reload", "overflow"]))
    def signal(self, what: str) -> None:
        core = self.h.core
        if what == "resume":
            self.h.apply(core.resume())
        elif what == "reload":
            self.h.apply(core.reload(self.config))
        else:
            self.h.apply(core.overflow(3))

    # ---- the server's side

    @precondition(lambda self: self.h.conn is not None and bool(self.h.conn.unanswered))
    @rule(kinds=st.lists(st.sampled_from(REPLY_KINDS), min_size=2, max_size=40))
    def replies(self, kinds: list[int]) -> None:
        """A run of replies, each read on its own, while the connection lasts."""
        for kind in kinds:
            if self.h.conn is None or not self.h.conn.unanswered:
                break
            self.reply(kind, 0)

    @precondition(lambda self: self.h.conn is not None and bool(self.h.conn.unanswered))
    @rule(kind=st.sampled_from(REPLY_KINDS), split=st.integers(0, 15))
    def reply(self, kind: int, split: int) -> None:
        conn = self.h.conn
        assert conn is not None
        if kind == rp.TYPE_ENDING:
            self.h.data(rp.pack_frame(rp.TYPE_ENDING, 0))
            return
        frame = conn.unanswered.popleft()
        if frame.msg_type == rp.TYPE_HEARTBEAT:
            event("heartbeat answered")
        data = rp.pack_frame(kind, frame.seq, b"text")
        if frame.msg_type == rp.TYPE_MESSAGE:
            if kind in STORED_KINDS:
                self.stored.append(frame.payload)
            else:
                self.refused.add(frame.payload)
        if kind in ERROR_KINDS:
            self.draining.add(conn.number)
        if split:
            self.h.data(data[:split])
            if self.h.conn is conn:
                self.h.data(data[split:])
        else:
            self.h.data(data)

    @precondition(lambda self: self.h.conn is not None)
    @rule(what=st.sampled_from(["reset", "clean", "eof", "wrong seq", "garbage",
                                "not a reply", "cut frame"]))
    def break_connection(self, what: str) -> None:
        if what == "eof":
            self.h.eof()
        elif what in ("reset", "clean"):
            self.h.lost("Connection reset by peer" if what == "reset" else None)
        elif what == "wrong seq":
            self.h.data(rp.pack_frame(rp.TYPE_ACK, self.last_seq + 7))
        elif what == "garbage":
            self.h.data(b"HTTP/1.1 400 Bad Request\r\n")
        elif what == "not a reply":
            self.h.data(rp.pack_frame(rp.TYPE_MESSAGE, 1, b"hi"))
        else:
            self.h.data(rp.pack_frame(rp.TYPE_ACK, 1)[:5])
            self.h.eof()

    # ---- invariants

    @invariant()
    def records_leave_only_after_their_ack(self) -> None:
        h = self.h
        assert h.popped_acked == self.stored
        assert len(set(h.popped_acked)) == len(h.popped_acked), "a record acknowledged twice"

    @invariant()
    def drops_come_only_from_actions_that_dequeue(self) -> None:
        network_drops = (self.config.mode != "forward"
                         and self.config.network_failure_action.kind in DEQUEUEING)
        for record in self.h.popped_dropped:
            assert record in self.refused or network_drops, record

    @invariant()
    def no_record_lost_or_duplicated(self) -> None:
        h = self.h
        assert collections.Counter(h.queue + h.popped_acked + h.popped_dropped) == \
            collections.Counter(self.added)
        assert h.core.queued == len(h.queue)

    @invariant()
    def window(self) -> None:
        conn = self.h.conn
        if conn is not None:
            if len(conn.unanswered) == dl.WINDOW:
                event("window full")
            assert len(conn.unanswered) <= dl.WINDOW
            assert self.h.core.frames_in_flight == len(conn.unanswered)
        elif self.h.exit_code is None:  # (after an exit the process is gone)
            assert self.h.core.frames_in_flight == 0

    @invariant()
    def nothing_due_is_left_undone(self) -> None:
        """Every event handles what is due at its time: the next deadline is later."""
        when = self.h.core.deadline()
        assert when is None or when > self.h.clock.now

    def teardown(self) -> None:
        """A healthy server from now on: everything not dropped gets through."""
        h = getattr(self, "h", None)
        if h is None:
            return
        for kind in ("Requeue", "Sync", "Exit", "RunInit", "Exec"):
            if any(type(d).__name__ == kind for d in h.decisions):
                event(kind)
        if h.popped_dropped:
            event("dropped")
        if len(h.conns) > 2:
            event("more than 2 connections")
        if h.exit_code is not None:
            return
        if h.core.suspended:  # (resuming also cuts a pause short: only when needed)
            h.apply(h.core.resume())
        h.writable()
        for _ in range(100 + 10 * len(self.added)):
            if h.exit_code is not None:
                return
            if h.connecting:
                self.connect_ok()
            elif h.closing:
                h.closed()
            elif h.conn is not None and h.conn.unanswered:
                frames = list(h.conn.unanswered)
                h.conn.unanswered.clear()
                self.stored += [f.payload for f in frames if f.msg_type == rp.TYPE_MESSAGE]
                h.data(b"".join(rp.pack_frame(rp.TYPE_ACK, f.seq) for f in frames))
            elif not h.queue:
                break
            else:
                h.advance(1.0)
            self.records_leave_only_after_their_ack()
            self.no_record_lost_or_duplicated()
            self.window()
        assert not h.queue, (len(h.queue), h.core.state_line(), h.core.phase)
        assert set(h.popped_acked) | set(h.popped_dropped) == set(self.added)


DeliveryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
test_delivery_core_under_random_interleavings = DeliveryMachine.TestCase
