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


class SubmissionError(KitError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


class DiskFullError(KitError, OSError):
    """No space left while writing a file; what was on disk before is unchanged."""


class OutOfMemory(KitError, MemoryError):
    """The accelerator ran out of memory even at one image a pass (kit halves the batch before it gives up)."""
