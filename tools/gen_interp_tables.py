#!/usr/bin/env python3
"""Generate the interpretation tables used by auditpy.enrich from the installed libaudit/libauparse.

ENRICHED log lines must match what the C auditd writes byte for byte, and the C daemon takes
its names (syscalls, machines, socket families, field types) from tables compiled into
libaudit and libauparse.  Rather than transcribing those tables by hand, this tool asks the
installed libraries (and ``ausyscall --dump``) at development time and writes plain Python
modules that are committed; the daemon itself never loads libaudit.

Writes:
  src/auditpy/proto/syscalls.py      -- syscall_names(machine)[number] -> name
  src/auditpy/proto/interp_tables.py -- field kinds, machine/arch tables, socket families,
                                        socketcall/ipc sub-call names

Run: python3 tools/gen_interp_tables.py   (needs libaudit.so.1, libauparse.so.0, ausyscall)
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from auditpy.proto.msgtypes import MSG_TYPE_NAMES  # noqa: E402

AUSOURCE_BUFFER = 3
AUPARSE_ESC_RAW = 0
AUPARSE_DESTROY_COMMON = 1
#: auparse field types that ENRICHED output cares about (auparse-defs.h enum order).
INTERESTING_TYPES = {1: "UID", 2: "GID", 3: "SYSCALL", 4: "ARCH", 9: "SOCKADDR"}
#: AUDIT_ARCH_* flag bits (linux/audit.h): 64-bit and little-endian.
ARCH_FLAGS = (0, 0x40000000, 0x80000000, 0xC0000000)
LIBAUPARSE = "/lib/x86_64-linux-gnu/libauparse.so.0"
LIBAUDIT = "/lib/x86_64-linux-gnu/libaudit.so.1"


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    audit = ctypes.CDLL("libaudit.so.1")
    auparse = ctypes.CDLL("libauparse.so.0")
    audit.audit_syscall_to_name.restype = ctypes.c_char_p
    audit.audit_syscall_to_name.argtypes = [ctypes.c_int, ctypes.c_int]
    audit.audit_machine_to_name.restype = ctypes.c_char_p
    audit.audit_machine_to_name.argtypes = [ctypes.c_int]
    audit.audit_name_to_machine.restype = ctypes.c_int
    audit.audit_name_to_machine.argtypes = [ctypes.c_char_p]
    audit.audit_elf_to_machine.restype = ctypes.c_int
    audit.audit_elf_to_machine.argtypes = [ctypes.c_uint]
    audit.audit_name_to_msg_type.restype = ctypes.c_int
    audit.audit_name_to_msg_type.argtypes = [ctypes.c_char_p]
    auparse.auparse_interp_adjust_type.restype = ctypes.c_int
    auparse.auparse_interp_adjust_type.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    auparse.auparse_init.restype = ctypes.c_void_p
    auparse.auparse_init.argtypes = [ctypes.c_int, ctypes.c_void_p]
    for fn in ("auparse_first_record", "auparse_next_field"):
        getattr(auparse, fn).restype = ctypes.c_int
        getattr(auparse, fn).argtypes = [ctypes.c_void_p]
    for fn in ("auparse_get_field_name", "auparse_interpret_field"):
        getattr(auparse, fn).restype = ctypes.c_char_p
        getattr(auparse, fn).argtypes = [ctypes.c_void_p]
    auparse.auparse_set_escape_mode.argtypes = [ctypes.c_void_p, ctypes.c_int]
    auparse.auparse_destroy_ext.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return audit, auparse


def _interpret(auparse: ctypes.CDLL, line: bytes, field: bytes) -> bytes | None:
    """Interpretation libauparse gives to the first field called `field` of one RAW line."""
    buf = ctypes.create_string_buffer(line + b"\n")
    au = auparse.auparse_init(AUSOURCE_BUFFER, buf)
    if not au:
        raise RuntimeError("auparse_init failed")
    try:
        auparse.auparse_set_escape_mode(au, AUPARSE_ESC_RAW)
        rc = auparse.auparse_first_record(au)
        while rc > 0:
            if auparse.auparse_get_field_name(au) == field:
                value: bytes | None = auparse.auparse_interpret_field(au)
                return value
            rc = auparse.auparse_next_field(au)
        return None
    finally:
        auparse.auparse_destroy_ext(au, AUPARSE_DESTROY_COMMON)


def _strings(path: str) -> set[bytes]:
    """Every identifier-like run in a shared object, plus its suffixes (the linker merges
    string tails, so "uid" may only exist as the end of "euid")."""
    data = Path(path).read_bytes()
    out: set[bytes] = set()
    for tok in re.findall(rb"[A-Za-z0-9_\-]{1,48}", data):
        for i in range(len(tok)):
            out.add(tok[i:])
    return out


def field_kinds(auparse: ctypes.CDLL) -> tuple[dict[str, int], dict[int, dict[str, int]]]:
    """Default interesting type per field name and per-record-type deviations from it."""
    candidates = sorted(_strings(LIBAUPARSE))
    probe_vals = (b"0", b'"x"', b"41", b"")
    rtypes = sorted(set(MSG_TYPE_NAMES) | set(range(0, 10000)) | {-1})

    def kind(rtype: int, name: bytes) -> int:
        kinds: set[int] = {auparse.auparse_interp_adjust_type(rtype, name, v) for v in probe_vals}
        kinds = {k if k in INTERESTING_TYPES else 0 for k in kinds}
        if len(kinds) != 1:
            raise RuntimeError(f"type of {name!r} in {rtype} depends on the value: {kinds}")
        only: int = kinds.pop()
        return only

    # Unknown record types get no special treatment in auparse_interp_adjust_type; -1 is what
    # auparse uses when the type name cannot be mapped.
    defaults = {n.decode(): k for n in candidates if (k := kind(-1, n))}
    relevant = [n for n in candidates if n.decode() in defaults]
    # Names that are uninteresting by default can only become interesting through a
    # record-specific override; look for those among all candidates but only for the
    # record types libaudit knows by name (the overrides are keyed on named constants).
    overrides: dict[int, dict[str, int]] = {}
    for rtype in rtypes:
        names: Iterable[bytes] = candidates if rtype in MSG_TYPE_NAMES else relevant
        for n in names:
            k = kind(rtype, n)
            if k != defaults.get(n.decode(), 0):
                overrides.setdefault(rtype, {})[n.decode()] = k
    return defaults, overrides


def machines(audit: ctypes.CDLL) -> tuple[dict[int, str], dict[int, int], dict[str, int]]:
    names: dict[int, str] = {}
    for m in range(0, 64):
        n = audit.audit_machine_to_name(m)
        if n:
            names[m] = n.decode()
    elf: dict[int, int] = {}
    for em in range(0, 0x10000):
        for flags in ARCH_FLAGS:
            m = audit.audit_elf_to_machine(em | flags)
            if m >= 0:
                elf[em | flags] = m
    uname: dict[str, int] = {}
    for s in sorted(_strings(LIBAUDIT)):
        m = audit.audit_name_to_machine(s)
        if m >= 0:
            uname[s.decode()] = m
    return names, elf, uname


def syscalls(audit: ctypes.CDLL, machine_names: dict[int, str]) -> dict[int, dict[int, str]]:
    """Syscall tables from libaudit, cross-checked against `ausyscall <arch> --dump`."""
    out: dict[int, dict[int, str]] = {}
    for m in sorted(machine_names):
        table: dict[int, str] = {}
        for nr in range(-16, 1 << 20):
            n = audit.audit_syscall_to_name(nr, m)
            if n:
                table[nr] = n.decode()
        if not table:
            continue
        out[m] = table
        arch = machine_names[m]
        dump = subprocess.run(
            ["ausyscall", arch, "--dump"], capture_output=True, text=True, check=False
        )
        if dump.returncode == 0:
            listed = {
                int(a): b
                for a, b in (ln.split("\t", 1) for ln in dump.stdout.splitlines() if "\t" in ln)
            }
            if listed != table:
                raise RuntimeError(f"ausyscall {arch} --dump disagrees with libaudit")
    return out


def subcalls(auparse: ctypes.CDLL) -> tuple[dict[int, str], dict[int, str]]:
    """socketcall(2) and ipc(2) sub-call names, read back from libauparse's interpretation of
    i386 SYSCALL records (syscall 102 is socketcall, 117 is ipc)."""

    def scan(nr: int, fn: str) -> dict[int, str]:
        got: dict[int, str] = {}
        for a0 in range(0, 4096):
            line = (
                b"type=SYSCALL msg=audit(1.000:1): arch=40000003 syscall=%d success=yes "
                b"exit=0 a0=%x a1=0" % (nr, a0)
            )
            v = _interpret(auparse, line, b"syscall")
            assert v is not None
            s = v.decode()
            if s != fn:
                m = re.fullmatch(re.escape(fn) + r"\((.*)\)", s)
                if m is None:
                    raise RuntimeError(f"unexpected {s!r}")
                got[a0] = m.group(1)
        return got

    return scan(102, "socketcall"), scan(117, "ipc")


def families(auparse: ctypes.CDLL) -> dict[int, str]:
    out: dict[int, str] = {}
    for fam in range(0, 0x10000):
        hexval = (fam.to_bytes(2, "little") + bytes(30)).hex().upper().encode()
        v = _interpret(auparse, b"type=SOCKADDR msg=audit(1.000:1): saddr=" + hexval, b"saddr")
        assert v is not None
        m = re.match(rb"\{ saddr_fam=(\S+) ", v)
        if m:
            out[fam] = m.group(1).decode()
        elif v != b"unknown-family(%d)" % fam:
            raise RuntimeError(f"unexpected {v!r}")
    return out


def msgtype_rtypes(audit: ctypes.CDLL) -> dict[int, int]:
    """Record types whose name does not map back to the same number (auparse derives the
    record type from the name written in the line)."""
    out: dict[int, int] = {}
    for num, name in MSG_TYPE_NAMES.items():
        back = audit.audit_name_to_msg_type(name.encode())
        if back != num:
            out[num] = back
    return out


def _wrap_items(items: Iterable[str], indent: str, width: int = 99) -> Iterator[str]:
    line = indent
    for it in items:
        piece = it + ","
        if len(line) + len(piece) + 1 > width and line.strip():
            yield line.rstrip()
            line = indent
        line += piece + " "
    if line.strip():
        yield line.rstrip()


def _chunks(words: Iterable[str], width: int) -> list[str]:
    """Space-separated words in strings of at most about `width` characters, each but the
    last ending in a space (adjacent literals make one string)."""
    out: list[str] = []
    line = ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            out.append(line)
            line = ""
        line += word + " "
    if line:
        out.append(line)
    return out


def _dict_lines(
    name: str, ann: str, d: dict[int, str] | dict[int, int] | dict[str, int]
) -> list[str]:
    out = [f"{name}: {ann} = {{"]
    out += _wrap_items((f"{k!r}: {v!r}" for k, v in d.items()), "    ")
    out.append("}")
    return out


def main() -> None:
    audit, auparse = _load()
    machine_names, elf, uname = machines(audit)
    sc = syscalls(audit, machine_names)
    defaults, overrides = field_kinds(auparse)
    sock, ipc = subcalls(auparse)
    fams = families(auparse)
    remap = msgtype_rtypes(audit)

    hdr = [
        "# Generated by tools/gen_interp_tables.py from the installed libaudit/libauparse",
        "# (audit userspace 3.0.9).  Do not edit by hand; rerun the generator.",
    ]
    lines = [
        '"""Syscall number -> name tables per libaudit machine (generated).',
        "",
        "Each machine's table is kept as one string and made into a dict the first time it is",
        "asked for: a process needs one or two machines' names, and a dict of a few hundred",
        "entries per machine is resident memory in every daemon that imports them.",
        '"""',
        "",
        *hdr,
        "",
        "from __future__ import annotations",
        "",
        "__all__ = [\"MACHINES\", \"syscall_names\"]",
        "",
        "# fmt: off",
        "#: machine -> its syscalls as space-separated number and name pairs",
        "_TABLES: dict[int, str] = {",
    ]
    for m, table in sc.items():
        lines.append(f"    {m}: (  # {machine_names[m]}")
        pairs = (f"{k} {v}" for k, v in table.items())
        lines += [f"        {chunk!r}" for chunk in _chunks(pairs, 88)]
        lines.append("    ),")
    lines += [
        "}",
        "# fmt: on",
        "",
        "#: the machines that have a table",
        "MACHINES: tuple[int, ...] = tuple(_TABLES)",
        "_MADE: dict[int, dict[int, str]] = {}",
        "",
        "",
        "def syscall_names(machine: int) -> dict[int, str]:",
        '    """Syscall number -> name for a libaudit machine ({} for one without a table); the',
        '    same dict on every call: callers must not change it."""',
        "    table = _MADE.get(machine)",
        "    if table is None:",
        "        if machine not in _TABLES:",
        "            return {}",
        "        words = _TABLES[machine].split()",
        "        numbers = map(int, words[::2])",
        "        table = _MADE[machine] = dict(zip(numbers, words[1::2], strict=True))",
        "    return table",
        "",
    ]
    (ROOT / "src/auditpy/proto/syscalls.py").write_text("\n".join(lines))

    lines = [
        '"""Interpretation tables for ENRICHED log lines (generated from libaudit/libauparse)."""',
        "",
        *hdr,
        "",
        "# fmt: off",
        "#: auparse field types (auparse-defs.h) that ENRICHED output appends.",
        "KIND_UID = 1",
        "KIND_GID = 2",
        "KIND_SYSCALL = 3",
        "KIND_ARCH = 4",
        "KIND_SOCKADDR = 9",
        "",
        "#: Field name -> kind for any record type without a special rule.",
        *_dict_lines("FIELD_KINDS", "dict[str, int]", defaults),
        "",
        "#: Record type -> {field name: kind (0: not enriched)} where it differs from FIELD_KINDS.",
        "KIND_OVERRIDES: dict[int, dict[str, int]] = {",
    ]
    for rt, d in sorted(overrides.items()):
        lines.append(f"    {rt}: {{")
        lines += _wrap_items((f"{k!r}: {v}" for k, v in sorted(d.items())), "        ")
        lines.append("    },")
    lines += [
        "}",
        "",
        "#: Message types whose name maps back to a different number in libaudit.",
        *_dict_lines("RTYPE_REMAP", "dict[int, int]", remap),
        "",
        "#: libaudit machine number -> name (audit_machine_to_name).",
        *_dict_lines("MACHINE_NAMES", "dict[int, str]", machine_names),
        "",
        "#: AUDIT_ARCH_* value -> libaudit machine (audit_elf_to_machine).",
        "ELF_TO_MACHINE: dict[int, int] = {",
        *_wrap_items((f"0x{k:08x}: {v}" for k, v in sorted(elf.items())), "    "),
        "}",
        "",
        "#: uname(2) machine string -> libaudit machine (audit_name_to_machine).",
        *_dict_lines("UNAME_TO_MACHINE", "dict[str, int]", uname),
        "",
        "#: socketcall(2) call number -> name.",
        *_dict_lines("SOCKETCALL_NAMES", "dict[int, str]", sock),
        "",
        "#: ipc(2) call number -> name.",
        *_dict_lines("IPC_NAMES", "dict[int, str]", ipc),
        "",
        "#: Address family -> name used in saddr_fam=.",
        *_dict_lines("FAMILY_NAMES", "dict[int, str]", fams),
        "# fmt: on",
        "",
    ]
    (ROOT / "src/auditpy/proto/interp_tables.py").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
