"""A dispatcher stream into records, keeping a binary frame's type: string lines or binary
frames, told apart as every plugin tells them (`proto.plugin_input.stream_is_binary`)."""

from __future__ import annotations

from auditpy.proto.dispatch import FrameError, unpack_frames
from auditpy.proto.plugin_input import stream_is_binary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Record", "StreamDecoder"]

#: (message type or None for a string line, payload or line)
Record = tuple[int | None, bytes]
#: A line longer than this is taken as it is (records are at most ~9 KiB; this only bounds
#: what a broken peer can make us hold).
MAX_LINE: Final = 1 << 20


class StreamDecoder:
    def __init__(self) -> None:
        self.buffer = bytearray()
        #: None until the first bytes say which format this is
        self.binary: bool | None = None
        #: lines cut because they had no newline within MAX_LINE bytes
        self.overlong = 0

    def feed(self, data: bytes) -> list[Record]:
        """The complete records in `data` (and what was held from before).  Raises
        FrameError when a binary stream is not in the dispatcher protocol."""
        buf = self.buffer
        buf += data
        if self.binary is None:
            self.binary = stream_is_binary(buf)
            if self.binary is None:
                return []
        if self.binary:
            return [(msg_type, payload) for _v, msg_type, payload in unpack_frames(buf)]
        out: list[Record] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if end > start:
                out.append((None, bytes(buf[start:end])))
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            self.overlong += 1
            out.append((None, bytes(buf)))
            buf.clear()
        return out

    def rest(self) -> list[Record]:
        """At end of input: an unterminated last line (never a partial frame)."""
        if self.buffer and not self.binary:
            out: list[Record] = [(None, bytes(self.buffer))]
            self.buffer.clear()
            return out
        return []


__all__ += ["FrameError"]
