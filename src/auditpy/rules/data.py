"""`struct audit_rule_data`: the kernel's form of an audit rule, as values and as bytes.

A rule is compared, deduplicated and deleted by this form (the kernel does the same), so
`Rule` is a frozen value: two rules are equal exactly when the kernel would call them the
same rule.
"""

from __future__ import annotations

import struct

from auditpy.structs import dataclass, field

# Filter lists (linux/audit.h).
AUDIT_FILTER_USER = 0x00
AUDIT_FILTER_TASK = 0x01
AUDIT_FILTER_ENTRY = 0x02
AUDIT_FILTER_WATCH = 0x03
AUDIT_FILTER_EXIT = 0x04
AUDIT_FILTER_EXCLUDE = 0x05
AUDIT_FILTER_FS = 0x06
AUDIT_FILTER_URING_EXIT = 0x07
AUDIT_FILTER_MASK = 0x07
AUDIT_FILTER_PREPEND = 0x10

# Actions.
AUDIT_NEVER = 0
AUDIT_POSSIBLE = 1
AUDIT_ALWAYS = 2

# Operators (fieldflags).
AUDIT_BIT_MASK = 0x08000000
AUDIT_LESS_THAN = 0x10000000
AUDIT_GREATER_THAN = 0x20000000
AUDIT_NOT_EQUAL = 0x30000000
AUDIT_EQUAL = 0x40000000
AUDIT_BIT_TEST = AUDIT_BIT_MASK | AUDIT_EQUAL
AUDIT_LESS_THAN_OR_EQUAL = AUDIT_LESS_THAN | AUDIT_EQUAL
AUDIT_GREATER_THAN_OR_EQUAL = AUDIT_GREATER_THAN | AUDIT_EQUAL
AUDIT_OPERATORS = AUDIT_EQUAL | AUDIT_NOT_EQUAL | AUDIT_BIT_MASK

# Fields.
AUDIT_PID = 0
AUDIT_UID = 1
AUDIT_EUID = 2
AUDIT_SUID = 3
AUDIT_FSUID = 4
AUDIT_GID = 5
AUDIT_EGID = 6
AUDIT_SGID = 7
AUDIT_FSGID = 8
AUDIT_LOGINUID = 9
AUDIT_PERS = 10
AUDIT_ARCH = 11
AUDIT_MSGTYPE = 12
AUDIT_SUBJ_USER = 13
AUDIT_SUBJ_ROLE = 14
AUDIT_SUBJ_TYPE = 15
AUDIT_SUBJ_SEN = 16
AUDIT_SUBJ_CLR = 17
AUDIT_PPID = 18
AUDIT_OBJ_USER = 19
AUDIT_OBJ_ROLE = 20
AUDIT_OBJ_TYPE = 21
AUDIT_OBJ_LEV_LOW = 22
AUDIT_OBJ_LEV_HIGH = 23
AUDIT_LOGINUID_SET = 24
AUDIT_SESSIONID = 25
AUDIT_FSTYPE = 26
AUDIT_DEVMAJOR = 100
AUDIT_DEVMINOR = 101
AUDIT_INODE = 102
AUDIT_EXIT = 103
AUDIT_SUCCESS = 104
AUDIT_WATCH = 105
AUDIT_PERM = 106
AUDIT_DIR = 107
AUDIT_FILETYPE = 108
AUDIT_OBJ_UID = 109
AUDIT_OBJ_GID = 110
AUDIT_FIELD_COMPARE = 111
AUDIT_EXE = 112
AUDIT_SADDR_FAM = 113
AUDIT_ARG0 = 200
AUDIT_ARG1 = 201
AUDIT_ARG2 = 202
AUDIT_ARG3 = 203
AUDIT_FILTERKEY = 210

AUDIT_PERM_EXEC = 1
AUDIT_PERM_WRITE = 2
AUDIT_PERM_READ = 4
AUDIT_PERM_ATTR = 8
AUDIT_PERM_ALL = AUDIT_PERM_EXEC | AUDIT_PERM_WRITE | AUDIT_PERM_READ | AUDIT_PERM_ATTR

AUDIT_MAX_FIELDS = 64
AUDIT_MAX_KEY_LEN = 256
AUDIT_BITMASK_SIZE = 64
AUDIT_KEY_SEPARATOR = "\x01"
#: PATH_MAX: the longest string value libaudit and the kernel take (paths, labels).
MAX_STRING = 4096

# Kernel feature bits (audit_status.feature_bitmap).
FEATURE_BACKLOG_LIMIT = 0x01
FEATURE_BACKLOG_WAIT_TIME = 0x02
FEATURE_EXECUTABLE_PATH = 0x04
FEATURE_EXCLUDE_EXTEND = 0x08
FEATURE_SESSIONID_FILTER = 0x10
FEATURE_LOST_RESET = 0x20
FEATURE_FILTER_FS = 0x40

ARCH_64BIT = 0x80000000

#: -C comparisons: value -> (left, right) field names as `auditctl -l` prints them.
COMPARISONS: dict[int, tuple[str, str]] = {
    1: ("uid", "obj_uid"), 2: ("gid", "obj_gid"), 3: ("euid", "obj_uid"),
    4: ("egid", "obj_gid"), 5: ("auid", "obj_uid"), 6: ("suid", "obj_uid"),
    7: ("sgid", "obj_gid"), 8: ("fsuid", "obj_uid"), 9: ("fsgid", "obj_gid"),
    10: ("uid", "auid"), 11: ("uid", "euid"), 12: ("uid", "fsuid"), 13: ("uid", "suid"),
    14: ("auid", "fsuid"), 15: ("auid", "suid"), 16: ("auid", "euid"),
    17: ("euid", "suid"), 18: ("euid", "fsuid"), 19: ("suid", "fsuid"),
    20: ("gid", "egid"), 21: ("gid", "fsgid"), 22: ("gid", "sgid"),
    23: ("egid", "fsgid"), 24: ("egid", "sgid"), 25: ("sgid", "fsgid"),
}


def is_string_field(field_id: int) -> bool:
    """Fields whose value travels in `buf` (values[] then holds its length)."""
    return (
        (AUDIT_SUBJ_USER <= field_id <= AUDIT_OBJ_LEV_HIGH and field_id != AUDIT_PPID)
        or field_id in (AUDIT_WATCH, AUDIT_DIR, AUDIT_FILTERKEY, AUDIT_EXE)
    )


@dataclass(frozen=True)
class Field:
    """One `-F`/`-C` condition: field number, operator bits, value (u32), string value."""

    field: int
    op: int
    value: int
    text: bytes | None = None


ALL_SYSCALLS: tuple[int, ...] = (0xFFFFFFFF,) * AUDIT_BITMASK_SIZE
NO_SYSCALLS: tuple[int, ...] = (0,) * AUDIT_BITMASK_SIZE


@dataclass(frozen=True)
class Rule:
    """A rule in the kernel's terms. `filter` is the list number without the prepend bit:
    where a rule goes (-a or -A) is part of the request, not of the rule."""

    filter: int
    action: int
    mask: tuple[int, ...] = NO_SYSCALLS
    fields: tuple[Field, ...] = field(default_factory=tuple)

    @property
    def all_syscalls(self) -> bool:
        """What auditctl calls `-S all`: every word but the last one full."""
        return all(word == 0xFFFFFFFF for word in self.mask[: AUDIT_BITMASK_SIZE - 1])

    def syscalls(self) -> list[int]:
        return [
            word * 32 + bit
            for word, bits in enumerate(self.mask)
            if bits
            for bit in range(32)
            if bits >> bit & 1
        ]

    def field_values(self, field_id: int) -> list[Field]:
        return [f for f in self.fields if f.field == field_id]

    @property
    def keys(self) -> list[str]:
        out: list[str] = []
        for f in self.field_values(AUDIT_FILTERKEY):
            text = (f.text or b"").decode("utf-8", "surrogateescape")
            out += [k for k in text.split(AUDIT_KEY_SEPARATOR) if k]
        return out

    @property
    def arch(self) -> int | None:
        """The AUDIT_ARCH_* value of an `arch=` condition (None: the rule has none)."""
        found = self.field_values(AUDIT_ARCH)
        return found[0].value if found else None


_HEAD = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I")
_ARRAYS = struct.Struct(f"={AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}II")
RULE_DATA_SIZE = _HEAD.size + _ARRAYS.size


class RuleDataError(ValueError):
    """Bytes that are not a well-formed `struct audit_rule_data`."""


def pack_rule(rule: Rule, *, prepend: bool = False) -> bytes:
    if len(rule.fields) > AUDIT_MAX_FIELDS:
        raise RuleDataError(f"{len(rule.fields)} fields, the kernel takes {AUDIT_MAX_FIELDS}")
    fields = [0] * AUDIT_MAX_FIELDS
    values = [0] * AUDIT_MAX_FIELDS
    flags = [0] * AUDIT_MAX_FIELDS
    buf = bytearray()
    for i, f in enumerate(rule.fields):
        fields[i] = f.field
        flags[i] = f.op
        if f.text is not None:
            values[i] = len(f.text)
            buf += f.text
        else:
            values[i] = f.value & 0xFFFFFFFF
    head = _HEAD.pack(
        rule.filter | (AUDIT_FILTER_PREPEND if prepend else 0), rule.action, len(rule.fields),
        *rule.mask,
    )
    return head + _ARRAYS.pack(*fields, *values, *flags, len(buf)) + bytes(buf)


def unpack_rule(data: bytes) -> Rule:
    """The kernel's reply to AUDIT_LIST_RULES (one rule). The prepend bit the kernel may
    echo in `flags` is dropped: see `Rule`."""
    if len(data) < RULE_DATA_SIZE:
        raise RuleDataError(f"{len(data)} bytes, a rule needs at least {RULE_DATA_SIZE}")
    head = _HEAD.unpack_from(data)
    flags, action, count = head[:3]
    mask = tuple(head[3:])
    arrays = _ARRAYS.unpack_from(data, _HEAD.size)
    n = AUDIT_MAX_FIELDS
    if count > n:
        raise RuleDataError(f"field_count {count} is more than {n}")
    buflen = arrays[3 * n]
    buf = data[RULE_DATA_SIZE : RULE_DATA_SIZE + buflen]
    if len(buf) < buflen:
        raise RuleDataError(f"buflen {buflen} but only {len(buf)} bytes follow")
    out: list[Field] = []
    offset = 0
    for i in range(count):
        field_id, value, op = arrays[i], arrays[n + i], arrays[2 * n + i]
        if is_string_field(field_id):
            if offset + value > buflen:
                raise RuleDataError(f"string of field {i} runs past the buffer")
            out.append(Field(field_id, op, value, bytes(buf[offset : offset + value])))
            offset += value
        else:
            out.append(Field(field_id, op, value))
    return Rule(flags & ~AUDIT_FILTER_PREPEND & 0xFF, action, mask, tuple(out))


#: The top 16 bits of the last mask word name syscall classes, not syscalls: the kernel
#: replaces them with the classes' syscalls, so a rule reads back with them cleared.
CLASS_BITS = 0xFFFF0000


def canonical(rule: Rule) -> Rule:
    """The rule as the kernel lists it back after loading it, for comparing a rule file with
    the loaded rules. Exact for every rule auditctl can write with syscall names or `all`
    (class bits only come from `all`, whose other words already hold every class)."""
    last = rule.mask[-1]
    if not last & CLASS_BITS:
        return rule
    return Rule(rule.filter, rule.action, (*rule.mask[:-1], last & ~CLASS_BITS), rule.fields)
