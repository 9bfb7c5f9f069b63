"""Held-out splits shared by everything that fits a classifier (probes, DCI, SAP): one rule, one place."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.model_selection import train_test_split

from .errors import InputError


def check_split(test_size: float, n: int) -> None:
    """`InputError` unless ``0 < test_size < 1`` leaves at least one test row and two training rows."""
    if not 0.0 < float(test_size) < 1.0:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    if n_test < 1 or n - n_test < 2:
        raise InputError(f"{n} samples are too few to split with test_size={test_size}")


def stratified_split(y, test_size: float, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train / test row indices, seeded; stratified by ``y`` whenever every class can appear on both sides.

    ``ceil(test_size * n)`` rows are held out. Stratification needs every class at least twice and
    no more classes than rows on either side; otherwise the split is a plain seeded one.
    """
    y = np.asarray(y)
    n = len(y)
    check_split(test_size, n)
    n_test = math.ceil(test_size * n)
    _, counts = np.unique(y, return_counts=True)
    strat = y if counts.min() >= 2 and min(n_test, n - n_test) >= len(counts) else None
    tr, te = train_test_split(np.arange(n), test_size=n_test, random_state=random_state, stratify=strat)
    return np.sort(tr), np.sort(te)


def auroc_columns(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` ``(n, F)`` for the binary labels ``y`` ``(n,)`` (ties: average
    ranks); NaN where ``y`` has one class only."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
