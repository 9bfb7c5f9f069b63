"""One exception hierarchy for the whole toolkit.

Every error a user can cause derives from `ExploreError`; the ones about bad arguments also derive
from `ValueError` so ordinary ``except ValueError`` code keeps working. Messages say what was wrong
and what to do; the command line prints them as one line (see ``cli.py``).
"""

from __future__ import annotations


class ExploreError(Exception):
    """Base class of every error `explore` raises on purpose."""


class InputError(ExploreError, ValueError):
    """A bad argument: wrong image mode or size, empty prompt, unknown attribute, non-finite strength..."""


class ModelNotFoundError(ExploreError, FileNotFoundError):
    """Weights that are not on disk and cannot be downloaded (offline or not found)."""


class UnsupportedModelError(ExploreError, ValueError):
    """A pipeline `explore` does not know how to drive (not SD3 / SD3.5 / FLUX.1)."""


class DirectionMismatchError(ExploreError, ValueError):
    """A direction used with a model it was not made for (other model id or other shapes)."""


class DivergenceError(ExploreError, FloatingPointError):
    """An optimisation produced NaN/inf or an exploding latent. ``last_good`` holds the last finite state."""

    def __init__(self, message: str, last_good=None, step: int | None = None):
        super().__init__(message)
        self.last_good = last_good
        self.step = step


class ResourceError(ExploreError, MemoryError):
    """Out of memory (CPU or GPU); the message names the setting to change."""


class CorruptFileError(ExploreError, ValueError):
    """A saved file that is partial or unreadable; the message names its path."""


class WriteError(ExploreError, OSError):
    """A file or folder that could not be written (full disk, read-only folder, no permission).

    The message names the path and the cause; ``path`` and ``errno`` say the same for code. Nothing
    already saved is lost: writes are atomic, so the old file (if any) is still whole.
    """

    def __init__(self, message: str, path=None, errno: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        return self.args[0]


class BusyError(ExploreError, RuntimeError):
    """Another process is writing the same output folder; the message names it."""


class RunMismatchError(ExploreError, ValueError):
    """An output folder holds results of another configuration; the message names what differs."""
