"""JetStream's wire conventions and the identity of an audit record in a stream.  Pure.

JetStream is driven by requests on ``$JS.API.*`` subjects whose replies are JSON; stored
messages are acknowledged by publishing ``+ACK`` to the reply subject they were delivered
with, and that subject (``$JS.ACK...``) also carries the stream sequence and how often the
message was delivered.  A publish to a stream is answered (on the reply subject) with a
"pub ack" naming the stream, the sequence and whether the stream had already stored a
message with the same ``Nats-Msg-Id`` within its duplicate window.

The record identity (`record_msg_id`) is what makes a re-send harmless: it is computed
from the record itself, never from where it sat in a queue or an input stream, so the same
record gets the same ID whoever sends it and however often (a restarted publisher, records
recovered from the audit log, a retry after a lost acknowledgement).
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Final

from auditpy.structs import dataclass

API_PREFIX: Final = "$JS.API"
MSG_ID: Final = "Nats-Msg-Id"
ACK: Final = b"+ACK"
NAK: Final = b"-NAK"
#: Pull-request status codes (in a header block without payload).
STATUS_NO_MESSAGES: Final = 404
STATUS_REQUEST_TIMEOUT: Final = 408
STATUS_CONFLICT: Final = 409
STATUS_IDLE_HEARTBEAT: Final = 100
STATUS_NO_RESPONDERS: Final = 503
#: JetStream API error codes used here.
ERR_STREAM_NOT_FOUND: Final = 10059
ERR_CONSUMER_NOT_FOUND: Final = 10014
ERR_STREAM_NAME_IN_USE: Final = 10058
ERR_NO_MESSAGE_FOUND: Final = 10037

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,255}")


class JetStreamError(Exception):
    """A JetStream API error reply (``{"error": {"code", "err_code", "description"}}``)."""

    def __init__(self, description: str, code: int = 0, err_code: int = 0) -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.err_code = err_code

    def __str__(self) -> str:
        if self.err_code:
            return f"{self.description} (code {self.code}, err_code {self.err_code})"
        return self.description


def check_name(kind: str, name: str) -> None:
    """Stream and consumer names become subject tokens: letters, digits, '-' and '_'."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} may only hold letters, digits, '-' and '_'")


def api_reply(payload: bytes) -> dict[str, object]:
    """The JSON object of an API reply; raises JetStreamError for an error reply or a
    reply that is not a JSON object."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise JetStreamError(f"reply is not JSON: {payload[:80]!r}") from None
    if not isinstance(value, dict):
        raise JetStreamError("reply is not a JSON object")
    error = value.get("error")
    if error is not None:
        if isinstance(error, dict):
            code = error.get("code")
            err_code = error.get("err_code")
            raise JetStreamError(
                str(error.get("description") or "JetStream error"),
                code if isinstance(code, int) else 0,
                err_code if isinstance(err_code, int) else 0,
            )
        raise JetStreamError(str(error))
    return value


@dataclass(frozen=True, slots=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool = False


def parse_pub_ack(payload: bytes) -> PubAck:
    """Raises JetStreamError for an error reply or anything that is not a pub ack."""
    value = api_reply(payload)
    stream = value.get("stream")
    seq = value.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise JetStreamError(f"not a publish acknowledgement: {payload[:80]!r}")
    return PubAck(stream, seq, value.get("duplicate") is True)


def quick_pub_ack(payload: bytes) -> bool | None:
    """Whether a pub ack says "duplicate", without a JSON parser, for the usual reply
    ``{"stream":"S", "seq":N}`` (``,"duplicate": true`` added for a duplicate); None
    for anything else (an error, another shape), which `parse_pub_ack` then reads."""
    if not payload.startswith(b'{"stream":"') or not payload.endswith(b"}"):
        return None
    if b'"error"' in payload or b'"seq":' not in payload:
        return None
    return b'"duplicate": true' in payload or b'"duplicate":true' in payload


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the ``$JS.ACK`` reply subject of a delivered message says about it."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def parse_ack_subject(reply: bytes) -> Delivery:
    """``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (the form
    of nats-server 2.9), or the newer form with a domain and an account hash after
    ``$JS.ACK`` (and a random token at the end).  Raises ValueError."""
    tokens = reply.split(b".")
    if len(tokens) < 9 or tokens[0] != b"$JS" or tokens[1] != b"ACK":
        raise ValueError(f"not a JetStream ack subject: {reply[:80]!r}")
    if len(tokens) == 9:
        names, numbers = tokens[2:4], tokens[4:9]
    elif len(tokens) >= 11:
        names, numbers = tokens[4:6], tokens[6:11]
    else:
        raise ValueError(f"ack subject with {len(tokens)} tokens: {reply[:80]!r}")
    if not all(n.isdigit() for n in numbers):
        raise ValueError(f"ack subject with non-numeric fields: {reply[:80]!r}")
    delivered, sseq, cseq, ts, pending = (int(n) for n in numbers)
    return Delivery(names[0].decode(), names[1].decode(), delivered, sseq, cseq, ts, pending)


def stream_config(
    name: str,
    subjects: list[str],
    *,
    replicas: int = 1,
    duplicate_window_s: float = 120.0,
    max_age_s: float = 0.0,
    max_bytes: int = -1,
) -> dict[str, object]:
    """A file-backed limits stream; ``discard = new`` so that a full stream refuses new
    records (the publisher keeps them queued) instead of silently dropping old ones."""
    check_name("stream", name)
    return {
        "name": name,
        "subjects": subjects,
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "new" if max_bytes > 0 else "old",
        "duplicate_window": int(duplicate_window_s * 1e9),
        "max_age": int(max_age_s * 1e9),
        "max_bytes": max_bytes,
        "max_msgs": -1,
    }


def pull_consumer_config(
    durable: str,
    *,
    ack_wait_s: float = 30.0,
    max_ack_pending: int = 20000,
    filter_subject: str | None = None,
) -> dict[str, object]:
    """A durable pull consumer with explicit acks, shared by every collector that names it:
    a message is handed to one of them, and given to another after `ack_wait_s` unless
    acknowledged.  `max_deliver` -1: a record is never given up on."""
    check_name("consumer", durable)
    config: dict[str, object] = {
        "durable_name": durable,
        "ack_policy": "explicit",
        "ack_wait": int(ack_wait_s * 1e9),
        "deliver_policy": "all",
        "replay_policy": "instant",
        "max_deliver": -1,
        "max_ack_pending": max_ack_pending,
        "max_waiting": 512,
    }
    if filter_subject:
        config["filter_subject"] = filter_subject
    return config


# --------------------------------------------------------------------------------------
# Audit records in a stream


_STAMP: Final = re.compile(rb"msg=audit\((\d+\.\d+:\d+)\)")


def subject_token(node: str) -> str:
    """A node name as one subject token: dots, spaces, wildcards and control characters
    become '_' (``web1.example.com`` -> ``web1_example_com``)."""
    token = "".join("_" if ch in ".*> \t\r\n" or not ch.isprintable() else ch for ch in node)
    return token or "_"


def line_node(line: bytes) -> bytes | None:
    """The NAME of a leading ``node=NAME `` field, if the line has one."""
    if not line.startswith(b"node="):
        return None
    space = line.find(b" ", 5)
    return line[5:space] if space > 5 else None


def with_node(line: bytes, node: bytes) -> bytes:
    """The line as the central log wants it: with a leading ``node=`` (added if missing)."""
    return line if line.startswith(b"node=") else b"node=" + node + b" " + line


def record_stamp(line: bytes) -> bytes | None:
    """``SECONDS.MILLIS:SERIAL`` of the record, the event it belongs to."""
    match = _STAMP.search(line, 0, 512)
    return match.group(1) if match else None


def record_msg_id(line: bytes, node: bytes, boot_id: bytes, occurrence: int = 0) -> str:
    """The ``Nats-Msg-Id`` of one record: node, boot ID, the event's time stamp and serial,
    and a CRC of the whole line.

    Several records share one event serial, so the serial alone cannot tell them apart;
    their position in the event would, but a publisher restarted in the middle of an event
    sees only part of it and would number the rest from zero.  The line's content is the
    one thing every sender agrees on.  `occurrence` counts byte-identical lines within one
    event (the kernel does not send those, but a user-space record could), so they stay
    distinct.  The time stamp keeps IDs unique when the 32-bit serial wraps, and the boot
    ID when the clock is set back after a reboot.
    """
    stamp = record_stamp(line) or b"-"
    crc = zlib.crc32(line)
    tail = f":{occurrence}" if occurrence else ""
    return f"{node.decode('utf-8', 'replace')}:{boot_id.decode()}:{stamp.decode()}:{crc:08x}{tail}"



def event_msg_id(node: bytes, boot_id: bytes, stamp: bytes) -> str:
    """The ``Nats-Msg-Id`` of a whole event (all its records in one message): node, boot
    ID, and the event's ``SECONDS.MILLIS:SERIAL``, which identify it as one."""
    return f"{node.decode('utf-8', 'replace')}:{boot_id.decode()}:{stamp.decode()}"
