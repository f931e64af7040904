"""Record bodies into typed fields: the values the record means, not the text it shows.

The audit record format does not say how to read a value: ``mode=0100755`` is octal,
``a0=7ffd`` hexadecimal, ``pid=5924`` decimal, ``comm=6C73`` may be the hex encoding of a
string, and ``key=(null)`` is no value.  Which reading applies depends on the field name, so
the field is classified by name (tables below, after the Linux audit project's field
dictionary and the kernel's untrusted-string fields) and its value converted accordingly:

* decimal fields become ``int``; hexadecimal ones `Hex`, octal ones `Oct` (both ``int``
  subclasses, so they compare as numbers but keep their base for output);
* string fields become ``bytes``: a quoted value loses its quotes, and a field the kernel
  encodes (`ENCODED`) is hex-decoded when it is written as hex; the bytes are kept exactly,
  never decoded to text here, so nothing is replaced or lost;
* ``(null)``, ``?`` and an empty value of a non-numeric field become ``None``;
* a value that does not fit its field's type (``ses=unset``) is kept as its text.

Differences from laurel 0.5.1's parser, each where the record says otherwise: a field that is
not one the kernel encodes is never hex-decoded (laurel turns ``audit_pid=5924`` into the
bytes ``Y$`` and ``id=1000`` into two control bytes), runs of spaces and a trailing space are
accepted (laurel rejects the whole record), a ``msg='...'`` value ends at the record's last
quote (user text may hold quotes; laurel rejects the record), and keys may hold any character
but space, ``=`` and quotes.

Pure functions and tables only; no I/O.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, TypeAlias

    Value: TypeAlias = "int | bytes | list[Value] | dict[str, Value] | None"
    Field: TypeAlias = "tuple[str, Value]"

__all__ = [
    "DEC",
    "ENCODED",
    "HEX",
    "OCT",
    "Hex",
    "Oct",
    "parse_body",
    "split_body",
]


class Hex(int):
    """A number the record writes in hexadecimal (``arch``, ``a0``, capability sets)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Hex(0x{int(self):x})"


class Oct(int):
    """A number the record writes in octal (``mode``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Oct(0o{int(self):o})"


# -- field classes -------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Decimal numbers.
DEC: Final = _words(
    """
    argc audit_backlog_limit audit_backlog_wait_time audit_enabled audit_failure auid capability
    cap_fe changed compat dport egid enforcing entries errno euid exit family fd fe fsgid fsuid
    gid igid ino inode inode_gid inode_uid ipid item items iuid len list lport major minor nargs
    new-enabled new_gid new_lock new-log_passwd nlnk-pid oauid obj_gid obj_uid ogid old-auid
    old-enabled old_enforcing old_lock old-log_passwd old_prom old-ses old_val opid oses ouid
    permissive pid ppid prom proto res rport sauid seqno ses sgid sig sigev_signo spid sport suid
    syscall uid val vm-pid
    """
)
#: Hexadecimal numbers (the syscall arguments a0..a3 of SYSCALL records too).
HEX: Final = _words(
    """
    arch cap_fi cap_fp cap_fver cap_pa cap_pe cap_pi cap_pp code flags fi fp fver ioctlcmd
    old_pa old_pe old_pi old_pp pa pe pi pp per qbytes
    """
)
#: Octal numbers.
OCT: Final = frozenset({"mode"})
#: Strings the kernel (or audit_encode_nv_string) writes quoted, or hex-encoded when they hold
#: a space, a quote or a byte outside 0x21..0x7e.
ENCODED: Final = _words(
    """
    acct addr apparmor cgroup cmd comm cwd data device dir exe file grp invalid_context key name
    new-chardev new-disk new-fs new-net new-rng ocomm old-chardev old-disk old-fs old-net
    old-rng path proctitle root_dir saddr subj success sw tty vm watch
    """
)
#: These keep their number type in every record type; a few names are reused with another
#: meaning by user-space records, but laurel reads them the same way everywhere.
_KIND_DEC, _KIND_HEX, _KIND_OCT, _KIND_ENC, _KIND_ID, _KIND_TEXT = range(6)


def _kind(name: str) -> int:
    if name in DEC:
        return _KIND_DEC
    if name in HEX:
        return _KIND_HEX
    if name in OCT:
        return _KIND_OCT
    if name in ENCODED:
        return _KIND_ENC
    if name.endswith(("uid", "gid")):
        return _KIND_ID
    return _KIND_TEXT


#: Kind by field name, filled as names are seen (bounded: hostile records may invent names).
_KIND_CACHE: dict[str, int] = {}
_KIND_CACHE_LIMIT: Final = 4096

_AUDIT_SYSCALL: Final = 1300
_AUDIT_EXECVE: Final = 1309
_AUDIT_AVC: Final = 1400
_ARG_TYPES: Final = frozenset({_AUDIT_SYSCALL, _AUDIT_EXECVE})

_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_U64_MAX: Final = (1 << 64) - 1

_DEC_RE: Final = re.compile(rb"[-+]?[0-9]+\Z")
_HEX_RE: Final = re.compile(rb"[0-9A-Fa-f]+\Z")
_OCT_RE: Final = re.compile(rb"[0-7]+\Z")
_EVEN_HEX_RE: Final = re.compile(rb"(?:[0-9A-Fa-f]{2})+\Z")
#: SYSCALL's a0..a3 and EXECVE's a0, a0[1], a0_len.
_ARG_KEY: Final = re.compile(r"a[0-9]+(?:\[[0-9]+\]|_len)?\Z")

#: One ``name=value`` pair: the value is "quoted", 'quoted', {braced} or runs to the next
#: space.  Text between pairs that is not one (AVC's "avc:  denied  {", stray words) is
#: skipped by finditer.
_PAIR: Final = re.compile(
    rb"""([^\s="'{}\x1d]+)=("[^"]*"|'[^']*'|\{[^}]*\}|[^ \x1d\n]*)"""
)
_AVC_HEAD: Final = re.compile(rb"\s*avc:\s+(granted|denied)\s+\{([^}]*)\}\s+for\s")


def _number(raw: bytes, kind: int) -> int | None:
    """The number `raw` holds in `kind`'s base, or None when it holds no such number (or one
    outside the 64-bit range laurel accepts)."""
    if kind in (_KIND_DEC, _KIND_ID):
        if _DEC_RE.match(raw):
            n = int(raw)
            if _I64_MIN <= n <= _I64_MAX:
                return n
        return None
    if kind == _KIND_HEX:
        if _HEX_RE.match(raw):
            n = int(raw, 16)
            if n <= _U64_MAX:
                return Hex(n)
        return None
    if _OCT_RE.match(raw):
        n = int(raw, 8)
        if n <= _U64_MAX:
            return Oct(n)
    return None


def _text(raw: bytes) -> bytes | None:
    """A value read as text: quotes and braces removed; ``?``, ``(null)`` and nothing at
    all are no value."""
    if not raw or raw == b"?" or raw == b"(null)":
        return None
    first = raw[0]
    if (first == 0x22 or first == 0x27) and len(raw) >= 2 and raw[-1] == first:
        return raw[1:-1]
    if first == 0x7B and raw[-1] == 0x7D:  # {...}
        return raw[1:-1]
    return raw


def convert(name: str, raw: bytes) -> Value:
    """The value of field `name` written as `raw` in a record."""
    kind = _KIND_CACHE.get(name)
    if kind is None:
        kind = _kind(name)
        if len(_KIND_CACHE) < _KIND_CACHE_LIMIT:
            _KIND_CACHE[name] = kind
    if kind <= _KIND_OCT or kind == _KIND_ID:
        n = _number(raw, kind)
        if n is not None:
            return n
        # A numeric field with other text: kept as that text, as laurel keeps it.
        return _text(raw)
    if kind == _KIND_ENC and raw[:1] != b'"' and _EVEN_HEX_RE.match(raw):
        return bytes.fromhex(raw.decode("ascii"))
    return _text(raw)


def _arg_value(msg_type: int, raw: bytes) -> Value:
    """SYSCALL a0..a3 are hexadecimal; EXECVE arguments are encoded strings."""
    if msg_type == _AUDIT_SYSCALL:
        if _HEX_RE.match(raw):
            n = int(raw, 16)
            if n <= _U64_MAX:
                return Hex(n)
        return raw
    if raw[:1] != b'"' and _EVEN_HEX_RE.match(raw):
        return bytes.fromhex(raw.decode("ascii"))
    return _text(raw)


def split_body(body: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, raw value) pairs of a record body, in order; ENRICHED text after 0x1D is
    read as more pairs (as laurel does)."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    end = len(body)
    match = _PAIR.search
    while pos < end:
        m = match(body, pos)
        if m is None:
            break
        name, raw = m.group(1), m.group(2)
        if name == b"msg" and raw[:1] == b"'":
            # User text may hold quotes: msg='...' ends at the last quote before the end of
            # the record (or before the ENRICHED separator).
            stop = body.find(b"\x1d", m.start(2))
            stop = end if stop < 0 else stop
            close = body.rfind(b"'", m.start(2) + 1, stop)
            if close > m.start(2):
                raw = body[m.start(2) : close + 1]
                out.append((name, raw))
                pos = close + 1
                continue
        out.append((name, raw))
        pos = m.end()
    return out


def parse_body(msg_type: int, body: bytes) -> list[tuple[str, Value]]:
    """Typed fields of one record, in record order.

    AVC records keep their ``granted``/``denied`` permission set as a last field holding a
    list (laurel's layout); MAC_POLICY_LOAD's leading "policy loaded" is not a field.
    """
    fields: list[tuple[str, Value]] = []
    avc: tuple[str, Value] | None = None
    if msg_type == _AUDIT_AVC:
        head = _AVC_HEAD.match(body)
        if head is not None:
            perms: list[Value] = [p for p in head.group(2).split() if p]
            avc = (head.group(1).decode("ascii"), perms)
            body = body[head.end() :]
    for bname, raw in split_body(body):
        name = bname.decode("utf-8", "surrogateescape")
        if name[0] == "a" and msg_type in _ARG_TYPES and _ARG_KEY.match(name):
            if name.endswith("_len"):
                fields.append((name, convert("len", raw)))
            else:
                fields.append((name, _arg_value(msg_type, raw)))
            continue
        fields.append((name, convert(name, raw)))
    if avc is not None:
        fields.append(avc)
    return fields
