"""asyncio without ssl until TLS is configured.

asyncio imports ssl when it is itself imported (base_events, selector_events and sslproto
each ``try: import ssl``), and ssl brings libssl and libcrypto with it: 4.2 MiB of the
~25 MiB each pyauditd and pyaudispd process held (``python3 -X importtime``, /proc VmRSS),
for TLS that most configurations never use. asyncio is written to run without ssl (a
Python built without it); `asyncio_without_ssl` imports it so, and `asyncio_tls` gives it
ssl once a configuration asks for TLS: each TLS user (the listener's start_tls, the remote
plugin's connection, the NATS client) calls it first. Standard library only: the import
system's documented ``sys.modules[name] = None`` (the import fails) during asyncio's
import, and asyncio's own module-level ``ssl`` names set afterwards.
"""

from __future__ import annotations

import sys
from types import ModuleType

#: asyncio's modules that hold an ``ssl`` of their own (CPython 3.11-3.13).
_ASYNCIO_SSL_USERS = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def asyncio_without_ssl() -> None:
    """Import asyncio, without ssl unless something imported ssl already. Call it first
    thing in a program's main, before any module that imports asyncio."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def asyncio_tls() -> ModuleType:
    """Import ssl and make asyncio's TLS work with it (a no-op when asyncio has it)."""
    import ssl

    for name in _ASYNCIO_SSL_USERS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", ssl) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
            if name == "asyncio.sslproto":
                module.SSLAgainErrors = (  # type: ignore[attr-defined]
                    ssl.SSLWantReadError, ssl.SSLSyscallError)
    return ssl
