"""Metrics of one edit (DESIGN §0, §3): success, retention, reconstruction PSNR and the SDE score.

The ground-truth disentanglement metrics MIG, DCI and SAP are in `explore.evaluation.disentanglement`
(and importable from here under the same names).

Conventions (one meaning everywhere):
  success    1 if the target factor reads as the target value after the edit, else 0.
  retention  the share of non-target factors whose reading equals the *source's* label.
Both are per edit and reported as means over edits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..images import psnr, to_array


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


def mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------
# The SDE disentanglement score (DESIGN §3)
# ---------------------------------------------------------------------------------------------

_EPS = 1e-8
_RANGE_TOL = 1e-4  # scores may overshoot [0, 1] by rounding; more than this is a caller's bug


@dataclasses.dataclass(frozen=True)
class SDEResult:
    """The parts of one SDE score, so it can be shown step by step (DESIGN §3).

    ``E`` edit effect in [-1, 1]; ``leak`` share of the change outside the mask in [0, 1] (NaN when
    no mask was given); ``R`` relative reconstruction error (>= 0, unbounded); ``sde`` in [0, 1]
    (NaN when no mask was given). Indexable like a dict: ``result["sde"]``.
    """

    E: float
    leak: float
    R: float
    sde: float

    def __getitem__(self, key: str) -> float:
        if key not in ("E", "leak", "R", "sde"):
            raise KeyError(key)
        return getattr(self, key)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _image(name: str, image) -> np.ndarray:
    """One ``(H, W, 3)`` image as float64 in [0, 1] (the package's image rules, errors naming ``name``)."""
    return to_array(image, "float", name)


def _score(name: str, value) -> float:
    try:
        s = float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be one probability in [0, 1], got {value!r}") from e
    if not np.isfinite(s) or s < -_RANGE_TOL or s > 1 + _RANGE_TOL:
        raise InputError(f"{name} must be a probability in [0, 1], got {s}")
    return min(max(s, 0.0), 1.0)


def _mask(name: str, mask, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise InputError(f"{name} must be a boolean (H, W) = {shape} mask, got shape {m.shape}")
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.number) and np.isin(m, (0, 1)).all()):
            raise InputError(f"{name} must be boolean (or 0/1), got dtype {m.dtype} with other values")
        m = m.astype(bool)
    return m


def _union(mask, shape: tuple[int, int]) -> np.ndarray | None:
    """One (H, W) mask, a stack (n, H, W), or a sequence of masks (None entries skipped) -> their union."""
    if mask is None:
        return None
    if isinstance(mask, (list, tuple)):
        parts = [_mask(f"mask[{i}]", m, shape) for i, m in enumerate(mask) if m is not None]
        return np.logical_or.reduce(parts) if parts else None
    arr = np.asarray(mask)
    if arr.ndim == 3:
        return np.logical_or.reduce([_mask(f"mask[{i}]", m, shape) for i, m in enumerate(arr)])
    return _mask("mask", arr, shape)


def sde(
    x,
    x_rec,
    x_edit,
    score_rec: float,
    score_edit: float,
    mask=None,
    attribute: str | None = None,
) -> SDEResult:
    """The SDE disentanglement score of one edit, exactly as DESIGN §3 defines it.

    ``x``, ``x_rec``, ``x_edit``: the source, its reconstruction (λ = 0) and the edit, ``(H, W, 3)``
    float arrays in [0, 1] (uint8 is divided by 255). ``score_rec`` / ``score_edit``: the scorer's
    probability that the factor equals the target value ``v+`` on ``x_rec`` / ``x_edit`` (readers: 0/1).
    ``mask``: the object mask(s) — one boolean ``(H, W)`` union, or a sequence / ``(n, H, W)`` stack
    (e.g. ``(mask_x, mask_edit)``) whose union is taken. ``attribute == "background"`` uses the
    complement of the union (a background edit should change everything but the object).

    ::

        E    = s(x_edit) - s(x_rec)
        leak = ‖(x_edit - x_rec) ⊙ (1 - M)‖² / (‖x_edit - x_rec‖² + 1e-8)
        R    = ‖x_rec - x‖² / (‖x - mean(x)‖² + 1e-8)          mean(x): one scalar over all pixels and channels
        SDE  = max(E, 0) · (1 - leak) · (1 - min(R, 1))

    Norms are sums over all pixels and channels. Without a mask (``None``) locality cannot be
    measured: ``leak`` and ``sde`` are NaN, ``E`` and ``R`` are still returned.
    """
    xs = _image("x", x)
    xr = _image("x_rec", x_rec)
    xe = _image("x_edit", x_edit)
    if not (xs.shape == xr.shape == xe.shape):
        raise InputError(f"images differ in shape: x {xs.shape}, x_rec {xr.shape}, x_edit {xe.shape}")
    s_rec = _score("score_rec", score_rec)
    s_edit = _score("score_edit", score_edit)
    m = _union(mask, xs.shape[:2])

    e = s_edit - s_rec
    r = float(np.sum((xr - xs) ** 2) / (np.sum((xs - xs.mean()) ** 2) + _EPS))
    if m is None:
        return SDEResult(E=e, leak=float("nan"), R=r, sde=float("nan"))
    if attribute == "background":
        m = ~m
    d = xe - xr
    outside = (~m)[..., None]
    leak = float(np.sum((d * outside) ** 2) / (np.sum(d**2) + _EPS))
    score = max(e, 0.0) * (1.0 - leak) * (1.0 - min(r, 1.0))
    return SDEResult(E=e, leak=leak, R=r, sde=float(score))




from .disentanglement import (  # noqa: E402  (the metrics of representations, re-exported by name)
    dci,
    encode_factors,
    mig,
    mig_per_factor,
    mutual_information,
    sap,
    sap_per_factor,
    sap_scores,
)

__all__ = [
    "SDEResult", "accuracy", "dci", "encode_factors", "mean", "mig", "mig_per_factor", "mutual_information", "psnr",
    "retention", "sap", "sap_per_factor", "sap_scores", "sde", "success",
]
