"""auditd.conf: parsing, validation and loading.

The behaviour follows Debian's auditd 3.0.9 (the program on the target machines), checked
against that program where the man page is silent.  Parsing is a pure function so the
daemon can re-read the file on SIGHUP, compare the result with the running configuration
(`changed_keys`) and refuse the whole file without side effects if anything is wrong.
Everything that needs the file system beyond a group lookup lives in `load_auditd_conf`.

Deliberate differences from the C daemon (each one only ever rejects input that 3.0.9 would
have accepted in a surprising way, or reports more):

* every error in the file is reported, not just the first one;
* a line with too many tokens is always an error (3.0.9 only logs it for the four
  ``*_action`` keywords that take an option, and keeps going);
* a line holding a NUL byte or bytes that are not UTF-8 is an error (3.0.9 mis-reads a NUL
  line as "too long" and then silently drops the *next* line as well);
* ``N%`` must be 1..99 and exactly one ``%`` (3.0.9 reads ``0%`` and ``%`` as 0 MiB and
  ``5%%`` as 5%), tcp_client_ports must be ``N`` or ``N-M`` with ports 1..65535 (3.0.9 takes
  port 0 and ``1-2-3``), a numeric log_group must be all digits (3.0.9 reads ``12abc`` as
  gid 12) and q_depth 0 is refused (3.0.9 only warns, but a queue needs a slot);
* the action_mail_acct domain is not looked up: 3.0.9 treats every lookup failure as
  temporary and only logs it, so skipping the lookup never changes what is accepted, and it
  keeps DNS stalls out of SIGHUP handling;
* `kernel_link` is an auditpy keyword; the C daemon rejects a file that uses it;
* `nats_collector` (auditpy only) names the NATS file of a JetStream collector; that file
  is parsed and checked along with auditd.conf, its problems named with its own lines;
* ``transport = TLS`` with ``tls_cert_file``, ``tls_key_file``, ``tls_ca_file`` and
  ``tls_verify_client`` is auditpy's own network encryption (certificates, Python's ssl),
  not the 4.2 PSK scheme; ``transport = KRB5`` is refused when a listener would use it,
  since the standard library has no Kerberos.
"""

from __future__ import annotations

import grp
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping

from auditpy import structs
from auditpy.config.errors import ConfigError, ConfigProblem
from auditpy.config.files import (
    UntrustedFile,
    exec_helper_problems,
    read_config_file,
    reason,
    tls_file_problems,
)
from auditpy.config.lines import LineTooLong, UnterminatedLine, fold, token_lines
from auditpy.config.tls import TLSSetupError, server_context
from auditpy.structs import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

#: 3.0.9 reads lines into a 160-byte buffer with fgets(); the newline and the terminating
#: NUL must fit too, so a line may hold at most 158 bytes.  Longer lines are skipped.
MAX_LINE_BYTES: Final = 158

INT_MAX: Final = 2**31 - 1
#: strtoul() on 64-bit Linux; keywords without a tighter limit accept up to this.
ULONG_MAX: Final = 2**64 - 1
#: gid_t is 32 bits and (gid_t)-1 means "no change" to chown(), so it is not a usable group.
MAX_GID: Final = 2**32 - 2
TCP_PORT_MAX: Final = 65535

#: Where the C daemon runs email actions through; only its absence is reported.
SENDMAIL: Final = "/usr/lib/sendmail"

DEFAULT_CONFIG_FILE: Final = "/etc/audit/auditd.conf"


@dataclass(frozen=True)
class AuditdConfig:
    """The settings of auditd.conf(5) for 3.0.9, with the C code defaults.

    Enumerations are upper-case strings spelled as in the man page, so they can be logged
    and compared without a translation table.  ``*_exe`` is set only when the matching
    action is ``EXEC``.  With ``*_percent`` set, ``space_left``/``admin_space_left`` hold a
    percentage of the log file system rather than MiB.
    """

    local_events: bool = True
    log_file: str = "/var/log/audit/audit.log"
    write_logs: bool = True
    log_format: str = "ENRICHED"
    log_group: str = "root"
    log_gid: int = 0
    priority_boost: int = 4
    flush: str = "NONE"
    freq: int = 0
    num_logs: int = 0
    name_format: str = "NONE"
    name: str | None = None
    max_log_file: int = 0
    max_log_file_action: str = "IGNORE"
    #: 3.0.9 has no exec for max_log_file_action (4.1 added it), so this stays None; it is
    #: here so that code written for both generations need not special-case it.
    max_log_file_exe: str | None = None
    verify_email: bool = True
    action_mail_acct: str = "root"
    space_left: int = 0
    space_left_percent: bool = False
    space_left_action: str = "IGNORE"
    space_left_exe: str | None = None
    admin_space_left: int = 0
    admin_space_left_percent: bool = False
    admin_space_left_action: str = "IGNORE"
    admin_space_left_exe: str | None = None
    disk_full_action: str = "IGNORE"
    disk_full_exe: str | None = None
    disk_error_action: str = "SYSLOG"
    disk_error_exe: str | None = None
    tcp_listen_port: int | None = None
    tcp_listen_queue: int = 5
    tcp_max_per_addr: int = 1
    use_libwrap: bool = True
    #: Inclusive range of accepted client source ports; the default admits any port.
    tcp_client_ports: tuple[int, int] = (0, TCP_PORT_MAX)
    tcp_client_max_idle: int = 0
    transport: str = "TCP"
    enable_krb5: bool = False
    krb5_principal: str = "auditd"
    krb5_key_file: str = "/etc/audit/audit.key"
    distribute_network: bool = False
    #: auditpy only (transport = TLS): the listener's certificate chain and private key
    #: (PEM), and the CA that client certificates must be signed by.  With
    #: tls_verify_client a client without such a certificate is refused.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    tls_verify_client: bool = True
    q_depth: int = 2000
    overflow_action: str = "SYSLOG"
    max_restarts: int = 10
    plugin_dir: str = "/etc/audit/plugins.d"
    end_of_event_timeout: int = 2
    #: 2.x keywords: accepted with a warning and otherwise ignored, as 3.0.9 does.
    dispatcher: str | None = None
    disp_qos: str | None = None
    #: auditpy only.  REGISTER: become the audit daemon (audit_set_pid) like auditd.
    #: MULTICAST: only join the kernel's read-log multicast group, so that pyauditd can
    #: run read-only next to another audit daemon.
    kernel_link: str = "REGISTER"
    #: audit 4.x: seconds between state reports written without a SIGCONT; 0 = never.
    report_interval: int = 0
    #: auditpy only: where the Prometheus metrics are served (`host:port`, `[v6]:port` or
    #: `unix:/path`); None = not served.
    metrics_listen: str | None = None
    #: auditpy only: the mode of a `unix:` metrics socket.
    metrics_socket_mode: int = 0o600
    #: auditpy only.  The NATS file (audisp-nats.conf syntax) of a JetStream collector:
    #: with it, pyauditd also writes the records of a shared pull consumer to its log.
    nats_collector: str | None = None

    def resolved_paths(self, cwd: str) -> AuditdConfig:
        """Anchor relative paths at `cwd`.

        A detaching daemon changes to / and a reload may come from anywhere, so a relative
        path would otherwise change meaning between start and SIGHUP.  Exec helper paths
        are absolute already (the parser insists).
        """
        updates: dict[str, Any] = {
            name: os.path.join(cwd, value)
            for name in _PATH_ATTRIBUTES
            if (value := getattr(self, name)) is not None and not value.startswith("/")
        }
        return structs.replace(self, **updates) if updates else self


#: Path-valued settings that the parser leaves as given, relative or not.
_PATH_ATTRIBUTES: Final = (
    "log_file",
    "plugin_dir",
    "krb5_key_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
    "nats_collector",
)


@dataclass(frozen=True)
class MetricsAddress:
    """Where metrics are served: a TCP host and port, or a UNIX socket path."""

    host: str | None = None
    port: int = 0
    path: str | None = None


def metrics_address(value: str) -> MetricsAddress:
    """Parse `metrics_listen`: ``127.0.0.1:9101``, ``[::1]:9101`` or ``unix:/run/x``.
    Raises ValueError. Host names are refused: resolving one would make a reload wait on
    DNS, and an address is what a firewall rule names anyway."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise ValueError(f"{value!r}: the socket path must be absolute")
        return MetricsAddress(path=path)
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [ADDRESS]:PORT")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not ADDRESS:PORT or unix:/PATH")
    import ipaddress  # only for metrics_listen: most configurations never load it

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= TCP_PORT_MAX:
        raise ValueError(f"{port!r} is not a port number (1-65535)")
    if value.startswith("[") != (address.version == 6):
        raise ValueError(f"{value!r}: write an IPv6 address as [ADDRESS]:PORT")
    return MetricsAddress(host=str(address), port=int(port))


def changed_keys(old: AuditdConfig, new: AuditdConfig) -> set[str]:
    """Attribute names whose values differ, so a reload re-applies only what changed."""
    names = (f.name for f in structs.fields(AuditdConfig))
    return {name for name in names if getattr(old, name) != getattr(new, name)}


# --------------------------------------------------------------------------------------
# Value parsers.  Each keyword maps to a function that turns the value (and option) of one
# line into attribute updates, or raises _BadValue.  Parsers see the state built so far
# because 3.0.9 is order dependent (verify_email must precede action_mail_acct, and
# log_format=nolog overrides whatever write_logs said before it).


class _BadValue(Exception):
    """A value that makes the line, and so the whole file, unacceptable."""


@dataclass
class _Line:
    keyword: str
    value: str
    option: str | None
    state: Mapping[str, Any]
    warnings: list[str] = field(default_factory=list)


if TYPE_CHECKING:
    _Parser = Callable[[_Line], dict[str, Any]]


@dataclass(frozen=True)
class _Keyword:
    parse: _Parser
    #: Only the disk space actions take an option (the exec path); 3.0.9 refuses an option
    #: on every other keyword.
    takes_option: bool = False


_DIGITS: Final = re.compile(r"[0-9]+")
_PERCENT: Final = re.compile(r"([0-9]+)%")
_PORTS: Final = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_EMAIL_CHARS: Final = re.compile(r"[A-Za-z0-9@._-]*")



def _uint(text: str, keyword: str, low: int = 0, high: int = ULONG_MAX) -> int:
    if not _DIGITS.fullmatch(text):
        raise _BadValue(f"{keyword}: value {text!r} should only be digits")
    # More than 20 digits cannot fit an unsigned long; checking first also keeps int()
    # away from Python's limit on very long digit strings.
    if len(text.lstrip("0")) > 20 or int(text) > ULONG_MAX:
        raise _BadValue(f"{keyword}: value {text} is out of range")
    number = int(text)
    if number < low:
        raise _BadValue(f"{keyword}: value {number} is too small (minimum {low})")
    if number > high:
        raise _BadValue(f"{keyword}: value {number} is too large (maximum {high})")
    return number


def _yes_no(attr: str) -> _Parser:
    def parse(line: _Line) -> dict[str, Any]:
        folded = fold(line.value)
        if folded not in ("yes", "no"):
            raise _BadValue(f"{line.keyword}: value {line.value!r} should be yes or no")
        return {attr: folded == "yes"}

    return parse


def _choose(line: _Line, allowed: Iterable[str], known: Iterable[str] = ()) -> str:
    """Match an enumeration value; `known` values exist for other keywords but not here."""
    folded = fold(line.value)
    allowed = tuple(allowed)
    if folded in allowed:
        return folded.upper()
    if folded in tuple(known):
        raise _BadValue(f"{line.keyword}: {folded} is not allowed for this keyword")
    raise _BadValue(
        f"{line.keyword}: unknown value {line.value!r} (expected one of {', '.join(allowed)})"
    )


def _enum(attr: str, allowed: Iterable[str]) -> _Parser:
    choices = tuple(allowed)

    def parse(line: _Line) -> dict[str, Any]:
        return {attr: _choose(line, choices)}

    return parse


def _number(attr: str, low: int = 0, high: int = ULONG_MAX) -> _Parser:
    def parse(line: _Line) -> dict[str, Any]:
        return {attr: _uint(line.value, line.keyword, low, high)}

    return parse


def _text(attr: str) -> _Parser:
    def parse(line: _Line) -> dict[str, Any]:
        return {attr: line.value}

    return parse


_FAILURE_ACTIONS: Final = (
    "ignore",
    "syslog",
    "rotate",
    "email",
    "exec",
    "suspend",
    "single",
    "halt",
)


def _action(prefix: str, allowed: Iterable[str]) -> _Parser:
    """A disk space action: `exec` needs an absolute path as the option."""
    choices = tuple(allowed)

    def parse(line: _Line) -> dict[str, Any]:
        action = _choose(line, choices, _FAILURE_ACTIONS)
        exe: str | None = None
        if action == "EXEC":
            if line.option is None:
                raise _BadValue(f"{line.keyword}: exec needs the path of a program")
            if not line.option.startswith("/"):
                raise _BadValue(f"{line.keyword}: exec needs an absolute path, not {line.option!r}")
            exe = line.option
        elif line.option is not None:
            line.warnings.append(
                f"{line.keyword}: option {line.option!r} is ignored; only exec takes one"
            )
        return {f"{prefix}_action": action, f"{prefix}_exe": exe}

    return parse


def _space(attr: str) -> _Parser:
    def parse(line: _Line) -> dict[str, Any]:
        percent = _PERCENT.fullmatch(line.value)
        if percent is None:
            if "%" in line.value:
                raise _BadValue(f"{line.keyword}: {line.value!r} should be N (MiB) or N% (1..99)")
            return {attr: _uint(line.value, line.keyword), f"{attr}_percent": False}
        return {attr: _uint(percent.group(1), line.keyword, 1, 99), f"{attr}_percent": True}

    return parse


def _posix_dirname(path: str) -> str:
    """dirname(3) as glibc computes it; the C checks compare its result as a string."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    head, slash, _ = stripped.rpartition("/")
    if not slash:
        return "."
    return head.rstrip("/") or "/"


def _log_file(line: _Line) -> dict[str, Any]:
    directory = _posix_dirname(line.value)
    if len(directory) < 4:  # "/var" is the shortest directory auditd accepts
        raise _BadValue(f"log_file: directory {directory!r} of {line.value!r} is too short")
    return {"log_file": line.value}


def _log_group(line: _Line) -> dict[str, Any]:
    if _DIGITS.fullmatch(line.value):
        return {"log_group": line.value, "log_gid": _uint(line.value, "log_group", 0, MAX_GID)}
    try:
        gid = grp.getgrnam(line.value).gr_gid
    except (KeyError, ValueError, UnicodeError, OSError):
        raise _BadValue(f"log_group: unknown group {line.value!r}") from None
    return {"log_group": line.value, "log_gid": gid}


def _log_format(line: _Line) -> dict[str, Any]:
    chosen = _choose(line, ("raw", "enriched", "nolog"))
    if chosen != "NOLOG":
        return {"log_format": chosen}
    line.warnings.append("log_format: NOLOG is deprecated; use write_logs = no instead")
    if line.state["write_logs"]:
        line.warnings.append("log_format: NOLOG overrides write_logs and turns it off")
    return {"log_format": chosen, "write_logs": False}


def _action_mail_acct(line: _Line) -> dict[str, Any]:
    """Check the characters the way 3.0.9 does, but only if verify_email came first."""
    account = line.value
    if line.state["verify_email"]:
        if len(account) < 2:
            raise _BadValue(f"action_mail_acct: {account!r} is too short (at least 2 characters)")
        if not _EMAIL_CHARS.fullmatch(account):
            raise _BadValue(
                f"action_mail_acct: {account!r} has a character other than letters, digits, "
                "'@', '.', '-' and '_'"
            )
        if "@" in account and account.rfind(".") < account.find("@"):
            raise _BadValue(f"action_mail_acct: {account!r} should have a '.' after the '@'")
    return {"action_mail_acct": account}


def _tcp_client_ports(line: _Line) -> dict[str, Any]:
    match = _PORTS.fullmatch(line.value)
    if match is None:
        raise _BadValue(f"tcp_client_ports: {line.value!r} should be a port or two joined by '-'")
    low = _uint(match.group(1), line.keyword, 1, TCP_PORT_MAX)
    high = low if match.group(2) is None else _uint(match.group(2), line.keyword, 1, TCP_PORT_MAX)
    if low > high:
        raise _BadValue(f"tcp_client_ports: range {low}-{high} is reversed")
    return {"tcp_client_ports": (low, high)}


def _q_depth(line: _Line) -> dict[str, Any]:
    depth = _uint(line.value, line.keyword, 1, 99999)
    if depth < 512:
        line.warnings.append(f"q_depth: {depth} is small; use at least 512 for a safety margin")
    return {"q_depth": depth}


def _enable_krb5(line: _Line) -> dict[str, Any]:
    update = _yes_no("enable_krb5")(line)
    line.warnings.append("enable_krb5 is deprecated; use transport = KRB5")
    if update["enable_krb5"]:
        update["transport"] = "KRB5"
    return update


def _dispatcher(line: _Line) -> dict[str, Any]:
    line.warnings.append("dispatcher is deprecated and ignored; plugins are run by the daemon")
    return {"dispatcher": line.value}


def _disp_qos(line: _Line) -> dict[str, Any]:
    line.warnings.append("disp_qos is deprecated and ignored")
    folded = fold(line.value)
    if folded in ("lossy", "lossless"):
        return {"disp_qos": folded.upper()}
    # 3.0.9 accepts any value here because it ignores the keyword.
    line.warnings.append(f"disp_qos: {line.value!r} is not lossy or lossless")
    return {"disp_qos": None}


def _metrics_listen(line: _Line) -> dict[str, Any]:
    try:
        metrics_address(line.value)
    except ValueError as exc:
        raise _BadValue(f"metrics_listen: {exc}") from None
    return {"metrics_listen": line.value}


def _metrics_socket_mode(line: _Line) -> dict[str, Any]:
    value = line.value
    if not value.isascii() or not value.isdigit() or any(c > "7" for c in value):
        raise _BadValue(f"metrics_socket_mode: {value!r} is not an octal mode like 0660")
    mode = int(value, 8)
    if mode > 0o777 or mode & 0o007:
        raise _BadValue(f"metrics_socket_mode: {value} must be at most 0770 (nothing for "
                        "others: the figures describe the audit trail)")
    return {"metrics_socket_mode": mode}


_KEYWORDS: Final[Mapping[str, _Keyword]] = {
    "local_events": _Keyword(_yes_no("local_events")),
    "write_logs": _Keyword(_yes_no("write_logs")),
    "log_file": _Keyword(_log_file),
    "log_format": _Keyword(_log_format),
    "log_group": _Keyword(_log_group),
    "flush": _Keyword(_enum("flush", ("none", "incremental", "incremental_async", "data", "sync"))),
    "freq": _Keyword(_number("freq", 0, INT_MAX)),
    "num_logs": _Keyword(_number("num_logs", 0, 999)),
    "dispatcher": _Keyword(_dispatcher),
    "name_format": _Keyword(_enum("name_format", ("none", "hostname", "fqd", "numeric", "user"))),
    "name": _Keyword(_text("name")),
    "disp_qos": _Keyword(_disp_qos),
    "max_log_file": _Keyword(_number("max_log_file")),
    "max_log_file_action": _Keyword(
        _enum("max_log_file_action", ("ignore", "syslog", "suspend", "rotate", "keep_logs"))
    ),
    "space_left": _Keyword(_space("space_left")),
    "space_left_action": _Keyword(_action("space_left", _FAILURE_ACTIONS), takes_option=True),
    "action_mail_acct": _Keyword(_action_mail_acct),
    "verify_email": _Keyword(_yes_no("verify_email")),
    "admin_space_left": _Keyword(_space("admin_space_left")),
    "admin_space_left_action": _Keyword(
        _action("admin_space_left", _FAILURE_ACTIONS), takes_option=True
    ),
    "disk_full_action": _Keyword(
        _action("disk_full", [a for a in _FAILURE_ACTIONS if a != "email"]), takes_option=True
    ),
    "disk_error_action": _Keyword(
        _action("disk_error", [a for a in _FAILURE_ACTIONS if a not in ("email", "rotate")]),
        takes_option=True,
    ),
    "priority_boost": _Keyword(_number("priority_boost", 0, INT_MAX)),
    "tcp_listen_port": _Keyword(_number("tcp_listen_port", 1, TCP_PORT_MAX)),
    "tcp_listen_queue": _Keyword(_number("tcp_listen_queue", 1, TCP_PORT_MAX)),
    "tcp_max_per_addr": _Keyword(_number("tcp_max_per_addr", 1, 1024)),
    "use_libwrap": _Keyword(_yes_no("use_libwrap")),
    "tcp_client_ports": _Keyword(_tcp_client_ports),
    "tcp_client_max_idle": _Keyword(_number("tcp_client_max_idle", 0, INT_MAX)),
    "transport": _Keyword(_enum("transport", ("tcp", "tls", "krb5"))),
    "enable_krb5": _Keyword(_enable_krb5),
    "krb5_principal": _Keyword(_text("krb5_principal")),
    "krb5_key_file": _Keyword(_text("krb5_key_file")),
    "distribute_network": _Keyword(_yes_no("distribute_network")),
    "tls_cert_file": _Keyword(_text("tls_cert_file")),
    "tls_key_file": _Keyword(_text("tls_key_file")),
    "tls_ca_file": _Keyword(_text("tls_ca_file")),
    "tls_verify_client": _Keyword(_yes_no("tls_verify_client")),
    "q_depth": _Keyword(_q_depth),
    "overflow_action": _Keyword(
        _enum("overflow_action", ("ignore", "syslog", "suspend", "single", "halt"))
    ),
    "max_restarts": _Keyword(_number("max_restarts", 0, INT_MAX)),
    "plugin_dir": _Keyword(_text("plugin_dir")),
    "end_of_event_timeout": _Keyword(_number("end_of_event_timeout")),
    "kernel_link": _Keyword(_enum("kernel_link", ("register", "multicast"))),
    "report_interval": _Keyword(_number("report_interval", 0, INT_MAX)),
    "metrics_listen": _Keyword(_metrics_listen),
    "metrics_socket_mode": _Keyword(_metrics_socket_mode),
    "nats_collector": _Keyword(_text("nats_collector")),
}

#: The public keyword list, in the order of the man page (plus auditpy's kernel_link,
#: tls_*, report_interval, metrics_* and nats_collector keywords).
KEYWORDS: Final = tuple(_KEYWORDS)


# --------------------------------------------------------------------------------------
# The line scanner and the checks that need the whole file.


@dataclass
class _Parse:
    """Everything collected while scanning one file."""

    path: str
    state: dict[str, Any]
    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    #: Last line that set each keyword, to point sanity errors at a line.
    where: dict[str, int] = field(default_factory=dict)
    #: Keywords with a rejected value; checks that depend on them would only add noise.
    failed: set[str] = field(default_factory=set)
    #: Number of complete lines; 3.0.9 runs its sanity checks only if there is one.
    lines: int = 0

    def error(self, line: int | None, message: str) -> None:
        self.errors.append(ConfigProblem(self.path, line, message))

    def warn(self, line: int | None, message: str) -> None:
        self.warnings.append(ConfigProblem(self.path, line, message))


def _scan_line(parse: _Parse, number: int, tokens: list[str] | ValueError) -> None:
    if isinstance(tokens, UnterminatedLine):
        parse.warn(number, str(tokens))
        return
    if isinstance(tokens, LineTooLong):
        parse.warn(number, f"{tokens} and is skipped")
        return
    if isinstance(tokens, ValueError):
        parse.error(number, str(tokens))
        return
    if len(tokens) >= 2 and tokens[1] != "=":
        parse.error(number, f"missing '=' after {tokens[0]!r} (it must stand between spaces)")
        return
    if len(tokens) < 3 or len(tokens) > 4:
        parse.error(number, "wrong number of tokens; expected 'keyword = value [option]'")
        return
    _apply(parse, number, tokens[0], tokens[2], tokens[3] if len(tokens) == 4 else None)


def _apply(parse: _Parse, number: int, name: str, value: str, option: str | None) -> None:
    keyword = fold(name)
    spec = _KEYWORDS.get(keyword)
    if spec is None:
        parse.error(number, f"unknown keyword {name!r}")
        return
    if option is not None and not spec.takes_option:
        parse.failed.add(keyword)
        parse.error(number, f"{keyword} takes no option, but {option!r} was given")
        return
    line = _Line(keyword, value, option, parse.state)
    try:
        updates = spec.parse(line)
    except _BadValue as bad:
        parse.failed.add(keyword)
        parse.error(number, str(bad))
        return
    parse.state.update(updates)
    parse.where[keyword] = number
    for message in line.warnings:
        parse.warn(number, message)


def _first_line(parse: _Parse, keywords: Iterable[str]) -> int | None:
    for keyword in keywords:
        if keyword in parse.where:
            return parse.where[keyword]
    return None


def _sanity_check(parse: _Parse) -> None:
    """Cross-keyword rules, which 3.0.9 applies only to a file with at least one line."""
    state = parse.state

    def usable(*keywords: str) -> bool:
        return not parse.failed.intersection(keywords)

    if (
        usable("space_left", "admin_space_left")
        and not state["space_left_percent"]
        and not state["admin_space_left_percent"]
        and state["space_left"] <= state["admin_space_left"]
    ):
        parse.error(
            _first_line(parse, ("space_left", "admin_space_left")),
            f"space_left ({state['space_left']}) must be larger than admin_space_left "
            f"({state['admin_space_left']})",
        )
    incremental = state["flush"] in ("INCREMENTAL", "INCREMENTAL_ASYNC")
    if usable("flush", "freq") and incremental and state["freq"] == 0:
        parse.error(
            _first_line(parse, ("freq", "flush")),
            f"flush = {state['flush']} needs freq > 0",
        )
    if (
        usable("log_group", "log_file")
        and state["log_gid"] != 0
        and _posix_dirname(state["log_file"]) == "/var/log"
    ):
        parse.error(
            _first_line(parse, ("log_file", "log_group")),
            "log_file is directly in /var/log: giving its directory to log_group would change "
            "a system directory; use another directory",
        )
    # 3.0.9 warns only for data and sync; freq is harmless with flush = none.
    if usable("flush", "freq") and state["flush"] in ("DATA", "SYNC") and state["freq"] != 0:
        parse.warn(
            _first_line(parse, ("freq", "flush")),
            f"freq is {state['freq']} but flush = {state['flush']} is not incremental",
        )


def _parse(text: str, path: str) -> _Parse:
    defaults = AuditdConfig()
    state = {f.name: getattr(defaults, f.name) for f in structs.fields(AuditdConfig)}
    parse = _Parse(path, state)
    # fgets() ends lines at '\n' only; the sanity checks run once a line is complete.
    parse.lines = text.count("\n")
    for number, tokens in token_lines(text, MAX_LINE_BYTES, last_line_needs_newline=True):
        _scan_line(parse, number, tokens)
    if parse.lines > 0:
        _sanity_check(parse)
    return parse


def parse_auditd_conf(
    text: str, path: str = "auditd.conf"
) -> tuple[AuditdConfig, list[ConfigProblem]]:
    """Parse auditd.conf text into a configuration and its warnings.

    Pure apart from the group lookup for log_group, which 3.0.9 also does while parsing,
    so a reload can be validated completely before anything is changed.  `path` is only
    used in messages.  Raises ConfigError with every error found.
    """
    parse = _parse(text, path)
    if parse.errors:
        raise ConfigError(parse.errors)
    return AuditdConfig(**parse.state), parse.warnings


# --------------------------------------------------------------------------------------
# The file-system edge.


def log_file_problems(path: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the log file's directory and an existing log file.

    auditd refuses a log file it could not safely append to as root: a missing directory,
    something that is not a regular file, or a file somebody else owns.  A symbolic link is
    refused too, even one to a good file: the log is opened with O_NOFOLLOW so that nobody
    can redirect the audit trail, and checking here is what turns that refusal into a
    FILE:LINE error before the daemon starts, rather than a failed open after.
    """
    directory = _posix_dirname(path)
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            return [f"log directory {directory!r} is not a directory"], []
    except (OSError, ValueError) as exc:
        return [f"cannot open log directory {directory!r}: {reason(exc)}"], []
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [], []  # created when the daemon opens it
    except (OSError, ValueError) as exc:
        return [f"cannot stat log file {path!r}: {reason(exc)}"], []
    if stat.S_ISLNK(info.st_mode):
        return [
            f"log file {path!r} is a symbolic link; the audit daemon does not follow one "
            "(name the file itself)"
        ], []
    if not stat.S_ISREG(info.st_mode):
        return [f"log file {path!r} is not a regular file"], []
    if info.st_uid != 0:
        return [f"log file {path!r} is not owned by root"], []
    warnings = []
    if info.st_mode & (stat.S_IXUSR | stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        warnings.append(f"log file {path!r} permissions should be 0600 or 0640")
    if not info.st_mode & stat.S_IWUSR:
        warnings.append(f"log file {path!r} is not writable by its owner")
    return [], warnings


_EXE_KEYWORDS: Final = (
    ("space_left_exe", "space_left_action"),
    ("admin_space_left_exe", "admin_space_left_action"),
    ("disk_full_exe", "disk_full_action"),
    ("disk_error_exe", "disk_error_action"),
    ("max_log_file_exe", "max_log_file_action"),
)


def _check_file_system(parse: _Parse, config: AuditdConfig) -> None:
    for attr, keyword in _EXE_KEYWORDS:
        exe = getattr(config, attr)
        if exe is not None:
            for message in exec_helper_problems(exe):
                parse.error(parse.where.get(keyword), f"{keyword}: {message}")
    errors, warnings = log_file_problems(config.log_file)
    line = parse.where.get("log_file")
    for message in errors:
        parse.error(line, message)
    for message in warnings:
        parse.warn(line, message)
    emails = [
        keyword
        for keyword in ("space_left_action", "admin_space_left_action")
        if getattr(config, keyword) == "EMAIL"
    ]
    if emails and not os.access(SENDMAIL, os.X_OK):
        parse.warn(
            parse.where.get(emails[0]),
            f"{emails[0]} is email, but {SENDMAIL} is not executable",
        )


def _tls_load_problem(config: AuditdConfig) -> str | None:
    """Load the files the way the listener will."""
    assert config.tls_cert_file is not None and config.tls_key_file is not None
    try:
        server_context(
            config.tls_cert_file, config.tls_key_file, config.tls_ca_file, verify_client=False
        )
    except TLSSetupError as exc:
        return str(exc)
    return None


def _check_transport(parse: _Parse, config: AuditdConfig) -> None:
    """The network transport only matters with a listener; without one, say so and go on."""
    line = parse.where.get("transport", parse.where.get("enable_krb5"))
    if config.tcp_listen_port is None:
        if config.transport != "TCP":
            parse.warn(line, f"transport = {config.transport} has no effect without "
                       "tcp_listen_port")
        return
    if config.transport == "KRB5":
        parse.error(line, "transport = KRB5 (Kerberos) is not supported by auditpy; "
                    "use transport = TLS")
        return
    if config.transport != "TLS":
        for keyword in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            if getattr(config, keyword) is not None:
                parse.warn(parse.where.get(keyword), f"{keyword} is ignored unless "
                           "transport = TLS")
        return
    wanted = [("tls_cert_file", False), ("tls_key_file", True)]
    if config.tls_verify_client or config.tls_ca_file is not None:
        wanted.append(("tls_ca_file", False))
    missing = False
    for keyword, private in wanted:
        path = getattr(config, keyword)
        if path is None:
            missing = True
            why = " (tls_verify_client = yes)" if keyword == "tls_ca_file" else ""
            parse.error(line, f"transport = TLS needs {keyword}{why}")
            continue
        for message in tls_file_problems(path, private=private):
            missing = True
            parse.error(parse.where.get(keyword), f"{keyword}: {message}")
    if not missing:
        problem = _tls_load_problem(config)
        if problem is not None:
            parse.error(parse.where.get("tls_cert_file", line), problem)


def _check_nats(parse: _Parse, config: AuditdConfig) -> None:
    """The collector's NATS file is checked with auditd.conf, so that --check and a reload
    report its problems (with its own file and line) before anything changes."""
    if config.nats_collector is None:
        return
    from auditpy.config.nats_conf import COLLECTOR, load_nats_conf

    try:
        parsed = load_nats_conf(config.nats_collector, COLLECTOR)
    except ConfigError as exc:
        parse.errors.extend(exc.errors)
        parse.error(parse.where.get("nats_collector"),
                    f"nats_collector: {config.nats_collector!r} cannot be used")
        return
    parse.warnings.extend(parsed.warnings)


def load_auditd_conf(
    path: str = DEFAULT_CONFIG_FILE, *, allow_symlink: bool = False, base_dir: str = "/"
) -> tuple[AuditdConfig, list[ConfigProblem]]:
    """Read, check and parse an auditd.conf as the daemon does at start and on SIGHUP.

    A missing file yields the defaults and a warning, like auditd.  Bytes that are not
    UTF-8 are decoded with surrogateescape so the parser can name the bad line.  Relative
    paths are anchored at `base_dir` before the file-system checks.
    """
    try:
        file = read_config_file(path, group_writable=True, follow_symlinks=allow_symlink)
    except FileNotFoundError:
        default = AuditdConfig()
        return default, [ConfigProblem(path, None, "does not exist; using the defaults")]
    except UntrustedFile as exc:
        raise ConfigError(ConfigProblem(path, None, why) for why in exc.reasons) from None
    except (OSError, ValueError) as exc:
        if not allow_symlink and os.path.islink(path):
            message = "is a symbolic link (allowed only with allow_symlink / auditd -l)"
        else:
            message = f"cannot read: {reason(exc)}"
        raise ConfigError([ConfigProblem(path, None, message)]) from None
    parse = _parse(file.text, path)
    if parse.errors:
        raise ConfigError(parse.errors)
    config = AuditdConfig(**parse.state).resolved_paths(base_dir)
    _check_file_system(parse, config)
    _check_transport(parse, config)
    _check_nats(parse, config)
    if parse.errors:
        raise ConfigError(parse.errors)
    return config, parse.warnings
