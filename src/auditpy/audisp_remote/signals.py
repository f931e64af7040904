"""The signals pyaudisp-remote answers, in one place for the first instruction of `main.main`
(which holds them blocked, before anything slow is imported) and for the plugin's loop (which
reads them from a signalfd): HUP reload and resume, USR1 state report, USR2 resume, TERM and
INT exit.

This module imports nothing but `signal`, so that holding them costs nothing at start-up:
the window in which a SIGHUP could still kill the process is the interpreter's own start.
"""

import signal

HANDLED_SIGNALS = frozenset({
    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT,
})
