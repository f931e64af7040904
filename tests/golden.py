r"""Golden files: what Debian's C auditd did with kernel records, as text a reviewer can read.

A corpus is a directory of two files with one record a line, line N of one belonging to line
N of the other:

``kernel.txt``
    ``TYPE PAYLOAD``: the record's type number (decimal) and its payload as the daemon read
    it from the kernel, e.g. ``1300 audit(1795662851.693:98): arch=c000003e syscall=44 ...``.
``enriched.txt``
    The line the C auditd wrote for that record with ``log_format = ENRICHED``, without its
    newline, or ``-`` where it wrote none (EOE, and its own registration's CONFIG_CHANGE).
    auditd's format_enrich writes format_raw's line and then, if it translates anything,
    the 0x1d separator and the translations; so the part before the first ``\x1d`` is
    exactly the line it writes with ``log_format = RAW``.

Text is bytes, one for one, except three escapes: a byte outside printable ASCII becomes
``\xHH`` (the ENRICHED separator shows as ``\x1d``), a backslash ``\\``, and a space that
ends a line ``\x20``, since editors and diffs hide or strip trailing spaces. The files are
written by tools/capture_corpus.py (``pytest --update-golden``) and never by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KERNEL_FILE = "kernel.txt"
ENRICHED_FILE = "enriched.txt"
NO_LINE = "-"

_ESCAPE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")
_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|\\)|\\")


def escape(data: bytes) -> str:
    """Bytes as one line of text (see the module docstring)."""
    text = _ESCAPE.sub(lambda m: b"\\\\" if m[0] == b"\\" else b"\\x%02x" % m[0][0], data)
    if text.endswith(b" "):
        text = text[:-1] + b"\\x20"
    return text.decode("ascii")


def unescape(text: str) -> bytes:
    """The inverse of escape(); ValueError for a backslash that starts no escape."""

    def one(match: re.Match[str]) -> str:
        if match[1] is None:
            raise ValueError(f"a lone backslash at column {match.start() + 1}")
        return "\\" if match[1] == "\\" else chr(int(match[1][1:], 16))

    if not text.isascii():
        raise ValueError("a byte outside ASCII that is not escaped")
    return _UNESCAPE.sub(one, text).encode("latin-1")


@dataclass(frozen=True)
class CapturedRecord:
    """One kernel record and what the C auditd wrote for it."""

    msg_type: int
    payload: bytes
    #: the ENRICHED line without its newline; None where the daemon wrote no line
    c_line: bytes | None
    #: where it is in the files (1-based), for test ids and messages
    line: int = 0

    @property
    def c_raw_line(self) -> bytes | None:
        """The line the C auditd writes for this record with log_format = RAW."""
        return None if self.c_line is None else self.c_line.split(b"\x1d", 1)[0]


def read_corpus(directory: Path) -> list[CapturedRecord]:
    """Read a corpus; ValueError naming file:line for anything malformed."""
    kernel_path, enriched_path = directory / KERNEL_FILE, directory / ENRICHED_FILE
    kernel = kernel_path.read_text(encoding="ascii").split("\n")
    enriched = enriched_path.read_text(encoding="ascii").split("\n")
    for path, lines in ((kernel_path, kernel), (enriched_path, enriched)):
        if lines.pop() != "":
            raise ValueError(f"{path}: the last line has no newline")
    if len(kernel) != len(enriched):
        raise ValueError(f"{kernel_path} has {len(kernel)} lines but {enriched_path} has "
                         f"{len(enriched)}: line N of one belongs to line N of the other")
    records = []
    for number, (record, written) in enumerate(zip(kernel, enriched, strict=True), 1):
        type_text, _, payload = record.partition(" ")
        if not type_text.isdigit():
            raise ValueError(f"{kernel_path}:{number}: no type number: {record[:40]!r}")
        try:
            body = unescape(payload)
        except ValueError as exc:
            raise ValueError(f"{kernel_path}:{number}: {exc}") from None
        try:
            c_line = None if written == NO_LINE else unescape(written)
        except ValueError as exc:
            raise ValueError(f"{enriched_path}:{number}: {exc}") from None
        records.append(CapturedRecord(int(type_text), body, c_line, number))
    return records


def write_corpus(directory: Path, records: list[CapturedRecord]) -> None:
    """Write a corpus (replacing the files whole, so a failed capture leaves the old one)."""
    if any(r.c_line == NO_LINE.encode() for r in records):
        raise ValueError(f"a line {NO_LINE!r} cannot be told apart from no line")
    directory.mkdir(parents=True, exist_ok=True)
    kernel = "".join(f"{r.msg_type} {escape(r.payload)}\n" for r in records)
    enriched = "".join(
        f"{NO_LINE if r.c_line is None else escape(r.c_line)}\n" for r in records
    )
    for name, text in ((KERNEL_FILE, kernel), (ENRICHED_FILE, enriched)):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text, encoding="ascii")
        tmp.replace(directory / name)
