"""`kit <subcommand>`: parse arguments, call one library function, print. Bad input exits 2 with a message.

_parser.py builds the argument parser; _commands.py holds one cmd_* function per subcommand and the run summary.
"""
from __future__ import annotations

import sys
import warnings

from rich.markup import escape

from kit.cli._commands import console, err, print_summary  # noqa: F401  (kit.cli.console, kit.cli.print_summary)
from kit.cli._parser import build_parser
from kit.errors import KitWarning

__all__ = ["build_parser", "console", "err", "main", "print_summary"]


def main(argv=None) -> int:
    """Any kit.errors.KitError is the user's to fix: one line, exit 2. Anything else is a bug: its traceback."""
    from kit.errors import KitError
    from kit.runtime import tune_allocator
    from kit.dburl import mask
    tune_allocator()  # before any tensor: glibc's heap thresholds (kit.runtime.tune_allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", KitWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            return args.fn(args) or 0
        except KitError as e:  # masked: no message prints a database password (kit.dburl), whoever wrote it
            err.print(f"[red]error:[/] {escape(mask(e))}", highlight=False)
            return 2
        except KeyboardInterrupt:
            err.print("interrupted; finished members and last checkpoints are kept: run again to resume")
            return 130


def _show_warning(default):
    """A KitWarning as one line on standard error (masked); any other warning as Python shows it."""
    from kit.dburl import mask

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, KitWarning):
            err.print(f"[yellow]warning:[/] {escape(mask(message))}", highlight=False)
        else:
            default(message, category, filename, lineno, file, line)
    return show


if __name__ == "__main__":
    sys.exit(main())
