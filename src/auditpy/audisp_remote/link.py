"""The connection to the server: TCP or TLS connect, and the transport's events.

This is the only module that touches a socket.  It decides nothing: `Link` reports what the
transport says (bytes, EOF, loss, flow control) to an `Owner` (the plugin), which hands each
report to the delivery core, and `open_link` turns every way a connect can fail into one
`ConnectError` whose text names the cause.

`Link` is a Protocol (system.transports) rather than a stream pair: replies are handed over inside
data_received, the moment they arrive, so ACKs that came in just before a reset are never
discarded along with a buffered stream exception (which would resend, and duplicate,
records).  Flow control is only recorded here (`paused`); the owner reads it after each
write, because pause_writing runs inside transport.write, in the middle of carrying out a
decision.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from auditpy.config.files import reason
from auditpy.config.remote_conf import RemoteConfig
from auditpy.system import evloop, transports


class ConnectError(Exception):
    """A connect failed; the message says why (for "cannot connect to PEER: ...")."""


class Owner(Protocol):
    def link_data(self, link: Link, data: bytes) -> None: ...

    def link_eof(self, link: Link) -> None: ...

    def link_lost(self, link: Link, error: str | None) -> None: ...

    def link_writable(self, link: Link) -> None: ...


class Link(transports.Protocol):
    """One connection.  Its reports are held until `release` (the owner first has to learn
    that the connect succeeded: a server may answer, or hang up, before that); after `close`
    or `abort` it reports nothing more."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.transport: transports.Transport | None = None
        #: The transport holds back writes (between pause_writing and resume_writing).
        self.paused = False
        #: We ended it: its events are of no interest any more.
        self.ended = False
        self.closed = evloop.Event()
        self._held: list[Callable[[], None]] | None = []

    def release(self) -> None:
        held, self._held = self._held, None
        for report in held or ():
            if not self.ended:
                report()

    def _report(self, report: Callable[[], None]) -> None:
        if self.ended:
            return
        if self._held is not None:
            self._held.append(report)
        else:
            report()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.ended:
            self.transport.write(data)

    def abort(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self, grace: float) -> None:
        """Close gracefully (what is buffered is still sent), aborting after `grace`
        seconds."""
        self.ended = True
        transport = self.transport
        if transport is None:
            return
        transport.close()
        try:
            await evloop.wait_for(self.closed.wait(), grace)
        except TimeoutError:
            transport.abort()

    # transports.Protocol

    def connection_made(self, transport: transports.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._report(lambda: self.owner.link_data(self, data))

    def eof_received(self) -> bool:
        self._report(lambda: self.owner.link_eof(self))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.paused = False
        error = None if exc is None else reason(exc)
        self._report(lambda: self.owner.link_lost(self, error))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._report(lambda: self.owner.link_writable(self))


async def open_link(cfg: RemoteConfig, tls: ssl.SSLContext | None, owner: Owner) -> Link:
    """Connect to the configured server within max_time_per_record seconds.  Raises
    ConnectError."""
    try:
        return await evloop.wait_for(_open(cfg, tls, owner), cfg.max_time_per_record)
    except TimeoutError:
        raise ConnectError(f"timed out after {cfg.max_time_per_record} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise ConnectError(
            f"TLS certificate verification failed: {exc.verify_message or reason(exc)}"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS handshake failed: {reason(exc)}") from None
    except OSError as exc:
        raise ConnectError(reason(exc)) from None


async def _open(cfg: RemoteConfig, tls: ssl.SSLContext | None, owner: Owner) -> Link:
    loop = evloop.running_loop()
    host = cfg.remote_server or ""
    infos = await loop.getaddrinfo(host, cfg.port, type=socket.SOCK_STREAM)
    last: OSError = OSError(errno.EHOSTUNREACH, f"no usable address for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if cfg.local_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"
                sock.bind((any_address, cfg.local_port))
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            return await _start(sock, cfg, tls, host, owner)
        except BaseException:
            sock.close()
            raise
    raise last


async def _start(
    sock: socket.socket, cfg: RemoteConfig, tls: ssl.SSLContext | None, host: str,
    owner: Owner,
) -> Link:
    loop = evloop.running_loop()
    link = Link(owner)
    if tls is not None:
        await loop.create_connection(
            lambda: link,
            sock=sock,
            ssl=tls,
            server_hostname=cfg.tls_server_name or host,
            ssl_handshake_timeout=float(cfg.max_time_per_record),
        )
    else:
        await loop.create_connection(lambda: link, sock=sock)
    return link
