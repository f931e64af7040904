"""The JSON output's configuration file (``pyaudisp-json -c FILE``, ``builtin_json``'s arg).

One ``key = value`` per line, ``#`` comments, keys case-insensitive.  A value is the rest of
the line (spaces inside kept); wrap it in double quotes to keep leading or trailing spaces
(``line_prefix = "@cee: "``).  Lists are separated by commas or spaces.  Every problem is
reported with file and line, and a file with any error is refused as a whole.

The keys are laurel's options under flat names (laurel's TOML sections become prefixes):

==========================  ==============================================================
output                      file path, ``-`` (stdout) or ``unix:/path`` (a UNIX socket);
                            default /var/log/audit/audit.json
size                        rotate the file at this many bytes (0: never); default 10 MiB
generations                 rotated files kept (``.1`` ... ``.N``); default 5
mode                        file mode, octal; default 0600
group                       group owning the file (name or number); default root's
line_prefix                 text before every line, e.g. ``"@cee: "`` for rsyslog
end_of_event_timeout        seconds before an event without its EOE is written; default
                            auditd.conf's under pyaudispd (at least 1), else 2
translate_universal         ARCH, SYSCALL and SADDR (laurel translate.universal); default no
translate_userdb            uid/gid names (laurel translate.user-db); default no
execve_argv                 ``array``, ``string`` or ``both``; default array
execve_env                  environment variables written for execs (``none`` for none);
                            default LD_PRELOAD, LD_LIBRARY_PATH
enrich_pid                  PPID/PID process context; default yes
enrich_container            CONTAINER_INFO from the cgroup; default yes
enrich_systemd              SYSTEMD_INFO (the unit) from the cgroup; default yes
label_keys                  rule keys that label the process
label_exe                   ``REGEX LABEL``, repeatable: label processes exec'ing a match
unlabel_exe                 ``REGEX LABEL``, repeatable: remove a label on such an exec
propagate_labels            labels children inherit
filter_keys                 events with one of these rule keys are not written
filter_labels               events of processes with one of these labels are not written
filter_types                events whose first record has one of these types are not written
process_table_size          processes remembered at most; default 16384
==========================  ==============================================================

Pure parsing; `load_json_conf` is the only function that reads a file.
"""

from __future__ import annotations

import grp
import os
import re
from collections.abc import Callable

from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import UntrustedFile, read_config_file, reason
from auditpy.config.lines import fold
from auditpy.proto.msgtypes import MSG_TYPE_NAMES
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "DEFAULT_EVENT_TIMEOUT", "DEFAULT_OUTPUT", "JsonConfig", "load_json_conf", "parse_json_conf",
]

DEFAULT_OUTPUT: Final = "/var/log/audit/audit.json"
DEFAULT_SIZE: Final = 10 * 1024 * 1024
DEFAULT_GENERATIONS: Final = 5
DEFAULT_ENV: Final = ("LD_PRELOAD", "LD_LIBRARY_PATH")
#: end_of_event_timeout when neither the JSON file nor a dispatcher's auditd.conf sets it
DEFAULT_EVENT_TIMEOUT: Final = 2.0
MAX_LINE_BYTES: Final = 4096
_NAME_TO_TYPE: Final = {name: num for num, name in MSG_TYPE_NAMES.items()}


@dataclass(frozen=True)
class JsonConfig:
    output: str = DEFAULT_OUTPUT
    size: int = DEFAULT_SIZE
    generations: int = DEFAULT_GENERATIONS
    mode: int = 0o600
    group: int | None = None
    line_prefix: str = ""
    #: None: not set in the file (the dispatcher's auditd.conf value, else the default)
    end_of_event_timeout: float | None = None
    translate_universal: bool = False
    translate_userdb: bool = False
    argv_array: bool = True
    argv_string: bool = False
    execve_env: tuple[str, ...] = DEFAULT_ENV
    enrich_pid: bool = True
    enrich_container: bool = True
    enrich_systemd: bool = True
    label_keys: frozenset[str] = frozenset()
    label_exe: tuple[tuple[str, str], ...] = ()
    unlabel_exe: tuple[tuple[str, str], ...] = ()
    propagate_labels: frozenset[str] = frozenset()
    filter_keys: frozenset[str] = frozenset()
    filter_labels: frozenset[str] = frozenset()
    filter_types: frozenset[int] = frozenset()
    process_table_size: int = 16384
    #: where it was read from ("" for defaults)
    source: str = field(default="", compare=False)

    @property
    def event_timeout(self) -> float:
        return (DEFAULT_EVENT_TIMEOUT if self.end_of_event_timeout is None
                else self.end_of_event_timeout)

    @property
    def output_kind(self) -> str:
        """``file``, ``stdout`` or ``socket``."""
        if self.output == "-":
            return "stdout"
        if self.output.startswith("unix:"):
            return "socket"
        return "file"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _list(value: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", value) if item]


def _yes_no(value: str) -> bool:
    folded = fold(value)
    if folded in ("yes", "true", "1"):
        return True
    if folded in ("no", "false", "0"):
        return False
    raise ValueError(f"{value!r} is not yes or no")


def _uint(value: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise ValueError(f"{value!r} is not a number")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range ({low}..{high})")
    return number


def _group(value: str) -> int:
    if value.isascii() and value.isdigit():
        return _uint(value, 0, 2**32 - 2)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError(f"unknown group {value!r}") from None


def _pattern_label(value: str) -> tuple[str, str]:
    parts = value.rsplit(None, 1)
    if len(parts) != 2:
        raise ValueError("expected 'REGEX LABEL'")
    pattern, label = _unquote(parts[0].strip()), parts[1]
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return pattern, label


def _types(value: str) -> frozenset[int]:
    out = set()
    for name in _list(value):
        upper = name.upper()
        if upper in _NAME_TO_TYPE:
            out.add(_NAME_TO_TYPE[upper])
        elif upper.startswith("UNKNOWN[") and upper.endswith("]") and upper[8:-1].isdigit():
            out.add(int(upper[8:-1]))
        elif name.isdigit():
            out.add(int(name))
        else:
            raise ValueError(f"unknown record type {name!r}")
    return frozenset(out)


def _output(value: str) -> str:
    if value == "-":
        return value
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise ValueError(f"socket path {path!r} is not absolute")
        if len(os.fsencode(path)) > 107:
            raise ValueError("socket path is longer than 107 bytes")
        return value
    if not value.startswith("/"):
        raise ValueError(f"output {value!r} is not an absolute path, '-' or unix:/path")
    return value


_SETTERS: Final[dict[str, Callable[[str], dict[str, object]]]] = {
    "output": lambda v: {"output": _output(v)},
    "size": lambda v: {"size": _uint(v, 0, 2**62)},
    "generations": lambda v: {"generations": _uint(v, 0, 999)},
    "mode": lambda v: {"mode": _mode(v)},
    "group": lambda v: {"group": _group(v)},
    "line_prefix": lambda v: {"line_prefix": _unquote(v)},
    "end_of_event_timeout": lambda v: {"end_of_event_timeout": float(_uint(v, 1, 3600))},
    "translate_universal": lambda v: {"translate_universal": _yes_no(v)},
    "translate_userdb": lambda v: {"translate_userdb": _yes_no(v)},
    "execve_argv": lambda v: _argv(v),
    "execve_env": lambda v: {
        "execve_env": () if fold(v) == "none" else tuple(_list(v))
    },
    "enrich_pid": lambda v: {"enrich_pid": _yes_no(v)},
    "enrich_container": lambda v: {"enrich_container": _yes_no(v)},
    "enrich_systemd": lambda v: {"enrich_systemd": _yes_no(v)},
    "label_keys": lambda v: {"label_keys": frozenset(_list(v))},
    "propagate_labels": lambda v: {"propagate_labels": frozenset(_list(v))},
    "filter_keys": lambda v: {"filter_keys": frozenset(_list(v))},
    "filter_labels": lambda v: {"filter_labels": frozenset(_list(v))},
    "filter_types": lambda v: {"filter_types": _types(v)},
    "process_table_size": lambda v: {"process_table_size": _uint(v, 16, 10_000_000)},
}
#: Keys that may be given several times, each adding one (pattern, label).
_REPEATABLE: Final = ("label_exe", "unlabel_exe")


def _mode(value: str) -> int:
    if not value.isascii() or not value.isdigit() or "8" in value or "9" in value:
        raise ValueError(f"{value!r} is not an octal mode")
    mode = int(value, 8)
    if mode > 0o777:
        raise ValueError(f"{value!r} is not a file mode (at most 0777)")
    if mode & 0o002:
        raise ValueError(f"mode {value} would let anyone write the audit events")
    return mode


def _argv(value: str) -> dict[str, object]:
    items = {fold(item) for item in _list(value)}
    if not items or not items <= {"array", "string", "both"}:
        raise ValueError(f"{value!r}: expected array, string or both")
    both = "both" in items
    return {"argv_array": both or "array" in items, "argv_string": both or "string" in items}


def parse_json_conf(text: str, path: str) -> tuple[JsonConfig, list[ConfigProblem]]:
    """The configuration in `text` and its warnings; ConfigError holds every error."""
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    values: dict[str, object] = {}
    seen: dict[str, int] = {}
    repeated: dict[str, list[tuple[str, str]]] = {k: [] for k in _REPEATABLE}
    for number, row in enumerate(text.split("\n"), start=1):
        line = row.strip()
        if not line or line.startswith("#"):
            continue
        if len(row.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            problems.append(ConfigProblem(path, number, f"line is longer than {MAX_LINE_BYTES}"))
            continue
        if "\0" in row or any("\ud800" <= c <= "\udfff" for c in row):
            problems.append(ConfigProblem(path, number, "line holds a NUL or bytes not UTF-8"))
            continue
        key, eq, value = line.partition("=")
        key, value = fold(key.strip()), value.strip()
        if not eq or not key:
            problems.append(ConfigProblem(path, number, "expected 'key = value'"))
            continue
        if key not in _SETTERS and key not in _REPEATABLE:
            problems.append(ConfigProblem(path, number, f"unknown key {key!r}"))
            continue
        try:
            if key in _REPEATABLE:
                repeated[key].append(_pattern_label(value))
                continue
            update = _SETTERS[key](value)
        except ValueError as exc:
            problems.append(ConfigProblem(path, number, f"{key}: {exc}"))
            continue
        if key in seen:
            warnings.append(
                ConfigProblem(path, number, f"{key} was already set on line {seen[key]}; "
                              "this value is used")
            )
        seen[key] = number
        values.update(update)
    if problems:
        raise ConfigError(problems)
    config = JsonConfig(
        **values,  # type: ignore[arg-type]
        label_exe=tuple(repeated["label_exe"]),
        unlabel_exe=tuple(repeated["unlabel_exe"]),
        source=path,
    )
    return config, warnings


def load_json_conf(path: str) -> tuple[JsonConfig, list[ConfigProblem]]:
    """Read and parse `path` under the rule for trusted files (config.files): it decides
    where every audit event goes. ConfigError (located) when it may not be used."""
    try:
        file = read_config_file(path)
    except UntrustedFile as exc:
        raise ConfigError(ConfigProblem(path, None, why) for why in exc.reasons) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, None, reason(exc))]) from None
    return parse_json_conf(file.text, path)
