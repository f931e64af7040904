"""JSON lines fast: the same bytes as ``dumps(Encoder.render(...))``, at a fraction of the cost.

Why: the JSON output must keep up with pyauditd (tens of thousands of events a second) in
one Python process.  Most of the work of the generic path (fields.py, encode.py) is repeated
on records seen before: a process that makes the same syscall again writes the same SYSCALL
body, an exec of the same program the same EXECVE, PATH, CWD and PROCTITLE records.  So:

* each record's JSON object (without its braces: a *fragment*) is cached by record type and
  body, with what the process table needs from a SYSCALL record (`SyscallFacts`), from the
  second time a body is rendered: records that never repeat (a new pid in every SYSCALL
  record of a fork/exec load) would fill the caches with fragments nobody asks for again;
* a SYSCALL record of the kernel's usual shape is rendered from one regular-expression match
  and a template when it is not in the cache, instead of being split into typed fields;
* the event is assembled by concatenating fragments, and the enrichment (PPID, ENV,
  CONTAINER_INFO...) is added as fragments the caller renders (and caches).

An event this module cannot lay out the same way (a malformed line, several records of a
type that is one object, such as an EXECVE split over records) is left to the generic path:
`layout` returns None.  Caches are bounded and dropped on a configuration change and on user
or group management records (translated names may change).
"""

from __future__ import annotations

import re

from auditpy.events.assemble import AUDIT_EOE, Event, is_last_record
from auditpy.events.encode import (
    AUDIT_SYSCALL,
    SINGLE_TYPES,
    Encoder,
    arch_name,
    dumps,
    syscall_name,
    text,
    type_key,
)
from auditpy.events.lineage import SyscallFacts, syscall_facts
from auditpy.structs import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Layout", "LineRenderer"]

#: Records cached per type before the type's cache is dropped and started afresh.
CACHE_LIMIT: Final = 1024
#: Whole-line tails cached (each holds a line's worth of text).
TAIL_LIMIT: Final = 256
#: User and group management records: names may have changed.
ID_CHANGES: Final = frozenset({1102, 1114, 1115, 1116, 1117, 1132})


class RecordInfo(NamedTuple):
    msg_type: int
    frag: str
    facts: SyscallFacts | None
    #: unique per fragment made (never reused), to key the caches of whole lines;
    #: negative for a fragment that is not cached (its body was not seen before)
    serial: int


class Shape(NamedTuple):
    """How an event's records group: per record type in order of first appearance, the
    positions of its records and whether it is one object (else a list)."""

    groups: tuple[tuple[int, tuple[int, ...], bool], ...]
    has_execve: bool


class Layout(NamedTuple):
    """An event ready to be written."""

    event: Event
    infos: tuple[RecordInfo, ...]
    key: tuple[int, ...]
    shape: Shape
    facts: SyscallFacts | None
    #: a record is not cached: nothing made from the layout is worth caching either
    transient: bool = False

    @property
    def has_execve(self) -> bool:
        return self.shape.has_execve

    @property
    def first_type(self) -> int:
        return self.infos[0].msg_type


# -- the SYSCALL record of the usual shape -----------------------------------------------------

_H = rb"([0-9A-Fa-f]{1,16})"
_D = rb"([0-9]{1,18})"
_S = rb"([^\s\x1d]+)"
#: audit_log_exit()'s layout; every value that could need the generic path (a sign, a long
#: number, a space) makes the match fail and the record goes there.
_SYSCALL: Final = re.compile(
    rb"arch=" + _H + rb" syscall=" + _D + rb" (?:per=" + _H + rb" )?success=" + _S
    + rb" exit=(-?[0-9]{1,18}) a0=" + _H + rb" a1=" + _H + rb" a2=" + _H + rb" a3=" + _H
    + rb" items=" + _D + rb" ppid=" + _D + rb" pid=" + _D
    + rb" (auid=[0-9]{1,18} uid=[0-9]{1,18} gid=[0-9]{1,18} euid=[0-9]{1,18} suid=[0-9]{1,18}"
    rb" fsuid=[0-9]{1,18} egid=[0-9]{1,18} sgid=[0-9]{1,18} fsgid=[0-9]{1,18})"
    rb" tty=" + _S + rb" ses=" + _D + rb" comm=" + _S + rb" exe=" + _S
    + rb"(?: subj=" + _S + rb")? key=" + _S + rb"\Z"
)
_IDS: Final = ("auid", "uid", "gid", "euid", "suid", "fsuid", "egid", "sgid", "fsgid")
_EVEN_HEX: Final = re.compile(rb"(?:[0-9A-Fa-f]{2})+\Z")
_PLAIN_JSON: Final = bytes(b for b in range(0x20, 0x7F) if b not in b'%+"\\')


def _encoded(raw: bytes) -> bytes | None:
    """An encoded field's value (fields.convert for ENCODED names)."""
    if raw[:1] == b'"':
        return raw[1:-1] if len(raw) >= 2 and raw[-1:] == b'"' else raw
    if raw == b"?" or raw == b"(null)":
        return None
    if _EVEN_HEX.match(raw):
        return bytes.fromhex(raw.decode("ascii"))
    if raw[:1] == b"{" and raw[-1:] == b"}":
        return raw[1:-1]
    return raw


def _json_bytes(value: bytes | None) -> str:
    if value is None:
        return "null"
    if not value.translate(None, _PLAIN_JSON):
        return '"' + value.decode("ascii") + '"'
    return dumps(text(value))


class LineRenderer:
    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._caches: dict[int, dict[bytes, RecordInfo]] = {}
        #: per record type, the hashes of bodies rendered once and not cached: a body is
        #: cached the second time it is rendered
        self._seen: dict[int, set[int]] = {}
        self._ids: dict[bytes, str] = {}
        self._names: dict[tuple[int, int], str] = {}
        #: record serials -> Shape, or None when only the generic path can lay it out
        self._shapes: dict[tuple[int, ...], Shape | None] = {}
        #: (record serials, node, extras, incomplete) -> the line after its ID
        self._tails: dict[tuple[object, ...], str] = {}
        self._serial = 0
        #: records rendered (not found in the cache)
        self.misses = 0

    def clear(self) -> None:
        self._caches.clear()
        self._seen.clear()
        self._ids.clear()
        self._names.clear()
        self._shapes.clear()
        self._tails.clear()

    # -- records ------------------------------------------------------------------------

    def record(self, msg_type: int, body: bytes) -> RecordInfo:
        cache = self._caches.get(msg_type)
        if cache is None:
            cache = self._caches[msg_type] = {}
        info = cache.get(body)
        if info is not None:
            return info
        self.misses += 1
        self._serial += 1
        if msg_type in ID_CHANGES:
            self.encoder.names.clear()
            self.clear()
            # its effect must happen every time: never cached
            return self._generic(msg_type, body, -self._serial)
        seen = self._seen.get(msg_type)
        if seen is None:
            seen = self._seen[msg_type] = set()
        digest = hash(body)  # (computed by cache.get above, and kept by the bytes object)
        keep = digest in seen
        if not keep:
            if len(seen) >= CACHE_LIMIT:
                seen.clear()
            seen.add(digest)
        serial = self._serial if keep else -self._serial
        info = None
        if msg_type == AUDIT_SYSCALL:
            info = self._syscall(body, serial)
        if info is None:
            info = self._generic(msg_type, body, serial)
        if keep:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[body] = info
        return info

    def _generic(self, msg_type: int, body: bytes, serial: int) -> RecordInfo:
        encoder = self.encoder
        fields = encoder.fields_of(msg_type, body)
        frag = dumps(encoder.record_object(msg_type, fields))[1:-1]
        facts = syscall_facts(fields) if msg_type == AUDIT_SYSCALL else None
        return RecordInfo(msg_type, frag, facts, serial)

    def _syscall(self, body: bytes, serial: int) -> RecordInfo | None:
        opts = self.encoder.options
        if opts.universal or opts.userdb:
            cut = body.find(b"\x1d")
            if cut >= 0:
                body = body[:cut]
        m = _SYSCALL.match(body)
        if m is None:
            return None
        (arch_t, nr_t, per_t, success_t, exit_t, a0_t, a1_t, a2_t, a3_t, items_t, ppid_t,
         pid_t, ids_t, tty_t, ses_t, comm_t, exe_t, subj_t, key_t) = m.groups()
        arch, nr = int(arch_t, 16), int(nr_t)
        comm, exe, key = _encoded(comm_t), _encoded(exe_t), _encoded(key_t)
        success = _encoded(success_t)
        exit_ = int(exit_t)
        a0 = int(a0_t, 16)
        ids = [int(x.split(b"=", 1)[1]) for x in ids_t.split(b" ")]
        parts = [
            f'"arch":"0x{arch:x}","syscall":{nr},',
            f'"per":"0x{int(per_t, 16):x}",' if per_t is not None else "",
            f'"success":{_json_bytes(success)},"exit":{exit_},"items":{int(items_t)},'
            f'"ppid":{int(ppid_t)},"pid":{int(pid_t)},',
            ",".join(f'"{n}":{v}' for n, v in zip(_IDS, ids, strict=True)),
            f',"tty":{_json_bytes(_encoded(tty_t))},"ses":{int(ses_t)},'
            f'"comm":{_json_bytes(comm)},"exe":{_json_bytes(exe)},',
            f'"subj":{_json_bytes(_encoded(subj_t))},' if subj_t is not None else "",
            f'"key":{_json_bytes(key)},"ARGV":["0x{a0:x}","0x{int(a1_t, 16):x}",'
            f'"0x{int(a2_t, 16):x}","0x{int(a3_t, 16):x}"]',
        ]
        if opts.userdb:
            parts.append(self._translated_ids(ids_t, ids))
        if opts.universal:
            parts.append(self._arch_syscall(arch, nr))
        facts = SyscallFacts(int(pid_t), int(ppid_t), arch, nr, exit_, a0, comm, exe, key,
                             success == b"yes")
        return RecordInfo(AUDIT_SYSCALL, "".join(parts), facts, serial)

    def _translated_ids(self, text_: bytes, ids: list[int]) -> str:
        hit = self._ids.get(text_)
        if hit is None:
            names = self.encoder.names
            hit = "".join(
                f',"{n.upper()}":'
                + dumps(names.user(v) if n[-3] == "u" else names.group(v))
                for n, v in zip(_IDS, ids, strict=True)
            )
            if len(self._ids) >= CACHE_LIMIT:
                self._ids.clear()
            self._ids[text_] = hit
        return hit

    def _arch_syscall(self, arch: int, nr: int) -> str:
        hit = self._names.get((arch, nr))
        if hit is None:
            tail: dict[str, str] = {}
            name = arch_name(arch)
            if name is not None:
                tail["ARCH"] = name
                call = syscall_name(arch, nr)
                if call is not None:
                    tail["SYSCALL"] = call
            hit = ("," + dumps(tail)[1:-1]) if tail else ""
            if len(self._names) >= CACHE_LIMIT:
                self._names.clear()
            self._names[(arch, nr)] = hit
        return hit

    # -- events -------------------------------------------------------------------------

    def layout(self, event: Event) -> Layout | None:
        """The event's fragments and how they group (as the generic path groups records),
        or None when only the generic path can lay it out."""
        caches = self._caches
        infos = []
        facts = None
        for msg_type, body in event.records:
            if msg_type == AUDIT_EOE:
                continue
            cache = caches.get(msg_type)
            info = cache.get(body) if cache is not None else None
            if info is None:
                info = self.record(msg_type, body)
            if info.facts is not None:
                facts = info.facts
            infos.append(info)
        if not infos:
            return None
        key = tuple([info.serial for info in infos])
        if min(key) < 0:
            shape = self._shape(infos)
            return None if shape is None else Layout(event, tuple(infos), key, shape, facts,
                                                      True)
        shapes = self._shapes
        if key in shapes:
            shape = shapes[key]
        else:
            shape = self._shape(infos)
            if len(shapes) >= CACHE_LIMIT:
                shapes.clear()
            shapes[key] = shape
        if shape is None:
            return None
        return Layout(event, tuple(infos), key, shape, facts)

    @staticmethod
    def _shape(infos: list[RecordInfo]) -> Shape | None:
        if infos[0].msg_type == 0:
            return None
        alone = len(infos) == 1 and is_last_record(infos[0].msg_type, live=True)
        order: list[int] = []
        positions: dict[int, list[int]] = {}
        for i, info in enumerate(infos):
            at = positions.get(info.msg_type)
            if at is None:
                positions[info.msg_type] = [i]
                order.append(info.msg_type)
            elif alone or info.msg_type in SINGLE_TYPES:
                return None  # records to merge into one object: the generic path
            else:
                at.append(i)
        groups = tuple((t, tuple(positions[t]), alone or t in SINGLE_TYPES) for t in order)
        return Shape(groups, 1309 in positions)

    def line(self, layout: Layout, syscall_extra: str = "", execve_extra: str = "",
             top_extra: str = "") -> str:
        """The JSON line (no newline); extras are fragments (``"PPID":{...}``)."""
        event = layout.event
        eid = event.eid
        head = '{"ID":' + (f'"{eid}"' if _PLAIN_ID.match(eid) else dumps(eid or None))
        if layout.transient:
            return head + self._tail(layout, syscall_extra, execve_extra, top_extra)
        key = (layout.key, event.node, syscall_extra, execve_extra, top_extra,
               event.incomplete)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tail(layout, syscall_extra, execve_extra, top_extra)
            if len(self._tails) >= TAIL_LIMIT:
                self._tails.clear()
            self._tails[key] = tail
        return head + tail

    @staticmethod
    def _tail(layout: Layout, syscall_extra: str, execve_extra: str, top_extra: str) -> str:
        event = layout.event
        out = []
        if event.node is not None:
            out.append(',"NODE":' + dumps(text(event.node.encode("utf-8", "surrogateescape"))))
        infos = layout.infos
        for msg_type, positions, single in layout.shape.groups:
            key = dumps(type_key(msg_type))
            if single:
                frag = infos[positions[0]].frag
                extra = (syscall_extra if msg_type == AUDIT_SYSCALL
                         else execve_extra if msg_type == 1309 else "")
                if extra:
                    frag = frag + "," + extra if frag else extra
                out.append("," + key + ":{" + frag + "}")
            else:
                out.append("," + key + ":[{" + "},{".join(infos[i].frag for i in positions)
                           + "}]")
        if top_extra:
            out.append("," + top_extra)
        if event.incomplete is not None:
            out.append(',"INCOMPLETE":{"reason":' + dumps(event.incomplete) + "}")
        out.append("}")
        return "".join(out)


_PLAIN_ID: Final = re.compile(r"[0-9.:]+\Z")
