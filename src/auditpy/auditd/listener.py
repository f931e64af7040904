"""pyauditd's network listener (``tcp_listen_port``): records from audisp-remote clients.

Clients speak the "managed" format (`remote_protocol`): one frame per record, and they wait
for the reply to each frame before sending the next.  The reply says what became of the
record (ACK, DISKLOW, DISKFULL, DISKERROR), so the listener cannot answer before the daemon
has tried to write.  Why the code is shaped the way it is:

* It runs on the daemon's event loop, like everything else in pyauditd: no threads,
  so the log file, the counters and the dispatcher link need no locks.
* Records that arrive from any number of clients within one loop iteration are handed to
  the daemon as one batch (one ``write(2)``), and every frame of the batch then gets the
  reply for that write.  With many clients each waiting for its ACK, this is what keeps the
  per-record cost low.
* The records are complete log lines formatted by the client (with its own ``node=``).
  They are written verbatim: no local node, no enrichment, as the C daemon does.  Only an
  embedded newline (which would forge a second log line) or NUL is neutralised.
* Every peer is assumed hostile: a bad header, a wrong magic, an oversized length, a frame
  that stalls half way, a peer that never reads its replies, a connection flood, a source
  port outside ``tcp_client_ports`` -- each closes that one connection with a log line that
  names the peer (``ip:port``) and the reason.  Nothing a peer sends can raise out of here,
  and a connection holds at most one maximum-size frame of input and a bounded amount of
  output, so memory stays bounded whatever the peers do.
* Admission (port range, per-address and global caps) happens right after ``accept`` and
  before any TLS handshake, so refused peers cost almost nothing.
* Idle peers cannot lock newcomers out.  ``tcp_client_max_idle`` is 0 (never) by default,
  so without a rule of our own a thousand peers that connect and then say nothing would
  hold every slot of the global cap for good.  When a newcomer finds the cap reached, the
  peer idle the longest is closed to make room (``client IP:PORT: idle for N s, ... -
  closing connection`` and its DAEMON_CLOSE), provided it has sent nothing for at least
  ``evict_min_idle`` seconds (EVICT_MIN_IDLE); otherwise the newcomer is refused as before
  (``op=limit``).  Busy peers are never displaced, so a flood of new connections cannot
  push out the clients that are logging, and a quiet audisp-remote that was closed simply
  reconnects with its next record, as after ``tcp_client_max_idle``.
* A frame must be complete within ``frame_timeout`` (FRAME_TIMEOUT) of its first byte: a
  deadline per frame, not an idle timer, so a peer that trickles a byte a second cannot
  hold a connection (and a frame buffer) for ever.

Each accepted connection is recorded with DAEMON_ACCEPT ``addr= port= res=success`` and its
end with DAEMON_CLOSE, refusals with DAEMON_ACCEPT ``op=<why> ... res=no``; the texts are the
C daemon's, plus two ops of our own: ``limit`` (global cap) and ``tls`` (failed handshake).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence

from auditpy.auditd.logfile import LogEvent
from auditpy.config.tls import server_context
from auditpy.proto.dispatch import HEADER as DISPATCH_HEADER
from auditpy.proto.dispatch import PROTOCOL_V1
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.proto.records import DAEMON_ACCEPT, DAEMON_CLOSE
from auditpy.proto.remote import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME,
    MAX_PAYLOAD,
    SUPPORTED_HEADER_VERSIONS,
    TEXT_DISKERROR,
    TEXT_DISKFULL,
    TEXT_SUSPENDED,
    TYPE_ACK,
    TYPE_DISKERROR,
    TYPE_DISKFULL,
    TYPE_DISKLOW,
    TYPE_ENDING,
    TYPE_HEARTBEAT,
    TYPE_MESSAGE,
    FrameReader,
    ProtocolError,
    type_name,
)
from auditpy.structs import dataclass, replace
from auditpy.system import evloop, transports

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Final, Protocol

    from auditpy.config.auditd_conf import AuditdConfig

log = logging.getLogger("auditpy.remote")


#: Connections at once from all peers.  tcp_max_per_addr bounds one address; this bounds a
#: flood from many addresses (each connection costs a file descriptor and ~10 KiB).
MAX_CLIENTS: Final = 1024
#: A frame must be complete within this many seconds of its first byte.  audisp-remote
#: writes a frame with one write(2), so only a stalled or hostile peer ever hits this.
FRAME_TIMEOUT: Final = 10.0
#: With the global cap reached, a peer that sent nothing for this long makes room for a
#: newcomer.  A minute is long past any reply round trip, and much shorter than the forever
#: an idle peer could otherwise hold its slot.
EVICT_MIN_IDLE: Final = 60.0
HANDSHAKE_TIMEOUT: Final = 10.0
#: Replies a peer has not read (beyond what the kernel buffers) before it is dropped.  An
#: honest client has at most one reply outstanding.
MAX_OUTPUT: Final = 64 * 1024
#: How often stalled frames and idle clients are looked for.
SWEEP_INTERVAL: Final = 1.0
#: Connections taken from the backlog per wakeup, so a flood cannot starve the loop.
ACCEPTS_PER_WAKEUP: Final = 64

#: Config keys whose change needs new listening sockets (and so drops every client).
RESTART_KEYS: Final = frozenset({"tcp_listen_port", "tcp_listen_queue", "transport"})
NEWLINE: Final = ord("\n")
_READABLE: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_WRITABLE: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


@dataclass(frozen=True, slots=True)
class Reply:
    """What every record of a batch is answered with."""

    msg_type: int
    text: bytes = b""

    @property
    def name(self) -> str:
        return type_name(self.msg_type)


ACK: Final = Reply(TYPE_ACK)
DISKLOW: Final = Reply(TYPE_DISKLOW)
DISKFULL: Final = Reply(TYPE_DISKFULL, TEXT_DISKFULL)
DISKERROR: Final = Reply(TYPE_DISKERROR, TEXT_DISKERROR)
SUSPENDED: Final = Reply(TYPE_DISKERROR, TEXT_SUSPENDED)


def reply_for(events: LogEvent, *, space_low: bool) -> Reply:
    """The reply to records after a write that reported `events`, as the C daemon chooses:
    not written because logging is suspended, ENOSPC, another write error, written while
    below space_left, or plain success."""
    if not events:  # the usual write: no flag tests (each is a Python call on an IntFlag)
        return DISKLOW if space_low else ACK
    if events & LogEvent.NOT_OPEN:
        return SUSPENDED
    if events & LogEvent.DISK_FULL:
        return DISKFULL
    if events & LogEvent.DISK_ERROR:
        return DISKERROR
    return DISKLOW if space_low else ACK


if TYPE_CHECKING:
    class RemoteSink(Protocol):
        """What the listener needs from the daemon."""

        def remote_records(self, lines: list[bytes]) -> Reply:
            """Store these complete log lines (each ends in a newline); the reply for them."""
            ...

        def remote_daemon_record(self, msg_type: int, text: str) -> None:
            """Log one of the daemon's own records (DAEMON_ACCEPT, DAEMON_CLOSE)."""
            ...


# --------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ListenerSettings:
    port: int
    queue: int = 5
    max_per_addr: int = 1
    #: inclusive range of accepted source ports
    client_ports: tuple[int, int] = (0, 65535)
    #: seconds without any data after which a client is closed; 0 = never
    max_idle: int = 0
    tls: ssl.SSLContext | None = None
    #: None = every local address, as auditd binds (tests use loopback)
    host: str | None = None
    max_clients: int = MAX_CLIENTS
    frame_timeout: float = FRAME_TIMEOUT
    #: idle seconds after which a peer may be closed to admit a newcomer at max_clients
    evict_min_idle: float = EVICT_MIN_IDLE
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_output: int = MAX_OUTPUT
    sweep_interval: float = SWEEP_INTERVAL

    @classmethod
    def from_config(cls, config: AuditdConfig) -> ListenerSettings:
        """Raises OSError (ssl.SSLError) or ValueError if the TLS files cannot be loaded."""
        if config.tcp_listen_port is None:
            raise ValueError("tcp_listen_port is not set")
        if config.transport not in ("TCP", "TLS"):
            raise ValueError(f"transport = {config.transport} is not supported")
        tls = None
        if config.transport == "TLS":
            if config.tls_cert_file is None or config.tls_key_file is None:
                raise ValueError("transport = TLS needs tls_cert_file and tls_key_file")
            tls = server_context(
                config.tls_cert_file,
                config.tls_key_file,
                config.tls_ca_file,
                verify_client=config.tls_verify_client,
            )
        return cls(
            port=config.tcp_listen_port,
            queue=config.tcp_listen_queue,
            max_per_addr=config.tcp_max_per_addr,
            client_ports=config.tcp_client_ports,
            max_idle=config.tcp_client_max_idle,
            tls=tls,
        )


# --------------------------------------------------------------------------------------
# Records for the dispatcher (distribute_network)

_TYPE_NUMBERS: Final = {name.encode(): number for number, name in MSG_TYPE_NAMES.items()}


def record_type(line: bytes) -> int:
    """The type number named by a log line's ``type=`` field (0 if there is none), since
    the dispatcher protocol carries the type in its header."""
    start = 0
    if line.startswith(b"node="):
        start = line.find(b" ") + 1
        if start == 0:
            return 0
    if not line.startswith(b"type=", start):
        return 0
    end = line.find(b" ", start)
    name = line[start + 5 : end if end >= 0 else len(line)].rstrip(b"\n")
    number = _TYPE_NUMBERS.get(name)
    if number is not None:
        return number
    if name.startswith(b"UNKNOWN[") and name.endswith(b"]") and name[8:-1].isdigit():
        return int(name[8:-1]) & 0xFFFFFFFF
    return 0


def dispatch_frames(lines: Sequence[bytes]) -> bytes:
    """Network lines in the dispatcher protocol: version 1 (a formatted line), the type
    taken from the text, as the C daemon does with distribute_network."""
    pack = DISPATCH_HEADER.pack
    return b"".join(
        [pack(PROTOCOL_V1, DISPATCH_HEADER.size, record_type(ln), len(ln) - 1) + ln[:-1]
         for ln in lines]
    )


def _clean(payload: bytes) -> bytes:
    """One record, one line: cut at a NUL as the C daemon's %s does, and turn newlines
    into spaces so a client cannot write a second (forged) line."""
    nul = payload.find(b"\0")
    if nul >= 0:
        payload = payload[:nul]
    return payload.replace(b"\n", b" ")


# --------------------------------------------------------------------------------------
# One connection


class _Client(transports.BufferedProtocol):
    """One peer, from accept to close.  `close` is the only way out, and runs once."""

    def __init__(self, listener: RemoteListener, sock: socket.socket, ip: str, port: int) -> None:
        self.listener = listener
        self.sock: socket.socket | None = sock
        self.ip = ip
        self.port = port
        self.peer = f"{ip}:{port}"
        self.transport: transports.Transport | None = None
        self.reader = FrameReader()
        # recv_into target: input is read at most one maximum frame at a time, and the
        # reader keeps less than one frame between reads.
        self._raw = bytearray(MAX_FRAME)
        self._buffer = memoryview(self._raw)
        # the loop's clock (evloop's Loop.time is time.monotonic), without its method call
        self._now = time.monotonic
        self.last_rx = self._now()
        #: when the first byte of the frame being received arrived (valid while the reader
        #: holds a partial frame)
        self.frame_start = self.last_rx
        self.accepted = False
        self.closed = False
        #: a TLS handshake is running; connection_lost is left to the handshake's end
        self.handshaking = False
        self.lost_early = False
        #: (sequence id, stored) of frames waiting for the batch's reply
        self.replies: list[tuple[int, bool]] = []
        #: a protocol fault seen after frames that still deserve their replies
        self.fault: str | None = None
        #: the reader holds part of a frame (`reader.buffered`, kept as a plain attribute
        #: for RemoteListener._read_plain, which looks at it for every record)
        self.partial = False

    # -- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: transports.Transport) -> None:
        self.transport = transport
        self.sock = None  # the transport owns it now
        self._limit_output(transport)
        if self.listener.settings.tls is None:
            self.listener.accepted(self)
        else:
            # Nothing may be read as plain text before start_tls takes over.
            transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed or self.fault is not None:
            return
        if not self.accepted:  # TLS data can arrive before the handshake task resumes
            self.listener.accepted(self)
        self.last_rx = self._now()
        items, done = self._whole_frames(nbytes) if not self.partial else ([], 0)
        fault = None
        if done < nbytes:
            continued = self.partial  # a frame begun by an earlier read
            try:
                frames = self.reader.feed(self._buffer[done:nbytes])
            except ProtocolError as exc:
                frames = exc.frames
                fault = exc.reason
            self.partial = self.reader.buffered > 0
            if self.partial and (frames or not continued):
                self.frame_start = self.last_rx  # a new partial frame began in this read
            items += [(f.msg_type, f.seq, f.payload) for f in frames]
        lines: list[bytes] = []
        replies = self.replies
        waiting = bool(replies)
        for msg_type, seq, payload in items:
            if msg_type == TYPE_MESSAGE:
                if payload.endswith(b"\n"):
                    payload = payload[:-1]
                if b"\n" in payload or b"\0" in payload:
                    payload = _clean(payload)
                if payload:
                    lines.append(payload + b"\n")
                    replies.append((seq, True))
                else:
                    replies.append((seq, False))
            elif msg_type == TYPE_HEARTBEAT:
                replies.append((seq, False))
            else:
                fault = f"unexpected frame type {type_name(msg_type)} (seq {seq})"
                break
        if replies and not waiting:
            self.listener.submit(self, lines)
        elif lines:
            self.listener.submit_more(lines)
        if fault is not None:
            self.fault = f"protocol error: {fault}"
            if not replies:
                self.close(self.fault, logging.WARNING)

    def _whole_frames(self, nbytes: int) -> tuple[list[tuple[int, int, bytes]], int]:
        """The common case without copying through the FrameReader: complete, well-formed
        frames at the start of the read.  It stops at anything else (a partial frame, a
        bad header), and the reader takes the rest: it alone decides what is an error."""
        raw = self._raw
        unpack = HEADER.unpack_from
        items: list[tuple[int, int, bytes]] = []
        offset = 0
        while nbytes - offset >= HEADER_SIZE:
            magic, hver, _mver, msg_type, length, seq = unpack(raw, offset)
            end = offset + HEADER_SIZE + length
            if (magic != MAGIC or hver not in SUPPORTED_HEADER_VERSIONS
                    or length > MAX_PAYLOAD or end > nbytes):
                break
            items.append((msg_type, seq, bytes(raw[offset + HEADER_SIZE : end])))
            offset = end
        return items, offset

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        # Called from inside transport.write(); close from a fresh callback.
        self.listener.loop.call_soon(
            self.close,
            f"does not read its replies (more than {self.listener.settings.max_output} bytes "
            "waiting)",
            logging.WARNING,
            True,
        )

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            self.listener.lost(self)
            return
        if self.handshaking:
            self.lost_early = True
            return
        if exc is not None:
            reason, level = f"socket closed unexpectedly ({exc})", logging.WARNING
        elif self.reader.buffered:
            reason = (
                f"closed the connection in the middle of a frame ({self.reader.buffered} "
                "bytes discarded)"
            )
            level = logging.WARNING
        else:
            reason, level = "closed the connection", logging.INFO
        self.transport = None
        self.close(reason, level)

    # -- the daemon's side ----------------------------------------------------------------

    def _limit_output(self, transport: transports.Transport) -> None:
        limit = self.listener.settings.max_output
        transport.set_write_buffer_limits(high=limit, low=limit // 2)

    def send_replies(self, reply: Reply) -> None:
        pending = self.replies
        self.replies = []
        transport = self.transport
        if self.closed or transport is None:
            return
        pack = HEADER.pack
        kind, text = reply.msg_type, reply.text
        if len(pending) == 1:  # the usual case: a client waiting for its one reply
            seq, is_stored = pending[0]
            transport.write(pack(MAGIC, 0, 0, kind, len(text), seq) + text if is_stored
                            else pack(MAGIC, 0, 0, TYPE_ACK, 0, seq))
        else:
            size = len(text)
            transport.write(b"".join([
                pack(MAGIC, 0, 0, kind, size, seq) + text if is_stored
                else pack(MAGIC, 0, 0, TYPE_ACK, 0, seq)
                for seq, is_stored in pending
            ]))
        if self.fault is not None:
            self.close(self.fault, logging.WARNING)

    def send_ending(self) -> None:
        transport = self.transport
        if self.accepted and not self.closed and transport is not None:
            transport.write(HEADER.pack(MAGIC, 0, 0, TYPE_ENDING, 0, 0))

    def close(self, reason: str, level: int = logging.INFO, abort: bool = False) -> None:
        """Close once, say why with the peer's address, and record it."""
        if self.closed:
            return
        self.closed = True
        self.replies = []
        log.log(level, "client %s: %s - closing connection", self.peer, reason)
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()
        elif self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.listener.forget(self)


# --------------------------------------------------------------------------------------
# Plain TCP connections


class _PlainTransport(transports.Transport):
    """A plain TCP connection, served from the listener's own epoll (`_PlainSockets`): one
    loop callback takes every client with something to read, where a transport per client
    costs a callback, a read-ready wrapper and a write path of their own per client and
    wakeup (py-spy with asyncio's, bench/fanin.py: most of the server's Python time). Only
    what `_Client` uses: write with a bound on unsent output (pause_writing), close (after what is
    unsent), abort, and connection_lost called soon after, as StreamTransport calls it."""

    def __init__(self, owner: _PlainSockets, sock: socket.socket, protocol: _Client) -> None:
        super().__init__({"socket": sock, "peername": sock.getpeername()})
        self._owner = owner
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        #: also read by the listener's own read of the usual frame (RemoteListener._read_plain)
        self._protocol = protocol
        # _Client hands out the same buffer every time
        self._into = protocol.get_buffer(-1)
        self._out = bytearray()
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused = False  # protocol told to pause writing
        self._reading = True
        self._closing = False
        #: reading, nothing unsent, not closing (`events` is EPOLLIN alone): the
        #: listener's read may recv for the protocol itself (kept by _PlainSockets)
        self.plain = False
        sock.setblocking(False)
        owner.add(self)

    # -- the epoll's events ---------------------------------------------------------------

    @property
    def events(self) -> int:
        """What the epoll is to report: input while reading, room while output waits."""
        return (select.EPOLLIN if self._reading and not self._closing else 0) | (
            select.EPOLLOUT if self._out else 0)

    def on_event(self, events: int) -> None:
        if self._out and events & _WRITABLE:
            self._flush()  # on an error the send says which
        if not self._reading or self._closing or not events & _READABLE:
            return
        n = self.recv()
        if n > 0:
            self._protocol.buffer_updated(n)
        elif n == 0:
            self.on_eof()

    def recv(self) -> int:
        """Read into the protocol's buffer: the bytes read, 0 at EOF, -1 when there was
        nothing after all or the connection is lost (connection_lost follows)."""
        sock = self._sock
        if sock is None:
            return -1
        try:
            return sock.recv_into(self._into)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError as exc:
            self._lost(exc)
            return -1

    def on_eof(self) -> None:
        if not self._closing:
            self._protocol.eof_received()
            self.close()

    # -- transports.Transport --------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        sock = self._sock
        if sock is None or self._closing:
            return
        if not self._out:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._out += data
        self._owner.update(self)
        if len(self._out) > self._high and not self._paused:
            self._paused = True
            self._protocol.pause_writing()

    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._out[:sent]
        if self._out:
            return
        self._owner.update(self)
        if self._closing:
            self._finish(None)
        elif self._paused and len(self._out) <= self._low:
            self._paused = False
            self._protocol.resume_writing()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def is_closing(self) -> bool:
        return self._closing or self._sock is None

    def close(self) -> None:
        if self._closing or self._sock is None:
            return
        self._closing = True
        self._reading = False
        if self._out:
            self._owner.update(self)  # only the output now
        else:
            self._finish(None)

    def abort(self) -> None:
        if self._sock is not None:
            self._closing = True
            self._finish(None)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False
        self._owner.update(self)

    def resume_reading(self) -> None:
        if not self._closing:
            self._reading = True
            self._owner.update(self)

    def _lost(self, exc: Exception) -> None:
        self._closing = True
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._owner.remove(self)
        self._out.clear()
        sock.close()
        self._owner.loop.call_soon(self._protocol.connection_lost, exc)


class _PlainSockets:
    """The listener's epoll of plain TCP connections, watched by the loop as one reader:
    `read` gets what one poll found ready, `after` runs once every ready connection has
    been read (the batch write and replies then go out in the same wakeup, not one loop
    iteration later)."""

    def __init__(
        self,
        loop: evloop.Loop,
        read: Callable[[list[tuple[int, int]], dict[int, _PlainTransport]], None],
        after: Callable[[], None],
    ) -> None:
        self.loop = loop
        self._read = read
        self._after = after
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, _PlainTransport] = {}
        #: the ready connections are being read: `after` follows, nothing need be scheduled
        self.reading = False

    def add(self, transport: _PlainTransport) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
            self.loop.add_reader(self._epoll.fileno(), self._ready)
        self._epoll.register(transport._fd, select.EPOLLIN)
        self._by_fd[transport._fd] = transport
        transport.plain = True

    def update(self, transport: _PlainTransport) -> None:
        """The transport's interest changed (output waits or not, reading or not)."""
        events = transport.events
        transport.plain = events == select.EPOLLIN
        if self._epoll is not None and transport._fd in self._by_fd:
            self._epoll.modify(transport._fd, events)

    def remove(self, transport: _PlainTransport) -> None:
        transport.plain = False
        if self._by_fd.pop(transport._fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(transport._fd)
        if not self._by_fd and self._epoll is not None:
            if not self.loop.is_closed():
                self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    def _ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        self.reading = True
        try:
            self._read(epoll.poll(0, 256), self._by_fd)
        finally:
            self.reading = False
        self._after()


# --------------------------------------------------------------------------------------
# The listener


class RemoteListener:
    """The listening sockets and every client; `start` and `stop` are synchronous so the
    daemon can call them at start-up, from a signal handler and from shutdown alike."""

    def __init__(
        self, loop: evloop.Loop, settings: ListenerSettings, sink: RemoteSink
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.sink = sink
        self.sockets: list[socket.socket] = []
        self.clients: set[_Client] = set()
        self._per_addr: dict[str, int] = {}
        self._setups: set[evloop.Task[None]] = set()
        self._lines: list[bytes] = []
        self._waiting: list[_Client] = []
        self._flush_handle: evloop.Handle | None = None
        self._sweeper: evloop.TimerHandle | None = None
        self._paused_accept: evloop.TimerHandle | None = None
        self._closing: set[_Client] = set()
        self._plain = _PlainSockets(loop, self._read_plain, self._flush_now)
        #: no client can have been idle evict_min_idle before this time (see _make_room)
        self._none_idle_until = 0.0
        self.running = False
        #: connections accepted since start (for the state report)
        self.total_connections = 0

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen on every local address (IPv4 and IPv6 sockets apart, so IPv4
        peers show as plain addresses).  Raises OSError if no address could be bound."""
        s = self.settings
        try:
            infos = socket.getaddrinfo(
                s.host, s.port, type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
            )
        except socket.gaierror as exc:
            raise OSError(f"cannot look up the addresses for port {s.port}: {exc}") from None
        errors: list[str] = []
        seen: set[tuple[int, str | int]] = set()
        for family, kind, proto, _name, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(s.queue)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                errors.append(f"{address[0]} port {s.port}: {exc.strerror or exc}")
                continue
            self.sockets.append(sock)
        if not self.sockets:
            raise OSError(f"cannot listen for network connections: {'; '.join(errors)}")
        for message in errors:
            log.warning("Not listening on %s", message)
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        self.running = True
        self._sweeper = self.loop.call_later(s.sweep_interval, self._sweep)
        log.info(
            "Listening on TCP port %d (%s), queue %d",
            s.port, "TLS" if s.tls else "plain TCP", s.queue,
        )

    @property
    def ports(self) -> list[int]:
        return [int(sock.getsockname()[1]) for sock in self.sockets]

    def update(self, settings: ListenerSettings) -> None:
        """A reload that needs no new sockets: admission limits, idle time and the TLS
        context (renewed certificates) apply to what comes next."""
        self.settings = replace(
            settings, port=self.settings.port, queue=self.settings.queue, host=self.settings.host
        )
        self._none_idle_until = 0.0

    def stop(self, reason: str = "the audit daemon is stopping") -> None:
        """Answer what was received, then ENDING to every client and close everything."""
        if not self.running:
            return
        self.running = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self.flush()
        for handle in (self._sweeper, self._paused_accept):
            if handle is not None:
                handle.cancel()
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []
        for client in list(self.clients):
            client.send_ending()
            client.close(reason)
        for task in self._setups:
            task.cancel()

    async def wait_closed(self, timeout: float = 1.0) -> None:
        """Give closing connections (a TLS close_notify, the last ENDING) a moment."""
        deadline = self.loop.time() + timeout
        while (self._setups or self._closing) and self.loop.time() < deadline:
            await evloop.sleep(0.01)

    def lost(self, client: _Client) -> None:
        """The transport of a client we closed is gone too."""
        self._closing.discard(client)

    def state(self) -> dict[str, str]:
        return {
            "listening for network connections": "yes" if self.running else "no",
            "active connections": str(len(self.clients)),
            "total connections": str(self.total_connections),
        }

    # -- admission --------------------------------------------------------------------------

    def _on_acceptable(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("Unable to accept TCP connection: %s", exc.strerror or exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting()
                return
            try:
                self._admit(sock, address[0], int(address[1]))
            except Exception:  # a bug must cost one connection, never the daemon
                log.exception("Unexpected error admitting %s:%s", address[0], address[1])
                with contextlib.suppress(OSError):
                    sock.close()

    def _pause_accepting(self) -> None:
        """Out of descriptors: the pending connection stays readable, so stop looking for
        a second rather than spin."""
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())

        def resume() -> None:
            self._paused_accept = None
            if self.running:
                for sock in self.sockets:
                    self.loop.add_reader(sock.fileno(), self._on_acceptable, sock)

        self._paused_accept = self.loop.call_later(1.0, resume)

    def _admit(self, sock: socket.socket, ip: str, port: int) -> None:
        s = self.settings
        low, high = s.client_ports
        if not low <= port <= high:
            op, reason = "port", f"source port {port} is outside tcp_client_ports {low}-{high}"
        elif self._per_addr.get(ip, 0) >= s.max_per_addr:
            op = "dup"
            reason = f"too many connections from {ip} (tcp_max_per_addr {s.max_per_addr})"
        elif len(self.clients) >= s.max_clients and not self._make_room(ip, port):
            op, reason = "limit", f"too many connections in all ({s.max_clients})"
        else:
            op = reason = ""
        if op:
            log.error("TCP connection from %s:%d rejected: %s", ip, port, reason)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            self.sink.remote_daemon_record(
                DAEMON_ACCEPT, f"op={op} addr={ip} port={port} res=no"
            )
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(self, sock, ip, port)
        self.clients.add(client)
        self._per_addr[ip] = self._per_addr.get(ip, 0) + 1
        if self.settings.tls is None:
            client.connection_made(_PlainTransport(self._plain, sock, client))
            return
        task = self.loop.create_task(self._setup(client, sock))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    def _make_room(self, ip: str, port: int) -> bool:
        """At the global cap: close the peer idle the longest if it has been idle for
        evict_min_idle, so that idle peers cannot lock newcomers out; False if none has.

        A scan of every client per refused newcomer would let a flood cost O(clients) each;
        but a client's last receive time only grows, and new clients start at "now", so
        the oldest one seen bounds when any could qualify, and until then no scan is made.
        """
        s = self.settings
        now = self.loop.time()
        if now < self._none_idle_until:
            return False
        oldest_rx = now
        candidate: _Client | None = None
        for client in self.clients:
            if client.last_rx < oldest_rx:
                oldest_rx = client.last_rx
            if (client.accepted and not client.closed and not client.handshaking
                    and (candidate is None or client.last_rx < candidate.last_rx)):
                candidate = client
        if candidate is None or now - candidate.last_rx < s.evict_min_idle:
            self._none_idle_until = oldest_rx + s.evict_min_idle
            return False
        idle = now - candidate.last_rx
        candidate.close(
            f"idle for {idle:.0f} s, closed to make room for {ip}:{port} "
            f"({s.max_clients} connections in all)",
            logging.WARNING,
        )
        return True

    async def _setup(self, client: _Client, sock: socket.socket) -> None:
        tls = self.settings.tls
        try:
            await self.loop.connect_accepted_socket(lambda: client, sock)
            if tls is None or client.closed:
                return
            raw = client.transport
            assert isinstance(raw, transports.StreamTransport)
            client.handshaking = True
            transport = await self.loop.start_tls(
                raw, client, tls, server_side=True,
                ssl_handshake_timeout=self.settings.handshake_timeout,
            )
        except evloop.CancelledError:
            client.close("connection set-up cancelled")
            raise
        except Exception as exc:  # every handshake failure is the peer's problem
            stage = "TLS handshake" if client.handshaking else "connection set-up"
            client.handshaking = False
            # ssl is loaded only with TLS configured (system.transports)
            tls_module = sys.modules.get("ssl")
            if isinstance(exc, TimeoutError):
                why = f"{stage} timed out"
            elif tls_module is not None and isinstance(exc, tls_module.SSLError) and exc.reason:
                why = f"{stage} failed: {exc.reason}"
            elif (tls_module is not None and isinstance(exc, tls_module.SSLEOFError)) or (
                    isinstance(exc, ConnectionError) or not str(exc)):
                why = f"{stage} failed: the peer closed the connection"
            else:
                why = f"{stage} failed: {exc}"
            client.transport = None  # start_tls closed it
            client.close(why, logging.WARNING)
            return
        client.handshaking = False
        if transport is None or client.closed:
            if transport is not None:
                transport.close()
            return
        client.transport = transport
        client._limit_output(transport)
        if not client.accepted:
            self.accepted(client)
        if client.lost_early:
            client.connection_lost(None)
        elif not transport.is_reading():
            transport.resume_reading()

    def accepted(self, client: _Client) -> None:
        client.accepted = True
        self.total_connections += 1
        transport = client.transport
        detail = ""
        if transport is not None and self.settings.tls is not None:
            cert = transport.get_extra_info("peercert")
            if cert:
                detail = f", certificate {_subject(cert)}"
        log.info("Connection from %s accepted%s", client.peer, detail)
        self.sink.remote_daemon_record(
            DAEMON_ACCEPT, f"addr={client.ip} port={client.port} res=success"
        )

    def forget(self, client: _Client) -> None:
        """`client` has closed: drop it from the counts and record the end."""
        if client in self.clients:
            self.clients.discard(client)
            left = self._per_addr.get(client.ip, 1) - 1
            if left:
                self._per_addr[client.ip] = left
            else:
                self._per_addr.pop(client.ip, None)
        if client.transport is not None:
            self._closing.add(client)
        if client.accepted:
            text = f"addr={client.ip} port={client.port} res=success"
            self.sink.remote_daemon_record(DAEMON_CLOSE, text)
        else:
            op = "tls" if self.settings.tls is not None else "setup"
            self.sink.remote_daemon_record(
                DAEMON_ACCEPT, f"op={op} addr={client.ip} port={client.port} res=no"
            )

    # -- records --------------------------------------------------------------------------

    def submit(self, client: _Client, lines: list[bytes]) -> None:
        """Frames of `client` wait for the batch write at the end of this loop iteration."""
        if lines:
            self._lines += lines
        self._waiting.append(client)
        if self._flush_handle is None and not self._plain.reading:
            self._flush_handle = self.loop.call_soon(self.flush)

    def _read_plain(
        self, ready: list[tuple[int, int]], by_fd: dict[int, _PlainTransport]
    ) -> None:
        """Read the plain connections one poll found ready.

        The usual read, one whole record frame from a client that waits for nothing else,
        is taken here: recv into the client's buffer, the checks in place, the line made with
        one copy (its newline goes into the buffer after the payload). Going through the
        transport, the protocol and `submit` for it cost a Python call per layer and record,
        most of the listener's own time per record (bench/fanin.py). Anything else (output
        waiting, a partial frame, a reply owed, a fault, other frame types, an unclean
        payload, EOF and errors) takes the transport's and `_Client`'s general path."""
        now = time.monotonic()
        unpack = HEADER.unpack_from
        lines, waiting = self._lines, self._waiting
        for fd, events in ready:
            transport = by_fd.get(fd)
            if transport is None:
                continue
            client = transport._protocol
            if (events != select.EPOLLIN or not transport.plain or client.replies
                    or client.partial or client.fault is not None or not client.accepted):
                transport.on_event(events)
                continue
            n = transport.recv()
            if n < 0:
                continue
            raw = client._raw
            if n >= HEADER_SIZE:
                magic, hver, _mver, msg_type, length, seq = unpack(raw)
                end = n
                if (end == HEADER_SIZE + length and magic == MAGIC and msg_type == TYPE_MESSAGE
                        and hver in SUPPORTED_HEADER_VERSIONS and length <= MAX_PAYLOAD):
                    if raw[end - 1] == NEWLINE:  # (a header byte when the payload is empty)
                        end -= 1
                    if (HEADER_SIZE < end < MAX_FRAME and raw.find(b"\n", HEADER_SIZE, end) < 0
                            and raw.find(b"\0", HEADER_SIZE, end) < 0):
                        raw[end] = NEWLINE
                        client.last_rx = now
                        client.replies.append((seq, True))
                        lines.append(bytes(client._buffer[HEADER_SIZE : end + 1]))
                        waiting.append(client)
                        continue
            if n:
                client.buffer_updated(n)
            else:
                transport.on_eof()

    def submit_more(self, lines: list[bytes]) -> None:
        """More records of a client that already waits for this batch."""
        self._lines += lines

    def _flush_now(self) -> None:
        """What the plain connections read this wakeup: written and answered at once (what
        they submitted scheduled no flush of its own)."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
        if handle is not None or self._waiting:
            self.flush()

    def flush(self) -> None:
        self._flush_handle = None
        lines, self._lines = self._lines, []
        waiting, self._waiting = self._waiting, []
        reply = ACK
        if lines:
            try:
                reply = self.sink.remote_records(lines)
            except Exception:  # the daemon must keep serving; the client may retry
                log.exception("Storing %d network records failed", len(lines))
                reply = DISKERROR
        pack = HEADER.pack
        usual = reply is ACK
        for client in waiting:
            pending = client.replies
            if not pending:
                continue
            try:
                if usual and len(pending) == 1 and client.fault is None:
                    # The usual reply, sent as send_replies would, without its call.
                    client.replies = []
                    transport = client.transport
                    if transport is not None and not client.closed:
                        transport.write(pack(MAGIC, 0, 0, TYPE_ACK, 0, pending[0][0]))
                else:
                    client.send_replies(reply)
            except Exception as exc:
                client.close(f"cannot send replies ({exc})", logging.WARNING, True)

    # -- timers ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close peers whose frame is not complete FRAME_TIMEOUT after its first byte, and
        (tcp_client_max_idle) peers that sent nothing for a whole period."""
        s = self.settings
        now = self.loop.time()
        for client in list(self.clients):
            if client.closed or client.transport is None or client.handshaking:
                continue
            quiet = now - client.last_rx
            if client.reader.buffered and now - client.frame_start > s.frame_timeout:
                client.close(
                    f"incomplete frame ({client.reader.buffered} bytes) stalled: not "
                    f"complete {now - client.frame_start:.0f} s after its first byte "
                    f"(limit {s.frame_timeout:g} s)",
                    logging.WARNING,
                    True,
                )
            elif s.max_idle and quiet >= s.max_idle:
                client.close(f"idle too long (nothing for {quiet:.0f} s)", logging.WARNING)
        if self.running:
            self._sweeper = self.loop.call_later(s.sweep_interval, self._sweep)


def _subject(cert: object) -> str:
    """The certificate's subject as `CN=name,...`, for the accept log line."""
    if not isinstance(cert, dict):
        return "?"
    parts = []
    for rdn in cert.get("subject", ()):
        for item in rdn:
            if isinstance(item, tuple) and len(item) == 2:
                key, value = item
                short = {"commonName": "CN", "organizationName": "O"}.get(str(key), str(key))
                parts.append(f"{short}={value}")
    return ",".join(parts) or "?"
