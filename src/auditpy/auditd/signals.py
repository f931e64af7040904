"""The signals pyauditd answers, in one place for the first instruction of `cli.main` (which
holds them blocked) and for the daemon (which reads them): HUP reload, USR1 rotate, USR2
resume, CONT state report, TERM and INT stop."""

import signal

HANDLED_SIGNALS = frozenset({
    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGTERM,
    signal.SIGINT,
})
