"""The dispatcher protocol: `struct audit_dispatcher_header` and the string line.

Used on the pyauditd -> pyaudispd link and from pyaudispd to binary plugins, exactly as the
C tools frame records (host byte order, 16-byte header, then `size` bytes of payload).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from itertools import chain, repeat

from auditpy.proto.records import MAX_AUDIT_MESSAGE_LENGTH, type_name

#: Payload is the kernel's text, `audit(...): ...`; the type is only in the header.
PROTOCOL_V0 = 0
#: Payload is a complete formatted line, starting `node=` or `type=`.
PROTOCOL_V1 = 1
HEADER = struct.Struct("=IIII")
HEADER_LEN = HEADER.size
#: The largest payload a frame may carry: a V1 frame holds the formatted line, which with a
#: node name and the ENRICHED suffix is longer than a kernel record, but never twice as long.
MAX_FRAME_PAYLOAD = 2 * MAX_AUDIT_MESSAGE_LENGTH


def pack_header(version: int, msg_type: int, size: int) -> bytes:
    return HEADER.pack(version, HEADER_LEN, msg_type, size)


def frame(version: int, msg_type: int, payload: bytes) -> bytes:
    """One record as it goes on the stream."""
    return HEADER.pack(version, HEADER_LEN, msg_type, len(payload)) + payload


def frames_v0(types: Sequence[int], payloads: Sequence[bytes]) -> bytes:
    """Kernel records as V0 frames, one buffer (the headers packed by a C loop)."""
    count = len(payloads)
    headers = map(HEADER.pack, repeat(PROTOCOL_V0, count), repeat(HEADER_LEN, count), types,
                  map(len, payloads))
    return b"".join(chain.from_iterable(zip(headers, payloads, strict=True)))


class FrameError(ValueError):
    """The stream is not in the dispatcher protocol (bad version or header length)."""


def unpack_frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Take every complete frame off the front of `buffer` as (version, type, payload).

    Incomplete trailing data stays in the buffer for the next read. Raises FrameError on a
    header no writer of this protocol produces, since the stream cannot be resynchronised.
    """
    out: list[tuple[int, int, bytes]] = []
    offset = 0
    end = len(buffer)
    unpack_from = HEADER.unpack_from
    while end - offset >= HEADER_LEN:
        version, hlen, msg_type, size = unpack_from(buffer, offset)
        if hlen != HEADER_LEN or version > PROTOCOL_V1 or size > MAX_FRAME_PAYLOAD:
            raise FrameError(f"bad dispatcher header: ver={version} hlen={hlen} size={size}")
        stop = offset + HEADER_LEN + size
        if stop > end:
            break
        out.append((version, msg_type, bytes(buffer[offset + HEADER_LEN : stop])))
        offset = stop
    if offset:
        del buffer[:offset]
    return out


#: ``type=NAME msg=`` by message type, for V0 lines.
_V0_PREFIX: dict[int, bytes] = {}


def string_line(version: int, msg_type: int, payload: bytes) -> bytes:
    """The line a `format = string` plugin gets: one record, one line, newline-terminated."""
    if version == PROTOCOL_V0:
        prefix = _V0_PREFIX.get(msg_type)
        if prefix is None:
            prefix = b"type=" + type_name(msg_type).encode() + b" msg="
            if len(_V0_PREFIX) < 4096:  # bounded: types are 16-bit, and peers are trusted
                _V0_PREFIX[msg_type] = prefix
        text = prefix + payload
    else:
        text = payload
    if b"\n" in text:
        text = text.replace(b"\n", b" ")
    return text + b"\n"


# --------------------------------------------------------------------------------------
# The dispatcher's figures, sent back to pyauditd on the same socketpair (the other way):
# one JSON object per line, so the daemon's ledger and metrics include every plugin's.

#: A report longer than this is not one: the reader drops it and resynchronises at the
#: next newline.
MAX_FIGURES_LINE = 1 << 16
FIGURE_KEYS = ("offered", "delivered", "dropped", "queued", "restarts")


def figures_line(plugins: dict[str, dict[str, int]]) -> bytes:
    return json.dumps({"plugins": plugins}, separators=(",", ":")).encode() + b"\n"


def parse_figures(buffer: bytearray) -> list[dict[str, dict[str, int]]]:
    """Take every complete report off the front of `buffer`: per plugin, the counters of
    FIGURE_KEYS (non-negative integers). Malformed lines are skipped; an overlong partial
    line is discarded."""
    out: list[dict[str, dict[str, int]]] = []
    while True:
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > MAX_FIGURES_LINE:
                buffer.clear()
            return out
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        try:
            report = json.loads(line)
            plugins = report["plugins"]
            if not isinstance(plugins, dict):
                continue
            out.append({
                str(name): {
                    key: int(value[key]) for key in FIGURE_KEYS
                    if isinstance(value.get(key), int) and value[key] >= 0
                }
                for name, value in plugins.items() if isinstance(value, dict)
            })
        except (ValueError, KeyError, TypeError):
            continue
