"""The network listener (remote_server) against a fake daemon: replies, batching, admission,
and hostile peers -- each one closes only its own connection, with a log line naming it.

The listener runs on its own event loop in a thread; the test talks to it over loopback
with plain blocking sockets, the way audisp-remote does.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditpy.auditd.listener import (
    ACK,
    DISKERROR,
    DISKFULL,
    DISKLOW,
    SUSPENDED,
    ListenerSettings,
    RemoteListener,
    Reply,
    dispatch_frames,
    record_type,
    reply_for,
)
from auditpy.auditd.logfile import LogEvent
from auditpy.config.auditd_conf import load_auditd_conf
from auditpy.config.errors import ConfigError
from auditpy.proto.dispatch import unpack_frames
from auditpy.proto.records import DAEMON_ACCEPT, DAEMON_CLOSE
from auditpy.proto.remote import (
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    TYPE_ACK,
    TYPE_DISKERROR,
    TYPE_DISKFULL,
    TYPE_DISKLOW,
    TYPE_ENDING,
    TYPE_HEARTBEAT,
    TYPE_MESSAGE,
    Frame,
    FrameReader,
    pack_frame,
)
from auditpy.structs import replace
from auditpy.system import evloop

from .conftest import make_pki, on_loop, wait_for

LINE = b"node=client1 type=USER msg=audit(1700000000.123:%d): pid=1 uid=0 auid=0 ses=1 msg='x'"


class FakeSink:
    """Stands in for the daemon: keeps what it is given, answers with `reply`."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.records: list[tuple[int, str]] = []
        self.reply: Reply = ACK
        self.fail = False

    @property
    def lines(self) -> list[bytes]:
        return [line for batch in self.batches for line in batch]

    def remote_records(self, lines: list[bytes]) -> Reply:
        if self.fail:
            raise RuntimeError("the disk caught fire")
        self.batches.append(list(lines))
        return self.reply

    def remote_daemon_record(self, msg_type: int, text: str) -> None:
        self.records.append((msg_type, text))

    def texts(self, msg_type: int) -> list[str]:
        return [text for t, text in self.records if t == msg_type]


class Server:
    """A listener on 127.0.0.1 and an ephemeral port, its loop in a thread."""

    def __init__(self, **overrides: Any) -> None:
        base = ListenerSettings(
            port=0, host="127.0.0.1", max_per_addr=64, frame_timeout=0.5,
            sweep_interval=0.05, handshake_timeout=2.0,
        )
        self.settings = replace(base, **overrides)
        self.loop = evloop.Loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.sink = FakeSink()
        self.listener = RemoteListener(self.loop, self.settings, self.sink)
        self.listener.start()
        self.port = self.listener.ports[0]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return on_loop(self.loop, run())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.listener.stop)
        on_loop(self.loop, self.listener.wait_closed(2.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def active(self) -> int:
        return int(self.call(lambda: len(self.listener.clients)))


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="auditpy")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()
    assert srv.errors == []


def make_server(request: pytest.FixtureRequest, **overrides: Any) -> Server:
    srv = Server(**overrides)
    request.addfinalizer(srv.stop)
    return srv


class Client:
    """A blocking managed-format client, one reply at a time like audisp-remote."""

    def __init__(self, port: int, source: tuple[str, int] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if source is not None:
            self.sock.bind(source)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.reader = FrameReader()
        self.pending: list[Frame] = []

    @property
    def name(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[Frame]:
        while len(self.pending) < count:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.pending += self.reader.feed(data)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def roundtrip(self, msg_type: int, seq: int, payload: bytes = b"") -> Frame:
        self.send(pack_frame(msg_type, seq, payload))
        return self.replies(1)[0]

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Reads (and discards) until EOF or reset."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


def closing_lines(caplog: pytest.LogCaptureFixture, peer: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if peer in r.getMessage() and "closing connection" in r.getMessage()]


# --------------------------------------------------------------------------------------
# Pure helpers


def test_reply_for_follows_the_c_daemon() -> None:
    assert reply_for(LogEvent.NONE, space_low=False) == ACK
    assert reply_for(LogEvent.SPACE_SAMPLE, space_low=True) == DISKLOW
    assert reply_for(LogEvent.DISK_FULL, space_low=True) == DISKFULL
    assert reply_for(LogEvent.DISK_ERROR, space_low=False) == DISKERROR
    assert reply_for(LogEvent.NOT_OPEN, space_low=False) == SUSPENDED
    assert (DISKFULL.text, DISKERROR.text, SUSPENDED.text) == (
        b"disk full", b"disk write error", b"remote logging suspended")
    assert DISKLOW.msg_type == TYPE_DISKLOW and DISKLOW.text == b""


@pytest.mark.parametrize(("line", "expected"), [
    (b"node=a type=USER msg=audit(1.000:1): x\n", 1005),
    (b"type=SYSCALL msg=audit(1.000:1): x\n", 1300),
    (b"type=UNKNOWN[1999] msg=audit(1.000:1): x\n", 1999),
    (b"type=NOSUCH msg=x\n", 0),
    (b"node=nospace\n", 0),
    (b"garbage\n", 0),
    (b"type=USER\n", 1005),
])
def test_record_type(line: bytes, expected: int) -> None:
    assert record_type(line) == expected


def test_dispatch_frames_are_v1_lines() -> None:
    lines = [LINE % 1 + b"\n", b"type=SYSCALL msg=audit(1.000:2): a=b\n"]
    frames = unpack_frames(bytearray(dispatch_frames(lines)))
    assert frames == [(1, 1005, LINE % 1), (1, 1300, b"type=SYSCALL msg=audit(1.000:2): a=b")]


# --------------------------------------------------------------------------------------
# Normal operation


def test_message_is_acked_with_its_sequence_and_stored_verbatim(server: Server) -> None:
    client = Client(server.port)
    reply = client.roundtrip(TYPE_MESSAGE, 4242, LINE % 1 + b"\n")
    assert (reply.msg_type, reply.seq, reply.payload) == (TYPE_ACK, 4242, b"")
    reply = client.roundtrip(TYPE_MESSAGE, 4243, LINE % 2)  # without the newline too
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, 4243)
    assert server.sink.lines == [LINE % 1 + b"\n", LINE % 2 + b"\n"]
    client.close()


def test_heartbeat_is_acked_and_stores_nothing(server: Server) -> None:
    client = Client(server.port)
    reply = client.roundtrip(TYPE_HEARTBEAT, 7)
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, 7)
    assert server.sink.batches == []
    client.close()


def test_embedded_newline_and_nul_cannot_forge_lines(server: Server) -> None:
    client = Client(server.port)
    client.roundtrip(TYPE_MESSAGE, 1, b"type=USER msg=a\ntype=FAKE msg=b\n")
    client.roundtrip(TYPE_MESSAGE, 2, b"type=USER msg=c\0hidden\nmore")
    assert server.sink.lines == [b"type=USER msg=a type=FAKE msg=b\n", b"type=USER msg=c\n"]
    client.close()


@pytest.mark.parametrize(("seq", "payload", "stored"), [
    (10, b"", None),  # empty: the header's last byte is a newline
    (11, b"\n", None),  # only the newline
    (12, b"x", b"x\n"),
    (13, b"x\n", b"x\n"),
    (14, b"a\n\n", b"a \n"),  # one trailing newline is the line's; the other is text
    (15, b"\0x", None),  # nothing before the NUL
    (16, b"y" * (MAX_PAYLOAD - 1), b"y" * (MAX_PAYLOAD - 1) + b"\n"),
    (17, b"z" * MAX_PAYLOAD, b"z" * MAX_PAYLOAD + b"\n"),  # no room for the newline after
    (18, b"w" * (MAX_PAYLOAD - 1) + b"\n", b"w" * (MAX_PAYLOAD - 1) + b"\n"),
])
def test_single_frame_reads_at_the_edges(server: Server, seq: int, payload: bytes,
                                         stored: bytes | None) -> None:
    """The usual read (one whole frame, the line made in the read buffer) at its edges:
    each frame is answered and stored as the general path stores it."""
    client = Client(server.port)
    reply = client.roundtrip(TYPE_MESSAGE, seq, payload)
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, seq)
    reply = client.roundtrip(TYPE_MESSAGE, seq + 100, b"after")  # the buffer is clean again
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, seq + 100)
    assert server.sink.lines == [*([stored] if stored is not None else []), b"after\n"]
    client.close()


def test_pipelined_frames_are_one_batch_and_replies_keep_order(server: Server) -> None:
    client = Client(server.port)
    frames = [pack_frame(TYPE_MESSAGE, i, LINE % i) for i in range(1, 201)]
    frames.insert(50, pack_frame(TYPE_HEARTBEAT, 9999))
    client.send(b"".join(frames))
    replies = client.replies(201)
    assert [r.seq for r in replies] == [*range(1, 51), 9999, *range(51, 201)]
    assert server.sink.lines == [LINE % i + b"\n" for i in range(1, 201)]
    assert len(server.sink.batches) < 20
    client.close()


def test_records_of_many_clients_share_one_write(server: Server) -> None:
    clients = [Client(server.port) for _ in range(10)]
    for round_ in range(20):
        for n, client in enumerate(clients):
            client.send(pack_frame(TYPE_MESSAGE, round_, LINE % (n * 100 + round_)))
        for client in clients:
            assert client.replies(1)[0].seq == round_
    assert len(server.sink.lines) == 200
    assert len(server.sink.batches) < 200
    for client in clients:
        client.close()


@pytest.mark.parametrize("reply", [DISKLOW, DISKFULL, DISKERROR, SUSPENDED])
def test_disk_trouble_replies(server: Server, reply: Reply) -> None:
    server.sink.reply = reply
    client = Client(server.port)
    got = client.roundtrip(TYPE_MESSAGE, 31, LINE % 1)
    assert (got.msg_type, got.seq, got.payload) == (reply.msg_type, 31, reply.text)
    heartbeat = client.roundtrip(TYPE_HEARTBEAT, 32)
    assert (heartbeat.msg_type, heartbeat.seq) == (TYPE_ACK, 32)
    client.close()


def test_a_failing_sink_gives_diskerror_and_the_listener_goes_on(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.sink.fail = True
    client = Client(server.port)
    got = client.roundtrip(TYPE_MESSAGE, 5, LINE % 1)
    assert (got.msg_type, got.payload) == (TYPE_DISKERROR, b"disk write error")
    server.sink.fail = False
    assert client.roundtrip(TYPE_MESSAGE, 6, LINE % 2).msg_type == TYPE_ACK
    assert any("Storing 1 network records failed" in r.getMessage() for r in caplog.records)
    client.close()


def test_accept_and_close_records(server: Server) -> None:
    client = Client(server.port)
    ip, port = client.sock.getsockname()[:2]
    client.roundtrip(TYPE_HEARTBEAT, 1)
    client.close()
    wait_for(lambda: server.sink.texts(DAEMON_CLOSE))
    assert server.sink.texts(DAEMON_ACCEPT) == [f"addr={ip} port={port} res=success"]
    assert server.sink.texts(DAEMON_CLOSE) == [f"addr={ip} port={port} res=success"]
    assert server.call(server.listener.state) == {
        "listening for network connections": "yes",
        "active connections": "0",
        "total connections": "1",
    }


def test_stop_answers_what_arrived_then_sends_ending() -> None:
    srv = Server()
    clients = [Client(srv.port) for _ in range(3)]
    for client in clients:
        client.roundtrip(TYPE_HEARTBEAT, 1)
    srv.stop()
    for client in clients:
        ending = client.replies(1)[0]
        assert (ending.msg_type, ending.seq) == (TYPE_ENDING, 0)
        assert client.closed_by_server()
    assert len(srv.sink.texts(DAEMON_CLOSE)) == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).recv(1)


# --------------------------------------------------------------------------------------
# Hostile peers: each closes only its own connection, with a log line naming the peer


def _bad_frames() -> dict[str, tuple[bytes, str]]:
    good = pack_frame(TYPE_MESSAGE, 1, LINE % 1)
    return {
        "magic": (b"GET / HTTP/1.0\r\n\r\n", "bad magic"),
        "oversized": (HEADER.pack(MAGIC, 0, 0, TYPE_MESSAGE, MAX_PAYLOAD + 1, 1), "exceeds"),
        "version": (HEADER.pack(MAGIC, 7, 0, TYPE_MESSAGE, 0, 1), "header version"),
        "reply type": (pack_frame(TYPE_ACK, 3), "unexpected frame type ACK"),
        "after good": (good + b"\xff" * 16, "bad magic"),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_protocol_errors_close_only_that_connection(
    server: Server, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    data, reason = _bad_frames()[case]
    bystander = Client(server.port)
    bystander.roundtrip(TYPE_HEARTBEAT, 1)
    hostile = Client(server.port)
    peer = hostile.name
    hostile.send(data)
    if case == "after good":  # the good frame before the fault still gets its reply
        assert hostile.replies(1)[0].msg_type == TYPE_ACK
    assert hostile.closed_by_server()
    wait_for(lambda: closing_lines(caplog, peer))
    assert reason in closing_lines(caplog, peer)[0]
    assert bystander.roundtrip(TYPE_MESSAGE, 2, LINE % 2).msg_type == TYPE_ACK
    wait_for(lambda: len(server.sink.texts(DAEMON_CLOSE)) == 1)
    bystander.close()


def test_half_sent_frame_times_out(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    hostile = Client(server.port)
    peer = hostile.name
    hostile.send(pack_frame(TYPE_MESSAGE, 1, LINE % 1)[:20])
    started = time.monotonic()
    assert hostile.closed_by_server()
    assert 0.4 < time.monotonic() - started < 4
    assert "incomplete frame (20 bytes) stalled" in closing_lines(caplog, peer)[0]


def test_peer_closing_mid_frame_is_logged(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    hostile = Client(server.port)
    peer = hostile.name
    hostile.send(pack_frame(TYPE_MESSAGE, 1, LINE % 1)[:30])
    hostile.close()  # the server reads the 30 bytes, then the end: in this order, always
    wait_for(lambda: closing_lines(caplog, peer))
    assert "middle of a frame (30 bytes discarded)" in closing_lines(caplog, peer)[0]


def test_slow_reader_is_dropped_and_memory_stays_bounded(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server(request, max_output=16 * 1024)
    srv.sink.reply = Reply(TYPE_DISKERROR, b"x" * 8000)  # big replies fill buffers fast
    hostile = socket.socket()
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.connect(("127.0.0.1", srv.port))
    host, port = hostile.getsockname()[:2]
    peer = f"{host}:{port}"
    frame = pack_frame(TYPE_MESSAGE, 1, LINE % 1)
    hostile.settimeout(0.2)
    with contextlib.suppress(OSError):
        for _ in range(5000):
            hostile.sendall(frame * 10)
    wait_for(lambda: closing_lines(caplog, peer))
    assert "does not read its replies" in closing_lines(caplog, peer)[0]
    assert srv.active() == 0
    hostile.close()


def test_source_port_outside_tcp_client_ports(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server(request, client_ports=(1, 1023))
    client = Client(srv.port)
    peer = client.name
    assert client.closed_by_server()
    ip, port = peer.split(":")
    wait_for(lambda: srv.sink.texts(DAEMON_ACCEPT))
    assert srv.sink.texts(DAEMON_ACCEPT) == [f"op=port addr={ip} port={port} res=no"]
    message = next(r.getMessage() for r in caplog.records if peer in r.getMessage())
    assert "rejected" in message and "tcp_client_ports 1-1023" in message
    if os.geteuid() == 0:  # a privileged source port is admitted
        for low in range(1000, 600, -1):
            try:
                ok = Client(srv.port, ("127.0.0.1", low))
                break
            except OSError:
                continue
        assert ok.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
        ok.close()


def test_tcp_max_per_addr(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server(request, max_per_addr=2)
    first, second = Client(srv.port), Client(srv.port)
    for client in (first, second):
        assert client.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
    third = Client(srv.port)
    assert third.closed_by_server()
    wait_for(lambda: any("op=dup" in t for t in srv.sink.texts(DAEMON_ACCEPT)))
    assert any(third.name in r.getMessage() and "tcp_max_per_addr 2" in r.getMessage()
               for r in caplog.records)
    first.close()
    wait_for(lambda: srv.active() == 1)
    fourth = Client(srv.port)
    assert fourth.roundtrip(TYPE_HEARTBEAT, 2).msg_type == TYPE_ACK
    assert second.roundtrip(TYPE_HEARTBEAT, 3).msg_type == TYPE_ACK


def test_global_connection_cap(request: pytest.FixtureRequest) -> None:
    srv = make_server(request, max_clients=3, host="0.0.0.0")
    clients = [Client(srv.port, (f"127.0.0.{n}", 0)) for n in (2, 3, 4)]
    for client in clients:
        assert client.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
    extra = Client(srv.port, ("127.0.0.5", 0))
    assert extra.closed_by_server()
    wait_for(lambda: any("op=limit addr=127.0.0.5" in t for t in srv.sink.texts(DAEMON_ACCEPT)))
    assert all(c.roundtrip(TYPE_HEARTBEAT, 2).msg_type == TYPE_ACK for c in clients)


def test_connection_flood_is_bounded(request: pytest.FixtureRequest) -> None:
    srv = make_server(request, max_per_addr=5, queue=64)
    flood = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(100)]
    wait_for(lambda: len(srv.sink.texts(DAEMON_ACCEPT)) == 100)
    assert srv.active() == 5
    refused = [t for t in srv.sink.texts(DAEMON_ACCEPT) if t.startswith("op=dup")]
    assert len(refused) == 95
    for sock in flood:
        sock.close()
    wait_for(lambda: srv.active() == 0)


def test_idle_clients_are_closed(request: pytest.FixtureRequest,
                                 caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server(request, max_idle=1)
    started = time.monotonic()
    idle, busy = Client(srv.port), Client(srv.port)
    peer = idle.name

    def busy_one_is_served_until_the_idle_one_is_closed() -> list[str]:
        assert busy.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
        return closing_lines(caplog, peer)

    # The busy client speaks every 0.2 s, well within max_idle (1 s).
    wait_for(busy_one_is_served_until_the_idle_one_is_closed, 3.0, interval=0.2)
    assert time.monotonic() - started >= 1.0  # not before it was idle for max_idle
    assert idle.closed_by_server(0.5)
    assert "idle too long" in closing_lines(caplog, peer)[0]
    assert busy.roundtrip(TYPE_HEARTBEAT, 2).msg_type == TYPE_ACK


def test_update_changes_admission_without_dropping_clients(request: pytest.FixtureRequest) -> None:
    srv = make_server(request, max_per_addr=1)
    first = Client(srv.port)
    first.roundtrip(TYPE_HEARTBEAT, 1)
    srv.call(lambda: srv.listener.update(replace(srv.settings, max_per_addr=2, port=1)))
    second = Client(srv.port)
    assert second.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
    assert first.roundtrip(TYPE_HEARTBEAT, 2).msg_type == TYPE_ACK
    assert srv.listener.settings.port == 0  # the bound port never changes in place


# --------------------------------------------------------------------------------------
# Random and hostile byte streams


_frame = st.builds(
    lambda t, seq, payload: pack_frame(t, seq, payload),
    st.sampled_from([TYPE_MESSAGE, TYPE_MESSAGE, TYPE_HEARTBEAT, TYPE_ACK, 5]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=200),
)
_chunk = st.one_of(
    _frame,
    _frame.map(lambda f: f[: len(f) // 2]),
    st.binary(max_size=64),
    st.builds(lambda n, v: HEADER.pack(MAGIC, v, 0, 0, n, 1),
              st.integers(0, 65535), st.integers(0, 255)),
)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Server]:
    srv = Server(frame_timeout=0.2)
    try:
        yield srv
    finally:
        srv.stop()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chunks=st.lists(_chunk, min_size=1, max_size=8))
def test_random_streams_never_hurt_the_listener(shared_server: Server,
                                                chunks: list[bytes]) -> None:
    srv = shared_server
    client = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
    with contextlib.suppress(OSError):
        for chunk in chunks:
            client.sendall(chunk)
    # Either it answers what it could read or it closed with a reason; either way the
    # reader never sees anything but well-formed replies.
    reader = FrameReader()
    client.settimeout(0.3)
    with contextlib.suppress(OSError):
        while data := client.recv(65536):
            for reply in reader.feed(data):
                assert reply.msg_type in (TYPE_ACK, TYPE_ENDING)
    client.close()
    wait_for(lambda: srv.active() == 0, 3)
    assert srv.errors == []
    good = Client(srv.port)
    assert good.roundtrip(TYPE_MESSAGE, 1, LINE % 1).msg_type == TYPE_ACK
    good.close()
    wait_for(lambda: srv.active() == 0, 3)
    opened = len(srv.sink.texts(DAEMON_ACCEPT))
    assert opened == len(srv.sink.texts(DAEMON_CLOSE))


def stored_as(payload: bytes) -> bytes | None:
    """The model of what a record frame's payload becomes in the log (None: nothing): one
    trailing newline is the line's own, a NUL ends the text, other newlines become spaces."""
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    payload = payload.split(b"\0", 1)[0].replace(b"\n", b" ")
    return payload + b"\n" if payload else None


_honest_frame = st.tuples(
    st.sampled_from([TYPE_MESSAGE, TYPE_MESSAGE, TYPE_MESSAGE, TYPE_HEARTBEAT]),
    st.binary(max_size=120) | st.sampled_from([b"", b"\n", b"x", b"a\nb", b"c\0d\n"]),
)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frames=st.lists(_honest_frame, min_size=1, max_size=12),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_any_split_of_honest_frames_stores_and_answers_them_in_order(
    shared_server: Server, frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Frames of one client cut into reads anywhere (whole frames alone, several, parts),
    the client waiting after each piece for the replies to the frames it completed: every
    frame is answered with an ACK in order and stored as the model says, whichever of the
    listener's paths (its read of one whole frame, the general one) took it."""
    srv = shared_server
    wire = [pack_frame(kind, seq, payload) for seq, (kind, payload) in enumerate(frames)]
    stream = b"".join(wire)
    ends = list(itertools.accumulate(len(frame) for frame in wire))
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts), *ends[::2]})
    before = len(srv.sink.lines)
    client = Client(srv.port)
    answered = 0
    for start, stop in itertools.pairwise(bounds):
        client.send(stream[start:stop])
        complete = sum(1 for end in ends if end <= stop)
        replies = client.replies(complete - answered)
        assert [(r.msg_type, r.seq) for r in replies] == [
            (TYPE_ACK, seq) for seq in range(answered, complete)]
        answered = complete
    client.close()
    expected = [line for kind, payload in frames if kind == TYPE_MESSAGE
                for line in [stored_as(payload)] if line is not None]
    assert srv.sink.lines[before:] == expected
    wait_for(lambda: srv.active() == 0, 3)
    assert srv.errors == []


def test_a_frame_inside_a_payload_is_never_read_as_a_frame(server: Server) -> None:
    """A record whose payload ends with the bytes of another whole frame, sent in two parts
    so that the second read is exactly that inner frame: it is the rest of the first one
    (the listener's read of one whole frame must know a frame is still open)."""
    inner = pack_frame(TYPE_MESSAGE, 77, b"type=USER msg=forged")
    payload = b"type=USER msg=real " + inner
    frame = pack_frame(TYPE_MESSAGE, 1, payload)
    client = Client(server.port)
    client.send(frame[: len(frame) - len(inner)])
    wait_for(lambda: server.call(
        lambda: any(c.reader.buffered for c in server.listener.clients)), 3)
    client.send(inner)
    reply = client.replies(1)[0]
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, 1)
    assert server.sink.lines == [stored_as(payload)]
    client.close()


# --------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server and a client certificate, and a client of a foreign CA (make_pki)."""
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


def tls_client(port: int, pki: Path, cert: str | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


def tls_roundtrip(sock: ssl.SSLSocket, seq: int) -> Frame:
    sock.sendall(pack_frame(TYPE_MESSAGE, seq, LINE % seq))
    reader = FrameReader()
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed")
        frames = reader.feed(data)
        if frames:
            return frames[0]


def test_tls_verified_clients_only(request: pytest.FixtureRequest, pki: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    from auditpy.config.tls import server_context as make_tls_context

    context = make_tls_context(str(pki / "server.pem"), str(pki / "server.key"),
                               str(pki / "ca.pem"), verify_client=True)
    srv = make_server(request, tls=context)
    good = tls_client(srv.port, pki, "client")
    reply = tls_roundtrip(good, 11)
    assert (reply.msg_type, reply.seq) == (TYPE_ACK, 11)
    assert srv.sink.lines == [LINE % 11 + b"\n"]
    assert any("certificate CN=client" in r.getMessage() for r in caplog.records)
    for cert in (None, "rogue"):
        with pytest.raises((OSError, ConnectionError)):
            bad = tls_client(srv.port, pki, cert)
            tls_roundtrip(bad, 12)
    wait_for(lambda: len([t for t in srv.sink.texts(DAEMON_ACCEPT)
                                 if t.startswith("op=tls")]) == 2)
    assert sum("TLS handshake failed" in r.getMessage() for r in caplog.records) == 2
    assert srv.sink.lines == [LINE % 11 + b"\n"]
    assert tls_roundtrip(good, 13).msg_type == TYPE_ACK
    good.close()


def test_plain_client_on_a_tls_listener_times_out_or_fails(
    request: pytest.FixtureRequest, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from auditpy.config.tls import server_context as make_tls_context

    context = make_tls_context(str(pki / "server.pem"), str(pki / "server.key"),
                               None, verify_client=False)
    srv = make_server(request, tls=context)
    plain = Client(srv.port)
    plain.send(pack_frame(TYPE_MESSAGE, 1, LINE % 1))
    assert plain.closed_by_server()
    wait_for(lambda: closing_lines(caplog, plain.name))
    assert srv.sink.lines == []
    ok = tls_client(srv.port, pki, None)
    assert tls_roundtrip(ok, 2).msg_type == TYPE_ACK


# --------------------------------------------------------------------------------------
# auditd.conf: the TLS keys


def write_conf(d: Path, text: str) -> str:
    path = d / "auditd.conf"
    path.write_text(f"log_file = {d}/audit.log\nspace_left = 2\nadmin_space_left = 1\n{text}")
    path.chmod(0o640)
    return str(path)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files must be root-owned")


@needs_root
def test_tls_config_is_checked(tmp_path: Path, pki: Path) -> None:
    files = (f"tls_cert_file = {pki}/server.pem\ntls_key_file = {pki}/server.key\n"
             f"tls_ca_file = {pki}/ca.pem\n")
    config, _ = load_auditd_conf(
        write_conf(tmp_path, f"tcp_listen_port = 60\ntransport = tls\n{files}"))
    assert (config.transport, config.tls_verify_client) == ("TLS", True)
    settings_ = ListenerSettings.from_config(config)
    assert settings_.tls is not None and settings_.tls.verify_mode == ssl.CERT_REQUIRED

    def error_of(text: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_auditd_conf(write_conf(tmp_path, "tcp_listen_port = 60\n" + text))
        return str(info.value)

    assert "needs tls_ca_file" in error_of(
        f"transport = tls\ntls_cert_file = {pki}/server.pem\ntls_key_file = {pki}/server.key\n")
    assert "needs tls_cert_file" in error_of("transport = tls\ntls_verify_client = no\n")
    assert "cannot stat" in error_of(f"transport = tls\n{files}tls_ca_file = /nonexistent\n")
    assert "KRB5" in error_of("transport = krb5\n")
    assert "KRB5" in error_of("enable_krb5 = yes\n")
    loose = tmp_path / "loose.key"
    loose.write_bytes((pki / "server.key").read_bytes())
    loose.chmod(0o644)
    assert "group or others" in error_of(f"transport = tls\n{files}tls_key_file = {loose}\n")
    assert "cannot load" in error_of(
        f"transport = tls\n{files}tls_key_file = {pki}/client.key\n")  # not the cert's key
    # Without a listener the transport does not matter: a warning only.
    _, warnings = load_auditd_conf(write_conf(tmp_path, "transport = krb5\n"))
    assert any("no effect" in str(w) for w in warnings)


def test_struct_layout_matches_the_codec() -> None:
    """The listener packs replies itself on the hot path; they must decode as frames."""
    assert HEADER.size == 16 and struct.calcsize("<IBBIHI") == 16
    assert FrameReader().feed(HEADER.pack(MAGIC, 0, 0, TYPE_DISKFULL, 0, 9))[0].seq == 9
    logging.getLogger("auditpy.remote").debug("layout ok")
