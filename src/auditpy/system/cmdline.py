"""The command-line parser every auditpy program starts from.

argparse's own help formatter asks shutil for the terminal's width, and importing shutil loads
zlib, bz2 and lzma: resident memory in every daemon and plugin that builds a parser, for a
help text they almost never print. This formatter finds the width the same way without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os


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
