"""Metrics (DESIGN §0, §3): success, retention, reconstruction PSNR, the SDE disentanglement score,
and the ground-truth disentanglement metrics MIG, DCI and SAP.

Conventions (one meaning everywhere):
  success    1 if the target factor reads as the target value after the edit, else 0.
  retention  the share of non-target factors whose reading equals the *source's* label.
Both are per edit and reported as means over edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def success(reading: Mapping[str, str | None], attribute: str, target: str) -> float:
    """1.0 if ``reading[attribute] == target`` else 0.0."""
    return float(reading.get(attribute) == target)


def retention(reading: Mapping[str, str | None], source_labels: Mapping[str, str], attribute: str) -> float:
    """Share of the non-target factors of ``source_labels`` that ``reading`` still shows."""
    keys = [k for k in source_labels if k != attribute]
    if not keys:
        return 1.0
    return float(np.mean([reading.get(k) == source_labels[k] for k in keys]))


def accuracy(reading: Mapping[str, str | None], labels: Mapping[str, str]) -> float:
    """Share of all factors read correctly (e.g. reconstruction accuracy on ``x_rec``)."""
    return float(np.mean([reading.get(k) == v for k, v in labels.items()])) if labels else 1.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (float arrays of the same shape); inf if identical."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")
