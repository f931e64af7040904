"""The line format, checked against lines the C auditd wrote for the same kernel records.

The corpus is tests/data/c_auditd/ (format: tests/golden.py): kernel records captured next
to the lines Debian's C auditd 3.0.9 wrote for them with log_format = ENRICHED, whose part
before 0x1d is its RAW line. To capture it afresh from the C daemon on this machine (root,
the kernel's audit system, /sbin/auditd, no audit daemon running) and test against that:

    PYTHONPATH=$PWD/src python3 -m pytest --update-golden tests/test_records.py

(or AUDITPY_UPDATE_GOLDEN=1); tools/capture_corpus.py does the capture. Review the diff of
the golden files like code: every changed line is a change in what the C daemon does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditpy.proto.records import (
    MAX_LINE,
    LineFormatter,
    all_events,
    clean_payload,
    is_event,
    type_name,
)

from .golden import CapturedRecord, read_corpus

CORPUS = read_corpus(Path(__file__).parent / "data" / "c_auditd")
WRITTEN = [pytest.param(r, id=f"line{r.line}") for r in CORPUS if r.c_line is not None]


def test_corpus_is_large_enough() -> None:
    compared = [r for r in CORPUS if r.c_line is not None]
    assert len(compared) > 300


@pytest.mark.parametrize("record", WRITTEN)
def test_raw_line_matches_c_auditd(record: CapturedRecord) -> None:
    assert record.c_raw_line is not None
    assert LineFormatter().format(record.msg_type, record.payload) == record.c_raw_line + b"\n"


def test_eoe_is_never_written_but_other_records_are() -> None:
    records = [(r.msg_type, r.payload) for r in CORPUS]
    lines = LineFormatter().format_batch(records)
    assert len(lines) == sum(1 for t, _p in records if t != 1320)
    assert not any(line.startswith(b"type=EOE") for line in lines)


def test_every_c_logged_record_has_a_line_and_only_those_missing_are_eoe() -> None:
    for record in CORPUS:
        if record.c_line is None:
            assert record.msg_type == 1320 or not is_event(record.msg_type) \
                or record.msg_type == 1305


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


@given(st.lists(st.one_of(st.integers(0, 2**16 - 1), st.integers(990, 1400),
                          st.sampled_from([1006, 1300, 1320, 1329, 1200, 999])), max_size=8))
def test_a_batch_is_all_events_exactly_when_each_record_is(types: list[int]) -> None:
    assert all_events(types) == all(map(is_event, types))


@given(st.integers(0, 2**16 - 1), st.binary(max_size=10000))
def test_any_record_gives_one_bounded_line(msg_type: int, payload: bytes) -> None:
    line = LineFormatter(node="n").format(msg_type, payload)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= MAX_LINE + 1


@pytest.mark.parametrize("record", WRITTEN)
def test_enriched_line_matches_c_auditd(record: CapturedRecord) -> None:
    """The corpus was written by the C auditd with log_format = ENRICHED."""
    from auditpy.proto.enrich import Enricher

    assert record.c_line is not None
    formatter = LineFormatter(enricher=Enricher())
    assert formatter.format(record.msg_type, record.payload) == record.c_line + b"\n"


def test_the_kernel_record_limit_is_defined_once() -> None:
    """MAX_AUDIT_MESSAGE_LENGTH: the kernel's record size, the dispatcher's and the remote
    protocol's payload limit. It was written out three times with two values (8970 and
    8938, the line limit, under one name), so a change to one would not reach the others."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "auditpy"
    places = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in (8970, 8938)
    ]
    assert [place.split(":")[0] for place in places] == ["proto/records.py"], places
