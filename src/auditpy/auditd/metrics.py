"""Serves the loss ledger as Prometheus metrics over HTTP, on a loopback address or a UNIX
socket (`metrics_listen`), from the daemon's own loop.

Deliberately small: GET (or HEAD) of /metrics, one request per connection, bounded
requests, a bounded number of connections and a deadline for each, so a scraper that
misbehaves costs the daemon nothing but its own connection. The page is made when it is
asked for, from counters the daemon keeps anyway; nothing here asks the kernel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

from auditpy.config.auditd_conf import MetricsAddress
from auditpy.proto.prometheus import CONTENT_TYPE
from auditpy.system import evloop, transports

log = logging.getLogger("auditpy")

MAX_REQUEST = 8192
MAX_CONNECTIONS = 16
DEADLINE = 5.0


class _Scrape(transports.Protocol):
    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: transports.Transport | None = None
        self.timer: evloop.TimerHandle | None = None

    def connection_made(self, transport: transports.Transport) -> None:
        self.transport = transport
        if len(self.server.open) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.server.open.add(self)
        self.timer = self.server.loop.call_later(DEADLINE, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST:
                self._reply(431, b"request too large\n")
            return
        request_line = bytes(self.buffer[: self.buffer.find(b"\r\n")])
        parts = request_line.split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            self._reply(405, b"only GET /metrics\n")
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            self._reply(404, b"see /metrics\n")
        else:
            body = self.server.render().encode()
            self._reply(200, body, head=parts[0] == b"HEAD")

    def _reply(self, status: int, body: bytes, *, head: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        header = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.transport.write(header if head else header + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.open.discard(self)


class MetricsServer:
    def __init__(self, loop: evloop.Loop, address: MetricsAddress, mode: int,
                 render: Callable[[], str]) -> None:
        self.loop = loop
        self.address = address
        self.mode = mode
        self.render = render
        self.open: set[_Scrape] = set()
        self._server: transports.Server | None = None

    async def start(self) -> None:
        """Raises OSError when the address cannot be used."""
        address = self.address
        if address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                if not os.path.islink(address.path) and os.path.exists(address.path):
                    os.unlink(address.path)  # a socket left by an earlier daemon
            old = os.umask(0o777 & ~self.mode)
            try:
                self._server = await self.loop.create_unix_server(
                    lambda: _Scrape(self), address.path)
            finally:
                os.umask(old)
            os.chmod(address.path, self.mode)
        else:
            self._server = await self.loop.create_server(
                lambda: _Scrape(self), address.host, address.port, reuse_address=True)
        log.info("Serving metrics on %s", self.describe())

    def describe(self) -> str:
        a = self.address
        if a.path is not None:
            return f"unix:{a.path}"
        return f"[{a.host}]:{a.port}" if a.host and ":" in a.host else f"{a.host}:{a.port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for scrape in list(self.open):
            if scrape.transport is not None:
                scrape.transport.abort()
        if self.address.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.address.path)
