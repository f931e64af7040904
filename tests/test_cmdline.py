"""The programs' option parser (auditpy.system.cmdline) against argparse, its model: the same
values for every command line argparse accepts, a usage error for every one it refuses."""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditpy.system.cmdline import EXIT_USAGE, HIDDEN, Exit, OptionParser, UsageError


def _spec(parser: Any, hidden: Any) -> Any:
    """pyaudispd's and pyauditd's kinds of options in one parser."""
    parser.add_argument("-c", "--config-dir", default="/etc/audit")
    parser.add_argument("--base-dir", default="/")
    parser.add_argument("-f", "--foreground", action="store_true")
    parser.add_argument("-d", "--debug", action="store_true")
    parser.add_argument("-n", dest="no_fork", action="store_true")
    parser.add_argument("-s", dest="enable", choices=("enable", "disable", "nochange"),
                        default="enable")
    parser.add_argument("--stable-after", type=float, default=1.5, help=hidden)
    parser.add_argument("--count", type=int, metavar="N")
    parser.add_argument("--check", action="store_true")
    return parser


def ours() -> OptionParser:
    parser = _spec(OptionParser("prog", "test"), HIDDEN)
    parser.add_argument("--version", action="version", version="prog 1")
    assert isinstance(parser, OptionParser)
    return parser


def theirs() -> argparse.ArgumentParser:
    parser = _spec(argparse.ArgumentParser("prog", description="test", exit_on_error=False),
                   argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="prog 1")
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def argparse_result(argv: list[str]) -> dict[str, Any] | str:
    """argparse's values, or "error" or "exit" (help, version)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return vars(theirs().parse_args(argv))
    except argparse.ArgumentError:
        return "error"
    except SystemExit as exc:
        return "exit" if exc.code == 0 else "error"


def our_result(argv: list[str]) -> dict[str, Any] | str:
    try:
        parsed = ours().parse(argv)
    except UsageError:
        return "error"
    return "exit" if isinstance(parsed, Exit) else parsed


_TOKENS = st.sampled_from([
    "-c", "--config-dir", "--config", "--conf", "--c", "--co", "--base-dir", "--base",
    "-f", "--foreground", "--fore", "-d", "--debug", "-n", "-s", "--stable-after",
    "--stable", "--count", "--cou", "--check", "--ch", "--version", "-h", "--help",
    "-fd", "-fn", "-dfn", "-fc", "-fs", "-fx", "-x", "--nope", "--", "-",
    "enable", "disable", "bogus", "/x", "2.5", "-1", "-2.5", "7", "x7", "",
    "-c/etc", "-cenable", "-senable", "-s=disable", "-c=/y", "--config-dir=/z",
    "--config-dir=", "--count=3", "--count=three", "--stable-after=-1", "--check=yes",
    "-f=1", "--debug=", "--base-dir=--x",
])


@settings(max_examples=600)
@given(argv=st.lists(_TOKENS, max_size=6))
def test_the_parser_agrees_with_argparse(argv: list[str]) -> None:
    assert our_result(argv) == argparse_result(argv)


@pytest.mark.parametrize("argv", [
    [], ["-fdn", "-s", "disable", "--stable", "-3", "-c/r"], ["--count", "4", "--count=5"],
    ["--config-dir", "-"], ["-s"], ["--check", "--", "-f"], ["--co", "/x"],
])
def test_the_parser_agrees_with_argparse_on_chosen_lines(argv: list[str]) -> None:
    assert our_result(argv) == argparse_result(argv)


def test_usage_errors_name_the_argument_and_exit_as_argparse_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = ours()
    for argv, message in [
        (["-s", "bogus"], "argument -s: invalid choice: 'bogus' (choose from 'enable', "
                          "'disable', 'nochange')"),
        (["--count", "x"], "argument --count: invalid int value: 'x'"),
        (["-c"], "argument -c/--config-dir: expected one argument"),
        (["--c"], "ambiguous option: --c could match --check, --config-dir, --count"),
        (["extra"], "unrecognized arguments: extra"),
        (["--check=1"], "argument --check: ignored explicit argument '1'"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("usage: prog [-h]") and err.endswith(f"prog: error: {message}\n")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == "prog 1\n"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["-h"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out == theirs().format_help()
    assert "--stable-after" not in out and "--count N" in out


def test_a_parser_refuses_what_it_cannot_parse() -> None:
    parser = OptionParser("prog")
    with pytest.raises(ValueError):
        parser.add_argument("positional")
    with pytest.raises(ValueError):
        parser.add_argument("-x", action="append")
    with pytest.raises(ValueError):
        parser.add_argument("-h")
    with pytest.raises(ValueError):
        parser.add_argument()
