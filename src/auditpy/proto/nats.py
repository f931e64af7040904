"""The NATS client protocol: an incremental parser of what a server sends, and the
serializers of what a client sends.  Pure: no sockets, no clock, standard library only.

The protocol is text framed by CRLF (docs.nats.io, "Client Protocol"; headers as in the
NATS ADR-4):

* server operations: ``INFO {json}``, ``MSG <subject> <sid> [reply] <#bytes>`` followed by
  the payload and CRLF, ``HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>``
  followed by the header block, the payload and CRLF, ``PING``, ``PONG``, ``+OK`` and
  ``-ERR '<text>'``; operation names are case-insensitive and arguments are separated by
  spaces or tabs;
* client operations: ``CONNECT {json}``, ``PUB``, ``HPUB``, ``SUB``, ``UNSUB``, ``PING``,
  ``PONG``;
* a header block is ``NATS/1.0[ <status>[ <description>]]`` CRLF, then ``Key: Value`` CRLF
  lines, then an empty line; its length counts everything up to and including that last
  CRLF.

Why a hand-written incremental parser rather than splitting lines: a message payload may
contain CRLF, arrive split at any byte, and be large; the parser only ever looks for a CRLF
in a control line, and takes payloads by their announced length.  Control lines and
payloads are bounded, so a hostile or broken server costs bounded memory and ends in a
`ProtocolError` that names what was wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final

from auditpy.structs import dataclass, field

CRLF: Final = b"\r\n"
#: The server's default max_control_line; a longer line from a server is a broken stream.
MAX_CONTROL_LINE: Final = 4096
#: The server's default max_payload; INFO announces the real one.
DEFAULT_MAX_PAYLOAD: Final = 1 << 20
#: Payloads a parser accepts at most, whatever INFO says (64 MiB is the server's maximum).
MAX_PAYLOAD_LIMIT: Final = 64 << 20
HEADER_VERSION: Final = b"NATS/1.0"
DEFAULT_PORT: Final = 4222


class ProtocolError(ValueError):
    """The bytes cannot be a NATS server stream; the connection must be closed.

    `ops` holds what the same `feed` call decoded before the fault, so that replies which
    did arrive intact are still handled.
    """

    def __init__(self, reason: str, ops: list[ServerOp] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ops: list[ServerOp] = [] if ops is None else ops


@dataclass(frozen=True, slots=True)
class Info:
    """``INFO``: the server's description of itself (sent first, and again on changes)."""

    fields: dict[str, object]

    def get_str(self, key: str) -> str | None:
        value = self.fields.get(key)
        return value if isinstance(value, str) else None

    def get_bool(self, key: str) -> bool:
        return self.fields.get(key) is True

    def get_int(self, key: str) -> int | None:
        value = self.fields.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def connect_urls(self) -> list[str]:
        """Other members of the cluster, as ``host:port`` (the client URLs they advertise)."""
        value = self.fields.get("connect_urls")
        if not isinstance(value, list):
            return []
        return [item for item in value if isinstance(item, str)]


@dataclass(frozen=True, slots=True)
class Msg:
    """``MSG`` or ``HMSG``: a message for subscription `sid`.  `headers` is the raw header
    block (None for MSG); `decode_headers` reads it."""

    subject: bytes
    sid: int
    reply: bytes | None
    payload: bytes
    headers: bytes | None = None


@dataclass(frozen=True, slots=True)
class Err:
    """``-ERR``: the text between the quotes."""

    message: str


class _Simple:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PING: Final = _Simple("PING")
PONG: Final = _Simple("PONG")
OK: Final = _Simple("+OK")

ServerOp = Info | Msg | Err | _Simple


# --------------------------------------------------------------------------------------
# Parsing


class Parser:
    """Turns the bytes a server sends into operations, whatever the read boundaries."""

    def __init__(
        self, *, max_payload: int = MAX_PAYLOAD_LIMIT, max_control_line: int = MAX_CONTROL_LINE
    ) -> None:
        self.max_payload = max_payload
        self.max_control_line = max_control_line
        self._buffer = bytearray()
        #: the MSG/HMSG whose payload is awaited: (subject, sid, reply, header bytes, total)
        self._pending: tuple[bytes, int, bytes | None, int, int] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[ServerOp]:
        """Every complete operation in what came so far; raises ProtocolError."""
        buffer = self._buffer
        buffer += data
        ops: list[ServerOp] = []
        offset = 0
        size = len(buffer)
        try:
            while offset < size:
                pending = self._pending
                if pending is not None:
                    subject, sid, reply, header_len, total = pending
                    end = offset + total
                    if size < end + 2:
                        break
                    if buffer[end : end + 2] != CRLF:
                        raise ProtocolError(
                            f"message on {_show(subject)} is not followed by CRLF after its "
                            f"{total} bytes"
                        )
                    if header_len < 0:
                        ops.append(Msg(subject, sid, reply, bytes(buffer[offset:end])))
                    else:
                        split = offset + header_len
                        ops.append(Msg(
                            subject, sid, reply, bytes(buffer[split:end]),
                            bytes(buffer[offset:split]),
                        ))
                    self._pending = None
                    offset = end + 2
                    continue
                eol = buffer.find(b"\n", offset)
                if eol < 0:
                    if size - offset > self.max_control_line:
                        raise ProtocolError(
                            f"control line longer than {self.max_control_line} bytes"
                        )
                    break
                if eol - offset > self.max_control_line:
                    raise ProtocolError(f"control line longer than {self.max_control_line} bytes")
                line = bytes(buffer[offset:eol])
                offset = eol + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                op = self._control(line)
                if op is not None:
                    ops.append(op)
        except ProtocolError as exc:
            del buffer[:offset]
            exc.ops = ops
            raise
        del buffer[:offset]
        return ops

    def _control(self, line: bytes) -> ServerOp | None:
        name = line[:5].upper()
        if name.startswith(b"MSG") and line[3:4] in (b" ", b"\t"):
            self._message(line, headers=False)
            return None
        if name.startswith(b"HMSG") and line[4:5] in (b" ", b"\t"):
            self._message(line, headers=True)
            return None
        upper = line.upper()
        if upper == b"PING":
            return PING
        if upper == b"PONG":
            return PONG
        if upper == b"+OK":
            return OK
        if name.startswith(b"-ERR"):
            return Err(_err_text(line[4:]))
        if name.startswith(b"INFO") and line[4:5] in (b" ", b"\t"):
            return Info(_json_object(line[5:], "INFO"))
        raise ProtocolError(f"unknown operation {_show(line[:40])}")

    def _message(self, line: bytes, *, headers: bool) -> None:
        args = line.split()
        what = "HMSG" if headers else "MSG"
        wanted = (4, 5) if not headers else (5, 6)
        if len(args) not in wanted:
            raise ProtocolError(f"{what} with {len(args) - 1} arguments: {_show(line[:80])}")
        subject = args[1]
        sid = _number(args[2], f"{what} sid")
        reply = args[3] if len(args) == wanted[1] else None
        if headers:
            header_len = _number(args[-2], "HMSG header size")
            total = _number(args[-1], "HMSG total size")
            if header_len > total:
                raise ProtocolError(f"HMSG header size {header_len} exceeds total {total}")
        else:
            header_len = -1
            total = _number(args[-1], "MSG size")
        if total > self.max_payload:
            raise ProtocolError(f"{what} of {total} bytes exceeds the limit {self.max_payload}")
        self._pending = (subject, sid, reply, header_len, total)


def _show(data: bytes) -> str:
    """Bytes from the peer as printable text for an error message."""
    text = data.decode("utf-8", "replace")
    return repr("".join(ch if ch.isprintable() else "?" for ch in text))


def _number(token: bytes, what: str) -> int:
    if not token.isdigit() or len(token) > 18:
        raise ProtocolError(f"{what} {_show(token)} is not a number")
    return int(token)


def _err_text(rest: bytes) -> str:
    text = rest.strip().decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return text


def _json_object(data: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


# --------------------------------------------------------------------------------------
# Headers


@dataclass(frozen=True, slots=True)
class Headers:
    """A decoded header block: the status of a server-made message (404, 408, 503...),
    and the key/value pairs in order (keys may repeat; case is preserved)."""

    status: int | None = None
    description: str = ""
    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        for name, value in self.items:
            if name == key:
                return value
        return None


_KEY: Final = re.compile(r"[!-9;-~]+")


def check_header(key: str, value: str) -> None:
    """Raise ValueError unless `key: value` can be sent in a header block."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"header name {key!r} must be printable ASCII without ':' or spaces")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {key!r} value contains CR or LF")


def encode_headers(items: Sequence[tuple[str, str]]) -> bytes:
    """The header block for an HPUB (``NATS/1.0``, the pairs, an empty line)."""
    parts = [HEADER_VERSION]
    for key, value in items:
        check_header(key, value)
        parts.append(f"{key}: {value}".encode())
    parts.append(b"")
    parts.append(b"")
    return CRLF.join(parts)


def decode_headers(block: bytes) -> Headers:
    """Read a header block; raises ProtocolError if it does not start with NATS/1.0."""
    lines = block.split(CRLF)
    first = lines[0]
    if not first.startswith(HEADER_VERSION):
        raise ProtocolError(f"header block starts with {_show(first[:20])}, not NATS/1.0")
    status: int | None = None
    description = ""
    rest = first[len(HEADER_VERSION) :].strip()
    if rest:
        code, _, text = rest.partition(b" ")
        if code.isdigit() and len(code) == 3:
            status = int(code)
            description = text.strip().decode("utf-8", "replace")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        key, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"header line without ':': {_show(line[:60])}")
        items.append((key.decode("utf-8", "replace"), value.strip().decode("utf-8", "replace")))
    return Headers(status, description, items)


# --------------------------------------------------------------------------------------
# Client operations


def check_subject(subject: str, *, wildcards: bool = False) -> None:
    """Raise ValueError unless `subject` can be used (published to, or with `wildcards`
    subscribed to): dot-separated non-empty tokens of printable characters without
    spaces; ``*`` and ``>`` only as whole tokens when subscribing, ``>`` only last."""
    if not subject:
        raise ValueError("empty subject")
    if any(ch in subject for ch in " \t\r\n") or not subject.isprintable():
        raise ValueError(f"subject {subject!r} contains white space or control characters")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise ValueError(f"subject {subject!r} has an empty token")
        if token in ("*", ">"):
            if not wildcards:
                raise ValueError(f"subject {subject!r} has a wildcard; cannot publish to it")
            if token == ">" and index != len(tokens) - 1:
                raise ValueError(f"subject {subject!r}: '>' must be the last token")


def _subject_bytes(subject: str | bytes) -> bytes:
    return subject if isinstance(subject, bytes) else subject.encode()


def connect_op(options: dict[str, object]) -> bytes:
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def pub_op(subject: str | bytes, payload: bytes, reply: str | bytes | None = None) -> bytes:
    head = b"PUB " + _subject_bytes(subject)
    if reply is not None:
        head += b" " + _subject_bytes(reply)
    return b"%b %d\r\n%b\r\n" % (head, len(payload), payload)


def hpub_op(
    subject: str | bytes,
    header_block: bytes,
    payload: bytes,
    reply: str | bytes | None = None,
) -> bytes:
    head = b"HPUB " + _subject_bytes(subject)
    if reply is not None:
        head += b" " + _subject_bytes(reply)
    size = len(header_block)
    return b"%b %d %d\r\n%b%b\r\n" % (head, size, size + len(payload), header_block, payload)


def sub_op(subject: str, sid: int, queue: str | None = None) -> bytes:
    middle = f" {queue}" if queue else ""
    return f"SUB {subject}{middle} {sid}\r\n".encode()


def unsub_op(sid: int, max_msgs: int | None = None) -> bytes:
    tail = "" if max_msgs is None else f" {max_msgs}"
    return f"UNSUB {sid}{tail}\r\n".encode()


PING_OP: Final = b"PING\r\n"
PONG_OP: Final = b"PONG\r\n"


# --------------------------------------------------------------------------------------
# Server addresses


@dataclass(frozen=True, slots=True)
class ServerUrl:
    """One server to try: ``nats://`` or ``tls://`` (TLS required), host, port, and the
    user/password or token embedded in the URL, if any."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    user: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.address}"


def parse_server_url(text: str) -> ServerUrl:
    """``[nats|tls://][user[:password]@]host[:port]``; raises ValueError."""
    rest = text.strip()
    tls = False
    scheme, sep, tail = rest.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in ("nats", "tls"):
            raise ValueError(f"{text!r}: scheme must be nats:// or tls://")
        tls = scheme == "tls"
        rest = tail
    rest = rest.rstrip("/")
    user = password = None
    if "@" in rest:
        cred, _, rest = rest.rpartition("@")
        user, colon, pw = cred.partition(":")
        password = pw if colon else None
        if not user:
            raise ValueError(f"{text!r}: empty user name")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: unterminated '['")
        port_text = after[1:] if after.startswith(":") else after
        if after and not after.startswith(":"):
            raise ValueError(f"{text!r}: unexpected {after!r} after the address")
    else:
        host, colon, port_text = rest.partition(":")
        if colon and not port_text:
            raise ValueError(f"{text!r}: empty port")
    if not host or any(ch in host for ch in " /?#@") or not host.isprintable():
        raise ValueError(f"{text!r}: bad host")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port must be 1..65535")
        port = int(port_text)
    return ServerUrl(host, port, tls, user, password)
