"""The NATS client against real nats-server processes on loopback: failover across cluster
members, authentication, TLS with and without client certificates, keepalive."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auditpy.nats import jetstream as jsapi
from auditpy.nats.client import (
    Client,
    ConnectError,
    NatsOptions,
    NotConnected,
    load_tls_context,
)
from auditpy.proto import jetstream as js
from auditpy.proto.nats import Msg, parse_server_url
from auditpy.system import evloop, transports

from .nats_support import Cluster, available, cluster, make_pki

pytestmark = pytest.mark.skipif(not available(), reason="needs nats-server")


def options(urls: list[str], **kwargs: Any) -> NatsOptions:
    kwargs.setdefault("connect_timeout", 2.0)
    return NatsOptions(tuple(parse_server_url(u) for u in urls), **kwargs)


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await evloop.wait_for(coro, timeout)

    return evloop.run(bounded())


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path / "cluster") as c:
        yield c


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_request_reply_headers_and_discovery(three: Cluster) -> None:
    async def main() -> None:
        client = Client(options(three.urls[:1]))
        await client.connect()
        # the other members are learnt from INFO connect_urls (the first INFO, or a later
        # one once the routes are up)
        members = {n.port for n in three.nodes}
        for _ in range(200):
            if {s.port for s in client.servers} == members:
                break
            await evloop.sleep(0.05)
        assert {s.port for s in client.servers} == members
        got: list[Msg] = []

        def echo(msg: Msg) -> None:
            got.append(msg)
            if msg.reply:
                client.publish(msg.reply.decode(), b"re:" + msg.payload)

        client.subscribe("svc.echo", echo)
        await client.flush()
        reply = await client.request("svc.echo", b"hi", 5, headers=[("K", "v")])
        assert reply.payload == b"re:hi"
        assert got[0].headers == b"NATS/1.0\r\nK: v\r\n\r\n"
        with pytest.raises(Exception, match="no responders"):
            await client.request("nobody.listens", b"x", 5)
        await client.drain_and_close()

    run(main())


def test_failover_to_another_member_when_one_dies(three: Cluster) -> None:
    async def main() -> None:
        client = Client(options(three.urls[:1]))
        first = await client.connect()
        node = next(n for n in three.nodes if n.port == first.port)
        lost = client.lost
        node.kill()
        reason = await evloop.wait_for(lost, 10)
        assert str(first.port) in reason
        second = await client.connect()
        assert second.port != first.port
        with pytest.raises(NotConnected):
            Client(options(three.urls)).publish("x", b"")
        await client.flush()
        client.close()

    run(main())


def test_connect_reports_every_server_that_failed() -> None:
    async def main() -> None:
        client = Client(options(["nats://127.0.0.1:1", "nats://127.0.0.1:2"]))
        with pytest.raises(ConnectError) as caught:
            await client.connect()
        assert "127.0.0.1:1" in str(caught.value) and "127.0.0.1:2" in str(caught.value)

    run(main())


@pytest.mark.parametrize(
    ("server_auth", "client", "ok"),
    [
        ('authorization { token: "s3cret" }', {"token": "s3cret"}, True),
        ('authorization { token: "s3cret" }', {"token": "wrong"}, False),
        ('authorization { token: "s3cret" }', {"url_cred": "s3cret@"}, True),
        ("authorization { users: [ {user: alice, password: pw} ] }",
         {"user": "alice", "password": "pw"}, True),
        ("authorization { users: [ {user: alice, password: pw} ] }",
         {"url_cred": "alice:pw@"}, True),
        ("authorization { users: [ {user: alice, password: pw} ] }",
         {"user": "alice", "password": "nope"}, False),
        ("authorization { users: [ {user: alice, password: pw} ] }", {}, False),
    ],
)
def test_authentication(tmp_path: Path, server_auth: str, client: dict[str, str],
                        ok: bool) -> None:
    with cluster(tmp_path / "c", size=1, extra=server_auth + "\n") as c:
        cred = client.pop("url_cred", "")
        url = c.urls[0].replace("nats://", f"nats://{cred}")

        async def main() -> None:
            nats = Client(options([url], **client))
            if ok:
                await nats.connect()
                await nats.flush()
                nats.close()
            else:
                with pytest.raises(ConnectError, match="Authorization Violation"):
                    await nats.connect()

        run(main())


def tls_block(pki: dict[str, Path], verify: bool) -> str:
    return (f'tls {{\n  cert_file: "{pki["server_cert"]}"\n  key_file: "{pki["server_key"]}"\n'
            f'  ca_file: "{pki["ca"]}"\n  verify: {"true" if verify else "false"}\n'
            "  timeout: 2\n}\n")


@pytest.mark.parametrize(
    ("verify", "ca", "client_cert", "scheme", "error"),
    [
        (False, "ca", False, "tls", None),
        (False, "ca", False, "nats", None),  # the server requires TLS: upgraded anyway
        (True, "ca", True, "tls", None),
        (True, "ca", False, "tls", "closed|lost|reset|certificate"),
        (False, "other_ca", False, "tls", "certificate verification failed"),
    ],
)
def test_tls(tmp_path: Path, pki: dict[str, Path], verify: bool, ca: str, client_cert: bool,
             scheme: str, error: str | None) -> None:
    with cluster(tmp_path / "c", size=1, extra=tls_block(pki, verify)) as c:
        url = c.urls[0].replace("nats://", f"{scheme}://")
        context = load_tls_context(
            str(pki[ca]),
            str(pki["client_cert"]) if client_cert else None,
            str(pki["client_key"]) if client_cert else None,
        )

        async def main() -> None:
            nats = Client(options([url], tls=context))
            if error is None:
                await nats.connect()
                info = nats.info
                assert info is not None and info.get_bool("tls_required")
                await nats.flush()
                nats.close()
            else:
                with pytest.raises(ConnectError, match=error):
                    await nats.connect()

        run(main())


def test_tls_required_by_us_but_not_offered(three: Cluster) -> None:
    async def main() -> None:
        nats = Client(options(three.urls[:1], tls_required=True, discover=False,
                              tls=ssl.create_default_context()))
        with pytest.raises(ConnectError, match="does not offer TLS"):
            await nats.connect()

    run(main())


class FakePeer(transports.Protocol):
    """A scripted server's side of one connection: lines and chunks to await, writes."""

    def __init__(self) -> None:
        self.transport: transports.Transport | None = None
        self.data = bytearray()
        self.changed = evloop.Event()
        self.ended = False

    def connection_made(self, transport: transports.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.changed.set()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def readline(self) -> bytes:
        while b"\n" not in self.data and not self.ended:
            self.changed.clear()
            await self.changed.wait()
        end = self.data.find(b"\n") + 1 or len(self.data)
        line = bytes(self.data[:end])
        del self.data[:end]
        return line

    async def read(self) -> bytes:
        while not self.data and not self.ended:
            self.changed.clear()
            await self.changed.wait()
        chunk = bytes(self.data)
        self.data.clear()
        return chunk


async def silent_server(
    handler: Callable[[FakePeer], Awaitable[None]],
) -> tuple[transports.Server, int]:
    loop = evloop.running_loop()

    def serve() -> FakePeer:
        peer = FakePeer()
        loop.create_task(handler(peer))
        return peer

    server = await loop.create_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_server_that_stops_answering_pings_is_declared_dead() -> None:
    async def handler(peer: FakePeer) -> None:
        await evloop.sleep(0)  # connection_made has run
        peer.write(b'INFO {"server_id":"fake","max_payload":1048576,"headers":true}\r\n')
        await peer.readline()  # CONNECT
        await peer.readline()  # PING
        peer.write(b"PONG\r\n")
        while await peer.read():
            pass  # never another PONG

    async def main() -> None:
        server, port = await silent_server(handler)
        try:
            nats = Client(options([f"nats://127.0.0.1:{port}"], ping_interval=0.1,
                                  max_pings_out=2))
            await nats.connect()
            reason = await evloop.wait_for(nats.lost, 5)
            assert "did not answer 2 PINGs" in reason
        finally:
            server.close()

    run(main())


def test_a_garbled_server_is_dropped_with_the_reason() -> None:
    async def handler(peer: FakePeer) -> None:
        await evloop.sleep(0)  # connection_made has run
        peer.write(b'INFO {"server_id":"fake"}\r\n')
        await peer.readline()
        await peer.readline()
        peer.write(b"PONG\r\nWHAT IS THIS\r\n")
        await evloop.sleep(5)

    async def main() -> None:
        server, port = await silent_server(handler)
        try:
            nats = Client(options([f"nats://127.0.0.1:{port}"]))
            with contextlib.suppress(ConnectError):
                await nats.connect()
            if nats.connected:
                reason = await evloop.wait_for(nats.lost, 5)
                assert "protocol error" in reason and "unknown operation" in reason
        finally:
            server.close()

    run(main())


def test_jetstream_publish_is_deduplicated_by_msg_id(three: Cluster) -> None:
    async def main() -> None:
        nats = Client(options(three.urls))
        await nats.connect()
        await jsapi.ensure_stream(nats, js.stream_config("T", ["t.>"], replicas=3))
        await jsapi.ensure_stream(nats, js.stream_config("T", ["t.>"], replicas=3))  # exists
        acks = []
        for payload in (b"a", b"a", b"b"):
            msg = await nats.request("t.x", payload, 5, headers=[(js.MSG_ID, payload.decode())])
            acks.append(js.parse_pub_ack(msg.payload))
        assert [(a.seq, a.duplicate) for a in acks] == [(1, False), (1, True), (2, False)]
        assert await jsapi.last_msg_id(nats, "T", "t.x") == "b"
        assert await jsapi.last_msg_id(nats, "T", "t.none") is None
        await jsapi.ensure_consumer(nats, "T", js.pull_consumer_config("c"))
        got = await jsapi.fetch(nats, "T", "c", 10, 0.5)
        assert [m.payload for m in got] == [b"a", b"b"]
        delivery = js.parse_ack_subject(got[0].reply or b"")
        assert (delivery.stream, delivery.consumer, delivery.stream_seq) == ("T", "c", 1)
        nats.close()

    run(main())
