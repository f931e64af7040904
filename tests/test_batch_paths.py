"""The record path's batch shortcuts give exactly what their record-by-record versions give.

pyauditd handles a read's records with C loops over whole columns (join_lines, serials_of,
SerialWatch.feed_batch, batch frames to pyaudispd, AuditLog.write_data, the recvmmsg
reader's common case), and pyaudispd queues and encodes them whole (Columns, chunks);
each falls back to the per-record code when a batch needs care. These properties pin the
two together on any input, the hostile corners included.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.audispd.runner import Columns, ExternalPlugin, Record, RunnerContext, State
from auditpy.auditd.ledger import SerialWatch, serial_of, serials_of
from auditpy.auditd.logfile import AuditLog, LogEvent, LogSettings
from auditpy.config.plugins import PluginConfig
from auditpy.proto.dispatch import (
    BATCH,
    HEADER,
    PROTOCOL_V0,
    PROTOCOL_V1,
    FrameError,
    frame,
    pack_batch,
    unpack_stream,
)
from auditpy.proto.records import AUDIT_EOE, LINE_PAYLOAD_LIMIT, LineFormatter
from auditpy.system import evloop
from auditpy.system.mmsg import RecordBatchReader

TYPES = st.sampled_from([1300, 1302, 1305, 1307, 1320, 1327, 1100, 1112, 1400, 9999])
#: Payload text with the bytes the formatter cares about well represented.
TEXT = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"a", b" ", b"\n", b"x=1", b"\x1d", b"msg=", b"\xff"]), max_size=12
).map(b"".join)
PAYLOADS = st.one_of(
    st.builds(lambda serial, text: b"audit(1700000000.123:%d): " % serial + text,
              st.integers(0, 2**32), TEXT),
    TEXT,
    st.integers(LINE_PAYLOAD_LIMIT - 40, LINE_PAYLOAD_LIMIT + 80).map(lambda n: b"p" * n),
)
RECORDS = st.lists(st.tuples(TYPES, PAYLOADS), max_size=30)


@given(RECORDS, st.sampled_from([None, "host", "h" * 60]))
def test_join_lines_is_format_batch_joined(records: list[tuple[int, bytes]],
                                           node: str | None) -> None:
    formatter = LineFormatter(node=node)
    lines = formatter.format_batch(records)
    types = [t for t, _p in records]
    payloads = [p for _t, p in records]
    assert formatter.join_lines(types, payloads) == (b"".join(lines), len(lines))


def test_join_lines_leaves_out_eoe_and_takes_the_fast_way_for_plain_records() -> None:
    formatter = LineFormatter()
    calls = []
    original = formatter.format
    formatter.format = lambda t, p: calls.append(t) or original(t, p)  # type: ignore[method-assign]
    data, count = formatter.join_lines(
        (1300, 1327, AUDIT_EOE), (b"audit(1.000:5): a=1", b"audit(1.000:5): p=2", b"e ")
    )
    assert (data, count) == (b"type=SYSCALL msg=audit(1.000:5): a=1\n"
                             b"type=PROCTITLE msg=audit(1.000:5): p=2\n", 2)
    assert calls == []


KERNEL_PAYLOAD = st.builds(
    lambda sec, ms, serial, text: b"audit(%d.%03d:%d): " % (sec, ms, serial) + text,
    st.integers(0, 2**34), st.integers(0, 999), st.integers(0, 2**32),
    st.binary(max_size=30).map(lambda b: b.replace(b"\0", b"")),
)


def _serial_at_start(payload: bytes) -> int | None:
    """``audit(DIGITS.DIGITS:DIGITS)`` at the very start, else None (no regex)."""
    if not payload.startswith(b"audit("):
        return None
    stamp, closed, _rest = payload[6:].partition(b")")
    when, colon, serial = stamp.partition(b":")
    sec, dot, msec = when.partition(b".")
    if closed and colon and dot and sec.isdigit() and msec.isdigit() and serial.isdigit():
        return int(serial)
    return None


@given(st.lists(KERNEL_PAYLOAD | st.binary(max_size=30).map(lambda b: b.replace(b"\0", b"")),
                max_size=20))
def test_serials_of_reads_each_payload_start(payloads: list[bytes]) -> None:
    expected = [s for s in map(_serial_at_start, payloads) if s is not None]
    assert serials_of(payloads) == expected
    assert expected == [serial_of(p) for p in payloads if _serial_at_start(p) is not None]


def test_serials_of_ignores_serials_inside_the_text() -> None:
    forged = b"audit(1.000:7): msg='audit(1.000:999999) \naudit(2.000:5)'"
    assert serials_of([forged, b"audit(1.000:8): "]) == [7, 8]


@given(st.lists(st.integers(0, 60), max_size=10), st.lists(st.integers(0, 60), max_size=40))
@settings(max_examples=300)
def test_feed_batch_is_feed(history: list[int], serials: list[int]) -> None:
    one, other = SerialWatch(horizon=8), SerialWatch(horizon=8)
    assert one.feed(history) == other.feed(history)
    assert one.feed(serials) == other.feed_batch(serials)
    assert (one.highest, one.pending, one.gaps) == (other.highest, other.pending, other.gaps)


def test_feed_batch_takes_a_run_of_serials_with_repeats_at_once() -> None:
    watch = SerialWatch()
    watch.feed([10])
    assert watch.feed_batch([10, 11, 11, 12, 13, 13]) == 0
    assert watch.highest == 13 and watch.pending == 0


FRAMES = st.lists(
    st.tuples(st.booleans(), st.sampled_from([PROTOCOL_V0, PROTOCOL_V1]),
              st.lists(st.tuples(TYPES, st.binary(max_size=60)), max_size=6)),
    max_size=6,
)


@given(FRAMES, st.lists(st.integers(1, 200), max_size=10))
def test_unpack_stream_gives_the_records_of_batch_and_single_frames_in_order(
    frames: list[tuple[bool, int, list[tuple[int, bytes]]]], cuts: list[int],
) -> None:
    """However the stream is cut into reads, the records come out in order, each with
    its version, batches and single frames alike."""
    stream = b"".join(
        pack_batch(version, [t for t, _p in records], [p for _t, p in records]) if batch
        else b"".join(frame(version, t, p) for t, p in records)
        for batch, version, records in frames
    )
    expected = [(version, t, p) for _b, version, records in frames for t, p in records]
    buffer = bytearray()
    got = []
    at = 0
    for cut in [*cuts, len(stream)]:
        buffer += stream[at : at + cut]
        at += cut
        for version, types, payloads in unpack_stream(buffer):
            got += [(version, t, p) for t, p in zip(types, payloads, strict=True)]
    buffer += stream[at:]
    for version, types, payloads in unpack_stream(buffer):
        got += [(version, t, p) for t, p in zip(types, payloads, strict=True)]
    assert got == expected and not buffer


def test_a_batch_whose_sizes_do_not_add_up_is_refused() -> None:
    good = pack_batch(PROTOCOL_V0, [1300, 1320], [b"abc", b"de"])
    bad = bytearray(good)
    bad[16 + 8 : 16 + 12] = (4).to_bytes(4, sys.byteorder)  # the first size, one too many
    with pytest.raises(FrameError):
        unpack_stream(bad)
    with pytest.raises(FrameError):  # more records announced than the size can hold
        unpack_stream(bytearray(HEADER.pack(BATCH | PROTOCOL_V0, 16, 1000, 8)))


@given(st.sampled_from([PROTOCOL_V0, PROTOCOL_V1]), st.sampled_from([b"", b"node=h "]),
       st.lists(st.tuples(TYPES, st.binary(max_size=60) | st.just(b"a\nb")), max_size=12),
       st.sampled_from(["string", "binary"]))
def test_columns_encode_as_each_record_would(
    version: int, node: bytes, records: list[tuple[int, bytes]], fmt: str
) -> None:
    columns = Columns(version, [t for t, _p in records], [p for _t, p in records], node)
    encoded = [Record(version, t, p, node).encode(fmt) for t, p in records]
    data, ends = columns.encoded(fmt)
    assert data == b"".join(encoded)
    assert ends == list(itertools.accumulate(map(len, encoded)))
    assert columns.encoded(fmt) is columns.encoded(fmt)  # made once, shared


def test_a_chunk_in_the_queue_is_sent_and_counted_record_by_record() -> None:
    """A plugin's queue mixing single records and a read taken whole: batches, partial
    sends, what a successor inherits."""
    loop = evloop.Loop()
    try:
        plugin = ExternalPlugin(
            PluginConfig(name="p", file="p.conf", active=True, path="/bin/cat", format="string"),
            RunnerContext(loop, q_depth=10),
        )
        plugin.state = State.RUNNING
        plugin.offer(Record(PROTOCOL_V0, 1300, b"one"))
        columns = Columns(PROTOCOL_V0, [1300, 1327, 1320], [b"a", b"bb", b"c "])
        assert plugin.room(3) and not plugin.room(10)
        plugin.take(columns)
        assert plugin.depth == 4
        first = plugin._next_batch()
        assert first is not None and bytes(first.data) == b"type=SYSCALL msg=one\n"
        plugin._sent(1)
        chunk = plugin._next_batch()
        assert chunk is not None and bytes(chunk.data) == columns.encoded("string")[0]
        plugin._sent(1)  # the socket took the first line of the chunk, then the plugin died
        rest = plugin._next_batch()  # the next process gets the rest, whole records
        assert rest is not None
        assert bytes(rest.data) == b"type=PROCTITLE msg=bb\ntype=EOE msg=c \n"
        assert list(rest.ends) == [22, 38]
        assert plugin.depth == 2 and plugin.delivered == 2
        leftover = plugin._take_queue()
        assert [(r.msg_type, r.payload) for r in leftover] == [(1327, b"bb"), (1320, b"c ")]
        assert plugin.depth == 0
    finally:
        loop.close()


def _log(tmp_path: Path) -> AuditLog:
    log = AuditLog(LogSettings(log_file=str(tmp_path / "audit.log"), flush="NONE"))
    log.open()
    return log


def test_write_data_writes_and_counts_as_write(tmp_path: Path) -> None:
    lines = [b"type=A msg=one\n", b"type=B msg=two\n"]
    log = _log(tmp_path)
    assert not log.write_data(b"".join(lines), 2) & ~LogEvent.SPACE_SAMPLE
    assert log.records_written == 2 and log.bytes_written == sum(map(len, lines))
    assert (tmp_path / "audit.log").read_bytes() == b"".join(lines)
    log.close()


def test_write_data_cut_short_keeps_whole_records_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the disk takes only part of is accounted record by record, as write's."""
    lines = [b"type=A msg=%d\n" % i for i in range(5)]
    log = _log(tmp_path)
    real_write = os.write
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(lines[0]) * 2 + 3]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_write)
    events = log.write_data(b"".join(lines), len(lines))
    monkeypatch.undo()
    assert events & LogEvent.DISK_FULL
    assert log.last_unwritten == 3 and log.records_written == 2
    assert (tmp_path / "audit.log").read_bytes() == b"".join(lines[:2])
    log.close()


NETLINK_USERSOCK = 2


def _usersock() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_USERSOCK)
    sock.bind((0, 0))
    return sock


@pytest.mark.skipif(RecordBatchReader.create(-1, 1, 1) is None, reason="no recvmmsg here")
@given(st.lists(st.tuples(st.integers(1000, 1400), st.binary(max_size=40)
                          | st.just(b"y\0\0"), st.booleans()), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_reader_common_case_is_the_checked_reading(
    datagrams: list[tuple[int, bytes, bool]],
) -> None:
    """Whatever a batch holds (forged datagrams, short ones, NULs), the reader's result is
    what the record-by-record checks make of the same buffers."""
    receiver, sender, forger = _usersock(), _usersock(), _usersock()
    try:
        port = receiver.getsockname()[0]
        reader = RecordBatchReader(receiver.fileno(), 16, 32, sender=sender.getsockname()[0])
        for msg_type, body, forged in datagrams:
            (forger if forged else sender).sendto(
                struct.pack("=IHHII", 0, msg_type, 0, 0, 0) + body, (port, 0))
        got, count = reader.receive(socket.MSG_DONTWAIT)
        assert count == len(datagrams)
        assert got == reader._checked(count)
        assert len(got) == sum(1 for _t, _b, forged in datagrams if not forged)
    finally:
        for sock in (receiver, sender, forger):
            sock.close()


def test_enriched_join_lines_is_format_batch_joined_on_the_c_corpus() -> None:
    """ENRICHED batches (the corpus of kernel records the C daemon enriched, in batches of
    several sizes, twice so that the second pass finds its SYSCALL suffixes cached) give
    what formatting record by record gives."""
    from auditpy.proto.enrich import Enricher

    from .golden import read_corpus

    records = [(r.msg_type, r.payload) for r in read_corpus(Path(__file__).parent / "data"
                                                            / "c_auditd")]
    assert len(records) > 100
    batched = LineFormatter(enricher=Enricher())
    single = LineFormatter(enricher=Enricher())
    fast = 0
    for size in (1, 7, 64, 1000, 7, 64):
        for at in range(0, len(records), size):
            chunk = records[at : at + size]
            types = [t for t, _p in chunk]
            payloads = [p for _t, p in chunk]
            lines = single.format_batch(chunk)
            calls = []
            original = batched.format
            batched.format = lambda t, p, calls=calls, original=original: (  # type: ignore[method-assign]
                calls.append(t) or original(t, p))
            assert batched.join_lines(types, payloads) == (b"".join(lines), len(lines))
            del batched.format
            fast += not calls and bool(lines)
    assert fast  # some batches took the batch path


def test_enriched_batch_of_usual_syscall_records_takes_the_batch_path() -> None:
    from auditpy.proto.enrich import Enricher

    body = (b"arch=c000003e syscall=110 success=yes exit=1 a0=%d a1=0 a2=0 a3=0 items=0 "
            b"ppid=1 pid=%d auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
            b"tty=(none) ses=4 comm=\"loadgen\" exe=\"/tmp/loadgen\" key=\"bench\"")
    enricher = Enricher()
    types, payloads = [], []
    for i in range(4):
        types += [1300, 1327]
        payloads += [b"audit(1.000:%d): " % i + body % (i, i), b"audit(1.000:%d): proctitle=6C" % i]
    assert enricher.batch_suffixes(types, payloads, 600) is None  # nothing cached yet
    formatter = LineFormatter(enricher=enricher)
    data, count = formatter.join_lines(types, payloads)
    suffixes = enricher.batch_suffixes(types, payloads, 600)
    assert suffixes is not None and suffixes[1::2] == [b""] * 4
    assert all(s.startswith(b"\x1dARCH=x86_64 SYSCALL=getppid") for s in suffixes[0::2])
    assert enricher.batch_suffixes(types, payloads, 10_000) is None  # a line may be too long
    assert (data, count) == (b"".join(formatter.format_batch(list(zip(types, payloads,
                                                                          strict=True)))), 8)


@given(st.lists(st.tuples(st.integers(10**9, 10**10 - 1), st.integers(0, 999),
                          st.sampled_from([10**7, 10**8 - 1, 2**31]) | st.integers(0, 10**9)),
                min_size=1, max_size=20),
       st.sampled_from([b"", b"x", b": "]))
def test_serials_of_eoe_batches_as_the_regex_reads_them(
    stamps: list[tuple[int, int, int]], tail: bytes,
) -> None:
    """EOE-only batches (one field layout: the struct path) and near misses of it."""
    payloads = [b"audit(%d.%03d:%d): " % stamp + tail for stamp in stamps]
    expected = [s for s in map(_serial_at_start, payloads) if s is not None]
    assert serials_of(payloads) == expected == [serial for _s, _m, serial in stamps]


def test_serials_of_a_misplaced_field_is_not_read_from_its_offset() -> None:
    # ten-digit seconds put the colon at offset 20; nine digits must not pass for it
    assert serials_of([b"audit(123456789.123:45678): "] * 3) == [45678] * 3
    assert serials_of([b"audit(1234567890.123:4x678): "]) == []


@given(st.lists(st.integers(0, 8), min_size=1, max_size=12), st.integers(1, 12))
def test_reads_taken_whole_or_one_by_one_keep_offered_equal_to_the_rest(
    reads: list[int], q_depth: int
) -> None:
    """Whichever way the dispatcher queues a read (whole while there is room, else record
    by record with the full-queue rules), every record offered is queued or dropped."""
    from auditpy.audispd.dispatcher import Dispatcher, Options

    loop = evloop.Loop()
    try:
        d = Dispatcher(loop, Options())
        plugin = ExternalPlugin(
            PluginConfig(name="p", file="p.conf", active=True, path="/bin/cat", format="string"),
            RunnerContext(loop, q_depth=q_depth),
        )
        plugin.state = State.RUNNING
        d.plugins["p"] = plugin
        for count in reads:
            d.dispatch_columns(PROTOCOL_V1, [1300] * count, [b"x=%d" % i for i in range(count)])
        figures = d.figures()["p"]
        assert figures["offered"] == sum(reads)
        assert figures["offered"] == figures["delivered"] + figures["dropped"] + figures["queued"]
    finally:
        loop.close()
