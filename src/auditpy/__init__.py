"""auditpy: the Linux audit daemon and its dispatcher, in Python."""

__version__ = "0.1.0"
#: Version string written in DAEMON_START records; it names this implementation so that
#: records from pyauditd and the C auditd can be told apart in a shared log.
AUDIT_VERSION = f"auditpy-{__version__}"
