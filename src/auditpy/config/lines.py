"""Line and value rules shared by the parsers of the C audit package's `key = value` files
(auditd.conf, plugins.d/*.conf, audispd.conf, audisp-remote.conf)."""

from __future__ import annotations

from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """Case-fold like strcasecmp() in the C locale: ASCII letters only.

    str.lower() would let non-ASCII look-alikes (e.g. KELVIN SIGN) match keywords.
    """
    return text.translate(_ASCII_LOWER)


def bounded_uint(value: str, low: int, high: int) -> int:
    """An unsigned decimal within [low, high] (high at most INT_MAX-sized); ValueError names
    the value and the bound it breaks. Length is checked before int() so that a huge digit
    string costs nothing."""
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"value {value!r} should only be digits")
    if len(value.lstrip("0")) > 10 or int(value) > high:
        raise ValueError(f"value {value} is too large (maximum {high})")
    number = int(value)
    if number < low:
        raise ValueError(f"value {number} is too small (minimum {low})")
    return number


class LineTooLong(ValueError):
    """A line the C parser's buffer would split; auditd.conf only warns about it."""


def _byte_length(text: str) -> int:
    """Bytes of the line as it was in the file (undecodable bytes count one each)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def line_tokens(text: str, max_bytes: int) -> list[str]:
    """The space-separated tokens of one line ([] for a blank line or a comment).

    3.0.9 splits on spaces only. Raises LineTooLong past `max_bytes`, and ValueError for a
    NUL byte (3.0.9 reads the line only up to it) or, outside comments, bytes that are not
    UTF-8 (decoded with surrogateescape by the callers).
    """
    if _byte_length(text) > max_bytes:
        raise LineTooLong(f"line is longer than {max_bytes} bytes")
    if "\0" in text:
        raise ValueError("line contains a NUL byte")
    tokens = [token for token in text.split(" ") if token]
    if not tokens or tokens[0].startswith("#"):
        return []
    if any("\ud800" <= char <= "\udfff" for char in text):
        raise ValueError("line contains bytes that are not valid UTF-8")
    return tokens


class UnterminatedLine(ValueError):
    """A last line without a newline, where the reader follows 3.0.9's auditd.conf parser,
    whose fgets() loop takes it for an over-long line and skips it."""


def token_lines(
    text: str, max_bytes: int, *, last_line_needs_newline: bool = False
) -> Iterator[tuple[int, list[str] | ValueError]]:
    """(line number, tokens) for every line of `text` that holds more than a comment, or
    (line number, the reason) for a line `line_tokens` refuses; lines end at a newline only, as
    fgets() ends them. With `last_line_needs_newline`, an unterminated last line is reported
    as UnterminatedLine instead of read."""
    rows = text.split("\n")
    tail = rows.pop()
    for number, row in enumerate(rows, start=1):
        try:
            tokens = line_tokens(row, max_bytes)
        except ValueError as exc:
            yield number, exc
            continue
        if tokens:
            yield number, tokens
    if not tail:
        return
    number = len(rows) + 1
    if last_line_needs_newline:
        yield number, UnterminatedLine(
            "last line has no newline at the end and is ignored (as auditd does)"
        )
        return
    try:
        tokens = line_tokens(tail, max_bytes)
    except ValueError as exc:
        yield number, exc
        return
    if tokens:
        yield number, tokens
