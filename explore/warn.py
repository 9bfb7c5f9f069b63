"""Warnings that point at the user's line, and say a thing once.

`warn` finds the first frame outside `explore` (and the libraries it runs inside, such as torch's
``no_grad`` wrapper and ``contextlib``) and warns with that frame as the location, so a warning
in a notebook names the notebook's cell, not ``torch/utils/_contextlib.py`` or an `explore`
module. With ``once=key`` a warning is shown once per process for that key (e.g. once per
prompt, however many calls encode it).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Hashable

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_SKIP = (_PACKAGE, os.path.join("torch", "utils", "_contextlib.py"), "contextlib.py", "functools.py")
_SEEN: set = set()


def _stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside `explore` (counted from `warn`'s caller)."""
    frame, level = sys._getframe(2), 2
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(_PACKAGE) or name.endswith(_SKIP[1:])):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def warn(message: str, category: type[Warning] = UserWarning, *, once: Hashable | None = None,
         seen: set | None = None) -> None:
    """``warnings.warn`` at the user's line; with ``once``, only the first time for that key (in ``seen``:
    e.g. a pipeline's own set, `PipelineState.warned`; default: the process's)."""
    if once is not None:
        seen = _SEEN if seen is None else seen
        if once in seen:
            return
        seen.add(once)
    warnings.warn(message, category, stacklevel=_stacklevel())
