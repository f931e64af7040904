"""The golden-file text format (tests/golden.py): lossless, readable, strict when read."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .golden import ENRICHED_FILE, KERNEL_FILE, CapturedRecord, escape, read_corpus, unescape


@given(st.binary(max_size=300))
def test_escape_round_trips_any_bytes_on_one_printable_line(data: bytes) -> None:
    text = escape(data)
    assert unescape(text) == data
    assert text.isascii() and text.isprintable() and not text.endswith(" ")


def test_only_what_cannot_be_read_is_escaped() -> None:
    line = b'type=USER msg=audit(1.0:2): msg=\'a "b"\'\x1dAUID="root" \\ \xc3\xbc\n '
    assert escape(line) == 'type=USER msg=audit(1.0:2): msg=\'a "b"\'\\x1dAUID="root" \\\\ ' \
        "\\xc3\\xbc\\x0a\\x20"


@pytest.mark.parametrize("text", ["a\\", "\\q", "\\x1", "\\X1d", "caf\u00e9"])
def test_a_bad_escape_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        unescape(text)


def write(directory: Path, kernel: str, enriched: str) -> Path:
    (directory / KERNEL_FILE).write_text(kernel)
    (directory / ENRICHED_FILE).write_text(enriched)
    return directory


def test_read_pairs_line_n_with_line_n(tmp_path: Path) -> None:
    corpus = read_corpus(write(tmp_path, "1300 audit(1.0:1): a=1\\x20\n1320 audit(1.0:1):\\x20\n",
                               "type=SYSCALL msg=audit(1.0:1): a=1\\x1dA=b\n-\n"))
    assert corpus == [
        CapturedRecord(1300, b"audit(1.0:1): a=1 ", b"type=SYSCALL msg=audit(1.0:1): a=1\x1dA=b",
                       1),
        CapturedRecord(1320, b"audit(1.0:1): ", None, 2),
    ]
    assert corpus[0].c_raw_line == b"type=SYSCALL msg=audit(1.0:1): a=1"
    assert corpus[1].c_raw_line is None


@pytest.mark.parametrize(
    ("kernel", "enriched", "message"),
    [
        ("1300 a\n1300 b\n", "-\n", "has 2 lines but"),
        ("1300 a\n", "-", "the last line has no newline"),
        ("SYSCALL a\n", "-\n", "kernel.txt:1: no type number"),
        ("1300 a\n1300 a\\q\n", "-\n-\n", "kernel.txt:2: a lone backslash"),
        ("1300 a\n", "type=X\\\n", "enriched.txt:1: a lone backslash"),
    ],
)
def test_read_names_the_file_and_line(
    tmp_path: Path, kernel: str, enriched: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_corpus(write(tmp_path, kernel, enriched))
