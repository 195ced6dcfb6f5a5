"""kit's errors: one family for what a user can fix.

The CLI prints any KitError as one line and exits 2; anything else is a bug in kit and keeps its traceback.
Each subclass also derives from the builtin a caller would naturally catch (ValueError for bad values,
OSError for files), so `except ValueError` in user code keeps working.
"""
from __future__ import annotations


class KitError(Exception):
    """Something the user can fix; the message names the file, row or recipe key, the rule and the fix."""


class RecipeError(KitError, ValueError):
    """A recipe (or a --set override, or a command's arguments) that cannot run."""


class DataError(KitError, ValueError):
    """A dataset folder, CSV, split or image set that cannot be used as the recipe describes."""


class ImageReadError(KitError, OSError):
    """An image file that cannot be read or decoded; the message names the file."""


class RunDirError(KitError):
    """A run directory in a state the command cannot work from (another recipe, unfinished members, ...)."""


class UnsafeFileError(KitError):
    """A file kit refused to read: it could run code when loaded (a pickle), or it is corrupt."""


class LeaderboardError(KitError):
    """The leaderboard's database cannot be reached, opened or read (a damaged SQLite file, a server down, no
    driver); the message names it (without its password) and the fix."""


class SubmissionError(KitError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


class DiskFullError(KitError, OSError):
    """No space left while writing a file; what was on disk before is unchanged."""


class KitWarning(UserWarning):
    """Something the user should know that stops nothing (a result kept to be recorded later); the CLI prints it
    as one line."""


class NotWritableError(KitError, PermissionError):
    """A file kit must write sits where it may not (a read-only mount, an immutable run directory, another
    user's folder); the message names it. A PermissionError still, for callers that let such a write fail."""


class OutOfMemory(KitError, MemoryError):
    """The accelerator ran out of memory even at one image a pass (kit halves the batch before it gives up)."""


def printable(text) -> str:
    """`text` with control characters (an ANSI escape, a carriage return, a terminal hyperlink) written as escapes
    such as \\x1b: a name read from a file or a recipe is shown as text and cannot drive the terminal. Newlines and
    tabs stay."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
                   for c in text)
