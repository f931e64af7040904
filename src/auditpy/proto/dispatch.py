"""The dispatcher protocol: `struct audit_dispatcher_header` and the string line.

Used on the pyauditd -> pyaudispd link and from pyaudispd to binary plugins, exactly as the
C tools frame records (host byte order, 16-byte header, then `size` bytes of payload).
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Sequence
from itertools import accumulate

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


#: A batch frame (pyauditd to pyaudispd only, never to a plugin): the header's version is
#: BATCH | the records' protocol (V0 or V1), its type field the record count, its size the
#: bytes that follow: every record's type (u32, host order), every payload's size (u32),
#: then the payloads back to back. One frame per read of the kernel: the dispatcher takes
#: the columns apart with a few C calls instead of a header per record.
BATCH = 0x100
#: The most a batch frame may hold (pyauditd sends one read: a few hundred records).
MAX_BATCH_SIZE = 64 << 20


def pack_batch(version: int, types: Sequence[int], payloads: Sequence[bytes]) -> bytes:
    """Records of protocol `version` as one batch frame."""
    sizes = array("I", map(len, payloads))
    columns = array("I", types).tobytes() + sizes.tobytes()
    size = len(columns) + sum(sizes)
    return HEADER.pack(BATCH | version, HEADER_LEN, len(sizes), size) + columns + b"".join(
        payloads)


class FrameError(ValueError):
    """The stream is not in the dispatcher protocol (bad version or header length)."""


def unpack_stream(buffer: bytearray) -> list[tuple[int, list[int], list[bytes]]]:
    """Take every complete frame, single or batch, off the front of `buffer`, as runs of
    records of one protocol version in order: (version, types, payloads).

    Incomplete trailing data stays in the buffer. Raises FrameError on a header no writer
    of this protocol produces, or a batch whose columns do not add up.
    """
    runs: list[tuple[int, list[int], list[bytes]]] = []
    offset = 0
    end = len(buffer)
    unpack_from = HEADER.unpack_from
    while end - offset >= HEADER_LEN:
        version, hlen, msg_type, size = unpack_from(buffer, offset)
        if hlen != HEADER_LEN:
            raise FrameError(f"bad dispatcher header: ver={version} hlen={hlen} size={size}")
        stop = offset + HEADER_LEN + size
        if version & BATCH:
            version &= ~BATCH
            if version > PROTOCOL_V1 or size > MAX_BATCH_SIZE or 8 * msg_type > size:
                raise FrameError(f"bad batch header: ver={version | BATCH} count={msg_type} "
                                 f"size={size}")
            if stop > end:
                break
            types, payloads = _batch_columns(buffer, offset + HEADER_LEN, msg_type, stop)
        else:
            if version > PROTOCOL_V1 or size > MAX_FRAME_PAYLOAD:
                raise FrameError(f"bad dispatcher header: ver={version} hlen={hlen} "
                                 f"size={size}")
            if stop > end:
                break
            types, payloads = [msg_type], [bytes(buffer[offset + HEADER_LEN : stop])]
        if runs and runs[-1][0] == version:
            runs[-1][1].extend(types)
            runs[-1][2].extend(payloads)
        else:
            runs.append((version, types, payloads))
        offset = stop
    if offset:
        del buffer[:offset]
    return runs


def _batch_columns(
    buffer: bytearray, start: int, count: int, stop: int
) -> tuple[list[int], list[bytes]]:
    with memoryview(buffer) as view, view[start : start + 8 * count] as columns, \
            columns.cast("I") as words:
        types = words[:count].tolist()
        sizes = words[count:].tolist()
    data = bytes(buffer[start + 8 * count : stop])
    ends = list(accumulate(sizes))
    if (ends[-1] if ends else 0) != len(data) or (sizes and max(sizes) > MAX_FRAME_PAYLOAD):
        raise FrameError(f"bad batch frame: {count} records whose sizes do not add up")
    payloads = list(map(data.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    return types, payloads


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
