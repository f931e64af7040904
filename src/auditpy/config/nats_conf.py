"""The NATS file: where the JetStream publisher and the collector find the cluster.

One syntax and one parser for both ends (``audisp-nats.conf`` for the publisher, the file
named by auditd.conf's ``nats_collector`` for the collector), so the connection settings
are written the same way everywhere.  The syntax is auditd.conf's (``keyword = value``,
``=`` between spaces, ``#`` comments, case-insensitive keywords); every problem is reported
with file and line.  Parsing is pure; `load_nats_conf` adds the file-system checks.

Secrets (``password``, ``token``) live in this file rather than in auditd.conf, which the
C tools read and which may be readable by a log group; a file holding one must not be
readable by group or others.

Keys (P: publisher only, C: collector only):

=================== =================================================================
servers             comma-separated ``nats://`` / ``tls://`` URLs (required); the rest of
                    a cluster is learnt from the servers
user, password      user/password authentication (or ``user:password@`` in a URL)
token               token authentication
tls                 ``yes``: refuse servers without TLS (implied by ``tls://`` URLs)
tls_ca_file         CA that server certificates must chain to (default: system CAs)
tls_cert_file       client certificate (PEM), with tls_key_file
tls_key_file        its private key
tls_server_name     the name server certificates must carry (default: the host)
name                client name shown by the server (default: the program and host)
stream              the JetStream stream (default AUDIT)
connect_timeout     seconds per connection attempt (default 5)
ping_interval       seconds between keepalive PINGs (default 10; 2 unanswered = dead)
subject        P    subject to publish to; ``{node}`` becomes the node name with dots as
                    ``_`` (default ``audit.{node}``)
node           P    node name for records without ``node=`` (default: the host name)
queue_file     P    the on-disk queue, or ``none`` for memory only
                    (default /var/spool/audit/nats.queue)
queue_depth    P    records kept at most; beyond, new records are dropped and counted
                    (default 100000)
window         P    publishes awaiting their acknowledgement at once (default 256)
ack_timeout    P    seconds to wait for a publish acknowledgement (default 5)
recover_from   P    the local audit log, read after a restart for records logged while
                    the publisher was not running, or ``none``
                    (default /var/log/audit/audit.log)
consumer       C    the durable pull consumer shared by all collectors (default pyauditd)
batch          C    records asked for per pull request (default 256)
ack_wait       C    seconds before an unacknowledged record goes to another collector
                    (set when the consumer is created; default 30)
max_ack_pending C   unacknowledged records at once, all collectors together (default 20000)
create_consumer C   ``yes``: create the consumer if it does not exist (default yes)
peer_logs      C    glob of the logs of the other collectors of this consumer, read to
                    tell whether a redelivered record was already written (default none)
=================== =================================================================
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from auditpy import structs
from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import UntrustedFile, read_config_file, reason, tls_file_problems
from auditpy.config.lines import fold, token_lines
from auditpy.config.tls import client_context
from auditpy.proto.jetstream import check_name
from auditpy.proto.nats import ServerUrl, check_subject, parse_server_url
from auditpy.structs import dataclass, field

if TYPE_CHECKING:
    import ssl

DEFAULT_PUBLISHER_CONF: Final = "/etc/audit/audisp-nats.conf"
MAX_LINE: Final = 4096
MAX_FILE: Final = 1 << 20
PUBLISHER: Final = "publisher"
COLLECTOR: Final = "collector"


@dataclass(frozen=True)
class NatsConf:
    servers: tuple[ServerUrl, ...] = ()
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    name: str | None = None
    stream: str = "AUDIT"
    connect_timeout: float = 5.0
    ping_interval: float = 10.0
    # publisher
    subject: str = "audit.{node}"
    node: str | None = None
    queue_file: str | None = "/var/spool/audit/nats.queue"
    queue_depth: int = 100_000
    window: int = 256
    ack_timeout: float = 5.0
    recover_from: str | None = "/var/log/audit/audit.log"
    # collector
    consumer: str = "pyauditd"
    batch: int = 256
    ack_wait: float = 30.0
    max_ack_pending: int = 20_000
    create_consumer: bool = True
    peer_logs: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(s.tls for s in self.servers)

    def subject_for(self, node_token: str) -> str:
        return self.subject.replace("{node}", node_token)

    def client_name(self, program: str) -> str:
        return self.name or f"{program}@{socket.gethostname()}"


@dataclass
class ParsedNatsConf:
    config: NatsConf
    warnings: list[ConfigProblem]
    lines: dict[str, int] = field(default_factory=dict)


class _Bad(ValueError):
    pass


def _servers(value: str) -> tuple[ServerUrl, ...]:
    urls = []
    for part in value.split(","):
        if not part:
            raise _Bad(f"empty server in {value!r}")
        try:
            urls.append(parse_server_url(part))
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    return tuple(urls)


def _yes_no(value: str) -> bool:
    folded = fold(value)
    if folded not in ("yes", "no"):
        raise _Bad(f"{value!r} should be yes or no")
    return folded == "yes"


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isascii() or not value.isdigit() or len(value) > 10:
            raise _Bad(f"{value!r} should be a number")
        number = int(value)
        if not low <= number <= high:
            raise _Bad(f"{number} is out of range ({low}..{high})")
        return number

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise _Bad(f"{value!r} should be a number of seconds") from None
        if not low <= number <= high:
            raise _Bad(f"{value} is out of range ({low:g}..{high:g} seconds)")
        return number

    return parse


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise _Bad(f"{value!r} is not an absolute path")
    return value


def _path_or_none(value: str) -> str | None:
    return None if fold(value) == "none" else _path(value)


def _text(value: str) -> str:
    if not value.isprintable():
        raise _Bad("holds control characters")
    return value


def _stream(value: str) -> str:
    try:
        check_name("stream", value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return value


def _consumer(value: str) -> str:
    try:
        check_name("consumer", value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return value


def _subject(value: str) -> str:
    try:
        check_subject(value.replace("{node}", "node"))
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return value


_COMMON: Final[dict[str, Callable[[str], object]]] = {
    "servers": _servers,
    "user": _text,
    "password": _text,
    "token": _text,
    "tls": _yes_no,
    "tls_ca_file": _path,
    "tls_cert_file": _path,
    "tls_key_file": _path,
    "tls_server_name": _text,
    "name": _text,
    "stream": _stream,
    "connect_timeout": _seconds(0.1, 600),
    "ping_interval": _seconds(0, 3600),
}
_PUBLISHER: Final[dict[str, Callable[[str], object]]] = {
    "subject": _subject,
    "node": _text,
    "queue_file": _path_or_none,
    "queue_depth": _int(1, 100_000_000),
    "window": _int(1, 65536),
    "ack_timeout": _seconds(0.1, 600),
    "recover_from": _path_or_none,
}
_COLLECTOR: Final[dict[str, Callable[[str], object]]] = {
    "consumer": _consumer,
    "batch": _int(1, 4096),
    "ack_wait": _seconds(1, 86400),
    "max_ack_pending": _int(1, 10_000_000),
    "create_consumer": _yes_no,
    "peer_logs": _path_or_none,
}
KEYWORDS: Final = frozenset(_COMMON) | frozenset(_PUBLISHER) | frozenset(_COLLECTOR)


def parse_nats_conf(text: str, path: str, role: str = PUBLISHER) -> ParsedNatsConf:
    """Parse the file's text; raises ConfigError listing every problem (file:line)."""
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    own = _PUBLISHER if role == PUBLISHER else _COLLECTOR
    other = _COLLECTOR if role == PUBLISHER else _PUBLISHER
    for number, tokens in token_lines(text, MAX_LINE):
        if isinstance(tokens, ValueError):
            errors.append(ConfigProblem(path, number, str(tokens)))
            continue
        keyword = fold(tokens[0])
        if len(tokens) < 2 or tokens[1] != "=":
            errors.append(ConfigProblem(
                path, number, f"missing '=' after {tokens[0]!r} (it must stand between spaces)"
            ))
            continue
        if keyword not in KEYWORDS:
            errors.append(ConfigProblem(path, number, f"unknown keyword {tokens[0]!r}"))
            continue
        if len(tokens) != 3:
            what = "no value given" if len(tokens) == 2 else (
                f"unexpected {' '.join(tokens[3:])!r} after the value")
            errors.append(ConfigProblem(path, number, f"{keyword}: {what}"))
            continue
        if keyword in lines:
            warnings.append(ConfigProblem(
                path, number, f"{keyword} was already set on line {lines[keyword]}; "
                "this value is used"
            ))
        parser = _COMMON.get(keyword) or own.get(keyword) or other[keyword]
        try:
            value = parser(tokens[2])
        except _Bad as exc:
            errors.append(ConfigProblem(path, number, f"{keyword}: {exc}"))
            continue
        if keyword in other:
            warnings.append(ConfigProblem(
                path, number, f"{keyword} is ignored by the {role}"
            ))
            continue
        values[keyword] = value
        lines[keyword] = number
    config = structs.replace(NatsConf(), **values)
    if not errors:
        errors += _cross_checks(config, lines, path, warnings)
    if errors:
        raise ConfigError(errors)
    return ParsedNatsConf(config, warnings, lines)


def _cross_checks(
    config: NatsConf, lines: dict[str, int], path: str, warnings: list[ConfigProblem]
) -> list[ConfigProblem]:
    errors = []
    if not config.servers:
        errors.append(ConfigProblem(path, None, "servers is not set"))
    if config.tls_key_file and not config.tls_cert_file:
        errors.append(ConfigProblem(
            path, lines.get("tls_key_file"), "tls_key_file is set but tls_cert_file is not"
        ))
    if config.tls_cert_file and not config.tls_key_file:
        warnings.append(ConfigProblem(
            path, lines.get("tls_cert_file"),
            "tls_cert_file without tls_key_file: the key must be in the certificate file",
        ))
    if config.token and (config.user or config.password):
        errors.append(ConfigProblem(
            path, lines.get("token"), "token and user/password exclude each other"
        ))
    if config.password and not config.user:
        errors.append(ConfigProblem(path, lines.get("password"), "password without user"))
    if not config.uses_tls:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name"):
            if getattr(config, key) is not None:
                warnings.append(ConfigProblem(
                    path, lines.get(key),
                    f"{key} is used only for tls:// servers or with tls = yes "
                    "(or when a server requires TLS)",
                ))
    return errors


def tls_context(config: NatsConf) -> ssl.SSLContext | None:
    """The client TLS context the settings ask for (None: nothing configured, the system
    CAs are used if a server wants TLS).  Raises OSError / ssl.SSLError."""
    if not (config.uses_tls or config.tls_ca_file or config.tls_cert_file):
        return None
    return client_context(ca_file=config.tls_ca_file, cert_file=config.tls_cert_file,
                          key_file=config.tls_key_file)


def load_nats_conf(path: str, role: str = PUBLISHER) -> ParsedNatsConf:
    """Read, check and parse the file (the rule for trusted files of config.files), and
    also closed to reading by group and others when it holds a secret; the TLS files
    usable and loadable. Raises ConfigError."""
    try:
        file = read_config_file(path)
    except UntrustedFile as exc:
        raise ConfigError(ConfigProblem(path, None, why) for why in exc.reasons) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigProblem(path, None, f"cannot open: {reason(exc)}")]) from None
    parsed = parse_nats_conf(file.text, path, role)
    config = parsed.config
    errors = []
    secret = "password" if config.password else "token" if config.token else None
    if secret and file.mode & (stat.S_IRGRP | stat.S_IROTH):
        errors.append(ConfigProblem(
            path, parsed.lines.get(secret),
            f"holds a {secret} but is readable by group or others (use mode 0600)",
        ))
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        name = getattr(config, key)
        if name is not None:
            errors.extend(
                ConfigProblem(path, parsed.lines.get(key), f"{key}: {message}")
                for message in tls_file_problems(name, private=key == "tls_key_file"))
    if not errors:
        try:
            tls_context(config)
        except (OSError, ValueError) as exc:
            where = parsed.lines.get("tls_cert_file") or parsed.lines.get("tls_ca_file")
            errors.append(ConfigProblem(
                path, where, f"cannot load the TLS certificates: {reason(exc)}"
            ))
    if errors:
        raise ConfigError(errors)
    return parsed
