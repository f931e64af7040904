"""Event assembly (auditpy.events.assemble) against libauparse's auparse_next_event.

The reference is the installed libauparse (AUSOURCE_FILE), through ctypes: on the captured
C corpus, on hand-made interleavings, and on hypothesis-generated ones (several events with
interleaved records, EOE after PROCTITLE or missing, records that come after their event
was complete, timestamps seconds apart so that end_of_event_timeout closes events).
Boundaries are compared as sets of record positions: libauparse hands events out oldest
first, the assembler as they complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditpy.events.assemble import (
    DONE_MEMORY,
    END_OF_INPUT,
    LATE,
    MALFORMED,
    TIMEOUT,
    Assembler,
    is_last_record,
    split_line,
)
from auditpy.proto import dispatch as wire
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from tests.auparse_oracle import UNAVAILABLE, auparse_events
from tests.golden import read_corpus

CORPUS = Path(__file__).parent / "data" / "c_auditd"
needs_auparse = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def corpus_lines() -> list[bytes]:
    return [wire.string_line(0, r.msg_type, r.payload) for r in read_corpus(CORPUS)]


def positions(lines: list[bytes], events: list[list[bytes]]) -> list[tuple[int, ...]]:
    index = {line.rstrip(b"\n"): n for n, line in enumerate(lines)}
    return sorted(tuple(index[r] for r in ev) for ev in events)


def ours(lines: list[bytes]) -> list[tuple[int, ...]]:
    """Record positions per event; lines must be unique."""
    assembler = Assembler()
    events = assembler.feed_lines(lines)
    by_body = {}
    for n, line in enumerate(lines):
        parsed = split_line(line)
        assert parsed is not None
        by_body[(parsed[1], parsed[2], parsed[3])] = n
    out = []
    for event in events:
        key = event.eid.encode()
        out.append(tuple(by_body[(t, key, body)] for t, body in event.records))
    return sorted(out)


def reference(tmp_path: Path, lines: list[bytes]) -> list[tuple[int, ...]]:
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(lines))
    events = auparse_events(path)
    index = {line.rstrip(b"\n"): n for n, line in enumerate(lines)}
    return sorted(tuple(index[text] for _, _, text in ev) for ev in events)


@needs_auparse
def test_corpus_boundaries_equal_libauparse(tmp_path: Path) -> None:
    lines = corpus_lines()
    assert len(set(lines)) == len(lines)
    assert ours(lines) == reference(tmp_path, lines)


def _line(name: str, sec: int, milli: int, serial: int, n: int) -> bytes:
    return f"type={name} msg=audit({sec}.{milli:03d}:{serial}): n={n}\n".encode()


@needs_auparse
def test_real_workload_log_boundaries_equal_libauparse() -> None:
    """The log of tests/kernel/test_json_output.py's workload (execs, a compile, files,
    sockets, LOGIN, auditctl -m) as pyauditd wrote it."""
    path = Path(__file__).parent / "data" / "json_workload.log"
    lines = path.read_bytes().splitlines(keepends=True)
    mine = sorted(tuple(b for _t, b in e.records) for e in Assembler().feed_lines(lines))
    reference = sorted(tuple(text.split(b"): ", 1)[1] for _t, _s, text in ev)
                       for ev in auparse_events(path))
    assert len(reference) >= 140
    assert mine == reference


@needs_auparse
def test_hand_made_interleaving(tmp_path: Path) -> None:
    spec = [
        ("SYSCALL", 0, 1), ("SYSCALL", 0, 2), ("CWD", 0, 2), ("CWD", 0, 1),
        ("PROCTITLE", 0, 2), ("SYSCALL", 0, 3), ("PROCTITLE", 0, 1), ("EOE", 0, 1),
        ("EOE", 0, 2), ("CWD", 0, 3), ("USER", 0, 4), ("SYSCALL", 1, 5), ("SYSCALL", 3, 6),
        ("EOE", 3, 7), ("CWD", 0, 1), ("PATH", 0, 99),
    ]
    lines = [_line(name, 1700000000 + s, 100, serial, n)
             for n, (name, s, serial) in enumerate(spec)]
    assert ours(lines) == reference(tmp_path, lines)


_RECORD_NAMES = {num: name for num, name in MSG_TYPE_NAMES.items()}


@st.composite
def interleavings(draw: st.DrawFn) -> list[bytes]:
    events = []
    for _ in range(draw(st.integers(1, 8))):
        sec = 1700000000 + draw(st.sampled_from([0, 0, 0, 1, 2, 3, 5]))
        milli = draw(st.sampled_from([100, 200]))
        serial = draw(st.integers(1, 6))
        kind = draw(st.sampled_from(["syscall", "syscall", "alone", "stray"]))
        if kind == "syscall":
            head = draw(st.sampled_from([[1300], [1300], [1006, 1300], [1305, 1300]]))
            body = [*head, *draw(st.lists(st.sampled_from([1307, 1302, 1306, 1309]), max_size=3))]
            tail = draw(st.sampled_from([[1327, 1320], [1327], [1320], [], [1327, 1320, 1320]]))
            types = body + tail
        elif kind == "alone":
            types = [draw(st.sampled_from([1005, 1006, 1112, 2100, 1406, 2000, 1203, 1104]))]
        else:
            types = [draw(st.sampled_from([1307, 1302, 1701, 1320, 1327]))]
        events.append([(sec, milli, serial, t) for t in types])
    order = draw(st.permutations([i for i, ev in enumerate(events) for _ in ev]))
    lines = []
    cursors = [0] * len(events)
    for i in order:
        sec, milli, serial, t = events[i][cursors[i]]
        cursors[i] += 1
        lines.append(_line(_RECORD_NAMES[t], sec, milli, serial, len(lines)))
    return lines


@needs_auparse
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=interleavings())
def test_interleavings_equal_libauparse(tmp_path: Path, lines: list[bytes]) -> None:
    assert ours(lines) == reference(tmp_path, lines)


def test_last_record_types() -> None:
    assert is_last_record(1327) and is_last_record(1320) and is_last_record(1005)
    assert is_last_record(1112) and is_last_record(2000) and is_last_record(1410)
    assert is_last_record(2100) and is_last_record(5000) and is_last_record(1006)
    assert not is_last_record(1300) and not is_last_record(1701)
    assert not is_last_record(1006, live=True)


def test_live_streams_keep_login_with_its_syscall() -> None:
    """A log has no EOE, so libauparse makes an event of LOGIN alone; a live stream has the
    EOE that says where the kernel's event ends."""
    records = [(1006, b"pid=1 old-auid=4294967295 auid=5 res=1"), (1300, b"arch=c000003e"),
               (1327, b"proctitle=41"), (1320, b"")]
    live = Assembler(clock=lambda: 0.0)
    events = [e for t, b in records for e in live.add(t, b"1.000:4", b)]
    assert [e.types() for e in events] == [[1006, 1300, 1327]]
    log = Assembler()
    events = [e for t, b in records for e in log.add(t, b"1.000:4", b)]
    assert [e.types() for e in events] == [[1006], [1300, 1327]]


def test_live_clock_closes_idle_events_and_marks_them() -> None:
    now = [100.0]
    assembler = Assembler(2.0, clock=lambda: now[0])
    assert assembler.add(1300, b"1.000:1", b"a=1") == ()
    assert assembler.add(1307, b"1.000:1", b"cwd=\"/\"") == ()
    now[0] = 101.9
    assert assembler.expire() == []
    assert assembler.next_deadline() == 102.0
    now[0] = 102.0
    [event] = assembler.expire()
    assert event.incomplete == TIMEOUT
    assert [t for t, _ in event.records] == [1300, 1307]
    assert assembler.stats.timed_out == 1
    # Its EOE arriving afterwards is consumed, not an event or an orphan.
    assert assembler.add(1320, b"1.000:1", b"") == ()
    assert assembler.stats.orphan_eoe == 0


def test_eoe_completes_and_late_records_are_counted() -> None:
    assembler = Assembler(clock=lambda: 0.0)
    assert assembler.add(1300, b"1.000:7", b"x=1") == ()
    [done] = assembler.add(1320, b"1.000:7", b"")
    assert done.incomplete is None and done.types() == [1300, 1320]
    assert assembler.add(1307, b"1.000:7", b"cwd=\"/\"") == ()  # an event of its own
    assert assembler.stats.late == 1
    [late] = assembler.flush()
    assert late.incomplete == LATE and late.types() == [1307]
    assert assembler.add(1320, b"9.000:9", b"") == ()
    assert assembler.stats.orphan_eoe == 1


def test_completed_ids_are_remembered_for_two_generations_then_forgotten() -> None:
    """EOEs and late records are recognised for at least DONE_MEMORY completed events,
    per node (an id completed on one node is new on another), and at most twice that."""
    assembler = Assembler(clock=lambda: 0.0)
    for serial in range(1, 2 * DONE_MEMORY + 1):
        [event] = assembler.add(1100, b"1.000:%d" % serial, b"x=1")  # one-record events
        assert event.incomplete is None
    # the newest DONE_MEMORY are remembered: their EOE is consumed, not an orphan
    newest = b"1.000:%d" % (2 * DONE_MEMORY)
    assert assembler.add(1320, newest, b"") == ()
    assert assembler.stats.orphan_eoe == 0
    [late] = assembler.add(1100, b"1.000:%d" % (DONE_MEMORY + 1), b"y=1")
    assert late.incomplete == LATE
    # the same id on another node is another event
    assert assembler.add(1320, newest, b"", node="h2") == ()
    assert assembler.stats.orphan_eoe == 1
    # past two generations an id is forgotten: its EOE is an orphan, counted
    for serial in range(2 * DONE_MEMORY + 1, 4 * DONE_MEMORY + 1):
        assembler.add(1100, b"2.000:%d" % serial, b"x=1")
    assert assembler.add(1320, b"1.000:1", b"") == ()
    assert assembler.stats.orphan_eoe == 2


def test_interleaved_events_and_nodes_are_separate() -> None:
    assembler = Assembler(clock=lambda: 0.0)
    assert assembler.add(1300, b"1.000:1", b"a", node="h1") == ()
    assert assembler.add(1300, b"1.000:1", b"b", node="h2") == ()
    assert assembler.add(1300, b"1.000:2", b"c") == ()
    [one] = assembler.add(1327, b"1.000:1", b"p", node="h2")
    assert one.node == "h2" and one.records == [(1300, b"b"), (1327, b"p")]
    rest = assembler.flush()
    assert sorted((e.node or "", e.eid) for e in rest) == [("", "1.000:2"), ("h1", "1.000:1")]
    assert all(e.incomplete == END_OF_INPUT for e in rest)


def test_split_execve_records_stay_in_one_event() -> None:
    assembler = Assembler(clock=lambda: 0.0)
    lines = [
        b"type=SYSCALL msg=audit(1.000:3): arch=c000003e syscall=59 success=yes exit=0\n",
        b"type=EXECVE msg=audit(1.000:3): argc=2 a0=\"x\" a1_len=8 a1[0]=41424344\n",
        b"type=EXECVE msg=audit(1.000:3): a1[1]=45464748\n",
        b"type=PROCTITLE msg=audit(1.000:3): proctitle=78\n",
        b"type=EOE msg=audit(1.000:3): \n",
    ]
    events = assembler.feed_lines(lines)
    assert len(events) == 1 and events[0].types() == [1300, 1309, 1309, 1327]


def test_malformed_lines_become_events_and_are_counted() -> None:
    assembler = Assembler(clock=lambda: 0.0)
    [event] = assembler.add_line(b"garbage without a header\n")
    assert event.incomplete == MALFORMED and event.records == [(0, b"garbage without a header")]
    assert assembler.stats.malformed == 1
    [event] = assembler.add_payload(1300, b"not a payload")
    assert event.incomplete == MALFORMED


def test_payload_forms() -> None:
    assembler = Assembler(clock=lambda: 0.0)
    assert assembler.add_payload(1300, b"audit(1.000:5): arch=c000003e") == ()
    [event] = assembler.add_payload(
        1327, b"node=h type=PROCTITLE msg=audit(1.000:5): proctitle=41"
    )
    assert event.node == "h" and event.types() == [1327]
    [event] = assembler.add_payload(1320, b"audit(1.000:5): ")
    assert event.types() == [1300, 1320]
    assert split_line(b"type=UNKNOWN[1999] msg=audit(1.000:5): x=1\n") == (
        None, 1999, b"1.000:5", b"x=1"
    )
    assert split_line(b"type=NOSUCH msg=audit(1.000:5): x=1") is None


@given(st.lists(st.tuples(st.integers(1, 4), st.sampled_from([1300, 1307, 1327, 1320, 1005])),
                max_size=40))
def test_every_record_is_in_exactly_one_event_or_counted(
    spec: list[tuple[int, int]],
) -> None:
    """Nothing is lost: each record (but the EOEs the assembler consumes) is in one event."""
    assembler = Assembler(clock=lambda: 0.0)
    events = []
    for n, (serial, t) in enumerate(spec):
        events += assembler.add(t, b"1.000:%d" % serial, b"n=%d" % n)
    events += assembler.flush()
    seen = [body for e in events for t, body in e.records]
    assert len(seen) == len(set(seen))
    missing = {b"n=%d" % n for n, (_, t) in enumerate(spec)} - set(seen)
    assert all(spec[int(m[2:])][1] == 1320 for m in missing)
    consumed = len(missing)
    assert assembler.stats.records == len(spec)
    assert consumed >= assembler.stats.orphan_eoe
