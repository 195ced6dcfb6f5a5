"""`kit <subcommand>`: parse arguments, call one library function, print. Bad input exits 2 with a message.

_parser.py builds the argument parser; _commands.py holds one cmd_* function per subcommand and the run summary.
"""
from __future__ import annotations

import sys

from rich.markup import escape

from kit.cli._commands import console, err, print_summary  # noqa: F401  (kit.cli.console, kit.cli.print_summary)
from kit.cli._parser import build_parser

__all__ = ["build_parser", "console", "err", "main", "print_summary"]


def main(argv=None) -> int:
    """Any kit.errors.KitError is the user's to fix: one line, exit 2. Anything else is a bug: its traceback."""
    from kit.errors import KitError
    from kit.runtime import tune_allocator
    tune_allocator()  # before any tensor: glibc's heap thresholds (kit.runtime.tune_allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except KitError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; finished members and last checkpoints are kept: run again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
