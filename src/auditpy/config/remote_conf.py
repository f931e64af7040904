"""audisp-remote.conf(5): the settings of the remote-logging plugin.

The behaviour follows Debian's audisp-remote 3.0.9, with the differences pyaudisp-remote
documents: tls_* keys (certificates, not 4.2's PSK), krb5 refused, port 0 refused, and exec
helpers checked by the same rule as auditd.conf's.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Final

from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import (
    UntrustedFile,
    exec_helper_problems,
    read_config_file,
    reason,
    tls_file_problems,
)
from auditpy.config.lines import bounded_uint, fold, token_lines
from auditpy.config.tls import client_context
from auditpy.structs import dataclass, field

DEFAULT_CONFIG: Final = "/etc/audit/audisp-remote.conf"
#: Lines longer than this are rejected; the C parser uses a smaller buffer, but paths to
#: TLS files may be long.
MAX_CONF_LINE: Final = 4096
INT_MAX: Final = 2**31 - 1


@dataclass(frozen=True)
class Action:
    """A ``*_action`` value; `exe` only for ``exec``."""

    kind: str
    exe: str | None = None

    def __str__(self) -> str:
        return f"exec {self.exe}" if self.exe else self.kind


_FAILURE_ACTIONS: Final = (
    "ignore", "syslog", "exec", "warn_once", "warn_once_continue",
    "suspend", "single", "halt", "stop",
)
ACTION_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "network_failure_action": _FAILURE_ACTIONS,
    "disk_low_action": _FAILURE_ACTIONS,
    "disk_full_action": _FAILURE_ACTIONS,
    "disk_error_action": _FAILURE_ACTIONS,
    "remote_ending_action": (*_FAILURE_ACTIONS, "reconnect"),
    "generic_error_action": _FAILURE_ACTIONS,
    "generic_warning_action": _FAILURE_ACTIONS,
    "queue_error_action": _FAILURE_ACTIONS,
    "overflow_action": ("ignore", "syslog", "suspend", "single", "halt"),
    "startup_failure_action": ("ignore", "syslog", "exec", "warn_once", "warn_once_continue"),
}


@dataclass(frozen=True)
class RemoteConfig:
    """audisp-remote.conf with the defaults of the 3.0.9 code (not of the shipped file)."""

    remote_server: str | None = None
    port: int = 60
    #: None: any unprivileged port ("any" or 0 in the file).
    local_port: int | None = None
    transport: str = "tcp"
    mode: str = "immediate"
    queue_file: str = "/var/spool/audit/remote.log"
    queue_depth: int = 2048
    format: str = "managed"
    network_retry_time: int = 1
    max_tries_per_record: int = 3
    max_time_per_record: int = 5
    heartbeat_timeout: int = 0
    network_failure_action: Action = Action("stop")
    disk_low_action: Action = Action("ignore")
    disk_full_action: Action = Action("warn_once")
    disk_error_action: Action = Action("warn_once")
    remote_ending_action: Action = Action("reconnect")
    generic_error_action: Action = Action("syslog")
    generic_warning_action: Action = Action("syslog")
    queue_error_action: Action = Action("stop")
    overflow_action: Action = Action("syslog")
    startup_failure_action: Action = Action("warn_once_continue")
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    #: Accepted so Debian's file loads; krb5 itself is not supported.
    krb5_principal: str | None = None
    krb5_client_name: str | None = None
    krb5_key_file: str | None = None

    @property
    def peer(self) -> str:
        host = self.remote_server or "?"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass
class ParsedRemoteConf:
    config: RemoteConfig
    warnings: list[ConfigProblem]
    #: Line that last set each keyword, so later checks can point at it.
    lines: dict[str, int] = field(default_factory=dict)


class _Bad(Exception):
    pass


def _number(value: str, low: int, high: int) -> int:
    try:
        return bounded_uint(value, low, high)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _choice(value: str, allowed: Sequence[str]) -> str:
    folded = fold(value)
    if folded not in allowed:
        raise _Bad(f"{value!r} is not one of {', '.join(allowed)}")
    return folded


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise _Bad(f"{value!r} is not an absolute path")
    return value


def _host(value: str) -> str:
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value) or len(value) > 255:
        raise _Bad(f"{value!r} is not a host name or address")
    return value


def _local_port(value: str) -> int | None:
    if fold(value) == "any":
        return None
    port = _number(value, 0, 65535)
    return port or None


def _transport(value: str) -> str:
    transport = _choice(value, ("tcp", "tls", "krb5"))
    if transport == "krb5":
        raise _Bad("krb5 is not supported by pyaudisp-remote (use tcp or tls)")
    return transport


def _enable_krb5(value: str) -> str:
    if _choice(value, ("yes", "no")) == "yes":
        raise _Bad("krb5 is not supported by pyaudisp-remote")
    return "no"


_Value = str | int | None | Action

_SIMPLE: Final[dict[str, Callable[[str], _Value]]] = {
    "remote_server": _host,
    "port": lambda v: _number(v, 1, 65535),
    "local_port": _local_port,
    "transport": _transport,
    "mode": lambda v: _choice(v, ("immediate", "forward")),
    "queue_file": _abs_path,
    "queue_depth": lambda v: _number(v, 1, INT_MAX),
    "format": lambda v: _choice(v, ("managed", "ascii")),
    "network_retry_time": lambda v: _number(v, 1, INT_MAX),
    "max_tries_per_record": lambda v: _number(v, 1, INT_MAX),
    "max_time_per_record": lambda v: _number(v, 1, INT_MAX),
    "heartbeat_timeout": lambda v: _number(v, 0, INT_MAX),
    "tls_ca_file": _abs_path,
    "tls_cert_file": _abs_path,
    "tls_key_file": _abs_path,
    "tls_server_name": _host,
    "krb5_principal": str,
    "krb5_client_name": str,
    "krb5_key_file": _abs_path,
    "enable_krb5": _enable_krb5,
}
_IGNORED: Final = frozenset({"enable_krb5"})
_KRB5_ONLY: Final = frozenset({"krb5_principal", "krb5_client_name", "krb5_key_file"})
KEYWORDS: Final = frozenset(_SIMPLE) | frozenset(ACTION_CHOICES)


def _action(keyword: str, value: str, option: str | None) -> Action:
    kind = _choice(value, ACTION_CHOICES[keyword])
    if kind == "exec":
        if option is None:
            raise _Bad(f"{keyword}: exec needs the path of a program")
        return Action("exec", _abs_path(option))
    if option is not None:
        raise _Bad(f"{keyword}: unexpected {option!r} after {kind}")
    return Action(kind)


def parse_remote_conf(text: str, path: str = DEFAULT_CONFIG) -> ParsedRemoteConf:
    """Parse the text of an audisp-remote.conf; raise ConfigError listing every problem.

    Pure, so a reload can be validated completely before anything changes.  The syntax is
    auditd.conf's: ``keyword = value`` with the ``=`` between spaces, ``#`` comments, and
    case-insensitive keywords and choices.
    """
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    values: dict[str, _Value] = {}
    lines: dict[str, int] = {}
    for number, tokens in token_lines(text, MAX_CONF_LINE):
        if isinstance(tokens, ValueError):
            errors.append(ConfigProblem(path, number, str(tokens)))
            continue
        keyword = fold(tokens[0])
        if "=" in keyword:
            errors.append(ConfigProblem(
                path, number, f"missing '=' between spaces in {tokens[0]!r}"
            ))
            continue
        if keyword not in KEYWORDS:
            errors.append(ConfigProblem(path, number, f"unknown keyword {tokens[0]!r}"))
            continue
        if len(tokens) < 2 or tokens[1] != "=":
            errors.append(ConfigProblem(
                path, number, f"missing '=' after {tokens[0]!r} (it must stand between spaces)"
            ))
            continue
        if len(tokens) == 2:
            errors.append(ConfigProblem(path, number, f"{keyword}: no value given"))
            continue
        is_action = keyword in ACTION_CHOICES
        if len(tokens) > (4 if is_action else 3):
            errors.append(ConfigProblem(
                path, number, f"{keyword}: unexpected {' '.join(tokens[3:])!r} after the value"
            ))
            continue
        try:
            if is_action:
                values[keyword] = _action(
                    keyword, tokens[2], tokens[3] if len(tokens) == 4 else None
                )
            else:
                if len(tokens) == 4:
                    raise _Bad(f"unexpected {tokens[3]!r} after the value")
                values[keyword] = _SIMPLE[keyword](tokens[2])
        except _Bad as bad:
            message = str(bad)
            if not message.startswith(keyword):
                message = f"{keyword}: {message}"
            errors.append(ConfigProblem(path, number, message))
            continue
        lines[keyword] = number
        if keyword in _KRB5_ONLY:
            warnings.append(ConfigProblem(path, number, f"{keyword} is ignored (no krb5 support)"))
    fields = {
        key: value for key, value in values.items() if key not in _IGNORED
    }
    config = RemoteConfig(**fields)  # type: ignore[arg-type]
    if not errors:
        errors.extend(_cross_checks(config, lines, path, warnings))
    if errors:
        raise ConfigError(errors)
    return ParsedRemoteConf(config, warnings, lines)


def _cross_checks(
    config: RemoteConfig, lines: dict[str, int], path: str, warnings: list[ConfigProblem]
) -> list[ConfigProblem]:
    errors: list[ConfigProblem] = []
    if config.remote_server is None:
        errors.append(ConfigProblem(path, None, "remote_server is not set"))
    if config.format == "ascii" and config.mode == "forward":
        errors.append(ConfigProblem(
            path, lines.get("format"), "mode = forward needs format = managed"
        ))
    if config.format == "ascii" and config.transport == "tls":
        errors.append(ConfigProblem(
            path, lines.get("format"), "transport = tls needs format = managed"
        ))
    if config.tls_key_file and not config.tls_cert_file:
        errors.append(ConfigProblem(
            path, lines.get("tls_key_file"), "tls_key_file is set but tls_cert_file is not"
        ))
    if config.transport != "tls":
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"):
            if getattr(config, key) is not None:
                warnings.append(ConfigProblem(
                    path, lines.get(key), f"{key} is ignored unless transport = tls"
                ))
    return errors


def tls_context(config: RemoteConfig) -> ssl.SSLContext:
    """The client context for `config`; raises OSError or ssl.SSLError."""
    return client_context(
        ca_file=config.tls_ca_file, cert_file=config.tls_cert_file, key_file=config.tls_key_file
    )


def _file_checks(parsed: ParsedRemoteConf, path: str) -> list[ConfigProblem]:
    """What the file names must be usable: exec helpers under the rule every auditpy
    program applies, and TLS files that load."""
    config = parsed.config
    errors: list[ConfigProblem] = []
    for keyword in ACTION_CHOICES:
        action: Action = getattr(config, keyword)
        if action.exe is not None:
            errors.extend(
                ConfigProblem(path, parsed.lines.get(keyword), f"{keyword}: {message}")
                for message in exec_helper_problems(action.exe)
            )
    if config.transport == "tls":
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            name = getattr(config, key)
            if name is not None:
                errors.extend(
                    ConfigProblem(path, parsed.lines.get(key), f"{key}: {message}")
                    for message in tls_file_problems(name, private=key == "tls_key_file")
                )
        if not errors:
            try:
                tls_context(config)
            except (OSError, ValueError) as exc:
                errors.append(ConfigProblem(
                    path, parsed.lines.get("tls_cert_file") or parsed.lines.get("tls_ca_file"),
                    f"cannot load the TLS certificates: {reason(exc)}",
                ))
    return errors


def load_remote_conf(path: str = DEFAULT_CONFIG) -> ParsedRemoteConf:
    """Read, check and parse the file, as at start and on SIGHUP."""
    try:
        file = read_config_file(path)
    except UntrustedFile as exc:
        raise ConfigError(ConfigProblem(path, None, why) for why in exc.reasons) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, None, f"cannot open: {reason(exc)}")]) from None
    parsed = parse_remote_conf(file.text, path)
    errors = _file_checks(parsed, path)
    if errors:
        raise ConfigError(errors)
    return parsed
