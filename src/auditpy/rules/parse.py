"""auditctl's command language: one line of a rules file (or a command line) to commands.

`parse_args()` follows auditctl 3.0.9 option by option: the same options, the same order
rules (arch before syscalls, a list before fields, a key after a syscall or watch), the same
value syntax (C `strtoul`/`strtol` with base 0, names for users, groups, errno values, file
types, machines) and libaudit's error wording. It is pure: what it would ask the system
(user and group names, whether a watched path is a directory, the machine type, the kernel's
feature bits) comes from an `Environment`, so `--check` gives the same verdict as a load.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
from collections.abc import Callable

from auditpy.proto.interp_tables import UNAME_TO_MACHINE
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.proto.syscalls import syscall_names
from auditpy.rules import data as d
from auditpy.rules.tables import (
    ERRNO_NAMES,
    ERROR_MESSAGES,
    FIELD_BY_NAME,
    FILE_TYPES,
    FS_TYPES,
    MACHINE_ELF,
)
from auditpy.rules.uring import URING_OPS
from auditpy.structs import dataclass, field

#: glibc's AF_MAX: `saddr_fam` values must be below it.
AF_MAX = 46
#: auditctl reads rule files with fgets into a buffer this long.
LINE_SIZE = 6144
NAME_MAX = 255

_MACHINE_BY_ELF = {elf: machine for machine, elf in MACHINE_ELF.items()}
_ERRNO_BY_NAME = {name.lower(): number for number, name in ERRNO_NAMES.items()}
_MSGTYPE_BY_NAME = {name.lower(): number for number, name in MSG_TYPE_NAMES.items()}
@functools.cache
def _syscalls_by_name(machine: int) -> dict[str, int]:
    """Name -> number for one machine, built on first use (pyauditctl starts per command)."""
    return {name.lower(): nr for nr, name in syscall_names(machine).items()}
#: 64-bit libaudit machines and the 32-bit machine `arch=b32` means on them.
_MACHINE_32 = {1: 0, 3: 4, 5: 6, 9: 8}
_MACH_X86, _MACH_86_64, _MACH_PPC64, _MACH_PPC, _MACH_S390X, _MACH_S390 = 0, 1, 3, 4, 5, 6
_MACH_ARM, _MACH_AARCH64, _MACH_PPC64LE = 8, 9, 10

# libaudit error numbers (EAU_*), whose wording tables.ERROR_MESSAGES holds.
EAU_OPMISSING = 1
EAU_FIELDUNKNOWN = 2
EAU_ARCHMISPLACED = 3
EAU_ARCHUNKNOWN = 4
EAU_ELFUNKNOWN = 5
EAU_ARCHBITS = 6
EAU_EXITONLY = 7
EAU_MSGTYPEUNKNOWN = 8
EAU_MSGTYPEEXCLUDEUSER = 9
EAU_STRTOOLONG = 11
EAU_MSGTYPECREDEXCLUDE = 12
EAU_OPEQNOTEQ = 13
EAU_PERMRWXA = 14
EAU_ERRUNKNOWN = 15
EAU_FILETYPEUNKNOWN = 16
EAU_EXITENTRYONLY = 17
EAU_KEYDEP = 19
EAU_FIELDVALMISSING = 20
EAU_FIELDVALNUM = 21
EAU_FIELDNAME = 22
EAU_COMPFIELDNAME = 24
EAU_COMPVAL = 25
EAU_COMPFIELDUNKNOWN = 26
EAU_COMPVALUNKNOWN = 27
EAU_FIELDTOOMANY = 28
EAU_OPEQ = 29
EAU_FIELDNOSUPPORT = 30
EAU_FIELDNOFILTER = 31
EAU_COMPINCOMPAT = 33
EAU_FIELDUNAVAIL = 34
EAU_FILTERNOSUPPORT = 35
EAU_FSTYPEUNKNOWN = 36
EAU_FIELDVALTOOBIG = 37


class RuleError(ValueError):
    """A line auditctl would refuse; the text is auditctl's (the caller adds file:line)."""


def libaudit_message(number: int, opt: str) -> str:
    """audit_number_to_errmsg(): libaudit's wording, with the option text where it goes."""
    position, text = ERROR_MESSAGES.get(number, (2, f"error {number}:"))
    if position == 0:
        return text
    if position == 1:
        return f"{opt} {text}"
    return f"{text} {opt}"


class _LibauditError(Exception):
    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


# -- C number parsing ---------------------------------------------------------------------


def _c_strtol(text: str) -> tuple[int, bool]:
    """C strtol/strtoul with base 0 on `text`: (value, overflowed); stops at the first
    character that is not a digit of the base, like C."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    for ch in s:
        v = digits.find(ch.lower())
        if v < 0:
            break
        n = n * base + v
    return sign * n, n >= 1 << 64


def c_strtoul(text: str) -> int:
    """strtoul() then a store into a u32, as libaudit does."""
    value, overflow = _c_strtol(text)
    if overflow:
        return 0xFFFFFFFF
    return value & 0xFFFFFFFF


def c_strtol(text: str) -> int:
    """strtol() (64-bit long, saturating) then a store into a u32."""
    value, _ = _c_strtol(text)
    value = max(-(1 << 63), min((1 << 63) - 1, value))
    return value & 0xFFFFFFFF


def _isdigit(text: str) -> bool:
    return text[:1].isascii() and text[:1].isdigit()


def _negative_number(text: str) -> bool:
    return len(text) >= 2 and text[0] == "-" and _isdigit(text[1:])


# -- the environment ----------------------------------------------------------------------


def _user_id(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def detect_machine() -> int:
    """audit_detect_machine(): the libaudit machine of this kernel (uname)."""
    return UNAME_TO_MACHINE.get(os.uname().machine, -1)


@dataclass
class Environment:
    """What parsing asks the system. The defaults ask this machine; tests and `--check`
    on another machine's rules can pass their own."""

    machine: int = field(default_factory=detect_machine)
    #: The kernel's audit feature bitmap (libaudit refuses exe=, sessionid=, extended
    #: exclude and filesystem rules on kernels without them).
    features: int = 0x7F
    user_id: Callable[[str], int | None] = _user_id
    group_id: Callable[[str], int | None] = _group_id
    is_dir: Callable[[str], bool] = _is_dir


# -- commands -----------------------------------------------------------------------------


@dataclass
class Command:
    """One thing a line asks for. `op` is one of: add, delete, list, status, delete_all,
    enable, failure, rate, backlog, backlog_wait_time, reset_lost,
    reset_backlog_wait_time_actual, loginuid_immutable, message, signal, ignore_errors,
    continue_errors, version, help, trim, make_equivalent, rules_file, deprecated."""

    op: str
    rule: d.Rule | None = None
    prepend: bool = False
    value: int = 0
    text: str = ""
    interpret: bool = False


@dataclass
class Parsed:
    commands: list[Command]
    #: auditctl's warnings (printed, not fatal): 32/64-bit syscall mismatch, paths.
    warnings: list[str]
    #: argv as auditctl saw it, for messages.
    args: list[str]


# -- line splitting -----------------------------------------------------------------------


def split_rule_line(line: str) -> list[str] | None:
    """A rules-file line as auditctl splits it: on single spaces (tabs stay in tokens),
    `\\ ` is a space inside a token and `\\\\` a backslash (not in the first token);
    None for blank lines and comments."""
    if not line.strip(" "):
        return None
    esc_space, esc_slash = "\x07", "\x04"
    chars = list(line)
    escaped = False
    for i, ch in enumerate(chars):
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if escaped:
            if ch == " ":
                chars[i - 1] = chars[i] = esc_space
            elif ch == "\\":
                chars[i - 1] = chars[i] = esc_slash
            escaped = False
    tokens = [t for t in "".join(chars).split(" ") if t]
    if not tokens or tokens[0].startswith("#"):
        return None
    out = [tokens[0]]
    for tok in tokens[1:]:
        out.append(tok.replace(esc_space * 2, " ").replace(esc_slash * 2, "\\"))
    return out


# -- option scanning (getopt_long with auditctl's option string) ---------------------------

_SHORT_WITH_ARG = set("CefrbaAdSFmRwWkpq")
_SHORT_FLAGS = set("hicslDvt")
_LONG = {
    "loginuid-immutable": False,
    "backlog_wait_time": True,
    "reset-lost": False,
    "reset_backlog_wait_time_actual": False,
    "signal": True,
}


@dataclass
class _Opt:
    name: str  # one letter, a long option's name, or "?" for an invalid one
    arg: str | None
    index: int  # argv index of the option, for "Option %s is invalid"


def _scan(args: list[str]) -> tuple[list[_Opt], list[int]]:
    """Options in order and the argv indexes of non-option words (GNU getopt permutes
    those to the end; auditctl refuses them)."""
    opts: list[_Opt] = []
    loose: list[int] = []
    i = 1
    while i < len(args):
        word = args[i]
        if word == "--":
            loose += range(i + 1, len(args))
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            matches = [n for n in _LONG if n == name] or [n for n in _LONG if n.startswith(name)]
            if len(matches) != 1 or not name:
                opts.append(_Opt("?", None, i))
                i += 1
                continue
            long_name = matches[0]
            if _LONG[long_name]:
                if eq:
                    opts.append(_Opt(long_name, value, i))
                elif i + 1 < len(args):
                    opts.append(_Opt(long_name, args[i + 1], i + 1))
                    i += 1
                else:
                    opts.append(_Opt("?", None, i))
            else:
                opts.append(_Opt(long_name if not eq else "?", None, i))
            i += 1
            continue
        if not word.startswith("-") or word == "-":
            loose.append(i)
            i += 1
            continue
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in _SHORT_WITH_ARG:
                if j + 1 < len(word):
                    opts.append(_Opt(letter, word[j + 1 :], i))
                elif i + 1 < len(args):
                    opts.append(_Opt(letter, args[i + 1], i + 1))
                    i += 1
                else:
                    opts.append(_Opt("?", None, i))
                break
            opts.append(_Opt(letter if letter in _SHORT_FLAGS else "?", None, i))
            j += 1
        i += 1
    return opts, loose


# -- the rule being built -----------------------------------------------------------------

_UNSET = -1


@dataclass
class _Builder:
    env: Environment
    filter: int = _UNSET  # -a/-A list
    delete_filter: int = _UNSET  # -d list
    prepend: bool = False
    action: int = _UNSET
    exclude: bool = False
    multiple: int = 0
    syscall_added: bool = False
    perm_added: bool = False
    exe_added: bool = False
    fs_added: bool = False
    elf: int = 0
    mask: list[int] = field(default_factory=lambda: [0] * d.AUDIT_BITMASK_SIZE)
    fields: list[d.Field] = field(default_factory=list)
    key: str = ""

    @property
    def list_flags(self) -> int:
        """The `flags` libaudit checks fields against: the list, or -1 when none given."""
        if self.filter != _UNSET:
            return self.filter
        if self.delete_filter != _UNSET:
            return self.delete_filter
        return _UNSET

    # -- -a / -A / -d ---------------------------------------------------------------------

    def setup(self, opt: str, *, delete: bool) -> int:
        """audit_rule_setup(): 0 ok, 1 'possible' (deprecated), 2 bad keyword, 3 twice."""
        self.multiple += 1
        if self.multiple != 1:
            return 3
        first, comma, second = opt.partition(",")
        if not comma or "," in second:
            return 2
        filt, action = _UNSET, _UNSET
        names = {"always": d.AUDIT_ALWAYS, "never": d.AUDIT_NEVER}
        if first in names:
            action = names[first]
        elif first == "possible":
            return 2  # auditctl then finds no action: a bad keyword, not a deprecation
        else:
            number = _filter_number(first)
            if number is None:
                return 2
            filt = number
        if filt == _UNSET:
            found = _filter_number(second)
            if found is None:
                return 2
            filt = found
        elif second in names:
            action = names[second]
        elif second == "possible":
            return 1
        else:
            return 2
        if action == _UNSET:
            return 2
        if filt == d.AUDIT_FILTER_EXCLUDE:
            self.exclude = True
        if delete:
            self.delete_filter = filt
        else:
            self.filter = filt
        self.action = action
        return 0

    # -- -S -----------------------------------------------------------------------------

    def machine(self) -> int:
        if self.elf:
            return _MACHINE_BY_ELF.get(self.elf, -1)
        return self.env.machine

    def add_syscalls(self, text: str, mask: list[int] | None = None) -> None:
        """_audit_parse_syscall(): a comma list of names, numbers or `all`."""
        target = self.mask if mask is None else mask
        for name in text.split(","):
            if not name:
                continue
            if name == "all":
                target[:] = [0xFFFFFFFF] * d.AUDIT_BITMASK_SIZE
                continue
            machine = self.machine()
            if machine < 0:
                raise RuleError(f"Elf type unknown: 0x{self.elf:x}")
            nr = _syscalls_by_name(machine).get(name.lower(), -1)
            if nr < 0 and _isdigit(name):
                nr = c_strtol(name)
                nr = nr - (1 << 32) if nr >= 1 << 31 else nr
            if nr < 0 or nr // 32 > d.AUDIT_BITMASK_SIZE - 1:
                raise RuleError(f"Syscall name unknown: {text}")
            target[nr // 32] |= 1 << (nr % 32)

    def add_uring_ops(self, text: str) -> None:
        """-S on the io_uring list: operation names or numbers, or `all` (audit 3.1's
        audit_rule_io_uringbyname_data); no architecture is involved."""
        for name in text.split(","):
            if not name:
                continue
            if name == "all":
                self.mask[:] = [0xFFFFFFFF] * d.AUDIT_BITMASK_SIZE
                continue
            nr = URING_OPS.get(name.lower(), -1)
            if nr < 0 and _isdigit(name):
                nr = c_strtol(name)
            if nr < 0 or nr // 32 > d.AUDIT_BITMASK_SIZE - 1:
                raise RuleError(f"io_uring operation name unknown: {text}")
            self.mask[nr // 32] |= 1 << (nr % 32)

    # -- -F -----------------------------------------------------------------------------

    def fieldpair(self, pair: str, flags: int) -> None:
        """audit_rule_fieldpair_data(); raises _LibauditError with libaudit's number."""
        if len(self.fields) >= d.AUDIT_MAX_FIELDS - 1:
            raise _LibauditError(EAU_FIELDTOOMANY)
        name, op, v = _split_operator(pair)
        if op is None:
            raise _LibauditError(EAU_OPMISSING)
        if not name:
            raise _LibauditError(EAU_FIELDNAME)
        if not v:
            raise _LibauditError(EAU_FIELDVALMISSING)
        fid = FIELD_BY_NAME.get(name.lower(), -1)
        if fid < 0:
            raise _LibauditError(EAU_FIELDUNKNOWN)
        features = self.env.features
        if flags == d.AUDIT_FILTER_EXCLUDE:
            if not features & d.FEATURE_EXCLUDE_EXTEND:
                if fid != d.AUDIT_MSGTYPE:
                    raise _LibauditError(EAU_FIELDNOSUPPORT)
            elif fid not in (
                d.AUDIT_PID, d.AUDIT_UID, d.AUDIT_GID, d.AUDIT_LOGINUID, d.AUDIT_MSGTYPE,
                d.AUDIT_SUBJ_USER, d.AUDIT_SUBJ_ROLE, d.AUDIT_SUBJ_TYPE, d.AUDIT_SUBJ_SEN,
                d.AUDIT_SUBJ_CLR,
            ):
                raise _LibauditError(EAU_MSGTYPECREDEXCLUDE)
        if flags == d.AUDIT_FILTER_FS and not features & d.FEATURE_FILTER_FS:
            raise _LibauditError(EAU_FILTERNOSUPPORT)
        text: bytes | None = None
        value = 0
        if fid in (d.AUDIT_UID, d.AUDIT_EUID, d.AUDIT_SUID, d.AUDIT_FSUID, d.AUDIT_LOGINUID,
                   d.AUDIT_OBJ_UID):
            if _isdigit(v):
                value = c_strtoul(v)
            elif _negative_number(v):
                value = c_strtol(v)
            elif v == "unset":
                value = 0xFFFFFFFF
            else:
                uid = self.env.user_id(v)
                if uid is None:
                    raise RuleError(f"Unknown user: {v}")
                value = uid
        elif fid in (d.AUDIT_GID, d.AUDIT_EGID, d.AUDIT_SGID, d.AUDIT_FSGID, d.AUDIT_OBJ_GID):
            if _isdigit(v):
                value = c_strtol(v)
            elif v == "unset":
                value = 0xFFFFFFFF
            else:
                gid = self.env.group_id(v)
                if gid is None:
                    raise RuleError(f"Unknown group: {v}")
                value = gid
        elif fid == d.AUDIT_EXIT:
            if flags != d.AUDIT_FILTER_EXIT:
                raise _LibauditError(EAU_EXITONLY)
            if _isdigit(v) or _negative_number(v):
                value = c_strtol(v)
            else:
                negative = v.startswith("-")
                number = _ERRNO_BY_NAME.get((v[1:] if negative else v).lower(), 0)
                if number == 0:
                    raise _LibauditError(EAU_ERRUNKNOWN)
                value = (-number if negative else number) & 0xFFFFFFFF
        elif fid == d.AUDIT_MSGTYPE:
            if flags not in (d.AUDIT_FILTER_EXCLUDE, d.AUDIT_FILTER_USER):
                raise _LibauditError(EAU_MSGTYPEEXCLUDEUSER)
            if _isdigit(v):
                value = c_strtol(v)
            else:
                found = _MSGTYPE_BY_NAME.get(v.lower(), 0)
                if found <= 0:
                    raise _LibauditError(EAU_MSGTYPEUNKNOWN)
                value = found
        elif d.is_string_field(fid):
            if fid in (d.AUDIT_OBJ_USER, d.AUDIT_OBJ_ROLE, d.AUDIT_OBJ_TYPE,
                       d.AUDIT_OBJ_LEV_LOW, d.AUDIT_OBJ_LEV_HIGH, d.AUDIT_WATCH, d.AUDIT_DIR):
                if flags != d.AUDIT_FILTER_EXIT:
                    raise _LibauditError(EAU_EXITONLY)
                if fid in (d.AUDIT_WATCH, d.AUDIT_DIR):
                    self.perm_added = True
            if fid == d.AUDIT_EXE:
                if not features & d.FEATURE_EXECUTABLE_PATH:
                    raise _LibauditError(EAU_FIELDNOSUPPORT)
                if op not in (d.AUDIT_EQUAL, d.AUDIT_NOT_EQUAL):
                    raise _LibauditError(EAU_OPEQNOTEQ)
                self.exe_added = True
            if fid == d.AUDIT_FILTERKEY and not (
                self.syscall_added or self.perm_added or self.exe_added or self.fs_added
            ):
                raise _LibauditError(EAU_KEYDEP)
            raw = v.encode("utf-8", "surrogateescape")
            if fid == d.AUDIT_FILTERKEY and len(raw) > d.AUDIT_MAX_KEY_LEN:
                raise _LibauditError(EAU_STRTOOLONG)
            if len(raw) > d.MAX_STRING:
                raise _LibauditError(EAU_STRTOOLONG)
            text, value = raw, len(raw)
        elif fid == d.AUDIT_ARCH:
            if self.syscall_added:
                raise _LibauditError(EAU_ARCHMISPLACED)
            if op not in (d.AUDIT_EQUAL, d.AUDIT_NOT_EQUAL):
                raise _LibauditError(EAU_OPEQNOTEQ)
            if _isdigit(v):
                elf = c_strtoul(v)
                if elf not in _MACHINE_BY_ELF:
                    raise _LibauditError(EAU_ELFUNKNOWN)
            else:
                machine = self._determine_machine(v)
                elf = MACHINE_ELF.get(machine, 0)
                if not elf:
                    raise _LibauditError(EAU_ELFUNKNOWN)
            self.elf = elf
            value = elf
        elif fid == d.AUDIT_PERM:
            if flags != d.AUDIT_FILTER_EXIT:
                raise _LibauditError(EAU_EXITONLY)
            if op != d.AUDIT_EQUAL:
                raise _LibauditError(EAU_OPEQNOTEQ)
            if len(v) > 4:
                raise _LibauditError(EAU_STRTOOLONG)
            value = _perm_bits(v)
            if value < 0:
                raise _LibauditError(EAU_PERMRWXA)
        elif fid == d.AUDIT_FILETYPE:
            if flags != d.AUDIT_FILTER_EXIT:
                raise _LibauditError(EAU_EXITONLY)
            found = FILE_TYPES.get(v.lower(), -1)
            if found < 0:
                raise _LibauditError(EAU_FILETYPEUNKNOWN)
            value = found
        elif fid == d.AUDIT_FSTYPE:
            if flags != d.AUDIT_FILTER_FS:
                raise _LibauditError(EAU_FIELDUNAVAIL)
            if op not in (d.AUDIT_EQUAL, d.AUDIT_NOT_EQUAL):
                raise _LibauditError(EAU_OPEQNOTEQ)
            value = c_strtoul(v) if _isdigit(v) else FS_TYPES.get(v.lower(), 0xFFFFFFFF)
            if value == 0xFFFFFFFF:
                raise _LibauditError(EAU_FSTYPEUNKNOWN)
            self.fs_added = True
        elif d.AUDIT_ARG0 <= fid <= d.AUDIT_ARG3:
            if _isdigit(v):
                value = c_strtoul(v)
            elif _negative_number(v):
                value = c_strtol(v)
            else:
                raise _LibauditError(EAU_FIELDVALNUM)
        elif fid == d.AUDIT_SESSIONID:
            if not features & d.FEATURE_SESSIONID_FILTER:
                raise _LibauditError(EAU_FIELDNOSUPPORT)
            if flags not in (d.AUDIT_FILTER_EXCLUDE, d.AUDIT_FILTER_USER, d.AUDIT_FILTER_EXIT):
                raise _LibauditError(EAU_FIELDNOFILTER)
            if _isdigit(v):
                value = c_strtoul(v)
            elif _negative_number(v):
                value = c_strtol(v)
            elif v == "unset":
                value = 0xFFFFFFFF
        elif fid == d.AUDIT_SADDR_FAM:
            value = c_strtoul(v)
            if value >= AF_MAX:
                raise _LibauditError(EAU_FIELDVALTOOBIG)
        else:
            if (d.AUDIT_DEVMAJOR <= fid <= d.AUDIT_INODE or fid == d.AUDIT_SUCCESS) and (
                flags != d.AUDIT_FILTER_EXIT
            ):
                raise _LibauditError(EAU_EXITONLY)
            if fid == d.AUDIT_INODE and op not in (d.AUDIT_EQUAL, d.AUDIT_NOT_EQUAL):
                raise _LibauditError(EAU_OPEQNOTEQ)
            if fid == d.AUDIT_PPID and flags != d.AUDIT_FILTER_EXIT:
                raise _LibauditError(EAU_EXITENTRYONLY)
            if not _isdigit(v):
                raise _LibauditError(EAU_FIELDVALNUM)
            value = c_strtoul(v) if fid == d.AUDIT_INODE else c_strtol(v)
        self.fields.append(d.Field(fid, op, value, text))

    def _determine_machine(self, arch: str) -> int:
        """audit_determine_machine(): b64, b32, a machine name or a hex ELF value."""
        bits = 0
        if arch.lower() == "b64":
            bits, machine = 64, self.env.machine
        elif arch.lower() == "b32":
            bits, machine = 32, self.env.machine
        else:
            machine = UNAME_TO_MACHINE.get(arch.lower(), -1)
            if machine < 0:
                value, _ = _c_strtol("0x" + arch if not arch.lower().startswith("0x") else arch)
                machine = _MACHINE_BY_ELF.get(value & 0xFFFFFFFF, -1)
        if machine < 0:
            raise _LibauditError(EAU_ARCHUNKNOWN)
        if bits == 32 and machine in _MACHINE_32:
            machine = _MACHINE_32[machine]
        if machine in (_MACH_X86, _MACH_PPC, _MACH_S390, _MACH_ARM) and bits == 64:
            raise _LibauditError(EAU_ARCHBITS)
        if machine not in (_MACH_X86, _MACH_PPC, _MACH_S390, _MACH_ARM, _MACH_86_64,
                           _MACH_PPC64, _MACH_PPC64LE, _MACH_S390X, _MACH_AARCH64):
            raise _LibauditError(EAU_ARCHBITS)
        return machine

    # -- -C -----------------------------------------------------------------------------

    def compare(self, pair: str, flags: int) -> None:
        if len(self.fields) >= d.AUDIT_MAX_FIELDS - 1:
            raise _LibauditError(EAU_FIELDTOOMANY)
        if "!=" in pair:
            left, _, right = pair.partition("!=")
            op = d.AUDIT_NOT_EQUAL
        elif "=" in pair:
            left, _, right = pair.partition("=")
            op = d.AUDIT_EQUAL
        else:
            raise _LibauditError(EAU_OPEQNOTEQ)
        if not left:
            raise _LibauditError(EAU_COMPFIELDNAME)
        if not right:
            raise _LibauditError(EAU_COMPVAL)
        f1 = FIELD_BY_NAME.get(left.lower(), -1)
        if f1 < 0:
            raise _LibauditError(EAU_COMPFIELDUNKNOWN)
        f2 = FIELD_BY_NAME.get(right.lower(), -1)
        if f2 < 0:
            raise _LibauditError(EAU_COMPVALUNKNOWN)
        if flags != d.AUDIT_FILTER_EXIT:
            raise _LibauditError(EAU_EXITONLY)
        value = _COMPARE_BY_FIELDS.get((f1, f2))
        if value is None:
            raise _LibauditError(EAU_COMPINCOMPAT)
        self.fields.append(d.Field(d.AUDIT_FIELD_COMPARE, op, value))

    # -- -w / -W / -p -------------------------------------------------------------------

    def watch(self, path: str, warnings: list[str]) -> None:
        raw = path.encode("utf-8", "surrogateescape")
        if len(raw) >= d.MAX_STRING:
            raise RuleError("The path passed for the watch is too big")
        if not path.startswith("/"):
            raise RuleError("The path must start with '/'")
        if len(os.path.basename(path.rstrip("/") or "/").encode()) > NAME_MAX:
            raise RuleError("The base name of the path is too big")
        if ".." in path:
            warnings.append("Warning - relative path notation is not supported")
        if "*" in path or "?" in path:
            warnings.append("Warning - wildcard notation is not supported")
        if len(path) > 2 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        kind = d.AUDIT_DIR if self.env.is_dir(path) else d.AUDIT_WATCH
        if self.fields:
            raise RuleError("Rule is not empty")
        self.mask[:] = [0xFFFFFFFF] * d.AUDIT_BITMASK_SIZE
        text = path.encode("utf-8", "surrogateescape")
        self.fields = [
            d.Field(kind, d.AUDIT_EQUAL, len(text), text),
            d.Field(d.AUDIT_PERM, d.AUDIT_EQUAL, d.AUDIT_PERM_ALL),
        ]
        self.perm_added = True

    def perms(self, opt: str) -> None:
        if len(opt) > 4:
            raise RuleError(f"permission {opt} is too long")
        for ch in opt:
            if ch.lower() not in "rwxa":
                raise RuleError(f"Permission {ch} isn't supported")
        bits = _perm_bits(opt)
        if not self.fields:
            raise RuleError("permission option needs a field given prior to it")
        for i, f in enumerate(self.fields):
            if f.field == d.AUDIT_PERM:
                self.fields[i] = d.Field(d.AUDIT_PERM, f.op, bits)
                break
        else:
            if len(self.fields) >= d.AUDIT_MAX_FIELDS - 1:
                raise RuleError(libaudit_message(EAU_FIELDTOOMANY, f"-p {opt}"))
            self.fields.append(d.Field(d.AUDIT_PERM, d.AUDIT_EQUAL, bits))
        self.perm_added = True

    def rule(self, filt: int) -> d.Rule:
        return d.Rule(filt, self.action, tuple(self.mask), tuple(self.fields))


def _filter_number(name: str) -> int | None:
    from auditpy.rules.tables import FILTER_NAMES

    if name.lower() == "io_uring":  # audit 3.1's, beyond libaudit 3.0.9's tables
        return d.AUDIT_FILTER_URING_EXIT
    for number, known in FILTER_NAMES.items():
        if known == name.lower():
            return number
    return None


def _split_operator(pair: str) -> tuple[str, int | None, str]:
    """libaudit looks for two-character operators first, anywhere in the pair."""
    for symbol, op in (("!=", d.AUDIT_NOT_EQUAL), (">=", d.AUDIT_GREATER_THAN_OR_EQUAL),
                       ("<=", d.AUDIT_LESS_THAN_OR_EQUAL), ("&=", d.AUDIT_BIT_TEST),
                       ("=", d.AUDIT_EQUAL), (">", d.AUDIT_GREATER_THAN),
                       ("<", d.AUDIT_LESS_THAN), ("&", d.AUDIT_BIT_MASK)):
        at = pair.find(symbol)
        if at >= 0:
            return pair[:at], op, pair[at + len(symbol) :]
    return pair, None, ""


def _perm_bits(text: str) -> int:
    bits = 0
    for ch in text.lower():
        if ch == "r":
            bits |= d.AUDIT_PERM_READ
        elif ch == "w":
            bits |= d.AUDIT_PERM_WRITE
        elif ch == "x":
            bits |= d.AUDIT_PERM_EXEC
        elif ch == "a":
            bits |= d.AUDIT_PERM_ATTR
        else:
            return -1
    return bits


def _compare_table() -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for value, (left, right) in d.COMPARISONS.items():
        a, b = FIELD_BY_NAME[left], FIELD_BY_NAME[right]
        out[(a, b)] = value
        out[(b, a)] = value
    return out


_COMPARE_BY_FIELDS = _compare_table()


# -- the option loop ----------------------------------------------------------------------


def parse_args(args: list[str], env: Environment | None = None, *, lineno: int = 0) -> Parsed:
    """auditctl's setopt() for one argv (args[0] is the program name).

    Raises RuleError with auditctl's message when auditctl would refuse the line.
    """
    env = env or Environment()
    b = _Builder(env)
    commands: list[Command] = []
    warnings: list[str] = []
    count = len(args)
    opts, loose = _scan(args)
    stop = False
    consumed_after: int | None = None
    rule_requested = False
    for n, opt in enumerate(opts):
        if stop:
            loose += [o.index for o in opts[n:]]
            break
        letter, arg = opt.name, opt.arg or ""
        if letter == "?":
            bad = args[opt.index] if opt.index >= 1 else " "
            where = f" on line {lineno}" if lineno else ""
            raise RuleError(f"Option {bad}{where} is invalid")
        if letter == "h":
            commands.append(Command("help"))
            stop = True
        elif letter == "i":
            commands.append(Command("ignore_errors"))
            stop = True
        elif letter == "c":
            commands.append(Command("continue_errors"))
            stop = True
        elif letter == "s":
            if count > 3:
                raise RuleError("Too many options for status command")
            interpret = False
            if count == 3:
                if opt.index == 1 and args[2] == "-i":
                    interpret = True
                    consumed_after = 2
                else:
                    raise RuleError("Only -i option is allowed")
            commands.append(Command("status", interpret=interpret))
            stop = True
        elif letter in ("e", "f"):
            if arg not in ("0", "1", "2"):
                what = "Enable" if letter == "e" else "Failure"
                raise RuleError(f"{what} must be 0, 1, or 2 was {arg}")
            commands.append(Command("enable" if letter == "e" else "failure", value=int(arg)))
        elif letter in ("r", "b", "backlog_wait_time"):
            names = {"r": ("rate", "Rate"), "b": ("backlog", "Backlog"),
                     "backlog_wait_time": ("backlog_wait_time", "Backlog_wait_time")}
            op, label = names[letter]
            if not _isdigit(arg):
                raise RuleError(f"{label} must be a numeric value was {arg}")
            value, overflow = _c_strtol(arg)
            if overflow:
                raise RuleError(f"Error converting {op.replace('_', ' ')}"
                                if op != "backlog_wait_time" else
                                "Error converting backlog_wait_time")
            commands.append(Command(op, value=value & 0xFFFFFFFF))
        elif letter == "l":
            if count > 4:
                raise RuleError("Wrong number of options for list request")
            cmd = Command("list")
            if count == 3:
                if opt.index == 1 and args[2] == "-i":
                    cmd.interpret = True
                    consumed_after = 2
                else:
                    raise RuleError("Only -k or -i options are allowed")
            elif count == 4:
                if opt.index == 1 and args[2] == "-k":
                    cmd.text = args[3][: d.AUDIT_MAX_KEY_LEN]
                    consumed_after = 3
                else:
                    raise RuleError("Only -k or -i options are allowed")
            commands.append(cmd)
            stop = True
        elif letter in ("a", "A"):
            if "task" in arg and b.syscall_added:
                raise RuleError("Syscall auditing requested for task list"
                                if letter == "a" else
                                "Error: syscall auditing requested for task list")
            rc = b.setup(arg, delete=False)
            if rc == 3:
                raise RuleError("Multiple rule insert/delete operations are not allowed")
            if rc == 2:
                raise RuleError(f"{'Append' if letter == 'a' else 'Add'} rule - bad keyword "
                                f"{arg}")
            if rc == 1:
                return Parsed([Command("deprecated", text="Append rule - possible is "
                                       "deprecated")], warnings, args)
            b.prepend = letter == "A"
            rule_requested = True
        elif letter == "d":
            rc = b.setup(arg, delete=True)
            if rc == 3:
                raise RuleError("Multiple rule insert/delete operations are not allowed")
            if rc == 2:
                raise RuleError(f"Delete rule - bad keyword {arg}")
            if rc == 1:
                return Parsed([Command("deprecated", text="Delete rule - possible is "
                                       "deprecated")], warnings, args)
            rule_requested = True
        elif letter == "S":
            unknown_arch = not b.elf
            flags = b.list_flags
            if flags == d.AUDIT_FILTER_TASK:
                raise RuleError("Error: syscall auditing being added to task list")
            if flags == d.AUDIT_FILTER_USER:
                raise RuleError("Error: syscall auditing being added to user list")
            if flags == d.AUDIT_FILTER_FS:
                raise RuleError("Error: syscall auditing being added to filesystem list")
            if b.exclude:
                raise RuleError("Error: syscall auditing cannot be put on exclude list")
            if flags == d.AUDIT_FILTER_URING_EXIT:
                b.add_uring_ops(arg)
                b.syscall_added = True
            else:
                if unknown_arch:
                    if env.machine < 0:
                        raise RuleError("Error detecting machine type")
                    b.elf = MACHINE_ELF.get(env.machine, 0)
                    if not b.elf:
                        raise RuleError(f"Error looking up elf type {env.machine}")
                b.add_syscalls(arg)
                b.syscall_added = True
                if unknown_arch and b.filter != _UNSET:
                    _check_mismatch(b, arg, lineno, warnings)
        elif letter == "F":
            flags = b.list_flags
            if flags == _UNSET:
                raise RuleError("List must be given before field")
            if arg.startswith("key="):
                _add_key(b, arg[4:])
            else:
                try:
                    b.fieldpair(arg, flags)
                except _LibauditError as exc:
                    raise RuleError(libaudit_message(exc.number, _opt_text(arg))) from None
        elif letter == "C":
            try:
                b.compare(arg, b.list_flags)
            except _LibauditError as exc:
                raise RuleError(libaudit_message(exc.number, _opt_text(arg, compare=True))) \
                    from None
        elif letter == "m":
            if count > 3:
                raise RuleError("The -m option must be only the only option and takes 1 "
                                "parameter")
            if any(ord(ch) < 32 for ch in arg):
                raise RuleError("Illegal character in audit event")
            commands.append(Command("message", text=arg))
            stop = True
        elif letter == "R":
            raise RuleError("Error - nested rule files not supported")
        elif letter == "D":
            if count > 4 or count == 3:
                raise RuleError("Wrong number of options for Delete all request")
            cmd = Command("delete_all")
            if count == 4:
                if opt.index == 1 and args[2] == "-k":
                    cmd.text = args[3][: d.AUDIT_MAX_KEY_LEN]
                    consumed_after = 3
                else:
                    raise RuleError("Only the -k option is allowed")
            commands.append(cmd)
            stop = True
        elif letter in ("w", "W"):
            if letter == "w" and (b.filter != _UNSET or b.delete_filter != _UNSET):
                raise RuleError("watch option can't be given with a syscall")
            if letter == "w":
                b.filter = d.AUDIT_FILTER_EXIT
            else:
                b.delete_filter = d.AUDIT_FILTER_EXIT
            b.action = d.AUDIT_ALWAYS
            b.syscall_added = True
            b.watch(arg, warnings)
            rule_requested = True
        elif letter == "k":
            if not (b.syscall_added or b.perm_added or b.exe_added or b.fs_added) or (
                b.filter == _UNSET and b.delete_filter == _UNSET
            ):
                raise RuleError("key option needs a watch or syscall given prior to it")
            _add_key(b, arg)
        elif letter == "p":
            if b.filter == _UNSET and b.delete_filter == _UNSET:
                raise RuleError("permission option needs a watch given prior to it")
            b.perms(arg)
        elif letter == "q":
            if b.syscall_added:
                raise RuleError("Syscall auditing requested for make equivalent")
            mount, comma, sub = arg.partition(",")
            if not comma or not sub or "," in sub:
                raise RuleError("Error parsing equivalent parts")
            commands.append(Command("make_equivalent", text=f"{mount},{sub}"))
            stop = True
        elif letter == "t":
            commands.append(Command("trim"))
            stop = True
        elif letter == "v":
            commands.append(Command("version"))
            stop = True
        elif letter == "loginuid-immutable":
            commands.append(Command("loginuid_immutable"))
            stop = True
        elif letter == "reset-lost":
            commands.append(Command("reset_lost"))
            stop = True
        elif letter == "reset_backlog_wait_time_actual":
            commands.append(Command("reset_backlog_wait_time_actual"))
            stop = True
        elif letter == "signal":
            commands.append(Command("signal", text=arg))
            stop = True
    if not opts:
        raise RuleError("parameter passed without an option given" if count > 1 else
                        "no option given")
    leftover = [i for i in loose if consumed_after is None or i > consumed_after]
    if leftover:
        raise RuleError("parameter passed without an option given")
    if b.key:
        flags = b.list_flags
        try:
            b.fieldpair(f"key={b.key}", flags)
        except _LibauditError as exc:
            raise RuleError(libaudit_message(exc.number, "key")) from None
    if rule_requested:
        add = b.filter != _UNSET
        filt = b.filter if add else b.delete_filter
        if filt != d.AUDIT_FILTER_TASK and not b.syscall_added:
            b.mask[:] = [0xFFFFFFFF] * d.AUDIT_BITMASK_SIZE
        commands.append(Command("add" if add else "delete", rule=b.rule(filt),
                                prepend=b.prepend and add))
    elif b.syscall_added:
        raise RuleError("Error - no list specified")
    elif b.fields or b.key:
        raise RuleError("no list (-a, -A or -d) given for the rule")
    return Parsed(commands, warnings, args)


def _opt_text(pair: str, *, compare: bool = False) -> str:
    """What libaudit's messages print for the option: the text up to the operator, which
    the C code cut off in place while splitting."""
    name, op, _ = _split_operator(pair) if not compare else (
        (pair.partition("!=")[0], 1, "") if "!=" in pair else
        (pair.partition("=")[0], 1 if "=" in pair else None, "")
    )
    return name if op is not None else pair


def _add_key(b: _Builder, key: str) -> None:
    if len(key) + len(b.key) + (1 if b.key else 0) > d.AUDIT_MAX_KEY_LEN:
        raise RuleError("key option exceeds size limit")
    if d.AUDIT_KEY_SEPARATOR in key:
        raise RuleError(f"key {key} has illegal character")
    b.key = f"{b.key}{d.AUDIT_KEY_SEPARATOR}{key}" if b.key else key


def _check_mismatch(b: _Builder, text: str, lineno: int, warnings: list[str]) -> None:
    """auditctl's warning when a syscall list means other syscalls on the 32-bit ABI."""
    machine = b.env.machine
    other = _MACHINE_32.get(machine)
    if other is None:
        return
    saved = b.elf
    b.elf = MACHINE_ELF[other]
    probe = [0] * d.AUDIT_BITMASK_SIZE
    try:
        b.add_syscalls(text, probe)
    except RuleError:
        probe = [-1]
    finally:
        b.elf = saved
    if probe != b.mask:
        where = f" in line {lineno}" if lineno else ""
        warnings.append(f"WARNING - 32/64 bit syscall mismatch{where}, you should specify an "
                        "arch")
