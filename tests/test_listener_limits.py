"""Listener limits that hostile or dead peers must not defeat (issue 15, item 9): idle peers
cannot lock newcomers out at the global cap, and a frame must be complete within
frame_timeout of its first byte however slowly its bytes trickle in.

Real sockets on 127.0.0.1 against the listener of test_remote_server, with small limits and
timeouts so the tests stay fast; every loop is bounded by a deadline.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from auditpy.auditd.listener import DAEMON_ACCEPT, DAEMON_CLOSE
from auditpy.proto.remote import TYPE_ACK, TYPE_HEARTBEAT, TYPE_MESSAGE, pack_frame

from .conftest import wait_for
from .test_remote_server import LINE, Client, Server, closing_lines


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="auditpy")


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def test_idle_peers_make_room_for_newcomers(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture, clients: list[Client]
) -> None:
    """At the cap, a newcomer is refused while every peer is active, and admitted in place
    of the peer idle the longest once that one has been idle evict_min_idle."""
    srv = Server(max_clients=3, evict_min_idle=1.0)
    request.addfinalizer(srv.stop)
    idle, busy1, busy2 = (Client(srv.port) for _ in range(3))
    clients += [idle, busy1, busy2]
    for client in clients:
        assert client.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK

    early = Client(srv.port)  # everybody was active a moment ago: refused, nobody closed
    clients.append(early)
    assert early.closed_by_server()
    wait_for(lambda: any("op=limit" in t for t in srv.sink.texts(DAEMON_ACCEPT)))
    assert srv.sink.texts(DAEMON_CLOSE) == []

    seq = 2

    def a_newcomer_gets_in() -> Client | None:
        nonlocal seq
        for client in (busy1, busy2):  # the busy ones keep talking; `idle` says nothing
            assert client.roundtrip(TYPE_HEARTBEAT, seq).msg_type == TYPE_ACK
        seq += 1
        candidate = Client(srv.port)
        clients.append(candidate)
        try:
            if candidate.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK:
                return candidate
        except OSError:  # refused: nobody has been idle long enough yet
            pass
        return None

    newcomer = wait_for(a_newcomer_gets_in, 10, "the idle peer to make room", interval=0.1)

    assert idle.closed_by_server()
    ip, port = idle.name.split(":")
    wait_for(lambda: f"addr={ip} port={port} res=success" in srv.sink.texts(DAEMON_CLOSE))
    lines = closing_lines(caplog, idle.name)
    assert len(lines) == 1 and "idle for" in lines[0] and "make room" in lines[0]
    assert lines[0].startswith(f"client {idle.name}: ")
    assert lines[0].endswith(" - closing connection")
    for client in (busy1, busy2, newcomer):
        assert client.roundtrip(TYPE_MESSAGE, seq, LINE % seq).msg_type == TYPE_ACK
    assert srv.active() == 3


def test_many_idle_peers_never_lock_the_listener(
    request: pytest.FixtureRequest, clients: list[Client]
) -> None:
    """The attack at a smaller scale: as many silent peers as the cap allows, then new
    clients keep getting in, each in place of one silent peer."""
    cap = 12
    srv = Server(max_clients=cap, evict_min_idle=0.3)
    request.addfinalizer(srv.stop)
    silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(cap)]
    try:
        wait_for(lambda: srv.active() == cap)
        wait_for(lambda: len(srv.sink.texts(DAEMON_ACCEPT)) == cap)
        admitted = 0

        def half_the_cap_admitted() -> bool:
            nonlocal admitted
            client = Client(srv.port)
            clients.append(client)
            try:
                assert client.roundtrip(TYPE_HEARTBEAT, 1).msg_type == TYPE_ACK
                admitted += 1
            except OSError:  # refused: no silent peer idle long enough yet
                pass
            return admitted >= cap // 2

        wait_for(half_the_cap_admitted, 10, f"{cap // 2} clients admitted", interval=0.05)
        assert admitted == cap // 2
        assert len(srv.sink.texts(DAEMON_CLOSE)) == cap // 2
        assert srv.active() == cap
    finally:
        for sock in silent:
            sock.close()


def test_a_frame_trickled_byte_by_byte_is_cut_off_at_its_deadline(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 50 ms never leaves the connection quiet for frame_timeout (0.5 s), but
    the frame is not complete 0.5 s after its first byte either."""
    hostile = Client(server.port)
    peer = hostile.name
    frame = pack_frame(TYPE_MESSAGE, 1, LINE % 1)
    started = time.monotonic()
    left = iter(frame[:-1])  # ~100 bytes: 5 s if nothing stops it

    def trickle_until_cut_off() -> bool:
        if closing_lines(caplog, peer):
            return True
        byte = next(left, None)
        assert byte is not None, "a trickling peer was never cut off"
        try:
            hostile.send(bytes([byte]))
        except OSError:
            return True
        return False

    # the wait's interval is the trickle: a byte every 50 ms
    wait_for(trickle_until_cut_off, 10, "the trickling peer cut off", interval=0.05)
    assert time.monotonic() - started < 3
    assert hostile.closed_by_server()
    line = closing_lines(caplog, peer)[0]
    assert "incomplete frame" in line and "after its first byte" in line


def test_the_deadline_is_per_frame(request: pytest.FixtureRequest,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """Slow frames are fine as long as each one is complete in time, even when one read
    ends a frame and starts the next: 8 frames of ~0.3 s each against a 1 s deadline, a
    stream of 2.4 s in all."""
    srv = Server(frame_timeout=1.0)
    request.addfinalizer(srv.stop)
    client = Client(srv.port)
    frames = [pack_frame(TYPE_MESSAGE, seq, LINE % seq) for seq in range(1, 9)]
    # The sleeps are the input under test: a peer this slow, with nothing to wait for.
    client.send(frames[0][:10])
    for k, frame in enumerate(frames):
        time.sleep(0.1)
        client.send(frame[10:40])
        time.sleep(0.1)
        following = frames[k + 1][:10] if k + 1 < len(frames) else b""
        client.send(frame[40:] + following)  # one read ends this frame, starts the next
        assert client.replies(1)[0].msg_type == TYPE_ACK
        time.sleep(0.1)
    assert closing_lines(caplog, client.name) == []
    assert len(srv.sink.lines) == 8
    client.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()  # frame_timeout 0.5 s, sweeps every 50 ms
    try:
        yield srv
    finally:
        srv.stop()
    assert srv.errors == []
