"""The line rules shared by the auditd.conf, plugins.d and audisp-remote.conf parsers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditpy.config.lines import LineTooLong, bounded_uint, fold, line_tokens, token_lines


def test_line_tokens_split_on_spaces_only() -> None:
    assert line_tokens("  a =\tb  c ", 100) == ["a", "=\tb", "c"]
    assert line_tokens("", 100) == []
    assert line_tokens("   # x = y", 100) == []


def test_line_tokens_refusals() -> None:
    with pytest.raises(LineTooLong, match="longer than 4 bytes"):
        line_tokens("ab é", 4)  # five bytes in UTF-8
    assert line_tokens("ab c", 4) == ["ab", "c"]
    with pytest.raises(ValueError, match="NUL"):
        line_tokens("a = b\0c", 100)
    with pytest.raises(ValueError, match="NUL"):
        line_tokens("# comment\0", 100)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        line_tokens("a = \udcff", 100)
    assert line_tokens("# \udcff", 100) == []  # comments may hold anything but NUL


def test_token_lines_numbers_every_line_and_reports_bad_ones() -> None:
    text = "# head\n\na = 1\nb = \0\n  c = 2\n"
    got = list(token_lines(text, 100))
    assert [(n, t) for n, t in got if not isinstance(t, ValueError)] == [
        (3, ["a", "=", "1"]),
        (5, ["c", "=", "2"]),
    ]
    bad = [(n, str(t)) for n, t in got if isinstance(t, ValueError)]
    assert bad == [(4, "line contains a NUL byte")]
    # A last line without its newline still counts; carriage returns are not line ends.
    assert list(token_lines("a = 1\r\nb = 2", 100)) == [
        (1, ["a", "=", "1\r"]),
        (2, ["b", "=", "2"]),
    ]


@given(st.lists(st.text(alphabet=" ab#=\n\0", max_size=12), max_size=8))
def test_token_lines_agrees_with_line_tokens(rows: list[str]) -> None:
    text = "\n".join(row.replace("\n", "") for row in rows)
    expected = []
    for number, row in enumerate(text.split("\n"), start=1):
        try:
            tokens = line_tokens(row, 10)
        except ValueError as exc:
            expected.append((number, str(exc)))
            continue
        if tokens:
            expected.append((number, tokens))
    got = [(n, str(t) if isinstance(t, ValueError) else t) for n, t in token_lines(text, 10)]
    # token_lines ignores the empty piece after a final newline; line_tokens gives [] for it
    assert got == expected


def test_fold_is_ascii_only() -> None:
    assert fold("Q_Depth") == "q_depth"
    assert fold("\u212a") == "\u212a"  # KELVIN SIGN is not "k"


@pytest.mark.parametrize(
    ("value", "result"),
    [("0", "too small"), ("1", 1), ("0005", 5), ("10", 10), ("11", "too large"),
     ("99999999999999999999", "too large"), ("-1", "only be digits"), ("\u0661", "only be digits")],
)
def test_bounded_uint(value: str, result: int | str) -> None:
    if isinstance(result, int):
        assert bounded_uint(value, 1, 10) == result
    else:
        with pytest.raises(ValueError, match=result):
            bounded_uint(value, 1, 10)
