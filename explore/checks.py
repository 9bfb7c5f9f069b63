"""Checks of scalar arguments shared across the package: real numbers and seeds.

Both accept what numerical code hands around (numpy scalars, 0-d arrays and tensors) and refuse
the rest with one `InputError` naming the argument.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import InputError


def real_number(x, what: str = "strength") -> float:
    """``x`` as a float: any real number (int, float, numpy or torch scalar, a 0-d array or tensor).

    `InputError` for anything else (a bool, a complex number, a string, an array of several values,
    NaN or inf), naming ``what``.
    """
    value = x
    if isinstance(value, torch.Tensor) or (hasattr(value, "ndim") and hasattr(value, "item")):
        if getattr(value, "ndim", 0) != 0:
            shape = tuple(value.shape)
            raise InputError(f"{what} must be one number, got an array of shape {shape}"
                             + ("; for several strengths use explore.sweep" if what == "strength" else ""))
        if isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool):
            raise InputError(f"{what} must be a real number, got a {value.dtype} tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a finite real number, got {x!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {x!r}")
    return value


MAX_SEED = 2**62  # torch generators take 64 bits; the render adds an offset to the seed


def check_seed(seed, what: str = "seed") -> int:
    """A seed as an int: an integer (Python, numpy or a 0-d integer tensor) from 0 to ``MAX_SEED``."""
    value = seed
    if isinstance(value, torch.Tensor) or (hasattr(value, "ndim") and hasattr(value, "item")):
        if getattr(value, "ndim", 0) != 0:
            raise InputError(f"{what} must be one integer, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer, got {seed!r}")
    if not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{what} must be from 0 to 2**62 ({MAX_SEED}), got {int(value)}")
    return int(value)


