"""Stream connections on auditpy's own loop (system.evloop): TCP and Unix sockets, plain or
TLS, servers and clients, with asyncio's protocol interface.

A protocol gets `connection_made(transport)`, then `data_received(data)` (or, for a
buffered protocol, `get_buffer`/`buffer_updated`), `eof_received()`, `pause_writing()` and
`resume_writing()` when unsent output crosses the transport's limits, and
`connection_lost(exc)` once, at the end, from the loop. That is the interface of asyncio's
transports, so the daemons' protocols move over unchanged.

TLS is the standard library's own non-blocking SSLSocket over the connection's socket:
OpenSSL reads and writes the socket itself, the transport only retries when it wants the
socket readable or writable. Decrypted bytes OpenSSL holds are read out in the same
wakeup (`pending`), since the socket will not report them. `ssl` is imported only when a
connection asks for TLS.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket

from auditpy.system.evloop import (
    Future,
    Loop,
    TimerHandle,
    Worker,
    call_guarded,
    release,
    wait_for,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import Any

log = logging.getLogger("auditpy.loop")

#: what one wakeup reads from a connection before the next one gets its turn
_READ_SIZE = 256 * 1024
#: connections a listening socket accepts per wakeup
_ACCEPT_BATCH = 64
#: after running out of file descriptors, a server waits this long before accepting again
_ACCEPT_RETRY = 1.0
_HIGH = 64 * 1024


class BaseProtocol:
    """What every protocol hears from its transport."""

    def connection_made(self, transport: Transport) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def eof_received(self) -> bool | None:
        """The peer will send nothing more; True keeps a plain connection open for
        writing (TLS connections close anyway)."""
        return None


class Protocol(BaseProtocol):
    def data_received(self, data: bytes) -> None:
        pass


class BufferedProtocol(BaseProtocol):
    """Reads go straight into the protocol's own buffer."""

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        raise NotImplementedError

    def buffer_updated(self, nbytes: int) -> None:
        pass


class Transport:
    """What a protocol may ask of its transport: asyncio's transport interface, as far as
    auditpy's protocols use it (StreamTransport and the listener's own plain transport)."""

    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        self._extra: dict[str, Any] = dict(extra) if extra else {}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        raise NotImplementedError

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError

    def is_reading(self) -> bool:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError


def _tls_errors() -> tuple[type[BaseException], type[BaseException]]:
    import ssl

    return ssl.SSLWantReadError, ssl.SSLWantWriteError


class StreamTransport(Transport):
    """One connected stream socket (or SSLSocket) driven by the loop."""

    def __init__(self, loop: Loop, sock: socket.socket, protocol: BaseProtocol,
                 extra: dict[str, Any] | None = None, *, tls: bool = False) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffered = isinstance(protocol, BufferedProtocol)
        self._tls = tls
        if tls:
            self._want_read, self._want_write = _tls_errors()
        self._out = bytearray()
        self._high = _HIGH
        self._low = _HIGH // 4
        self._paused_protocol = False
        #: the loop watches the socket for input (not before `_start` has run)
        self._reading = False
        #: the protocol paused reading (possibly before `_start` ran: in connection_made)
        self._paused = False
        self._closing = False
        #: TLS only, a renegotiation: a send waits for the socket to be readable, or a
        #: read for it to be writable
        self._send_wants_read = False
        self._read_wants_write = False
        sock.setblocking(False)
        super().__init__({"socket": sock})
        with contextlib.suppress(OSError):
            self._extra["peername"] = sock.getpeername()
        with contextlib.suppress(OSError):
            self._extra["sockname"] = sock.getsockname()
        if tls:
            self._extra["ssl_object"] = sock
            with contextlib.suppress(ValueError):
                self._extra["peercert"] = sock.getpeercert()  # type: ignore[attr-defined]
            with contextlib.suppress(ValueError):
                self._extra["cipher"] = sock.cipher()  # type: ignore[attr-defined]
        if extra:
            self._extra.update(extra)

    def _start(self, waiter: Future[None] | None = None, *, made: bool = True) -> None:
        """As asyncio starts a transport: connection_made, then reading, both from the
        loop; `waiter` is done once they have run."""
        if made:
            self._loop.call_soon(self._protocol.connection_made, self)
        self._loop.call_soon(self._begin_reading, waiter)

    def _begin_reading(self, waiter: Future[None] | None) -> None:
        if self._sock is not None and not self._closing and not self._paused:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio's transport interface

    def is_closing(self) -> bool:
        return self._closing or self._sock is None

    def is_reading(self) -> bool:
        return not self._paused and not self._closing and self._sock is not None

    def pause_reading(self) -> None:
        self._paused = True
        if self._reading and self._sock is not None:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        was_paused, self._paused = self._paused, False
        if was_paused and not self._reading and not self._closing and self._sock is not None:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
            if self._tls and self._sock.pending():  # type: ignore[attr-defined]
                self._loop.call_soon(self._on_readable)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _HIGH if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_limits()

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._sock is None or self._closing or not data:
            return
        if not self._out:
            sent = self._send(data)
            if sent < 0:
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._on_writable)
        self._out += data
        self._check_limits()

    def close(self) -> None:
        """Close once what is unsent has gone (connection_lost(None) then)."""
        if self._closing or self._sock is None:
            return
        self._closing = True
        self.pause_reading()
        self._reading = False
        if not self._out:
            self._finish(None)

    def abort(self) -> None:
        if self._sock is not None:
            self._closing = True
            self._finish(None)

    # -- the loop's callbacks

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes sent now (0 when the socket is full), or -1 after the connection was lost."""
        sock = self._sock
        assert sock is not None
        try:
            return sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if self._tls:
                if isinstance(exc, self._want_write):
                    return 0
                if isinstance(exc, self._want_read):
                    self._send_wants_read = True
                    return 0
            self._lost(exc)
            return -1

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._out:
                self._loop.remove_writer(self._fd)
            self._on_readable()
        if self._sock is None or not self._out:
            return
        sent = self._send(self._out)
        if sent < 0:
            return
        del self._out[:sent]
        self._check_limits()  # as asyncio: before the close below, even while closing
        if self._out:
            if self._send_wants_read:  # the socket must be read first: stop polling
                self._loop.remove_writer(self._fd)
            return
        if self._sock is None:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish(None)

    def _check_limits(self) -> None:
        size = len(self._out)
        if not self._paused_protocol and size > self._high:
            self._paused_protocol = True
            call_guarded(self._loop, self._protocol.pause_writing)
        elif self._paused_protocol and size <= self._low:
            self._paused_protocol = False
            call_guarded(self._loop, self._protocol.resume_writing)

    def _on_readable(self) -> None:
        if self._send_wants_read:
            self._send_wants_read = False
            if self._out:
                self._loop.add_writer(self._fd, self._on_writable)
                self._on_writable()
        while self._reading and not self._closing and self._sock is not None:
            if not self._read_once():
                return
            if not self._tls or not self._sock.pending():  # type: ignore[attr-defined]
                return

    def _read_once(self) -> bool:
        """One read into the protocol; False when nothing (more) came or the end did."""
        sock = self._sock
        assert sock is not None
        try:
            if self._buffered:
                buffer = self._protocol.get_buffer(-1)  # type: ignore[attr-defined]
                n = sock.recv_into(buffer)
                if n:
                    self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
                    return True
            else:
                data = sock.recv(_READ_SIZE)
                if data:
                    self._protocol.data_received(data)  # type: ignore[attr-defined]
                    return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if self._tls:
                if isinstance(exc, self._want_read):
                    return False
                if isinstance(exc, self._want_write):
                    self._read_wants_write = True
                    self._loop.add_writer(self._fd, self._on_writable)
                    return False
            self._lost(exc)
            return False
        self._eof()
        return False

    def _eof(self) -> None:
        self.pause_reading()
        keep_open = bool(call_guarded(self._loop, self._protocol.eof_received))
        if self._tls or not keep_open:
            self.close()

    def _lost(self, exc: Exception) -> None:
        self._closing = True
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._reading = False
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._out.clear()
        if self._tls and exc is None:
            # best effort: our close_notify, without waiting for the peer's
            with contextlib.suppress(OSError, ValueError):
                sock.unwrap()  # type: ignore[attr-defined]
        sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def _detach(self) -> socket.socket:
        """Hand the socket over (to start_tls): this transport is done, silently."""
        sock, self._sock = self._sock, None
        assert sock is not None
        self._closing = True
        self._reading = False
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        return sock


class Server:
    """Listening sockets accepting connections for a protocol factory."""

    def __init__(self, loop: Loop, sockets: list[socket.socket],
                 factory: Callable[[], BaseProtocol]) -> None:
        self._loop = loop
        self.sockets = sockets
        self._factory = factory
        self._retry: TimerHandle | None = None
        for sock in sockets:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accepting a connection on %s failed: %s; retrying in %g s",
                              listener.getsockname(), exc, _ACCEPT_RETRY)
                    for s in self.sockets:
                        self._loop.remove_reader(s.fileno())
                    self._retry = self._loop.call_later(_ACCEPT_RETRY, self._resume)
                    return
                raise
            _set_nodelay(sock)
            protocol = self._factory()
            StreamTransport(self._loop, sock, protocol)._start()

    def _resume(self) -> None:
        self._retry = None
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening; connections already accepted go on."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            if not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []

    async def wait_closed(self) -> None:
        return None


def _set_nodelay(sock: socket.socket) -> None:
    """As asyncio does for every TCP transport: replies go out when written."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_resolver: Worker | None = None


def _resolver_worker() -> Worker:
    """getaddrinfo blocks (DNS): it runs on a thread of its own, started when first used."""
    global _resolver
    if _resolver is None:
        _resolver = Worker("auditpy-resolver")
    return _resolver


async def getaddrinfo(loop: Loop, host: str | None, port: int | str | None, *,
                      family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
                      ) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo off the loop; an address literal (no DNS) is resolved at once."""
    try:
        return socket.getaddrinfo(host, port, family, type, proto,
                                  flags | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError):
        pass
    return await loop.run_in_executor(_resolver_worker(), socket.getaddrinfo, host, port,
                                      family, type, proto, flags)


async def sock_connect(loop: Loop, sock: socket.socket, address: Any) -> None:
    """Connect the non-blocking `sock` to `address`, waiting on the loop."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
        raise OSError(err, f"Connect call failed {address}: {os.strerror(err)}")
    writable: Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, release, writable)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"Connect call failed {address}: {os.strerror(err)}")


async def create_connection(loop: Loop, factory: Callable[[], BaseProtocol],
                            host: str | None = None, port: int | None = None, *,
                            sock: socket.socket | None = None,
                            ssl: ssl.SSLContext | None = None,
                            server_hostname: str | None = None,
                            ssl_handshake_timeout: float | None = None
                            ) -> tuple[StreamTransport, BaseProtocol]:
    """Connect to `host`:`port` (each address it resolves to in turn) or take the
    connected `sock`, with TLS over it when given an `ssl` context; the protocol has had
    connection_made (with the TLS transport) when this returns."""
    if sock is None:
        infos = await getaddrinfo(loop, host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned nothing")
        errors: list[OSError] = []
        for family, kind, proto, _name, address in infos:
            candidate = socket.socket(family, kind, proto)
            try:
                await sock_connect(loop, candidate, address)
            except OSError as exc:
                candidate.close()
                errors.append(exc)
                continue
            except BaseException:
                candidate.close()
                raise
            sock = candidate
            break
        else:
            if len({str(e) for e in errors}) == 1:
                raise errors[0]
            raise OSError("Multiple exceptions: " + ", ".join(str(e) for e in errors))
    _set_nodelay(sock)
    tls = False
    if ssl is not None:
        sock = await _tls_over(loop, sock, ssl, server_side=False,
                               server_hostname=server_hostname or host,
                               timeout=ssl_handshake_timeout)
        tls = True
    protocol = factory()
    transport = StreamTransport(loop, sock, protocol, tls=tls)
    waiter: Future[None] = loop.create_future()
    transport._start(waiter)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


async def connect_accepted_socket(loop: Loop, factory: Callable[[], BaseProtocol],
                                  sock: socket.socket) -> tuple[StreamTransport, BaseProtocol]:
    """A transport for a socket accepted elsewhere."""
    return await create_connection(loop, factory, sock=sock)


async def start_tls(loop: Loop, transport: StreamTransport, protocol: BaseProtocol,
                    context: ssl.SSLContext, *, server_side: bool = False,
                    server_hostname: str | None = None,
                    ssl_handshake_timeout: float | None = None) -> StreamTransport:
    """TLS over `transport`'s connection: the handshake, then a new transport for the same
    protocol (which gets no second connection_made). `transport` is done with either
    way; a failed or timed out handshake closes the connection and raises."""
    transport.pause_reading()
    tls_sock = await _tls_over(loop, transport._detach(), context, server_side=server_side,
                               server_hostname=server_hostname,
                               timeout=ssl_handshake_timeout)
    tls = StreamTransport(loop, tls_sock, protocol, tls=True)
    tls._start(made=False)
    if tls_sock.pending():
        loop.call_soon(tls._on_readable)
    return tls


async def _tls_over(loop: Loop, sock: socket.socket, context: ssl.SSLContext, *,
                    server_side: bool, server_hostname: str | None, timeout: float | None
                    ) -> ssl.SSLSocket:
    """`sock` wrapped and its handshake done within `timeout`; closed if that fails."""
    try:
        tls_sock = context.wrap_socket(sock, server_side=server_side,
                                       server_hostname=server_hostname,
                                       do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        await wait_for(_handshake(loop, tls_sock), timeout)
    except BaseException:
        tls_sock.close()
        raise
    return tls_sock


async def _handshake(loop: Loop, sock: ssl.SSLSocket) -> None:
    want_read, want_write = _tls_errors()
    fd = sock.fileno()
    while True:
        try:
            sock.do_handshake()
            return
        except want_read:
            ready: Future[None] = loop.create_future()
            loop.add_reader(fd, release, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        except want_write:
            ready = loop.create_future()
            loop.add_writer(fd, release, ready)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


async def create_server(loop: Loop, factory: Callable[[], BaseProtocol], host: str | None,
                        port: int, *, reuse_address: bool = True, backlog: int = 100
                        ) -> Server:
    """Listen on every address `host` resolves to (all of them when None)."""
    infos = await getaddrinfo(loop, host, port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{address!r}: {exc.strerror}") from None
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Server(loop, sockets, factory)


async def create_unix_server(loop: Loop, factory: Callable[[], BaseProtocol], path: str, *,
                             backlog: int = 100) -> Server:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Server(loop, [sock], factory)

