"""TLS contexts for the remote-logging link, built in one place for the check that validates
a configuration and for the program that then uses it, so `--check` and a reload catch a bad
PEM file or a key that does not match its certificate before anything changes."""

from __future__ import annotations

from auditpy.config.files import reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Imported where a context is made: ssl costs every process megabytes of memory, and
    # only a configuration with TLS needs it.
    import ssl


class TLSSetupError(ValueError):
    """A TLS file could not be loaded; the message names which."""


def server_context(
    cert_file: str, key_file: str, ca_file: str | None, *, verify_client: bool
) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later, and with `verify_client` only peers whose
    certificate chains to `ca_file` complete the handshake."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:
        raise TLSSetupError(
            f"cannot load tls_cert_file/tls_key_file: {reason(exc)}"
        ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ValueError) as exc:
            raise TLSSetupError(f"cannot load tls_ca_file: {reason(exc)}") from None
    if verify_client:
        if ca_file is None:
            raise TLSSetupError("tls_verify_client = yes needs tls_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    *, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """A client context: the server must prove itself against `ca_file` (or the system
    store), and we present `cert_file` if one is configured. Raises OSError/SSLError."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
