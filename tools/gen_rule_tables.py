#!/usr/bin/env python3
"""Generate src/auditpy/rules/tables.py from the installed libaudit (audit userspace 3.0.9).

pyauditctl must accept the names auditctl accepts and print what `auditctl -l` prints, byte
for byte. The names (fields and their aliases, filter lists, actions, operators, errno names,
file types, file system types, ELF machine values) and the wording of libaudit's rule errors
live in tables compiled into libaudit; this tool asks the library at development time and
writes a plain module that is committed, so that pyauditctl never loads libaudit.

Run: python3 tools/gen_rule_tables.py   (needs libaudit.so.1)
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBAUDIT = "/lib/x86_64-linux-gnu/libaudit.so.1"
OUT = ROOT / "src/auditpy/rules/tables.py"


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libaudit.so.1")
    for fn in ("audit_field_to_name", "audit_flag_to_name", "audit_action_to_name",
               "audit_errno_to_name", "audit_ftype_to_name", "audit_fstype_to_name",
               "audit_operator_to_symbol", "audit_machine_to_name"):
        getattr(lib, fn).restype = ctypes.c_char_p
        getattr(lib, fn).argtypes = [ctypes.c_int]
    for fn in ("audit_name_to_field", "audit_name_to_flag", "audit_name_to_action",
               "audit_name_to_errno", "audit_name_to_ftype", "audit_name_to_fstype"):
        getattr(lib, fn).restype = ctypes.c_int
        getattr(lib, fn).argtypes = [ctypes.c_char_p]
    lib.audit_machine_to_elf.restype = ctypes.c_uint
    lib.audit_machine_to_elf.argtypes = [ctypes.c_int]
    lib.audit_number_to_errmsg.argtypes = [ctypes.c_int, ctypes.c_char_p]
    return lib


def _identifiers() -> list[bytes]:
    data = Path(LIBAUDIT).read_bytes()
    out: set[bytes] = set()
    for tok in re.findall(rb"[a-z0-9_]{2,32}", data):
        for i in range(len(tok)):
            out.add(tok[i:])
    return sorted(out)


def _table(lib: ctypes.CDLL, fn: str, numbers: range) -> dict[int, str]:
    to_name = getattr(lib, fn)
    return {n: s.decode() for n in numbers if (s := to_name(n))}


def _aliases(lib: ctypes.CDLL, fn: str, canonical: dict[int, str]) -> dict[str, int]:
    """Every lower-case name libaudit maps to a number (lookups ignore case)."""
    to_num = getattr(lib, fn)
    names = {v: k for k, v in canonical.items()}
    for cand in _identifiers():
        n = to_num(cand)
        if n >= 0 or (fn == "audit_name_to_fstype" and n != -1):
            names.setdefault(cand.decode(), n & 0xFFFFFFFF if n < 0 else n)
    return dict(sorted(names.items()))


def _error_messages(lib: ctypes.CDLL) -> dict[int, tuple[int, str]]:
    """libaudit's rule error table: (where the option text goes, text).

    audit_number_to_errmsg() writes to stderr; capture it through a temporary file and find
    where the marker option landed: 0 no option, 1 before the text, 2 after it.
    """
    libc = ctypes.CDLL(None)
    marker = "\x01OPT\x01"
    out: dict[int, tuple[int, str]] = {}
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            for number in range(-1, -64, -1):
                tmp.seek(0)
                tmp.truncate()
                libc.fflush(None)
                os.dup2(tmp.fileno(), 2)
                lib.audit_number_to_errmsg(number, marker.encode())
                libc.fflush(None)
                os.dup2(saved, 2)
                tmp.seek(0)
                text = tmp.read().decode()
                if not text:
                    continue
                text = text[:-1] if text.endswith("\n") else text
                if text.startswith(marker + " "):
                    out[-number] = (1, text[len(marker) + 1:])
                elif text.endswith(" " + marker):
                    out[-number] = (2, text[: -len(marker) - 1])
                elif marker not in text:
                    out[-number] = (0, text)
                else:
                    raise RuntimeError(f"unexpected message layout {text!r}")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return out


def _dict(name: str, ann: str, items: dict[int, str] | dict[str, int]
          | dict[int, tuple[int, str]] | dict[int, int], hexkeys: bool = False) -> list[str]:
    lines = [f"{name}: {ann} = {{"]
    for k, v in items.items():
        key = f"0x{k:08x}" if hexkeys and isinstance(k, int) else repr(k)
        val = f"0x{v:08x}" if isinstance(v, int) and name.endswith("_ELF") else repr(v)
        lines.append(f"    {key}: {val},")
    lines.append("}")
    return lines


def main() -> None:
    lib = _lib()
    fields = _table(lib, "audit_field_to_name", range(0, 1024))
    flags = _table(lib, "audit_flag_to_name", range(0, 64))
    actions = _table(lib, "audit_action_to_name", range(0, 16))
    errnos = _table(lib, "audit_errno_to_name", range(1, 4096))
    ftypes = {s.decode(): n for n in range(0, 0o200000, 0o10000)
              if (s := lib.audit_ftype_to_name(n))}
    ops = {n: s.decode() for n in range(0, 0x80000000, 0x08000000)
           if (s := lib.audit_operator_to_symbol(n))}
    fstypes = {k: v for k, v in _aliases(lib, "audit_name_to_fstype", {}).items()}
    machine_elf = {m: e for m in range(0, 64) if (e := lib.audit_machine_to_elf(m))}
    field_names = _aliases(lib, "audit_name_to_field", fields)
    errors = _error_messages(lib)
    lines = [
        '"""Rule tables of libaudit 3.0.9 (generated by tools/gen_rule_tables.py; do not edit)."""',
        "",
        "# fmt: off",
        "#: Field number -> the name `auditctl -l` prints (audit_field_to_name).",
        *_dict("FIELD_NAMES", "dict[int, str]", fields),
        "",
        "#: Every field name auditctl accepts, lower case (lookups ignore case).",
        *_dict("FIELD_BY_NAME", "dict[str, int]", field_names),
        "",
        "#: Filter list number -> name (audit_flag_to_name).",
        *_dict("FILTER_NAMES", "dict[int, str]", flags),
        "",
        "#: Rule action number -> name (audit_action_to_name).",
        *_dict("ACTION_NAMES", "dict[int, str]", actions),
        "",
        "#: Operator bits (fieldflags) -> symbol (audit_operator_to_symbol).",
        *_dict("OPERATOR_SYMBOLS", "dict[int, str]", ops, hexkeys=True),
        "",
        "#: errno number -> name, for -F exit= (audit_errno_to_name).",
        *_dict("ERRNO_NAMES", "dict[int, str]", errnos),
        "",
        "#: -F filetype= names -> S_IFMT bits (audit_name_to_ftype).",
        *_dict("FILE_TYPES", "dict[str, int]", ftypes),
        "",
        "#: -F fstype= names -> file system magic (audit_name_to_fstype).",
        *_dict("FS_TYPES", "dict[str, int]", fstypes),
        "",
        "#: libaudit machine -> AUDIT_ARCH_* value (audit_machine_to_elf).",
        *_dict("MACHINE_ELF", "dict[int, int]", machine_elf),
        "",
        "#: -(libaudit rule error) -> (0: text alone, 1: option then text, 2: text then option;",
        "#: text), as audit_number_to_errmsg() prints them.",
        *_dict("ERROR_MESSAGES", "dict[int, tuple[int, str]]", errors),
        "# fmt: on",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
