"""pyaudisp-nats: an audit dispatcher plugin publishing every record to a NATS JetStream
stream (exactly once, in order per node: see `auditpy.nats.publisher`).

It runs under pyaudispd or under the C auditd's dispatcher: records come on stdin, one line
per record (``format = string``) or in binary dispatcher frames (detected from the first
byte, as audisp-af_unix does).  The same publisher runs inside pyaudispd as
``builtin_nats``.

    pyaudisp-nats [-c CONFIG] [--check] [--no-syslog]
    pyaudisp-nats [-c CONFIG] --create-stream REPLICAS [--duplicate-window SECONDS]

``--create-stream`` creates the configuration's stream (file storage, REPLICAS copies, the
subjects of ``subject`` with ``{node}`` as a wildcard) unless it exists, and exits.

Signals: SIGTERM/SIGINT exit at once (queued records stay in the queue file); SIGHUP reads
the configuration again and reconnects with it (the queue settings change only at restart);
SIGUSR1 logs the counters.  At the end of input it keeps delivering for up to
`EOF_DRAIN` seconds, then exits; what is left stays queued for the next start.

Exit status: 0 normally, 1 for a configuration or queue file that cannot be used or for
unreadable input, 2 for a usage error.
"""

from __future__ import annotations

import signal
import syslog
from collections.abc import Sequence
from typing import Final

from auditpy.config.errors import ConfigError
from auditpy.config.nats_conf import (
    DEFAULT_PUBLISHER_CONF,
    PUBLISHER,
    NatsConf,
    load_nats_conf,
)
from auditpy.nats import jetstream as jsapi
from auditpy.nats.client import Client, NatsError, options_for
from auditpy.nats.publisher import Publisher
from auditpy.proto import jetstream as js
from auditpy.proto.dispatch import FrameError
from auditpy.proto.plugin_input import INPUT_CHUNK, MAX_INPUT_LINE, InputDecoder
from auditpy.system import evloop
from auditpy.system.cmdline import argument_parser
from auditpy.system.logsetup import PluginLog
from auditpy.system.service import Signal, SignalReader, hold_signals
from auditpy.system.spool import QueueError
from auditpy.system.stdin import StdinReader

PROG: Final = "pyaudisp-nats"
#: At the end of the input, how long queued records may take to be delivered.
EOF_DRAIN: Final = 10.0
HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class NatsPlugin:
    def __init__(self, config_path: str, publisher: Publisher, log: PluginLog,
                 stdin_fd: int = 0) -> None:
        self.config_path = config_path
        self.publisher = publisher
        self.log = log
        self.stdin_fd = stdin_fd
        self.decoder = InputDecoder()
        self.exit_code = 0
        self._done: evloop.Future[int] | None = None

    def _finish(self, code: int, why: str) -> None:
        if self._done is not None and not self._done.done():
            self.exit_code = code
            self.log(syslog.LOG_INFO if code == 0 else syslog.LOG_ERR, why)
            self._done.set_result(code)

    def _reload(self) -> None:
        try:
            parsed = load_nats_conf(self.config_path, PUBLISHER)
        except ConfigError as exc:
            for problem in exc.errors:
                self.log(syslog.LOG_ERR, str(problem))
            self.log(syslog.LOG_ERR, "SIGHUP: configuration refused; keeping the running one")
            return
        try:
            self.publisher.reconfigure(parsed.config)
        except (OSError, ValueError) as exc:
            self.log(syslog.LOG_ERR, f"SIGHUP: cannot load the TLS files ({exc}); keeping "
                     "the running configuration")
            return
        self.log(syslog.LOG_INFO, "SIGHUP: configuration reloaded; reconnecting")

    async def _read_input(self) -> None:
        publisher = self.publisher
        reader = StdinReader(evloop.running_loop(), self.stdin_fd, INPUT_CHUNK)
        try:
            while True:
                if not reader.pollable:
                    await publisher.wait_for_room()
                try:
                    data = await reader.read()
                except OSError as exc:
                    self._finish(1, f"cannot read stdin: {exc.strerror or exc}")
                    return
                if not data:
                    break
                try:
                    records = self.decoder.feed(data)
                except FrameError as exc:
                    self._finish(1, f"stdin: {exc}; reading no further input")
                    return
                publisher.submit(records)
        finally:
            reader.close()
        rest, cut_bytes = self.decoder.finish()
        publisher.submit(rest)
        if cut_bytes:
            self.log(syslog.LOG_WARNING, f"end of input: {cut_bytes} bytes of an incomplete "
                     "binary record were dropped")
        if self.decoder.cut_lines:
            self.log(syslog.LOG_WARNING, f"{self.decoder.cut_lines} input lines longer than "
                     f"{MAX_INPUT_LINE} bytes were cut")
        left = 0 if await publisher.drain(EOF_DRAIN) else len(publisher.queue)
        where = "stay queued for the next start" if publisher.queue.durable else "are lost"
        self._finish(0, "end of input; every record was delivered; exiting" if not left else
                     f"end of input; {left} records {where}")

    async def run(self) -> int:
        loop = evloop.running_loop()
        self._done = loop.create_future()
        # read from a signalfd (system.service), never by handlers: a storm coalesces
        signals = SignalReader(loop, HANDLED_SIGNALS, self._on_signal)
        tasks = [evloop.create_task(self.publisher.run(), name="publisher"),
                 evloop.create_task(self._read_input(), name="input")]
        for task in tasks:
            task.add_done_callback(self._task_done)
        try:
            return await self._done
        finally:
            signals.close()
            await self.publisher.stop()
            for task in tasks:
                task.cancel()
            await evloop.gather(*tasks, return_exceptions=True)
            left = len(self.publisher.queue)
            self.log(syslog.LOG_INFO, self.publisher.state_line())
            self.publisher.close()
            if left and self.publisher.queue.durable:
                self.log(syslog.LOG_INFO,
                         f"{left} records kept in {self.publisher.conf.queue_file}")

    def _on_signal(self, sig: Signal) -> None:
        if sig.signum in (signal.SIGTERM, signal.SIGINT):
            self._finish(0, f"{signal.Signals(sig.signum).name}: exiting")
        elif sig.signum == signal.SIGHUP:
            self._reload()
        elif sig.signum == signal.SIGUSR1:
            self.log(syslog.LOG_INFO, self.publisher.state_line())

    def _task_done(self, task: evloop.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._finish(1, f"internal error in the {task.get_name()} task: {exc!r}")


async def create_stream(conf: NatsConf, replicas: int, window: float, log: PluginLog) -> int:
    if not 1 <= replicas <= 5 or window <= 0:
        log(syslog.LOG_ERR, "--create-stream takes 1..5 replicas and a positive window")
        return 2
    subject = conf.subject.replace("{node}", "*")
    client = Client(options_for(conf, PROG))
    try:
        await client.connect()
        info = await jsapi.ensure_stream(client, js.stream_config(
            conf.stream, [subject], replicas=replicas, duplicate_window_s=window))
    except (NatsError, js.JetStreamError) as exc:
        log(syslog.LOG_ERR, f"cannot create stream {conf.stream}: {exc}")
        return 1
    finally:
        client.close()
    config = info.get("config")
    shown = config if isinstance(config, dict) else {}
    log(syslog.LOG_INFO, f"stream {conf.stream}: subjects {shown.get('subjects')}, "
        f"{shown.get('num_replicas')} replicas, duplicate window "
        f"{int(shown.get('duplicate_window', 0) or 0) / 1e9:g} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        PROG, "Audit dispatcher plugin publishing records to NATS JetStream.")
    parser.add_argument("-c", "--config", default=DEFAULT_PUBLISHER_CONF,
                        help=f"configuration file (default {DEFAULT_PUBLISHER_CONF})")
    parser.add_argument("--check", action="store_true", help="check the configuration and exit")
    parser.add_argument("--no-syslog", action="store_true", help="log to stderr only")
    parser.add_argument("--create-stream", type=int, metavar="REPLICAS",
                        help="create the stream with REPLICAS copies (1..5) and exit")
    parser.add_argument("--duplicate-window", type=float, default=120.0, metavar="SECONDS",
                        help="with --create-stream: how long a Nats-Msg-Id is remembered")
    args = parser.parse_args(argv)
    log = PluginLog(PROG, use_syslog=not args.no_syslog)
    try:
        parsed = load_nats_conf(args.config, PUBLISHER)
    except ConfigError as exc:
        for problem in exc.errors:
            log(syslog.LOG_ERR, str(problem))
        return 1
    for problem in parsed.warnings:
        log(syslog.LOG_WARNING, str(problem))
    if args.check:
        return 0
    if args.create_stream is not None:
        return evloop.run(create_stream(parsed.config, args.create_stream,
                                         args.duplicate_window, log))
    # From here on the signals wait for the loop's signalfd (system.service), in every thread
    hold_signals(HANDLED_SIGNALS)
    try:
        publisher = Publisher(parsed.config, log, program=PROG)
        publisher.open()
    except (QueueError, OSError, ValueError) as exc:
        log(syslog.LOG_ERR, f"{exc}; exiting")
        return 1
    log(syslog.LOG_INFO, f"started: servers {','.join(str(s) for s in parsed.config.servers)}, "
        f"subject {parsed.config.subject}, queue "
        f"{parsed.config.queue_file or 'in memory'} ({len(publisher.queue)} records)")
    plugin = NatsPlugin(args.config, publisher, log)
    return evloop.run(plugin.run())
