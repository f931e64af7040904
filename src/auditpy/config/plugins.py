"""Plugin files (``plugins.d/*.conf``) and the dispatcher's own settings.

pyauditd asks `any_active` whether a dispatcher must run at all; pyaudispd loads the
settings and the plugin list at start and on every SIGHUP and compares the result with
what runs.  Parsing is pure (text in, configuration or problems out); reading files and
checking owners and modes happens only in the ``load_*`` functions at the end.

The syntax is auditd.conf's: ``keyword = value`` with tokens split on spaces only, ``=`` a
token of its own, ``#`` starting a comment line, keywords and keyword-like values
case-insensitive.  A plugin file with any error is skipped as a whole (the 2.x/3.x rule:
only that plugin is lost, the others run) and every error is reported with file and line.

Differences from the C dispatcher, each one only refusing input that C would take in a
surprising way or accepting input that C would silently mis-read:

* lines may be up to 512 bytes (4.1.4+); a longer line is an error rather than silently
  skipped, because skipping ``active = no`` would turn a plugin on;
* an unterminated last line is read (3.0.9's fgets() reader drops it, which would likewise
  lose ``active = yes``);
* every error is reported, not only the first; a keyword given twice is a warning;
* ``args`` may hold any number of tokens (4.0.1+), not 2;
* the builtins' arguments are checked here, so a typo is a located error instead of an
  inert builtin;
* symbolic links to plugin files are followed (4.x), the target is what gets checked;
* audispd.conf must not be group-writable either (auditd.conf only refuses world-writable),
  like the plugin files.
"""

from __future__ import annotations

import os
import syslog
from collections.abc import Iterable, Iterator

from auditpy import structs
from auditpy.config.auditd_conf import load_auditd_conf
from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import (
    ProgramIdentity,
    check_plugin_program,
    read_config_file,
    reason,
)
from auditpy.config.lines import bounded_uint, fold, token_lines
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

#: 4.1.4+ reads lines into a 512-byte buffer.
MAX_LINE_BYTES: Final = 512
INT_MAX: Final = 2**31 - 1

DEFAULT_PLUGIN_DIR: Final = "/etc/audit/plugins.d"
AUDITD_CONF: Final = "auditd.conf"
AUDISPD_CONF: Final = "audispd.conf"

AF_UNIX: Final = "af_unix"
SYSLOG: Final = "syslog"
NATS: Final = "nats"
JSON: Final = "json"
#: Values of ``path`` that name a builtin instead of a program (2.x spellings and short).
BUILTIN_PATHS: Final = {
    "builtin_af_unix": AF_UNIX,
    "af_unix": AF_UNIX,
    "builtin_syslog": SYSLOG,
    "syslog": SYSLOG,
    "builtin_nats": NATS,
    "builtin_json": JSON,
}
#: The publisher's configuration when builtin_nats is given no argument.
DEFAULT_NATS_CONF: Final = "/etc/audit/audisp-nats.conf"

DEFAULT_AF_UNIX_MODE: Final = 0o640
DEFAULT_AF_UNIX_PATH: Final = "/var/run/audispd_events"

#: syslog(3) names accepted by the syslog builtin, as in the C plugin.
SYSLOG_PRIORITIES: Final = {
    "LOG_EMERG": syslog.LOG_EMERG,
    "LOG_ALERT": syslog.LOG_ALERT,
    "LOG_CRIT": syslog.LOG_CRIT,
    "LOG_ERR": syslog.LOG_ERR,
    "LOG_WARNING": syslog.LOG_WARNING,
    "LOG_NOTICE": syslog.LOG_NOTICE,
    "LOG_INFO": syslog.LOG_INFO,
    "LOG_DEBUG": syslog.LOG_DEBUG,
}
SYSLOG_FACILITIES: Final = {
    "LOG_AUTH": syslog.LOG_AUTH,
    "LOG_AUTHPRIV": syslog.LOG_AUTHPRIV,
    "LOG_DAEMON": syslog.LOG_DAEMON,
    "LOG_SYSLOG": syslog.LOG_SYSLOG,
    "LOG_USER": syslog.LOG_USER,
    **{f"LOG_LOCAL{n}": getattr(syslog, f"LOG_LOCAL{n}") for n in range(8)},
}

OVERFLOW_ACTIONS: Final = ("IGNORE", "SYSLOG", "SUSPEND", "SINGLE", "HALT")
NAME_FORMATS: Final = ("NONE", "HOSTNAME", "FQD", "NUMERIC", "USER")


@dataclass(frozen=True)
class PluginProblem(ConfigProblem):
    """A problem in one plugin file; `skipped` means the plugin was not loaded because of
    it (an error), otherwise it is a warning and the plugin was loaded."""

    skipped: bool = True


@dataclass(frozen=True)
class PluginConfig:
    """One plugin file.  `name` (the file's basename) is its identity across reloads."""

    name: str
    file: str
    active: bool = False
    direction: str = "out"
    #: an absolute program path, or the builtin's canonical name when `builtin` is set
    path: str | None = None
    type: str = "always"
    #: AF_UNIX, SYSLOG or NATS for a builtin, None for a program
    builtin: str | None = None
    args: tuple[str, ...] = ()
    format: str = "string"
    #: the program's identity when it was loaded (active external plugins only)
    identity: ProgramIdentity | None = None
    #: where ``path`` was set, to locate problems found later with the program
    path_line: int | None = field(default=None, compare=False)

    @property
    def launch_key(self) -> tuple[object, ...]:
        """Everything that requires a restart when it changes between reloads."""
        return (self.path, self.builtin, self.type, self.args, self.format, self.identity)

    @property
    def argv(self) -> list[str]:
        if self.path is None or self.builtin is not None:
            raise ValueError(f"plugin {self.name} has no program")
        return [self.path, *self.args]


# --------------------------------------------------------------------------------------
# Tokens


def _upper(text: str) -> str:
    return text.upper() if text.isascii() else text


def _tokens(text: str, path: str, problems: list[PluginProblem]) -> Iterator[tuple[int, list[str]]]:
    """(line number, tokens) for every non-comment line; bad lines become problems."""
    for number, tokens in token_lines(text, MAX_LINE_BYTES):
        if isinstance(tokens, ValueError):
            problems.append(PluginProblem(path, number, str(tokens)))
            continue
        if len(tokens) < 2 or tokens[1] != "=":
            problems.append(
                PluginProblem(
                    path, number, f"missing '=' after {tokens[0]!r} (it must stand between spaces)"
                )
            )
            continue
        yield number, tokens


def _single_value(tokens: list[str]) -> str:
    if len(tokens) != 3:
        raise ValueError("wrong number of tokens; expected 'keyword = value'")
    return tokens[2]


def _choice(keyword: str, value: str, allowed: Iterable[str]) -> str:
    folded = fold(value)
    options = tuple(allowed)
    if folded not in options:
        raise ValueError(f"{keyword}: {value!r} is not one of {', '.join(options)}")
    return folded


def _uint(keyword: str, value: str, low: int, high: int) -> int:
    try:
        return bounded_uint(value, low, high)
    except ValueError as exc:
        raise ValueError(f"{keyword}: {exc}") from None


# --------------------------------------------------------------------------------------
# Builtin arguments (pure; the builtins use the same functions when they start)


@dataclass(frozen=True)
class AfUnixArgs:
    mode: int = DEFAULT_AF_UNIX_MODE
    path: str = DEFAULT_AF_UNIX_PATH
    #: an explicit ``string``/``binary`` argument; None means the file's ``format``
    format: str | None = None


def parse_af_unix_args(args: Iterable[str]) -> AfUnixArgs:
    """Octal mode, socket path and output format, in any order, each at most once."""
    mode: int | None = None
    path: str | None = None
    fmt: str | None = None
    for arg in args:
        if arg.isascii() and arg.isdigit():
            if mode is not None:
                raise ValueError(f"af_unix: socket mode given twice ({arg!r})")
            if any(digit in "89" for digit in arg) or len(arg) > 12 or int(arg, 8) > 0o777:
                raise ValueError(f"af_unix: {arg!r} is not an octal mode of at most 0777")
            mode = int(arg, 8)
        elif "/" in arg:
            if path is not None:
                raise ValueError(f"af_unix: socket path given twice ({arg!r})")
            if not arg.startswith("/"):
                raise ValueError(f"af_unix: socket path {arg!r} is not absolute")
            if len(os.fsencode(arg)) > 107:
                raise ValueError("af_unix: socket path is longer than 107 bytes")
            path = arg
        elif fold(arg) in ("string", "binary"):
            if fmt is not None:
                raise ValueError(f"af_unix: output format given twice ({arg!r})")
            fmt = fold(arg)
        else:
            raise ValueError(
                f"af_unix: unknown argument {arg!r} (expected an octal mode, a socket path, "
                "'string' or 'binary')"
            )
    return AfUnixArgs(
        DEFAULT_AF_UNIX_MODE if mode is None else mode,
        DEFAULT_AF_UNIX_PATH if path is None else path,
        fmt,
    )


@dataclass(frozen=True)
class SyslogArgs:
    priority: int = syslog.LOG_INFO
    facility: int = syslog.LOG_USER


def parse_syslog_args(args: Iterable[str]) -> SyslogArgs:
    """A ``LOG_*`` priority and a ``LOG_*`` facility, in any order, each at most once."""
    priority: int | None = None
    facility: int | None = None
    for arg in args:
        name = _upper(arg)
        if name in SYSLOG_PRIORITIES:
            if priority is not None:
                raise ValueError(f"syslog: priority given twice ({arg!r})")
            priority = SYSLOG_PRIORITIES[name]
        elif name in SYSLOG_FACILITIES:
            if facility is not None:
                raise ValueError(f"syslog: facility given twice ({arg!r})")
            facility = SYSLOG_FACILITIES[name]
        else:
            raise ValueError(
                f"syslog: unknown argument {arg!r} (expected a LOG_* priority or facility)"
            )
    return SyslogArgs(
        syslog.LOG_INFO if priority is None else priority,
        syslog.LOG_USER if facility is None else facility,
    )


def parse_nats_args(args: Iterable[str]) -> str:
    """builtin_nats takes the path of its configuration file (audisp-nats.conf syntax)."""
    items = list(args)
    if not items:
        return DEFAULT_NATS_CONF
    if len(items) > 1:
        raise ValueError(f"nats: one argument expected (a configuration file), got {len(items)}")
    if not items[0].startswith("/"):
        raise ValueError(f"nats: configuration file {items[0]!r} is not an absolute path")
    return items[0]


def parse_json_args(args: Iterable[str]) -> str | None:
    """builtin_json takes the path of its configuration file (jsonout.py), or nothing for
    the defaults."""
    given = list(args)
    if len(given) > 1:
        raise ValueError("json: one argument at most: the path of its configuration file")
    if given and not given[0].startswith("/"):
        raise ValueError(f"json: configuration file {given[0]!r} is not an absolute path")
    return given[0] if given else None


# --------------------------------------------------------------------------------------
# Plugin files (pure)


_PLUGIN_KEYWORDS: Final = ("active", "direction", "path", "type", "args", "format")


def parse_plugin_conf(
    text: str, file: str, name: str | None = None
) -> tuple[PluginConfig, list[PluginProblem]]:
    """Parse one plugin file into its configuration and warnings.

    `file` is used in messages; `name` defaults to its basename.  Raises ConfigError
    holding every error (as PluginProblem) if the plugin cannot be used.
    """
    problems: list[PluginProblem] = []
    values: dict[str, object] = {}
    where: dict[str, int] = {}
    #: keywords whose (last) line was refused, so no "missing" error is piled on top
    refused: set[str] = set()

    def error(line: int | None, message: str) -> None:
        problems.append(PluginProblem(file, line, message))

    for number, tokens in _tokens(text, file, problems):
        keyword = fold(tokens[0])
        if keyword not in _PLUGIN_KEYWORDS:
            error(number, f"unknown keyword {tokens[0]!r}")
            continue
        if keyword in where:
            problems.append(
                PluginProblem(
                    file,
                    number,
                    f"{keyword} was already set on line {where[keyword]}; this value is used",
                    skipped=False,
                )
            )
        try:
            values[keyword] = _plugin_value(keyword, tokens)
        except ValueError as exc:
            error(number, str(exc))
            values.pop(keyword, None)
            where.pop(keyword, None)
            refused.add(keyword)
            continue
        refused.discard(keyword)
        where[keyword] = number

    config = PluginConfig(name=name or os.path.basename(file), file=file)
    updates: dict[str, object] = {k: v for k, v in values.items() if k != "path"}
    path = values.get("path")
    if isinstance(path, str):
        builtin = BUILTIN_PATHS.get(fold(path))
        updates["builtin"] = builtin
        updates["path"] = builtin if builtin is not None else path
        updates["path_line"] = where["path"]
        if builtin is not None:
            updates["type"] = "builtin"
    config = structs.replace(config, **updates)

    if config.type == "builtin" and config.builtin is None and "path" in where:
        error(
            where.get("type"),
            "type = builtin needs path = builtin_af_unix, builtin_syslog, builtin_nats or "
            "builtin_json",
        )
    if config.active and config.path is None and "path" not in refused:
        error(where.get("active"), "the plugin is active but has no path")
    if config.builtin is not None:
        line = where.get("args", where.get("path"))
        try:
            if config.builtin == AF_UNIX:
                parse_af_unix_args(config.args)
            elif config.builtin == NATS:
                parse_nats_args(config.args)
            elif config.builtin == JSON:
                parse_json_args(config.args)
            else:
                parse_syslog_args(config.args)
        except ValueError as exc:
            error(line, str(exc))
    errors = [p for p in problems if p.skipped]
    if errors:
        raise ConfigError(errors)
    return config, problems


def _plugin_value(keyword: str, tokens: list[str]) -> object:
    if keyword == "args":
        return tuple(tokens[2:])
    value = _single_value(tokens)
    if keyword == "active":
        return _choice(keyword, value, ("yes", "no")) == "yes"
    if keyword == "direction":
        if fold(value) == "in":
            raise ValueError("direction = in is not supported; plugins only receive events")
        return _choice(keyword, value, ("out",))
    if keyword == "type":
        return _choice(keyword, value, ("always", "builtin"))
    if keyword == "format":
        return _choice(keyword, value, ("string", "binary"))
    # path
    if fold(value) not in BUILTIN_PATHS and not value.startswith("/"):
        raise ValueError(
            f"path {value!r} is neither absolute nor builtin_af_unix / builtin_syslog / "
            "builtin_nats / builtin_json"
        )
    return value


def plugin_file_names(names: Iterable[str]) -> list[str]:
    """The directory entries that are plugin files, sorted.

    Skipped (as 4.x does, with a debug message there): dot files, names with more than one
    dot (editor and package-manager backups such as ``x.conf.dpkg-old``) and names that do
    not end in ``.conf``.
    """
    return sorted(
        name
        for name in names
        if not name.startswith(".") and name.count(".") == 1 and name.endswith(".conf")
    )


# --------------------------------------------------------------------------------------
# Dispatcher settings


@dataclass(frozen=True)
class DispatcherSettings:
    """The dispatcher's settings: auditd.conf's (3.x), overridden by audispd.conf (2.x)."""

    q_depth: int = 2000
    overflow_action: str = "SYSLOG"
    priority_boost: int = 4
    max_restarts: int = 10
    name_format: str = "NONE"
    name: str | None = None
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    #: auditd.conf's; the builtin JSON plugin's default (audispd.conf has no such key)
    end_of_event_timeout: int = 2


_SETTINGS_KEYWORDS: Final = (
    "q_depth",
    "overflow_action",
    "priority_boost",
    "max_restarts",
    "name_format",
    "name",
    "plugin_dir",
)


def parse_audispd_conf(text: str, path: str = AUDISPD_CONF) -> tuple[dict[str, object], list[str]]:
    """The settings a 2.x audispd.conf gives (only the keys present) and its warnings.

    Raises ConfigError with every error.  A relative plugin_dir is returned as written;
    the loader anchors it.
    """
    problems: list[PluginProblem] = []
    warnings: list[str] = []
    values: dict[str, object] = {}
    for number, tokens in _tokens(text, path, problems):
        keyword = fold(tokens[0])
        if keyword not in _SETTINGS_KEYWORDS:
            problems.append(PluginProblem(path, number, f"unknown keyword {tokens[0]!r}"))
            continue
        try:
            value = _single_value(tokens)
            if keyword == "q_depth":
                values[keyword] = _uint(keyword, value, 1, 99999)
                if int(value) < 512:
                    warnings.append(
                        f"{path}:{number}: q_depth: {int(value)} is small; "
                        "use at least 512 for a safety margin"
                    )
            elif keyword in ("priority_boost", "max_restarts"):
                values[keyword] = _uint(keyword, value, 0, INT_MAX)
            elif keyword == "overflow_action":
                values[keyword] = _choice(keyword, value, map(fold, OVERFLOW_ACTIONS)).upper()
            elif keyword == "name_format":
                values[keyword] = _choice(keyword, value, map(fold, NAME_FORMATS)).upper()
            else:
                values[keyword] = value
        except ValueError as exc:
            problems.append(PluginProblem(path, number, str(exc)))
    if problems:
        raise ConfigError(problems)
    return values, warnings


# --------------------------------------------------------------------------------------
# The file-system edge


def _read_root_file(path: str) -> str:
    """A plugin file's or audispd.conf's text; raises OSError or UntrustedFile (a
    ValueError) with the reason if it may not be used."""
    return read_config_file(path).text


def load_plugin_file(path: str) -> tuple[PluginConfig | None, list[PluginProblem]]:
    """Read, check and parse one plugin file; None (with the reasons) if it is skipped."""
    try:
        text = _read_root_file(path)
    except (OSError, ValueError) as exc:
        return None, [PluginProblem(path, None, reason(exc))]
    try:
        config, problems = parse_plugin_conf(text, path)
    except ConfigError as exc:
        return None, [
            p if isinstance(p, PluginProblem) else PluginProblem(p.path, p.line, p.message)
            for p in exc.errors
        ]
    if config.active and config.builtin is None and config.path is not None:
        identity, why = check_plugin_program(config.path)
        if why is not None:
            return None, [*problems, PluginProblem(path, config.path_line, why)]
        config = structs.replace(config, identity=identity)
    return config, problems


def load_plugins(plugin_dir: str) -> tuple[dict[str, PluginConfig], list[PluginProblem]]:
    """Every usable plugin file in `plugin_dir` (active or not) by name, and the problems.

    A file with an error is left out (problems with ``skipped=True`` say why); the others
    are unaffected.  An unreadable directory yields no plugins and one problem.
    """
    try:
        names = plugin_file_names(os.listdir(plugin_dir))
    except (OSError, ValueError) as exc:
        return {}, [
            PluginProblem(plugin_dir, None, f"cannot read plugin directory: {reason(exc)}")
        ]
    plugins: dict[str, PluginConfig] = {}
    problems: list[PluginProblem] = []
    for name in names:
        config, found = load_plugin_file(os.path.join(plugin_dir, name))
        problems.extend(found)
        if config is not None:
            plugins[name] = config
    return plugins, problems


def any_active(plugin_dir: str) -> bool:
    """Whether a dispatcher has anything to do: at least one usable, active plugin."""
    plugins, _problems = load_plugins(plugin_dir)
    return any(config.active for config in plugins.values())


def load_dispatcher_settings(
    config_dir: str, base_dir: str = "/", *, allow_symlink: bool = False
) -> tuple[DispatcherSettings, list[str]]:
    """The dispatcher settings from `config_dir`'s auditd.conf and, if present, the 2.x
    audispd.conf, whose values override.  Relative paths are anchored at `base_dir`.

    Raises ConfigError (every problem) if either file may not be used.  A missing
    auditd.conf gives the defaults and a warning, as for auditd.
    """
    auditd, auditd_warnings = load_auditd_conf(
        os.path.join(config_dir, AUDITD_CONF), allow_symlink=allow_symlink, base_dir=base_dir
    )
    settings = DispatcherSettings(
        q_depth=auditd.q_depth,
        overflow_action=auditd.overflow_action,
        priority_boost=auditd.priority_boost,
        max_restarts=auditd.max_restarts,
        name_format=auditd.name_format,
        name=auditd.name,
        plugin_dir=auditd.plugin_dir,
        end_of_event_timeout=auditd.end_of_event_timeout,
    )
    warnings = [str(problem) for problem in auditd_warnings]
    path = os.path.join(config_dir, AUDISPD_CONF)
    try:
        text = _read_root_file(path)
    except FileNotFoundError:
        return settings, warnings
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, None, reason(exc))]) from None
    overrides, more = parse_audispd_conf(text, path)
    plugin_dir = overrides.get("plugin_dir")
    if isinstance(plugin_dir, str) and not plugin_dir.startswith("/"):
        overrides["plugin_dir"] = os.path.join(base_dir, plugin_dir)
    return structs.replace(settings, **overrides), warnings + more
