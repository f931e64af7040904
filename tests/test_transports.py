"""Stream connections on the own loop (system.transports): TCP and Unix servers and clients,
the write limits and the close that waits for output, and TLS both ways, against our own
side and against the standard library's blocking ssl."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from auditpy.system import evloop
from auditpy.system.transports import BufferedProtocol, Protocol, StreamTransport

from .conftest import make_pki


class Recorder(Protocol):
    """Keeps what it hears; echoes when asked to; `lost` is done at connection_lost."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: StreamTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: evloop.Future[Exception | None] = evloop.running_loop().create_future()
        self.got: evloop.Event = evloop.Event()

    def connection_made(self, transport: StreamTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()
        if self.echo and self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def until(self, size: int) -> bytes:
        while len(self.data) < size:
            self.got.clear()
            await evloop.wait_for(self.got.wait(), 10)
        return bytes(self.data)


def run(main: Any) -> Any:
    return evloop.run(main())


def test_tcp_server_and_client_echo_then_close() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        servers: list[Recorder] = []

        def serve() -> Recorder:
            servers.append(Recorder(echo=True))
            return servers[-1]

        server = await loop.create_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(), "127.0.0.1", port)
        assert isinstance(client, Recorder) and client.events == ["made"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.write(b"hello")
        assert await client.until(5) == b"hello"
        transport.close()
        assert await evloop.wait_for(client.lost, 10) is None
        assert await evloop.wait_for(servers[0].lost, 10) is None
        assert servers[0].events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)

    run(main)


def test_buffered_protocol_reads_into_its_buffer() -> None:
    class Buffered(BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(4)
            self.chunks: list[bytes] = []
            self.done = evloop.running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            self.chunks.append(bytes(self.buffer[:nbytes]))

        def connection_lost(self, exc: Exception | None) -> None:
            self.done.set_result(b"".join(self.chunks))

    async def main() -> None:
        loop = evloop.running_loop()
        ours, theirs = socket.socketpair()
        _transport, protocol = await loop.connect_accepted_socket(Buffered, ours)
        theirs.sendall(b"0123456789")
        theirs.close()
        assert await evloop.wait_for(protocol.done, 10) == b"0123456789"  # type: ignore[attr-defined]

    run(main)


def test_write_limits_pause_and_resume_and_close_sends_what_is_left() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(True)
        transport, protocol = await loop.connect_accepted_socket(Recorder, ours)
        assert isinstance(protocol, Recorder)
        transport.set_write_buffer_limits(high=1000, low=100)
        block = b"x" * 65536
        while transport.get_write_buffer_size() <= 1000:
            transport.write(block)
        assert protocol.events == ["made", "pause"]
        sent = 0
        received = bytearray()
        total = transport.get_write_buffer_size()
        transport.close()  # what is unsent still goes, then the end
        reader = threading.Thread(target=lambda: received.extend(_read_all(theirs)))
        reader.start()
        await evloop.wait_for(protocol.lost, 10)
        await loop.run_in_executor(evloop.Worker("join"), reader.join)
        sent = len(received)
        assert sent >= total and set(received) == {ord("x")}
        assert protocol.events[-2:] == ["resume", "lost"]
        theirs.close()

    run(main)


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def test_abort_drops_output_and_reports_the_end() -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        ours, theirs = socket.socketpair()
        transport, protocol = await loop.connect_accepted_socket(Recorder, ours)
        assert isinstance(protocol, Recorder)
        transport.write(b"y" * (4 << 20))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        assert await evloop.wait_for(protocol.lost, 10) is None
        transport.write(b"ignored")  # after the end: nothing, no error
        theirs.close()

    run(main)


def test_unix_server(tmp_path: Path) -> None:
    async def main() -> None:
        loop = evloop.running_loop()
        path = str(tmp_path / "s.sock")
        server = await loop.create_unix_server(lambda: Recorder(echo=True), path)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.setblocking(False)
        transport, protocol = await loop.create_connection(Recorder, sock=client)
        assert isinstance(protocol, Recorder)
        transport.write(b"over unix")
        assert await protocol.until(9) == b"over unix"
        transport.close()
        await evloop.wait_for(protocol.lost, 10)
        server.close()

    run(main)


def _listening() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


async def _accepted(listener: socket.socket) -> socket.socket:
    """The next connection `listener` accepts, waited for on the loop (as the listener's
    own accept does before connect_accepted_socket)."""
    loop = evloop.running_loop()
    ready: evloop.Future[None] = loop.create_future()
    loop.add_reader(listener, evloop.release, ready)
    try:
        await ready
    finally:
        loop.remove_reader(listener)
    return listener.accept()[0]


def _contexts(pki: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    server.load_verify_locations(pki / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client.load_cert_chain(pki / "client.pem", pki / "client.key")
    return server, client


def test_tls_both_ways_on_the_own_loop_with_a_large_transfer(tmp_path: Path) -> None:
    """Our TLS server (start_tls on an accepted socket, as the listener does) and our TLS
    client (start_tls after a plain connection, as the NATS client does)."""
    make_pki(tmp_path)
    server_ctx, client_ctx = _contexts(tmp_path)
    payload = bytes(range(256)) * 8192  # 2 MiB: many records, partial sends, pending()

    async def main() -> None:
        loop = evloop.running_loop()
        listener = _listening()
        port = listener.getsockname()[1]
        plain_client, client = await loop.create_connection(Recorder, "127.0.0.1", port)
        sock = await _accepted(listener)
        plain_server, server = await loop.connect_accepted_socket(
            lambda: Recorder(echo=True), sock)
        server_tls, client_tls = await evloop.gather(
            loop.start_tls(plain_server, server, server_ctx, server_side=True,
                           ssl_handshake_timeout=10),
            loop.start_tls(plain_client, client, client_ctx, server_hostname="localhost",
                           ssl_handshake_timeout=10))
        assert isinstance(client, Recorder) and isinstance(server, Recorder)
        assert plain_client.is_closing() and plain_server.is_closing()
        # as with asyncio, the protocol keeps the transport it was made with until told
        server.transport, client.transport = server_tls, client_tls
        cert = server_tls.get_extra_info("peercert")
        assert dict(x[0] for x in cert["subject"])["commonName"] == "client"
        client_tls.write(payload)
        assert await client.until(len(payload)) == payload
        client_tls.close()
        assert await evloop.wait_for(client.lost, 10) is None
        await evloop.wait_for(server.lost, 10)
        assert client.events == ["made", "lost"] and server.events[0] == "made"
        listener.close()

    run(main)


def test_tls_server_against_the_standard_librarys_blocking_client(tmp_path: Path) -> None:
    make_pki(tmp_path)
    server_ctx, client_ctx = _contexts(tmp_path)
    answers: list[bytes] = []

    def blocking_client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping" * 1000)
            got = b""
            while len(got) < 4000:
                got += tls.recv(65536)
            answers.append(got)

    async def main() -> None:
        loop = evloop.running_loop()
        listener = _listening()
        thread = threading.Thread(target=blocking_client, args=(listener.getsockname()[1],))
        thread.start()
        sock = await _accepted(listener)
        plain, server = await loop.connect_accepted_socket(lambda: Recorder(echo=True), sock)
        tls = await loop.start_tls(plain, server, server_ctx, server_side=True,
                                   ssl_handshake_timeout=10)
        assert isinstance(server, Recorder)
        server.transport = tls
        await evloop.wait_for(server.lost, 10)
        await loop.run_in_executor(evloop.Worker("join"), thread.join)
        listener.close()

    run(main)
    assert answers == [b"ping" * 1000]


def test_tls_handshake_times_out_and_fails_on_garbage(tmp_path: Path) -> None:
    make_pki(tmp_path)
    server_ctx, _client_ctx = _contexts(tmp_path)

    async def main() -> None:
        loop = evloop.running_loop()
        ours, theirs = socket.socketpair()
        plain, protocol = await loop.connect_accepted_socket(Recorder, ours)
        start = loop.time()
        with pytest.raises(TimeoutError):
            await loop.start_tls(plain, protocol, server_ctx, server_side=True,
                                 ssl_handshake_timeout=0.1)
        assert loop.time() - start < 5
        assert theirs.recv(10) == b""  # closed
        theirs.close()
        ours, theirs = socket.socketpair()
        plain, protocol = await loop.connect_accepted_socket(Recorder, ours)
        theirs.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            await loop.start_tls(plain, protocol, server_ctx, server_side=True,
                                 ssl_handshake_timeout=10)
        theirs.close()

    run(main)
