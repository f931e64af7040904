"""The fed-child writer and restart back-off shared by pyauditd's dispatcher link and
pyaudispd's plugin runners: per-record accounting over random partial writes (a fake
socket), real children, the link's bound and its counts when the dispatcher dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.auditd.dispatch_link import DispatcherLink
from auditpy.proto.dispatch import figures_line
from auditpy.system import evloop
from auditpy.system.children import ChildHandle, spawn_child
from auditpy.system.fedchild import Backoff, Batch, FedChild

from .conftest import wait_for_async

# --------------------------------------------------------------------------- fakes


class FakeLoop:
    def __init__(self) -> None:
        self.writers: dict[int, Callable[[], None]] = {}
        self.added = 0

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        assert fd not in self.writers, "a second writer for one socket"
        self.writers[fd] = callback
        self.added += 1

    def remove_writer(self, fd: int) -> bool:
        return self.writers.pop(fd, None) is not None

    def is_closed(self) -> bool:
        return False


class FakeChild:
    pid = 4242

    def attach(self, loop: object, on_exit: Callable[[Any], None]) -> None:
        self.on_exit = on_exit

    def send_signal(self, signum: int) -> bool:
        return True


class FakeSocket:
    """Takes what `script` says at each send: a byte count (at most what is offered), 0 for
    "would block", -1 for a broken pipe."""

    def __init__(self, script: Iterable[int]) -> None:
        self.script = iter(script)
        self.taken = bytearray()
        self.closed = False

    def fileno(self) -> int:
        return 7

    def send(self, data: memoryview) -> int:
        assert not self.closed
        step = next(self.script, len(data))
        if step < 0:
            raise BrokenPipeError(32, "Broken pipe")
        if step == 0:
            raise BlockingIOError
        n = min(step, len(data))
        self.taken += data[:n]
        return n

    def close(self) -> None:
        self.closed = True


class Source:
    """Batches of records for a FedChild, with the records' ends for checking."""

    def __init__(self, batches: Sequence[Sequence[bytes]], weight: int) -> None:
        self.batches = list(batches)
        self.weight = weight
        self.handed = 0
        self.sent = 0
        self.drained = 0

    def next_batch(self) -> Batch | None:
        if self.handed == len(self.batches):
            return None
        records = self.batches[self.handed]
        self.handed += 1
        if self.weight == 1:
            ends, total = [], 0
            for record in records:
                total += len(record)
                ends.append(total)
            return Batch(b"".join(records), ends)
        return Batch(b"".join(records), [sum(map(len, records))], len(records))

    def on_sent(self, n: int) -> None:
        self.sent += n

    def on_drained(self) -> None:
        self.drained += 1


def complete_records(batches: Sequence[Sequence[bytes]], taken: int, weight: int) -> int:
    """Records whose last byte is among the first `taken` (for weight > 1: of batches whose
    last byte is)."""
    count = offset = 0
    for records in batches:
        if weight == 1:
            for record in records:
                offset += len(record)
                if offset <= taken:
                    count += 1
        else:
            offset += sum(map(len, records))
            if offset <= taken:
                count += len(records)
    return count


records = st.binary(min_size=1, max_size=40)
batches = st.lists(st.lists(records, min_size=1, max_size=8), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(batches, st.lists(st.integers(0, 60), max_size=60), st.booleans(), st.booleans())
def test_partial_writes_are_resumed_and_accounted_record_by_record(
    batches: list[list[bytes]], script: list[int], per_record: bool, direct: bool
) -> None:
    # Per record (a plugin's way), or one mark per batch standing for its records (the
    # link's way: any weight above 1 means that in `Source`).
    source = Source(batches, 1 if per_record else 2)
    loop, sock = FakeLoop(), FakeSocket(script)
    exited: list[FedChild] = []
    fed = FedChild(cast(Any, loop), cast(Any, FakeChild()), cast(Any, sock),
                   next_batch=source.next_batch, sent=source.on_sent,
                   on_exit=exited.append, drained=source.on_drained)
    if direct:  # the first batch handed over while nothing waits, as the link does
        first = source.next_batch()
        assert first is not None
        fed.write(bytes(first.data), first.ends, first.weight)
        if not fed.waiting:
            fed.pump()
    else:
        fed.pump()
    turns = 0
    while loop.writers:
        assert fed.waiting and fed.unsent > 0
        # The loop calls the writer when the socket has room; nothing is sent twice or lost.
        assert source.sent == complete_records(batches, len(sock.taken), source.weight)
        loop.writers[7]()
        turns += 1
        assert turns < 1000
    assert not fed.waiting and fed.unsent == 0 and fed.abandon() == 0
    assert bytes(sock.taken) == b"".join(b"".join(r) for r in batches)
    assert source.sent == sum(map(len, batches))
    assert source.drained == 1
    # One writer per wait for room, at most (a direct write that is cut short arms one).
    assert loop.added <= script.count(0) + direct


@settings(max_examples=200, deadline=None)
@given(batches, st.lists(st.integers(1, 60), max_size=10), st.booleans())
def test_a_broken_socket_reports_once_and_leaves_the_rest_in_flight(
    batches: list[list[bytes]], before: list[int], direct: bool
) -> None:
    source = Source(batches, 1)
    loop, sock = FakeLoop(), FakeSocket([*before, -1])
    broken: list[OSError] = []
    fed = FedChild(cast(Any, loop), cast(Any, FakeChild()), cast(Any, sock),
                   next_batch=source.next_batch, sent=source.on_sent,
                   on_exit=lambda _fed: None, broken=broken.append)
    if direct:
        first = source.next_batch()
        assert first is not None
        fed.write(bytes(first.data), first.ends)
    fed.pump()
    total = sum(map(len, batches))
    if len(broken) == 0:  # everything went before the script reached the error
        assert source.sent == total
        return
    assert len(broken) == 1 and isinstance(broken[0], BrokenPipeError)
    assert fed.closed and sock.closed and not loop.writers
    in_flight = fed.abandon()
    assert fed.abandon() == 0  # given up once
    # Sent, in flight and never handed out add up to every record.
    later = sum(len(b) for b in batches[source.handed:])
    assert source.sent + in_flight + later == total
    assert source.sent == complete_records(batches, len(sock.taken), 1)
    fed.pump()  # closed: does nothing
    assert source.sent + in_flight + later == total


# --------------------------------------------------------------------------- back-off


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["run", "refill"]), st.integers(0, 100).map(float)),
             max_size=80),
    st.one_of(st.none(), st.integers(0, 5)),
)
def test_backoff_doubles_caps_budgets_and_refills_after_a_stable_run(
    steps: list[tuple[str, float]], budget: int | None
) -> None:
    clock = Clock()
    b = Backoff(0.1, 10.0, 60.0, clock=clock)
    failures = used = 0
    for op, seconds in steps:
        if op == "refill":
            b.refill()
            failures = used = 0
            continue
        b.started()
        clock.now += seconds
        stable = b.ended()
        assert stable == (seconds >= 60.0)
        if stable:
            failures = used = 0
        delay = b.next_delay(budget)
        if budget is not None and used >= budget:
            assert delay is None
            continue
        assert delay == min(10.0, 0.1 * 2**failures)
        failures += 1
        used += 1
        assert (b.failures, b.used) == (failures, used)


def test_backoff_survives_thousands_of_failures_in_a_row() -> None:
    b = Backoff(0.05, 0.2, 60.0)
    # 0.05 * 2**5000 is no float (OverflowError): the delay must still be the cap.
    delays = [b.next_delay(10000) for _ in range(5000)]
    assert delays[:3] == [0.05, 0.1, 0.2] and set(delays[3:]) == {0.2}


# --------------------------------------------------------------------------- real children


def run_until(loop: evloop.Loop, done: Callable[[], bool], what: str) -> None:
    loop.run_until_complete(wait_for_async(done, 10.0, what))


def cat_to(out: Path, delay: float = 0.0) -> Callable[[int], ChildHandle]:
    def spawn(stdin_fd: int) -> ChildHandle:
        return spawn_child(["/bin/sh", "-c", f"sleep {delay}; exec cat > {out}"],
                           stdin_fd=stdin_fd)
    return spawn


def test_a_slow_reader_gets_everything_through_a_small_buffer(tmp_path: Path) -> None:
    """The child starts reading only after 0.3 s; 2 MB in 1,000 records go through a 64 KiB
    buffer by waiting for room on the loop, and the child sees end of input at close."""
    out = tmp_path / "out"
    data = [os.urandom(2000) for _ in range(1000)]
    queue = list(data)
    sent: list[int] = []
    exits: list[FedChild] = []
    loop = evloop.Loop()
    try:
        def next_batch() -> Batch | None:
            if not queue:
                return None
            chunk, queue[:] = queue[:50], queue[50:]
            ends, total = [], 0
            for record in chunk:
                total += len(record)
                ends.append(total)
            return Batch(b"".join(chunk), ends)

        fed = FedChild.start(loop, cat_to(out, 0.3), 64 << 10, next_batch=next_batch,
                             sent=sent.append, on_exit=exits.append)
        fed.pump()
        assert fed.waiting  # 2 MB do not fit: the loop will call back
        run_until(loop, lambda: sum(sent) == len(data), what="all records sent")
        assert not fed.waiting
        fed.close_input()
        run_until(loop, lambda: bool(exits), what="the child's exit")
    finally:
        loop.close()
    assert exits == [fed] and fed.child.returncode == 0
    assert out.read_bytes() == b"".join(data)


def test_flush_blocking_gives_what_is_queued_at_shutdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    payload = [os.urandom(30000) for _ in range(20)]
    loop = evloop.Loop()
    sent: list[int] = []
    try:
        batches = [Batch(p, [len(p)]) for p in payload]
        fed = FedChild.start(loop, cat_to(out), 64 << 10, next_batch=lambda: (
            batches.pop(0) if batches else None), sent=sent.append, on_exit=lambda _f: None)
        fed.flush_blocking(time.monotonic() + 10)
        fed.close_input()
        assert fed.child.wait(10) == 0
    finally:
        loop.close()
    assert sum(sent) == 20 and out.read_bytes() == b"".join(payload)


def test_start_failure_leaves_nothing_open() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    loop = evloop.Loop()
    try:
        def fail(stdin_fd: int) -> ChildHandle:
            raise FileNotFoundError(2, "No such file", "/nonexistent")

        try:
            FedChild.start(loop, fail, 65536, next_batch=lambda: None, sent=lambda n: None,
                           on_exit=lambda f: None)
        except FileNotFoundError:
            pass
        else:
            raise AssertionError("no error")
    finally:
        loop.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


# --------------------------------------------------------------------------- the link


class Spawner:
    """Starts a shell in place of pyaudispd (`script` reads stdin), as a SpawnChild."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.children: list[ChildHandle] = []

    def __call__(self, argv: Sequence[str], *, stdin_fd: int | None = None,
                 env: Mapping[str, str] | None = None, new_session: bool = False,
                 blocked_signals: Iterable[int] = ()) -> ChildHandle:
        child = spawn_child(["/bin/sh", "-c", self.script], stdin_fd=stdin_fd)
        self.children.append(child)
        return child


def test_link_sends_what_waited_for_the_dispatcher(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spawner = Spawner(f"exec cat > {out}")
    loop = evloop.Loop()
    try:
        link = DispatcherLink(loop, ["pyaudispd"], max_pending_bytes=1 << 20, spawn=spawner)
        for i in range(10):  # before anyone knows whether a dispatcher should run
            link.send(f"batch {i};".encode(), 3)
        assert link.records_sent == 0 and link.records_dropped == 0
        link.reconcile(True)
        run_until(loop, lambda: link.records_sent == 30, what="the waiting records sent")
        link.send(b"after;", 1)
        assert link.records_sent == 31
        link.stop(timeout=5)
    finally:
        loop.close()
    assert out.read_bytes() == b"".join(f"batch {i};".encode() for i in range(10)) + b"after;"
    assert link.records_dropped == 0


def test_link_counts_every_record_once_when_the_dispatcher_dies(tmp_path: Path) -> None:
    """A dispatcher that does not read: batches fill the socket, then the bound, and are
    dropped beyond it; when it is killed, what waited and the batch cut short are dropped.
    Sent plus dropped is every record, none counted twice."""
    spawner = Spawner("exec sleep 60")
    loop = evloop.Loop()
    total = 0
    try:
        link = DispatcherLink(loop, ["pyaudispd"], max_pending_bytes=256 << 10, spawn=spawner)
        link.reconcile(True)
        chunk = b"x" * 9000
        for _ in range(2000):  # 18 MB: far more than the socket and the bound hold
            link.send(chunk, 7)
            total += 7
        assert link.records_dropped > 0
        assert int(link.state()["dispatcher backlog bytes"]) <= (256 << 10) + len(chunk)
        spawner.children[0].send_signal(signal.SIGKILL)
        run_until(loop, lambda: not link.running, what="the dispatcher's exit")
        assert link.records_sent + link.records_dropped == total
        assert link.state()["dispatcher backlog bytes"] == "0"
        link.stop(timeout=1)
    finally:
        loop.close()


def test_link_reads_the_dispatchers_figures_and_carries_them_past_its_exit(
    tmp_path: Path,
) -> None:
    """What pyaudispd writes back on its stdin socket is read on the loop; when it exits its
    counters are carried forward (a queue is not)."""
    report = figures_line({"p.conf": {"offered": 5, "delivered": 4, "queued": 1}}).decode()
    spawner = Spawner(f"printf '%s' '{report}' >&0; exec cat > /dev/null")
    loop = evloop.Loop()
    try:
        link = DispatcherLink(loop, ["pyaudispd"], max_pending_bytes=1 << 20, spawn=spawner)
        link.reconcile(True)
        run_until(loop, lambda: bool(link.plugin_figures), what="the dispatcher's figures")
        assert link.plugin_figures == {"p.conf": {"offered": 5, "delivered": 4, "queued": 1}}
        link.send(b"x", 1)
        spawner.children[0].send_signal(signal.SIGKILL)
        run_until(loop, lambda: not link.running, what="the dispatcher's exit")
        assert link.plugin_figures == {"p.conf": {"offered": 5, "delivered": 4}}
        link.stop(timeout=1)
    finally:
        loop.close()
