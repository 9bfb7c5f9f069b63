"""Checks of scalar arguments shared across the package: real numbers and seeds.

Both accept what numerical code hands around (numpy scalars, 0-d arrays and tensors) and refuse
the rest with one `InputError` naming the argument.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import InputError


def _scalar(x, must: str, hint: str = ""):
    """A 0-d array or tensor (numpy, torch) as its Python scalar; anything else as it is. An array of
    several values is an `InputError` starting with ``must``."""
    if isinstance(x, torch.Tensor) or (hasattr(x, "ndim") and hasattr(x, "item")):
        if getattr(x, "ndim", 0) != 0:
            raise InputError(f"{must}, got an array of shape {tuple(x.shape)}{hint}")
        return x.item()
    return x


def real_number(x, what: str = "strength") -> float:
    """``x`` as a float: any real number (int, float, numpy or torch scalar, a 0-d array or tensor).

    `InputError` for anything else (a bool, a complex number, a string, an array of several values,
    NaN or inf), naming ``what``.
    """
    if isinstance(x, torch.Tensor) and (x.is_complex() or x.dtype == torch.bool):
        raise InputError(f"{what} must be a real number, got a {x.dtype} tensor")
    hint = "; for several strengths use explore.sweep" if what == "strength" else ""
    value = _scalar(x, f"{what} must be one number", hint)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a finite real number, got {x!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {x!r}")
    return value


MAX_SEED = 2**62  # torch generators take 64 bits; the render adds an offset to the seed


def check_seed(seed, what: str = "seed") -> int:
    """A seed as an int: an integer (Python, numpy or a 0-d integer tensor) from 0 to ``MAX_SEED``."""
    value = _scalar(seed, f"{what} must be one integer")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer, got {seed!r}")
    if not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{what} must be from 0 to 2**62 ({MAX_SEED}), got {int(value)}")
    return int(value)


