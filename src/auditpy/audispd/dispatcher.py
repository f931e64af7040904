"""pyaudispd: the audit event dispatcher (a 2.x-style audispd in Python).

pyauditd starts it as ``python3 -m auditpy.audispd -c CONFIG_DIR --base-dir BASE_DIR
--run-dir RUN_DIR`` with fd 0 = its end of a socketpair that carries dispatcher frames
(`auditpy.wire`).  pyaudispd feeds every record to every active plugin of
``plugin_dir``, each through its own bounded queue (`plugin_runner`), and supervises the
plugin processes.

Exit codes: 0 after end of input, SIGTERM/SIGINT, or when no plugin is active (at start or
after a reload: "no active plugins, exiting"; pyauditd starts a new dispatcher on the
SIGHUP that activates one); 1 if the settings cannot be loaded at start, fd 0 is unusable,
or the input is not in the dispatcher protocol; 2 for bad command-line arguments.

Messages go to stderr with -f or when stderr is a terminal, otherwise to syslog (/dev/log,
falling back to stderr), under the logger "auditpy.audispd".  Options hidden from --help
exist for tests: --init-path (never run the real init), --stable-after, --backoff-initial,
--backoff-max, --stop-timeout, --shutdown-timeout and --report-interval (seconds).

Signals: HUP reload (re-read settings and plugins, then start, stop, restart or SIGHUP each
plugin); TERM/INT stop; USR2 resume after an overflow suspend; CONT write
RUN_DIR/audispd.state.  SIGCHLD is not used: every child is watched by its pidfd on the one
asyncio loop, and nothing waits for "any child".

Deviations from the C dispatcher (2.8.5 audispd, and 3.x/4.x's libdisp):

* per-plugin queues and non-blocking writers instead of one queue and blocking writes, so
  one stuck plugin costs only its own records;
* a plugin's death is noticed at once (pidfd), not at the next write's EPIPE; restarts
  use a back-off and a ``max_restarts`` budget that refills after a stable run or when the
  program changes (C: a lifetime count, and before 4.1.0 a plugin over it stayed "active"
  with a dead pipe);
* stopping a plugin closes its input first (it may finish and exit by itself), then
  SIGTERM after 50 ms, then SIGKILL after a timeout (3 s on reload, 5 s at exit), and it is
  always reaped before its replacement starts (2.x: SIGTERM, 50 ms, start the new one);
* a plugin that exhausted its budget is started again by a reload;
* overflow with ``syslog`` logs the first 5 drops and then a periodic per-plugin summary
  instead of going silent; every drop is counted per plugin (state file, exit message);
* ``single``/``halt`` run init once (until SIGUSR2 or a reload), not once per dropped record;
* binary plugins get the header plus exactly ``size`` bytes (as 4.1.1+; Debian's 3.0.9
  wrote a fixed 8970-byte buffer after every header);
* the af_unix builtin serves several clients with non-blocking writes and disconnects one
  that falls ``q_depth`` records behind (2.x: one client, blocking writes);
* plugins get an empty signal mask, default dispositions and their own session.

As in 2.x-4.1 (not 4.2): unchanged plugins get SIGHUP rather than a restart, and a plugin
file with errors only takes its own plugin out (4.2 rejects the whole reload).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from auditpy.audispd.builtin_af_unix import AfUnixPlugin
from auditpy.audispd.builtin_json import JsonPlugin
from auditpy.audispd.builtin_nats import NatsPlugin
from auditpy.audispd.builtin_syslog import SyslogPlugin
from auditpy.audispd.runner import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    STABLE_AFTER,
    STOP_TIMEOUT,
    ExternalPlugin,
    PluginRunner,
    Record,
    RunnerContext,
    State,
    describe_status,
)
from auditpy.config.errors import ConfigError
from auditpy.config.plugins import (
    AF_UNIX,
    JSON,
    NATS,
    SYSLOG,
    DispatcherSettings,
    PluginConfig,
    PluginProblem,
    load_dispatcher_settings,
    load_plugins,
)
from auditpy.proto import dispatch as wire
from auditpy.system.children import INIT_PATH, ChildHandle, spawn_helper
from auditpy.system.logsetup import message_handler
from auditpy.system.node import node_name

log = logging.getLogger("auditpy.audispd")

STATE_FILE = "audispd.state"
#: SIGTERM to SIGKILL when the dispatcher itself stops.
SHUTDOWN_TIMEOUT = 5.0
#: At shutdown, how long queued records may take to reach a plugin before its input closes.
SHUTDOWN_DRAIN = 0.5
#: overflow_action=syslog: drops logged one by one before switching to summaries.
OVERFLOW_REPORT_LIMIT = 5
#: Seconds between the per-plugin summaries of dropped records.
REPORT_INTERVAL = 30.0
#: Signals the dispatcher handles; held blocked until the handlers are in place.
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT)
READ_SIZE = 65536


@dataclass
class Options:
    config_dir: str = "/etc/audit"
    base_dir: str = "/"
    run_dir: str = "/var/run"
    init_path: str = INIT_PATH
    stable_after: float = STABLE_AFTER
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stop_timeout: float = STOP_TIMEOUT
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    report_interval: float = REPORT_INTERVAL


def make_runner(config: PluginConfig, ctx: RunnerContext) -> PluginRunner:
    if config.builtin == AF_UNIX:
        return AfUnixPlugin(config, ctx)
    if config.builtin == SYSLOG:
        return SyslogPlugin(config, ctx)
    if config.builtin == NATS:
        return NatsPlugin(config, ctx)
    if config.builtin == JSON:
        return JsonPlugin(config, ctx)
    return ExternalPlugin(config, ctx)


def node_prefix(settings: DispatcherSettings) -> bytes:
    """``node=NAME `` for V0 string lines, as 2.x audispd's name_format did. The name is
    resolved as pyauditd resolves it; where that fails the records go without one (the
    dispatcher must not stop over it: pyauditd already runs)."""
    try:
        name = node_name(settings.name_format, settings.name)
    except (OSError, IndexError, ValueError) as exc:
        log.warning("cannot resolve the node name for name_format=%s: %s",
                    settings.name_format, exc)
        return b""
    if settings.name_format != "NONE" and not name:
        log.warning("name_format=%s gives no node name; records go without one",
                    settings.name_format)
        return b""
    return b"" if not name else b"node=" + name.encode("utf-8", "backslashreplace") + b" "


def apply_priority(boost: int) -> None:
    """Run at nice -priority_boost (plugins inherit it), never lowering an inherited higher
    priority: pyauditd has usually applied the same boost already."""
    target = -min(boost, 20)
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.warning("cannot apply priority_boost %d: %s", boost, exc.strerror)


class Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, options: Options) -> None:
        self.loop = loop
        self.options = options
        self.settings = DispatcherSettings()
        self.ctx = RunnerContext(
            loop,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
            stable_after=options.stable_after,
        )
        self.plugins: dict[str, PluginRunner] = {}
        self.node = b""
        self.suspended = False
        self.records_in = 0
        self._inbuf = bytearray()
        self._reading = False
        self._done: asyncio.Future[int] = loop.create_future()
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._overflow_reports = 0
        self._runlevel_requested = False
        self._reported_drops: dict[int, int] = {}
        self._report_timer: asyncio.TimerHandle | None = None
        self._helpers: list[ChildHandle] = []
        #: runners a reload is stopping (no longer in `plugins`)
        self._retiring: list[PluginRunner] = []

    # -- start and stop -------------------------------------------------------------------

    async def run(self) -> int:
        settings = self._load_settings()
        if settings is None:
            log.error("cannot load the dispatcher settings, exiting")
            return 1
        self._apply_settings(settings, first=True)
        for signum in HANDLED_SIGNALS:
            self.loop.add_signal_handler(signum, self._on_signal, signum)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())

        configs, problems = load_plugins(settings.plugin_dir)
        self._log_plugin_problems(problems)
        active = {name: config for name, config in configs.items() if config.active}
        if not active:
            log.info("no active plugins, exiting")
            return 0
        try:
            os.set_blocking(0, False)
            self.loop.add_reader(0, self._read_input)
        except (OSError, ValueError) as exc:
            log.error("cannot read records from fd 0: %s", exc)
            return 1
        self._reading = True
        for name, config in active.items():
            runner = make_runner(config, self.ctx)
            self.plugins[name] = runner
            runner.start()
        log.info(
            "pyaudispd initialized with q_depth=%d and %d active plugins",
            settings.q_depth,
            len(self.plugins),
        )
        self._schedule_report()
        try:
            code = await self._done
            await self._shutdown()
        except BaseException:
            self._kill_all()
            raise
        return code

    def _kill_all(self) -> None:
        """Last resort when something unexpected breaks the loop: no child is left behind."""
        self.ctx.shutting_down = True
        for runner in [*self.plugins.values(), *self._retiring]:
            child = getattr(runner, "child", None)
            if isinstance(child, ChildHandle):
                child.terminate(1.0)

    def finish(self, code: int) -> None:
        if not self._done.done():
            self._done.set_result(code)
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(0)
            self._reading = False

    async def _shutdown(self) -> None:
        self.ctx.shutting_down = True
        self._stop_reading()
        if self._report_timer is not None:
            self._report_timer.cancel()
        if self._reload_task is not None and not self._reload_task.done():
            await self._reload_task  # it starts nothing more, and stops are bounded
        runners = list(self.plugins.values())
        await asyncio.gather(
            *(
                r.stop(drain=SHUTDOWN_DRAIN, term_timeout=self.options.shutdown_timeout)
                for r in runners
            )
        )
        for helper in self._helpers:
            helper.wait(1.0)
        log.info("pyaudispd exiting; %d records received", self.records_in)

    # -- signals --------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if not self._done.done():
                log.info("stopping on %s", signal.Signals(signum).name)
            self.finish(0)
        elif signum == signal.SIGUSR2:
            self._resume()
        elif signum == signal.SIGCONT:
            self.write_state()

    def _resume(self) -> None:
        if self.suspended:
            log.warning("resuming event passing to plugins")
        self.suspended = False
        self._runlevel_requested = False
        self._overflow_reports = 0

    # -- input ----------------------------------------------------------------------------

    def _read_input(self) -> None:
        try:
            data = os.read(0, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("cannot read records: %s; exiting", exc.strerror)
            self.finish(1)
            return
        if not data:
            log.info("end of input; stopping")
            self.finish(0)
            return
        self._inbuf += data
        try:
            frames = wire.unpack_frames(self._inbuf)
        except wire.FrameError as exc:
            log.error("%s; the input cannot be resynchronised, exiting", exc)
            self.finish(1)
            return
        node = self.node
        self.dispatch([Record(version, msg_type, payload, node) for version, msg_type, payload
                       in frames])

    def dispatch(self, records: list[Record]) -> None:
        """Queue one read's records for every plugin, then start sending (one send per
        plugin for the lot)."""
        self.records_in += len(records)
        runners = list(self.plugins.values())
        for record in records:
            if self.suspended:
                for runner in runners:
                    runner.dropped += 1
                continue
            for runner in runners:
                if not runner.offer(record):
                    self._overflow(runner)
        for runner in runners:
            runner.flush()

    def _overflow(self, runner: PluginRunner) -> None:
        action = self.settings.overflow_action
        if action == "IGNORE":
            return
        if action == "SYSLOG":
            if self._overflow_reports < OVERFLOW_REPORT_LIMIT:
                self._overflow_reports += 1
                log.warning("queue to plugin %s is full - dropping event", runner.name)
                if self._overflow_reports == OVERFLOW_REPORT_LIMIT:
                    log.warning(
                        "queue full reporting limit reached; dropped events are now "
                        "summarised every %g s",
                        self.options.report_interval,
                    )
            return
        if action == "SUSPEND":
            if not self.suspended:
                log.warning(
                    "suspending event passing to plugins: the queue to plugin %s "
                    "overflowed (SIGUSR2 or a reload resumes)",
                    runner.name,
                )
            self.suspended = True
            return
        # SINGLE or HALT
        if self._runlevel_requested:
            return
        self._runlevel_requested = True
        single = action == "SINGLE"
        log.critical(
            "the queue to plugin %s overflowed; %s",
            runner.name,
            "changing the system to single user mode" if single else "halting the system",
        )
        self._run_helper(self.options.init_path, ["1" if single else "0"])

    def _run_helper(self, path: str, args: list[str]) -> None:
        try:
            child = spawn_helper(path, args)
        except OSError as exc:
            log.critical("cannot run %s: %s", path, exc.strerror or exc)
            return
        self._helpers.append(child)

        def reaped(done: ChildHandle) -> None:
            self._helpers.remove(done)
            log.info("%s %s: %s", path, " ".join(args), describe_status(done.returncode))

        child.attach(self.loop, reaped)

    def _schedule_report(self) -> None:
        if self.ctx.shutting_down:
            return
        self._report_timer = self.loop.call_later(self.options.report_interval, self._report)

    def _report(self) -> None:
        """Periodic summary of drops, so an overflow is never silent for long."""
        self._report_timer = None
        if self.settings.overflow_action != "IGNORE":
            for runner in self.plugins.values():
                last = self._reported_drops.get(id(runner), 0)
                if runner.dropped > last:
                    log.warning(
                        "plugin %s: %d records dropped in the last %g s (%d in all)%s",
                        runner.name,
                        runner.dropped - last,
                        self.options.report_interval,
                        runner.dropped,
                        "; event passing is suspended" if self.suspended else "",
                    )
        self._reported_drops = {id(r): r.dropped for r in self.plugins.values()}
        self._schedule_report()

    # -- reload ---------------------------------------------------------------------------

    def request_reload(self) -> None:
        if self.ctx.shutting_down or self._done.done():
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = self.loop.create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        while True:
            self._reload_again = False
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed")
            if not self._reload_again or self.ctx.shutting_down:
                return

    async def reload(self) -> None:
        log.info("reloading the configuration")
        settings = self._load_settings()
        if settings is None:
            log.error("keeping the previous dispatcher settings")
            settings = self.settings
        self._apply_settings(settings, first=False)
        configs, problems = load_plugins(settings.plugin_dir)
        self._log_plugin_problems(problems)
        broken = {os.path.basename(p.path) for p in problems if p.skipped}
        wanted = {name: config for name, config in configs.items() if config.active}

        stopping: list[tuple[PluginRunner, PluginRunner | None]] = []
        started = signalled = revived = 0
        for name, runner in list(self.plugins.items()):
            config = wanted.get(name)
            if config is None:
                if name in broken:
                    why = "its file has errors"
                elif name in configs:
                    why = "it is no longer active"
                else:
                    why = "its file was removed"
                log.info("stopping plugin %s because %s", name, why)
                del self.plugins[name]
                stopping.append((runner, None))
            elif config.launch_key != runner.config.launch_key:
                log.info("restarting plugin %s: %s", name, _what_changed(runner.config, config))
                successor = make_runner(config, self.ctx)
                self.plugins[name] = successor
                stopping.append((runner, successor))
            elif runner.state is State.FAILED:
                log.info("starting plugin %s again after it failed", name)
                runner.config = config
                runner.revive()
                revived += 1
            else:
                runner.config = config
                runner.hup()
                signalled += 1
        for name, config in wanted.items():
            if name not in self.plugins:
                log.info("starting new plugin %s", name)
                runner = make_runner(config, self.ctx)
                self.plugins[name] = runner
                runner.start()
                started += 1
        if not self.plugins:
            log.info("no active plugins after the reload")

        self._retiring = [runner for runner, _ in stopping]
        try:
            results = await asyncio.gather(
                *(
                    r.stop(term_timeout=self.options.stop_timeout, keep=heir is not None)
                    for r, heir in stopping
                )
            )
        finally:
            self._retiring = []
        restarted = 0
        for (old, heir), leftover in zip(stopping, results, strict=True):
            if heir is None:
                continue
            if isinstance(old, ExternalPlugin) and old.unreaped:
                log.error(
                    "plugin %s: not starting a replacement; pid %s is still there",
                    old.name,
                    old.pid,
                )
                heir.dropped += len(leftover)
                heir.state = State.FAILED
                continue
            heir.adopt(leftover)
            heir.start()
            restarted += 1
        log.info(
            "reload done: %d started, %d stopped, %d restarted, %d signalled, %d revived; "
            "%d plugin file problems; %d active plugins",
            started,
            len(stopping) - restarted,
            restarted,
            signalled,
            revived,
            len([p for p in problems if p.skipped]),
            len(self.plugins),
        )
        if not self.plugins:
            log.info("no active plugins, exiting")
            self.finish(0)

    def _apply_settings(self, settings: DispatcherSettings, *, first: bool) -> None:
        old = self.settings
        self.settings = settings
        self.ctx.q_depth = settings.q_depth
        self.ctx.max_restarts = settings.max_restarts
        if first or settings.priority_boost != old.priority_boost:
            apply_priority(settings.priority_boost)
        if first or (settings.name_format, settings.name) != (old.name_format, old.name):
            self.node = node_prefix(settings)
        if not first:
            self._resume()

    def _load_settings(self) -> DispatcherSettings | None:
        """The settings from auditd.conf and a 2.x audispd.conf; None, with every problem
        logged, when a file may not be used (start-up then fails, a reload keeps the old)."""
        try:
            settings, warnings = load_dispatcher_settings(
                self.options.config_dir, self.options.base_dir
            )
        except ConfigError as exc:
            for problem in exc.errors:
                log.error("%s", problem)
            return None
        self._log_setting_warnings(warnings)
        return settings

    def _log_setting_warnings(self, warnings: list[str]) -> None:
        # auditd.conf's own warnings were reported by pyauditd already.
        for warning in warnings:
            level = logging.DEBUG if "auditd.conf" in warning.split(":", 1)[0] else logging.WARNING
            log.log(level, "%s", warning)

    def _log_plugin_problems(self, problems: list[PluginProblem]) -> None:
        for problem in problems:
            if problem.skipped:
                log.error("skipping plugin: %s", problem)
            else:
                log.warning("%s", problem)

    # -- state report ---------------------------------------------------------------------

    def state_text(self) -> str:
        s = self.settings
        lines = [
            ("dispatcher pid", os.getpid()),
            ("current time", time.strftime("%x %X")),
            ("config dir", self.options.config_dir),
            ("q_depth", s.q_depth),
            ("overflow_action", s.overflow_action),
            ("priority_boost", s.priority_boost),
            ("max_restarts", s.max_restarts),
            ("name_format", s.name_format),
            ("name", s.name or ""),
            ("plugin_dir", s.plugin_dir),
            ("queueing suspended", "yes" if self.suspended else "no"),
            ("records received", self.records_in),
            ("number of active plugins", len(self.plugins)),
        ]
        out = [f"{key} = {value}" for key, value in lines]
        for name, runner in sorted(self.plugins.items()):
            out.append("")
            out.append(f"[plugin {name}]")
            out.extend(f"{key} = {value}" for key, value in runner.state_lines())
        return "\n".join(out) + "\n"

    def write_state(self) -> None:
        path = os.path.join(self.options.run_dir, STATE_FILE)
        tmp = path + ".tmp"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640
            )
            try:
                os.fchmod(fd, 0o640)
                os.write(fd, self.state_text().encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc.strerror)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _what_changed(old: PluginConfig, new: PluginConfig) -> str:
    changes = [
        label
        for label, attr in (
            ("path", "path"),
            ("args", "args"),
            ("format", "format"),
            ("type", "type"),
            ("program file", "identity"),
        )
        if getattr(old, attr) != getattr(new, attr)
    ]
    return ", ".join(changes) + " changed"


# --------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyaudispd", description="audit event dispatcher: feeds records to plugins"
    )
    parser.add_argument("-c", "--config-dir", default="/etc/audit", help="auditd.conf directory")
    parser.add_argument("--base-dir", default="/", help="anchor for relative paths")
    parser.add_argument("--run-dir", default="/var/run", help="where audispd.state goes")
    parser.add_argument("-f", "--foreground", action="store_true", help="messages to stderr")
    parser.add_argument("-d", "--debug", action="store_true", help="debug messages")
    hidden = argparse.SUPPRESS
    # Test hooks: never run the real init, and shorten timers.
    parser.add_argument("--init-path", default=INIT_PATH, help=hidden)
    parser.add_argument("--stable-after", type=float, default=STABLE_AFTER, help=hidden)
    parser.add_argument("--backoff-initial", type=float, default=BACKOFF_INITIAL, help=hidden)
    parser.add_argument("--backoff-max", type=float, default=BACKOFF_MAX, help=hidden)
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT, help=hidden)
    parser.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT, help=hidden)
    parser.add_argument("--report-interval", type=float, default=REPORT_INTERVAL, help=hidden)
    return parser


def _setup_logging(foreground: bool, debug: bool) -> None:
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    log.addHandler(message_handler(
        "pyaudispd", foreground or sys.stderr.isatty(),
        stderr_format="pyaudispd: %(levelname)s: %(message)s",
    ))


async def _amain(options: Options) -> int:
    dispatcher = Dispatcher(asyncio.get_running_loop(), options)
    return await dispatcher.run()


def main(argv: Sequence[str] | None = None) -> int:
    # Hold the signals we handle until the loop has handlers for them (pyauditd may also
    # spawn us with them blocked); a SIGHUP at start must not kill the dispatcher.
    signal.pthread_sigmask(signal.SIG_SETMASK, HANDLED_SIGNALS)
    # SIG_IGN for SIGCHLD, if inherited, would make the kernel reap plugins for us and
    # leave nothing for their pidfds to report.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    _setup_logging(args.foreground, args.debug)
    options = Options(
        config_dir=os.path.join(args.base_dir, args.config_dir),
        base_dir=args.base_dir,
        run_dir=os.path.join(args.base_dir, args.run_dir),
        init_path=args.init_path,
        stable_after=args.stable_after,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        stop_timeout=args.stop_timeout,
        shutdown_timeout=args.shutdown_timeout,
        report_interval=args.report_interval,
    )
    try:
        return asyncio.run(_amain(options))
    except Exception:
        log.exception("pyaudispd failed")
        return 1

