"""A NATS client on auditpy's own loop, for the JetStream output and the collector.

It is deliberately small: one connection at a time, chosen among the configured servers and
those the cluster announces (INFO ``connect_urls``); TLS (the server's INFO comes in clear
text, then the connection is upgraded, as nats-server 2.9 expects), token or user/password
authentication (also as ``user:password@`` in a URL); PING/PONG keepalive that declares a
silent server dead; request/reply through one wildcard inbox subscription per client; and
subscriptions that are renewed on every new connection.

What it does *not* do is reconnect by itself or buffer publishes across connections: the
owners (the publisher, the collector) decide what a lost connection means for the records
in flight, so a loss is reported to them at once (`Client.lost`) and they call `connect`
again.  A publish while disconnected raises `NotConnected` rather than vanishing.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from auditpy import AUDIT_VERSION
from auditpy.config.nats_conf import NatsConf, tls_context
from auditpy.config.tls import client_context
from auditpy.proto import nats as wire
from auditpy.proto.nats import Info, Msg, ServerUrl
from auditpy.structs import dataclass, field
from auditpy.system import evloop, transports

log = logging.getLogger("auditpy.nats")

#: Writes buffered in the transport before `drain` waits.
WRITE_HIGH_WATER = 4 << 20


class NatsError(Exception):
    """Something went wrong talking to NATS; the message says what and with which server."""


class NotConnected(NatsError):
    pass


class ConnectError(NatsError):
    pass


class RequestTimeout(NatsError):
    pass


@dataclass(frozen=True)
class NatsOptions:
    servers: tuple[ServerUrl, ...]
    #: shown by the server (connz) to tell the clients apart
    name: str = "auditpy"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    #: used for ``tls://`` servers and servers that require TLS; None = the system CAs
    tls: ssl.SSLContext | None = None
    #: refuse to talk to a server without TLS
    tls_required: bool = False
    tls_server_name: str | None = None
    connect_timeout: float = 5.0
    ping_interval: float = 10.0
    max_pings_out: int = 2
    #: also try the servers the cluster announces in INFO connect_urls
    discover: bool = True
    extra_connect: dict[str, object] = field(default_factory=dict)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def new_token(size: int = 22) -> str:
    """A random subject token (inboxes), unique enough that two clients never share one."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(random.SystemRandom().choice(alphabet) for _ in range(size))


class _Connection(transports.Protocol):
    """One socket to one server: parses what it sends, answers its PINGs, and hands every
    message to the subscription it names."""

    def __init__(self, client: Client, server: ServerUrl) -> None:
        self.client = client
        self.server = server
        self.loop = evloop.running_loop()
        self.transport: transports.Transport | None = None
        self.parser = wire.Parser()
        self.info: Info | None = None
        self.info_future: evloop.Future[Info] = self.loop.create_future()
        self.pongs: collections.deque[evloop.Future[None]] = collections.deque()
        self.closed = False
        self.reason = ""
        self.lost: evloop.Future[str] = self.loop.create_future()
        self.pings_out = 0
        self._ping_timer: evloop.TimerHandle | None = None
        self.writable = evloop.Event()
        self.writable.set()

    # transports.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: transports.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            ops = self.parser.feed(data)
        except wire.ProtocolError as exc:
            self._handle(exc.ops)
            self.close(f"protocol error from {self.server}: {exc.reason}")
            return
        self._handle(ops)

    def _handle(self, ops: list[wire.ServerOp]) -> None:
        subs = self.client._subs
        for op in ops:
            if self.closed:
                return
            if type(op) is Msg:
                callback = subs.get(op.sid)
                if callback is not None:
                    callback(op)
            elif op is wire.PING:
                self.write(wire.PONG_OP)
            elif op is wire.PONG:
                self.pings_out = 0
                if self.pongs:
                    future = self.pongs.popleft()
                    if not future.done():
                        future.set_result(None)
            elif isinstance(op, Info):
                self._on_info(op)
            elif isinstance(op, wire.Err):
                self._on_err(op.message)

    def _on_info(self, info: Info) -> None:
        self.info = info
        max_payload = info.get_int("max_payload")
        if max_payload:
            self.parser.max_payload = max(max_payload, wire.DEFAULT_MAX_PAYLOAD) + 8192
        if not self.info_future.done():
            self.info_future.set_result(info)
        self.client._learn(info)

    def _on_err(self, message: str) -> None:
        text = f"{self.server} says: {message}"
        lowered = message.lower()
        if "permissions violation" in lowered or "invalid subject" in lowered:
            log.error("%s", text)  # the server keeps the connection
            return
        for future in self.pongs:
            if not future.done():
                future.set_exception(ConnectError(text))
        self.pongs.clear()
        self.close(text)

    def eof_received(self) -> bool:
        self.close(f"{self.server} closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self.server} lost: {_reason(exc)}" if exc else (
            f"{self.server} closed the connection"
        )
        self.close(reason, abort=False)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise NotConnected(self.reason or "not connected")
        self.transport.write(data)

    def ping(self) -> evloop.Future[None]:
        future: evloop.Future[None] = self.loop.create_future()
        self.write(wire.PING_OP)
        self.pongs.append(future)
        return future

    def start_keepalive(self) -> None:
        options = self.client.options
        if options.ping_interval > 0:
            self._ping_timer = self.loop.call_later(options.ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._ping_timer = None
        if self.closed:
            return
        options = self.client.options
        if self.pings_out >= options.max_pings_out:
            self.close(f"{self.server} did not answer {self.pings_out} PINGs: stale connection")
            return
        self.pings_out += 1
        try:
            self.write(wire.PING_OP)
        except NotConnected:
            return
        self._ping_timer = self.loop.call_later(options.ping_interval, self._keepalive)

    def close(self, reason: str, abort: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self.transport is not None and abort:
            self.transport.abort()
        for future in self.pongs:
            if not future.done():
                future.set_exception(NotConnected(reason))
        self.pongs.clear()
        if not self.info_future.done():
            self.info_future.set_exception(ConnectError(reason))
        if not self.lost.done():
            self.lost.set_result(reason)
        self.client._connection_closed(self, reason)


class Client:
    """See the module docstring.  All methods run on the event loop's thread."""

    def __init__(self, options: NatsOptions) -> None:
        if not options.servers:
            raise ValueError("no NATS server given")
        self.options = options
        self._servers: list[ServerUrl] = list(options.servers)
        self._next = random.randrange(len(self._servers))
        self._conn: _Connection | None = None
        self._last_lost: evloop.Future[str] | None = None
        self._subs: dict[int, Callable[[Msg], None]] = {}
        self._sub_subjects: dict[int, str] = {}
        self._sid = 0
        self._inbox_prefix = f"_INBOX.{new_token()}."
        self._inbox_sid: int | None = None
        self._requests: dict[str, evloop.Future[Msg]] = {}
        self._request_seq = 0
        self.connects = 0

    # -- state -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def server(self) -> ServerUrl | None:
        return self._conn.server if self._conn is not None else None

    @property
    def info(self) -> Info | None:
        return self._conn.info if self._conn is not None else None

    @property
    def lost(self) -> evloop.Future[str]:
        """Resolves (to the reason) when the last connection made ends (at once if it has
        ended already, even before the caller looked)."""
        if self._last_lost is None:
            raise NotConnected("never connected")
        return self._last_lost

    @property
    def servers(self) -> list[ServerUrl]:
        return list(self._servers)

    def _learn(self, info: Info) -> None:
        """Servers the cluster announces join the list (with our TLS choice)."""
        if not self.options.discover:
            return
        known = {(s.host, s.port) for s in self._servers}
        template = self._servers[0]
        for address in info.connect_urls:
            try:
                url = wire.parse_server_url(address)
            except ValueError:
                continue
            if (url.host, url.port) not in known:
                known.add((url.host, url.port))
                self._servers.append(ServerUrl(url.host, url.port, template.tls))

    # -- connecting ----------------------------------------------------------------------

    async def connect(self) -> ServerUrl:
        """Connect to the next server that works, trying each known one once; raises
        ConnectError naming why each failed."""
        if self.connected:
            assert self._conn is not None
            return self._conn.server
        failures: list[str] = []
        for _ in range(len(self._servers)):
            server = self._servers[self._next % len(self._servers)]
            self._next = (self._next + 1) % len(self._servers)
            try:
                await evloop.wait_for(self._open(server), self.options.connect_timeout)
            except TimeoutError:
                failures.append(f"{server}: timed out after {self.options.connect_timeout:g} s")
            except (OSError, NatsError) as exc:
                failures.append(f"{server}: {_reason(exc)}")
            else:
                self.connects += 1
                return server
        raise ConnectError("; ".join(failures) or "no server to try")

    async def _open(self, server: ServerUrl) -> None:
        loop = evloop.running_loop()
        options = self.options
        conn = _Connection(self, server)
        transport, _ = await loop.create_connection(lambda: conn, server.host, server.port)
        try:
            info = await conn.info_future
            wants_tls = server.tls or options.tls_required or info.get_bool("tls_required")
            if wants_tls:
                if not (info.get_bool("tls_required") or info.get_bool("tls_available")
                        or server.tls):
                    raise ConnectError("the server does not offer TLS")
                context = options.tls or ssl.create_default_context()
                tls_transport = await loop.start_tls(
                    transport, conn, context,
                    server_hostname=options.tls_server_name or server.host,
                    ssl_handshake_timeout=options.connect_timeout,
                )
                if tls_transport is None:
                    raise ConnectError("TLS handshake failed")
                conn.transport = tls_transport
            elif info.get_bool("tls_required"):
                raise ConnectError("the server requires TLS")
            conn.write(wire.connect_op(self._connect_options(server, info, wants_tls)))
            self._conn = conn
            await conn.ping()  # the answer to CONNECT: PONG, or -ERR and a close
            for sid, subject in self._sub_subjects.items():
                conn.write(wire.sub_op(subject, sid))
            conn.start_keepalive()
            self._last_lost = conn.lost
        except BaseException as exc:
            reason = _reason(exc) if isinstance(exc, Exception) else "cancelled"
            if self._conn is conn:
                self._conn = None
            conn.close(conn.reason or reason)
            if conn.reason and isinstance(exc, (NatsError, OSError)):
                raise ConnectError(conn.reason.replace(f"{server} says: ", "")) from None
            raise

    def _connect_options(self, server: ServerUrl, info: Info, tls: bool) -> dict[str, object]:
        options = self.options
        fields: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "name": options.name,
            "lang": "python-auditpy",
            "version": AUDIT_VERSION,
            "protocol": 1,
            "echo": True,
            "headers": True,
            "no_responders": True,
        }
        user = server.user or options.user
        password = server.password if server.user else options.password
        if options.token and not server.user:
            fields["auth_token"] = options.token
        elif user:
            if password is None:  # nats://TOKEN@host is a token
                fields["auth_token"] = user
            else:
                fields["user"] = user
                fields["pass"] = password
        fields.update(options.extra_connect)
        return fields

    def _connection_closed(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
            for future in self._requests.values():
                if not future.done():
                    future.set_exception(NotConnected(reason))
            self._requests.clear()

    def close(self, reason: str = "closed by us") -> None:
        conn = self._conn
        if conn is not None:
            conn.close(reason)

    async def drain_and_close(self, timeout: float = 2.0) -> None:
        """Flush what was written (a PING round trip), then close."""
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(TimeoutError, NatsError):
            await evloop.wait_for(conn.ping(), timeout)
        conn.close("closed by us", abort=False)
        transport = conn.transport
        if transport is not None:
            transport.close()

    # -- messages ------------------------------------------------------------------------

    def _live(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.closed:
            raise NotConnected("not connected")
        return conn

    def write(self, data: bytes) -> None:
        """Raw protocol bytes (one or many PUB/HPUB made by `auditpy.proto.nats`)."""
        self._live().write(data)

    def publish(
        self, subject: str, payload: bytes, reply: str | None = None,
        headers: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        if headers:
            self.write(wire.hpub_op(subject, wire.encode_headers(headers), payload, reply))
        else:
            self.write(wire.pub_op(subject, payload, reply))

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        conn = self._live()
        await conn.writable.wait()

    def subscribe(self, subject: str, callback: Callable[[Msg], None]) -> int:
        """Subscribe now (if connected) and again after every reconnect."""
        wire.check_subject(subject, wildcards=True)
        self._sid += 1
        sid = self._sid
        self._subs[sid] = callback
        self._sub_subjects[sid] = subject
        if self.connected:
            self.write(wire.sub_op(subject, sid))
        return sid

    def unsubscribe(self, sid: int) -> None:
        self._subs.pop(sid, None)
        self._sub_subjects.pop(sid, None)
        if self.connected:
            self.write(wire.unsub_op(sid))

    def new_inbox(self) -> str:
        """A subject of our own (not under the request inbox) for replies to route."""
        return f"_INBOX.{new_token()}"

    def request_subject(self, future: evloop.Future[Msg]) -> str:
        """A reply subject whose message resolves `future` (the caller publishes)."""
        if self._inbox_sid is None:
            self._inbox_sid = self.subscribe(self._inbox_prefix + "*", self._on_reply)
        self._request_seq += 1
        token = str(self._request_seq)
        self._requests[token] = future
        return self._inbox_prefix + token

    def forget_request(self, subject: str) -> None:
        self._requests.pop(subject[len(self._inbox_prefix):], None)

    def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox_prefix):].decode("ascii", "replace")
        future = self._requests.pop(token, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, subject: str, payload: bytes, timeout: float = 5.0,
        headers: Sequence[tuple[str, str]] | None = None,
    ) -> Msg:
        """Publish with a reply subject and wait for the one reply; raises RequestTimeout or
        NotConnected.  A 503 status (nobody listens on `subject`) raises NatsError."""
        future: evloop.Future[Msg] = evloop.running_loop().create_future()
        reply = self.request_subject(future)
        try:
            self.publish(subject, payload, reply, headers)
            msg = await evloop.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply on {subject} within {timeout:g} s") from None
        finally:
            self.forget_request(reply)
        if msg.headers is not None and not msg.payload:
            status = wire.decode_headers(msg.headers)
            if status.status == 503:
                raise NatsError(f"no responders on {subject}")
        return msg

    def ping(self) -> evloop.Future[None]:
        """A PING now; the future resolves at its PONG, when the server has read everything
        written before it (fails with NotConnected if the connection ends first)."""
        return self._live().ping()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has read everything written so far (a PING round trip)."""
        try:
            await evloop.wait_for(self._live().ping(), timeout)
        except TimeoutError:
            raise RequestTimeout(f"no PONG within {timeout:g} s") from None


def options_for(conf: NatsConf, program: str) -> NatsOptions:
    """The client settings a NATS file (publisher's or collector's) asks for.  Raises
    OSError / ssl.SSLError if its TLS files cannot be loaded."""
    return NatsOptions(
        servers=conf.servers,
        name=conf.client_name(program),
        user=conf.user,
        password=conf.password,
        token=conf.token,
        tls=tls_context(conf),
        tls_required=conf.tls,
        tls_server_name=conf.tls_server_name,
        connect_timeout=conf.connect_timeout,
        ping_interval=conf.ping_interval,
    )


def load_tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """The client context of `config.tls` (one for every auditpy client)."""
    return client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> bytes:
    """This boot's ID without dashes, or a per-process random one if the kernel has none."""
    try:
        with open(path, "rb") as f:
            return f.read().strip().replace(b"-", b"")
    except OSError:
        return os.urandom(16).hex().encode()


class Stop:
    """The stop of a long-lived client owner (the publisher, the collector): once set, it
    ends the waits of its reconnect loop at once, so a stop never waits out a back-off."""

    def __init__(self) -> None:
        self._event = evloop.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def sleep(self, delay: float) -> None:
        """Until `delay` has passed or the stop came."""
        with contextlib.suppress(TimeoutError):
            await evloop.wait_for(self._event.wait(), delay)

    async def until_lost(self, lost: evloop.Future[str]) -> str | None:
        """Until the connection is lost (its reason) or the stop came (None)."""
        stop = evloop.ensure_future(self._event.wait())
        waiters: list[evloop.Future[Any]] = [lost, stop]
        try:
            await evloop.wait(waiters, return_when=evloop.FIRST_COMPLETED)
        finally:
            stop.cancel()
        return lost.result() if lost.done() else None
