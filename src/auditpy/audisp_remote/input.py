"""What comes in on stdin, turned into queueable records: the format rules (EOE records
skipped, payloads cut to the frame limit) on top of the shared decoder of
`proto.plugin_input`, tested without a process."""

from __future__ import annotations

from collections.abc import Iterable

from auditpy.proto.plugin_input import INPUT_CHUNK, MAX_INPUT_LINE, InputDecoder, is_eoe
from auditpy.proto.remote import MAX_PAYLOAD

__all__ = ["INPUT_CHUNK", "MAX_INPUT_LINE", "InputDecoder", "is_eoe", "prepare"]


def prepare(records: Iterable[bytes]) -> tuple[list[bytes], int]:
    """The records worth queueing, and how many of them had to be cut to `MAX_PAYLOAD`
    bytes (a frame cannot carry more; the C plugin would send a frame the server drops)."""
    accepted: list[bytes] = []
    truncated = 0
    for record in records:
        if not record or is_eoe(record):
            continue
        if len(record) > MAX_PAYLOAD:
            record = record[:MAX_PAYLOAD]
            truncated += 1
        accepted.append(record)
    return accepted, truncated
