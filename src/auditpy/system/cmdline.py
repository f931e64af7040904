"""The command line of every auditpy program: its parser, and its end when the reader of
its output went away.

argparse's own help formatter asks shutil for the terminal's width, and importing shutil loads
zlib, bz2 and lzma: resident memory in every daemon and plugin that builds a parser, for a
help text they almost never print. This formatter finds the width the same way without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

#: 128 + SIGPIPE: the status a shell shows for a C program that SIGPIPE ended
EXIT_SIGPIPE = 141


def terminal_columns() -> int:
    """The width help text wraps at, found as shutil.get_terminal_size() finds it: $COLUMNS,
    then the terminal on stdout, then 80."""
    with contextlib.suppress(ValueError):
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    try:
        return os.get_terminal_size(1).columns or 80
    except OSError:
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        # argparse's default: the terminal's width less two
        super().__init__(prog, width=terminal_columns() - 2)


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser for `prog` whose help never imports shutil."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=_HelpFormatter)


def stdout_gone() -> int:
    """After a BrokenPipeError on standard output (`prog | head -1`): standard output goes to
    /dev/null, so that the interpreter's own flush at exit has nowhere to fail, and the
    status is the one a shell shows for the C tools, which SIGPIPE ends quietly."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    return EXIT_SIGPIPE
