"""The NATS client protocol codec and JetStream's wire conventions: exact bytes, any read
boundary, hostile input."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.proto import jetstream as js
from auditpy.proto import nats as wire
from auditpy.proto.nats import Err, Info, Msg, Parser, ProtocolError

# -- strategies ---------------------------------------------------------------------------

tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=".*>"),
    min_size=1, max_size=12,
)
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)
payloads = st.binary(max_size=200) | st.sampled_from([b"", b"\r\n", b"MSG x 1 2\r\n", b"PING\r\n"])
header_keys = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=":"),
    min_size=1, max_size=16,
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)
header_lists = st.lists(st.tuples(header_keys, header_values), max_size=4)


@st.composite
def server_ops(draw: st.DrawFn) -> tuple[bytes, object]:
    """One server operation as bytes and what the parser must make of it."""
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "err", "info"]))
    if kind in ("msg", "hmsg"):
        subject = draw(subjects).encode()
        sid = draw(st.integers(min_value=1, max_value=10**9))
        reply = draw(st.none() | subjects.map(str.encode))
        payload = draw(payloads)
        middle = b"" if reply is None else b" " + reply
        if kind == "msg":
            data = b"MSG %b %d%b %d\r\n%b\r\n" % (subject, sid, middle, len(payload), payload)
            return data, Msg(subject, sid, reply, payload)
        block = wire.encode_headers(draw(header_lists))
        data = b"HMSG %b %d%b %d %d\r\n%b%b\r\n" % (
            subject, sid, middle, len(block), len(block) + len(payload), block, payload)
        return data, Msg(subject, sid, reply, payload, block)
    if kind == "ping":
        return draw(st.sampled_from([b"PING\r\n", b"ping\r\n"])), wire.PING
    if kind == "pong":
        return b"PONG\r\n", wire.PONG
    if kind == "ok":
        return b"+OK\r\n", wire.OK
    if kind == "err":
        text = draw(st.text(alphabet="abc XYZ-", max_size=30))
        return f"-ERR '{text}'\r\n".encode(), Err(text)
    fields = {"server_id": draw(tokens), "max_payload": draw(st.integers(1, 1 << 26)),
              "connect_urls": draw(st.lists(tokens, max_size=3))}
    return b"INFO " + json.dumps(fields).encode() + b"\r\n", Info(fields)


def parse_all(data: bytes, cuts: list[int]) -> list[object]:
    parser = Parser()
    out: list[object] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    assert parser.buffered == 0
    return out


# -- parsing --------------------------------------------------------------------------------


@given(st.lists(server_ops(), max_size=8), st.data())
@settings(max_examples=300)
def test_any_split_of_a_stream_parses_to_the_same_operations(
    ops: list[tuple[bytes, object]], data: st.DataObject
) -> None:
    stream = b"".join(raw for raw, _ in ops)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    assert parse_all(stream, cuts) == [op for _, op in ops]


@given(st.lists(server_ops(), max_size=5))
def test_byte_by_byte(ops: list[tuple[bytes, object]]) -> None:
    stream = b"".join(raw for raw, _ in ops)
    assert parse_all(stream, list(range(len(stream)))) == [op for _, op in ops]


def test_what_nats_server_sends() -> None:
    # As nats-server 2.9.10 sends them: a pull request timing out, and a pub ack.
    block = (b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 9\r\n"
             b"Nats-Pending-Bytes: 0\r\n\r\n")
    data = (b"HMSG _INBOX.x.pull 2 %d %d\r\n%b\r\n" % (len(block), len(block), block)
            + b'MSG _INBOX.x.2 1 27\r\n{"stream":"AUDIT", "seq":1}\r\n')
    ops = Parser().feed(data)
    assert isinstance(ops[0], Msg) and ops[0].payload == b""
    headers = wire.decode_headers(ops[0].headers or b"")
    assert (headers.status, headers.description) == (408, "Request Timeout")
    assert headers.get("Nats-Pending-Messages") == "9"
    assert js.parse_pub_ack(ops[1].payload) == js.PubAck("AUDIT", 1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HELLO\r\n", "unknown operation"),
        (b"MSG a b 3\r\nabc\r\n", "sid"),
        (b"MSG a 1 x\r\n", "not a number"),
        (b"MSG a 1\r\n", "arguments"),
        (b"HMSG a 1 10 5\r\n", "exceeds total"),
        (b"MSG a 1 3\r\nabcd\r\n", "not followed by CRLF"),
        (b"INFO [1]\r\n", "not a JSON object"),
        (b"INFO {\r\n", "not JSON"),
        (b"X" * 5000, "control line longer"),
        (b"MSG a 1 999999999\r\n", "exceeds the limit"),
    ],
)
def test_broken_streams_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Parser(max_payload=1 << 20).feed(data)


def test_operations_before_a_fault_are_kept() -> None:
    with pytest.raises(ProtocolError) as caught:
        Parser().feed(b"PING\r\nMSG a 1 1\r\nx\r\nBOGUS\r\n")
    assert caught.value.ops == [wire.PING, Msg(b"a", 1, None, b"x")]


@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Parser(max_payload=1000).feed(data)


# -- headers and client operations ------------------------------------------------------------


@given(header_lists)
def test_headers_round_trip(items: list[tuple[str, str]]) -> None:
    block = wire.encode_headers(items)
    assert block.startswith(b"NATS/1.0\r\n") and block.endswith(b"\r\n\r\n")
    assert wire.decode_headers(block).items == items


def test_header_status_line() -> None:
    assert wire.decode_headers(b"NATS/1.0 503\r\n\r\n").status == 503
    assert wire.decode_headers(b"NATS/1.0\r\n\r\n").status is None
    with pytest.raises(ProtocolError):
        wire.decode_headers(b"HTTP/1.1 200\r\n\r\n")


@pytest.mark.parametrize(("key", "value"), [("a b", "x"), ("a:b", "x"), ("", "x"), ("k", "a\r\nb")])
def test_bad_headers_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        wire.encode_headers([(key, value)])


def test_client_operations_exact_bytes() -> None:
    block = wire.encode_headers([("Nats-Msg-Id", "a1")])
    assert block == b"NATS/1.0\r\nNats-Msg-Id: a1\r\n\r\n"
    assert wire.hpub_op("audit.h1", block, b"hello", "_INBOX.x.2") == (
        b"HPUB audit.h1 _INBOX.x.2 29 34\r\n" + block + b"hello\r\n")
    assert wire.pub_op("a", b"") == b"PUB a 0\r\n\r\n"
    assert wire.pub_op("a", b"xy", "r") == b"PUB a r 2\r\nxy\r\n"
    assert wire.sub_op("_INBOX.a.*", 7) == b"SUB _INBOX.a.* 7\r\n"
    assert wire.sub_op("q", 1, "grp") == b"SUB q grp 1\r\n"
    assert wire.unsub_op(3, 1) == b"UNSUB 3 1\r\n"
    assert wire.connect_op({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'


@given(subjects, payloads, st.none() | subjects, header_lists)
def test_what_we_publish_is_what_a_subscriber_gets(
    subject: str, payload: bytes, reply: str | None, items: list[tuple[str, str]]
) -> None:
    """The server relays PUB/HPUB as MSG/HMSG with the same sizes: model it."""
    block = wire.encode_headers(items)
    op = wire.hpub_op(subject, block, payload, reply)
    head, _, _ = op.partition(b"\r\n")
    parts = head.split(b" ")
    relayed = b" ".join([b"HMSG", parts[1], b"9", *parts[2:]]) + op[len(head):]
    (msg,) = Parser().feed(relayed)
    assert isinstance(msg, Msg)
    assert (msg.subject, msg.sid, msg.reply, msg.payload, msg.headers) == (
        subject.encode(), 9, None if reply is None else reply.encode(), payload, block)


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb"])
def test_bad_publish_subjects(subject: str) -> None:
    with pytest.raises(ValueError):
        wire.check_subject(subject)


def test_wildcards_only_when_subscribing() -> None:
    wire.check_subject("audit.>", wildcards=True)
    wire.check_subject("a.*.b", wildcards=True)
    with pytest.raises(ValueError):
        wire.check_subject("a.>.b", wildcards=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nats://127.0.0.1:4222", wire.ServerUrl("127.0.0.1", 4222)),
        ("host", wire.ServerUrl("host")),
        ("tls://h:1", wire.ServerUrl("h", 1, tls=True)),
        ("nats://u:p@h", wire.ServerUrl("h", user="u", password="p")),
        ("nats://tok@h", wire.ServerUrl("h", user="tok")),
        ("[::1]:5", wire.ServerUrl("::1", 5)),
    ],
)
def test_server_urls(text: str, expected: wire.ServerUrl) -> None:
    assert wire.parse_server_url(text) == expected


@pytest.mark.parametrize("text", ["http://h", "h:0", "h:x", "nats://", "h:", "[::1", "@h"])
def test_bad_server_urls(text: str) -> None:
    with pytest.raises(ValueError):
        wire.parse_server_url(text)


# -- JetStream ----------------------------------------------------------------------------------


def test_pub_ack_and_errors() -> None:
    assert js.parse_pub_ack(b'{"stream":"S","seq":3,"duplicate":true}') == js.PubAck("S", 3, True)
    with pytest.raises(js.JetStreamError) as caught:
        js.parse_pub_ack(b'{"error":{"code":503,"err_code":10077,"description":"full"}}')
    assert (caught.value.code, caught.value.err_code) == (503, 10077)
    for bad in (b"", b"[]", b'{"stream":"S"}', b'{"stream":"S","seq":true}'):
        with pytest.raises(js.JetStreamError):
            js.parse_pub_ack(bad)


def test_quick_pub_ack_agrees_with_the_parser() -> None:
    for payload in (b'{"stream":"AUDIT", "seq":1}',
                    b'{"stream":"AUDIT", "seq":1,"duplicate": true}',
                    b'{"stream":"S","seq":2,"duplicate":true}'):
        assert js.quick_pub_ack(payload) is js.parse_pub_ack(payload).duplicate
    for other in (b'{"error":{"code":503}}', b'{"stream":"S","error":{}}', b"", b"[1]",
                  b'{"stream":"S"}'):
        assert js.quick_pub_ack(other) is None


def test_ack_subjects() -> None:
    delivery = js.parse_ack_subject(b"$JS.ACK.AUDIT.col.2.17.9.1796004447639780896.4")
    assert delivery == js.Delivery("AUDIT", "col", 2, 17, 9, 1796004447639780896, 4)
    newer = js.parse_ack_subject(b"$JS.ACK.dom.ACCHASH.AUDIT.col.1.5.5.123.0.xyz")
    assert (newer.stream, newer.stream_seq, newer.delivered) == ("AUDIT", 5, 1)
    for bad in (b"$JS.ACK.a.b.1.2.3", b"_INBOX.x", b"$JS.ACK.a.b.x.2.3.4.5"):
        with pytest.raises(ValueError):
            js.parse_ack_subject(bad)


def test_record_ids_tell_records_of_one_event_apart() -> None:
    boot = b"0123456789abcdef0123456789abcdef"
    syscall = b"node=h1 type=SYSCALL msg=audit(1700000000.123:42): arch=c000003e syscall=110"
    path0 = b"node=h1 type=PATH msg=audit(1700000000.123:42): item=0 name=\"/a\""
    path1 = b"node=h1 type=PATH msg=audit(1700000000.123:42): item=1 name=\"/a\""
    ids = {js.record_msg_id(line, b"h1", boot) for line in (syscall, path0, path1)}
    assert len(ids) == 3
    assert all(i.startswith("h1:" + boot.decode() + ":1700000000.123:42:") for i in ids)
    # the same record always gets the same ID; a repeated identical line does not
    assert js.record_msg_id(path0, b"h1", boot) == js.record_msg_id(path0, b"h1", boot)
    assert js.record_msg_id(path0, b"h1", boot, 1) != js.record_msg_id(path0, b"h1", boot)
    wire.check_header(js.MSG_ID, js.record_msg_id(path0, b"h1", boot))


def test_node_helpers() -> None:
    assert js.subject_token("web1.example.com") == "web1_example_com"
    assert js.subject_token("a*b>c d") == "a_b_c_d"
    assert js.line_node(b"node=h1 type=X") == b"h1"
    assert js.line_node(b"type=X") is None
    assert js.with_node(b"type=X msg=a", b"h2") == b"node=h2 type=X msg=a"
    assert js.with_node(b"node=h1 type=X", b"h2") == b"node=h1 type=X"


def test_names_become_subject_tokens() -> None:
    js.check_name("stream", "AUDIT_1-a")
    for bad in ("", "a.b", "a b", "a*"):
        with pytest.raises(ValueError):
            js.check_name("stream", bad)
