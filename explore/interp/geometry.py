"""Geometry of editing directions: a matrix of directions, PCA / UMAP views, cosines, consistency.

Data flow: `direction_matrix` turns `Direction` s (text ``dc``/``dp``, image ``dz``), a
`DirectionLibrary` or raw vectors (e.g. `explore.interp.probe.ProbeResults.probe_directions`)
into an ``(n, d)`` array plus one `DirectionInfo` per row (``normalize=True``: unit rows, so
every direction weighs the same whatever its length); `pca` / `umap` project it; `cosine_matrix`
and `consistency` measure whether directions of one attribute point the same way. The figures
are in `explore.views.plots`.

UMAP (umap-learn, optional: ``pip install umap-learn``) is compiled by numba on first use in a
process — tens of seconds. We point ``NUMBA_CACHE_DIR`` at ``~/.cache/explore/numba`` unless it
is set, so the compiled code is reused by later processes.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.decomposition import PCA

from ..editing.directions import Direction, DirectionLibrary
from ..errors import InputError

KINDS = ("dc", "dp", "dz", "dc+dp")
POOLS = ("flatten", "mean")


class DirectionInfo(NamedTuple):
    """What one row of a direction matrix is: ``attribute`` and the value change ``source -> target``."""

    attribute: str
    source: str = ""
    target: str = ""
    name: str = ""


# ---------------------------------------------------------------------------------------------
# Directions -> matrix
# ---------------------------------------------------------------------------------------------


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _part(d, kind: str, pool: str) -> np.ndarray:
    """One direction's vector for ``kind`` (``dc`` ``(L, D)``, ``dp`` ``(P,)``, ``dz`` ``(C, h, w)``)."""
    if kind == "dc":
        x = _np(d.dc)
        return x.mean(0) if pool == "mean" else x.ravel()  # mean over token positions -> (D,)
    if kind == "dp":
        return _np(d.dp).ravel()
    if kind == "dz":
        if d.dz is None:
            raise InputError(f"direction {d.name!r} has no dz (it comes from an edit: EditResult.image_direction())")
        x = _np(d.dz)
        return x.reshape(x.shape[0], -1).mean(1) if pool == "mean" else x.ravel()  # mean over pixels -> (C,)
    # "dc+dp": concatenated as they are; the parts keep their own scales (normalise first to weigh them equally)
    return np.concatenate([_part(d, "dc", pool), _part(d, "dp", pool)])


def _info(label, i: int) -> DirectionInfo:
    if isinstance(label, DirectionInfo):
        return label
    if isinstance(label, str):
        return DirectionInfo(label, name=f"{label}-{i}")
    if isinstance(label, Mapping):
        if "attribute" not in label:
            raise InputError(f"label {i} needs an 'attribute' key, got {sorted(label)}")
        return DirectionInfo(str(label["attribute"]), str(label.get("source", "")), str(label.get("target", "")),
                             str(label.get("name", f"{label['attribute']}-{i}")))
    if isinstance(label, (tuple, list)) and 1 <= len(label) <= 4:
        return DirectionInfo(*[str(v) for v in label])
    raise InputError(f"label {i} must be an attribute name, (attribute, source, target) or a dict, got {label!r}")


def direction_matrix(directions, kind: str = "dc", pool: str = "flatten", labels: Sequence[Any] | None = None,
                     normalize: bool = False) -> tuple[np.ndarray, list[DirectionInfo]]:
    """Stack directions into ``X`` ``(n, d)`` float64 and one `DirectionInfo` per row.

    ``directions``: `Direction` s, a `DirectionLibrary` (all of it is loaded), or raw vectors
    (an ``(n, d)`` array or a list of arrays, flattened) with ``labels``: attribute names,
    ``(attribute, source, target)`` tuples or dicts. ``kind`` picks the part of a `Direction`:
    ``"dc"`` token embeddings, ``"dp"`` pooled, ``"dz"`` image latent, ``"dc+dp"`` both
    concatenated. ``pool``: ``"flatten"`` keeps every position; ``"mean"`` averages ``dc`` over
    tokens and ``dz`` over pixels (ignored for raw vectors). ``normalize``: divide each row by
    its norm, so a projection shows orientations only (raw ``dc`` rows are dominated by the
    longest directions, e.g. colour, and the rest collapse near the origin). For ``"dc+dp"`` each
    part is normalised before they are joined, so the two weigh the same.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if pool not in POOLS:
        raise InputError(f"pool must be one of {POOLS}, got {pool!r}")
    if isinstance(directions, DirectionLibrary):
        directions = directions.load_all()
    if isinstance(directions, Direction):
        directions = [directions]
    if not isinstance(directions, np.ndarray):
        directions = list(directions)
    if len(directions) == 0:
        raise InputError("no directions given")
    if isinstance(directions, list) and all(isinstance(d, Direction) for d in directions):
        rows = [_part(d, kind, pool) for d in directions]
        dims = {len(r) for r in rows}
        if len(dims) > 1:
            raise InputError(f"directions have different sizes {sorted(dims)} for kind {kind!r}; "
                             "were they made for different models?")
        infos = [DirectionInfo(d.attribute, d.source, d.target, d.name) for d in directions]
        if labels is not None:
            infos = [_info(lab, i) for i, lab in enumerate(labels)]
        X = np.stack(rows)
    else:
        if labels is None:
            raise InputError("raw direction vectors need labels=: one attribute (or (attribute, source, target)) each")
        X = np.stack([_np(v).ravel() for v in directions]) if isinstance(directions, list) else _np(directions)
        if X.ndim != 2:
            X = X.reshape(len(X), -1)
        infos = [_info(lab, i) for i, lab in enumerate(labels)]
    if len(infos) != len(X):
        raise InputError(f"{len(X)} directions but {len(infos)} labels")
    if not np.isfinite(X).all():
        raise InputError("direction vectors contain NaN or inf")
    if normalize:
        if kind == "dc+dp" and isinstance(directions, list) and all(isinstance(d, Direction) for d in directions):
            parts = [direction_matrix(directions, k, pool, labels, normalize=True)[0] for k in ("dc", "dp")]
            X = np.concatenate(parts, axis=1) / np.sqrt(2.0)
        else:
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            if (norms == 0).any():
                raise InputError(f"direction(s) {np.flatnonzero(norms[:, 0] == 0).tolist()} are zero vectors; "
                                 "they have no orientation to normalise")
            X = X / norms
    return X, infos


def attribute_names(attributes) -> list[str]:
    return [a.attribute if isinstance(a, DirectionInfo) else str(a) for a in attributes]


def as_matrix(X, min_rows: int = 1) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be (n, d), got shape {X.shape}")
    if len(X) < min_rows:
        raise InputError(f"need at least {min_rows} directions, got {len(X)}")
    if not np.isfinite(X).all():
        raise InputError("X contains NaN or inf")
    return X


# ---------------------------------------------------------------------------------------------
# Projections
# ---------------------------------------------------------------------------------------------


def pca(X, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA coordinates ``(n, k)`` and explained-variance ratios ``(k,)`` (exact SVD: deterministic).

    ``k`` is ``n_components`` clamped to ``min(n, d)``; signs follow scikit-learn's ``svd_flip``.
    """
    X = as_matrix(X, 2)
    k = min(int(n_components), *X.shape)
    if k < 1:
        raise InputError(f"n_components must be >= 1, got {n_components}")
    model = PCA(n_components=k, svd_solver="full")
    return model.fit_transform(X), model.explained_variance_ratio_


def _numba_cache() -> None:
    """Persist numba's compiled code across processes (UMAP's first compile takes tens of seconds)."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        path = Path.home() / ".cache" / "explore" / "numba"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(path)
        if "numba" in sys.modules:  # numba read its config at import; make it read the new variable
            try:
                sys.modules["numba"].core.config.reload_config()
            except AttributeError:  # pragma: no cover - other numba layouts
                pass


def _import_umap():
    _numba_cache()
    try:
        import umap as umap_lib
    except ImportError as e:
        raise InputError("UMAP needs umap-learn: pip install umap-learn (or pip install 'explore[notebook]')") from e
    return umap_lib


def umap(X, n_components: int = 2, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
         metric: str = "cosine") -> np.ndarray:
    """UMAP coordinates ``(n, n_components)``, seeded: the same ``seed`` gives the same coordinates.

    ``n_neighbors`` is clamped to ``n - 1`` for small sets. ``metric`` defaults to cosine: a
    direction's length is its strength, its orientation is what we compare. The first call in a
    process compiles numba code (slow; cached on disk, see the module docstring).
    """
    X = as_matrix(X)
    n = len(X)
    if n < n_components + 2:
        raise InputError(f"UMAP needs at least {n_components + 2} directions for {n_components} components, got {n}")
    umap_lib = _import_umap()
    k = max(2, min(int(n_neighbors), n - 1))
    # Spectral initialisation needs a connected, not-too-small graph; random init is seeded as well.
    init = "spectral" if n > 2 * (n_components + 1) + k else "random"
    model = umap_lib.UMAP(n_components=n_components, n_neighbors=k, min_dist=min_dist, metric=metric,
                          random_state=seed, n_jobs=1, init=init, transform_seed=seed)
    with warnings.catch_warnings():
        # seeded UMAP runs single-threaded by design; small-n warnings about the graph are expected here
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        return np.asarray(model.fit_transform(X), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Cosines and consistency
# ---------------------------------------------------------------------------------------------


def cosine_matrix(X) -> np.ndarray:
    """Pairwise cosine similarity ``(n, n)``: symmetric, unit diagonal, values in [-1, 1]."""
    X = as_matrix(X)
    norms = np.linalg.norm(X, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise InputError(f"direction(s) {zero.tolist()} are zero vectors; a cosine is undefined for them")
    U = X / norms[:, None]
    C = np.clip(U @ U.T, -1.0, 1.0)
    C = (C + C.T) / 2  # exact symmetry despite rounding in the matmul
    np.fill_diagonal(C, 1.0)
    return C


def _scores(C: np.ndarray, W: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, ...]]:
    """Within / across means for weight rows ``W`` ``(B, n)`` (bootstrap counts; ones for the point estimate).

    A direction drawn twice is still one direction: pairs of a direction with itself are left out
    of ``within`` (their cosine is 1 by construction), using the counts ``w_i w_j`` for ``i != j``.
    """
    WC = W @ C  # (B, n): row b, column i = sum_j w_j C_ij
    out = {}
    for a, idx in groups.items():
        mask = np.zeros(W.shape[1], dtype=bool)
        mask[idx] = True
        wa = W[:, mask]
        sa, sq = wa.sum(1), (wa**2).sum(1)
        to_own = (wa * (wa @ C[np.ix_(mask, mask)])).sum(1)  # sum over i, j in a of w_i w_j C_ij
        to_all = (wa * WC[:, mask]).sum(1)  # the same over i in a, every j
        so = W[:, ~mask].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            within = np.where(sa**2 - sq > 0, (to_own - sq) / (sa**2 - sq), np.nan)  # C_ii = 1 removed
            across = np.where(sa * so > 0, (to_all - to_own) / (sa * so), np.nan)
        out[a] = (within, across)
    return out


def consistency(X, attributes: Sequence[Any], n_boot: int = 1000, seed: int = 0,
                ci: float = 0.95) -> dict[str, dict[str, float]]:
    """How much more directions of one attribute agree with each other than with other attributes.

    For attribute ``a``: ``within`` = mean cosine over pairs of distinct ``a`` directions;
    ``across`` = mean cosine between ``a`` directions and directions of every other attribute;
    ``score = within - across`` (≈ 0 for random directions, at most 2). ``ci_low`` /
    ``ci_high``: percentile bootstrap interval (``ci``), resampling directions with replacement
    within each attribute, seeded. ``within`` is NaN for an attribute with one direction, ``across``
    when there is only one attribute. ``attributes``: one name (or `DirectionInfo`) per row of ``X``.
    """
    X = as_matrix(X, 2)
    attrs = attribute_names(attributes)
    if len(attrs) != len(X):
        raise InputError(f"{len(X)} directions but {len(attrs)} attributes")
    if n_boot < 0:
        raise InputError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < ci < 1:
        raise InputError(f"ci must lie in (0, 1), got {ci}")
    C = cosine_matrix(X)
    groups = {a: np.flatnonzero(np.asarray(attrs) == a) for a in dict.fromkeys(attrs)}
    point = _scores(C, np.ones((1, len(X))), groups)
    boot = None
    if n_boot:
        rng = np.random.default_rng(seed)
        W = np.zeros((n_boot, len(X)))
        for idx in groups.values():  # resample within each attribute: group sizes stay fixed
            W[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
        boot = _scores(C, W, groups)
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out = {}
    for a, idx in groups.items():
        within, across = (float(v[0]) for v in point[a])
        row = {"score": within - across, "within": within, "across": across, "n": int(len(idx)),
               "ci_low": float("nan"), "ci_high": float("nan")}
        if boot is not None:
            s = boot[a][0] - boot[a][1]
            s = s[np.isfinite(s)]  # resamples that drew one direction only have no within-pair
            if len(s):
                row["ci_low"], row["ci_high"] = (float(v) for v in np.percentile(s, [lo_q, hi_q]))
        out[a] = row
    return out

