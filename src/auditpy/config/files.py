"""The files a root daemon trusts: configuration, exec helpers, plugin programs, TLS files.

Every program of auditpy reads its configuration and starts helpers as root, so the rule for
what it may trust is written once, here, and every reader uses it:

* a configuration file must be a regular file, owned by root, writable by nobody else and no
  larger than `MAX_CONFIG_BYTES`; auditd.conf alone may be group-writable, because the C
  auditd tolerates that (its plugin and remote-logging files never were);
* an exec helper (``*_action = exec``) must be absolute, a regular file, root-owned, with
  the permission bits 0750, 0755, 0555 or 0550, checked when the configuration is read and
  again when the action fires, with the same function;
* a plugin program must be root-owned and not writable by group or others;
* a TLS private key must be root-owned and closed to group and others.

An unprivileged process (a test, or `--check` run by a user) also trusts files it owns
itself: it can be fooled by nobody but itself.
"""

from __future__ import annotations

import os
import stat

from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

#: Larger than any configuration file this package reads can reasonably be.
MAX_CONFIG_BYTES: Final = 64 * 1024
#: Permission bits an exec helper may have; anything else could be altered or run by others.
#: Only the rwx bits count, as in the C daemon: set-id bits change nothing for a program root
#: runs.
EXEC_HELPER_MODES: Final = frozenset({0o750, 0o755, 0o555, 0o550})


def reason(exc: BaseException) -> str:
    """The human part of an exception, for messages that already name the file."""
    ssl_reason = getattr(exc, "reason", None)  # ssl.SSLError's, without importing ssl
    if isinstance(ssl_reason, str) and ssl_reason:
        return ssl_reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def trusted_owner(uid: int) -> bool:
    """root, or the unprivileged user reading its own file."""
    euid = os.geteuid()
    return uid == 0 or (euid != 0 and uid == euid)


class UntrustedFile(ValueError):
    """A file that may not be used; `reasons` are short phrases ("is not owned by root")."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


@dataclass(frozen=True)
class ConfigFile:
    path: str
    data: bytes
    #: st_mode when it was read (a file holding a secret must also be closed to reading)
    mode: int = 0

    @property
    def text(self) -> str:
        """Bytes that are not UTF-8 survive as surrogates, so a parser can name the line."""
        return self.data.decode("utf-8", "surrogateescape")


def read_config_file(
    path: str, *, group_writable: bool = False, follow_symlinks: bool = True
) -> ConfigFile:
    """Read a configuration file after checking that only root can have written it.

    Raises FileNotFoundError when it does not exist (callers decide whether that is fine),
    UntrustedFile with every reason it may not be used, and OSError for other failures to
    open or read it. A symbolic link is refused with ELOOP unless `follow_symlinks`.
    """
    # O_NONBLOCK: a FIFO planted at the path must not hang the reader before fstat refuses it.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        problems = []
        if not stat.S_ISREG(info.st_mode):
            problems.append("is not a regular file")
        if not trusted_owner(info.st_uid):
            problems.append("is not owned by root")
        writable = stat.S_IWOTH if group_writable else stat.S_IWGRP | stat.S_IWOTH
        if info.st_mode & writable:
            problems.append("is world writable" if group_writable else "is group or world writable")
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_CONFIG_BYTES:
            problems.append(f"is larger than {MAX_CONFIG_BYTES} bytes")
        if problems:
            raise UntrustedFile(problems)
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:  # it grew since the fstat
                raise UntrustedFile([f"is larger than {MAX_CONFIG_BYTES} bytes"])
    finally:
        os.close(fd)
    return ConfigFile(path, b"".join(chunks), info.st_mode)


def exec_helper_problems(path: str) -> list[str]:
    """Reasons an exec action's program may not be run by a root daemon (empty if none).

    The program runs as root, so it must be beyond the reach of other users. The same check
    runs when the configuration is read and when the action fires, since the file can change
    in between.
    """
    if not path.startswith("/"):
        return [f"{path!r} is not an absolute path"]
    try:
        info = os.stat(path)  # follows symlinks, as auditd's stat() does
    except (OSError, ValueError) as exc:
        return [f"cannot stat {path!r}: {reason(exc)}"]
    if not stat.S_ISREG(info.st_mode):
        return [f"{path!r} is not a regular file"]
    problems = []
    if not trusted_owner(info.st_uid):
        problems.append(f"{path!r} is not owned by root")
    mode = stat.S_IMODE(info.st_mode) & 0o777
    if mode not in EXEC_HELPER_MODES:
        problems.append(f"{path!r} has mode {mode:04o}; it should be 0750, 0755, 0555 or 0550")
    return problems


@dataclass(frozen=True)
class ProgramIdentity:
    """What a plugin's program was when it was checked. A replaced or rewritten program
    differs in at least one field, so a reload restarts it (and its restart budget is
    refilled: a fixed plugin is never locked out)."""

    dev: int
    ino: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, info: os.stat_result) -> ProgramIdentity:
        return cls(info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def check_plugin_program(path: str) -> tuple[ProgramIdentity | None, str | None]:
    """(identity, None) if `path` may be run as a root plugin, else (None, reason).

    The program runs as root with every audit record, so only root may have written it:
    absolute, a regular file (symlinks followed), root-owned, not group- or
    world-writable, readable and executable by its owner. Checked at load and again
    before every restart, since the file can change in between.
    """
    if not path.startswith("/"):
        return None, f"{path!r} is not an absolute path"
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return None, f"cannot stat {path!r}: {reason(exc)}"
    if not stat.S_ISREG(info.st_mode):
        return None, f"{path!r} is not a regular file"
    if not trusted_owner(info.st_uid):
        return None, f"{path!r} is not owned by root"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None, f"{path!r} is group or world writable"
    if info.st_mode & (stat.S_IRUSR | stat.S_IXUSR) != stat.S_IRUSR | stat.S_IXUSR:
        return None, f"{path!r} is not readable and executable by its owner (use 0750 or 0755)"
    return ProgramIdentity.of(info), None


def tls_file_problems(path: str, *, private: bool) -> list[str]:
    """Reasons a TLS file cannot be used (empty if none).

    A private key readable or writable by anyone but root would let them impersonate the
    server or client, or read what is sent, so it must be root-owned and closed to group and
    others, like the C daemon's key files.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return [f"cannot read {path!r} (cannot stat: {reason(exc)})"]
    if not stat.S_ISREG(info.st_mode):
        return [f"{path!r} is not a regular file"]
    if not os.access(path, os.R_OK):
        return [f"cannot read {path!r}"]
    problems = []
    if private and not trusted_owner(info.st_uid):
        problems.append(f"{path!r} is not owned by root")
    if private and info.st_mode & 0o066:
        problems.append(
            f"{path!r} has mode {stat.S_IMODE(info.st_mode):04o}; a private key must not be "
            "readable or writable by group or others (use 0600 or 0400)"
        )
    return problems
