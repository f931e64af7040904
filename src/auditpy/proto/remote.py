"""The "managed" framing spoken between audisp-remote and auditd's ``tcp_listen_port``.

This module is a pure codec so that the client (`auditpy.audisp_remote`) and any server
share one definition of the wire format and one set of limits; nothing here touches a
socket.  The layout follows the C tools (``lib/private.h``) and was checked on the wire
against Debian's audisp-remote 3.0.9 and auditd 3.0.9: every multi-byte field is
**little-endian**, although the C header comment calls it "network order".

====== ====== ====================================================================
offset size   field
====== ====== ====================================================================
0      4      magic 0xff0000fe (bytes ``fe 00 00 ff``; contains no LF on purpose)
4      1      header version (only 0 exists)
5      1      message version (0; carried, not interpreted)
6      4      type (MESSAGE, HEARTBEAT, or a reply type)
10     2      payload length, at most `MAX_PAYLOAD`
12     4      sequence id; a reply carries the id of the frame it answers
16     length payload: one audit text line, or the text of an error reply
====== ====== ====================================================================

Reply types have the REPLY bit set; FATAL and WARN bits classify errors, so a peer can
react sensibly to a reply type it does not know by name.
"""

from __future__ import annotations

import struct

from auditpy.proto.records import MAX_AUDIT_MESSAGE_LENGTH
from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MAGIC: Final = 0xFF0000FE
MAGIC_BYTES: Final = MAGIC.to_bytes(4, "little")
HEADER_VERSION: Final = 0
#: Header versions a reader accepts.  The C server does not check the field at all; we
#: refuse anything else because a newer header may not even be 16 bytes long.
SUPPORTED_HEADER_VERSIONS: Final = frozenset({HEADER_VERSION})
MESSAGE_VERSION: Final = 0

HEADER: Final = struct.Struct("<IBBIHI")
HEADER_SIZE: Final = HEADER.size
#: MAX_AUDIT_MESSAGE_LENGTH in the C tools: the server's per-client buffer holds one header
#: plus this much, so a longer frame could never be read by it.
MAX_PAYLOAD: Final = MAX_AUDIT_MESSAGE_LENGTH
MAX_FRAME: Final = HEADER_SIZE + MAX_PAYLOAD
MAX_SEQ: Final = 0xFFFFFFFF

TYPE_MESSAGE: Final = 0x00000000
TYPE_HEARTBEAT: Final = 0x00000001
TYPE_ACK: Final = 0x40000000
TYPE_ENDING: Final = 0x40000001
TYPE_DISKLOW: Final = 0x50000001
TYPE_DISKFULL: Final = 0x60000001
TYPE_DISKERROR: Final = 0x60000002

REPLY_MASK: Final = 0x40000000
FATAL_MASK: Final = 0x20000000
WARN_MASK: Final = 0x10000000
DETAIL_MASK: Final = 0x000FFFFF

#: Reply texts the C server sends with its error replies (for servers that want to match).
TEXT_DISKFULL: Final = b"disk full"
TEXT_DISKERROR: Final = b"disk write error"
TEXT_SUSPENDED: Final = b"remote logging suspended"

TYPE_NAMES: Final[dict[int, str]] = {
    TYPE_MESSAGE: "MESSAGE",
    TYPE_HEARTBEAT: "HEARTBEAT",
    TYPE_ACK: "ACK",
    TYPE_ENDING: "ENDING",
    TYPE_DISKLOW: "DISKLOW",
    TYPE_DISKFULL: "DISKFULL",
    TYPE_DISKERROR: "DISKERROR",
}


class ProtocolError(ValueError):
    """The byte stream cannot be a managed-format stream; the connection must be closed.

    There is no way to find the next frame boundary after a bad header, so the caller
    cannot recover.  `frames` holds the frames decoded from the same `feed` call before the
    fault, so replies that did arrive intact (ACKs, typically) are not thrown away.
    """

    def __init__(self, reason: str, frames: list[Frame] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames: list[Frame] = [] if frames is None else frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.  `legacy_ascii` frames are bare text lines (see `FrameReader`)."""

    msg_type: int
    seq: int
    payload: bytes
    header_version: int = HEADER_VERSION
    msg_version: int = MESSAGE_VERSION
    legacy_ascii: bool = False

    @property
    def type_name(self) -> str:
        return "ASCII" if self.legacy_ascii else type_name(self.msg_type)

    @property
    def text(self) -> str:
        """The payload for log messages: never raises, never spans lines."""
        return describe_payload(self.payload)


def type_name(msg_type: int) -> str:
    """A name for logs, classifying unknown replies by their mask bits."""
    known = TYPE_NAMES.get(msg_type)
    if known is not None:
        return known
    if msg_type & REPLY_MASK:
        if msg_type & FATAL_MASK:
            return f"ERROR(0x{msg_type:08x})"
        if msg_type & WARN_MASK:
            return f"WARNING(0x{msg_type:08x})"
        return f"REPLY(0x{msg_type:08x})"
    return f"UNKNOWN(0x{msg_type:08x})"


def is_reply(msg_type: int) -> bool:
    return bool(msg_type & REPLY_MASK)


def is_error_reply(msg_type: int) -> bool:
    """A reply saying the record was *not* stored (DISKFULL, DISKERROR, others)."""
    return bool(msg_type & REPLY_MASK) and bool(msg_type & FATAL_MASK)


def is_warning_reply(msg_type: int) -> bool:
    """A reply saying the record was stored, but something needs attention (DISKLOW)."""
    return (
        bool(msg_type & REPLY_MASK)
        and not msg_type & FATAL_MASK
        and bool(msg_type & WARN_MASK)
    )


def describe_payload(payload: bytes, limit: int = 200) -> str:
    """Printable text for a log line, since reply texts come from an untrusted peer."""
    text = payload[:limit].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text + ("..." if len(payload) > limit else "")


def pack_frame(
    msg_type: int, seq: int, payload: bytes = b"", *, msg_version: int = MESSAGE_VERSION
) -> bytes:
    """One frame as it goes on the wire.

    Raises ValueError for values that do not fit their fields, rather than letting struct
    wrap them or letting an oversized payload reach a peer that would drop the connection.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence id {seq} does not fit 32 bits")
    if not 0 <= msg_type <= 0xFFFFFFFF:
        raise ValueError(f"message type {msg_type} does not fit 32 bits")
    if not 0 <= msg_version <= 0xFF:
        raise ValueError(f"message version {msg_version} does not fit 8 bits")
    return HEADER.pack(MAGIC, HEADER_VERSION, msg_version, msg_type, len(payload), seq) + payload


def has_magic(data: bytes | bytearray | memoryview) -> bool:
    """Whether `data` starts like a managed frame (the C server's legacy-ASCII test)."""
    return bytes(data[:4]) == MAGIC_BYTES


class FrameReader:
    """Incremental decoder: feed it whatever recv() returned, get the complete frames.

    It retains at most one incomplete frame (less than `MAX_FRAME` bytes), because a
    header announcing more than `max_payload` bytes is refused as soon as it is seen.
    After a ProtocolError the reader stays failed and re-raises, so a caller that forgets
    to close the connection still never decodes garbage.

    With ``legacy_ascii=True`` (for servers), data that does not start with the magic is
    read as one LF-terminated text line, as the C server does for old ASCII clients; such
    lines come back as frames with ``legacy_ascii=True`` and the LF removed.
    """

    __slots__ = ("_buffer", "_error", "_legacy_ascii", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_PAYLOAD, legacy_ascii: bool = False) -> None:
        if not 0 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload {max_payload} does not fit the length field")
        self._max_payload = max_payload
        self._legacy_ascii = legacy_ascii
        self._buffer = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a cut frame."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise ProtocolError(self._error)
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        try:
            offset = self._decode(buffer, frames)
        except ProtocolError as exc:
            self._error = exc.reason
            buffer.clear()
            exc.frames = frames
            raise
        if offset:
            del buffer[:offset]
        return frames

    def _decode(self, buffer: bytearray, frames: list[Frame]) -> int:
        offset = 0
        end = len(buffer)
        max_payload = self._max_payload
        while offset < end:
            available = end - offset
            prefix = bytes(buffer[offset : offset + min(4, available)])
            if not MAGIC_BYTES.startswith(prefix):
                if not self._legacy_ascii:
                    raise ProtocolError(f"bad magic {prefix.hex()} at a frame boundary")
                consumed = self._ascii_line(buffer, offset, end, frames)
                if consumed == 0:
                    break
                offset += consumed
                continue
            if available < HEADER_SIZE:
                break
            _magic, hver, mver, msg_type, length, seq = HEADER.unpack_from(buffer, offset)
            if hver not in SUPPORTED_HEADER_VERSIONS:
                raise ProtocolError(f"unsupported header version {hver}")
            if length > max_payload:
                raise ProtocolError(f"frame length {length} exceeds the maximum {max_payload}")
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            frames.append(
                Frame(msg_type, seq, bytes(buffer[offset + HEADER_SIZE : stop]), hver, mver)
            )
            offset = stop
        return offset

    def _ascii_line(self, buffer: bytearray, offset: int, end: int, frames: list[Frame]) -> int:
        newline = buffer.find(b"\n", offset, min(end, offset + self._max_payload + 1))
        if newline < 0:
            if end - offset > self._max_payload:
                raise ProtocolError(f"text line longer than {self._max_payload} bytes")
            return 0
        frames.append(
            Frame(TYPE_MESSAGE, 0, bytes(buffer[offset:newline]), legacy_ascii=True)
        )
        return newline + 1 - offset
