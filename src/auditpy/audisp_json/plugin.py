"""pyaudisp-json: whole audit events as JSON lines, as a plugin of any audit dispatcher.

The C auditd (or pyaudispd) runs it with the records on stdin, in the string format (one
line per record) or the binary one (dispatcher frames; detected from the first bytes).  It
is the same pipeline as pyaudispd's ``builtin_json`` (`auditpy.jsonout.pipeline`), in a
process of its own:

    pyaudisp-json --output /var/log/audit/audit.json     # no configuration file needed
    pyaudisp-json --output -                              # to stdout
    pyaudisp-json -c /etc/audit/audisp-json.conf [--check]

``--output`` overrides the file's ``output``.  Signals: HUP re-reads the configuration and
applies it in place (events in flight and the process table are kept; a bad file is
reported with file:line and the old configuration stays); TERM and INT write the events in
flight (marked incomplete) and exit 0; USR1 logs the state report.  End of input does the
same as TERM.  Exit status 1 for a configuration error, 2 for bad arguments.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import Final

from auditpy import structs
from auditpy.config.errors import ConfigError
from auditpy.config.jsonout import JsonConfig, load_json_conf
from auditpy.jsonout.decode import FrameError, StreamDecoder
from auditpy.jsonout.pipeline import JsonPipeline
from auditpy.system.cmdline import argument_parser
from auditpy.system.logsetup import message_handler

PROG: Final = "pyaudisp-json"
READ_SIZE: Final = 1 << 16

log = logging.getLogger("auditpy.jsonout")


def _config(path: str | None, output: str | None) -> JsonConfig:
    """Raises ConfigError."""
    if path is None:
        config = JsonConfig()
    else:
        config, warnings = load_json_conf(path)
        for warning in warnings:
            log.warning("%s", warning)
    if output is not None:
        config = structs.replace(config, output=output)
    return config


class Plugin:
    def __init__(self, pipeline: JsonPipeline, config_path: str | None,
                 output: str | None) -> None:
        self.pipeline = pipeline
        self.config_path = config_path
        self.output = output
        self.decoder = StreamDecoder()
        self.flags: set[int] = set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.flags.add(signum)

    def _reload(self) -> None:
        try:
            config = _config(self.config_path, self.output)
        except ConfigError as exc:
            for problem in exc.errors:
                log.error("%s", problem)
            log.error("keeping the previous configuration")
            return
        self.pipeline.reconfigure(config)
        log.info("configuration reloaded; %d events in flight kept",
                 self.pipeline.assembler.open_events)

    def _feed(self, data: bytes) -> bool:
        """Take one read; False when the input cannot be understood any more."""
        try:
            records = self.decoder.feed(data)
        except FrameError as exc:
            log.error("%s; the input cannot be resynchronised, exiting", exc)
            return False
        pipeline = self.pipeline
        for msg_type, payload in records:
            if msg_type is None:
                pipeline.add_line(payload)
            else:
                pipeline.add_record(msg_type, payload)
        return True

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        pipeline = self.pipeline
        code = 0
        try:
            while True:
                deadline = pipeline.next_deadline()
                timeout = None
                if deadline is not None and pipeline.clock is not None:
                    timeout = max(0.0, deadline - pipeline.clock())
                readable, _, _ = select.select([0, wake_r], [], [], timeout)
                if wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 256)
                if 0 in readable:
                    try:
                        data = os.read(0, READ_SIZE)
                    except BlockingIOError:
                        data = None
                    except OSError as exc:
                        log.error("cannot read records: %s", exc.strerror or exc)
                        code = 1
                        break
                    if data == b"":
                        log.info("end of input")
                        break
                    if data and not self._feed(data):
                        code = 1
                        break
                pipeline.expire()
                if pipeline.clock is not None:
                    pipeline.forget_dead_when_due(pipeline.clock())
                pipeline.flush()
                if self.flags:
                    flags, self.flags = self.flags, set()
                    if signal.SIGUSR1 in flags:
                        for key, value in pipeline.state_lines():
                            log.info("%s = %s", key, value)
                    if signal.SIGHUP in flags:
                        self._reload()
                    if signal.SIGTERM in flags or signal.SIGINT in flags:
                        log.info("stopping on a signal")
                        break
        finally:
            for _type, line in self.decoder.rest():
                pipeline.add_line(line)
            pipeline.close()
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
        stats = pipeline.stats
        log.info("%d events written, %d filtered; %d lines not written", stats.written,
                 stats.filtered, pipeline.sink.stats.dropped)
        return code


HANDLED: Final = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def main(argv: Sequence[str] | None = None) -> int:
    # Held until the loop handles them: a SIGHUP during start-up must not kill the plugin.
    signal.pthread_sigmask(signal.SIG_SETMASK, HANDLED)
    parser = argument_parser(PROG, "Audit plugin writing whole events as JSON lines (laurel's "
                             "layout), with process lineage.")
    parser.add_argument("-c", "--config", help="configuration file (default: none)")
    parser.add_argument("--output", help="file, '-' for stdout, or unix:/path; overrides "
                        "the configuration's output")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and exit")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="messages to stderr instead of syslog")
    args = parser.parse_args(argv)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(message_handler(PROG, args.foreground or args.check or sys.stderr.isatty(),
                                   stderr_format=f"{PROG}: %(levelname)s: %(message)s"))
    if args.output is not None and args.output != "-" and not (
        args.output.startswith("/") or args.output.startswith("unix:/")
    ):
        args.output = os.path.abspath(args.output)
    try:
        config = _config(args.config, args.output)
    except ConfigError as exc:
        for problem in exc.errors:
            log.error("%s", problem)
        return 1
    if args.check:
        print(f"{args.config or '(defaults)'}: configuration is valid; output "
              f"{config.output}")
        return 0
    try:
        os.set_blocking(0, False)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        log.error("no standard input to read records from")
        return 1
    pipeline = JsonPipeline(config)
    log.info("started; writing to %s", pipeline.sink.describe())
    return Plugin(pipeline, args.config, args.output).run()
