"""The publisher's pure parts: finding the last queued record in the audit log, naming
records, and what is published at all."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from auditpy.config.nats_conf import NatsConf
from auditpy.nats.publisher import Identities, is_eoe, lines_after, recover_lines

lines = st.lists(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")).filter(bool),
    min_size=1, max_size=30, unique=True,
)


@given(lines, st.data())
def test_lines_after_the_cursor(log: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(log) - 1))
    text = b"".join(line + b"\n" for line in log)
    assert lines_after(text, log[index], at_start=True) == log[index + 1 :]
    partial = data.draw(st.binary(max_size=10).map(lambda b: b.replace(b"\n", b"")))
    # a line still being written is not a record yet
    assert lines_after(text + partial, log[index], at_start=True) == log[index + 1 :]


@given(lines, st.binary(min_size=1, max_size=10))
def test_lines_after_a_cursor_that_is_not_there(log: list[bytes], missing: bytes) -> None:
    text = b"".join(line + b"\n" for line in log)
    if missing.replace(b"\n", b" ") not in log and b"\n" not in missing:
        assert lines_after(text, missing, at_start=True) is None


def test_a_cursor_cut_by_a_chunk_start_is_not_trusted() -> None:
    # without at_start the first (possibly partial) line cannot be the cursor
    assert lines_after(b"abc\ndef\n", b"abc", at_start=False) is None
    assert lines_after(b"abc\ndef\n", b"abc", at_start=True) == [b"def"]
    assert lines_after(b"x\nabc\ndef\n", b"abc", at_start=False) == [b"def"]


def test_recover_lines_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    (tmp_path / "audit.log.1").write_bytes(b"a\nb\nc\n")
    log.write_bytes(b"d\ne\n")
    assert recover_lines(str(log), b"d") == [b"e"]
    assert recover_lines(str(log), b"b") == [b"c", b"d", b"e"]
    assert recover_lines(str(log), b"zz") is None
    big = tmp_path / "big.log"
    big.write_bytes(b"cursor\n" + b"x" * 100 + b"\nlast\n")
    assert recover_lines(str(big), b"cursor", limit=50) is None
    assert recover_lines(str(big), b"cursor", limit=500) == [b"x" * 100, b"last"]


def test_chunked_search_finds_a_cursor_far_back(tmp_path: Path) -> None:
    import auditpy.nats.publisher as publisher

    log = tmp_path / "audit.log"
    body = [f"line {i:06d} ".encode() + b"y" * 40 for i in range(20000)]
    log.write_bytes(b"".join(line + b"\n" for line in body))
    old = publisher.RECOVER_CHUNK
    publisher.RECOVER_CHUNK = 4096  # many chunks; the cursor straddles one boundary or more
    try:
        assert recover_lines(str(log), body[123]) == body[124:]
    finally:
        publisher.RECOVER_CHUNK = old


def test_identities() -> None:
    ids = Identities(NatsConf(node="fallback host"), b"b00t", host="ignored")
    msg_id, line, node = ids.name(b"type=USER msg=audit(1.002:3): x")
    assert line == b"node=fallback_host type=USER msg=audit(1.002:3): x"
    assert node == b"fallback_host"
    assert msg_id.startswith(b"fallback_host:b00t:1.002:3:")
    assert ids.subject(node) == b"audit.fallback_host"
    again, _, _ = ids.name(b"type=USER msg=audit(1.002:3): x")
    assert again == msg_id + b":1"  # an identical line in the same event
    other = Identities(NatsConf(subject="x.{node}.y"), b"b00t", host="h.example")
    _, line, node = other.name(b"node=a.b type=X msg=audit(1.0:1): z")
    assert (line, other.subject(node)) == (b"node=a.b type=X msg=audit(1.0:1): z", b"x.a_b.y")
    _, line, _ = other.name(b"type=X msg=audit(1.0:2): z")
    assert line.startswith(b"node=h.example ")


def test_eoe_is_not_published() -> None:
    assert is_eoe(b"type=EOE msg=audit(1.0:1): ")
    assert is_eoe(b"node=h type=EOE msg=audit(1.0:1): ")
    assert not is_eoe(b"type=EOEX msg=audit(1.0:1): ")
    assert not is_eoe(b"node=h type=SYSCALL msg=audit(1.0:1): type=EOE")
