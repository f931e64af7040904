"""Whole events in laurel's JSON layout (laurel 0.5.1, ``laurel-about(7)``).

One object per event: ``ID`` (``SEC.MSEC:SERIAL``), ``NODE`` for remote records, then one
key per record type in order of first appearance.  SYSCALL, EXECVE, CWD and PROCTITLE (and
a record that is an event by itself, such as USER_LOGIN) are one object; every other type
is a list of objects, one per record (PATH, SOCKADDR, CONFIG_CHANGE...).  Within a record:

* numbers as the record means them (fields.py): decimal ones as JSON numbers, hexadecimal
  ones as ``"0x..."`` strings, octal ones as ``"0o..."`` strings;
* strings are the record's bytes: printable ASCII and valid UTF-8 as they are, every other
  byte and ``%``, ``+`` percent-encoded (``%0a``, ``%ff``), so the exact bytes can always be
  recovered and nothing is replaced;
* SYSCALL ``a0``..``a3`` become ``ARGV``, a list of hex strings, after the record's fields;
* EXECVE ``a0``, ``a1[0]``, ``a1[1]``... become ``ARGV``, the list of whole arguments (an
  argument split over several records or chunks is joined), and ``ARGV_STR`` on request;
  EXECVE records of one event are one object;
* PROCTITLE becomes ``{"ARGV": [...]}``, split at the NUL bytes;
* with the ``universal`` translation: SYSCALL gets ``ARCH`` and ``SYSCALL`` names after the
  fields, and a decodable SOCKADDR ``saddr`` becomes ``SADDR``, an object
  (``{"saddr_fam": "inet", "addr": "127.0.0.1", "port": 9}``);
* with the ``userdb`` translation: every ``*uid``/``*gid`` field with a number gets an
  upper-case twin with the name (``"AUID": "alice"``, ``"unset"`` for 4294967295,
  ``"unknown(N)"`` without a name).

Pure: user and group names come from functions the caller injects.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from auditpy.events.assemble import AUDIT_EOE, Event, is_last_record
from auditpy.events.fields import Hex, Oct, parse_body
from auditpy.proto.interp_tables import ELF_TO_MACHINE, MACHINE_NAMES
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.proto.syscalls import syscall_names
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from auditpy.events.fields import Value

__all__ = [
    "EncodeOptions",
    "Encoder",
    "Names",
    "Parsed",
    "decode_sockaddr",
    "dumps",
    "fragment",
    "text",
    "type_key",
]

AUDIT_SYSCALL: Final = 1300
AUDIT_CWD: Final = 1307
AUDIT_EXECVE: Final = 1309
AUDIT_SOCKADDR: Final = 1306
AUDIT_PROCTITLE: Final = 1327
#: Record types laurel writes as one object even within a multi-record event.
SINGLE_TYPES: Final = frozenset({AUDIT_SYSCALL, AUDIT_EXECVE, AUDIT_CWD, AUDIT_PROCTITLE})
UNSET_ID: Final = 0xFFFFFFFF

# -- strings ---------------------------------------------------------------------------------

#: Bytes written as they are when the whole value is ASCII: printable, except % and +.
_PLAIN_ASCII: Final = bytes(b for b in range(0x20, 0x7F) if b not in b"%+")
#: Code points percent-encoded after a UTF-8 decode: controls, DEL, % and +, and the
#: surrogate escapes that stand for bytes that are not valid UTF-8.
_PERCENT: Final = {
    **{c: f"%{c:02x}" for c in range(0x20)},
    0x7F: "%7f",
    0x25: "%25",
    0x2B: "%2b",
    **{0xDC00 + b: f"%{b:02x}" for b in range(0x80, 0x100)},
}


def text(data: bytes) -> str:
    """A record's bytes as laurel writes them: text where it is text, percent-encoded bytes
    elsewhere (invalid UTF-8, controls, DEL, and % and + themselves), so that percent-decoding
    the result gives back exactly `data`."""
    if not data.translate(None, _PLAIN_ASCII):
        return data.decode("ascii")
    return data.decode("utf-8", "surrogateescape").translate(_PERCENT)


def type_key(msg_type: int) -> str:
    return MSG_TYPE_NAMES.get(msg_type) or f"UNKNOWN[{msg_type}]"


def _json_value(value: Value) -> Any:
    """A field value as a JSON-ready Python value."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return text(value)
    if isinstance(value, Hex):
        return f"0x{int(value):x}"
    if isinstance(value, Oct):
        return f"0o{int(value):o}"
    if isinstance(value, int):
        return int(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return {k: _json_value(v) for k, v in value.items()}


def fragment(values: dict[str, Value]) -> str:
    """``"key":value,...`` of an object holding field values (no braces)."""
    return dumps({k: _json_value(v) for k, v in values.items()})[1:-1]


def dumps(obj: Any) -> str:
    """Compact JSON with UTF-8 text kept as it is (laurel's serde_json output)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# -- socket addresses ------------------------------------------------------------------------

_AF_LOCAL, _AF_INET, _AF_INET6, _AF_NETLINK, _AF_VSOCK = 1, 2, 10, 16, 40


def decode_sockaddr(data: bytes) -> dict[str, Value] | None:
    """A ``struct sockaddr`` as laurel's SADDR object, None when the family is not one it
    decodes or the buffer is too short for it."""
    if len(data) < 2:
        return None
    family = int.from_bytes(data[:2], "little")
    if family == _AF_LOCAL:
        path = data[2:110]
        # An abstract name (leading NUL) is every byte given; a path ends at its NUL.
        name = path.rstrip(b"\0") if path[:1] == b"\0" else path.split(b"\0", 1)[0]
        return {"saddr_fam": b"local", "path": name}
    if family == _AF_INET and len(data) >= 8:
        return {
            "saddr_fam": b"inet",
            "addr": socket.inet_ntop(socket.AF_INET, data[4:8]).encode(),
            "port": int.from_bytes(data[2:4], "big"),
        }
    if family == _AF_INET6 and len(data) >= 24:
        return {
            "saddr_fam": b"inet6",
            "addr": socket.inet_ntop(socket.AF_INET6, data[8:24]).encode(),
            "port": int.from_bytes(data[2:4], "big"),
            "flowinfo": int.from_bytes(data[4:8], "big"),
            "scope_id": int.from_bytes(data[24:28], "little") if len(data) >= 28 else 0,
        }
    if family == _AF_NETLINK and len(data) >= 12:
        return {
            "saddr_fam": b"netlink",
            "pid": int.from_bytes(data[4:8], "little"),
            "groups": Hex(int.from_bytes(data[8:12], "little")),
        }
    if family == _AF_VSOCK and len(data) >= 12:
        return {
            "saddr_fam": b"vsock",
            "port": int.from_bytes(data[4:8], "little"),
            "cid": int.from_bytes(data[8:12], "little"),
        }
    return None


# -- names -----------------------------------------------------------------------------------


class Names:
    """uid/gid names for the ``userdb`` translation, cached; the look-ups are injected (the
    I/O layer passes pwd/grp, tests pass tables).  A failed look-up is cached too: laurel
    reads the databases once at start; here they are read on first use and `clear` forgets
    them (user and group management records call it)."""

    LIMIT: Final = 4096

    def __init__(
        self,
        user: Callable[[int], str | None] | None = None,
        group: Callable[[int], str | None] | None = None,
    ) -> None:
        self._user = user or (lambda _uid: None)
        self._group = group or (lambda _gid: None)
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def clear(self) -> None:
        self._users.clear()
        self._groups.clear()

    def _name(self, ident: int, is_group: bool) -> str:
        cache = self._groups if is_group else self._users
        hit = cache.get(ident)
        if hit is not None:
            return hit
        if ident == UNSET_ID:
            name = "unset"
        else:
            looked = (self._group if is_group else self._user)(ident)
            name = looked if looked is not None else f"unknown({ident})"
        if len(cache) >= self.LIMIT:
            cache.clear()
        cache[ident] = name
        return name

    def user(self, uid: int) -> str:
        return self._name(uid, False)

    def group(self, gid: int) -> str:
        return self._name(gid, True)


#: User and group management records (after which names may have changed).
_ID_CHANGES: Final = frozenset({1102, 1114, 1115, 1116, 1117, 1132})


@dataclass(frozen=True)
class EncodeOptions:
    """laurel's ``[translate]`` and ``[transform]`` options."""

    #: ARCH, SYSCALL names and SADDR objects
    universal: bool = False
    #: uid/gid names
    userdb: bool = False
    #: EXECVE arguments as the ARGV list
    argv_array: bool = True
    #: EXECVE arguments joined with spaces as ARGV_STR
    argv_string: bool = False


def arch_name(arch: int) -> str | None:
    machine = ELF_TO_MACHINE.get(arch & 0xFFFFFFFF)
    return None if machine is None else MACHINE_NAMES.get(machine)


def syscall_name(arch: int, nr: int) -> str | None:
    machine = ELF_TO_MACHINE.get(arch & 0xFFFFFFFF)
    if machine is None:
        return None
    return syscall_names(machine).get(nr)


class Encoder:
    """Turns events into laurel-layout objects and JSON lines."""

    def __init__(self, options: EncodeOptions | None = None, names: Names | None = None) -> None:
        self.options = options or EncodeOptions()
        self.names = names or Names()

    # -- per record ---------------------------------------------------------------------

    def fields_of(self, msg_type: int, body: bytes) -> list[tuple[str, Value]]:
        """The record's fields; the ENRICHED text after 0x1D is left out when this encoder
        translates itself (as laurel does), else kept as more fields."""
        if self.options.universal or self.options.userdb:
            cut = body.find(b"\x1d")
            if cut >= 0:
                body = body[:cut]
        return parse_body(msg_type, body)

    def _userdb(self, fields: list[tuple[str, Value]]) -> list[tuple[str, Value]]:
        names = self.names
        out: list[tuple[str, Value]] = []
        for name, value in fields:
            if type(value) is int and name.endswith(("uid", "gid")):
                label = names.user(value) if name[-3] == "u" else names.group(value)
                out.append((name.upper(), label.encode("utf-8", "surrogateescape")))
        return out

    def syscall_object(self, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        opts = self.options
        obj: dict[str, Any] = {}
        argv: list[Any] = []
        arch = nr = None
        for name, value in fields:
            if name[0] == "a" and len(name) == 2 and name[1].isdigit():
                argv.append(_json_value(value))
                continue
            if name == "arch" and isinstance(value, Hex):
                arch = int(value)
            elif name == "syscall" and type(value) is int:
                nr = value
            obj[name] = _json_value(value)
        obj["ARGV"] = argv
        if opts.userdb:
            for name, value in self._userdb(fields):
                obj[name] = _json_value(value)
        if opts.universal and arch is not None:
            arch_name_ = arch_name(arch)
            if arch_name_ is not None:
                obj["ARCH"] = arch_name_
                if nr is not None:
                    call = syscall_name(arch, nr)
                    if call is not None:
                        obj["SYSCALL"] = call
        return obj

    def execve_object(self, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        args: dict[int, Value] = {}
        chunks: dict[int, dict[int, bytes]] = {}
        for name, value in fields:
            if name[0] == "a" and name[1:2].isdigit():
                digits = name[1:].split("[", 1)[0].split("_", 1)[0]
                if not digits.isdigit():
                    obj[name] = _json_value(value)
                    continue
                index = int(digits)
                if name.endswith("_len"):
                    continue
                if "[" in name:
                    part = int(name[name.index("[") + 1 : -1])
                    chunks.setdefault(index, {})[part] = value if isinstance(value, bytes) else b""
                else:
                    args[index] = value
                continue
            obj[name] = _json_value(value)
        for index, parts in chunks.items():
            args[index] = b"".join(parts[i] for i in sorted(parts))
        count = max(args) + 1 if args else 0
        argv: list[Value] = [args.get(i) for i in range(count)]
        if self.options.argv_array:
            obj["ARGV"] = [_json_value(a) for a in argv]
        if self.options.argv_string:
            obj["ARGV_STR"] = text(b" ".join(a for a in argv if isinstance(a, bytes)))
        if self.options.userdb:
            for name, value in self._userdb(fields):
                obj[name] = _json_value(value)
        return obj

    def proctitle_object(self, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        for name, value in fields:
            if name == "proctitle" and isinstance(value, bytes):
                parts = value.split(b"\0")
                if parts and not parts[-1] and len(parts) > 1:
                    parts.pop()
                return {"ARGV": [text(p) for p in parts]}
        return {name: _json_value(value) for name, value in fields}

    def sockaddr_object(self, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        decoded = None
        for name, value in fields:
            if name == "saddr" and self.options.universal and isinstance(value, bytes):
                decoded = decode_sockaddr(value)
                if decoded is not None:
                    continue
            obj[name] = _json_value(value)
        if decoded is not None:
            obj["SADDR"] = _json_value(decoded)
        if self.options.userdb:
            for name, value in self._userdb(fields):
                obj[name] = _json_value(value)
        return obj

    def plain_object(self, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        obj = {name: _json_value(value) for name, value in fields}
        if self.options.userdb:
            for name, value in self._userdb(fields):
                obj[name] = _json_value(value)
        return obj

    def record_object(self, msg_type: int, fields: list[tuple[str, Value]]) -> dict[str, Any]:
        if msg_type == AUDIT_SYSCALL:
            return self.syscall_object(fields)
        if msg_type == AUDIT_EXECVE:
            return self.execve_object(fields)
        if msg_type == AUDIT_PROCTITLE:
            return self.proctitle_object(fields)
        if msg_type == AUDIT_SOCKADDR:
            return self.sockaddr_object(fields)
        return self.plain_object(fields)

    # -- per event ----------------------------------------------------------------------

    def parse(self, event: Event) -> Parsed:
        """The event's records as fields, grouped as laurel groups them."""
        parsed = Parsed(event)
        records = [(t, b) for t, b in event.records if t != AUDIT_EOE]
        if len(records) == 1 and records[0][0] == 0:
            parsed.malformed = records[0][1]
            return parsed
        alone = len(records) == 1 and is_last_record(records[0][0], live=True)
        merged, multi, order = parsed.merged, parsed.multi, parsed.order
        for msg_type, body in records:
            fields = self.fields_of(msg_type, body)
            if msg_type in _ID_CHANGES:
                self.names.clear()
            if msg_type in SINGLE_TYPES or alone:
                if msg_type not in merged:
                    merged[msg_type] = []
                    order.append(msg_type)
                merged[msg_type].extend(fields)
            else:
                if msg_type not in multi:
                    multi[msg_type] = []
                    order.append(msg_type)
                multi[msg_type].append(fields)
        return parsed

    def render(
        self,
        parsed: Parsed,
        extra: dict[int, dict[str, Value]] | None = None,
        top: dict[str, Value] | None = None,
    ) -> dict[str, Any]:
        """The event as laurel's JSON object; `extra` adds keys to a record type's object
        (PPID to SYSCALL, ENV to EXECVE), `top` adds keys at the end (CONTAINER_INFO)."""
        event = parsed.event
        obj: dict[str, Any] = {"ID": event.eid or None}
        if event.node is not None:
            obj["NODE"] = text(event.node.encode("utf-8", "surrogateescape"))
        if parsed.malformed is not None:
            obj["MALFORMED"] = {"text": text(parsed.malformed)}
        for msg_type in parsed.order:
            key = type_key(msg_type)
            if msg_type in parsed.merged:
                record = self.record_object(msg_type, parsed.merged[msg_type])
                if extra and msg_type in extra:
                    for name, value in extra[msg_type].items():
                        record[name] = _json_value(value)
                obj[key] = record
            else:
                obj[key] = [self.record_object(msg_type, f) for f in parsed.multi[msg_type]]
        if top:
            for name, value in top.items():
                obj[name] = _json_value(value)
        if event.incomplete is not None:
            obj["INCOMPLETE"] = {"reason": event.incomplete}
        return obj

    def event_object(self, event: Event) -> dict[str, Any]:
        """The event as laurel's JSON object (without process enrichment)."""
        return self.render(self.parse(event))

    def event_line(self, event: Event) -> str:
        return dumps(self.event_object(event))


@dataclass
class Parsed:
    """An event's fields, grouped: one field list per single-object type (records of that
    type joined, as EXECVE records are), a list of field lists per other type."""

    event: Event
    order: list[int] = field(default_factory=list)
    merged: dict[int, list[tuple[str, Value]]] = field(default_factory=dict)
    multi: dict[int, list[list[tuple[str, Value]]]] = field(default_factory=dict)
    malformed: bytes | None = None

    @property
    def syscall(self) -> list[tuple[str, Value]] | None:
        return self.merged.get(AUDIT_SYSCALL)

    @property
    def first_type(self) -> int:
        return self.order[0] if self.order else 0
