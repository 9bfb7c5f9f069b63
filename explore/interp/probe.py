"""Linear probes: what the transformer's streams know, per site and noise level (DESIGN §4).

`probe_all` fits one `LinearProbe` per (factor, site, t) of an `ActivationDataset`
(`explore.interp.activations.collect`) and returns `ProbeResults`: the held-out accuracy table,
the best ``t``, per-value probe directions (for steering). `explore.views.plots.plot_accuracy`
draws accuracy against depth.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from ..errors import InputError
from ..stats import stratified_split
from .activations import ActivationDataset, collect
from .hooks import parse_site

__all__ = ["ActivationDataset", "LinearProbe", "ProbeResults", "collect", "double_blocks", "probe_all", "site_depth"]


# ---------------------------------------------------------------------------------------------


def _as_2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise InputError(f"features must be (n, dim), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError("features contain NaN or inf")
    return X


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


class LinearProbe:
    """A logistic-regression probe with a held-out split (scikit-learn estimator contract).

    ``fit(X, y)``: ``X`` ``(n, dim)``, ``y`` ``(n,)`` labels. Fitted attributes:
    ``accuracy_`` (held-out), ``train_accuracy_``, ``chance_`` (the majority training class's
    rate on the held-out rows), ``classes_``, ``coef_`` ``(k, dim)`` / ``(1, dim)`` for two classes
    and ``intercept_`` in the *original* feature space (standardisation folded in),
    ``directions_`` ``(k, dim)`` unit vectors — for each class, the direction that raises its
    logit relative to the others (two classes: ``±coef_``) — ``class_means_`` ``(k, dim)`` over all
    rows, ``n_train_``, ``n_test_``, ``converged_``.
    """

    def __init__(self, C: float = 1.0, test_size: float = 0.25, random_state: int = 0, standardize: bool = True,
                 max_iter: int = 1000):
        self.C = C
        self.test_size = test_size
        self.random_state = random_state
        self.standardize = standardize
        self.max_iter = max_iter

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.test_size == 0:
            idx = np.arange(len(y))
            return idx, idx[:0]
        try:
            return stratified_split(y, self.test_size, self.random_state)
        except InputError as e:
            raise InputError(f"{len(y)} rows are too few for test_size={self.test_size}") from e

    def fit(self, X, y) -> LinearProbe:
        """Fit on a seeded (stratified where possible) training split; score on the held-out rest."""
        if not (self.C > 0 and math.isfinite(self.C)):
            raise InputError(f"C must be a positive number, got {self.C}")
        if not 0 <= self.test_size < 1:
            raise InputError(f"test_size must lie in [0, 1), got {self.test_size}")
        X = _as_2d(X)
        y = np.asarray(y)
        if y.shape != (len(X),):
            raise InputError(f"y must have one label per row of X ({len(X)}), got shape {y.shape}")
        if len(np.unique(y)) < 2:
            raise InputError(f"a probe needs at least two classes, got only {np.unique(y).tolist()}")
        tr, te = self._split(y)
        if len(np.unique(y[tr])) < 2:
            raise InputError("the training split holds a single class; use more rows or a smaller test_size")
        mean = X[tr].mean(0) if self.standardize else np.zeros(X.shape[1])
        scale = X[tr].std(0) if self.standardize else np.ones(X.shape[1])
        scale[scale == 0] = 1.0  # constant features: leave them unscaled, as StandardScaler does
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit((X[tr] - mean) / scale, y[tr])
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.classes_ = clf.classes_
        self.coef_ = clf.coef_ / scale
        self.intercept_ = clf.intercept_ - (clf.coef_ * (mean / scale)).sum(1)
        w = self.coef_
        self.directions_ = _unit(np.concatenate([-w, w]) if len(self.classes_) == 2 else w)
        self.class_means_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        self.n_train_, self.n_test_ = len(tr), len(te)
        self.train_accuracy_ = float((self.predict(X[tr]) == y[tr]).mean())
        if len(te):
            values, counts = np.unique(y[tr], return_counts=True)
            self.accuracy_ = float((self.predict(X[te]) == y[te]).mean())
            self.chance_ = float((y[te] == values[counts.argmax()]).mean())
        else:
            self.accuracy_ = self.chance_ = float("nan")
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise InputError("this probe is not fitted yet; call fit(X, y) first")

    def decision_function(self, X) -> np.ndarray:
        self._check_fitted()
        return _as_2d(X) @ self.coef_.T + self.intercept_

    def predict(self, X) -> np.ndarray:
        """Predicted class of each row of ``X`` ``(n, dim)``."""
        s = self.decision_function(X)
        return self.classes_[(s[:, 0] > 0).astype(int)] if s.shape[1] == 1 else self.classes_[s.argmax(1)]

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    def _index(self, value) -> int:
        self._check_fitted()
        hits = np.flatnonzero(self.classes_ == value)
        if not len(hits):
            raise InputError(f"{value!r} is not a class of this probe; classes: {self.classes_.tolist()}")
        return int(hits[0])

    def direction(self, value) -> np.ndarray:
        """The unit probe direction of class ``value`` (a row of ``directions_``)."""
        return self.directions_[self._index(value)]

    def mean_difference(self, a, b) -> np.ndarray:
        """Unit class-mean-difference direction from class ``a`` to class ``b``: ``mean[b] - mean[a]``, normalised."""
        return _unit(self.class_means_[self._index(b)] - self.class_means_[self._index(a)])


# ---------------------------------------------------------------------------------------------
# Probing a dataset
# ---------------------------------------------------------------------------------------------


def site_depth(site: str, n_double: int) -> int:
    """Index of a site's block in forward order (FLUX single blocks come after the ``n_double`` double ones)."""
    group, index, _ = parse_site(site)
    return index if group == "transformer_blocks" else n_double + index


@dataclasses.dataclass
class ProbeResults:
    """Fitted probes keyed ``(factor, site, t)`` and the feature shape of each site."""

    probes: dict[tuple[str, str, float], LinearProbe]
    factors: list[str]
    sites: list[str]
    timesteps: list[float]
    feature_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def probe(self, factor: str, site: str, t: float) -> LinearProbe:
        hit = self.probes.get((factor, site, round(float(t), 4)))
        if hit is not None:
            return hit
        for (f, s, kt), p in self.probes.items():
            if f == factor and s == site and abs(kt - float(t)) < 1e-4:
                return p
        raise InputError(f"no probe for factor {factor!r} at {site}, t={t}; factors {self.factors}, "
                         f"t in {self.timesteps}")

    def accuracy(self, factor: str, site: str, t: float) -> float:
        return self.probe(factor, site, t).accuracy_

    def as_table(self) -> list[dict[str, Any]]:
        """One row per probe: factor, site, block, stream, t, accuracy, train_accuracy, chance, n_classes, ..."""
        n_double = double_blocks(self.sites)
        rows = []
        for (f, s, t), p in self.probes.items():
            _, _, stream = parse_site(s)
            rows.append({
                "factor": f, "site": s, "block": site_depth(s, n_double), "stream": stream, "t": t,
                "accuracy": p.accuracy_, "train_accuracy": p.train_accuracy_, "chance": p.chance_,
                "n_classes": len(p.classes_), "n_train": p.n_train_, "n_test": p.n_test_, "converged": p.converged_,
            })
        return rows

    def accuracy_by_t(self, factor: str, site: str) -> dict[float, float]:
        """Held-out accuracy at each ``t`` for one factor and site."""
        return {t: self.accuracy(factor, site, t) for t in self.timesteps if (factor, site, t) in self.probes}

    def best_over_t(self, factor: str, site: str) -> tuple[float, float]:
        """``(t, accuracy)`` of the best-probing noise level for one factor and site."""
        by_t = self.accuracy_by_t(factor, site)
        if not by_t:
            raise InputError(f"no probes for factor {factor!r} at {site}")
        t = max(by_t, key=lambda k: (by_t[k], -k))
        return t, by_t[t]

    def best(self, factor: str) -> tuple[str, float, float]:
        """``(site, t, accuracy)`` of the best probe for a factor over all sites and ``t``."""
        rows = [(s, t, p.accuracy_) for (f, s, t), p in self.probes.items() if f == factor]
        if not rows:
            raise InputError(f"no probes for factor {factor!r}; factors: {self.factors}")
        return max(rows, key=lambda r: r[2])

    def probe_directions(self, factor: str, kind: str = "probe") -> list[tuple[str, float, str, np.ndarray]]:
        """``(site, t, value, unit vector)`` for every probe of ``factor`` and each of its values.

        ``kind``: ``"probe"`` (the probe's weight direction) or ``"mean"`` (class mean minus the
        mean of the other class means). Vectors have the site's feature shape (``(dim,)`` or
        ``(tokens, dim)``), ready for `explore.interp.steering.steer`.
        """
        if kind not in ("probe", "mean"):
            raise InputError(f"kind must be 'probe' or 'mean', got {kind!r}")
        out = []
        for (f, s, t), p in self.probes.items():
            if f != factor:
                continue
            shape = self.feature_shapes.get(s, (p.coef_.shape[1],))
            for i, value in enumerate(p.classes_):
                if kind == "probe":
                    v = p.directions_[i]
                else:
                    others = np.delete(p.class_means_, i, axis=0).mean(0)
                    v = _unit(p.class_means_[i] - others)
                out.append((s, t, str(value), v.reshape(shape)))
        if not out:
            raise InputError(f"no probes for factor {factor!r}; factors: {self.factors}")
        return out


def double_blocks(site_names: Iterable[str]) -> int:
    idx = [parse_site(s)[1] for s in site_names if s.startswith("transformer_blocks.")]
    return max(idx) + 1 if idx else 0


def probe_all(
    dataset: ActivationDataset,
    factors: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    timesteps: Sequence[float] | None = None,
    *,
    C: float = 1.0,
    test_size: float = 0.25,
    random_state: int = 0,
    standardize: bool = True,
    progress: bool = False,
) -> ProbeResults:
    """Fit one `LinearProbe` per (factor, site, t).

    ``factors``: default every label with at least two values. Items whose label is ``""`` are
    left out of that factor's probe. Token features ``(n, tokens, dim)`` are flattened; the
    directions come back in the ``(tokens, dim)`` shape. Each (site, t) is read once (streamed
    datasets stay memory-bounded).
    """
    if factors is None:
        factors = [k for k, v in dataset.labels.items() if len(set(v) - {""}) >= 2]
        if not factors:
            raise InputError("the dataset has no factor with two or more values; pass labels= to collect()")
    else:
        factors = [factors] if isinstance(factors, str) else list(factors)
        for f in factors:
            if f not in dataset.labels:
                raise InputError(f"no labels for factor {f!r}; the dataset has {list(dataset.labels)}")
            if len(set(dataset.labels[f]) - {""}) < 2:
                raise InputError(f"factor {f!r} has fewer than two values in this dataset; nothing to probe")
    site_list = list(sites) if sites is not None else dataset.sites
    ts = [dataset._t(t) for t in timesteps] if timesteps is not None else dataset.timesteps
    probes: dict[tuple[str, str, float], LinearProbe] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for s, t in tqdm([(s, t) for s in site_list for t in ts], desc="probes", disable=not progress):
        X = dataset.get(s, t)
        shapes[s] = tuple(X.shape[1:])
        X = X.reshape(len(X), -1)
        for f in factors:
            y = dataset.labels[f]
            keep = y != ""
            probes[(f, s, t)] = LinearProbe(C, test_size, random_state, standardize).fit(X[keep], y[keep])
    return ProbeResults(probes, list(factors), site_list, list(ts), shapes)
