"""What a plugin program reads on stdin: the dispatcher's record stream (one text line per
record, or binary `audit_dispatcher_header` frames), turned into records. Pure: shared by
every plugin program of auditpy, tested without a process."""

from __future__ import annotations

from typing import Final

from auditpy.proto.dispatch import string_line as dispatcher_string_line
from auditpy.proto.dispatch import unpack_frames

#: How much of stdin is taken per read.
INPUT_CHUNK: Final = 1 << 16
#: A line this long without a newline cannot be a record; it is cut so memory stays bounded.
MAX_INPUT_LINE: Final = 1 << 16


def is_eoe(record: bytes) -> bool:
    """EOE records are not forwarded (as in the C plugin): they carry nothing."""
    if record.startswith(b"node="):
        space = record.find(b" ")
        if space < 0:
            return False
        record = record[space + 1 :]
    return record == b"type=EOE" or record.startswith(b"type=EOE ")


def stream_is_binary(prefix: bytes | bytearray) -> bool | None:
    """Whether a plugin's input is binary dispatcher frames or text lines, from its first
    bytes (None: too few to tell). A frame starts with its header's version (0 or 1, as a
    32-bit word) and header length (16); a text record starts ``type=`` or ``node=``."""
    if prefix.startswith((b"type=", b"node=")) or (prefix and prefix[0] not in (0, 1)):
        return False
    if len(prefix) < 8:
        return None
    return prefix[1:4] == b"\0\0\0" and prefix[4:8] == b"\x10\0\0\0"


class InputDecoder:
    """Turns stdin bytes into records (no trailing newline).

    The format is detected from the first byte as audisp-af_unix does: 0 or 1 is the
    version field of a binary `audit_dispatcher_header`, anything else starts a text line.
    """

    def __init__(self) -> None:
        self.binary: bool | None = None
        self._buffer = bytearray()
        self._discarding = False
        self.cut_lines = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Raises proto.dispatch.FrameError if binary input is corrupt (it cannot
        resynchronise)."""
        if not data:
            return []
        self._buffer += data
        if self.binary is None:
            self.binary = stream_is_binary(self._buffer)
            if self.binary is None:
                return []
        if self.binary:
            return [
                dispatcher_string_line(version, msg_type, payload)[:-1]
                for version, msg_type, payload in unpack_frames(self._buffer)
            ]
        return self._lines()

    def _lines(self) -> list[bytes]:
        buffer = self._buffer
        records = buffer.split(b"\n")
        rest = records.pop()
        if self._discarding and records:
            records.pop(0)
            self._discarding = False
        out = [bytes(record) for record in records]
        if self._discarding:
            rest = bytearray()
        elif len(rest) > MAX_INPUT_LINE:
            out.append(bytes(rest[:MAX_INPUT_LINE]))
            rest = bytearray()
            self._discarding = True
            self.cut_lines += 1
        self._buffer = bytearray(rest)
        return out

    def finish(self) -> tuple[list[bytes], int]:
        """Records left at EOF and how many bytes of a cut binary frame were dropped."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self.binary:
            return [], len(rest)
        if self._discarding or not rest:
            return [], 0
        return [rest], 0
