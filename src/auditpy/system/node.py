"""The node name that goes in front of records (``node=NAME``), resolved in one place."""

from __future__ import annotations

import socket


def node_name(name_format: str, name: str | None) -> str | None:
    """The node= value for `name_format`, or None for NONE. Raises OSError when the host name
    cannot be resolved, which the daemon reports as a start-up failure as auditd does."""
    fmt = name_format.upper()
    if fmt == "NONE":
        return None
    if fmt == "USER":
        return name or None
    host = socket.gethostname()
    if fmt == "HOSTNAME":
        return host.replace(" ", "_")
    if fmt == "FQD":
        info = socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)
        return info[0][3] or host
    if fmt == "NUMERIC":
        info = socket.getaddrinfo(host, None)
        return str(info[0][4][0])
    raise ValueError(f"unknown name_format {name_format}")
