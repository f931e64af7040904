"""ENRICHED log format: the interpretation suffix the C auditd appends to each RAW line.

With ``log_format = ENRICHED`` the C daemon (audit 3.0.9, ``format_enrich``) parses every RAW
line with libauparse and, for each field whose auparse type is UID, GID, SYSCALL, ARCH or
SOCKADDR, appends ``NAME=interpretation`` after one 0x1D byte.  auditpy must not load
libauparse at run time, so this module re-implements exactly the parts of libauparse that
decide what gets appended:

* how a RAW line is cut into fields (``parse_up_record``: space splitting, the ``msg='``
  prefix, trailing punctuation, virtual keys, the unlabelled AVC fields, empty values);
* which fields are UID/GID/SYSCALL/ARCH/SOCKADDR (field name plus a few record-type rules,
  tabulated from libauparse by ``tools/gen_interp_tables.py``);
* the record-wide state auparse takes from fixed positions (``arch`` at field 2 or 11,
  ``syscall`` at 3 or 12, ``a0`` at 6), which the syscall and arch interpretations use;
* the interpretations themselves, including the odd corners (``unknown(-2)`` for uids,
  ``conversion error(...)``, socketcall/ipc sub-calls, the sockaddr decoder reading the
  buffer layout auparse's unescape leaves behind);
* the "interpretation list": text after a 0x1D inside the record overrides interpretations,
  which matters for hostile user-space records;
* the C formatting: upper-cased names (63 chars max), uid/gid values quoted or hex encoded
  like ``audit_encode_nv_string``, the separator rules and the buffer budget.

The test suite checks all of this against libauparse itself (tests/test_enrich.py).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import time
from collections.abc import Iterator
from itertools import compress, repeat
from operator import eq, methodcaller, ne

from auditpy.proto.interp_tables import (
    ELF_TO_MACHINE,
    FAMILY_NAMES,
    FIELD_KINDS,
    IPC_NAMES,
    KIND_ARCH,
    KIND_GID,
    KIND_OVERRIDES,
    KIND_SOCKADDR,
    KIND_SYSCALL,
    KIND_UID,
    MACHINE_NAMES,
    RTYPE_REMAP,
    SOCKETCALL_NAMES,
    UNAME_TO_MACHINE,
)
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.proto.records import MAX_AUDIT_MESSAGE_LENGTH
from auditpy.proto.syscalls import MACHINES, syscall_names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["FORMAT_BUF_LEN", "INTERP_SEPARATOR", "MIN_SPACE_LEFT", "Enricher"]

#: AUDIT_INTERP_SEPARATOR: the byte between the RAW text and the enrichment.
INTERP_SEPARATOR: Final = b"\x1d"
#: auditd's format buffer: MAX_AUDIT_MESSAGE_LENGTH (8970) + _POSIX_HOST_NAME_MAX (255).
FORMAT_BUF_LEN: Final = MAX_AUDIT_MESSAGE_LENGTH + 255
#: auditd stops appending fields when this little room is left in its buffer.
MIN_SPACE_LEFT: Final = 24
#: Field names are cut to NAME_SIZE - 1 characters.
_NAME_MAX: Final = 63
#: The uid/gid name buffer in libauparse is 64 bytes.
_ID_NAME_MAX: Final = 63

# Record types with special handling in libauparse's record splitter / auditd.
_AUDIT_AVC: Final = 1400
_AUDIT_USER_AVC: Final = 1107
#: auditd flushes the uid/gid caches before ADD_USER and ADD_GROUP records...
_FLUSH_BEFORE: Final = frozenset({1114, 1116})
#: ...and after USER_MGMT, DEL_USER, DEL_GROUP and GRP_MGMT records.
_FLUSH_AFTER: Final = frozenset({1102, 1115, 1117, 1132})
_FLUSHING: Final = _FLUSH_BEFORE | _FLUSH_AFTER

_ULONG_MAX: Final = (1 << 64) - 1
_U32: Final = 0xFFFFFFFF
_MACH_AARCH64: Final = 9  # print_arch trusts the record's machine only up to this value
_AF_LOCAL, _AF_INET, _AF_AX25, _AF_ATMPVC, _AF_X25, _AF_INET6, _AF_NETLINK = 1, 2, 3, 8, 9, 10, 16

_HEX_RUN: Final = re.compile(rb"[0-9A-Fa-f]*").match
_DEC_RUN: Final = re.compile(rb"[0-9]*").match
_C_SPACE: Final = b" \t\n\v\f\r"
#: Bytes that audit_value_needs_encoding accepts unencoded: 0x21..0x7E except '"'.
_SAFE_VALUE_BYTES: Final = bytes(b for b in range(0x21, 0x7F) if b != 0x22)
_CACHE_LIMIT: Final = 4096
#: Estimated length of ``type=X msg=audit(SSSSSSSSSS.MMM:NNNNN): `` minus the type name.
_HEADER_ESTIMATE: Final = len("type= msg=audit(1700000000.000:1000000): ")


def _type_name(msg_type: int) -> bytes:
    name = MSG_TYPE_NAMES.get(msg_type)
    return name.encode() if name is not None else b"UNKNOWN[%d]" % msg_type


def _kinds_for(rtype: int) -> dict[bytes, int]:
    """Field name -> interesting kind for one record type (0/missing: not enriched)."""
    kinds = {k.encode(): v for k, v in FIELD_KINDS.items()}
    for name, kind in KIND_OVERRIDES.get(rtype, {}).items():
        if kind:
            kinds[name.encode()] = kind
        else:
            kinds.pop(name.encode(), None)
    return kinds


_DEFAULT_KINDS: Final = _kinds_for(-1)
_KINDS_BY_RTYPE: Final = {rt: _kinds_for(rt) for rt in KIND_OVERRIDES}
_UPPER_NAMES: Final = {
    name: name.upper()[:_NAME_MAX] + b"="
    for kinds in (_DEFAULT_KINDS, *_KINDS_BY_RTYPE.values())
    for name in kinds
}


def _needles(kinds: dict[bytes, int]) -> tuple[bytes, ...]:
    """Substrings one of which every record with a field to enrich holds: a picked field is
    a ``name=`` in the body, and every name ends in "id" or is arch, syscall or saddr."""
    return tuple(sorted({b"id=" if name.endswith(b"id") else name + b"=" for name in kinds}))


_DEFAULT_NEEDLES: Final = _needles(_DEFAULT_KINDS)
#: By message type as received (before RTYPE_REMAP), for the types that differ.
_NEEDLES_BY_TYPE: Final = {
    msg_type: _needles(_KINDS_BY_RTYPE.get(RTYPE_REMAP.get(msg_type, msg_type), _DEFAULT_KINDS))
    for msg_type in {*RTYPE_REMAP, *_KINDS_BY_RTYPE}
}
#: machine -> {syscall number: name}, made when the machine is first seen
_SYSCALL_BYTES: Final[dict[int, dict[int, bytes]]] = {}
_SOCKETCALL_BYTES: Final = {k: v.encode() for k, v in SOCKETCALL_NAMES.items()}
_IPC_BYTES: Final = {k: v.encode() for k, v in IPC_NAMES.items()}
_MACHINE_BYTES: Final = {k: v.encode() for k, v in MACHINE_NAMES.items()}
_FAMILY_BYTES: Final = {k: v.encode() for k, v in FAMILY_NAMES.items()}


# --------------------------------------------------------------------------- C helpers
def _cstr(data: bytes | bytearray) -> bytes:
    """What C sees of a buffer used as a string: everything before the first NUL."""
    end = data.find(0)
    return bytes(data if end < 0 else data[:end])


def _strtoul(text: bytes, base: int) -> int | None:
    """glibc strtoul/strtoull on a 64-bit system; None where it sets ERANGE.

    Leading white space, a sign and (base 16) a 0x prefix are accepted, parsing stops at the
    first non-digit and no digits at all gives 0, as in C.
    """
    if base == 10 and text.isdigit() and len(text) < 20:
        return int(text)
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and text[i] in b"+-":
        negative = text[i] == 0x2D
        i += 1
    if base == 16:
        if text[i : i + 2] in (b"0x", b"0X") and _hex_run(text, i + 2)[:1]:
            i += 2
        digits = _hex_run(text, i)
    else:
        m = _DEC_RUN(text, i)
        digits = m.group() if m else b""
    if not digits:
        return 0
    value = int(digits, base)
    if value > _ULONG_MAX:
        return None
    return (-value) & _ULONG_MAX if negative else value


def _hex_run(text: bytes, pos: int = 0) -> bytes:
    """The run of hex digits starting at `pos` (isxdigit in the C locale)."""
    m = _HEX_RUN(text, pos)
    return m.group() if m else b""


def _to_int32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


def _hex_decode(hexdigits: bytes) -> bytes:
    """auparse's x2c loop: pairs of hex digits; an odd last digit pairs with the NUL (0)."""
    if len(hexdigits) & 1:
        hexdigits += b"0"
    return bytes.fromhex(hexdigits.decode("ascii"))


def _au_unescape(value: bytes) -> bytes | None:
    """au_unescape() as a C string: "(...)" kept as is, else the leading hex digits decoded;
    None when auparse returns NULL."""
    if value[:1] == b"(":
        end = value.find(b")")
        return None if end < 0 else value[: end + 1]
    digits = _hex_run(value)
    if len(digits) < 2:
        return None
    return _cstr(_hex_decode(digits))


def _print_escaped(value: bytes) -> bytes:
    """print_escaped(): quoted strings lose their quotes, anything else is hex decoded."""
    if value[:1] == b'"':
        end = value.find(b'"', 1)
        return b" " if end < 0 else value[1:end]
    out = _au_unescape(value[2:] if value[:2] == b"00" else value)
    return value if out is None else out


def _encode_value(value: bytes) -> bytes:
    """audit_encode_nv_string's value part: "quoted", or upper-case hex when it needs it."""
    if value.translate(None, _SAFE_VALUE_BYTES):
        return value.hex().upper().encode()
    return b'"' + value + b'"'


# ------------------------------------------------------------------- interpretations
def _arch_interp(value: bytes, machine: int) -> bytes:
    """print_arch(): the record's machine if it is a plain one, else decode this value."""
    if not 0 <= machine <= _MACH_AARCH64:
        ival = _strtoul(value, 16)
        if ival is None:
            return b"conversion error(" + value + b") "
        machine = ELF_TO_MACHINE.get(ival & _U32, -1)
    if machine < 0:
        return b"unknown-elf-type(" + value + b")"
    name = _MACHINE_BYTES.get(machine)
    return name if name is not None else b"unknown-machine-type(%d)" % machine


def _sockaddr_buffer(value: bytes) -> bytearray | None:
    """The buffer au_unescape() hands to print_sockaddr(), byte for byte where C defines it.

    auparse allocates strlen(value)+1 bytes, copies the hex prefix, decodes it in place,
    NUL-terminates the decoded part and zeroes a few bytes after it; the rest keeps the
    undecoded hex characters.  Uninitialised and out-of-bounds bytes are modelled as zero.
    """
    olen = len(value)
    buf = bytearray(olen + 1 + 128)
    if value[:1] == b"(":
        end = value.find(b")")
        if end < 0:
            return None
        buf[: end + 1] = value[: end + 1]
        return buf
    digits = _hex_run(value)
    hlen = len(digits)
    if hlen < 2:
        return None
    buf[:hlen] = digits
    decoded = _hex_decode(digits)
    dlen = len(decoded)
    buf[:dlen] = decoded
    buf[dlen] = 0
    zero = olen // 2 - (dlen - 1)
    if zero > 0:
        buf[dlen : dlen + zero] = bytes(zero)
    return buf


def _inet6_host(buf: bytearray) -> bytes:
    """getnameinfo(NI_NUMERICHOST) for a sockaddr_in6, scope suffix included."""
    addr = bytes(buf[8:24])
    host = socket.inet_ntop(socket.AF_INET6, addr).encode()
    scope = int.from_bytes(buf[24:28], "little")
    if not scope:
        return host
    link_local = addr[0] == 0xFE and (addr[1] & 0xC0) == 0x80
    mc_link_local = addr[0] == 0xFF and (addr[1] & 0x0F) == 0x02
    if link_local or mc_link_local:
        try:
            return host + b"%" + os.fsencode(socket.if_indextoname(scope))
        except OSError:
            pass
    return host + b"%%%d" % scope


def _sockaddr_interp(value: bytes) -> bytes:
    """print_sockaddr() of libauparse 3.0.9."""
    buf = _sockaddr_buffer(value)
    if buf is None:
        return b"malformed-host(" + value + b")"
    slen = len(value) // 2
    family = buf[0] | buf[1] << 8
    fam = _FAMILY_BYTES.get(family)
    if fam is None:
        return b"unknown-family(%d)" % family
    head = b"{ saddr_fam=" + fam
    if family == _AF_LOCAL:
        if slen < 4:
            return head + b" sockaddr len too short }"
        path = _cstr(buf[2:]) if buf[2] else _cstr(buf[3:])
        return head + b" path=" + path[:108] + b" }"
    if family == _AF_INET:
        if slen < 16:
            return head + b" sockaddr len too short }"
        port = buf[2] << 8 | buf[3]
        return head + b" laddr=%d.%d.%d.%d lport=%d }" % (buf[4], buf[5], buf[6], buf[7], port)
    if family == _AF_AX25:
        return _cstr(head + b" call=" + bytes(buf[2:9]) + b" }")
    if family == _AF_ATMPVC:
        return head + b" int=%d }" % int.from_bytes(buf[4:6], "little", signed=True)
    if family == _AF_X25:
        return head + b" laddr=" + _cstr(buf[2:])[:15] + b" }"
    if family == _AF_INET6:
        if slen < 28:
            return head + b" sockaddr6 len too short }"
        port = buf[2] << 8 | buf[3]
        return head + b" laddr=" + _inet6_host(buf) + b" lport=%d }" % port
    if family == _AF_NETLINK:
        if slen < 12:
            return head + b" len too short }"
        pid = int.from_bytes(buf[4:8], "little")
        return head + b" nlnk-fam=%d nlnk-pid=%d }" % (family, pid)
    return head + b" (unsupported) }"


def _virtual_key_count(value: bytes) -> int:
    """How many ``key`` fields auparse makes of a hex-encoded key list (0x01-separated)."""
    keys = _au_unescape(value)
    if keys is None:
        return 1  # malformed: kept as one field
    return sum(1 for k in keys.split(b"\x01") if k)


def _load_interpretations(text: bytes) -> dict[bytes, bytes]:
    """load_interpretation_list(): what follows a 0x1D inside a record overrides auparse's
    own interpretations of the fields it names (the first occurrence wins)."""
    if text.startswith(b"SADDR="):
        brace = text.find(b"{", 6)
        if brace >= 0 and text.find(b"}", brace) >= 0:
            return {b"saddr": text[brace:]}
        return {}
    out: dict[bytes, bytes] = {}
    for tok in text.split(b" "):
        eq = tok.find(b"=")
        if eq >= 0:
            out.setdefault(tok[:eq].lower(), tok[eq + 1 :])
    return out


#: (fields to enrich as (name, value, kind), record machine, record syscall, record a0 text;
#: a0 is only decoded when a socketcall/ipc name needs it)
_Picked = tuple[list[tuple[bytes, bytes, int]], int, int, bytes]


def _strip_value(value: bytes) -> bytes:
    """parse_up_record() drops one trailing ':' then ',' then "'" then ')' (not from
    "(none)"/"(null)")."""
    if value[-1] == 0x3A:  # ":"
        value = value[:-1]
    if value and value[-1] == 0x2C:  # ","
        value = value[:-1]
    if value and value[-1] == 0x27:  # "'"
        value = value[:-1]
    if value and value[-1] == 0x29 and value != b"(none)" and value != b"(null)":
        value = value[:-1]
    return value


def _split_field(name: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """Name and value auparse keeps for one ``name=value`` token, None if it drops it."""
    if name == b"msg":
        c = value[:1]
        if c == b"a":
            return None  # "msg=audit(...)" and anything else starting so
        if c == b"'":
            name, eq, value = value[1:].partition(b"=")
            if not eq:
                return None
    if name[:1] == b"(":
        name = name[1:]
    if not value:
        return None
    return name, _strip_value(value)


def _field_count(name: bytes, value: bytes) -> int:
    """How many auparse fields one kept token becomes (key lists expand, may vanish)."""
    if name == b"key" and value[:1] != b"(" and value[:1] != b'"':
        return _virtual_key_count(value)
    return 1


class _RecordState:
    """Record-wide values auparse records from fixed field positions."""

    __slots__ = ("a0", "machine", "syscall")

    def __init__(self) -> None:
        self.machine = -1
        self.syscall = -1
        self.a0 = b"0"

    def see(self, count: int, name: bytes, value: bytes) -> None:
        """Field number `count` (the header's "type" is 1) is `name=value`."""
        if count == 2 or count == 11:
            if name == b"arch":
                machine = _MACHINE_BY_ARCH_TEXT.get(value)
                if machine is None:
                    ival = _strtoul(value, 16)
                    machine = -2 if ival is None else ELF_TO_MACHINE.get(ival & _U32, -1)
                    if len(_MACHINE_BY_ARCH_TEXT) < _CACHE_LIMIT:
                        _MACHINE_BY_ARCH_TEXT[value] = machine
                self.machine = machine
        elif count == 3 or count == 12:
            if name == b"syscall":
                num = _strtoul(value, 10)
                self.syscall = -1 if num is None else _to_int32(num)
        elif count == 6 and name == b"a0":
            self.a0 = value


#: r->machine for arch values seen (pure function of the text, bounded).
_MACHINE_BY_ARCH_TEXT: dict[bytes, int] = {}


_AUDIT_SYSCALL: Final = 1300
#: Lines shorter than this leave room for every field of a SYSCALL record's suffix.
_ROOMY_LINE: Final = FORMAT_BUF_LEN - 1024
_TOKEN = rb"[^\s\x00\x1d=]+"
#: The layout the kernel gives every SYSCALL record (audit_log_exit); values of the tail
#: are hex-encoded when they hold spaces, so a match leaves no other field to enrich.
_SYSCALL_SHAPE: Final = re.compile(
    rb"arch=(" + _TOKEN + rb") syscall=(\d+) (?:per=[0-9a-f]+ )?success=" + _TOKEN
    + rb" exit=" + _TOKEN + rb"(?: a[0-3]=" + _TOKEN + rb"){4} items=\d+ ppid=\d+ pid=\d+ "
    rb"(auid=\d+ uid=\d+ gid=\d+ euid=\d+ suid=\d+ fsuid=\d+ egid=\d+ sgid=\d+ fsgid=\d+)"
    rb" tty=" + _TOKEN + rb" ses=\d+ comm=[^\s\x00\x1d]+ exe=[^\s\x00\x1d]+"
    rb"(?: subj=[^\s\x00\x1d]+)? key=[^\s\x00\x1d]+\Z"
)

_AUDIT_PROCTITLE: Final = 1327
_count_equals = methodcaller("count", b"=")
#: One search for any needle of a type (see _needles), by message type.
_NEEDLE_SEARCH: dict[int, re.Pattern[bytes]] = {}


def _needle_search(msg_type: int) -> re.Pattern[bytes]:
    found = _NEEDLE_SEARCH.get(msg_type)
    if found is None:
        needles = _NEEDLES_BY_TYPE.get(msg_type, _DEFAULT_NEEDLES)
        found = re.compile(b"|".join(map(re.escape, needles)) if needles else rb"(?!)")
        if len(_NEEDLE_SEARCH) < 4096:
            _NEEDLE_SEARCH[msg_type] = found
    return found


#: A record state nothing was learnt into (shared, never modified).
_NO_STATE: Final = _RecordState()
#: Field numbers at which auparse records arch (2, 11), syscall (3, 12) or a0 (6).
_POSITIONAL: Final = frozenset({2, 3, 6, 11, 12})
#: Last bytes _strip_value may remove.
_TRAILING_PUNCT: Final = b":,')"


def _pick_fast(body: bytes, kinds: dict[bytes, int]) -> _Picked | None:
    """parse_up_record() for the common record shape; None when the record needs the full
    emulation (_pick_by_tokens).

    Records without "msg=", names starting with "(" or empty values split into fields in the
    obvious way; only the first dozen fields need counting (they decide the record's arch,
    syscall and a0), the others are only looked up by name.
    """
    if b"msg=" in body or b" (" in body or b"= " in body or body[:1] == b"(" or body[-1:] == b"=":
        return None
    tokens = body.split(b" ")
    picked: list[tuple[bytes, bytes, int]] = []
    state = _NO_STATE
    count = 1
    i, n = 0, len(tokens)
    while i < n and count < 12:
        name, eq, value = tokens[i].partition(b"=")
        i += 1
        if not eq:
            continue
        if name == b"key" and value[:1] != b"(":
            count += _field_count(name, value)
            continue
        count += 1
        if value[-1] in _TRAILING_PUNCT:
            value = _strip_value(value)
        if count in _POSITIONAL:
            if state is _NO_STATE:
                state = _RecordState()
            state.see(count, name, value)
        kind = kinds.get(name)
        if kind:
            picked.append((name, value, kind))
    if i < n:
        get = kinds.get
        for tok in tokens[i:]:
            name, _, value = tok.partition(b"=")
            kind = get(name)
            if kind and value:
                if value[-1] in _TRAILING_PUNCT:
                    value = _strip_value(value)
                picked.append((name, value, kind))
    return picked, state.machine, state.syscall, state.a0


def _pick_by_tokens(body: bytes, kinds: dict[bytes, int], avc: bool) -> _Picked | None:
    """Token-by-token emulation of parse_up_record(), including the unlabelled SELinux AVC
    result and permission set; None when auparse rejects the record."""
    picked: list[tuple[bytes, bytes, int]] = []
    state = _RecordState()
    count = 1  # the header's "type" field
    tokens = iter(body.split(b" "))
    for tok in tokens:
        if not tok:
            continue
        name, eq, value = tok.partition(b"=")
        if not eq:
            if not avc:
                continue
            if count == 1:
                if not tok.startswith(b"avc"):
                    count += 1  # "seresult"
            elif count == 2 and tok[0] == 0x7B:  # "{"
                total = 0
                for perm in tokens:
                    if not perm:
                        continue
                    if perm[0] == 0x7D:  # "}"
                        break
                    if len(perm) + 1 >= 256 - total:
                        return None  # auparse's 256-byte permission buffer overflows
                    total += len(perm) + (1 if total else 0)
                count += 1  # "seperms"
            continue
        kept = _split_field(name, value)
        if kept is None:
            continue
        name, value = kept
        if name == b"key" and value[:1] != b"(":
            count += _field_count(name, value)
            continue
        count += 1
        if count <= 12:
            state.see(count, name, value)
        kind = kinds.get(name)
        if kind:
            picked.append((name, value, kind))
    return picked, state.machine, state.syscall, state.a0


def _detect_machine() -> int:
    """audit_detect_machine(): the machine this host runs, from uname(2)."""
    return UNAME_TO_MACHINE.get(os.uname().machine, -1)


class Enricher:
    """Computes the ENRICHED suffix of records, owning the uid/gid name caches.

    Names found in the passwd/group databases are cached until `flush_caches` (called around
    user and group management records, as auditd does); failed look-ups are remembered for
    `negative_ttl` seconds only, so that a process storm with an unmapped uid does not hit
    NSS for every field.  libauparse keeps no negative cache; set ``negative_ttl=0`` to
    behave exactly like it.
    """

    def __init__(self, *, negative_ttl: float = 2.0) -> None:
        self.negative_ttl = negative_ttl
        self._uid_values: dict[bytes, bytes] = {}
        self._gid_values: dict[bytes, bytes] = {}
        self._uid_misses: dict[int, float] = {}
        self._gid_misses: dict[int, float] = {}
        self._sockaddr_cache: dict[bytes, bytes] = {}
        self._syscall_suffixes: dict[tuple[bytes, ...], bytes] = {}
        #: the same suffixes by arch, syscall and uid block as text, with the record's
        #: number of spaces (batch_suffixes)
        self._shaped_suffixes: dict[bytes, tuple[int, bytes]] = {}
        self._machine = _detect_machine()

    # ---------------------------------------------------------------- caches
    def flush_caches(self) -> None:
        """Forget every uid/gid name (user or group databases may have changed)."""
        self._uid_values.clear()
        self._gid_values.clear()
        self._uid_misses.clear()
        self._gid_misses.clear()
        self._syscall_suffixes.clear()
        self._shaped_suffixes.clear()

    def _id_value(self, value: bytes, is_gid: bool) -> bytes:
        """Encoded interpretation of a uid/gid field value (print_uid/print_gid)."""
        cache = self._gid_values if is_gid else self._uid_values
        hit = cache.get(value)
        if hit is not None:
            return hit
        number = _strtoul(value, 10)
        cacheable = True
        if number is None:
            name = b"conversion error(" + value + b")"
        else:
            ident = number & _U32
            if ident == _U32:
                name = b"unset"
            else:
                looked = self._lookup_id(ident, is_gid)
                if looked is None:
                    name = b"unknown(%d)" % _to_int32(ident)
                    cacheable = False
                else:
                    name = looked
        encoded = _encode_value(name)
        if cacheable:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[value] = encoded
        return encoded

    def _lookup_id(self, ident: int, is_gid: bool) -> bytes | None:
        misses = self._gid_misses if is_gid else self._uid_misses
        now = time.monotonic()
        missed = misses.get(ident)
        if missed is not None and now - missed < self.negative_ttl:
            return None
        try:
            raw = grp.getgrgid(ident).gr_name if is_gid else pwd.getpwuid(ident).pw_name
        except (KeyError, OverflowError, ValueError):
            if self.negative_ttl > 0:
                if len(misses) >= _CACHE_LIMIT:
                    misses.clear()
                misses[ident] = now
            return None
        misses.pop(ident, None)
        return _cstr(os.fsencode(raw))[:_ID_NAME_MAX]

    def _sockaddr(self, value: bytes) -> bytes:
        hit = self._sockaddr_cache.get(value)
        if hit is not None:
            return hit
        out = _sockaddr_interp(value)
        # inet6 scope names come from the live interface list; do not pin them.
        if b"%" not in out:
            if len(self._sockaddr_cache) >= _CACHE_LIMIT:
                self._sockaddr_cache.clear()
            self._sockaddr_cache[value] = out
        return out

    def _syscall(self, value: bytes, machine: int, syscall: int, a0_text: bytes) -> bytes:
        """print_syscall(): uses the record's machine and syscall number, not this value."""
        if machine < 0:
            machine = self._machine
            if machine < 0:
                return value
        names = _SYSCALL_BYTES.get(machine)
        if names is None:
            names = {} if machine not in MACHINES else _SYSCALL_BYTES.setdefault(
                machine, {nr: n.encode() for nr, n in syscall_names(machine).items()})
        name = names.get(syscall)
        if name is None:
            return b"unknown-syscall(%d)" % syscall
        if name != b"socketcall" and name != b"ipc":
            return name
        parsed_a0 = _strtoul(a0_text, 16)
        a0 = _ULONG_MAX if parsed_a0 is None else parsed_a0
        # C: `(int)a0 == a0`, then a lookup by int; negative calls have no name.
        if a0 < 0x80000000:
            sub = (_SOCKETCALL_BYTES if name == b"socketcall" else _IPC_BYTES).get(a0)
            if sub is not None:
                return name + b"(" + sub + b")"
        return name

    # ---------------------------------------------------------------- main entry
    def suffix(self, msg_type: int, body: bytes | str, *, raw_len: int | None = None) -> bytes:
        """The bytes auditd appends to the RAW line ``type=NAME msg=audit(...): body``.

        `body` is the record text after ``audit(SEC.MSEC:SERIAL): `` as it appears in the RAW
        line (newlines become spaces and a NUL ends it, as in auditd's formatter).
        `raw_len` is the length of the whole RAW line, which bounds how much auditd appends;
        when omitted it is estimated from a usual header.  Returns b"" when nothing is
        appended, else 0x1D followed by the space-separated fields.
        """
        if (
            msg_type == _AUDIT_SYSCALL
            and raw_len is not None
            and raw_len < _ROOMY_LINE
            and isinstance(body, bytes)
            and (shape := _SYSCALL_SHAPE.match(body)) is not None
        ):
            return self._syscall_suffix(shape.groups(), body, raw_len)
        if isinstance(body, bytes) and msg_type not in _FLUSHING:
            # Most records of an event (PROCTITLE, EXECVE, CWD...) have no field to enrich:
            # a few substring tests instead of splitting the record into fields.
            for needle in _NEEDLES_BY_TYPE.get(msg_type, _DEFAULT_NEEDLES):
                if needle in body:
                    break
            else:
                return b""
        if msg_type in _FLUSH_BEFORE:
            self.flush_caches()
        try:
            if isinstance(body, str):
                body = body.encode("utf-8", "surrogateescape")
            if raw_len is None:
                raw_len = _HEADER_ESTIMATE + len(_type_name(msg_type)) + len(body)
            return self._suffix(RTYPE_REMAP.get(msg_type, msg_type), body, raw_len)
        finally:
            if msg_type in _FLUSH_AFTER:
                self.flush_caches()

    def batch_suffixes(
        self, types: list[int], payloads: list[bytes], longest_line: int
    ) -> list[bytes] | None:
        """`suffix` of each kernel record (payloads whole, lines of at most `longest_line`
        bytes that need no cleaning), for a batch that needs nothing per record: SYSCALL
        records of the usual
        shape whose suffix is cached, other types without a needle (most records of an
        event have no field to enrich). None when the batch needs `suffix` record by record
        (a cache miss, a field to enrich, a record that flushes the caches).

        Each test is a C loop over one record type's payloads (regex match, cache lookup,
        needle search), and the results go back in order by one more (one iterator per
        type): none of the ~2 µs of Python per record `suffix` costs.
        """
        kinds = set(types)
        if longest_line >= _ROOMY_LINE or not kinds.isdisjoint(_FLUSHING):
            return None
        per_type: dict[int, Iterator[bytes]] = {}
        for msg_type in kinds:
            group = list(compress(payloads, map(eq, types, repeat(msg_type))))
            if msg_type == _AUDIT_SYSCALL:
                known = [s for s in map(self._known_syscall_suffix, group) if s is not None]
                if len(known) != len(group):
                    return None
                per_type[msg_type] = iter(known)
            elif msg_type == _AUDIT_PROCTITLE:
                # its only "=" is its name's: no needle (each ends in "=") can be in it
                if any(map(ne, map(_count_equals, group), repeat(1))):
                    return None
                per_type[msg_type] = repeat(b"")
            else:
                if any(map(_needle_search(msg_type).search, group)):
                    return None
                per_type[msg_type] = repeat(b"")
        return list(map(next, map(per_type.__getitem__, types)))

    def _known_syscall_suffix(self, payload: bytes) -> bytes | None:
        """The cached suffix of a SYSCALL record the full shape test (_SYSCALL_SHAPE) has
        passed before, found by what the suffix depends on -- arch, syscall and the uid/gid
        block, cut out with four finds instead of a 2 µs regex match -- and the number of
        fields, which the kernel's fixed format keeps for a given shape (its untrusted
        strings come hex-encoded when they hold a space); None when not known."""
        arch = payload.find(b"): arch=")
        success = payload.find(b" success=", arch)
        auid = payload.find(b" auid=", success)
        tty = payload.find(b" tty=", auid)
        if arch < 0 or tty < 0 or b"\x1d" in payload:
            return None
        found = self._shaped_suffixes.get(payload[arch + 3 : success] + payload[auid:tty])
        if found is None or found[0] != payload.count(b" "):
            return None
        return found[1]

    def _syscall_suffix(self, key: tuple[bytes, ...], body: bytes, raw_len: int) -> bytes:
        """The hot path: a kernel SYSCALL record of the usual shape.

        Its suffix depends only on arch, syscall and the uid/gid block (a0 only for
        socketcall/ipc, which are not cached), so a process's records share one entry.
        Suffixes holding a failed name lookup are not kept, so the lookup is retried.
        """
        hit = self._syscall_suffixes.get(key)
        if hit is not None:
            return hit
        out = self._suffix(_AUDIT_SYSCALL, body, raw_len)
        if b"SYSCALL=socketcall" not in out and b"SYSCALL=ipc" not in out and (
            b"unknown(" not in out
        ):
            if len(self._syscall_suffixes) >= _CACHE_LIMIT:
                self._syscall_suffixes.clear()
                self._shaped_suffixes.clear()
            self._syscall_suffixes[key] = out
            # for batch_suffixes: the same, by the text the key was taken from
            success = body.find(b" success=")
            auid = body.find(b" auid=", success)
            tty = body.find(b" tty=", auid)
            if success > 0 and auid > 0 and tty > 0:
                self._shaped_suffixes[body[:success] + body[auid:tty]] = (
                    body.count(b" ") + 1, out)  # + the space after "audit(...):"
        return out

    def _suffix(self, rtype: int, body: bytes, raw_len: int) -> bytes:
        left = FORMAT_BUF_LEN - raw_len
        if left <= MIN_SPACE_LEFT:
            return b""
        if b"\0" in body:
            body = body[: body.index(b"\0")]
        if b"\n" in body:
            body = body.replace(b"\n", b" ")
        interp: dict[bytes, bytes] | None = None
        cut = body.find(b"\x1d")
        if cut >= 0:
            interp = _load_interpretations(body[cut + 1 :]) or None
            body = body[:cut]

        kinds = _KINDS_BY_RTYPE.get(rtype, _DEFAULT_KINDS)
        if rtype in (_AUDIT_AVC, _AUDIT_USER_AVC):
            parsed = _pick_by_tokens(body, kinds, True)
        else:
            parsed = _pick_fast(body, kinds) or _pick_by_tokens(body, kinds, False)
        if parsed is None:
            return b""
        picked, machine, syscall, a0 = parsed
        if not picked:
            return b""

        out: list[bytes] = []
        sep_done = 0
        for name, value, kind in picked:
            if left <= MIN_SPACE_LEFT:
                break
            if sep_done == 0:
                left -= 1
            sep_done += 1
            text = self._field_text(name, value, kind, interp, machine, syscall, a0)
            if len(text) + 2 >= left:
                continue  # auditd skips a field that does not fit, never truncates
            if sep_done > 1:
                text = b" " + text
            out.append(text)
            left -= len(text)
        return INTERP_SEPARATOR + b"".join(out)

    def _field_text(
        self,
        name: bytes,
        value: bytes,
        kind: int,
        interp: dict[bytes, bytes] | None,
        machine: int,
        syscall: int,
        a0: bytes,
    ) -> bytes:
        """``NAME=interpretation`` for one field, as add_simple_field() writes it."""
        label = _UPPER_NAMES.get(name) or name.upper()[:_NAME_MAX] + b"="
        if interp is not None:
            given = interp.get(name)
            if given is not None and not given.startswith(b"unknown-"):
                if kind in (KIND_UID, KIND_GID):
                    return label + _encode_value(_print_escaped(given))
                return label + _cstr(given)
        if kind == KIND_UID:
            return label + self._id_value(value, False)
        if kind == KIND_GID:
            return label + self._id_value(value, True)
        if kind == KIND_SYSCALL:
            return label + self._syscall(value, machine, syscall, a0)
        if kind == KIND_ARCH:
            return label + _arch_interp(value, machine)
        if kind == KIND_SOCKADDR:
            return label + self._sockaddr(value)
        return label + value  # not reached: only the kinds above are picked
