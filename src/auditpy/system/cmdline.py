"""The command line of every auditpy program: its parser, and its end when the reader of
its output went away.

The parser is argparse's subset that the programs use (options only: flags, options with one
value, a type, choices, a default, hidden options, ``--help`` and ``--version``), with
argparse's syntax and exit statuses, in a module of its own: argparse and the gettext it
brings would stay resident in every daemon and plugin for a parser that runs once at
start-up (bench/floors.py weighs the imports). Parsing (`OptionParser.parse`) is pure but for
the terminal's width a help text is wrapped at; `parse_args` prints and exits as argparse
does.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from types import SimpleNamespace

from auditpy.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final, NoReturn

__all__ = [
    "EXIT_SIGPIPE",
    "EXIT_USAGE",
    "HIDDEN",
    "Exit",
    "OptionParser",
    "UsageError",
    "argument_parser",
    "stdout_gone",
    "terminal_columns",
]

#: 128 + SIGPIPE: the status a shell shows for a C program that SIGPIPE ended
EXIT_SIGPIPE: Final = 141
#: argparse's status for a command line it cannot parse
EXIT_USAGE: Final = 2
#: `help` of an option the help text does not show (argparse's SUPPRESS)
HIDDEN: Final = "==SUPPRESS=="

#: what argparse takes for a negative number rather than an option
_NEGATIVE: Final = re.compile(r"-\d+$|-\d*\.\d+$")


class UsageError(Exception):
    """The command line cannot be parsed; the message is argparse's."""


@dataclass(frozen=True, slots=True)
class _Option:
    names: tuple[str, ...]
    dest: str
    #: "flag", "value", "help" or "version"
    kind: str
    default: Any
    convert: Callable[[str], Any] | None
    choices: tuple[Any, ...] | None
    metavar: str
    help: str | None
    version: str

    @property
    def label(self) -> str:
        return "/".join(self.names)


@dataclass(frozen=True, slots=True)
class Exit:
    """What the command line asked for instead of a run: help or the version."""

    text: str


class OptionParser:
    """argparse.ArgumentParser's interface for options; see the module docstring."""

    def __init__(self, prog: str, description: str | None = None) -> None:
        self.prog = prog
        self.description = description
        self._options: list[_Option] = []
        self._by_name: dict[str, _Option] = {}
        self.add_argument("-h", "--help", action="help",
                          help="show this help message and exit")

    def add_argument(
        self,
        *names: str,
        dest: str | None = None,
        action: str | None = None,
        default: Any = None,
        type: Callable[[str], Any] | None = None,
        choices: Sequence[Any] | None = None,
        metavar: str | None = None,
        help: str | None = None,
        version: str = "",
    ) -> None:
        if not names or not all(n.startswith("-") and n.strip("-") for n in names):
            raise ValueError(f"options only, each named -x or --name: {names!r}")
        if any(name in self._by_name for name in names):
            raise ValueError(f"option named twice: {names!r}")
        if dest is None:
            first = next((n for n in names if n.startswith("--")), names[0])
            dest = first.lstrip("-").replace("-", "_")
        kind = {None: "value", "store": "value", "store_true": "flag", "help": "help",
                "version": "version"}.get(action)
        if kind is None:
            raise ValueError(f"unsupported action {action!r}")
        if kind == "flag" and default is None:
            default = False
        if kind == "version" and help is None:
            help = "show program's version number and exit"
        option = _Option(names, dest, kind, default, type,
                         None if choices is None else tuple(choices),
                         metavar or dest.upper(), help, version)
        self._options.append(option)
        for name in names:
            self._by_name[name] = option

    # -- parsing (pure) -------------------------------------------------------------------

    def parse(self, argv: Sequence[str]) -> dict[str, Any] | Exit:
        """The values of every option (defaults for those not given), or the help or version
        text when asked; UsageError when `argv` is not this parser's command line."""
        values: dict[str, Any] = {o.dest: o.default for o in self._options
                                  if o.kind in ("flag", "value")}
        extra: list[str] = []
        args = list(argv)
        ends = args.index("--") if "--" in args else len(args)
        for arg in args[:ends]:  # an ambiguous abbreviation is an error before anything
            if arg.startswith("--"):
                self._long(arg.partition("=")[0])
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":  # the end of the options: what follows (and it) are extra
                extra.extend(args[i - 1:])
                break
            named = self._options_of(arg) if self._is_option(arg) else None
            if named is None:  # refused at the end, after --help or --version
                extra.append(arg)
                continue
            for option, explicit in named:
                if option.kind == "help":
                    return Exit(self.format_help())
                if option.kind == "version":
                    return Exit(option.version + "\n")
                if option.kind == "flag":
                    if explicit is not None:
                        raise UsageError(
                            f"argument {option.label}: ignored explicit argument {explicit!r}")
                    values[option.dest] = True
                    continue
                if explicit is None:
                    if i >= len(args) or args[i] == "--" or self._is_option(args[i]):
                        raise UsageError(f"argument {option.label}: expected one argument")
                    explicit = args[i]
                    i += 1
                values[option.dest] = self._value(option, explicit)
        if extra:
            raise UsageError("unrecognized arguments: " + " ".join(extra))
        return values

    def _is_option(self, arg: str) -> bool:
        return len(arg) > 1 and arg[0] == "-" and not _NEGATIVE.match(arg)

    def _options_of(self, arg: str) -> list[tuple[_Option, str | None]] | None:
        """The options one argument names, each with the value it carries (None: the next
        argument is the value, where the option takes one); None for an unknown option."""
        name, eq, value = arg.partition("=")
        if arg.startswith("--"):
            option = self._long(name)
            return None if option is None else [(option, value if eq else None)]
        if name in self._by_name:  # -c or -c=VALUE
            return [(self._by_name[name], value if eq else None)]
        option = self._by_name.get(arg[:2])
        if option is None:
            return None
        if option.kind == "value":  # -cVALUE
            return [(option, arg[2:])]
        found: list[tuple[_Option, str | None]] = [(option, None)]  # -fn: flags together
        rest = arg[2:]
        while rest:
            flag = self._by_name.get("-" + rest[0])
            if flag is None:
                raise UsageError(f"argument {option.label}: ignored explicit argument {rest!r}")
            if flag.kind == "value":
                found.append((flag, rest[1:] or None))
                break
            found.append((flag, None))
            option, rest = flag, rest[1:]
        return found

    def _long(self, name: str) -> _Option | None:
        """`name` or the one long option it abbreviates, as argparse allows."""
        option = self._by_name.get(name)
        if option is not None:
            return option
        matches = sorted(n for n in self._by_name if n.startswith("--") and n.startswith(name))
        if len(matches) > 1:
            raise UsageError(f"ambiguous option: {name} could match {', '.join(matches)}")
        return self._by_name[matches[0]] if matches else None

    @staticmethod
    def _value(option: _Option, text: str) -> Any:
        value: Any = text
        if option.convert is not None:
            try:
                value = option.convert(text)
            except (TypeError, ValueError):
                name = getattr(option.convert, "__name__", repr(option.convert))
                raise UsageError(
                    f"argument {option.label}: invalid {name} value: {text!r}") from None
        if option.choices is not None and value not in option.choices:
            choices = ", ".join(map(repr, option.choices))
            raise UsageError(
                f"argument {option.label}: invalid choice: {value!r} (choose from {choices})")
        return value

    # -- text -----------------------------------------------------------------------------

    def _invocation(self, option: _Option) -> str:
        if option.kind != "value":
            return ", ".join(option.names)
        return ", ".join(f"{name} {self._metavar(option)}" for name in option.names)

    @staticmethod
    def _metavar(option: _Option) -> str:
        if option.choices is not None:
            return "{" + ",".join(map(str, option.choices)) + "}"
        return option.metavar

    def format_usage(self) -> str:
        parts = []
        for option in self._options:
            if option.help == HIDDEN:
                continue
            name = option.names[0]
            parts.append(f"[{name} {self._metavar(option)}]" if option.kind == "value"
                         else f"[{name}]")
        return _wrap(f"usage: {self.prog} ", parts, terminal_columns() - 2)

    def format_help(self) -> str:
        width = terminal_columns() - 2
        text = [self.format_usage(), ""]
        if self.description:
            text += [*_fill(self.description.split(), width, ""), ""]
        text.append("options:")
        shown = [o for o in self._options if o.help != HIDDEN]
        # argparse's help column: two past the longest invocation, at most 24 (less on a
        # narrow terminal)
        column = min(max(len(self._invocation(o)) for o in shown) + 4, 24, max(width - 20, 4))
        for option in shown:
            invocation = "  " + self._invocation(option)
            words = (option.help or "").split()
            if len(invocation) + 2 <= column and words:
                lines = _fill(words, width, " " * column)
                text.append(invocation.ljust(column) + lines[0][column:])
                text += lines[1:]
            else:
                text.append(invocation)
                text += _fill(words, width, " " * column) if words else []
        return "\n".join(text) + "\n"

    # -- the program's end of it ----------------------------------------------------------

    def parse_args(self, argv: Sequence[str] | None = None) -> SimpleNamespace:
        """`parse`'s values as attributes; help and version are printed to stdout and exit
        0, usage errors go to stderr with the usage and exit EXIT_USAGE (argparse's ways)."""
        try:
            parsed = self.parse(sys.argv[1:] if argv is None else argv)
        except UsageError as exc:
            self.error(str(exc))
        if isinstance(parsed, Exit):
            sys.stdout.write(parsed.text)
            sys.stdout.flush()
            raise SystemExit(0)
        return SimpleNamespace(**parsed)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.format_usage()}\n{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _fill(words: list[str], width: int, indent: str) -> list[str]:
    """`words` in lines of at most `width` characters, each starting with `indent` (a word
    longer than a line gets a line of its own)."""
    lines: list[str] = []
    line = indent
    for word in words:
        if line != indent and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent
        line += word if line == indent else " " + word
    if line != indent or not lines:
        lines.append(line)
    return lines


def _wrap(head: str, parts: list[str], width: int) -> str:
    lines: list[str] = []
    line = head.rstrip()
    for part in parts:
        if len(line) > len(head) and len(line) + 1 + len(part) > width:
            lines.append(line)
            line = " " * len(head) + part
        else:
            line += " " + part
    lines.append(line)
    return "\n".join(lines)


def terminal_columns() -> int:
    """The width help text wraps at, found as shutil.get_terminal_size() finds it: $COLUMNS,
    then the terminal on stdout, then 80. (shutil itself would load zlib, bz2 and lzma.)"""
    with contextlib.suppress(ValueError):
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    try:
        return os.get_terminal_size(1).columns or 80
    except OSError:
        return 80


def argument_parser(prog: str, description: str) -> OptionParser:
    """The parser of program `prog`."""
    return OptionParser(prog, description)


def stdout_gone() -> int:
    """After a BrokenPipeError on standard output (`prog | head -1`): standard output goes to
    /dev/null, so that the interpreter's own flush at exit has nowhere to fail, and the
    status is the one a shell shows for the C tools, which SIGPIPE ends quietly."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    return EXIT_SIGPIPE
