"""The line format, checked against lines the C auditd wrote for the same kernel records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditpy.proto.records import MAX_LINE, LineFormatter, clean_payload, is_event, type_name

CORPUS = Path(__file__).parent / "data" / "c_auditd_corpus.jsonl"


def corpus() -> list[tuple[int, bytes, bytes | None]]:
    entries = []
    for line in CORPUS.read_text().splitlines():
        item = json.loads(line)
        c_line = base64.b64decode(item["c_line"]) if item["c_line"] else None
        entries.append((item["type"], base64.b64decode(item["payload"]), c_line))
    return entries


def test_corpus_is_large_enough() -> None:
    compared = [c for _t, _p, c in corpus() if c is not None]
    assert len(compared) > 300


@pytest.mark.parametrize("msg_type,payload,c_line", [e for e in corpus() if e[2] is not None])
def test_raw_line_matches_c_auditd(msg_type: int, payload: bytes, c_line: bytes) -> None:
    raw_c = c_line.split(b"\x1d", 1)[0]
    assert LineFormatter().format(msg_type, payload) == raw_c + b"\n"


def test_eoe_is_never_written_but_other_records_are() -> None:
    records = [(t, p) for t, p, _c in corpus()]
    lines = LineFormatter().format_batch(records)
    assert len(lines) == sum(1 for t, _p in records if t != 1320)
    assert not any(line.startswith(b"type=EOE") for line in lines)


def test_every_c_logged_record_has_a_line_and_only_those_missing_are_eoe() -> None:
    for msg_type, _payload, c_line in corpus():
        if c_line is None:
            assert msg_type == 1320 or not is_event(msg_type) or msg_type == 1305


def test_unknown_types_and_node_prefix() -> None:
    assert type_name(1399) == "UNKNOWN[1399]"
    assert type_name(1300) == "SYSCALL"
    line = LineFormatter(node="host_a").format(1399, b"audit(1.002:3): x=1 ")
    assert line == b"node=host_a type=UNKNOWN[1399] msg=audit(1.002:3): x=1\n"


def test_newlines_become_spaces_and_one_trailing_space_goes() -> None:
    assert clean_payload(b"a\nb  ") == b"a b "
    assert LineFormatter().format(1100, b"") == b"type=USER_AUTH msg=lost\n"


def test_event_filter() -> None:
    assert is_event(1005) and is_event(1300) and is_event(2000) and is_event(1100)
    for control in (1000, 1001, 1010, 1011, 1019, 1200, 1299, 1329, 2, 3):
        assert not is_event(control)


@given(st.integers(0, 2**16 - 1), st.binary(max_size=10000))
def test_any_record_gives_one_bounded_line(msg_type: int, payload: bytes) -> None:
    line = LineFormatter(node="n").format(msg_type, payload)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= MAX_LINE + 1


@pytest.mark.parametrize("msg_type,payload,c_line", [e for e in corpus() if e[2] is not None])
def test_enriched_line_matches_c_auditd(msg_type: int, payload: bytes, c_line: bytes) -> None:
    """The corpus was written by the C auditd with log_format = ENRICHED."""
    from auditpy.proto.enrich import Enricher

    assert LineFormatter(enricher=Enricher()).format(msg_type, payload) == c_line + b"\n"
